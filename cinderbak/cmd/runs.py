"""``cinderbak runs``: the per-run log, newest first, from the journal."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from cinderbak import scheduler, workflow
from cinderbak.cmd.status import _JournalLister, when
from cinderbak.journal import Journal, RunRecord

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
