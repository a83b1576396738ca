"""Whether a restore may go ahead: pure checks on plain facts, no I/O.

Restoring over the wrong volume is the classic backup disaster, so a
restore over an existing volume is refused unless the target is detached
and ``available``, is large enough, belongs to the backup's project, and
the operator confirmed after being told which volume would be lost.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence


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
        named = f" ({self.name})" if self.name else ""
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
    return f"{backup.name or backup.id}-restored-{now:%Y%m%d%H%M%S}"
