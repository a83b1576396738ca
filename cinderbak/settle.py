"""What the sweep does with one leftover, given what Cinder says now.

Pure decisions behind :func:`cinderbak.recovery.sweep`: each takes the
journal's view of a resource we created and its status in Cinder (None
when Cinder no longer has it) and returns one action. Applying them pass
after pass converges: every action either ends the record (GONE, RECORD)
or moves Cinder towards the resource being gone (DELETE), and a record
that is ended is no longer offered. Waiting is the only answer while
Cinder itself is busy with the resource.
"""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    GONE = "gone"
    """Cinder no longer has it: record the create step as undone."""

    DELETE = "delete"
    """Ours and of no use: ask Cinder to delete it."""

    RECORD = "record"
    """A backup that became available after its run gave up: record it
    (it is a good backup, kept like any other)."""

    WAIT = "wait"
    """Cinder is still busy with it; a later pass decides."""


SNAPSHOT_DELETABLE = frozenset({"available", "error"})


def for_snapshot(status: str | None) -> Action:
    """A temporary snapshot of a finished run: every one is deleted."""
    if status is None:
        return Action.GONE
    if status in SNAPSHOT_DELETABLE:
        return Action.DELETE
    return Action.WAIT  # creating, backing-up, deleting, error_deleting


def for_backup(step_open: bool, status: str | None) -> Action:
    """A backup whose run ended without settling it (step open or
    failed): an error backup holds no data and is deleted; one that
    became available is kept and recorded."""
    if status is None:
        return Action.GONE
    if status == "available":
        return Action.RECORD if step_open else Action.WAIT
    if status == "error":
        return Action.DELETE
    return Action.WAIT  # creating, deleting, restoring
