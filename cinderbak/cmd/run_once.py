"""``cinderbak run-once``: run policies now, print one row per volume."""

from __future__ import annotations

import argparse
import threading

from cinderbak import recovery, service
from cinderbak.cmd.base import PolicyLister, Table
from cinderbak.summary import COLUMNS


class RunOnce(PolicyLister):
    """Back up every opted-in volume of the given policies, now.

    Exits non-zero when any volume failed, so cron and CI notice.
    """

    verb = "run"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--no-audit",
            action="store_true",
            help="skip the scan of all volumes for opt-ins that name no "
            "policy (it pages through every volume of the cloud)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        parts = self.parts()
        # Cron users get what the daemon gives at start-up: guests left
        # frozen thawed, interrupted runs settled, leftovers swept. Only
        # when no other cinderbak process of this host is alive: next to
        # a running daemon, what is unfinished is its work in flight.
        leftovers = recovery.take_leftovers(parts)
        if leftovers is None:
            self.app.stdout.write(
                f"recovery: skipped, another cinderbak process of host "
                f"{parts.journal.host} is running (or its lock cannot be "
                "opened); what is unfinished is left to it, or to the next "
                "process that starts alone\n"
            )
            settled = []
        else:
            unfinished, frozen = leftovers
            settled = recovery.recover(
                parts, threading.Event(), unfinished=unfinished, frozen=frozen
            )
        if settled:
            self.app.stdout.write(
                f"recovery: settled {len(settled)} interrupted runs: "
                + ", ".join(f"{o.volume_id} {o.status}" for o in settled)
                + "\n"
            )
        outcomes = service.run_once(
            parts,
            parsed_args.policy or None,
            audit=not parsed_args.no_audit,
        )
        failed = [o for o in outcomes if o.status in ("error", "timeout")]
        self.app.stdout.write(
            f"{len(outcomes)} volumes: "
            f"{sum(o.status == 'ok' for o in outcomes)} ok, "
            f"{len(failed)} failed, "
            f"{sum(o.status == 'skipped' for o in outcomes)} skipped\n"
        )
        self.exit_code = 1 if failed else 0
        return COLUMNS, [outcome.row() for outcome in outcomes]
