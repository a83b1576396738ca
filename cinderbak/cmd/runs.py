"""``cinderbak runs``: the per-run log, newest first, from the journal;
``cinderbak runs show RUN``: one run's report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from cliff.command import Command

from cinderbak import announce, report, scheduler, workflow
from cinderbak.cmd.status import (
    _JournalLister,
    configured_policies,
    open_journal,
    when,
)
from cinderbak.journal import Journal, NotFound, RunRecord

if TYPE_CHECKING:
    from cinderbak.cmd.cli import CinderbakApp

COLUMNS = (
    "run_id",
    "policy",
    "target",
    "scheduled_at",
    "state",
    "started_at",
    "finished_at",
    "seconds",
    "kind",
    "backup_id",
    "result",
)


def run_row(run: RunRecord) -> tuple[object, ...]:
    """Given a run, return its row: a volume's outcome, or for a
    policy-level run (target '*') the counts of its slot."""
    summary = run.summary or {}
    if workflow.is_slot_target(run.target):
        result = scheduler.summary_text(summary)
    else:
        result = summary.get("error") or "; ".join(summary.get("notes") or ())
    duration = run.duration
    return (
        run.id,
        run.policy,
        run.target,
        when(run.scheduled_at),
        str(run.state),
        when(run.started_at),
        when(run.finished_at),
        None if duration is None else round(duration.total_seconds(), 1),
        summary.get("kind") or "",
        summary.get("backup_id") or "",
        result,
    )


class Runs(_JournalLister):
    """List runs, newest scheduled first: one per volume per slot, and
    one per slot of a policy (target '*') with its counts."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--failed",
            action="store_true",
            help="only runs that failed, were missed, timed out or "
            "partly failed",
        )
        parser.add_argument(
            "--policy", metavar="NAME", help="only this policy"
        )
        parser.add_argument(
            "--target",
            metavar="VOLUME_ID",
            help="only this volume's runs ('*': the policy-level runs)",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=50,
            metavar="N",
            help="at most N runs (default: 50)",
        )
        return parser

    def column_names(self, parsed_args: argparse.Namespace) -> tuple[str, ...]:
        return COLUMNS

    def rows(
        self, store: Journal, parsed_args: argparse.Namespace
    ) -> Iterator[tuple[object, ...]]:
        for run in store.runs(
            policy=parsed_args.policy,
            target=parsed_args.target,
            failed_only=parsed_args.failed,
            limit=parsed_args.limit,
        ):
            yield run_row(run)


class RunsShow(Command):
    """Print the report of one run: what every volume did, why the
    failed ones failed, the slowest and the freeze windows, what expiry
    deleted and kept, and the volumes left out of their RPO.

    RUN is any run id of the slot (``cinderbak runs`` lists them): the
    policy-level run, one volume's, an expiry or a verification pass.
    The report is built from the journal alone, as it was mailed.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("run", metavar="RUN", help="a run id")
        parser.add_argument(
            "--json", action="store_true", help="the report as JSON"
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help=f"every volume (default: at most {report.LIMIT} per list)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        app = cast("CinderbakApp", self.app)
        store = open_journal(app.conf)
        if store is None:
            self.app.stderr.write("no journal yet\n")
            return 1
        try:
            try:
                run = store.get_run(parsed_args.run)
            except NotFound:
                self.app.stderr.write(f"no run {parsed_args.run}\n")
                return 1
            done = announce.load(
                store,
                app.conf,
                configured_policies(app),
                run,
                datetime.datetime.now(datetime.UTC),
            )
        finally:
            store.close()
        if parsed_args.json:
            text = json.dumps(dataclasses.asdict(done), default=str, indent=2)
            self.app.stdout.write(text + "\n")
        else:
            limit = None if parsed_args.all else report.LIMIT
            self.app.stdout.write(report.render(done, limit))
        return 0
