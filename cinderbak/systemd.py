"""Telling systemd how the daemon is doing (the sd_notify protocol).

The protocol is one datagram of ``KEY=VALUE`` lines sent to the socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket). Written here rather than taken from a library: it is these few
lines, and the small libraries that do it either wrap libsystemd (a C
build dependency) or are no longer maintained. Outside systemd nothing is
sent and nothing fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"
RELOADING = "RELOADING=1"


def notify_address(
    environ: Mapping[str, str] = os.environ,
) -> str | bytes | None:
    """Given the environment, return the address to send to, or None.

    An abstract socket (``@name``) becomes ``b"\\0name"``. Raise nothing:
    an address we cannot use (e.g. ``vsock:``, meant for virtual
    machines) is reported as None.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Given the environment, return seconds between watchdog pings.

    That is half of ``$WATCHDOG_USEC`` (systemd's advice), or None when
    the watchdog is off, the value is not a positive number, or
    ``$WATCHDOG_PID`` names another process.
    """
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def message(*items: str, status: str | None = None) -> bytes:
    """Given ``KEY=VALUE`` items and an optional status, return the
    datagram. A status is one line: newlines become spaces."""
    lines = list(items)
    if status is not None:
        lines.append("STATUS=" + " ".join(status.splitlines()))
    return "\n".join(lines).encode()


def notify(
    *items: str,
    status: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Send ``items`` (and ``STATUS=status``) to systemd.

    Return True if it was sent, False when not under systemd or when
    sending failed (logged, never raised: a lost status line must not
    stop a backup). Never waits: when the receiver's queue is full the
    message is dropped, rather than a backup run blocking on it.
    """
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(
            socket.AF_UNIX,
            socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
        ) as sock:
            sock.connect(address)
            sock.send(message(*items, status=status))
    except OSError as exc:
        LOG.warning("could not notify systemd (%s): %s", address, exc)
        return False
    return True
