"""The states of journal runs and steps, and the transitions between them.

Like ironic's ``common/states.py``: every state is a documented constant
and the legal transitions are data (:data:`RUN_TRANSITIONS`,
:data:`STEP_TRANSITIONS`), so the rules can be read in one place, printed
for an operator and tested exhaustively. The journal refuses any other
transition with :class:`InvalidTransition`, which names both states and
what would have been allowed: a workflow bug shows up as a clear error
instead of a run that silently claims two outcomes.

Nothing here moves a record on its own. In particular the states that
mean "was in flight when the daemon died" (:data:`IN_FLIGHT_RUN_STATES`,
:data:`OPEN_STEP_STATES`) are left as they are at start-up; the caller's
recovery logic looks at them through the journal's queries and decides
what each one becomes (resume, undo or give up).

This module is pure: no I/O, no database.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar


class RunState(enum.StrEnum):
    """Where one run of a policy for one target stands."""

    PENDING = "pending"
    """Recorded, not started: ``begin_run`` returned it and no worker has
    claimed it yet (``start_run``)."""

    RUNNING = "running"
    """A worker claimed it and is acting on the cloud. Still RUNNING after a
    restart means the daemon died during the run."""

    SUCCEEDED = "succeeded"
    """Every target of the run has its backup."""

    FAILED = "failed"
    """Nothing useful came out of the run; the summary says why."""

    PARTIAL = "partial"
    """Some volumes of a ``server:<uuid>`` group were backed up, others
    not, or the backup is good but the consistency asked for was not
    reached."""

    SKIPPED = "skipped"
    """Deliberately not done (the volume is gone, opted out, the previous
    run still holds it...). Not a failure."""

    MISSED = "missed"
    """The scheduled time passed while nobody could run it (daemon down
    longer than the misfire grace time)."""

    TIMED_OUT = "timed_out"
    """The run's watchdog gave up waiting; anything it left behind was
    cleaned up or is listed in its steps."""


class StepState(enum.StrEnum):
    """Where one side effect of a run stands."""

    INTENT = "intent"
    """Written before acting. The action may or may not have happened:
    after a crash, recovery must look for its effect (e.g. a snapshot with
    this run's metadata) before deciding."""

    ACTING = "acting"
    """The cloud accepted the request; ``resource_id`` names what it
    created, so recovery can wait for it or delete it without searching."""

    DONE = "done"
    """The action finished and its effect is in place."""

    FAILED = "failed"
    """The action failed; ``reason`` says why. It may still have left
    something behind (a snapshot in ``error``), which is why FAILED can
    still become UNDONE."""

    UNDONE = "undone"
    """The effect was reversed or found absent (a leaked snapshot deleted,
    a guest known not to be frozen). Nothing left to do for this step."""


RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset(
        {
            RunState.RUNNING,
            # Decided before any work: nothing to do, or too late.
            RunState.SKIPPED,
            RunState.MISSED,
            RunState.FAILED,
        }
    ),
    RunState.RUNNING: frozenset(
        {
            RunState.SUCCEEDED,
            RunState.FAILED,
            RunState.PARTIAL,
            RunState.SKIPPED,
            RunState.TIMED_OUT,
        }
    ),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.PARTIAL: frozenset(),
    RunState.SKIPPED: frozenset(),
    RunState.MISSED: frozenset(),
    RunState.TIMED_OUT: frozenset(),
}
"""Legal run transitions: ``RUN_TRANSITIONS[current]`` is the set of states
a run may move to. A final run never moves again, so running the same
(policy, target, scheduled_at) twice can never make a second backup."""

STEP_TRANSITIONS: Mapping[StepState, frozenset[StepState]] = {
    StepState.INTENT: frozenset(
        {
            StepState.ACTING,
            StepState.DONE,
            StepState.FAILED,
            # Recovery found the action never happened.
            StepState.UNDONE,
        }
    ),
    StepState.ACTING: frozenset(
        {StepState.DONE, StepState.FAILED, StepState.UNDONE}
    ),
    # A finished snapshot of a failed run is deleted: its step is undone.
    StepState.DONE: frozenset({StepState.UNDONE}),
    # A failed create may still have left a resource to delete.
    StepState.FAILED: frozenset({StepState.UNDONE}),
    StepState.UNDONE: frozenset(),
}
"""Legal step transitions, like :data:`RUN_TRANSITIONS`."""

FINAL_RUN_STATES: frozenset[RunState] = frozenset(
    s for s, nxt in RUN_TRANSITIONS.items() if not nxt
)
"""Runs that are over: never resumed, never started again."""

IN_FLIGHT_RUN_STATES: frozenset[RunState] = frozenset(RunState) - (
    FINAL_RUN_STATES
)
"""Runs a restart finds unfinished; recovery decides their outcome."""

FAILURE_RUN_STATES: frozenset[RunState] = frozenset(
    {
        RunState.FAILED,
        RunState.PARTIAL,
        RunState.MISSED,
        RunState.TIMED_OUT,
    }
)
"""Outcomes an operator should look at (SKIPPED is deliberate, not one)."""

OPEN_STEP_STATES: frozenset[StepState] = frozenset(
    {StepState.INTENT, StepState.ACTING}
)
"""Steps whose effect is unknown or still under way."""

FINAL_STEP_STATES: frozenset[StepState] = frozenset(
    {StepState.DONE, StepState.FAILED, StepState.UNDONE}
)
"""Steps that are settled, though DONE and FAILED may still be undone."""


class InvalidTransition(ValueError):
    """A record was asked to move to a state its current one forbids."""

    def __init__(
        self,
        what: str,
        current: enum.StrEnum,
        target: enum.StrEnum,
        allowed: frozenset[enum.StrEnum],
    ) -> None:
        self.what = what
        self.current = current
        self.target = target
        self.allowed = allowed
        choices = ", ".join(sorted(allowed)) or "none: it is final"
        super().__init__(
            f"{what} cannot go from {current!s} to {target!s} "
            f"(allowed from {current!s}: {choices})"
        )


S = TypeVar("S", RunState, StepState)


def _check(
    table: Mapping[S, frozenset[S]],
    state_type: type[S],
    current: S | str,
    target: S | str,
    what: str,
) -> S:
    cur, new = state_type(current), state_type(target)
    allowed = table[cur]
    if new not in allowed:
        raise InvalidTransition(
            what, cur, new, frozenset[enum.StrEnum](allowed)
        )
    return new


def check_run_transition(
    current: RunState | str, target: RunState | str, *, what: str = "run"
) -> RunState:
    """Given a run's current and requested state, return the requested one.

    Raise :class:`InvalidTransition` if the table forbids it, and
    ``ValueError`` if either name is not a run state.
    """
    return _check(RUN_TRANSITIONS, RunState, current, target, what)


def check_step_transition(
    current: StepState | str, target: StepState | str, *, what: str = "step"
) -> StepState:
    """Given a step's current and requested state, return the requested one.

    Raise :class:`InvalidTransition` if the table forbids it, and
    ``ValueError`` if either name is not a step state.
    """
    return _check(STEP_TRANSITIONS, StepState, current, target, what)


# Module-level names, ironic style: ``states.SUCCEEDED``, ``states.FINAL``.
PENDING = RunState.PENDING
RUNNING = RunState.RUNNING
SUCCEEDED = RunState.SUCCEEDED
FAILED = RunState.FAILED
PARTIAL = RunState.PARTIAL
SKIPPED = RunState.SKIPPED
MISSED = RunState.MISSED
TIMED_OUT = RunState.TIMED_OUT
FINAL = FINAL_RUN_STATES

INTENT = StepState.INTENT
ACTING = StepState.ACTING
DONE = StepState.DONE
STEP_FAILED = StepState.FAILED
UNDONE = StepState.UNDONE
