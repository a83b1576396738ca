"""Checksums of images on the volume cluster, read-only.

At backup time the source of a backup is checksummed while it still
exists: in volume mode the Ceph backup driver's own snapshot
(``backup.<backup id>.snap.<ts>``, kept until the next backup of the
volume), in snapshot mode our temporary Cinder snapshot
(``snapshot-<id>``). Verification later checksums the restored volume the
same way and compares.
"""

from __future__ import annotations

import dataclasses
from typing import IO, Any

from cinderbak import imagedigest
from cinderbak.verification import SourceChecksum
from cinderbak.volume_cluster import VolumeCluster

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Checksummed:
    """A checksum and what it cost."""

    checksum: SourceChecksum
    source: str  # image@snapshot it was read from
    bytes_read: int
    seconds: float

    def details(self) -> dict[str, Any]:
        """What the journal keeps of it."""
        return {
            "algorithm": self.checksum.algorithm,
            "size": self.checksum.size,
            "hexdigest": self.checksum.hexdigest,
            "source": self.source,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }

    def rate(self) -> str:
        """'1024 MiB (12 MiB read) in 1.3 s, 790 MiB/s' for the log."""
        size = self.checksum.size / MIB
        per_second = size / self.seconds if self.seconds else 0.0
        return (
            f"{size:.0f} MiB ({self.bytes_read / MIB:.0f} MiB read) in "
            f"{self.seconds:.1f} s, {per_second:.0f} MiB/s"
        )


def driver_snapshot(names: list[str], backup_id: str) -> str | None:
    """Given a volume's snapshot names, return the Ceph backup driver's
    source snapshot of ``backup_id``, if it is still there."""
    prefix = f"backup.{backup_id}.snap."
    found = sorted(n for n in names if n.startswith(prefix))
    return found[-1] if found else None


class SourceChecksummer:
    """Checksums volume images and their snapshots on the volume cluster."""

    def __init__(self, cluster: VolumeCluster) -> None:
        self.cluster = cluster

    def of_backup_source(
        self, volume_id: str, backup_id: str, snapshot_id: str | None
    ) -> Checksummed:
        """Checksum what backup ``backup_id`` of the volume copied.

        Raise LookupError when the source is gone (e.g. a newer backup of
        the volume already replaced the driver's snapshot).
        """
        snapshot: str | None
        if snapshot_id:
            snapshot = f"snapshot-{snapshot_id}"
        else:
            snapshot = driver_snapshot(
                self.cluster.snapshots(volume_id), backup_id
            )
            if snapshot is None:
                raise LookupError(
                    f"volume {volume_id}: the backup driver's source "
                    f"snapshot backup.{backup_id}.snap.* is gone"
                )
        return self.of_volume(volume_id, snapshot=snapshot)

    def of_volume(
        self,
        volume_id: str,
        *,
        snapshot: str | None = None,
        size: int | None = None,
        sink: IO[bytes] | None = None,
    ) -> Checksummed:
        """Checksum the first ``size`` bytes (default: all) of a volume's
        image or snapshot; with ``sink``, also write a sparse raw copy."""
        with self.cluster.open_image(volume_id, snapshot=snapshot) as image:
            digest = imagedigest.digest_image(image, size=size, sink=sink)
        source = f"volume-{volume_id}" + (f"@{snapshot}" if snapshot else "")
        return Checksummed(
            SourceChecksum(digest.algorithm, digest.size, digest.hexdigest),
            source,
            digest.bytes_read,
            digest.seconds,
        )
