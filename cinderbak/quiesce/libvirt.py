"""Quiesce through libvirt and the QEMU guest agent (``fsFreeze``/``fsThaw``).

One libvirt connection per compute host, built from ``[libvirt]
uri_template``, opened on first use, shared by every thread and re-opened
when libvirt reports it dead. A domain is looked up by the server UUID
(Nova makes it the libvirt domain UUID).

Facts this module is built on (measured; see the libvirt notes):

* A guest agent timeout (code 86) does not mean "not frozen": the guest may
  finish freezing after libvirt gave up. So such errors carry
  ``guest_may_be_frozen=True`` and the freeze window thaws after them.
* ``agentSetResponseTimeout`` bounds every agent call, so a slow freeze hook
  cannot block a freeze or a thaw for ever; the test driver does not
  implement it (VIR_ERR_NO_SUPPORT), which is tolerated.
* ``fsThaw`` with mount points is refused by real QEMU: freeze and thaw
  always act on every filesystem.
"""

from __future__ import annotations

import concurrent.futures
import functools
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from oslo_config import cfg
from oslo_log import log as logging

try:
    import libvirt
except ImportError:  # the optional "libvirt" extra; list_opts() still works
    libvirt = None

from cinderbak.quiesce.base import (
    AgentNotConfigured,
    AgentNotResponding,
    AgentNotRunning,
    Capability,
    DomainNotFound,
    HostUnreachable,
    QuiesceError,
    QuiesceFailed,
    Quiescer,
    ServerRef,
)

LOG = logging.getLogger(__name__)
GROUP = "libvirt"

OPTS = [
    cfg.StrOpt(
        "uri_template",
        default="qemu+tls://{host}/system",
        help="libvirt URI of a compute host. {host} is replaced by the "
        "compute host of the volume attachment (attached_host / "
        "host_name). A template without {host} sends every server to one "
        "hypervisor (single-host or test setups).",
    ),
    cfg.IntOpt(
        "agent_timeout",
        default=10,
        min=0,
        help="Seconds libvirt waits for the guest agent to answer a freeze "
        "or thaw (virDomainAgentSetResponseTimeout, set on the domain "
        "before each call), so that a slow freeze hook in the guest cannot "
        "block for ever. Keep it below the policies' max freeze seconds. "
        "0 leaves the domain's setting alone (libvirt's default blocks "
        "until the agent answers).",
    ),
    cfg.IntOpt(
        "open_timeout",
        default=20,
        min=1,
        help="Seconds to wait for a connection to a host's libvirtd to "
        "open. libvirt itself waits for ever on a daemon that accepts the "
        "socket but does not answer (hung, or stopped).",
    ),
    cfg.IntOpt(
        "keepalive_interval",
        default=5,
        min=0,
        help="Seconds between libvirt keepalive messages on each host "
        "connection; a host that misses keepalive_count of them in a row "
        "is declared dead and its pending calls fail instead of hanging. "
        "0 disables keepalive.",
    ),
    cfg.IntOpt(
        "keepalive_count",
        default=3,
        min=1,
        help="Unanswered keepalive messages after which a host connection "
        "is closed.",
    ),
]

# Host names as Nova reports them; anything else could change the URI's
# meaning (a '/', '?' or '@' in it), so it is refused.
_HOST_RE = re.compile(r"[A-Za-z0-9_.:\[\]-]+")


@functools.cache
def _connection_codes() -> frozenset[int]:
    """libvirt error codes that say the connection itself is gone."""
    return frozenset(
        {
            libvirt.VIR_ERR_NO_CONNECT,
            libvirt.VIR_ERR_INVALID_CONN,
            libvirt.VIR_ERR_AUTH_FAILED,
            libvirt.VIR_ERR_AUTH_CANCELLED,
            libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        }
    )


@functools.cache
def _connection_domains() -> frozenset[int]:
    """libvirt error domains of the RPC layer (a remote connection)."""
    return frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


T = TypeVar("T")


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def build_uri(template: str, host: str | None) -> str:
    """Given a URI template and a compute host, return the host's URI.

    Raise ValueError when the template needs a host and there is none, or
    the host name is not a plain host name.
    """
    if "{host}" not in template:
        return template
    if not host:
        raise ValueError(
            "the volume attachment names no compute host, and "
            f"[{GROUP}] uri_template {template!r} needs one"
        )
    if not _HOST_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name")
    return template.replace("{host}", host)


def classify(
    code: int, domain: int, message: str = ""
) -> tuple[type[QuiesceError], bool]:
    """Given a libvirt error, return our error class and whether the guest
    may be frozen despite the error (True when unsure)."""
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound, False
    if code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED:
        # Raised for an unconfigured agent channel; we never pass mount
        # points, the other cause of this code.
        return AgentNotConfigured, False
    if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
        # libvirt has one code for "the agent never connected" and "the
        # agent did not answer in time"; only the first proves that nothing
        # reached the guest. Unknown wording stays on the safe side.
        if "not connected" in message:
            return AgentNotRunning, False
        return AgentNotResponding, True
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        # Another agent job (e.g. a freeze stuck in a hook) holds the
        # domain's job lock.
        return AgentNotResponding, True
    if code in _connection_codes() or domain in _connection_domains():
        return HostUnreachable, True
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        # libvirt refused before asking the agent (domain not running).
        return QuiesceFailed, False
    return QuiesceFailed, True


def to_quiesce_error(
    server: ServerRef, exc: libvirt.libvirtError
) -> QuiesceError:
    code, domain = exc.get_error_code(), exc.get_error_domain()
    message = exc.get_error_message() or str(exc)
    cls, may_be_frozen = classify(code, domain, message)
    return cls(server, message, code=code, guest_may_be_frozen=may_be_frozen)


class _ConnectionLost(Exception):
    def __init__(self, error: libvirt.libvirtError) -> None:
        super().__init__(str(error))
        self.error = error


class _Host:
    """One hypervisor's shared connection and the lock that guards it.

    The lock is held only to open or replace the connection, never during
    a call: a thaw must not wait behind a freeze stuck in the same host.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: libvirt.virConnect | None = None


class LibvirtQuiescer(Quiescer):
    """Freeze and thaw through libvirt's guest agent API."""

    CAPABILITIES = frozenset({Capability.APPLICATION_CONSISTENT})

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        if libvirt is None:
            raise ImportError(
                "the libvirt quiescer needs libvirt-python: install "
                "cinderbak[libvirt] (and the system's libvirt-dev to build "
                "it)"
            )
        super().__init__(conf)
        register_opts(conf)
        libvirt.registerErrorHandler(_log_libvirt_error, None)
        if conf.libvirt.keepalive_interval:
            _ensure_event_loop()
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()

    def uri(self, server: ServerRef) -> str:
        """Return the URI of the server's host; raise HostUnreachable."""
        try:
            return build_uri(self.conf.libvirt.uri_template, server.host)
        except ValueError as exc:
            raise HostUnreachable(
                server, str(exc), guest_may_be_frozen=False
            ) from None

    def connection(self, server: ServerRef) -> libvirt.virConnect:
        """Return the live shared connection to the server's host.

        Opened on first use, re-opened when libvirt says it is dead. Raise
        HostUnreachable when it cannot be opened.
        """
        uri = self.uri(server)
        with self._hosts_lock:
            host = self._hosts.setdefault(uri, _Host())
        with host.lock:
            if host.conn is not None:
                if _is_alive(host.conn):
                    return host.conn
                LOG.info("libvirt connection to %s is dead; reopening", uri)
                _close_quietly(host.conn)
                host.conn = None
            host.conn = self._open(server, uri)
            return host.conn

    def freeze(self, server: ServerRef) -> int:
        def op(dom: libvirt.virDomain) -> int:
            self._set_agent_timeout(server, dom)
            return int(dom.fsFreeze())

        frozen = self._call(server, op)
        LOG.debug("froze %d filesystems of %s", frozen, server)
        return frozen

    def thaw(self, server: ServerRef) -> int:
        def op(dom: libvirt.virDomain) -> int:
            self._set_agent_timeout(server, dom)
            return int(dom.fsThaw())

        thawed = self._call(server, op)
        LOG.debug("thawed %d filesystems of %s", thawed, server)
        return thawed

    def close(self) -> None:
        with self._hosts_lock:
            hosts, self._hosts = self._hosts, {}
        for host in hosts.values():
            with host.lock:
                if host.conn is not None:
                    _close_quietly(host.conn)
                    host.conn = None

    # -- internals --------------------------------------------------------

    def _open(self, server: ServerRef, uri: str) -> libvirt.virConnect:
        timeout = self.conf.libvirt.open_timeout
        try:
            conn = _open_bounded(uri, timeout)
        except libvirt.libvirtError as exc:
            # Whatever the code (socket, TLS, auth, bad URI), the operator
            # reads the same thing: this host's libvirt cannot be reached.
            raise HostUnreachable(
                server,
                exc.get_error_message() or str(exc),
                code=exc.get_error_code(),
                guest_may_be_frozen=False,
            ) from exc
        except concurrent.futures.TimeoutError:
            raise HostUnreachable(
                server,
                f"libvirtd at {uri} accepted no connection in {timeout}s",
                guest_may_be_frozen=False,
            ) from None
        interval = self.conf.libvirt.keepalive_interval
        if interval:
            try:
                conn.setKeepAlive(interval, self.conf.libvirt.keepalive_count)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    LOG.warning("no libvirt keepalive on %s: %s", uri, exc)
        LOG.debug("opened libvirt connection to %s", uri)
        return conn

    def _call(
        self, server: ServerRef, op: Callable[[libvirt.virDomain], T]
    ) -> T:
        # One immediate reconnect when the shared connection turns out dead
        # (daemon restarted, keepalive expired), not a retry policy: the
        # freeze window owns retries and their backoff.
        try:
            return self._attempt(server, op)
        except _ConnectionLost as lost:
            LOG.info(
                "lost the libvirt connection for %s (%s); reconnecting",
                server,
                lost,
            )
        try:
            return self._attempt(server, op)
        except _ConnectionLost as lost:
            raise to_quiesce_error(server, lost.error) from lost.error
        except QuiesceError as exc:
            # The call that lost the connection may have reached the guest.
            exc.guest_may_be_frozen = True
            raise

    def _attempt(
        self, server: ServerRef, op: Callable[[libvirt.virDomain], T]
    ) -> T:
        conn = self.connection(server)
        try:
            return op(conn.lookupByUUIDString(server.server_id))
        except libvirt.libvirtError as exc:
            if _connection_lost(conn, exc):
                self._forget(server, conn)
                raise _ConnectionLost(exc) from exc
            raise to_quiesce_error(server, exc) from exc

    def _forget(self, server: ServerRef, conn: libvirt.virConnect) -> None:
        with self._hosts_lock:
            host = self._hosts.get(self.uri(server))
        if host is None:
            return
        with host.lock:
            if host.conn is conn:
                _close_quietly(conn)
                host.conn = None

    def _set_agent_timeout(
        self, server: ServerRef, dom: libvirt.virDomain
    ) -> None:
        timeout = self.conf.libvirt.agent_timeout
        if not timeout:
            return
        try:
            dom.agentSetResponseTimeout(timeout)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            LOG.debug("agent timeout not supported for %s", server)


def _connection_lost(
    conn: libvirt.virConnect, exc: libvirt.libvirtError
) -> bool:
    if exc.get_error_domain() in _connection_domains():
        return True
    code = exc.get_error_code()
    return code in _connection_codes() or not _is_alive(conn)


def _open_bounded(uri: str, timeout: float) -> libvirt.virConnect:
    """Open a connection, waiting at most ``timeout`` seconds.

    Raise libvirtError, or concurrent.futures.TimeoutError; a connection
    that opens after the timeout is closed at once. The opening runs in a
    daemon thread because libvirt offers no timeout of its own and the
    call cannot be interrupted.
    """
    future: concurrent.futures.Future[libvirt.virConnect] = (
        concurrent.futures.Future()
    )

    def run() -> None:
        try:
            future.set_result(libvirt.open(uri))
        except BaseException as exc:  # handed to the waiting thread
            future.set_exception(exc)

    threading.Thread(target=run, name="libvirt-open", daemon=True).start()
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.add_done_callback(_close_late)
        raise


def _close_late(future: concurrent.futures.Future[libvirt.virConnect]) -> None:
    if future.exception() is None:
        _close_quietly(future.result())


def _is_alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive() == 1)
    except libvirt.libvirtError:
        return False


def _close_quietly(conn: libvirt.virConnect) -> None:
    try:
        conn.close()
    except libvirt.libvirtError as exc:
        LOG.debug("closing a dead libvirt connection: %s", exc)


def _log_libvirt_error(_ctx: object, err: tuple[object, ...]) -> None:
    # libvirt's default handler prints every error to stderr, including
    # the ones we expect and handle; they reach the log through our errors.
    pass


_event_loop_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def _ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread, once.

    Keepalive (and so the detection of a dead host while a call waits)
    needs an event loop; it must be registered before connections open.
    """
    global _event_loop
    with _event_loop_lock:
        if _event_loop is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_loop = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        _event_loop.start()


def _run_event_loop() -> None:
    # Each call blocks in poll() until an event (socket I/O, a keepalive
    # timer) is due and dispatches it; this is libvirt's loop, not a sleep.
    while True:
        libvirt.virEventRunDefaultImpl()
