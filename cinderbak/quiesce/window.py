"""The freeze window: freeze, take the point-in-time copy, always thaw.

::

    with freeze_window(quiescer, server, max_freeze_seconds=30,
                       mode="preferred",
                       on_freeze_intent=journal.freezing,
                       on_thawed=journal.thawed) as window:
        copy = take_point_in_time_copy()
        consistency = "quiesced" if window.is_frozen() else "crash"

Guarantees:

* Every server a freeze was issued to is thawed when the block ends, on
  error, and after ``max_freeze_seconds`` by a watchdog thread even if the
  block hangs. A failed freeze is thawed too: the guest agent may have
  frozen the guest after libvirt gave up on it.
* The thaw is effective once (a lock; a second caller waits for the first)
  and retried with backoff; a guest that may still be frozen after the
  retries raises :class:`ThawFailed` from the ``with`` statement (and is
  logged at ERROR at once by the watchdog), never passes silently.
* ``window.is_frozen()`` turns False as soon as a thaw starts, so a copy
  whose point in time could be after the thaw is never marked quiesced.

Hooks: ``on_freeze_intent(server)`` runs before the freeze is issued (the
journal records it first, so a crash mid-window leaves a record to thaw
from); ``on_thawed(server, window)`` runs once the server is known not to be
frozen, in whichever thread thawed it (the watchdog's or the caller's).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import tenacity
from oslo_log import log as logging

from cinderbak.quiesce.base import (
    Capability,
    DomainNotFound,
    QuiesceError,
    QuiesceFailed,
    Quiescer,
    QuiesceRequiredError,
    ServerRef,
    ThawFailed,
)
from cinderbak.tenant import QuiesceMode

LOG = logging.getLogger(__name__)

QUIESCED = "quiesced"
CRASH = "crash"

IntentHook = Callable[[ServerRef], object]
ThawedHook = Callable[[ServerRef, "FreezeWindow"], object]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class FreezeWindow:
    """What happened in one freeze window; see the module docstring.

    ``frozen_at``/``thawed_at`` are UTC wall-clock times (for the journal
    and for comparing with a snapshot's creation time); ``duration`` is
    measured on the monotonic clock from the freeze being issued to the
    thaw being done.
    """

    def __init__(
        self,
        quiescer: Quiescer,
        servers: tuple[ServerRef, ...],
        mode: QuiesceMode,
        max_freeze_seconds: float,
        on_thawed: ThawedHook | None,
        thaw_attempts: int,
        thaw_wait_max: float,
    ) -> None:
        self.servers = servers
        self.mode = mode
        self.max_freeze_seconds = max_freeze_seconds
        #: True once every server is frozen (until the window ends).
        self.quiesced = False
        #: Why the window is crash-consistent despite mode != off.
        self.error: str | None = None
        self.errors: dict[ServerRef, QuiesceError] = {}
        self.thaw_errors: dict[ServerRef, QuiesceError] = {}
        self.frozen: dict[ServerRef, int] = {}  # filesystems frozen
        self.thawed: dict[ServerRef, int] = {}  # filesystems thawed
        self.freeze_issued_at: datetime.datetime | None = None
        self.frozen_at: datetime.datetime | None = None
        self.thawed_at: datetime.datetime | None = None
        self.thawed_by_watchdog = False

        self._quiescer = quiescer
        self._on_thawed = on_thawed
        self._thaw_attempts = thaw_attempts
        self._thaw_wait_max = thaw_wait_max
        self._lock = threading.Lock()
        self._thaw_begun = False
        self._thaw_done = threading.Event()
        self._finished = False
        self._hook_error: BaseException | None = None
        # Server -> whether the guest may be frozen; True from the moment
        # the freeze is issued until a failure proves otherwise.
        self._may_be_frozen: dict[ServerRef, bool] = {}
        self._issued: float | None = None
        self._ended: float | None = None
        self._timer: threading.Timer | None = None

    # -- what the caller asks ---------------------------------------------

    @property
    def consistency(self) -> str:
        """Return "quiesced" if the freeze succeeded, else "crash".

        Whether one copy is quiesced also needs ``is_frozen()`` at its
        point in time.
        """
        return QUIESCED if self.quiesced else CRASH

    def is_frozen(self) -> bool:
        """True while every server is frozen and no thaw has started."""
        with self._lock:
            return self.quiesced and not self._thaw_begun

    def expired(self) -> bool:
        """True once max_freeze_seconds have passed since the freeze was
        issued, or the watchdog thawed."""
        if self.thawed_by_watchdog:
            return True
        if self._issued is None:
            return False
        return time.monotonic() - self._issued >= self.max_freeze_seconds

    def remaining(self) -> float:
        """Seconds until the watchdog thaws; 0 when not frozen."""
        if not self.is_frozen() or self._issued is None:
            return 0.0
        left = self.max_freeze_seconds - (time.monotonic() - self._issued)
        return max(0.0, left)

    def wait_thawed(self, timeout: float | None = None) -> bool:
        """Block until the thaw is done; return False on timeout."""
        return self._thaw_done.wait(timeout)

    @property
    def duration(self) -> float | None:
        """Seconds from the freeze being issued to the thaw being done."""
        if self._issued is None or self._ended is None:
            return None
        return self._ended - self._issued

    # -- the window's steps (called by freeze_window) ----------------------

    def _freeze(self) -> None:
        self._issued = time.monotonic()
        self.freeze_issued_at = _utcnow()
        self._timer = threading.Timer(self.max_freeze_seconds, self._watchdog)
        self._timer.daemon = True
        self._timer.name = f"freeze-watchdog-{self.servers[0].server_id}"
        self._timer.start()
        for server in self.servers:
            with self._lock:
                if self._thaw_begun:
                    break
                self._may_be_frozen[server] = True
            try:
                self.frozen[server] = self._quiescer.freeze(server)
            except QuiesceError as exc:
                with self._lock:
                    self._may_be_frozen[server] = exc.guest_may_be_frozen
                self.errors[server] = exc
            if self._thaw_begun:
                # The watchdog thawed while this freeze was in flight: the
                # freeze may have landed after the thaw.
                if self._may_be_frozen[server]:
                    self._rethaw_late(server)
                self.errors.setdefault(
                    server,
                    QuiesceFailed(
                        server,
                        "the freeze did not complete within "
                        f"max_freeze_seconds={self.max_freeze_seconds}",
                    ),
                )
                break
        with self._lock:
            if not self.errors and not self._thaw_begun:
                self.quiesced = True
                self.frozen_at = _utcnow()
        if self.errors:
            self.error = "; ".join(str(e) for e in self.errors.values())

    def _watchdog(self) -> None:
        LOG.warning(
            "freeze window of %s reached max_freeze_seconds=%s; thawing",
            ", ".join(map(str, self.servers)),
            self.max_freeze_seconds,
        )
        self._thaw(by_watchdog=True)

    def _thaw(self, by_watchdog: bool) -> None:
        """Thaw every server a freeze was issued to; effective once."""
        with self._lock:
            first = not self._thaw_begun
            self._thaw_begun = True
            if first:
                self.thawed_by_watchdog = by_watchdog
            targets = dict(self._may_be_frozen)
        if not first:
            self._thaw_done.wait()
            return
        try:
            for server, may_be_frozen in targets.items():
                self._thaw_server(server, may_be_frozen)
        finally:
            self._ended = time.monotonic()
            self.thawed_at = _utcnow()
            self._thaw_done.set()

    def _thaw_server(self, server: ServerRef, may_be_frozen: bool) -> None:
        try:
            if may_be_frozen:
                thawed = self._retrying()(self._quiescer.thaw, server)
            else:
                # The freeze failed before reaching the guest; thaw anyway
                # (cheap), but a failure here is no alarm.
                thawed = self._quiescer.thaw(server)
            self.thawed[server] = thawed
        except QuiesceError as exc:
            if not may_be_frozen:
                LOG.debug("thaw of never-frozen %s: %s", server, exc)
            elif isinstance(exc, DomainNotFound):
                LOG.warning("%s vanished before its thaw: %s", server, exc)
            else:
                self.thaw_errors[server] = exc
                LOG.error("%s", ThawFailed(server, str(exc), code=exc.code))
                return
        # The hook records the window: its end is this server's thaw.
        self._ended = time.monotonic()
        self._run_thawed_hook(server)

    def _rethaw_late(self, server: ServerRef) -> None:
        self._thaw_done.wait()
        try:
            thawed = self._retrying()(self._quiescer.thaw, server)
        except DomainNotFound:
            return
        except QuiesceError as exc:
            self.thaw_errors[server] = exc
            LOG.error("%s", ThawFailed(server, str(exc), code=exc.code))
            return
        if thawed:
            LOG.warning(
                "%s froze after the watchdog's thaw; thawed it again", server
            )

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._thaw_attempts),
            wait=tenacity.wait_exponential(
                multiplier=0.25, max=self._thaw_wait_max
            ),
            retry=tenacity.retry_if_exception(
                lambda e: (
                    isinstance(e, QuiesceError)
                    and not isinstance(e, DomainNotFound)
                )
            ),
            before_sleep=_log_thaw_retry,
            reraise=True,
        )

    def _run_thawed_hook(self, server: ServerRef) -> None:
        if self._on_thawed is None:
            return
        try:
            self._on_thawed(server, self)
        except Exception as exc:  # re-raised in the caller's thread
            LOG.exception("on_thawed hook failed for %s", server)
            if self._hook_error is None:
                self._hook_error = exc

    def _finish(self) -> None:
        """Stop the watchdog, thaw, and raise what went wrong (once)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._issued is not None:
            self._thaw(by_watchdog=False)
        if self._finished:
            return
        self._finished = True
        if self.thaw_errors:
            server, exc = next(iter(self.thaw_errors.items()))
            raise ThawFailed(server, str(exc), code=exc.code) from exc
        if self._hook_error is not None:
            raise self._hook_error


def _log_thaw_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    LOG.warning(
        "thaw attempt %d failed, retrying in %.1fs: %s",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
        exc,
    )


def unfrozen_reason(quiescer: Quiescer) -> str | None:
    """Why a window (mode not off) with ``quiescer`` freezes nothing, or
    None when it issues a freeze. Known before the window:
    the run engine requests the copies of such a group with the round's
    detached volumes instead of opening a window for it."""
    if Capability.APPLICATION_CONSISTENT in quiescer.CAPABILITIES:
        return None
    return (
        f"the configured quiescer ({type(quiescer).__name__}) does not "
        "freeze guests: backups are crash-consistent"
    )


@contextlib.contextmanager
def freeze_window(
    quiescer: Quiescer,
    servers_or_server: ServerRef | Iterable[ServerRef],
    *,
    max_freeze_seconds: float,
    mode: QuiesceMode | str,
    on_freeze_intent: IntentHook | None = None,
    on_thawed: ThawedHook | None = None,
    thaw_attempts: int = 6,
    thaw_wait_max: float = 8.0,
) -> Iterator[FreezeWindow]:
    """Freeze the servers for the block, then thaw them.

    ``mode`` off, or a quiescer without APPLICATION_CONSISTENT: nothing is
    frozen, the window is crash-consistent (required with such a quiescer
    raises QuiesceRequiredError).
    preferred: a failed freeze is recorded in ``window.error``, thawed, and
    the block runs crash-consistent. required: a failed freeze is thawed
    and raises QuiesceRequiredError before the block runs.

    Raise ThawFailed when a server may still be frozen after
    ``thaw_attempts`` thaws (exponential backoff up to ``thaw_wait_max``
    seconds between them), and re-raise an exception of ``on_thawed``.
    """
    mode = QuiesceMode(mode)
    if max_freeze_seconds <= 0:
        raise ValueError("max_freeze_seconds must be positive")
    if isinstance(servers_or_server, ServerRef):
        servers: tuple[ServerRef, ...] = (servers_or_server,)
    else:
        servers = tuple(servers_or_server)
    window = FreezeWindow(
        quiescer,
        servers,
        mode,
        max_freeze_seconds,
        on_thawed,
        thaw_attempts,
        thaw_wait_max,
    )
    if mode is QuiesceMode.OFF or not servers:
        yield window
        return
    reason = unfrozen_reason(quiescer)
    if reason is not None:
        if mode is QuiesceMode.REQUIRED:
            raise QuiesceRequiredError(
                servers[0], reason, guest_may_be_frozen=False
            )
        window.error = reason
        yield window
        return
    if on_freeze_intent is not None:
        for server in servers:
            on_freeze_intent(server)
    try:
        window._freeze()
        if window.errors:
            # Thaw at once: a partial or doubtful freeze is of no use.
            window._finish()
            if mode is QuiesceMode.REQUIRED:
                server, exc = next(iter(window.errors.items()))
                raise QuiesceRequiredError(
                    server, str(exc), code=exc.code, guest_may_be_frozen=False
                ) from exc
            LOG.warning("continuing crash-consistent: %s", window.error)
        yield window
    finally:
        window._finish()
