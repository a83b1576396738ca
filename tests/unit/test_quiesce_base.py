"""The quiescer contract: loading by name, capabilities, errors, noop."""

from __future__ import annotations

import importlib.metadata

import pytest
from oslo_config import cfg

from cinderbak.quiesce import base
from cinderbak.quiesce.base import (
    AgentNotRunning,
    Capability,
    MissingCapability,
    QuiesceRequiredError,
    QuiescerNotFound,
    ServerRef,
    ThawFailed,
    load_quiescer,
)
from cinderbak.quiesce.noop import NoopQuiescer
from cinderbak.quiesce.window import freeze_window, unfrozen_reason

ENTRY_POINTS = """\
[cinderbak.quiescers]
libvirt = cinderbak.quiesce.libvirt:LibvirtQuiescer
noop = cinderbak.quiesce.noop:NoopQuiescer
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The drivers' entry points, as setup.cfg declares them.

    Until the package is installed with them, a distribution's metadata
    in a temporary sys.path entry declares the same lines.
    """
    names = {
        ep.name for ep in importlib.metadata.entry_points(group=base.NAMESPACE)
    }
    if not {"libvirt", "noop"} <= names:
        dist = tmp_path / "cinderbak_quiescers-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: cinderbak-quiescers\nVersion: 0\n"
        )
        (dist / "entry_points.txt").write_text(ENTRY_POINTS)
        monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    return conf


def test_load_by_name(installed, conf):
    quiescer = load_quiescer("noop", conf)
    assert isinstance(quiescer, NoopQuiescer)
    assert quiescer.conf is conf


def test_load_checks_capabilities_first(installed, conf):
    with pytest.raises(MissingCapability) as info:
        load_quiescer(
            "noop", conf, required={Capability.APPLICATION_CONSISTENT}
        )
    assert info.value.missing == {Capability.APPLICATION_CONSISTENT}
    assert "'noop' lacks capability application_consistent" in str(info.value)


def test_libvirt_declares_application_consistent(installed, conf):
    quiescer = load_quiescer(
        "libvirt", conf, required={Capability.APPLICATION_CONSISTENT}
    )
    try:
        assert Capability.APPLICATION_CONSISTENT in quiescer.CAPABILITIES
    finally:
        quiescer.close()


def test_unknown_name(installed, conf):
    with pytest.raises(QuiescerNotFound) as info:
        load_quiescer("vmware", conf)
    assert "'vmware'" in str(info.value)
    assert {"libvirt", "noop"} <= info.value.available


def test_noop_freezes_nothing(conf):
    quiescer = NoopQuiescer(conf)
    server = ServerRef("s1", "h1")
    assert quiescer.freeze(server) == 0
    assert quiescer.thaw(server) == 0
    assert quiescer.CAPABILITIES == frozenset()


def test_messages_name_server_host_and_what_to_do():
    err = AgentNotRunning(ServerRef("s-42", "cmp7"), "not connected", code=86)
    text = str(err)
    assert text.startswith(
        "guest agent not running in server s-42 on host cmp7; install and "
        "start qemu-guest-agent"
    )
    assert text.endswith("[not connected]")
    assert err.code == 86
    thaw = str(ThawFailed(ServerRef("s-42", "cmp7"), "timeout"))
    assert "virsh domfsthaw s-42 on host cmp7" in thaw
    assert "(unknown)" in str(ThawFailed(ServerRef("s-42", None)))


def test_server_ref():
    assert str(ServerRef("s1", "h1")) == "server s1 on host h1"
    assert str(ServerRef("s1")) == "server s1 on host (unknown)"
    assert ServerRef("s1", "h1") == ServerRef("s1", "h1")


# -- the window with a quiescer that cannot freeze ------------------------


def test_off_yields_a_crash_window(conf):
    intents = []
    with freeze_window(
        NoopQuiescer(conf),
        ServerRef("s1", "h1"),
        max_freeze_seconds=5,
        mode="off",
        on_freeze_intent=intents.append,
    ) as window:
        assert window.consistency == "crash" and not window.is_frozen()
        assert window.error is None
    assert intents == [] and window.duration is None


def _noop_window(conf):
    """A window of a quiescer that cannot freeze, freezing preferred."""
    return freeze_window(
        NoopQuiescer(conf),
        ServerRef("s1", "h1"),
        max_freeze_seconds=5,
        mode="preferred",
    )


def test_crash_only_quiescer_is_crash_when_preferred(conf):
    with _noop_window(conf) as window:
        assert window.consistency == "crash"
        assert "does not freeze guests" in window.error


def test_unfrozen_reason_is_known_before_the_window(conf):
    """The run engine asks before opening a window whether it would freeze
    anything; the answer and the window's error are one text."""

    class Freezing(NoopQuiescer):
        CAPABILITIES = frozenset({Capability.APPLICATION_CONSISTENT})

    assert unfrozen_reason(Freezing(conf)) is None
    reason = unfrozen_reason(NoopQuiescer(conf))
    assert reason is not None and "NoopQuiescer" in reason
    with _noop_window(conf) as window:
        assert window.error == reason


def test_crash_only_quiescer_fails_required(conf):
    with pytest.raises(QuiesceRequiredError, match="does not freeze"):
        with freeze_window(
            NoopQuiescer(conf),
            ServerRef("s1", "h1"),
            max_freeze_seconds=5,
            mode="required",
        ):
            pytest.fail("the block must not run")


@pytest.mark.parametrize("seconds", [0, -1])
def test_max_freeze_seconds_must_be_positive(conf, seconds):
    with pytest.raises(ValueError, match="positive"):
        with freeze_window(
            NoopQuiescer(conf),
            ServerRef("s1"),
            max_freeze_seconds=seconds,
            mode="preferred",
        ):
            pass


def test_unknown_mode_is_refused(conf):
    with pytest.raises(ValueError):
        with freeze_window(
            NoopQuiescer(conf),
            ServerRef("s1"),
            max_freeze_seconds=5,
            mode="sometimes",
        ):
            pass
