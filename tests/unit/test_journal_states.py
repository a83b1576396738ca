"""The journal's state tables: pure, exhaustive over every pair."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinderbak.journal import states, steps
from cinderbak.journal.states import (
    FAILURE_RUN_STATES,
    FINAL_RUN_STATES,
    IN_FLIGHT_RUN_STATES,
    OPEN_STEP_STATES,
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    InvalidTransition,
    RunState,
    StepState,
    check_run_transition,
    check_step_transition,
)


def test_every_state_has_a_row():
    assert set(RUN_TRANSITIONS) == set(RunState)
    assert set(STEP_TRANSITIONS) == set(StepState)


def test_tables_only_name_known_states():
    for targets in RUN_TRANSITIONS.values():
        assert targets <= set(RunState)
    for targets in STEP_TRANSITIONS.values():
        assert targets <= set(StepState)


def test_final_run_states_are_exactly_the_outcomes():
    assert FINAL_RUN_STATES == {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.PARTIAL,
        RunState.SKIPPED,
        RunState.MISSED,
        RunState.TIMED_OUT,
    }
    assert IN_FLIGHT_RUN_STATES == {RunState.PENDING, RunState.RUNNING}
    assert FINAL_RUN_STATES.isdisjoint(IN_FLIGHT_RUN_STATES)
    assert FAILURE_RUN_STATES <= FINAL_RUN_STATES
    assert RunState.SKIPPED not in FAILURE_RUN_STATES
    assert RunState.SUCCEEDED not in FAILURE_RUN_STATES


def test_no_state_moves_to_itself():
    for state, targets in RUN_TRANSITIONS.items():
        assert state not in targets
    for state, targets in STEP_TRANSITIONS.items():
        assert state not in targets


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product(RunState, RunState))
)
def test_run_transition_follows_table(current, target):
    if target in RUN_TRANSITIONS[current]:
        assert check_run_transition(current, target) is target
    else:
        with pytest.raises(InvalidTransition) as err:
            check_run_transition(current, target)
        assert err.value.current is current
        assert err.value.target is target


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product(StepState, StepState))
)
def test_step_transition_follows_table(current, target):
    if target in STEP_TRANSITIONS[current]:
        assert check_step_transition(current, target) is target
    else:
        with pytest.raises(InvalidTransition):
            check_step_transition(current, target)


def test_run_lifecycle_paths():
    assert check_run_transition("pending", "running") is RunState.RUNNING
    for outcome in FINAL_RUN_STATES - {RunState.MISSED}:
        check_run_transition(RunState.RUNNING, outcome)
    # A run can be given up before it starts.
    for outcome in (RunState.SKIPPED, RunState.MISSED, RunState.FAILED):
        check_run_transition(RunState.PENDING, outcome)


def test_pending_cannot_claim_success_without_running():
    with pytest.raises(InvalidTransition):
        check_run_transition(RunState.PENDING, RunState.SUCCEEDED)


def test_missed_only_before_start():
    with pytest.raises(InvalidTransition):
        check_run_transition(RunState.RUNNING, RunState.MISSED)


def test_error_message_names_both_states_and_the_way_out():
    with pytest.raises(InvalidTransition) as err:
        check_run_transition(
            RunState.PENDING, RunState.SUCCEEDED, what="run abc"
        )
    message = str(err.value)
    assert "run abc cannot go from pending to succeeded" in message
    assert "running" in message


def test_error_message_for_a_final_state_says_it_is_final():
    with pytest.raises(InvalidTransition) as err:
        check_run_transition(RunState.SUCCEEDED, RunState.RUNNING)
    assert "none: it is final" in str(err.value)


def test_invalid_transition_is_a_value_error():
    assert issubclass(InvalidTransition, ValueError)


def test_unknown_state_names_are_rejected():
    with pytest.raises(ValueError, match="'bogus' is not a valid RunState"):
        check_run_transition("bogus", RunState.RUNNING)
    with pytest.raises(ValueError, match="is not a valid StepState"):
        check_step_transition(StepState.INTENT, "finished")


def test_step_lifecycle_paths():
    check_step_transition(StepState.INTENT, StepState.ACTING)
    check_step_transition(StepState.ACTING, StepState.DONE)
    check_step_transition(StepState.INTENT, StepState.DONE)
    check_step_transition(StepState.ACTING, StepState.FAILED)
    # A leaked resource of a done or failed step can be removed.
    check_step_transition(StepState.DONE, StepState.UNDONE)
    check_step_transition(StepState.FAILED, StepState.UNDONE)
    assert STEP_TRANSITIONS[StepState.UNDONE] == frozenset()


def test_a_done_step_cannot_fail_afterwards():
    with pytest.raises(InvalidTransition):
        check_step_transition(StepState.DONE, StepState.FAILED)


def test_open_step_states():
    assert OPEN_STEP_STATES == {StepState.INTENT, StepState.ACTING}


def test_states_compare_as_their_stored_strings():
    assert RunState.TIMED_OUT == "timed_out"
    assert StepState("intent") is StepState.INTENT


def test_module_level_aliases():
    assert states.SUCCEEDED is RunState.SUCCEEDED
    assert states.FINAL is FINAL_RUN_STATES
    assert states.STEP_FAILED is StepState.FAILED
    assert steps.BACKUP_CREATE == "backup_create"
    assert {k.value for k in steps.StepKind} == {
        "freeze",
        "thaw",
        "snapshot_create",
        "snapshot_delete",
        "backup_create",
        "backup_delete",
        "metadata_write",
        "checksum",
        "scratch_create",
        "scratch_delete",
        "discover",
    }


@given(st.lists(st.sampled_from(list(RunState)), max_size=12))
def test_any_walk_through_the_run_table_stops_at_a_final_state(requests):
    """Applying arbitrary requests: once final, nothing moves the run."""
    state = RunState.PENDING
    for requested in requests:
        try:
            new = check_run_transition(state, requested)
        except InvalidTransition:
            continue
        assert state not in FINAL_RUN_STATES
        state = new
    if state in FINAL_RUN_STATES:
        for requested in RunState:
            with pytest.raises(InvalidTransition):
                check_run_transition(state, requested)


def test_every_run_state_is_reachable_from_pending():
    seen, todo = {RunState.PENDING}, [RunState.PENDING]
    while todo:
        for nxt in RUN_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(RunState)
