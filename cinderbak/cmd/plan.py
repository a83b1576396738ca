"""``cinderbak plan``: what expiry would keep and delete, and why."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Iterator
from typing import Any

from cinderbak import expiry
from cinderbak.cmd.base import PolicyLister, Table


class Plan(PolicyLister):
    """Show the retention plan: one row per backup, with every reason.

    Reads only: nothing is deleted and nothing is written to the journal.
    Deletions beyond what a pass makes (sized from the backlog, see
    [expiry] catch_up_passes) show as deferred, exactly as `cinderbak
    expire` would leave them. Rows are printed project by project as each
    is read and planned, so memory stays flat at any region size (except
    with the table format, which needs every row to size its columns).
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
        columns = expiry.PLAN_COLUMNS

        def rows() -> Iterator[tuple[Any, ...]]:
            for policy in policies:
                for item in expiry.iter_plans(
                    parts, policy, now, volume_ids=set(parsed_args.volume)
                ):
                    if isinstance(item, expiry.ExpiryRow):
                        if item.failed:
                            self.exit_code = 1
                        yield item.row(columns)
                    else:  # a plan's rows are never failures
                        yield from item.plan_rows()

        self.exit_code = 0
        return columns, rows()
