"""``cinderbak plan``: what expiry would keep and delete, and why."""

from __future__ import annotations

import datetime

from cliff.lister import Lister

from cinderbak import expiry


class Plan(Lister):
    """Show the retention plan: one row per backup, with every reason.

    Reads only: nothing is deleted and nothing is written to the journal.
    Deletions beyond [expiry] max_deletions_per_pass show as deferred,
    exactly as `cinderbak expire` would leave them.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--policy",
            action="append",
            default=[],
            metavar="NAME",
            help="plan only this policy (repeatable; default: all)",
        )
        parser.add_argument(
            "--volume",
            action="append",
            default=[],
            metavar="ID",
            help="show only the backups of this volume (repeatable)",
        )
        return parser

    exit_code = 0

    def run(self, parsed_args) -> int:
        super().run(parsed_args)
        return self.exit_code

    def take_action(self, parsed_args):
        parts = self.app.parts()
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
