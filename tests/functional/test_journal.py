"""The journal against real databases: SQLite files, and PostgreSQL.

Every test taking ``url`` or ``journal`` runs on a fresh SQLite file, and
again on PostgreSQL when ``JOURNAL_TEST_PG_URL`` names one (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/journal_test``). Each
PostgreSQL test works in a schema of its own, dropped afterwards, so the
database named may hold other data.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from oslo_config import cfg

from cinderbak import journal as journal_pkg
from cinderbak.journal import (
    InvalidTransition,
    Journal,
    NotFound,
    RunState,
    StepKind,
    StepState,
    models,
    steps,
)
from cinderbak.journal.migrations import VERSION_TABLE
from tests.functional.conftest import pg_schema_url

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("JOURNAL_TEST_PG_URL")


class Clock:
    """A settable clock, so tests decide what "now" is."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not PG_URL,
                reason="JOURNAL_TEST_PG_URL is not set: no PostgreSQL to "
                "test against (e.g. postgresql+psycopg://user@host/db)",
            ),
        ),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL nobody else uses, on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'journal.sqlite'}"
        return
    assert PG_URL
    with pg_schema_url(PG_URL, "journal_test") as pg_url:
        yield pg_url


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def _open(url: str, clock: Clock | None = None, **kw) -> Journal:
    jr = Journal.from_url(
        url, host=kw.pop("host", "host-a"), clock=clock, **kw
    )
    jr.upgrade()
    return jr


@pytest.fixture
def journal(url: str, clock: Clock) -> Iterator[Journal]:
    jr = _open(url, clock)
    yield jr
    jr.close()


def _running(jr: Journal, target: str = "vol-1", **kw) -> str:
    run = jr.begin_run(
        kw.pop("policy", "daily"),
        target,
        kw.pop("scheduled_at", T0),
        project_id="proj",
    )
    jr.start_run(run.id)
    return run.id


# -- schema and configuration ------------------------------------------


def test_upgrade_from_empty_then_again_is_a_no_op(url):
    jr = Journal.from_url(url)
    try:
        assert jr.schema_revision() is None
        jr.upgrade()
        head = jr.head_revision()
        assert head is not None
        assert jr.schema_revision() == head
        tables = set(sa.inspect(jr.engine).get_table_names())
        assert {"runs", "steps", "cinderbak_journal_version"} <= tables
        jr.upgrade()
        assert jr.schema_revision() == head
    finally:
        jr.close()


def _python(code: str, cwd: Path) -> subprocess.Popen[str]:
    """Start a Python child that can import this repository."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_daemons_upgrading_at_once_all_succeed(url, tmp_path):
    """Processes start on an empty database and upgrade at the same time.

    Each child connects, says "ready" and waits for "go", so the upgrades
    really overlap (without the lock in env.py, PostgreSQL fails here).
    """
    code = f"""
        import sys
        from cinderbak.journal import Journal
        jr = Journal.from_url({url!r})
        jr.engine.connect().close()
        print("ready", flush=True)
        sys.stdin.readline()
        jr.upgrade()
        print(jr.schema_revision(), flush=True)
        """
    children = [_python(code, tmp_path) for _ in range(4)]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = [c.communicate(timeout=120) for c in children]
    assert [c.returncode for c in children] == [0] * 4, outputs
    jr = Journal.from_url(url)
    try:
        head = jr.head_revision()
    finally:
        jr.close()
    assert [out.strip() for out, _ in outputs] == [head] * 4


def test_threads_upgrading_at_once_take_turns(url):
    journals = [Journal.from_url(url) for _ in range(3)]
    try:
        done, errors = _race([jr.upgrade for jr in journals])
        assert errors == [] and len(done) == 3
        assert journals[0].schema_revision() == journals[0].head_revision()
    finally:
        for jr in journals:
            jr.close()


def test_migrated_schema_matches_the_models(journal):
    with journal.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "version_table": VERSION_TABLE},
        )
        assert compare_metadata(ctx, models.Base.metadata) == []


def test_upgrade_needs_no_alembic_ini_nor_working_directory(
    url, tmp_path, monkeypatch
):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    jr = Journal.from_url(url)
    try:
        jr.upgrade()
        assert jr.schema_revision() == jr.head_revision()
    finally:
        jr.close()
    assert list(empty.iterdir()) == []


def test_sqlite_connection_is_set_up_for_a_journal(tmp_path):
    jr = Journal.from_url(
        f"sqlite:///{tmp_path / 'j.sqlite'}", sqlite_busy_timeout=7
    )
    try:
        with jr.engine.connect() as conn:
            pragma = conn.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
            assert pragma("PRAGMA busy_timeout").scalar() == 7000
    finally:
        jr.close()


def test_sqlite_enforces_the_run_foreign_key(tmp_path):
    jr = _open(f"sqlite:///{tmp_path / 'j.sqlite'}")
    try:
        with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"):
            with jr.engine.begin() as conn:
                conn.execute(
                    sa.insert(models.Step).values(
                        run_id="no-such-run",
                        kind="freeze",
                        target="x",
                        state="intent",
                        details={},
                        created_at=T0,
                        updated_at=T0,
                    )
                )
    finally:
        jr.close()


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ValueError, match="give SQLite a file"):
        Journal.from_url("sqlite://")
    with pytest.raises(ValueError, match="give SQLite a file"):
        Journal.from_url("sqlite:///:memory:")


def test_configuration_places_the_database_under_state_path(tmp_path):
    conf = cfg.ConfigOpts()
    journal_pkg.register_opts(conf)
    journal_pkg.register_opts(conf)  # twice is harmless
    conf([], default_config_files=[], default_config_dirs=[])
    state = tmp_path / "state" / "deeper"
    conf.set_override("state_path", str(state))
    assert conf.journal.connection == f"sqlite:///{state}/cinderbak.sqlite"
    assert conf.journal.retention_days == 90
    jr = Journal(conf, host="h")
    assert jr.retention == datetime.timedelta(days=90)
    try:
        jr.upgrade()
    finally:
        jr.close()
    assert (state / "cinderbak.sqlite").is_file()


def test_journal_registers_its_own_options(tmp_path):
    config_file = tmp_path / "cinderbak.conf"
    config_file.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n")
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[str(config_file)], default_config_dirs=[])
    jr = Journal(conf)
    try:
        jr.upgrade()
    finally:
        jr.close()
    assert (tmp_path / "cinderbak.sqlite").is_file()


def test_list_opts_names_the_groups_and_options():
    groups = dict(journal_pkg.list_opts())
    assert [o.name for o in groups["DEFAULT"]] == ["state_path"]
    assert {o.name for o in groups["journal"]} == {
        "connection",
        "retention_days",
        "sqlite_busy_timeout",
    }
    connection = next(o for o in groups["journal"] if o.name == "connection")
    assert connection.secret  # may hold a database password


# -- runs --------------------------------------------------------------


def test_begin_run_twice_yields_the_same_run(journal):
    first = journal.begin_run(
        "daily", "vol-1", T0, project_id="p", attrs={"mode": "volume"}
    )
    again = journal.begin_run(
        "daily", "vol-1", T0, project_id="p", attrs={"mode": "snapshot"}
    )
    assert first.created and not again.created
    assert again.id == first.id
    assert again.state is RunState.PENDING
    assert again.attrs == {"mode": "volume"}  # the first caller's
    assert first.host == "host-a"
    assert first.steps is None


def test_the_key_is_the_instant_not_its_time_zone(journal):
    paris = datetime.timezone(datetime.timedelta(hours=1))
    first = journal.begin_run("daily", "vol-1", T0, project_id="p")
    again = journal.begin_run(
        "daily", "vol-1", T0.astimezone(paris), project_id="p"
    )
    assert again.id == first.id
    assert again.scheduled_at == T0
    assert again.scheduled_at.tzinfo is not None


def test_other_policy_target_or_time_is_another_run(journal):
    ids = {
        journal.begin_run(p, t, w, project_id="p").id
        for p, t, w in [
            ("daily", "vol-1", T0),
            ("hourly", "vol-1", T0),
            ("daily", "server:7b1c", T0),
            ("daily", "vol-1", T0 + datetime.timedelta(microseconds=1)),
        ]
    }
    assert len(ids) == 4


def test_naive_scheduled_at_is_refused(journal):
    with pytest.raises(ValueError, match="naive datetime"):
        journal.begin_run(
            "daily", "vol-1", datetime.datetime(2026, 3, 1), project_id="p"
        )


def _race(calls: list) -> tuple[list, list[Exception]]:
    """Run the zero-argument *calls* in threads released at once."""
    barrier = threading.Barrier(len(calls))
    results: list = []
    errors: list[Exception] = []

    def run(call) -> None:
        barrier.wait()
        try:
            results.append(call())
        except Exception as exc:  # the caller asserts on them
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


@pytest.mark.parametrize("shared", [True, False], ids=["one", "per-thread"])
def test_begin_run_from_threads_at_once_makes_one_run(url, clock, shared):
    """Workers racing on one key: one insert wins, all see the same run.

    With ``per-thread`` every thread has its own Journal (its own engine),
    like several daemons sharing one database.
    """
    first = _open(url, clock)
    journals = [first if shared else _open(url, clock) for _ in range(7)]
    journals.append(first)
    try:
        for key in range(3):
            handles, errors = _race(
                [
                    functools.partial(
                        jr.begin_run,
                        "daily",
                        f"vol-{key}",
                        T0,
                        project_id="p",
                        attrs={"journal": n},
                    )
                    for n, jr in enumerate(journals)
                ]
            )
            assert errors == []
            assert len(handles) == len(journals)
            assert len({h.id for h in handles}) == 1
            assert sum(h.created for h in handles) == 1
        assert len(first.runs()) == 3
    finally:
        for jr in {id(j): j for j in journals}.values():
            jr.close()


def test_only_one_worker_claims_a_run(url, clock):
    journals = [_open(url, clock) for _ in range(4)]
    try:
        run = journals[0].begin_run("daily", "vol-1", T0, project_id="p")
        won, lost = _race(
            [functools.partial(jr.start_run, run.id) for jr in journals]
        )
        assert len(won) == 1 and len(lost) == 3
        assert all(isinstance(e, InvalidTransition) for e in lost)
        assert "from running to running" in str(lost[0])
    finally:
        for jr in journals:
            jr.close()


def test_run_lifecycle_records_times_and_summary(journal, clock):
    run = journal.begin_run("daily", "vol-1", T0, project_id="p")
    clock.advance(seconds=5)
    started = journal.start_run(run.id)
    assert started.state is RunState.RUNNING
    assert started.started_at == T0 + datetime.timedelta(seconds=5)
    clock.advance(minutes=2)
    done = journal.finish_run(
        run.id, RunState.SUCCEEDED, {"backups": 1, "consistency": "crash"}
    )
    assert done.is_final
    assert done.finished_at == clock.now
    assert done.duration == datetime.timedelta(minutes=2)
    assert journal.get_run(run.id).summary == {
        "backups": 1,
        "consistency": "crash",
    }
    again = journal.begin_run("daily", "vol-1", T0, project_id="p")
    assert not again.created and again.state is RunState.SUCCEEDED


def test_a_final_run_never_moves_again(journal):
    run_id = _running(journal)
    journal.finish_run(run_id, RunState.FAILED, {"error": "quota"})
    # The same outcome again is a no-op that keeps the first summary.
    assert journal.finish_run(run_id, RunState.FAILED).summary == {
        "error": "quota"
    }
    with pytest.raises(InvalidTransition, match="none: it is final"):
        journal.finish_run(run_id, RunState.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        journal.start_run(run_id)
    assert journal.get_run(run_id).state is RunState.FAILED


def test_finish_run_wants_an_outcome_reachable_from_now(journal):
    run = journal.begin_run("daily", "vol-1", T0, project_id="p")
    with pytest.raises(ValueError, match="not a final run state"):
        journal.finish_run(run.id, RunState.RUNNING)
    with pytest.raises(InvalidTransition, match="pending to succeeded"):
        journal.finish_run(run.id, RunState.SUCCEEDED)
    missed = journal.finish_run(run.id, RunState.MISSED)
    assert missed.state is RunState.MISSED and missed.started_at is None


def test_begin_runs_begins_many_and_finds_those_already_there(journal):
    first = journal.begin_run("daily", "vol-1", T0, project_id="p")
    journal.start_run(first.id)
    handles = journal.begin_runs(
        "daily",
        {"vol-1": "p", "vol-2": "p", "vol-3": "q"},
        T0,
        attrs={"transfer_mode": "volume"},
    )
    assert set(handles) == {"vol-1", "vol-2", "vol-3"}
    assert not handles["vol-1"].created
    assert handles["vol-1"].state is RunState.RUNNING
    assert handles["vol-2"].created and handles["vol-3"].created
    assert handles["vol-3"].project_id == "q"
    again = journal.begin_run("daily", "vol-3", T0, project_id="q")
    assert again.id == handles["vol-3"].id and not again.created
    assert journal.get_run(again.id).attrs == {"transfer_mode": "volume"}


def test_start_runs_claims_only_pending_runs(journal):
    a = journal.begin_run("daily", "vol-1", T0, project_id="p")
    b = journal.begin_run("daily", "vol-2", T0, project_id="p")
    journal.start_run(b.id)  # another worker has it
    claimed = journal.start_runs([a.id, b.id])
    assert set(claimed) == {a.id}
    assert claimed[a.id].state is RunState.RUNNING
    assert journal.get_run(a.id).started_at is not None
    with pytest.raises(NotFound):
        journal.start_runs(["nope"])


def test_overlapping_start_runs_claim_each_run_exactly_once(url, clock):
    """Daemons claiming overlapping batches at once (the ring changing
    under them): every run is claimed by exactly one of them, none waits
    for ever (rows are locked in id order in one statement)."""
    journals = [_open(url, clock) for _ in range(3)]
    try:
        ids = [
            journals[0].begin_run("daily", f"vol-{n}", T0, project_id="p").id
            for n in range(9)
        ]
        batches = [ids[0:6], ids[3:9], ids[::-1]]
        won, lost = _race(
            [
                functools.partial(jr.start_runs, batch)
                for jr, batch in zip(journals, batches, strict=True)
            ]
        )
        assert lost == []
        claimed = [run_id for result in won for run_id in result]
        assert sorted(claimed) == sorted(ids)
        assert all(
            journals[0].get_run(run_id).state is RunState.RUNNING
            for run_id in ids
        )
    finally:
        for jr in journals:
            jr.close()


def test_finish_runs_writes_outcomes_and_done_steps_at_once(journal):
    ids = [_running(journal, f"vol-{n}") for n in range(3)]
    step = journal.begin_step(
        ids[0], StepKind.BACKUP_CREATE, target="vol-0", details={"k": 1}
    )
    journal.set_step_resource(step, "bk-1")
    journal.finish_runs(
        [
            journal_pkg.RunEnd(
                ids[0], RunState.SUCCEEDED, {"ok": 1}, ((step, {"size": 2}),)
            ),
            journal_pkg.RunEnd(ids[1], RunState.FAILED, {"error": "x"}),
        ]
    )
    done = journal.get_run(ids[0])
    assert done.state is RunState.SUCCEEDED and done.summary == {"ok": 1}
    assert done.steps and done.steps[0].state is StepState.DONE
    assert done.steps[0].details == {"k": 1, "size": 2}
    assert done.steps[0].resource_id == "bk-1"
    assert journal.get_run(ids[1]).state is RunState.FAILED
    assert journal.get_run(ids[2]).state is RunState.RUNNING


def test_the_creations_mark_moves_with_every_backup_recorded(journal):
    """What lets expiry skip a quiet project: any creation for one of
    its volumes, its backup id, its end or its pruning changes the mark;
    other volumes' creations and other kinds of step do not."""
    run_id = _running(journal, "vol-b")
    other = _running(journal, "vol-c")  # stays open: never pruned
    marks = [journal.creations_mark(["vol-a", "vol-b"])]
    assert marks[0] == (0, 0, 0, 0)
    journal.begin_step(other, StepKind.BACKUP_CREATE, target="vol-c")
    journal.begin_step(other, StepKind.SNAPSHOT_CREATE, target="vol-a")
    assert journal.creations_mark(["vol-b", "vol-a"]) == marks[0]
    step = journal.begin_step(run_id, StepKind.BACKUP_CREATE, target="vol-b")
    marks.append(journal.creations_mark(["vol-a", "vol-b"]))
    journal.set_step_resource(step, "bk-1")
    marks.append(journal.creations_mark(["vol-a", "vol-b"]))
    journal.complete_step(step)
    marks.append(journal.creations_mark(["vol-a", "vol-b"]))
    journal.finish_run(run_id, RunState.SUCCEEDED)
    journal.prune(older_than=T0 + 365 * 24 * HOUR)
    marks.append(journal.creations_mark(["vol-a", "vol-b"]))
    assert len(set(marks[:-1])) == 4, marks
    # Pruned: as before any was recorded. (A quiet look is younger than
    # the journal's retention, so it never meets the same mark again.)
    assert marks[-1] == marks[0]


def test_quiet_looks_are_remembered_replaced_and_forgotten(journal):
    assert journal.quiet_looks("p1") == {}
    journal.remember_quiet("p1", {"proj-a": "f1", "proj-b": "f2"}, T0)
    journal.remember_quiet("p2", {"proj-a": "g1"}, T0)
    later = T0 + HOUR
    journal.remember_quiet("p1", {"proj-a": "f3"}, later)
    assert journal.quiet_looks("p1") == {
        "proj-a": ("f3", later),
        "proj-b": ("f2", T0),
    }
    journal.forget_quiet("p1", ["proj-b", "proj-c"])
    assert journal.quiet_looks("p1") == {"proj-a": ("f3", later)}
    assert journal.quiet_looks("p2") == {"proj-a": ("g1", T0)}


def test_finish_runs_with_one_refused_keeps_the_others(journal):
    ids = [_running(journal, f"vol-{n}") for n in range(2)]
    journal.finish_run(ids[0], RunState.FAILED)
    with pytest.raises(InvalidTransition):
        journal.finish_runs(
            [
                journal_pkg.RunEnd(ids[1], RunState.SUCCEEDED),
                journal_pkg.RunEnd(ids[0], RunState.SUCCEEDED),
            ]
        )
    assert journal.get_run(ids[1]).state is RunState.SUCCEEDED
    assert journal.get_run(ids[0]).state is RunState.FAILED


def test_begin_steps_and_set_step_resources_in_one_go(journal):
    ids = [_running(journal, f"vol-{n}") for n in range(2)]
    made = journal.begin_steps(
        [
            (ids[0], StepKind.BACKUP_CREATE, "vol-0", {"kind": "full"}),
            (ids[1], StepKind.SNAPSHOT_CREATE, "vol-1", None),
        ]
    )
    assert len(made) == 2 and made[0] != made[1]
    first = journal.get_step(made[0])
    assert first.state is StepState.INTENT and first.details == {
        "kind": "full"
    }
    journal.set_step_resources([(made[0], "bk-1"), (made[1], "snap-1")])
    assert journal.get_step(made[0]).state is StepState.ACTING
    assert journal.get_step(made[1]).resource_id == "snap-1"
    with pytest.raises(NotFound):
        journal.begin_steps(
            [
                (ids[0], StepKind.THAW, "s", None),
                ("no", StepKind.THAW, "s", None),
            ]
        )
    assert len(journal.get_run(ids[0]).steps or ()) == 1


def test_set_step_resources_with_one_refused_keeps_the_others(journal):
    run_id = _running(journal)
    a, b = journal.begin_steps(
        [
            (run_id, StepKind.BACKUP_CREATE, "vol-1", None),
            (run_id, StepKind.SNAPSHOT_CREATE, "vol-1", None),
        ]
    )
    journal.set_step_resource(b, "snap-1")
    with pytest.raises(ValueError, match="already has resource"):
        journal.set_step_resources([(a, "bk-1"), (b, "snap-2")])
    assert journal.get_step(a).resource_id == "bk-1"
    assert journal.get_step(b).resource_id == "snap-1"


def test_record_thaw_closes_the_freeze_in_one_go(journal):
    run_id = _running(journal)
    freeze = journal.begin_step(
        run_id, StepKind.FREEZE, target="srv-1", details={"host": "h"}
    )
    assert [s.id for s in journal.frozen_servers()] == [freeze]
    thaw = journal.record_thaw(
        run_id,
        "srv-1",
        freeze,
        freeze_details={"quiesced": True},
        thaw_details={"by_watchdog": False, "freeze_seconds": 0.5},
    )
    assert journal.frozen_servers() == []
    done = journal.get_step(freeze)
    assert done.state is StepState.DONE
    assert done.details == {"host": "h", "quiesced": True}
    recorded = journal.get_step(thaw)
    assert recorded.kind == StepKind.THAW and recorded.target == "srv-1"
    assert recorded.state is StepState.DONE
    assert recorded.details == {"by_watchdog": False, "freeze_seconds": 0.5}


def test_unknown_ids_raise_not_found(journal):
    with pytest.raises(NotFound):
        journal.get_run("nope")
    with pytest.raises(NotFound):
        journal.start_run("nope")
    with pytest.raises(NotFound):
        journal.begin_step("nope", StepKind.FREEZE, target="srv")
    with pytest.raises(NotFound):
        journal.get_step(424242)
    with pytest.raises(NotFound):
        journal.complete_step(424242)


# -- steps -------------------------------------------------------------


def test_step_lifecycle_intent_acting_done(journal, clock):
    run_id = _running(journal)
    step_id = journal.begin_step(
        run_id,
        steps.BACKUP_CREATE,
        target="vol-1",
        details={"kind": "incremental", steps.EXPECTED_PARENT: "bk-0"},
    )
    step = journal.get_step(step_id)
    assert step.state is StepState.INTENT and step.is_open
    assert step.resource_id is None and step.finished_at is None

    journal.set_step_resource(step_id, "bk-1")
    journal.set_step_resource(step_id, "bk-1")  # same again: no-op
    step = journal.get_step(step_id)
    assert step.state is StepState.ACTING and step.resource_id == "bk-1"
    with pytest.raises(ValueError, match="already has resource bk-1"):
        journal.set_step_resource(step_id, "bk-2")

    clock.advance(seconds=30)
    done = journal.complete_step(step_id, details={"size_gb": 1})
    assert done.state is StepState.DONE and not done.is_open
    assert done.finished_at == clock.now
    assert done.details == {
        "kind": "incremental",
        steps.EXPECTED_PARENT: "bk-0",
        "size_gb": 1,
    }
    assert done.expected_parent == "bk-0"
    # Settling again (a replayed recovery) is a no-op, not an error.
    again = journal.complete_step(step_id, details={"size_gb": 9})
    assert again.state is StepState.DONE and again.details == done.details
    with pytest.raises(InvalidTransition, match="from done to acting"):
        journal.set_step_resource(step_id, "bk-1")


def test_complete_step_can_record_the_resource_at_the_end(journal):
    step_id = journal.begin_step(
        _running(journal), StepKind.SNAPSHOT_CREATE, target="vol-1"
    )
    done = journal.complete_step(step_id, resource_id="snap-1")
    assert done.resource_id == "snap-1"


def test_fail_then_undo_a_step(journal):
    run_id = _running(journal)
    step_id = journal.begin_step(
        run_id, StepKind.SNAPSHOT_CREATE, target="vol-1"
    )
    journal.set_step_resource(step_id, "snap-1")
    failed = journal.fail_step(step_id, "snapshot status error")
    assert failed.state is StepState.FAILED
    assert failed.reason == "snapshot status error"
    undone = journal.undo_step(step_id, "deleted the error snapshot")
    assert undone.state is StepState.UNDONE
    assert undone.reason == "deleted the error snapshot"
    assert undone.resource_id == "snap-1"
    assert journal.undo_step(step_id, "again").reason == (
        "deleted the error snapshot"
    )
    with pytest.raises(InvalidTransition, match="none: it is final"):
        journal.fail_step(step_id, "again")


def test_step_kinds_are_checked(journal):
    with pytest.raises(ValueError, match="not a valid StepKind"):
        journal.begin_step(_running(journal), "snapshot", target="vol-1")


def test_get_run_lists_steps_in_order(journal):
    run_id = _running(journal)
    kinds = [
        StepKind.FREEZE,
        StepKind.SNAPSHOT_CREATE,
        StepKind.THAW,
        StepKind.BACKUP_CREATE,
        StepKind.SNAPSHOT_DELETE,
        StepKind.METADATA_WRITE,
    ]
    ids = [journal.begin_step(run_id, k, target="t") for k in kinds]
    run = journal.get_run(run_id)
    assert run.steps is not None
    assert [s.id for s in run.steps] == ids
    assert [s.kind for s in run.steps] == kinds


# -- recovery ----------------------------------------------------------


def _write_a_run_cut_short(jr: Journal) -> dict[str, object]:
    """A run as a crash leaves it: frozen guest, snapshot and backup in
    flight. Returns the ids, to compare after reopening."""
    run_id = _running(jr, "server:srv-1")
    freeze = jr.begin_step(
        run_id, StepKind.FREEZE, target="srv-1", details={"host": "cmp-1"}
    )
    jr.complete_step(freeze)
    snap = jr.begin_step(run_id, StepKind.SNAPSHOT_CREATE, target="vol-1")
    jr.set_step_resource(snap, "snap-1")
    backup = jr.begin_step(run_id, StepKind.BACKUP_CREATE, target="vol-2")
    finished = jr.begin_run("daily", "vol-9", T0, project_id="p")
    jr.finish_run(finished.id, RunState.SKIPPED)
    return {"run": run_id, "freeze": freeze, "snap": snap, "backup": backup}


def _check_recovery_view(jr: Journal, ids: dict[str, object]) -> None:
    unfinished = jr.unfinished_runs()
    assert [r.id for r in unfinished] == [ids["run"]]
    run = unfinished[0]
    assert run.state is RunState.RUNNING
    assert run.steps is not None
    assert [s.state for s in run.steps] == [
        StepState.DONE,
        StepState.ACTING,
        StepState.INTENT,
    ]
    open_steps = jr.open_steps()
    assert [s.id for s in open_steps] == [ids["snap"], ids["backup"]]
    assert open_steps[0].resource_id == "snap-1"
    assert [s.id for s in jr.open_steps(StepKind.BACKUP_CREATE)] == [
        ids["backup"]
    ]
    assert jr.open_steps("thaw") == []
    frozen = jr.frozen_servers()
    assert [(s.id, s.target) for s in frozen] == [(ids["freeze"], "srv-1")]
    assert frozen[0].details == {"host": "cmp-1"}


def test_recovery_after_dropping_the_journal_mid_run(url, clock):
    jr = _open(url, clock)
    ids = _write_a_run_cut_short(jr)
    del jr  # no close, no finish: as good as gone
    reopened = _open(url, clock)
    try:
        _check_recovery_view(reopened, ids)
    finally:
        reopened.close()


def test_recovery_after_kill_9(url, tmp_path):
    """A child process writes a run and is killed with SIGKILL mid-run."""
    child = _python(
        f"""
        import json, os, signal
        from tests.functional.test_journal import _open, _write_a_run_cut_short
        jr = _open({url!r})
        ids = _write_a_run_cut_short(jr)
        print(json.dumps(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
    )
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    ids = json.loads(out)
    jr = _open(url)
    try:
        _check_recovery_view(jr, ids)
        # Recovery settles each record; then there is nothing left.
        jr.complete_step(jr.begin_step(ids["run"], "thaw", target="srv-1"))
        jr.undo_step(ids["snap"], "deleted leaked snapshot snap-1")
        jr.fail_step(ids["backup"], "no backup found for this run")
        jr.finish_run(ids["run"], RunState.FAILED, {"error": "restart"})
        assert jr.unfinished_runs() == []
        assert jr.open_steps() == []
        assert jr.frozen_servers() == []
    finally:
        jr.close()


def test_recovery_queries_see_only_this_host_unless_asked(url, clock):
    mine, theirs = _open(url, clock, host="a"), _open(url, clock, host="b")
    try:
        a_run = _running(mine, "vol-a")
        b_run = _running(theirs, "vol-b")
        mine.begin_step(a_run, StepKind.FREEZE, target="srv-a")
        theirs.begin_step(b_run, StepKind.FREEZE, target="srv-b")
        assert [r.id for r in mine.unfinished_runs()] == [a_run]
        assert [s.target for s in mine.open_steps()] == ["srv-a"]
        assert [s.target for s in mine.frozen_servers()] == ["srv-a"]
        assert {r.id for r in mine.unfinished_runs(any_host=True)} == {
            a_run,
            b_run,
        }
        assert len(mine.open_steps(any_host=True)) == 2
        assert len(mine.frozen_servers(any_host=True)) == 2
        assert {r.host for r in mine.in_flight()} == {"a", "b"}
    finally:
        mine.close()
        theirs.close()


def test_frozen_servers_needs_a_later_done_thaw_of_the_same_target(journal):
    run_id = _running(journal, "server:s")

    def step(kind: StepKind, target: str, end: str | None = None) -> int:
        sid = journal.begin_step(run_id, kind, target=target)
        if end == "done":
            journal.complete_step(sid)
        elif end == "failed":
            journal.fail_step(sid, "agent not responding")
        return sid

    step(StepKind.THAW, "s1", "done")  # a thaw before the freeze: no help
    f1 = step(StepKind.FREEZE, "s1", "done")
    f2 = step(StepKind.FREEZE, "s2", "failed")  # may have frozen some fs
    f3 = step(StepKind.FREEZE, "s3", "done")
    step(StepKind.THAW, "s3", "done")
    f4 = step(StepKind.FREEZE, "s4", "done")
    step(StepKind.THAW, "s4", "failed")
    f5 = step(StepKind.FREEZE, "s5")
    step(StepKind.THAW, "s1-other", "done")
    assert [s.id for s in journal.frozen_servers()] == [f1, f2, f4, f5]

    journal.undo_step(f5, "server deleted")
    step(StepKind.THAW, "s1", "done")
    assert [s.id for s in journal.frozen_servers()] == [f2, f4]
    assert f3 not in [s.id for s in journal.frozen_servers()]


def test_a_thaw_in_another_run_does_not_count(journal):
    first = _running(journal, "server:s")
    freeze = journal.begin_step(first, StepKind.FREEZE, target="s")
    journal.complete_step(freeze)
    later = _running(
        journal, "server:s", scheduled_at=T0 + datetime.timedelta(hours=1)
    )
    journal.complete_step(journal.begin_step(later, StepKind.THAW, target="s"))
    assert [s.id for s in journal.frozen_servers()] == [freeze]


def test_nothing_is_marked_at_start_up(url, clock):
    """Reopening leaves in-flight records alone: recovery decides."""
    jr = _open(url, clock)
    ids = _write_a_run_cut_short(jr)
    jr.close()
    for _ in range(2):
        reopened = _open(url, clock)
        assert reopened.get_run(ids["run"]).state is RunState.RUNNING
        assert reopened.get_step(ids["backup"]).state is StepState.INTENT
        reopened.close()


# -- operators ---------------------------------------------------------


def test_runs_listing_filters_and_order(journal):
    hour = datetime.timedelta(hours=1)
    outcomes = [
        ("daily", "v1", 0, RunState.SUCCEEDED),
        ("daily", "v1", 1, RunState.FAILED),
        ("daily", "v2", 1, RunState.PARTIAL),
        ("daily", "v2", 2, RunState.SKIPPED),
        ("hourly", "v1", 3, RunState.TIMED_OUT),
    ]
    for policy, target, hours, state in outcomes:
        run_id = _running(
            journal, target, policy=policy, scheduled_at=T0 + hours * hour
        )
        journal.finish_run(run_id, state)
    listed = journal.runs()
    assert [r.scheduled_at for r in listed] == sorted(
        (r.scheduled_at for r in listed), reverse=True
    )
    assert len(listed) == 5 and listed[0].policy == "hourly"
    assert all(r.steps is None for r in listed)
    failed = journal.runs(policy="daily", failed_only=True)
    assert {r.state for r in failed} == {RunState.FAILED, RunState.PARTIAL}
    assert len(journal.runs(target="v1")) == 3
    assert len(journal.runs(limit=2)) == 2


def test_last_run_per_policy_summarises_the_newest_slot(journal, clock):
    hour = datetime.timedelta(hours=1)
    old = _running(journal, "v1", scheduled_at=T0 - 24 * hour)
    journal.finish_run(old, RunState.FAILED)
    for target, state in [
        ("v1", RunState.SUCCEEDED),
        ("v2", RunState.SUCCEEDED),
        ("v3", RunState.FAILED),
    ]:
        clock.advance(minutes=1)
        journal.finish_run(_running(journal, target), state)
    _running(journal, "v4")
    journal.begin_run("hourly", "v1", T0 + hour, project_id="p")

    slots = journal.last_run_per_policy()
    assert set(slots) == {"daily", "hourly"}
    daily = slots["daily"]
    assert daily.scheduled_at == T0
    assert daily.states == {
        RunState.SUCCEEDED: 2,
        RunState.FAILED: 1,
        RunState.RUNNING: 1,
    }
    assert daily.total == 4 and not daily.finished
    assert daily.last_finished_at == T0 + datetime.timedelta(minutes=3)
    assert slots["hourly"].states == {RunState.PENDING: 1}
    assert slots["hourly"].last_finished_at is None


def test_last_backup_per_target_is_the_newest_done_backup(journal):
    hour = datetime.timedelta(hours=1)

    def backup(target: str, at: int, end: str, resource: str) -> None:
        run_id = _running(journal, target, scheduled_at=T0 + at * hour)
        sid = journal.begin_step(
            run_id,
            StepKind.BACKUP_CREATE,
            target=target,
            details={steps.EXPECTED_PARENT: f"parent-of-{resource}"},
        )
        journal.set_step_resource(sid, resource)
        if end == "done":
            journal.complete_step(sid)
        elif end == "failed":
            journal.fail_step(sid, "error")

    backup("v1", 0, "done", "b1")
    backup("v1", 1, "done", "b2")
    backup("v1", 2, "failed", "b3")
    backup("v1", 3, "open", "b4")
    backup("v2", 0, "done", "c1")
    last = journal.last_backup_per_target()
    assert {t: s.resource_id for t, s in last.items()} == {
        "v1": "b2",
        "v2": "c1",
    }
    assert last["v1"].expected_parent == "parent-of-b2"
    assert journal.last_backup_per_target(policy="hourly") == {}
    assert set(journal.last_backup_per_target(policy="daily")) == {"v1", "v2"}


def test_prune_deletes_old_settled_runs_only(url, clock):
    jr = _open(url, clock, retention_days=30)
    try:
        hour = datetime.timedelta(hours=1)

        def finished(target: str, state=RunState.SUCCEEDED) -> str:
            run_id = _running(jr, target)
            jr.complete_step(
                jr.begin_step(run_id, StepKind.BACKUP_CREATE, target=target)
            )
            jr.finish_run(run_id, state)
            return run_id

        old = finished("old")
        old_failed = finished("old-failed", RunState.FAILED)
        still_running = _running(jr, "running")
        open_step = finished("open-step")
        jr.begin_step(open_step, StepKind.SNAPSHOT_DELETE, target="snap")
        frozen = _running(jr, "frozen")
        jr.complete_step(jr.begin_step(frozen, StepKind.FREEZE, target="s"))
        jr.finish_run(frozen, RunState.FAILED)

        clock.advance(days=31)
        recent = finished("recent")

        # Nothing is old enough for an explicit cutoff before them all.
        assert jr.prune(T0 - hour) == 0
        assert jr.prune() == 2  # default: now - 30 days
        left = {r.id for r in jr.runs(limit=100)}
        assert left == {still_running, open_step, frozen, recent}
        assert old not in left and old_failed not in left
        with jr.engine.connect() as conn:
            orphans = conn.execute(
                sa.select(sa.func.count())
                .select_from(models.Step)
                .where(models.Step.run_id.in_([old, old_failed]))
            ).scalar()
        assert orphans == 0
        assert jr.prune() == 0
    finally:
        jr.close()


def test_prune_works_through_a_large_backlog(url, clock):
    jr = _open(url, clock, retention_days=1)
    try:
        count = 1100  # more than one delete batch
        with jr.engine.begin() as conn:
            conn.execute(
                sa.insert(models.Run),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "policy": "daily",
                        "target": f"vol-{i}",
                        "scheduled_at": T0,
                        "project_id": "p",
                        "host": "host-a",
                        "state": "succeeded",
                        "attrs": {},
                        "created_at": T0,
                        "updated_at": T0,
                        "finished_at": T0,
                    }
                    for i in range(count)
                ],
            )
        clock.advance(days=2)
        assert jr.prune() == count
        assert jr.runs() == []
    finally:
        jr.close()


# -- what only we wrote: restore points and verifications ---------------


def test_restore_point_is_the_freeze_and_the_backups_of_its_slot(journal):
    group = str(uuid.uuid4())
    runs = {v: _running(journal, v) for v in ("vol-1", "vol-2", "vol-3")}
    freeze = journal.begin_step(
        runs["vol-1"],
        StepKind.FREEZE,
        target="srv-1",
        details={"group": group, "volumes": ["vol-1", "vol-2"]},
    )
    journal.complete_step(freeze, details={"thawed": True})
    for volume, backup in (("vol-1", "bk-1"), ("vol-3", "bk-3")):
        step = journal.begin_step(
            runs[volume], StepKind.BACKUP_CREATE, target=volume
        )
        journal.complete_step(step, resource_id=backup)
    # The same volume's backup in another slot is not of this point.
    other = _running(journal, "vol-2", scheduled_at=T0 + HOUR)
    step = journal.begin_step(other, StepKind.BACKUP_CREATE, target="vol-2")
    journal.complete_step(step, resource_id="bk-later")

    assert journal.restore_point(group) == {"vol-1": "bk-1", "vol-2": None}
    assert journal.restore_point(str(uuid.uuid4())) is None


def test_last_final_runs_and_has_runs_tell_recorded_from_lost(journal, clock):
    assert not journal.has_runs("verify:daily")
    for target, state in (("bk-1", RunState.SUCCEEDED), ("bk-2", None)):
        run = _running(journal, target, policy="verify:daily")
        if state:
            journal.finish_run(run, state, {"result": "ok"})
    clock.advance(hours=1)
    later = journal.begin_run(
        "verify:daily", "bk-1", T0 + HOUR, project_id="proj"
    )
    journal.start_run(later.id)
    journal.finish_run(later.id, RunState.FAILED, {"result": "failed"})

    found = journal.last_final_runs("verify:daily", ["bk-1", "bk-2", "x"])
    assert list(found) == ["bk-1"]
    assert found["bk-1"].summary == {"result": "failed"}
    assert journal.has_runs("verify:daily")
    assert not journal.has_runs("verify:weekly")


def test_a_survivor_finds_what_a_dead_daemon_left(url, clock):
    """Takeover: another daemon's runs in flight, its frozen guests and
    the volumes begun in a slot, read through the shared journal."""
    dead = _open(url, clock, host="host-a")
    survivor = _open(url, clock, host="host-b")
    run = dead.begin_run("p", "vol-1", T0, project_id="proj")
    dead.start_run(run.id)
    dead.begin_step(run.id, StepKind.FREEZE, target="server-1")
    idle = survivor.begin_run("p", "vol-2", T0, project_id="proj")
    survivor.start_run(idle.id)
    survivor.finish_run(idle.id, RunState.SUCCEEDED)

    assert survivor.hosts_with_open_work() == {"host-a"}
    assert survivor.unfinished_runs() == []
    assert [r.id for r in survivor.unfinished_runs(host="host-a")] == [run.id]
    assert [s.target for s in survivor.frozen_servers(host="host-a")] == [
        "server-1"
    ]
    assert survivor.frozen_servers() == []
    assert survivor.targets_of_slot("p", T0) == {"vol-1", "vol-2"}
    assert survivor.targets_of_slot("p", T0 + HOUR) == set()

    thaw = survivor.begin_step(run.id, StepKind.THAW, target="server-1")
    survivor.complete_step(thaw)
    survivor.finish_run(run.id, RunState.FAILED, {"error": "taken over"})
    assert survivor.hosts_with_open_work() == set()
    assert survivor.frozen_servers(host="host-a") == []


def test_beats_count_per_group_and_host_and_leaving_forgets(journal):
    assert journal.beat("g", "d1") == {"d1": 1}
    assert journal.beat("g", "d2") == {"d1": 1, "d2": 1}
    assert journal.beat("g", "d1") == {"d1": 2, "d2": 1}
    # Another group on the same journal is counted apart.
    assert journal.beat("other", "d1") == {"d1": 1}
    journal.forget_beat("g", "d1")
    assert journal.beat("g", "d2") == {"d2": 2}
