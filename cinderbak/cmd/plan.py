"""``cinderbak plan``: what expiry would keep and delete, and why."""

from __future__ import annotations

import argparse
import datetime

from cinderbak import expiry
from cinderbak.cmd.base import PolicyLister, Table


class Plan(PolicyLister):
    """Show the retention plan: one row per backup, with every reason.

    Reads only: nothing is deleted and nothing is written to the journal.
    Deletions beyond [expiry] max_deletions_per_pass show as deferred,
    exactly as `cinderbak expire` would leave them.
    """

    verb = "plan"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--volume",
            action="append",
            default=[],
            metavar="ID",
            help="show only the backups of this volume (repeatable)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        parts = self.parts()
        policies = expiry.select_policies(parts.policies, parsed_args.policy)
        now = datetime.datetime.now(datetime.UTC)
        rows: list[expiry.ExpiryRow] = []
        for policy in policies:
            plans, problems = expiry.plan_policy(
                parts, policy, now, volume_ids=set(parsed_args.volume)
            )
            rows.extend(problems)
            for plan in plans:
                rows.extend(plan.rows())
        self.exit_code = 1 if any(row.failed for row in rows) else 0
        columns = expiry.PLAN_COLUMNS
        return columns, [row.row(columns) for row in rows]
