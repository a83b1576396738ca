"""What a journal step does: its kind, and the details the journal reads.

Kinds are stored as plain strings; :class:`StepKind` refuses a typo at
the call instead of leaving a step no recovery query recognises.
"""

from __future__ import annotations

import enum


class StepKind(enum.StrEnum):
    """The side effects a run records, each before it acts."""

    FREEZE = "freeze"
    """fsFreeze of a server's guest; target is the server uuid."""

    THAW = "thaw"
    """fsThaw of a server's guest; settles the freeze before it."""

    SNAPSHOT_CREATE = "snapshot_create"
    """A temporary Cinder snapshot, the source of a backup."""

    SNAPSHOT_DELETE = "snapshot_delete"
    """Removal of a temporary snapshot (cleanup, or a leak found)."""

    BACKUP_CREATE = "backup_create"
    """A Cinder backup; resource_id is the backup id once returned."""

    BACKUP_DELETE = "backup_delete"
    """Expiry of a backup."""

    METADATA_WRITE = "metadata_write"
    """Status written back into a volume's metadata for its tenant."""

    CHECKSUM = "checksum"
    """A checksum of a backup's source image, taken on the volume cluster
    when the backup was done; resource_id is the backup id."""

    SCRATCH_CREATE = "scratch_create"
    """A scratch volume a backup is restored into to verify it;
    resource_id is the scratch volume's id. Open: recovery deletes it."""

    SCRATCH_DELETE = "scratch_delete"
    """Removal of a verification's scratch volume."""

    DISCOVER = "discover"
    """A slot's discovery (on the policy-level run): details count the
    volumes found, so a slot is settled as succeeded only when every one
    of them has an outcome."""


FREEZE = StepKind.FREEZE
THAW = StepKind.THAW
SNAPSHOT_CREATE = StepKind.SNAPSHOT_CREATE
SNAPSHOT_DELETE = StepKind.SNAPSHOT_DELETE
BACKUP_CREATE = StepKind.BACKUP_CREATE
BACKUP_DELETE = StepKind.BACKUP_DELETE
METADATA_WRITE = StepKind.METADATA_WRITE
CHECKSUM = StepKind.CHECKSUM
SCRATCH_CREATE = StepKind.SCRATCH_CREATE
SCRATCH_DELETE = StepKind.SCRATCH_DELETE
DISCOVER = StepKind.DISCOVER

EXPECTED_PARENT = "expected_parent"
"""Key of a ``backup_create`` step's details: the backup cinderbak
expected Cinder to use as the incremental parent (None for a full).
Cinder picks the parent itself (the newest available backup of the volume
in the project), so keeping what we expected lets a check spot a chain
that went elsewhere."""
