"""``cinderbak restore``: restore a backup to a new or an existing volume,
or a server's restore point (a ``cinderbak:group``) to new volumes."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openstack.connection
from openstack import exceptions as sdk_exceptions

from cinderbak import listing, restore, tenant, waiting
from cinderbak.cmd.base import EscapedLister, Table
from cinderbak.workflow import resource_name

COLUMNS = (
    "backup",
    "volume_id",
    "volume_name",
    "project",
    "size",
    "seconds",
    "opt_in",
)
GROUP_COLUMNS = (
    "group",
    "backup",
    "source_volume",
    "volume_id",
    "volume_name",
    "project",
    "size",
    "seconds",
    "status",
    "error",
    "opt_in",
)
T = TypeVar("T")
PROJECT_ATTR = "os-backup-project-attr:project_id"
# Restores run long: a 1 TiB volume can take hours.
DEFAULT_TIMEOUT = 6 * 3600


def _parse_time(text: str | None) -> datetime.datetime | None:
    """Cinder's created_at ('2026-11-24T03:00:01.000000', UTC)."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


class Refused(Exception):
    """The restore must not go ahead; nothing was changed."""


@dataclasses.dataclass
class _Progress:
    """One restore point member's restore, as it goes."""

    member: restore.GroupMember
    conn: openstack.connection.Connection
    volume_id: str = ""
    volume_name: str = ""
    size: int | None = None
    seconds: float | None = None
    status: str = "restoring"  # then ok, error or timeout
    error: str = ""
    seen: str = "not looked at yet"  # what the last poll found
    opt_in: str = ""  # what was done with the copied opt-in

    def row(self, group_id: str) -> tuple[object, ...]:
        backup = self.member.backup
        return (
            group_id,
            backup.id,
            self.member.volume_id,
            self.volume_id,
            self.volume_name,
            backup.project_id,
            self.size,
            self.seconds,
            self.status,
            self.error,
            self.opt_in,
        )


class Restore(EscapedLister):
    """Restore a backup, to a new volume (default) or over an existing one.

    The new volume is created in the backup's project. Over an existing
    volume (--to-volume) the target must be detached and available, at
    least as large as the backup and in the backup's project, and --yes
    must confirm that its data will be overwritten. With --group, every
    backup of a server's restore point is restored to a new volume, all
    started together; an incomplete or inconsistent restore point is
    refused. Exits non-zero, changing nothing, when refused, and
    non-zero when any restore of a group failed.

    Cinder copies the source volume's metadata onto a new volume, our
    opt-in among it; it is removed from every new volume (column
    ``opt_in`` says what), unless --keep-opt-in.
    """

    exit_code = 0
    _keep_opt_in = False

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "backup", metavar="BACKUP", nargs="?", help="backup id"
        )
        source.add_argument(
            "--group",
            metavar="GROUP",
            help="restore every backup of this restore point (the "
            f"{tenant.GROUP} of backups frozen together) to new volumes",
        )
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
            "--keep-opt-in",
            action="store_true",
            help="keep the cinderbak:policy (and status) keys Cinder "
            "copies from the source onto a new volume: the restored "
            "volume is then backed up by that policy too",
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

    def run(self, parsed_args: argparse.Namespace) -> int:
        try:
            return super().run(parsed_args) or self.exit_code
        except Refused as exc:
            self.app.stderr.write(f"refused: {exc}\n")
            return 1

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        if parsed_args.group:
            return self._restore_group(parsed_args)
        parts = self.parts()
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
        opt_in = ""
        if target is None:
            opt_in = self._strip_opt_in(
                conn, volume.id, keep=parsed_args.keep_opt_in
            )
        row = (
            backup.id,
            volume.id,
            volume.name or "",
            backup.project_id,
            volume.size,
            seconds,
            opt_in,
        )
        return COLUMNS, [row]

    def _strip_opt_in(
        self,
        conn: openstack.connection.Connection,
        volume_id: str,
        *,
        keep: bool,
    ) -> str:
        """Remove our keys Cinder copied onto a new volume; say what."""
        cloud = self.parts().cloud
        storage = conn.block_storage
        metadata = cloud.call(storage.get_volume_metadata, volume_id).metadata
        keys = restore.opt_in_keys(metadata or {})
        if keys and not keep:
            cloud.call(storage.delete_volume_metadata, volume_id, keys=keys)
        return restore.opt_in_note(keys, kept=keep)

    @staticmethod
    def _find(lookup: Callable[[], T], what: str) -> T:
        try:
            return lookup()
        except sdk_exceptions.NotFoundException:
            raise Refused(f"{what} not found") from None
        except sdk_exceptions.DuplicateResource:
            raise Refused(f"{what} is ambiguous: give its id") from None

    def _wait(
        self,
        get: Callable[[str], T],
        resource_id: str,
        status: str,
        failures: tuple[str, ...],
        deadline: float,
    ) -> T:
        """Poll until ``status``; raise on a failure status or timeout."""
        cloud = self.parts().cloud

        def reached() -> T | None:
            current = cloud.call(get, resource_id)
            now = getattr(current, "status", None)
            if now == status:
                return current
            if now in failures:
                kind = type(current).__name__.lower()
                raise RuntimeError(
                    f"{kind} {resource_id} went to {now} during the restore"
                )
            return None

        return waiting.poll(
            reached,
            timeout=max(0.0, deadline - time.monotonic()),
            interval=self.parts().conf.poll_interval,
            what=f"{resource_id} to be {status} (see --timeout)",
        )

    # -- a restore point -------------------------------------------------

    def _restore_group(self, parsed_args: argparse.Namespace) -> Table:
        group_id = parsed_args.group
        for option, given in (
            ("--to-volume", parsed_args.to_volume),
            ("--new-volume", parsed_args.new_volume),
        ):
            if given:
                raise Refused(
                    f"{option} cannot be used with --group: each backup of "
                    "a restore point is restored to a new volume named "
                    "after its source volume"
                )
        # What only we wrote decides membership and size; the marks on
        # the backups (tenant-editable) only when the journal lost it.
        recorded = self.parts().journal.restore_point(group_id)
        members = self._group_members(group_id, narrowed=True)
        reasons = restore.group_refusals(group_id, members, recorded)
        if reasons:
            # The narrowed list misses a backup a tenant renamed, and a
            # cloud whose filters leave out name~ answers it with nothing:
            # look at every backup before refusing.
            members = self._group_members(group_id, narrowed=False)
            reasons = restore.group_refusals(group_id, members, recorded)
        if reasons:
            raise Refused("\n  ".join(reasons))
        if recorded is None:
            self.app.stderr.write(
                f"group {group_id}: the journal has no record of this "
                "restore point; its members were taken from the backups' "
                "marks, which agree on size, run and creation time\n"
            )

        sources = {
            m.volume_id: self._volume_name(m.volume_id) for m in members
        }
        started = time.monotonic()
        now = datetime.datetime.now(datetime.UTC)
        progress = [
            self._start(member, sources[member.volume_id], now)
            for member in members
        ]
        self._keep_opt_in = parsed_args.keep_opt_in
        self._wait_all(progress, started, started + parsed_args.timeout)
        failed = [p for p in progress if p.status != "ok"]
        if failed:
            self.exit_code = 1
            self.app.stderr.write(
                f"group {group_id}: {len(failed)} of {len(progress)} "
                "restores failed; the volumes restored are kept, nothing "
                "was deleted\n"
            )
        return GROUP_COLUMNS, [p.row(group_id) for p in progress]

    def _group_members(
        self, group_id: str, *, narrowed: bool
    ) -> list[restore.GroupMember]:
        """Every backup of ours, in any project, that carries the group."""
        deployment = self.parts().conf.deployment_id
        return [
            restore.GroupMember(
                backup=restore.BackupFacts(
                    id=item["id"],
                    project_id=item.get(PROJECT_ATTR) or "",
                    size=item.get("size") or 0,
                    status=item.get("status") or "",
                    name=item.get("name") or "",
                ),
                volume_id=item.get("volume_id") or "",
                group_size=metadata.get(tenant.GROUP_SIZE, ""),
                run=metadata.get(tenant.RUN, ""),
                created_at=_parse_time(item.get("created_at")),
            )
            for item in self._all_backups(narrowed)
            if (metadata := item.get("metadata") or {}).get(tenant.GROUP)
            == group_id
            and tenant.is_ours(metadata, deployment)
        ]

    def _all_backups(self, narrowed: bool) -> Iterator[dict[str, Any]]:
        """Page through all projects' backups, as the API returns them.

        Metadata cannot be filtered server-side, so it is matched here;
        ``narrowed`` asks Cinder for names like ours only, which every
        backup a run creates has.
        """
        cloud = self.parts().cloud
        query: dict[str, object] = {"all_tenants": 1}
        if narrowed:
            query["name~"] = resource_name("")
        yield from listing.pages(
            cloud, cloud.service, "/backups/detail", "backups", query
        )

    def _start(
        self,
        member: restore.GroupMember,
        source_name: str,
        now: datetime.datetime,
    ) -> _Progress:
        """Ask Cinder to restore one member to a new volume, once."""
        cloud = self.parts().cloud
        backup = member.backup
        progress = _Progress(
            member,
            cloud.service,
            volume_name=restore.restored_name(
                source_name or member.volume_id, now
            ),
        )
        # One member's refusal must not stop the others' restores.
        try:
            if backup.project_id != cloud.service.current_project_id:
                # A new volume is created in the project of the connection.
                progress.conn = cloud.for_project(backup.project_id)
            answer = cloud.call(
                progress.conn.block_storage.restore_backup,
                backup.id,
                volume=None,
                name=progress.volume_name,
                idempotent=False,
            )
        except Exception as exc:
            progress.status, progress.volume_name = "error", ""
            progress.error = f"restore of backup {backup.id} refused: {exc}"
            return progress
        progress.volume_id = answer.volume_id
        return progress

    def _volume_name(self, volume_id: str) -> str:
        """The source volume's name; empty if it is gone or unnamed."""
        cloud = self.parts().cloud
        try:
            volume = cloud.call(
                cloud.service.block_storage.get_volume, volume_id
            )
        except sdk_exceptions.NotFoundException:
            return ""
        return volume.name or ""

    def _wait_all(
        self, progress: list[_Progress], started: float, deadline: float
    ) -> None:
        """Poll every restore under way until each is over or time is up."""

        def all_over() -> bool | None:
            for item in progress:
                if item.status == "restoring":
                    self._poll(item, started)
            return not any(p.status == "restoring" for p in progress) or None

        try:
            waiting.poll(
                all_over,
                timeout=max(0.0, deadline - time.monotonic()),
                interval=self.parts().conf.poll_interval,
                what="the restores",
            )
        except TimeoutError:
            for item in progress:
                if item.status == "restoring":
                    item.status = "timeout"
                    item.error = (
                        f"{item.seen}; gave up waiting (see --timeout)"
                    )

    def _poll(self, item: _Progress, started: float) -> None:
        cloud = self.parts().cloud
        storage = item.conn.block_storage
        backup_id = item.member.backup.id
        # A failure to look is this member's failure, not everyone's.
        try:
            volume = cloud.call(storage.get_volume, item.volume_id)
            backup = cloud.call(storage.get_backup, backup_id)
        except Exception as exc:
            item.status = "error"
            item.error = (
                f"lost track of the restore of backup {backup_id} into "
                f"volume {item.volume_id}: {exc}"
            )
            return
        item.volume_name = volume.name or ""
        item.size = volume.size
        item.seen = (
            f"volume {volume.id} {volume.status}, backup {backup_id} "
            f"{backup.status}"
        )
        failure = restore.restore_failure(
            volume.id, volume.status, backup_id, backup.status
        )
        if failure:
            item.status, item.error = "error", failure
        elif restore.restore_finished(volume.status, backup.status):
            item.status = "ok"
            item.seconds = round(time.monotonic() - started, 1)
            try:
                item.opt_in = self._strip_opt_in(
                    item.conn, item.volume_id, keep=self._keep_opt_in
                )
            except Exception as exc:  # restored all the same: say so
                item.status = "error"
                item.error = (
                    f"volume {item.volume_id} restored, but its copied "
                    f"opt-in could not be removed: {exc}"
                )
