"""``cinderbak restore``: restore a backup to a new or an existing volume."""

from __future__ import annotations

import datetime
import time

from cliff.lister import Lister
from openstack import exceptions as sdk_exceptions

from cinderbak import restore

COLUMNS = ("backup", "volume_id", "volume_name", "project", "size", "seconds")
# Restores run long: a 1 TiB volume can take hours.
DEFAULT_TIMEOUT = 6 * 3600


class Refused(Exception):
    """The restore must not go ahead; nothing was changed."""


class Restore(Lister):
    """Restore a backup, to a new volume (default) or over an existing one.

    The new volume is created in the backup's project. Over an existing
    volume (--to-volume) the target must be detached and available, at
    least as large as the backup and in the backup's project, and --yes
    must confirm that its data will be overwritten. Exits non-zero,
    changing nothing, when refused.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="BACKUP", help="backup id")
        target = parser.add_mutually_exclusive_group()
        target.add_argument(
            "--new-volume",
            metavar="NAME",
            help="name of the new volume (default: derived from the "
            "backup's name and the time)",
        )
        target.add_argument(
            "--to-volume",
            metavar="VOLUME",
            help="overwrite this existing volume (id or name) instead",
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="confirm overwriting the --to-volume volume",
        )
        parser.add_argument(
            "--timeout",
            type=int,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"give up waiting after this long (default: "
            f"{DEFAULT_TIMEOUT})",
        )
        return parser

    def run(self, parsed_args) -> int:
        try:
            return super().run(parsed_args)
        except Refused as exc:
            self.app.stderr.write(f"refused: {exc}\n")
            return 1

    def take_action(self, parsed_args):
        parts = self.app.parts()
        cloud = parts.cloud
        storage = cloud.service.block_storage
        found = self._find(
            lambda: cloud.call(storage.get_backup, parsed_args.backup),
            f"backup {parsed_args.backup}",
        )
        backup = restore.BackupFacts(
            id=found.id,
            project_id=found.project_id or "",
            size=found.size or 0,
            status=found.status,
            name=found.name or "",
        )
        target = None
        if parsed_args.to_volume:
            volume = self._find(
                lambda: cloud.call(
                    storage.find_volume,
                    parsed_args.to_volume,
                    ignore_missing=False,
                    all_projects=True,
                ),
                f"volume {parsed_args.to_volume}",
            )
            target = restore.VolumeFacts(
                id=volume.id,
                name=volume.name or "",
                project_id=volume.project_id or "",
                size=volume.size or 0,
                status=volume.status,
                attachments=tuple(
                    a.get("server_id") or a.get("attachment_id") or "?"
                    for a in volume.attachments or ()
                ),
            )
        reasons = restore.refusals(backup, target, confirmed=parsed_args.yes)
        if reasons:
            raise Refused("\n  ".join(reasons))

        conn = cloud.service
        if backup.project_id != cloud.service.current_project_id:
            # A new volume is created in the project of the connection.
            conn = cloud.for_project(backup.project_id)
        if target is None:
            name = parsed_args.new_volume or restore.new_volume_name(
                backup, datetime.datetime.now(datetime.UTC)
            )
        else:
            name = None
        started = time.monotonic()
        answer = cloud.call(
            conn.block_storage.restore_backup,
            backup.id,
            volume=target.id if target else None,
            name=name,
            idempotent=False,
        )
        volume_id = answer.volume_id
        deadline = started + parsed_args.timeout
        volume = self._wait(
            conn.block_storage.get_volume,
            volume_id,
            "available",
            ("error", "error_restoring"),
            deadline,
        )
        self._wait(
            conn.block_storage.get_backup,
            backup.id,
            "available",
            ("error",),
            deadline,
        )
        seconds = round(time.monotonic() - started, 1)
        row = (
            backup.id,
            volume.id,
            volume.name or "",
            backup.project_id,
            volume.size,
            seconds,
        )
        return COLUMNS, [row]

    @staticmethod
    def _find(lookup, what: str):
        try:
            return lookup()
        except sdk_exceptions.NotFoundException:
            raise Refused(f"{what} not found") from None
        except sdk_exceptions.DuplicateResource:
            raise Refused(f"{what} is ambiguous: give its id") from None

    def _wait(self, get, resource_id, status, failures, deadline):
        """Poll until ``status``; raise on a failure status or timeout."""
        cloud = self.app.parts().cloud
        interval = self.app.parts().conf.poll_interval
        while True:
            current = cloud.call(get, resource_id)
            if current.status == status:
                return current
            kind = type(current).__name__.lower()
            if current.status in failures:
                raise RuntimeError(
                    f"{kind} {resource_id} went to {current.status} "
                    "during the restore"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{kind} {resource_id} still {current.status}; "
                    "gave up waiting (see --timeout)"
                )
            time.sleep(interval)
