"""The phases of one backup job within a run, and the moves between them.

A job is one volume's backup in one policy run. Its phase is explicit
(stored on the job, never inferred from which of its fields are set) and
moves only along :data:`TRANSITIONS`, the same way journal records move
along their tables in :mod:`cinderbak.journal.states`. Recovery rebuilds
jobs from the journal into these same phases, so a resumed job and a
fresh one are carried on by the same code.

This module is pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Phase(enum.StrEnum):
    """Where one job stands."""

    QUEUED = "queued"
    """Prepared, waiting for capacity, its project's turn, its server."""

    FREEZING = "freezing"
    """Its server's freeze window is open: copies requested inside it."""

    COPYING = "copying"
    """Snapshot mode: the temporary snapshot is being created."""

    BACKING_UP = "backing-up"
    """The backup was requested; waiting for Cinder to settle it."""

    CHECKSUMMING = "checksumming"
    """The backup is available; its source is being checksummed."""

    CLEANING_UP = "cleaning-up"
    """The outcome is known; the temporary snapshot is being deleted."""

    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed-out"


TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.QUEUED: frozenset(
        {Phase.FREEZING, Phase.COPYING, Phase.BACKING_UP, Phase.FAILED}
    ),
    Phase.FREEZING: frozenset({Phase.COPYING, Phase.BACKING_UP, Phase.FAILED}),
    Phase.COPYING: frozenset(
        {
            Phase.BACKING_UP,
            Phase.CLEANING_UP,
            Phase.FAILED,
            Phase.TIMED_OUT,
        }
    ),
    Phase.BACKING_UP: frozenset(
        {
            Phase.CHECKSUMMING,
            Phase.CLEANING_UP,
            Phase.DONE,
            Phase.FAILED,
            Phase.TIMED_OUT,
        }
    ),
    Phase.CHECKSUMMING: frozenset(
        {Phase.CLEANING_UP, Phase.DONE, Phase.FAILED}
    ),
    Phase.CLEANING_UP: frozenset({Phase.DONE, Phase.FAILED, Phase.TIMED_OUT}),
    Phase.DONE: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.TIMED_OUT: frozenset(),
}
"""``TRANSITIONS[current]`` is every phase a job may move to next. Any
phase before the outcome may fail; cleaning up happens after any outcome
that left a temporary snapshot behind."""

FINAL: frozenset[Phase] = frozenset(
    p for p, nxt in TRANSITIONS.items() if not nxt
)

WAITING_ON_CINDER: frozenset[Phase] = frozenset(
    {Phase.COPYING, Phase.BACKING_UP, Phase.CLEANING_UP}
)
"""Phases a status poll settles."""


class BadMove(ValueError):
    """A job was asked to move where its phase does not lead."""


def move(current: Phase, target: Phase, *, what: str = "job") -> Phase:
    """Given a job's phase and the one asked for, return the new phase.

    Raise :class:`BadMove` naming both when the table forbids it.
    """
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: final"
        raise BadMove(
            f"{what} cannot move from {current} to {target} "
            f"(allowed: {allowed})"
        )
    return target


def after_outcome(has_snapshot: bool, outcome: Phase) -> Phase:
    """The phase a job takes once its outcome is known: cleaning up while a
    temporary snapshot of ours exists, else the outcome itself."""
    if outcome not in FINAL:
        raise ValueError(f"{outcome} is not an outcome")
    return Phase.CLEANING_UP if has_snapshot else outcome


class Verdict(enum.StrEnum):
    """What the engine does about a job after a poll saw its resource."""

    WAIT = "wait"
    """Cinder is still at it and the deadline is not reached."""

    TIME_OUT = "time-out"
    """Still not settled at its deadline: stop waiting (the sweep settles
    the resource later)."""

    SNAPSHOT_READY = "snapshot-ready"
    """The temporary snapshot is available: request the backup."""

    BACKUP_READY = "backup-ready"
    """The backup is available: record it, checksum its source."""

    FAILED = "failed"
    """The resource ended in error (an error backup is ours to delete)."""

    VANISHED = "vanished"
    """Gone while we waited for it (deleted behind our back): the job
    fails at once instead of waiting out its deadline."""

    DELETE_SNAPSHOT = "delete-snapshot"
    """Cleaning up: the temporary snapshot can be deleted now."""

    CLEANED = "cleaned"
    """Cleaning up: the temporary snapshot is gone."""

    LEAVE_TO_SWEEP = "leave-to-sweep"
    """Cleaning up cannot finish now (error_deleting, or past its
    deadline): the job ends, the periodic sweep finishes the deletion."""


DELETABLE = frozenset({"available", "error"})


def on_poll(
    phase: Phase,
    status: str | None,
    *,
    now: float,
    deadline: float,
    delete_requested: bool = False,
) -> Verdict:
    """Given a job's phase, the status the last poll saw for its resource
    (None when the listing no longer has it), the time and the job's
    deadline, decide what happens next. Pure: the engine carries it out.

    Raise ValueError for a phase that does not wait on Cinder.
    """
    late = now >= deadline
    if phase in (Phase.COPYING, Phase.BACKING_UP):
        if status is None:
            return Verdict.VANISHED
        if status == "creating":
            return Verdict.TIME_OUT if late else Verdict.WAIT
        if status == "available":
            return (
                Verdict.SNAPSHOT_READY
                if phase is Phase.COPYING
                else Verdict.BACKUP_READY
            )
        return Verdict.FAILED
    if phase is Phase.CLEANING_UP:
        if status is None:
            return Verdict.CLEANED
        if status in DELETABLE and not delete_requested:
            return Verdict.DELETE_SNAPSHOT
        if status == "error_deleting" or late:
            return Verdict.LEAVE_TO_SWEEP
        return Verdict.WAIT
    raise ValueError(f"a job {phase} waits on no resource")
