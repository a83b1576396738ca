"""The libvirt quiescer and the freeze window against libvirt's test driver.

Real libvirt-python and real libvirtError objects, in process: each "host"
is a node XML file (``test:///<tmp>/<host>.xml``), an independent
hypervisor with domains of fixed UUIDs. The test driver keeps freeze state
per domain and answers a second ``fsFreeze`` with 0 when already frozen and
a second ``fsThaw`` with 0 when already thawed, so those calls are used as
probes of the guest's state.
"""

from __future__ import annotations

import threading
import time

import libvirt
import pytest
from oslo_config import cfg

from cinderbak.quiesce import libvirt as lv
from cinderbak.quiesce.base import (
    DomainNotFound,
    HostUnreachable,
    QuiesceRequiredError,
    ServerRef,
    ThawFailed,
)
from cinderbak.quiesce.window import freeze_window

A = "a0000000-0000-0000-0000-00000000000a"
B = "b0000000-0000-0000-0000-00000000000b"
C = "c0000000-0000-0000-0000-00000000000c"  # on compute2 only
MISSING = "00000000-0000-0000-0000-000000000000"

NODE = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
{domains}
</node>"""
DOMAIN = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory>65536</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>"""


@pytest.fixture
def template(tmp_path):
    hosts = {"compute1": {"a": A, "b": B}, "compute2": {"c": C}}
    for host, domains in hosts.items():
        xml = "\n".join(
            DOMAIN.format(name=n, uuid=u) for n, u in domains.items()
        )
        (tmp_path / f"{host}.xml").write_text(NODE.format(domains=xml))
    return f"test://{tmp_path}/{{host}}.xml"


def make_conf(template, **overrides):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    lv.register_opts(conf)
    conf.set_override("uri_template", template, "libvirt")
    for name, value in overrides.items():
        conf.set_override(name, value, "libvirt")
    return conf


class CountingQuiescer(lv.LibvirtQuiescer):
    """The real driver, counting calls and optionally slowing freezes."""

    def __init__(self, conf, freeze_delay=0.0):
        super().__init__(conf)
        self.calls = []
        self.freeze_delay = freeze_delay
        self.lock = threading.Lock()

    def freeze(self, server):
        with self.lock:
            self.calls.append(("freeze", server.server_id))
        time.sleep(self.freeze_delay)
        return super().freeze(server)

    def thaw(self, server):
        with self.lock:
            self.calls.append(("thaw", server.server_id))
        return super().thaw(server)

    def thaws(self):
        return [c for c in self.calls if c[0] == "thaw"]


@pytest.fixture
def quiescer(template):
    q = CountingQuiescer(make_conf(template))
    yield q
    q.close()


def dom(quiescer, server):
    return quiescer.connection(server).lookupByUUIDString(server.server_id)


def assert_frozen(quiescer, server):
    # fsFreeze on a frozen test domain freezes nothing more and returns 0.
    assert dom(quiescer, server).fsFreeze() == 0


def assert_thawed(quiescer, server):
    # fsThaw on a thawed test domain returns 0.
    assert dom(quiescer, server).fsThaw() == 0


S_A = ServerRef(A, "compute1")
S_B = ServerRef(B, "compute1")
S_C = ServerRef(C, "compute2")


# -- the driver --------------------------------------------------------------


def test_freeze_and_thaw_through_the_driver(quiescer):
    assert quiescer.freeze(S_A) == 2  # the test driver's "/" and "/boot"
    assert_frozen(quiescer, S_A)
    assert quiescer.thaw(S_A) == 2
    assert quiescer.thaw(S_A) == 0


def test_unknown_domain_is_a_clear_error(quiescer):
    server = ServerRef(MISSING, "compute1")
    with pytest.raises(DomainNotFound) as info:
        quiescer.freeze(server)
    err = info.value
    assert err.code == libvirt.VIR_ERR_NO_DOMAIN
    assert not err.guest_may_be_frozen
    assert MISSING in str(err) and "compute1" in str(err)
    assert "no libvirt domain" in str(err)


def test_uri_template_is_filled_per_host(quiescer, template):
    assert quiescer.uri(S_A) == template.replace("{host}", "compute1")
    assert quiescer.uri(S_C) == template.replace("{host}", "compute2")
    # Each host is its own hypervisor: C lives on compute2 only.
    assert quiescer.freeze(S_C) == 2
    with pytest.raises(DomainNotFound):
        quiescer.freeze(ServerRef(C, "compute1"))
    assert quiescer.thaw(S_C) == 2


def test_one_connection_per_host_is_reused(quiescer):
    conn = quiescer.connection(S_A)
    assert quiescer.connection(S_B) is conn
    assert quiescer.connection(S_C) is not conn
    quiescer.freeze(S_A)
    quiescer.freeze(S_B)
    assert quiescer.connection(S_A) is conn
    quiescer.thaw(S_A)
    quiescer.thaw(S_B)
    quiescer.close()
    assert quiescer.connection(S_A) is not conn


def test_template_without_host_serves_every_server(template):
    one = template.replace("{host}", "compute1")
    q = lv.LibvirtQuiescer(make_conf(one))
    try:
        assert q.uri(ServerRef(A, None)) == one
        assert q.connection(ServerRef(A, None)) is q.connection(S_B)
        assert q.freeze(ServerRef(A, "anything")) == 2
        assert q.thaw(ServerRef(A, None)) == 2
    finally:
        q.close()


def test_missing_host_is_a_clear_error(quiescer):
    with pytest.raises(HostUnreachable) as info:
        quiescer.freeze(ServerRef(A, None))
    assert "names no compute host" in str(info.value)
    assert not info.value.guest_may_be_frozen


def test_unreachable_host_is_a_clear_error(tmp_path):
    template = f"qemu+unix:///system?socket={tmp_path}/{{host}}.sock"
    q = lv.LibvirtQuiescer(make_conf(template))
    try:
        with pytest.raises(HostUnreachable) as info:
            q.freeze(ServerRef(A, "compute9"))
    finally:
        q.close()
    err = info.value
    assert err.code == libvirt.VIR_ERR_SYSTEM_ERROR
    assert "compute9" in str(err) and "cannot reach the hypervisor" in str(err)


def test_bad_host_name_cannot_change_the_uri(quiescer):
    with pytest.raises(HostUnreachable, match="not a valid host name"):
        quiescer.freeze(ServerRef(A, "evil/../../etc/x?socket=/tmp/s"))


def test_agent_timeout_is_tolerated_when_unsupported(template):
    # The test driver has no virDomainAgentSetResponseTimeout.
    q = lv.LibvirtQuiescer(make_conf(template, agent_timeout=3))
    try:
        assert q.freeze(S_A) == 2
        assert q.thaw(S_A) == 2
    finally:
        q.close()


def test_real_libvirt_errors_are_classified(quiescer):
    conn = quiescer.connection(S_A)
    with pytest.raises(libvirt.libvirtError) as info:
        conn.lookupByUUIDString(MISSING)
    err = lv.to_quiesce_error(S_A, info.value)
    assert isinstance(err, DomainNotFound) and err.code == 42
    with pytest.raises(libvirt.libvirtError) as info:
        conn.lookupByUUIDString(A).fsFreeze(["/nonexistent"])
    err = lv.to_quiesce_error(S_A, info.value)
    assert err.code == libvirt.VIR_ERR_OPERATION_INVALID
    assert not err.guest_may_be_frozen


# -- the freeze window -------------------------------------------------


def test_window_freezes_for_the_block_and_hooks_fire_in_order(quiescer):
    events = []

    def intent(server):
        events.append(("intent", server))
        assert quiescer.calls == []  # recorded before any freeze

    def thawed(server, window):
        events.append(("thawed", server))
        assert window.thawed[server] == 2
        # The journal's thaw step records this: never None here.
        assert window.duration is not None and window.duration > 0

    with freeze_window(
        quiescer,
        S_A,
        max_freeze_seconds=30,
        mode="required",
        on_freeze_intent=intent,
        on_thawed=thawed,
    ) as window:
        events.append(("body", S_A))
        assert window.quiesced and window.is_frozen()
        assert window.consistency == "quiesced"
        assert window.error is None
        assert 29 < window.remaining() <= 30
        assert not window.expired()
        assert_frozen(quiescer, S_A)
    assert events == [("intent", S_A), ("body", S_A), ("thawed", S_A)]
    assert not window.is_frozen()
    assert not window.thawed_by_watchdog
    assert window.frozen_at <= window.thawed_at
    assert 0 < window.duration < 5
    assert quiescer.thaws() == [("thaw", A)]
    assert_thawed(quiescer, S_A)


def test_window_thaws_when_the_block_raises(quiescer):
    with pytest.raises(RuntimeError, match="copy failed"):
        with freeze_window(
            quiescer, S_A, max_freeze_seconds=30, mode="required"
        ):
            raise RuntimeError("copy failed")
    assert quiescer.thaws() == [("thaw", A)]
    assert_thawed(quiescer, S_A)


def test_watchdog_thaws_a_hanging_block_exactly_once(quiescer):
    thawed_in = []
    with freeze_window(
        quiescer,
        S_A,
        max_freeze_seconds=0.3,
        mode="required",
        on_thawed=lambda s, w: thawed_in.append(threading.current_thread()),
    ) as window:
        assert window.is_frozen()
        # The block "hangs"; the watchdog must thaw on its own.
        assert window.wait_thawed(timeout=10)
        assert window.thawed_by_watchdog
        assert window.expired() and not window.is_frozen()
        assert window.remaining() == 0
        assert_thawed(quiescer, S_A)  # thawed while the block still runs
    assert quiescer.thaws() == [("thaw", A)]  # finally did not thaw again
    assert thawed_in[0] is not threading.main_thread()
    assert 0.3 <= window.duration < 2


def test_preferred_falls_back_to_crash_and_thaws(quiescer):
    events = []
    missing = ServerRef(MISSING, "compute1")
    with freeze_window(
        quiescer,
        missing,
        max_freeze_seconds=30,
        mode="preferred",
        on_freeze_intent=lambda s: events.append("intent"),
        on_thawed=lambda s, w: events.append("thawed"),
    ) as window:
        events.append("body")
        assert not window.quiesced and not window.is_frozen()
        assert window.consistency == "crash"
        assert "no libvirt domain" in window.error
        assert isinstance(window.errors[missing], DomainNotFound)
    # Thawed at once after the failed freeze, before the block ran.
    assert events == ["intent", "thawed", "body"]
    assert quiescer.thaws() == [("thaw", MISSING)]


def test_required_raises_and_never_runs_the_block(quiescer):
    ran = []
    missing = ServerRef(MISSING, "compute1")
    with pytest.raises(QuiesceRequiredError) as info:
        with freeze_window(
            quiescer, missing, max_freeze_seconds=30, mode="required"
        ):
            ran.append(True)
    assert ran == []
    assert isinstance(info.value.__cause__, DomainNotFound)
    assert "cinderbak:quiesce=required" in str(info.value)
    assert MISSING in str(info.value)
    assert quiescer.thaws() == [("thaw", MISSING)]


def test_off_freezes_nothing(quiescer):
    intents = []
    with freeze_window(
        quiescer,
        S_A,
        max_freeze_seconds=30,
        mode="off",
        on_freeze_intent=intents.append,
    ) as window:
        assert not window.quiesced and window.consistency == "crash"
        assert window.error is None
    assert intents == [] and quiescer.calls == []
    assert quiescer.freeze(S_A) == 2  # it had not been frozen
    quiescer.thaw(S_A)


def test_one_failed_server_thaws_the_others(quiescer):
    missing = ServerRef(MISSING, "compute1")
    with freeze_window(
        quiescer, [S_A, missing, S_C], max_freeze_seconds=30, mode="preferred"
    ) as window:
        assert not window.quiesced
        assert set(window.errors) == {missing}
        assert_thawed(quiescer, S_A)  # thawed before the block
        assert_thawed(quiescer, S_C)
    assert sorted(quiescer.thaws()) == [
        ("thaw", MISSING),
        ("thaw", A),
        ("thaw", C),
    ]


def test_several_servers_freeze_together(quiescer):
    with freeze_window(
        quiescer, [S_A, S_B, S_C], max_freeze_seconds=30, mode="required"
    ) as window:
        assert window.quiesced
        for server in (S_A, S_B, S_C):
            assert window.frozen[server] == 2
            assert_frozen(quiescer, server)
    for server in (S_A, S_B, S_C):
        assert window.thawed[server] == 2
        assert_thawed(quiescer, server)


def test_freeze_landing_after_the_watchdog_is_thawed_again(template):
    # The freeze takes longer than the window: the watchdog thaws first
    # (nothing frozen yet), the freeze lands afterwards and must be thawed.
    q = CountingQuiescer(make_conf(template), freeze_delay=0.5)
    try:
        with freeze_window(
            q, S_A, max_freeze_seconds=0.1, mode="preferred"
        ) as window:
            assert window.thawed_by_watchdog
            assert not window.quiesced and not window.is_frozen()
            assert "max_freeze_seconds=0.1" in window.error
            assert_thawed(q, S_A)
        assert q.thaws() == [("thaw", A), ("thaw", A)]
    finally:
        q.close()


def test_thaw_failure_is_loud(quiescer, caplog):
    # Freeze, then stop the domain: its thaw fails ("domain is not
    # running") and the window cannot prove the guest thawed.
    thawed = []
    with pytest.raises(ThawFailed) as info:
        with freeze_window(
            quiescer,
            S_A,
            max_freeze_seconds=30,
            mode="required",
            on_thawed=lambda s, w: thawed.append(s),
            thaw_attempts=3,
            thaw_wait_max=0.01,
        ) as window:
            dom(quiescer, S_A).destroy()
    assert "COULD NOT THAW" in str(info.value)
    assert f"virsh domfsthaw {A}" in str(info.value)
    assert len(quiescer.thaws()) == 3
    assert thawed == []  # the journal must keep the server as frozen
    assert S_A in window.thaw_errors
    assert any(
        r.levelname == "ERROR" and "COULD NOT THAW" in r.getMessage()
        for r in caplog.records
    )


def test_thawed_hook_failure_reaches_the_caller(quiescer):
    def broken(server, window):
        raise OSError("journal disk full")

    with pytest.raises(OSError, match="journal disk full"):
        with freeze_window(
            quiescer,
            S_A,
            max_freeze_seconds=30,
            mode="required",
            on_thawed=broken,
        ):
            pass
    assert_thawed(quiescer, S_A)
