# ruff: noqa: F811
"""The journal's read-only queries behind run reports and RPO metrics,
on SQLite and PostgreSQL (JOURNAL_TEST_PG_URL)."""

from __future__ import annotations

import dataclasses
import datetime
import types

import prometheus_client
from oslo_config import cfg

from cinderbak import metrics, opts
from cinderbak.journal import Journal, RunState, StepKind
from cinderbak.policy import parse_schedule

# The journal tests' fixtures: a fresh journal on SQLite and PostgreSQL,
# a settable clock (their parameters shadow the imported names).
from tests.functional.test_journal import (  # noqa: F401
    T0,
    Clock,
    clock,
    journal,
    url,
)

HOUR = datetime.timedelta(hours=1)


def _run(
    jr: Journal,
    target: str,
    state: RunState,
    *,
    policy: str = "daily",
    at: datetime.datetime = T0,
    project: str = "proj",
) -> str:
    run = jr.begin_run(policy, target, at, project_id=project)
    if state is RunState.PENDING:
        return run.id
    jr.start_run(run.id)
    if state is not RunState.RUNNING:
        jr.finish_run(run.id, state, {"volume_id": target})
    return run.id


def test_slot_runs_are_one_slot_with_steps(journal: Journal, clock: Clock):
    head = _run(journal, "*", RunState.RUNNING)
    step = journal.begin_step(head, StepKind.DISCOVER, target="*")
    journal.complete_step(step, details={"volumes": 2})
    _run(journal, "vol-1", RunState.SUCCEEDED)
    _run(journal, "vol-2", RunState.FAILED)
    _run(journal, "vol-1", RunState.SUCCEEDED, at=T0 + HOUR)
    _run(journal, "vol-1", RunState.SUCCEEDED, policy="other")
    runs = journal.slot_runs("daily", T0)
    assert sorted(r.target for r in runs) == ["*", "vol-1", "vol-2"]
    [found] = [r for r in runs if r.target == "*"]
    assert [s.details for s in found.steps or ()] == [{"volumes": 2}]
    bare = journal.slot_runs("daily", T0, with_steps=False)
    assert [dataclasses.replace(r, steps=None) for r in runs] == bare
    assert journal.slot_runs("daily", T0 + 2 * HOUR) == []
    assert journal.slot_runs("daily", T0 + 2 * HOUR, with_steps=False) == []


def test_backup_marks_are_the_last_success_and_first_sight(
    journal: Journal, clock: Clock
):
    clock.advance(minutes=5)
    _run(journal, "vol-1", RunState.SUCCEEDED)
    first_success = clock.now
    clock.advance(hours=1)
    _run(journal, "vol-1", RunState.FAILED, at=T0 + HOUR)
    _run(journal, "vol-2", RunState.FAILED, at=T0 + HOUR, project="p2")
    _run(journal, "vol-3", RunState.RUNNING, at=T0 + HOUR)
    # Not backup runs: left out.
    _run(journal, "*", RunState.SUCCEEDED)
    _run(journal, "b-1", RunState.SUCCEEDED, policy="verify:daily")
    marks = journal.backup_marks()
    assert marks == {
        ("daily", "vol-1"): ("proj", first_success, T0),
        ("daily", "vol-2"): ("p2", None, T0 + HOUR),
    }
    for _, last, first in marks.values():
        assert first.tzinfo is not None
        assert last is None or last.tzinfo is not None
    before = journal.backup_marks(policy="daily", before=T0 + HOUR)
    assert before == {("daily", "vol-1"): ("proj", first_success, T0)}
    assert journal.backup_marks(policy="other") == {}


def test_unfinished_counts_are_queued_and_in_flight(journal: Journal):
    _run(journal, "*", RunState.RUNNING)
    _run(journal, "vol-1", RunState.PENDING)
    _run(journal, "vol-2", RunState.PENDING)
    _run(journal, "vol-3", RunState.RUNNING)
    _run(journal, "vol-4", RunState.SUCCEEDED)
    _run(journal, "b-1", RunState.RUNNING, policy="verify:daily")
    assert journal.unfinished_counts() == {
        ("daily", RunState.PENDING): 2,
        ("daily", RunState.RUNNING): 1,
        ("verify:daily", RunState.RUNNING): 1,
    }


def test_the_metrics_start_from_what_the_journal_knows(
    journal: Journal, clock: Clock
):
    """At start-up the RPO clocks and the last runs' outcomes come from
    the journal, so a restart neither clears nor invents an alert."""
    _run(journal, "*", RunState.PARTIAL)
    _run(journal, "vol-ok", RunState.SUCCEEDED)
    _run(journal, "vol-bad", RunState.FAILED, project="p2")
    _run(journal, "b-1", RunState.SUCCEEDED, policy="verify:daily")
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(args=[], project="cinderbak", default_config_files=[])
    daily = types.SimpleNamespace(schedule=parse_schedule("every 1h"))
    clocks = metrics.Clocks()
    clocks.watch(conf, journal, lambda: {"daily": daily})
    clocks._now = lambda: T0 + 3 * HOUR  # noqa: SLF001
    registry = prometheus_client.CollectorRegistry()
    registry.register(clocks)
    value = registry.get_sample_value
    assert value("cinderbak_policy_volumes", {"policy": "daily"}) == 2
    assert (
        value("cinderbak_policy_volumes_out_of_rpo", {"policy": "daily"}) == 2
    )
    assert (
        value(
            "cinderbak_volume_last_success_timestamp_seconds",
            {
                "policy": "daily",
                "project_id": "p2",
                "volume_id": "vol-bad",
                "never_succeeded": "true",
            },
        )
        == T0.timestamp()
    )
    gauge = metrics.REGISTRY.get_sample_value
    assert (
        gauge(
            "cinderbak_last_run_failed", {"kind": "backup", "policy": "daily"}
        )
        == 1
    )
    assert (
        gauge(
            "cinderbak_last_run_failed", {"kind": "verify", "policy": "daily"}
        )
        == 0
    )
