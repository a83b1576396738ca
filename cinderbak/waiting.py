"""The one way cinderbak waits for something: poll until it is there.

Every wait has a deadline on the monotonic clock, checks the stop event
between polls (so a daemon's stop ends it at once), and says what it was
waiting for when it gives up. Built on tenacity, so the retry/backoff
vocabulary is the same as for API calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


class Stopped(RuntimeError):
    """The daemon is stopping: the wait ended before its condition."""


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float,
    what: str,
    stop: threading.Event | None = None,
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns anything
    but None, and return that.

    Raise TimeoutError naming ``what`` once ``timeout`` seconds have
    passed, and Stopped as soon as ``stop`` is set. Exceptions of
    ``check`` propagate at once.
    """
    event = stop or threading.Event()

    class _StopSet(tenacity.stop.stop_base):
        def __call__(self, state: tenacity.RetryCallState) -> bool:
            return event.is_set()

    def sleep(seconds: float) -> None:
        event.wait(seconds)

    def give_up(state: tenacity.RetryCallState) -> T:
        if event.is_set():
            raise Stopped(f"stopping while waiting for {what}")
        raise TimeoutError(f"{what}: not there after {timeout:.0f} s")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: value is None),
        stop=tenacity.stop_after_delay(timeout) | _StopSet(),
        wait=tenacity.wait_fixed(interval),
        sleep=sleep,
        retry_error_callback=give_up,
    )
    result = retrying(check)
    assert result is not None  # give_up raised otherwise
    return result
