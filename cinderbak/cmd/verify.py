"""``cinderbak verify``: restore backups to scratch volumes and check them."""

from __future__ import annotations

import argparse
import datetime

from cinderbak import expiry, verify
from cinderbak.cmd.base import PolicyLister, Table


class Verify(PolicyLister):
    """Prove that backups restore: one backup now, or a pass per policy.

    Each backup is restored over a scratch volume in the service project,
    its image checksummed on the volume cluster and compared with the
    checksum of its source taken at backup time, its filesystem checked
    read-only, and the scratch volume deleted. Without BACKUP, each
    policy's verify_sample is taken, never-verified backups first. Exits
    non-zero when any verification failed; no backup is ever deleted.
    """

    verb = "verify"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "backup",
            metavar="BACKUP",
            nargs="?",
            help="verify this backup only (id)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        parts = self.parts()
        now = datetime.datetime.now(datetime.UTC)
        try:
            if parsed_args.backup:
                rows = [verify.verify_one(parts, parsed_args.backup, now)]
            else:
                verifier = verify.Verifier(parts)
                rows = []
                for policy in expiry.select_policies(
                    parts.policies, parsed_args.policy
                ):
                    rows.extend(verifier.verify_policy(policy, now))
        except verify.VerifyError as exc:
            self.app.stderr.write(f"cannot verify: {exc}\n")
            self.exit_code = 1
            return verify.VerifyRow.COLUMNS, []
        failed = sum(row.result == "failed" for row in rows)
        self.app.stderr.write(
            f"{len(rows)} backups verified, {failed} failed\n"
        )
        self.exit_code = 1 if failed else 0
        return verify.VerifyRow.COLUMNS, [row.as_tuple() for row in rows]
