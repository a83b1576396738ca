"""Whether a restore may go ahead: pure checks on plain facts, no I/O.

Restoring over the wrong volume is the classic backup disaster, so a
restore over an existing volume is refused unless the target is detached
and ``available``, is large enough, belongs to the backup's project, and
the operator confirmed after being told which volume would be lost.

A server's restore point (the backups one freeze covered, marked with
one ``cinderbak:group``) is restored whole or not at all: volumes from
different points in time are what the freeze was there to avoid.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence

from cinderbak import tenant
from cinderbak.escape import escape

# Statuses a volume being restored into ends in when the restore failed.
VOLUME_FAILURES = frozenset({"error", "error_restoring"})


@dataclasses.dataclass(frozen=True)
class BackupFacts:
    id: str
    project_id: str
    size: int  # GiB
    status: str
    name: str = ""


@dataclasses.dataclass(frozen=True)
class VolumeFacts:
    id: str
    name: str
    project_id: str
    size: int  # GiB
    status: str
    # Server ids the volume is attached to.
    attachments: Sequence[str] = ()

    def label(self) -> str:
        """'volume ID (name) in project P', as every message says it."""
        # The name is the tenant's: escaped, it cannot rewrite the
        # operator's terminal in the confirmation it is shown in.
        named = f" ({escape(self.name)})" if self.name else ""
        return f"volume {self.id}{named} in project {self.project_id}"


def refusals(
    backup: BackupFacts,
    target: VolumeFacts | None = None,
    *,
    confirmed: bool = False,
) -> list[str]:
    """Return why the restore must not go ahead (empty: it may).

    ``target`` is the volume to overwrite, None for a new volume;
    ``confirmed`` is the operator's ``--yes``.
    """
    reasons = []
    if backup.status != "available":
        reasons.append(
            f"backup {backup.id} in project {backup.project_id} is "
            f"{backup.status}: only an available backup can be restored"
        )
    if target is None:
        return reasons
    what = target.label()
    if target.attachments:
        servers = ", ".join(target.attachments)
        reasons.append(
            f"{what} is {target.status}, attached to server {servers}: "
            "detach it first"
        )
    elif target.status != "available":
        reasons.append(
            f"{what} is {target.status}: it must be available (and "
            "detached) to be restored over"
        )
    if target.size < backup.size:
        reasons.append(
            f"{what} is {target.size} GiB, smaller than the "
            f"{backup.size} GiB of backup {backup.id}: extend it or "
            "restore to a new volume"
        )
    if target.project_id != backup.project_id:
        reasons.append(
            f"{what} does not belong to project {backup.project_id} of "
            f"backup {backup.id}: restore into a volume of that project"
        )
    if not reasons and not confirmed:
        reasons.append(
            f"restoring backup {backup.id} would overwrite {what}, "
            "destroying its data: re-run with --yes to confirm"
        )
    return reasons


def new_volume_name(backup: BackupFacts, now: datetime.datetime) -> str:
    """Name a restored volume after its backup and the time of restore."""
    return restored_name(backup.name or backup.id, now)


def restored_name(source: str, now: datetime.datetime) -> str:
    """Name a restored volume after ``source`` and the time of restore.

    A restore point's volumes share ``now``, so their names show they
    were restored together.
    """
    return f"{source}-restored-{now:%Y%m%d%H%M%S}"


@dataclasses.dataclass(frozen=True)
class GroupMember:
    """One backup marked as part of a restore point, marks as found."""

    backup: BackupFacts
    volume_id: str
    # The marks as written, not yet trusted: checked by group_refusals.
    group_size: str
    run: str
    created_at: datetime.datetime | None = None

    def label(self) -> str:
        return f"backup {self.backup.id} of volume {self.volume_id}"


# Without a journal record, the backups of one freeze must also have
# been created close together: they are requested in one run.
MAX_SPREAD = datetime.timedelta(hours=6)


def group_refusals(
    group_id: str,
    members: Sequence[GroupMember],
    recorded: Mapping[str, str | None] | None = None,
    *,
    max_spread: datetime.timedelta = MAX_SPREAD,
) -> list[str]:
    """Return why restore point ``group_id`` must not be restored (empty:
    it may), given every backup of ours that carries its mark.

    ``recorded`` is what the journal holds of the freeze (volume ->
    backup it made, see Journal.restore_point): then membership and
    size come from it, and a backup merely carrying the mark is refused
    as forged. Without it (journal lost) the marks decide, cross-checked:
    the members must agree on size and run, and have been created within
    ``max_spread`` of each other.
    """
    where = f"group {group_id}"
    if not members:
        return [
            f"{where}: no backup of this deployment carries "
            f"{tenant.GROUP}={group_id}"
        ]
    members = sorted(members, key=lambda m: (m.volume_id, m.backup.id))
    if recorded is not None:
        reasons = _disagreements(where, members, marks=False)
        reasons += _recorded_refusals(where, members, recorded)
    else:
        reasons = [
            *_disagreements(where, members),
            *_count_refusals(where, members),
            *_spread_refusals(where, members, max_spread),
        ]
    for member in members:
        backup = member.backup
        if backup.status != "available":
            reasons.append(
                f"{where}: {member.label()} in project {backup.project_id} "
                f"is {backup.status}: only an available backup can be "
                "restored"
            )
    return reasons


def _recorded_refusals(
    where: str,
    members: Sequence[GroupMember],
    recorded: Mapping[str, str | None],
) -> list[str]:
    """Exactly the backups the journal says the freeze made, no other."""
    made = {b for b in recorded.values() if b}
    found = {m.backup.id for m in members}
    reasons = [
        f"{where}: {m.label()} carries the group's mark, but the journal "
        f"records no such backup of this restore point (it made "
        f"{len(made)} of volumes {', '.join(sorted(recorded))}): a forged "
        "or copied mark; refused"
        for m in members
        if m.backup.id not in made
    ]
    missing = [
        f"volume {volume_id}"
        + (f" (backup {backup_id})" if backup_id else " (no backup made)")
        for volume_id, backup_id in sorted(recorded.items())
        if backup_id not in found
    ]
    if missing:
        reasons.append(
            f"{where} is incomplete: the journal records {len(recorded)} "
            f"volumes in its freeze, missing {', '.join(missing)}; the "
            "others were deleted or never finished. A restore point is "
            "restored whole; restore single backups with 'cinderbak "
            "restore BACKUP' if a partial restore is really wanted"
        )
    return reasons


def _spread_refusals(
    where: str, members: Sequence[GroupMember], max_spread: datetime.timedelta
) -> list[str]:
    """Members of one freeze were created in one run, close together."""
    times = [m.created_at for m in members if m.created_at is not None]
    if len(times) < 2 or max(times) - min(times) <= max_spread:
        return []
    said = ", ".join(
        f"{m.label()} at {m.created_at:%Y-%m-%dT%H:%M:%SZ}"
        for m in members
        if m.created_at is not None
    )
    return [
        f"{where}: backups were created {max(times) - min(times)} apart "
        f"({said}), more than the {max_spread} one run takes: the journal "
        "has no record of this restore point and the marks do not agree"
    ]


def _disagreements(
    where: str, members: Sequence[GroupMember], *, marks: bool = True
) -> list[str]:
    """The marks every member of one freeze must share, and why (only
    the project when the journal, not the marks, says who belongs)."""
    checks: list[tuple[str, Callable[[GroupMember], str], str]] = [
        (tenant.GROUP_SIZE, lambda m: m.group_size, "not one restore point"),
        (tenant.RUN, lambda m: m.run, "not one restore point"),
        (
            "project",
            lambda m: m.backup.project_id,
            "a server's volumes belong to one project, so these are not "
            "one restore point",
        ),
    ]
    if not marks:
        checks = checks[2:]
    reasons = []
    for what, value_of, why in checks:
        if len({value_of(m) for m in members}) > 1:
            said = ", ".join(
                f"{m.label()} says {escape(value_of(m) or '(nothing)')}"
                for m in members
            )
            reasons.append(
                f"{where}: backups disagree on {what} ({said}): {why}"
            )
    return reasons


def _count_refusals(where: str, members: Sequence[GroupMember]) -> list[str]:
    """Whether exactly the backups the freeze covered are present."""
    present = ", ".join(m.label() for m in members)
    sizes = {m.group_size for m in members}
    if len(sizes) > 1:
        return []  # already refused as a disagreement
    (size,) = sizes
    expected = int(size) if size.isdecimal() and int(size) > 0 else None
    if expected is None:
        said = f"{tenant.GROUP_SIZE}={size!r}" if size else "no count"
        return [
            f"{where}: {present} carry {said}, not a count of volumes: "
            "cannot tell whether the restore point is complete"
        ]
    reasons = []
    if len(members) < expected:
        reasons.append(
            f"{where} is incomplete: found {len(members)} of {expected} "
            f"backups ({present}); the others were deleted or never "
            "finished. A restore point is restored whole; restore single "
            "backups with 'cinderbak restore BACKUP' if a partial restore "
            "is really wanted"
        )
    elif len(members) > expected:
        reasons.append(
            f"{where}: found {len(members)} backups ({present}), more than "
            f"the {expected} its freeze covered: not one restore point"
        )
    return reasons + _repeated_volumes(where, members)


def _repeated_volumes(where: str, members: Sequence[GroupMember]) -> list[str]:
    """One freeze copies each volume once; two copies are two points."""
    reasons = []
    volumes = [m.volume_id for m in members]
    for volume_id in sorted({v for v in volumes if volumes.count(v) > 1}):
        ids = ", ".join(
            m.backup.id for m in members if m.volume_id == volume_id
        )
        reasons.append(
            f"{where}: volume {volume_id} has several backups ({ids}): "
            "not one restore point"
        )
    return reasons


def restore_failure(
    volume_id: str, volume_status: str, backup_id: str, backup_status: str
) -> str | None:
    """Return why a restore in progress failed, or None if it has not."""
    if volume_status in VOLUME_FAILURES:
        return f"volume {volume_id} went to {volume_status} during the restore"
    if backup_status == "error":
        return f"backup {backup_id} went to error during the restore"
    return None


def restore_finished(volume_status: str, backup_status: str) -> bool:
    """Whether a restore is over: Cinder releases the backup last."""
    return volume_status == "available" and backup_status == "available"


def opt_in_keys(metadata: Mapping[str, str]) -> list[str]:
    """Given a restored volume's metadata, return the keys of ours to
    strip from it (any spelling): Cinder copies the source volume's
    metadata onto the new volume, and a restore nobody opted in must not
    be backed up, nor show the source's last status."""
    return sorted(
        key
        for key in metadata
        if tenant.canonical_key(key) in tenant.VOLUME_KEYS
    )


def opt_in_note(keys: Sequence[str], *, kept: bool) -> str:
    """What the restore did with the copied keys, for its output."""
    if not keys:
        return "none copied"
    listed = ", ".join(keys)
    return f"kept {listed} (--keep-opt-in)" if kept else f"removed {listed}"
