"""The sd_notify protocol, against real datagram sockets."""

import os
import socket
import uuid

import pytest

from cinderbak import systemd


def test_no_notify_socket_means_not_under_systemd():
    assert systemd.notify_address({}) is None
    assert systemd.notify(systemd.READY, environ={}) is False


def test_addresses():
    assert systemd.notify_address({"NOTIFY_SOCKET": "/run/x"}) == "/run/x"
    assert systemd.notify_address({"NOTIFY_SOCKET": "@abs"}) == b"\0abs"
    # Meant for virtual machines; not ours to use.
    assert systemd.notify_address({"NOTIFY_SOCKET": "vsock:2:1"}) is None


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid(environ, expected):
    assert systemd.watchdog_interval(environ, pid=42) == expected


def test_watchdog_pid_defaults_to_this_process():
    environ = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(environ) == 2.0


def test_a_status_is_one_line():
    assert systemd.message("READY=1", status="two\nlines") == (
        b"READY=1\nSTATUS=two lines"
    )


def _receive(sock):
    sock.settimeout(5)
    return sock.recv(4096)


def test_notify_sends_one_datagram_to_a_path(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sent = systemd.notify(
            systemd.READY, status="3 policies", environ={"NOTIFY_SOCKET": path}
        )
        assert sent is True
        assert _receive(sock) == b"READY=1\nSTATUS=3 policies"


def test_notify_reaches_an_abstract_socket():
    name = f"cinderbak-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert systemd.notify(
            systemd.WATCHDOG, environ={"NOTIFY_SOCKET": "@" + name}
        )
        assert _receive(sock) == b"WATCHDOG=1"


def test_a_vanished_socket_is_reported_not_raised(tmp_path):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "gone")}
    assert systemd.notify(systemd.STOPPING, environ=environ) is False


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        environ = {"NOTIFY_SOCKET": path}
        sent = [
            systemd.notify(systemd.WATCHDOG, environ=environ)
            for _ in range(5000)
        ]
        # The queue filled up and later messages were dropped, at once.
        assert sent[0] is True
        assert sent[-1] is False
