"""What planning asks the journal once per project, on a journal with a
history: which backups our runs created for a project's volumes
(``Journal.known_backups``).

Fills a SQLite journal with --volumes volumes x --days backups (one run
and one backup-create step each, inserted in bulk), then times the
question for --projects projects of 20 volumes. ``--revision 0003``
builds the schema as it was before ``steps`` were indexed by target.

    .venv/bin/python bench/bench_known_backups.py [--revision head]
        [--volumes 10000] [--days 30] [--projects 50]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cinderbak.journal import api, models  # noqa: E402
from cinderbak.journal.steps import StepKind  # noqa: E402

PER_PROJECT = 20
NOW = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)


def fill(journal: api.Journal, volumes: int, days: int) -> None:
    for day in range(days):
        when = NOW - datetime.timedelta(days=day)
        runs, steps = [], []
        for v in range(volumes):
            run_id = str(uuid.uuid4())
            common = {"created_at": when, "updated_at": when}
            runs.append(
                {
                    "id": run_id,
                    "policy": "bench",
                    "target": f"vol-{v}",
                    "scheduled_at": when,
                    "project_id": f"project-{v // PER_PROJECT}",
                    "host": "bench",
                    "state": "succeeded",
                    "attrs": {},
                    "summary": None,
                    "started_at": when,
                    "finished_at": when,
                    **common,
                }
            )
            steps.append(
                {
                    "run_id": run_id,
                    "kind": StepKind.BACKUP_CREATE,
                    "target": f"vol-{v}",
                    "state": "done",
                    "resource_id": str(uuid.uuid4()),
                    "details": {},
                    "reason": None,
                    "finished_at": when,
                    **common,
                }
            )
        with journal.engine.begin() as c:
            c.execute(sa.insert(models.Run), runs)
            c.execute(sa.insert(models.Step), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revision", default="head")
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--projects", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-known-") as tmp:
        journal = api.Journal.from_url(f"sqlite:///{tmp}/journal.sqlite")
        journal.upgrade(args.revision)
        fill(journal, args.volumes, args.days)
        cpu, wall = time.process_time(), time.time()
        found = 0
        for p in range(args.projects):
            first = p * PER_PROJECT
            volumes = [f"vol-{v}" for v in range(first, first + PER_PROJECT)]
            found += sum(map(len, journal.known_backups(volumes).values()))
        cpu, wall = time.process_time() - cpu, time.time() - wall
        journal.close()
    print(
        f"schema {args.revision}, {args.volumes * args.days} backups "
        f"recorded: {args.projects} projects asked, {found} backups found, "
        f"{cpu / args.projects * 1000:.1f} ms CPU and "
        f"{wall / args.projects * 1000:.1f} ms wall per project"
    )


if __name__ == "__main__":
    main()
