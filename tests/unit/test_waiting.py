"""The one wait helper: deadline, stop event, what it waited for."""

import threading
import time

import pytest

from cinderbak import waiting


def test_returns_the_first_value_that_is_not_none():
    answers = iter([None, None, "ready"])
    assert (
        waiting.poll(lambda: next(answers), timeout=5, interval=0.01, what="x")
        == "ready"
    )


def test_falsy_values_count_as_an_answer():
    assert waiting.poll(lambda: 0, timeout=1, interval=0.01, what="x") == 0


def test_a_deadline_names_what_was_awaited():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="the snapshot: not there"):
        waiting.poll(
            lambda: None, timeout=0.2, interval=0.05, what="the snapshot"
        )
    assert time.monotonic() - started < 2


def test_a_stop_ends_the_wait_at_once():
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(waiting.Stopped, match="the backup"):
        waiting.poll(
            lambda: None, timeout=60, interval=30, what="the backup", stop=stop
        )
    assert time.monotonic() - started < 5


def test_errors_of_the_check_are_not_swallowed():
    def broken():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        waiting.poll(broken, timeout=5, interval=0.01, what="x")
