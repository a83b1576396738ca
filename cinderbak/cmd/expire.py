"""``cinderbak expire``: delete the backups retention no longer keeps."""

from __future__ import annotations

import argparse
import datetime

from cinderbak import expiry
from cinderbak.cmd.base import PolicyLister, Table


class Expire(PolicyLister):
    """Carry out the retention plan of the given policies now.

    Prints one row per deletion decided, with its result. Exits non-zero
    when any deletion failed (Cinder refused it, it failed or did not
    finish in time) or a project could not be planned; those are left
    for a later pass.
    """

    verb = "expire"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be deleted; delete nothing",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        parts = self.parts()
        policies = expiry.select_policies(parts.policies, parsed_args.policy)
        rows: list[expiry.ExpiryRow] = []
        for policy in policies:
            rows.extend(
                expiry.expire_policy(
                    parts,
                    policy,
                    datetime.datetime.now(datetime.UTC),
                    dry_run=parsed_args.dry_run,
                )
            )
        failed = sum(row.failed for row in rows)
        if parsed_args.dry_run:
            summary = f"{len(rows) - failed} backups would be deleted"
        else:
            done = sum(
                row.result in (expiry.DELETED, expiry.ALREADY_GONE)
                for row in rows
            )
            skipped = sum(
                row.result.startswith(expiry.SKIPPED) for row in rows
            )
            summary = f"{done} backups deleted, {skipped} skipped"
        self.app.stderr.write(f"{summary}, {failed} failed\n")
        self.exit_code = 1 if failed else 0
        return expiry.EXPIRE_COLUMNS, [row.row() for row in rows]
