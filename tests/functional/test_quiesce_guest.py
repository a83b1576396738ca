"""The libvirt quiescer against real guests: tools/tinyguest.

Each guest is a TCG QEMU domain running qemu-guest-agent and a writer that
appends a timestamped, fsync'ed line to its ext4 data disk every ~100 ms;
the lines are read from the disk image with debugfs. These tests prove what
the test driver cannot: a freeze really stops guest writes, libvirt's real
error codes (86, 74) and a slow freeze hook end with the guest thawed.

Set CINDERBAK_SKIP_TINYGUEST=1 to skip them (they need root, about 20 s of
packages and kernel download once, and about 5 s per guest boot).
"""

from __future__ import annotations

import os
import signal
import time

import libvirt
import pytest
from oslo_config import cfg

from cinderbak.quiesce import libvirt as lv
from cinderbak.quiesce.base import (
    AgentNotConfigured,
    AgentNotResponding,
    AgentNotRunning,
    HostUnreachable,
    QuiesceRequiredError,
    ServerRef,
)
from cinderbak.quiesce.window import freeze_window
from tests import tinyguest as tg

pytestmark = pytest.mark.skipif(
    os.environ.get("CINDERBAK_SKIP_TINYGUEST") == "1",
    reason="CINDERBAK_SKIP_TINYGUEST=1",
)

WRITER = "c0ffee00-0000-4000-8000-000000000001"
NO_AGENT = "c0ffee00-0000-4000-8000-000000000002"
NO_CHANNEL = "c0ffee00-0000-4000-8000-000000000003"
SLOW_HOOK = "c0ffee00-0000-4000-8000-000000000004"


@pytest.fixture(scope="module")
def guests():
    """The daemons, up for this module and stopped after it."""
    tiny = tg.TinyGuest()
    tiny.ensure_up()
    yield tiny
    tiny.down()
    assert not tiny.state()["daemons_alive"]


@pytest.fixture(scope="module")
def writer(guests):
    guest = guests.start("tg-writer", WRITER)
    yield guest
    guests.destroy(guest.name)


@pytest.fixture
def probe(guests):
    """A separate connection for looking at the guest from outside."""
    conn = libvirt.open(guests.uri)
    yield conn
    conn.close()


def quiescer_for(guests, **overrides):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    lv.register_opts(conf)
    # One host: the template has no {host}.
    conf.set_override("uri_template", guests.uri, "libvirt")
    for name, value in overrides.items():
        conf.set_override(name, value, "libvirt")
    return lv.LibvirtQuiescer(conf)


def wait_for_lines(disk, after_seq, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        lines = tg.read_writer_log(disk)
        if lines and lines[-1].seq > after_seq:
            return lines
        assert time.monotonic() < deadline, "the writer did not resume"
        time.sleep(0.2)


def test_freeze_stops_guest_writes_until_thaw(guests, writer, probe):
    server = ServerRef(WRITER, "tinyguest")
    q = quiescer_for(guests, agent_timeout=5)
    try:
        with freeze_window(
            q, server, max_freeze_seconds=30, mode="required"
        ) as window:
            assert window.quiesced and window.frozen[server] == 1
            assert tg.fsfreeze_status(probe, WRITER) == "frozen"
            # ext4 flushed everything when it froze: read it now and later.
            during = tg.read_writer_log(writer.disk)
            time.sleep(2.0)
            assert tg.read_writer_log(writer.disk) == during
        assert window.thawed[server] == 1
        assert tg.fsfreeze_status(probe, WRITER) == "thawed"
        lines = wait_for_lines(writer.disk, during[-1].seq + 5)
    finally:
        q.close()
    gap, after = tg.largest_gap(lines)
    # The writer reads the clock (guest uptime), then writes: the line in
    # flight when the freeze came is written after the thaw with a time
    # from before it (or from just into it, if the writer was between two
    # lines), so the largest gap spans the window give or take a period.
    assert window.duration - 0.35 <= gap <= window.duration + 0.8, (
        gap,
        window.duration,
    )
    assert after.seq - during[-1].seq in (1, 2)


def test_watchdog_thaws_a_real_guest(guests, writer, probe):
    server = ServerRef(WRITER, "tinyguest")
    q = quiescer_for(guests, agent_timeout=5)
    try:
        with freeze_window(
            q, server, max_freeze_seconds=1.0, mode="required"
        ) as window:
            assert window.wait_thawed(timeout=15)
            assert window.thawed_by_watchdog and not window.is_frozen()
            assert tg.fsfreeze_status(probe, WRITER) == "thawed"
        assert window.thawed[server] == 1
    finally:
        q.close()


def test_reconnects_after_libvirtd_restart(guests, writer):
    # keepalive off: the dead connection is found by the failing call.
    server = ServerRef(WRITER, "tinyguest")
    q = quiescer_for(guests, agent_timeout=5, keepalive_interval=0)
    try:
        assert q.freeze(server) == 1
        assert q.thaw(server) == 1
        before = q.connection(server)
        guests.restart_libvirtd()
        assert q.freeze(server) == 1
        assert q.thaw(server) == 1
        assert q.connection(server) is not before
    finally:
        q.close()


def test_a_hung_daemon_fails_calls_instead_of_hanging(guests, writer):
    # libvirtd stopped (SIGSTOP): keepalive ends the pending call, and the
    # reconnect gives up after open_timeout.
    server = ServerRef(WRITER, "tinyguest")
    q = quiescer_for(
        guests,
        agent_timeout=5,
        keepalive_interval=1,
        keepalive_count=1,
        open_timeout=2,
    )
    pid = guests.libvirtd_pid()
    try:
        q.connection(server)
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(HostUnreachable) as info:
                q.thaw(server)
            elapsed = time.monotonic() - start
        finally:
            os.kill(pid, signal.SIGCONT)
        assert elapsed < 10, elapsed
        assert info.value.guest_may_be_frozen
        assert q.thaw(server) == 0  # reconnected
    finally:
        q.close()


def test_agent_not_running(guests, probe):
    guest = guests.start("tg-noagent", NO_AGENT, agent=False)
    server = ServerRef(NO_AGENT, "tinyguest")
    q = quiescer_for(guests, agent_timeout=5)
    try:
        with pytest.raises(AgentNotRunning) as info:
            q.freeze(server)
        err = info.value
        assert err.code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE
        assert not err.guest_may_be_frozen
        assert (
            f"guest agent not running in server {NO_AGENT} on host "
            "tinyguest; install and start qemu-guest-agent" in str(err)
        )

        thawed = []
        with freeze_window(
            q,
            server,
            max_freeze_seconds=10,
            mode="preferred",
            on_thawed=lambda s, w: thawed.append(s),
        ) as window:
            assert not window.quiesced
            assert window.consistency == "crash"
            assert "guest agent not running" in window.error
        assert window.thawed_at is not None and window.thaw_errors == {}
        assert thawed == [server]

        with pytest.raises(QuiesceRequiredError) as info:
            with freeze_window(
                q, server, max_freeze_seconds=10, mode="required"
            ):
                pytest.fail("the block must not run")
        assert info.value.code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE
        assert isinstance(info.value.__cause__, AgentNotRunning)
    finally:
        q.close()
        guests.destroy(guest.name)


def test_no_agent_channel(guests):
    guest = guests.start("tg-nochannel", NO_CHANNEL, channel=False)
    server = ServerRef(NO_CHANNEL, "tinyguest")
    q = quiescer_for(guests, agent_timeout=5)
    try:
        with pytest.raises(AgentNotConfigured) as info:
            q.freeze(server)
        assert info.value.code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED
        assert "hw_qemu_guest_agent" in str(info.value)
        with freeze_window(
            q, server, max_freeze_seconds=10, mode="preferred"
        ) as window:
            assert window.consistency == "crash"
        assert window.thaw_errors == {}
    finally:
        q.close()
        guests.destroy(guest.name)


def test_slow_freeze_hook_ends_thawed(guests, probe):
    # The hook sleeps 6 s; libvirt gives up after agent_timeout=2 s but the
    # guest goes on and freezes. The window must thaw it anyway.
    guest = guests.start("tg-slowhook", SLOW_HOOK, hook_sleep=6)
    server = ServerRef(SLOW_HOOK, "tinyguest")
    q = quiescer_for(guests, agent_timeout=2)
    try:
        start = time.monotonic()
        with freeze_window(
            q, server, max_freeze_seconds=3, mode="preferred"
        ) as window:
            assert not window.quiesced and not window.is_frozen()
            err = window.errors[server]
            assert type(err) is AgentNotResponding
            assert err.code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE
            assert err.guest_may_be_frozen
        elapsed = time.monotonic() - start
        assert window.thaw_errors == {}
        # The guest did freeze after libvirt gave up, and was thawed.
        assert window.thawed[server] == 1
        assert tg.fsfreeze_status(probe, SLOW_HOOK) == "thawed"
        assert elapsed < 30
        last = tg.read_writer_log(guest.disk)[-1].seq
        wait_for_lines(guest.disk, last + 3)
    finally:
        q.close()
        guests.destroy(guest.name)
