"""Pure parts of the libvirt quiescer: URI templating, error mapping."""

from __future__ import annotations

import libvirt
import pytest

from cinderbak.quiesce.base import (
    AgentNotConfigured,
    AgentNotResponding,
    AgentNotRunning,
    DomainNotFound,
    HostUnreachable,
    QuiesceFailed,
)
from cinderbak.quiesce.libvirt import build_uri, classify, list_opts


@pytest.mark.parametrize(
    ("template", "host", "uri"),
    [
        (
            "qemu+tls://{host}/system",
            "cmp-1.example.org",
            "qemu+tls://cmp-1.example.org/system",
        ),
        (
            "qemu+ssh://nova@{host}/system",
            "cmp1",
            "qemu+ssh://nova@cmp1/system",
        ),
        (
            "qemu+tcp://[{host}]:16509/system",
            "fd00::1",
            "qemu+tcp://[fd00::1]:16509/system",
        ),
        ("test:///default", None, "test:///default"),
        ("test:///default", "ignored", "test:///default"),
    ],
)
def test_build_uri(template, host, uri):
    assert build_uri(template, host) == uri


@pytest.mark.parametrize("host", [None, ""])
def test_a_template_with_host_needs_one(host):
    with pytest.raises(ValueError, match="names no compute host"):
        build_uri("qemu+tls://{host}/system", host)


@pytest.mark.parametrize(
    "host", ["a/b", "h?socket=/tmp/x", "user@h", "h#frag", "h s", "h\n"]
)
def test_host_names_cannot_reshape_the_uri(host):
    with pytest.raises(ValueError, match="not a valid host name"):
        build_uri("qemu+tls://{host}/system", host)


# Codes and wordings as measured against real QEMU and the test driver.
@pytest.mark.parametrize(
    ("code", "domain", "message", "cls", "may_be_frozen"),
    [
        (42, libvirt.VIR_FROM_QEMU, "Domain not found", DomainNotFound, False),
        (
            74,
            libvirt.VIR_FROM_QEMU,
            "argument unsupported: QEMU guest agent is not configured",
            AgentNotConfigured,
            False,
        ),
        (
            86,
            libvirt.VIR_FROM_QEMU,
            "Guest agent is not responding: QEMU guest agent is not connected",
            AgentNotRunning,
            False,
        ),
        (
            86,
            libvirt.VIR_FROM_QEMU,
            "Guest agent is not responding: Guest agent not available for now",
            AgentNotResponding,
            True,
        ),
        (86, libvirt.VIR_FROM_QEMU, "", AgentNotResponding, True),
        (
            68,
            libvirt.VIR_FROM_QEMU,
            "Timed out during operation: cannot acquire state change lock",
            AgentNotResponding,
            True,
        ),
        (
            1,
            libvirt.VIR_FROM_RPC,
            "internal error: client socket is closed",
            HostUnreachable,
            True,
        ),
        (
            38,
            libvirt.VIR_FROM_RPC,
            "Failed to connect socket",
            HostUnreachable,
            True,
        ),
        (
            45,
            libvirt.VIR_FROM_REMOTE,
            "authentication failed",
            HostUnreachable,
            True,
        ),
        (
            55,
            libvirt.VIR_FROM_QEMU,
            "Requested operation is not valid: domain is not running",
            QuiesceFailed,
            False,
        ),
        (
            1,
            libvirt.VIR_FROM_QEMU,
            "internal error: unable to execute QEMU agent command "
            "'guest-fsfreeze-freeze': ... the agent is in frozen state",
            QuiesceFailed,
            True,
        ),
    ],
)
def test_classify(code, domain, message, cls, may_be_frozen):
    assert classify(code, domain, message) == (cls, may_be_frozen)


def test_agent_not_running_is_an_agent_not_responding():
    # Callers catching code 86 as one class still catch both cases.
    assert issubclass(AgentNotRunning, AgentNotResponding)


def test_list_opts():
    [(group, opts)] = list_opts()
    assert group == "libvirt"
    assert {o.name for o in opts} == {
        "uri_template",
        "agent_timeout",
        "open_timeout",
        "keepalive_interval",
        "keepalive_count",
    }
