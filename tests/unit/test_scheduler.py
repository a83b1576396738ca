"""The daemon's pure parts: slot outcomes, reload plans, job ids, rows."""

import datetime

import pytest

from cinderbak import policy, scheduler
from cinderbak.cmd import runs, status
from cinderbak.journal import RunRecord, states
from cinderbak.summary import Outcome

UTC = datetime.UTC
BASE = {"retention": "last=7", "full_every": "6"}


def _policy(name="daily", schedule="0 3 * * *", **values):
    return policy.parse_policy(name, BASE | {"schedule": schedule} | values)


def _outcome(status):
    return Outcome(
        volume_id="v", project_id="p", policy="daily", status=status
    )


# -- slot outcomes -------------------------------------------------------


def test_slot_counts_every_status_and_the_volumes_left_unfinished():
    outcomes = [_outcome(s) for s in ("ok", "ok", "error", "timeout")]
    outcomes.append(_outcome("skipped"))
    summary = scheduler.slot_summary(outcomes, targets=7)
    assert summary == {
        "volumes": 7,
        "ok": 2,
        "failed": 2,
        "timed_out": 1,
        "skipped": 1,
        "interrupted": 2,
    }


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({"ok": 0, "failed": 0, "interrupted": 0}, states.SUCCEEDED),
        ({"ok": 3, "failed": 0, "interrupted": 0}, states.SUCCEEDED),
        ({"ok": 0, "failed": 0, "skipped": 2}, states.SUCCEEDED),
        ({"ok": 3, "failed": 1, "interrupted": 0}, states.PARTIAL),
        ({"ok": 3, "failed": 0, "interrupted": 1}, states.PARTIAL),
        ({"ok": 0, "failed": 2, "interrupted": 0}, states.FAILED),
        ({"ok": 0, "failed": 0, "interrupted": 2}, states.FAILED),
        ({"ok": 0, "failed": 1, "skipped": 5}, states.FAILED),
    ],
)
def test_slot_state(counts, expected):
    assert scheduler.slot_state(counts) is expected


def test_an_empty_slot_succeeds():
    summary = scheduler.slot_summary([], targets=0)
    assert scheduler.slot_state(summary) is states.SUCCEEDED


def test_summary_from_states_counts_unfinished_runs_as_interrupted():
    summary = scheduler.summary_from_states(
        [
            states.SUCCEEDED,
            states.SUCCEEDED,
            states.FAILED,
            states.MISSED,
            states.TIMED_OUT,
            states.SKIPPED,
            states.RUNNING,
            states.PENDING,
        ]
    )
    assert summary == {
        "volumes": 8,
        "ok": 2,
        "failed": 3,
        "timed_out": 1,
        "skipped": 1,
        "interrupted": 2,
    }
    assert scheduler.slot_state(summary) is states.PARTIAL


def test_summary_text():
    assert scheduler.summary_text(None) == ""
    assert scheduler.summary_text({"error": "boom"}) == "boom"
    text = scheduler.summary_text(
        {"ok": 1, "failed": 0, "skipped": 2, "interrupted": 0, "volumes": 3}
    )
    assert text == "ok=1 failed=0 skipped=2 interrupted=0"
    assert scheduler.summary_text({"ok": 1, "error": "x"}) == "ok=1: x"
    assert scheduler.summary_text({"ok": 1, "note": "y"}) == "ok=1: y"


# -- reload plans --------------------------------------------------------


def test_plan_changes_sorts_policies_into_what_the_scheduler_must_do():
    old = {
        "gone": _policy("gone"),
        "same": _policy("same"),
        "moved": _policy("moved"),
        "jitter": _policy("jitter"),
        "kept": _policy("kept"),
    }
    new = {
        "same": _policy("same"),
        "moved": _policy("moved", "0 4 * * *"),
        "jitter": _policy("jitter", jitter=30),
        "kept": _policy("kept", retention="last=3"),
        "fresh": _policy("fresh"),
    }
    changes = scheduler.plan_changes(old, new)
    assert changes.added == ("fresh",)
    assert changes.removed == ("gone",)
    assert changes.rescheduled == ("jitter", "moved")
    assert changes.updated == ("kept",)
    assert changes.describe() == (
        "added fresh; removed gone; rescheduled jitter, moved; changed kept"
    )


def test_reloading_the_same_policies_changes_nothing():
    policies = {"a": _policy("a"), "b": _policy("b", "every 6h")}
    changes = scheduler.plan_changes(policies, dict(policies))
    assert not changes
    assert changes.describe() == "no change"


def test_a_changed_misfire_grace_reschedules():
    changes = scheduler.plan_changes(
        {"a": _policy("a")}, {"a": _policy("a", misfire_grace_time=60)}
    )
    assert changes.rescheduled == ("a",)


# -- schedules -----------------------------------------------------------


def test_next_run_of_a_cron_policy():
    now = datetime.datetime(2024, 5, 1, 3, 0, 1, tzinfo=UTC)
    assert scheduler.next_run(_policy(), now) == datetime.datetime(
        2024, 5, 2, 3, 0, tzinfo=UTC
    )


def test_next_run_of_an_interval_policy_keeps_to_its_anchor():
    now = datetime.datetime(2024, 5, 1, 3, 7, 30, tzinfo=UTC)
    known = _policy(schedule="every 20m")
    upcoming = scheduler.next_run(known, now)
    assert upcoming == datetime.datetime(2024, 5, 1, 3, 20, tzinfo=UTC)
    # The job's run for that fire time is keyed by the same slot.
    assert known.schedule.last_fire_time(upcoming) == upcoming


def test_one_worker_per_policy_plus_audit_and_a_spare():
    assert scheduler.executor_size(0) == 2
    assert scheduler.executor_size(5) == 7


@pytest.mark.parametrize("name", ["a:b", "a@catch-up", "cinderbak:audit"])
def test_policy_names_cannot_take_the_ids_of_internal_jobs(name):
    with pytest.raises(policy.PolicyConfigError, match="section name"):
        _policy(name)


# -- CLI rows ------------------------------------------------------------


def _record(target, state, summary, **times):
    at = datetime.datetime(2024, 5, 1, 3, tzinfo=UTC)
    return RunRecord(
        id="r1",
        policy="daily",
        target=target,
        scheduled_at=at,
        project_id=None,
        host="h",
        state=state,
        attrs={},
        summary=summary,
        created_at=at,
        updated_at=at,
        started_at=times.get("started", at),
        finished_at=times.get("finished"),
    )


def test_a_policy_level_run_shows_its_counts():
    finished = datetime.datetime(2024, 5, 1, 3, 2, 5, tzinfo=UTC)
    row = dict(
        zip(
            runs.COLUMNS,
            runs.run_row(
                _record(
                    "*",
                    states.PARTIAL,
                    {"ok": 2, "failed": 1, "skipped": 0, "interrupted": 0},
                    finished=finished,
                )
            ),
            strict=True,
        )
    )
    assert row["target"] == "*"
    assert row["state"] == "partial"
    assert row["seconds"] == 125.0
    assert row["result"] == "ok=2 failed=1 skipped=0 interrupted=0"
    assert row["scheduled_at"] == "2024-05-01T03:00:00Z"


def test_a_volume_run_shows_its_backup_or_its_error():
    ok = dict(
        zip(
            runs.COLUMNS,
            runs.run_row(
                _record(
                    "vol-1",
                    states.SUCCEEDED,
                    {"kind": "incremental", "backup_id": "b1", "notes": []},
                )
            ),
            strict=True,
        )
    )
    assert (ok["kind"], ok["backup_id"], ok["result"]) == (
        "incremental",
        "b1",
        "",
    )
    assert ok["finished_at"] == "" and ok["seconds"] is None
    failed = runs.run_row(
        _record("vol-1", states.MISSED, {"error": "daemon down"})
    )
    assert failed[-1] == "daemon down"


def test_times_are_shown_in_utc():
    paris = datetime.timezone(datetime.timedelta(hours=2))
    at = datetime.datetime(2024, 5, 1, 5, 0, tzinfo=paris)
    assert status.when(at) == "2024-05-01T03:00:00Z"
    assert status.when(None) == ""
