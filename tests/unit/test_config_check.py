"""The configuration check: every problem found at once, one line each."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oslo_config import iniparser

from cinderbak import config_check
from cinderbak.config_check import Problem

SCHEMA = config_check.load_schema()
GOOD = """\
[DEFAULT]
deployment_id = site-a
poll_interval = 2
[cloud]
cloud = mycloud
[policy:daily]
schedule = 0 3 * * *
retention = last=7, daily=14
"""


def problems(text: str, schema=SCHEMA) -> list[Problem]:
    raw = config_check.parse_text(textwrap.dedent(text), "c.conf")
    return config_check.check(raw, schema)


def lines(text: str) -> list[str]:
    return [str(p) for p in problems(text)]


def test_a_good_configuration_has_no_problem():
    assert problems(GOOD) == []


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            "[expiry]\nmax_deletions_per_pass = -1\n",
            "[expiry] max_deletions_per_pass: '-1' is not valid (Should be "
            "greater than or equal to 0); expected an integer of at least 0",
        ),
        (
            "[metrics]\nport = 99999\n",
            "[metrics] port: '99999' is not valid (Should be less than or "
            "equal to 65535); expected an integer from 0 to 65535",
        ),
        (
            "[daemon]\naudit_interval = -60\n",
            "[daemon] audit_interval: '-60' is not valid (Should be greater "
            "than or equal to 0); expected an integer of at least 0",
        ),
        (
            "[workflow]\n",
            "[workflow] (section): unknown section (c.conf:9); expected "
            "[policy:NAME] or one of [backup_cluster], [cloud], "
            "[consistency], [coordination], [daemon], [dr], [expiry], "
            "[files], [journal], [libvirt], [limits], [metrics], [report], "
            "[service_auth], [verify], [volume_cluster]",
        ),
        (
            "[policy:weekly]\nschedule = every 99999999999d\n",
            "[policy:weekly] schedule: '99999999999d' is too long; expected "
            "a whole number followed by s, m, h, d or w (e.g. 90s, 6h, "
            "14d), above 0 and at most 100 years",
        ),
        (
            "[policy:weekly]\nschedule = 0 3 * * 0\nretension = last=3\n",
            "[policy:weekly] retension: unknown option; did you mean "
            "'retention'?",
        ),
        (
            "[limits]\nmax_in_flgiht = 3\n",
            "[limits] max_in_flgiht: unknown option; did you mean "
            "'max_in_flight'?",
        ),
        (
            "[policy:weekly]\nschedule = 0 3 * * 0\nownership = me\n",
            "[policy:weekly] ownership: 'me' is not valid (Valid values are "
            "[project, service], but found 'me'); expected one of project, "
            "service",
        ),
        (
            "[policy:weekly]\nschedule = 0 3 * * 0\nrecord_checksums = "
            "maybe\n",
            "[policy:weekly] record_checksums: 'maybe' is not valid "
            "(Unexpected boolean value 'maybe'); expected true or false",
        ),
    ],
)
def test_each_problem_is_one_line_naming_section_option_and_form(extra, line):
    assert lines(GOOD + extra) == [line]


def test_poll_interval_zero_is_refused_before_any_run():
    assert lines(GOOD.replace("poll_interval = 2", "poll_interval = 0")) == [
        "[DEFAULT] poll_interval: '0' is not valid (Should be greater "
        "than or equal to 0.1); expected a number of at least 0.1"
    ]


def test_a_misspelled_policy_section_suggests_the_policy():
    found = lines(GOOD + "[polcy:weekly]\nschedule = 0 3 * * 0\n")
    assert len(found) == 1
    assert found[0].startswith(
        "[polcy:weekly] (section): unknown section (c.conf:9); did you mean "
        "[policy:weekly]? expected [policy:NAME] or one of "
        "[backup_cluster], [cloud]"
    )


def test_a_repeated_policy_section_is_reported_with_both_places():
    found = lines(GOOD + "[policy:daily]\njitter = 60\n")
    assert found == [
        "[policy:daily] (section): defined 2 times (c.conf:6, c.conf:9), "
        "which oslo.config merges silently; expected one section (rename "
        "one, or merge them by hand)"
    ]


def test_a_fixed_section_may_be_layered_across_files_but_not_repeated():
    raw = config_check.parse_text(GOOD, "a.conf") + config_check.parse_text(
        "[cloud]\ninterface = internal\n", "b.conf"
    )
    assert config_check.check(raw, SCHEMA) == []
    assert lines(GOOD + "[cloud]\ninterface = internal\n") == [
        "[cloud] (section): defined 2 times (c.conf:4, c.conf:9), which "
        "oslo.config merges silently; expected one section (rename one, "
        "or merge them by hand)"
    ]


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_deployment_id_is_refused(value):
    text = GOOD.replace("deployment_id = site-a", f"deployment_id ={value}")
    assert [(p.section, p.option) for p in problems(text)] == [
        ("DEFAULT", "deployment_id")
    ]


def test_every_problem_is_reported_at_once_sorted():
    found = problems(
        GOOD
        + "[metrics]\nport = 70000\n[expiry]\nmax_deletions_per_pass = -1\n"
        "[policy:weekly]\nschedule = now and then\nretention = lots\n"
    )
    assert [(p.section, p.option) for p in found] == [
        ("expiry", "max_deletions_per_pass"),
        ("metrics", "port"),
        ("policy:weekly", "retention"),
        ("policy:weekly", "schedule"),
    ]
    assert not any(p.transient for p in found)


def test_quiesce_required_needs_a_quiescer_that_can_freeze():
    text = GOOD + "[policy:weekly]\nschedule = 0 3 * * 0\nquiesce = required\n"
    assert lines(text + "transfer_mode = snapshot\n") == [
        "[policy:weekly] quiesce: 'required' needs a quiescer that can "
        "freeze guests, [consistency] quiescer 'noop' cannot; expected "
        "preferred or off, or a quiescer such as libvirt"
    ]
    libvirt = "[consistency]\nquiescer = libvirt\n"
    assert lines(text + "transfer_mode = snapshot\n" + libvirt) == []
    # Volume mode confirms the freeze through the volume cluster.
    assert lines(text + libvirt) == [
        "[policy:weekly] transfer_mode: 'volume' with quiesce = required "
        "needs read-only access to the volume cluster to confirm the copy "
        "lies inside the freeze; expected [volume_cluster] conf, or "
        "transfer_mode = snapshot"
    ]
    cluster = "[volume_cluster]\nconf = /etc/ceph/ceph.conf\n"
    assert lines(text + libvirt + cluster) == []


def test_an_unknown_quiescer_is_named_with_the_installed_ones():
    assert lines(GOOD + "[consistency]\nquiescer = libvrt\n") == [
        "[consistency] quiescer: no quiescer 'libvrt' is installed; did you "
        "mean 'libvirt'? expected one of libvirt, noop"
    ]


def test_scheduled_verification_needs_the_volume_cluster():
    text = GOOD + "[policy:weekly]\nschedule = 0 3 * * 0\n"
    assert lines(text + "verify_schedule = every 1d\n") == [
        "[policy:weekly] verify_schedule: verification reads restored "
        "images on the volume cluster; expected [volume_cluster] conf, or "
        "no verify_schedule"
    ]


def test_options_of_the_configured_auth_plugin_are_known():
    text = GOOD + (
        "[service_auth]\nauth_type = v3applicationcredential\n"
        "auth_url = http://k/v3\napplication_credential_id = x\n"
        "application_credential_secret = y\n"
    )
    raw = config_check.parse_text(text)
    assert config_check.check(raw, config_check.load_schema(raw)) == []
    assert [(p.section, p.option) for p in problems(text)] == [
        ("service_auth", "application_credential_id"),
        ("service_auth", "application_credential_secret"),
    ]


def test_reload_names_changed_options_only():
    old = {("cloud", "interface"): "public", ("DEFAULT", "debug"): False}
    new = {("cloud", "interface"): "internal", ("DEFAULT", "debug"): False}
    assert config_check.changed_options(old, new) == ["[cloud] interface"]
    assert config_check.changed_options(old, old) == []
    assert config_check.changed_options({}, {("metrics", "port"): 9}) == [
        "[metrics] port"
    ]


_KEYS = st.sampled_from(
    [
        "schedule",
        "retention",
        "full_every",
        "jitter",
        "port",
        "quiescer",
        "poll_interval",
        "deployment_id",
        "verify_sample",
        "error_grace_hours",
        "misfire_grace_time",
        "max_deletions_per_pass",
        "quiesce",
        "conf",
        "retension",
    ]
)
_SECTIONS = st.sampled_from(
    [
        "DEFAULT",
        "policy:a",
        "policy:b",
        "polcy:a",
        "metrics",
        "expiry",
        "consistency",
        "volume_cluster",
        "policy:Bad Name",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "99999999999999999999",
            "every 99999999999d",
            "every 0s",
            "0 3 * * 8",
            "last=7",
            "last=99999999999999999999",
            "within=99999999999w",
            "6, 99999999999d",
            "required",
            "101%",
            "1e309",
            "nan",
        ]
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
        max_size=20,
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_SECTIONS, st.lists(st.tuples(_KEYS, _VALUES), max_size=5)),
        max_size=6,
    )
)
def test_no_generated_configuration_makes_the_check_raise(sections):
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v.strip()}\n" for k, v in options)
        for name, options in sections
    )
    try:
        raw = config_check.parse_text(text)
    except iniparser.ParseError:
        return  # oslo.config refuses the file before the check runs
    for problem in config_check.check(raw, SCHEMA):
        assert "\n" not in str(problem)
        assert problem.section and problem.option


def test_several_daemons_need_a_shared_journal_and_a_group_driver():
    shared = "[journal]\nconnection = postgresql+psycopg://u@db/cinderbak\n"
    good = "[coordination]\nbackend_url = etcd3+http://etcd:2379\n"
    assert lines(GOOD + good + shared) == []
    assert lines(GOOD + good) == [
        "[journal] connection: SQLite cannot be shared by several daemons, "
        "and [coordination] backend_url is set; expected a PostgreSQL or "
        "MySQL URL every daemon reaches"
    ]
    [typo] = lines(
        GOOD + "[coordination]\nbackend_url = etcd3+htp://etcd:2379\n" + shared
    )
    assert typo.startswith(
        "[coordination] backend_url: no tooz driver with group membership "
        "for 'etcd3+htp'; did you mean 'etcd3+http'?"
    ), typo
    [locks_only] = lines(
        GOOD + "[coordination]\nbackend_url = postgresql://db/x\n" + shared
    )
    assert "no tooz driver with group membership for 'postgresql'" in (
        locks_only
    )


def test_a_check_interval_over_a_third_of_the_lease_is_refused():
    shared = "[journal]\nconnection = postgresql+psycopg://u@db/cinderbak\n"
    url = "[coordination]\nbackend_url = etcd3+http://etcd:2379\n"
    assert (
        lines(GOOD + url + "lease = 30\ncheck_interval = 10\n" + shared) == []
    )
    assert lines(GOOD + url + "check_interval = 12\n" + shared) == [
        "[coordination] check_interval: 12 s is more than a third of lease "
        "(30 s): a daemon must beat and look at the group several times "
        "per lease; expected at most 10"
    ]
