"""What a run report and the RPO metrics cost at 10,000 volumes.

Writes two slots of --volumes volume runs each into a SQLite journal (the
older one all succeeded; in the newer one --failed-percent of them fail),
then times what the end of a run does: reading the slot and the volumes'
last good backups, building and rendering the report, and one scrape of
the metrics with every volume out of RPO (the worst case of the
per-volume series cap). Prints one line per phase.

    .venv/bin/python bench/bench_report.py [--volumes 10000]
        [--failed-percent 10]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import tracemalloc
import types
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prometheus_client  # noqa: E402
from oslo_config import cfg  # noqa: E402
from sqlalchemy import orm  # noqa: E402

from cinderbak import metrics, opts, report, rpo  # noqa: E402
from cinderbak.journal import Journal, RunState, models  # noqa: E402
from cinderbak.policy import parse_schedule  # noqa: E402

UTC = datetime.UTC
SLOT = datetime.datetime(2026, 5, 2, 3, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)


def timed(name: str, call, trace: bool = True):  # type: ignore[no-untyped-def]
    """Run ``call``; print its wall time and (``trace``) the peak of what
    it allocated, by tracemalloc (which also slows it down)."""
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    value = call()
    took = time.perf_counter() - started
    peak = ""
    if trace:
        peak = f" {tracemalloc.get_traced_memory()[1] / 2**20:7.1f} MiB peak"
        tracemalloc.stop()
    print(f"{name:<52} {took:8.3f} s{peak}")
    return value


STEPS = (
    ("backup_snapshot", "snapshot_create"),
    ("backup_create", "snapshot_delete"),
)
"""A volume run's steps as the engine writes them (two each)."""


def fill(journal: Journal, volumes: int, failed_percent: int) -> None:
    rows = []
    for slot, fail in ((SLOT - DAY, 0), (SLOT, failed_percent)):
        for i in range(volumes):
            bad = i * 100 < volumes * fail
            state = RunState.FAILED if bad else RunState.SUCCEEDED
            summary = (
                {"error": "no role in project"}
                if bad
                else {
                    "volume_id": f"vol-{i}",
                    "project_id": f"p{i % 500}",
                    "status": "ok",
                    "kind": "incremental",
                    "backup_id": str(uuid.uuid4()),
                    "size_gb": 10,
                    "seconds": 30.0 + i % 97,
                }
            )
            run_id = str(uuid.uuid4())
            rows.extend(
                models.Step(
                    run_id=run_id,
                    kind=kind,
                    target=f"vol-{i}",
                    state="done",
                    resource_id=str(uuid.uuid4()),
                    details={"project_id": f"p{i % 500}", "size_gb": 10},
                    created_at=slot,
                    updated_at=slot,
                    finished_at=slot,
                )
                for pair in STEPS
                for kind in pair
            )
            rows.append(
                models.Run(
                    id=run_id,
                    policy="daily",
                    target=f"vol-{i}",
                    scheduled_at=slot,
                    project_id=f"p{i % 500}",
                    host="bench",
                    state=state,
                    attrs={},
                    summary=summary,
                    created_at=slot,
                    updated_at=slot,
                    started_at=slot,
                    finished_at=slot + datetime.timedelta(minutes=40),
                )
            )
    with orm.Session(journal.engine) as session, session.begin():
        session.add_all(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--failed-percent", type=int, default=10)
    args = parser.parse_args()
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(args=[], project="cinderbak", default_config_files=[])
    # Only the schedule matters here.
    known = types.SimpleNamespace(schedule=parse_schedule("0 3 * * *"))
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.from_url(f"sqlite:///{tmp}/journal.sqlite")
        journal.upgrade()
        timed(
            f"write 2 slots of {args.volumes} runs (bulk)",
            lambda: fill(journal, args.volumes, args.failed_percent),
            trace=False,
        )
        now = SLOT + datetime.timedelta(hours=2)
        timed(
            "journal: slot_runs (with steps: an expiry pass's)",
            lambda: journal.slot_runs("daily", SLOT),
        )
        runs = timed(
            "journal: slot_runs (a backup slot's: no steps)",
            lambda: journal.slot_runs("daily", SLOT, with_steps=False),
        )
        marks_raw = timed(
            "journal: backup_marks before the slot",
            lambda: journal.backup_marks(policy="daily", before=SLOT),
        )
        marks = {
            v: report.BackupMark(last_success=last, first_seen=first)
            for (_, v), (_, last, first) in marks_raw.items()
        }
        done = timed(
            "report.build",
            lambda: report.build(
                runs, now, marks=marks, rpo=rpo.rpo(known.schedule, 1.5, now)
            ),
        )
        text = timed("report.render", lambda: report.render(done))
        print(
            f"report: {done.counts_text()}; {len(text) / 1024:.0f} KiB of "
            f"text; {len(done.out_of_rpo)} out of RPO"
        )
        # Every volume out of RPO: the per-volume series cap at work.
        metrics.CLOCKS.watch(conf, journal, lambda: {"daily": known})
        metrics.CLOCKS._now = lambda: SLOT + 10 * DAY  # noqa: SLF001
        body = timed(
            f"metrics scrape, {args.volumes} volumes all out of RPO",
            lambda: prometheus_client.generate_latest(metrics.REGISTRY),
        )
        series = sum(
            1
            for line in body.decode().splitlines()
            if line.startswith("cinderbak_volume_last_success")
        )
        print(
            f"scrape: {len(body) / 1024:.0f} KiB, {series} per-volume "
            f"series (limit {conf.metrics.volume_series_limit})"
        )
        journal.close()


if __name__ == "__main__":
    main()
