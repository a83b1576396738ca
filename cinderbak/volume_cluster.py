"""A read-only view of the Ceph cluster holding Cinder's volume images.

cinderbak never writes to the volume cluster: it looks at the backup
driver's snapshots while a guest is frozen (consistency.py) and reads
images to checksum them (checksums.py). Both go through one client whose
cephx capabilities the operator restricts to reading, so a bug here cannot
damage a volume. The python ``rados``/``rbd`` bindings come from the
distribution (python3-rados, python3-rbd) and are imported only when a
cluster is configured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg

GROUP = "volume_cluster"
# Cinder's RBD driver names the image of volume <id> like this.
IMAGE_PREFIX = "volume-"

OPTS = [
    cfg.StrOpt(
        "conf",
        help="ceph.conf of the cluster holding the volumes. Needed to hold "
        "a freeze in transfer_mode=volume until the backup driver's "
        "source snapshot exists (without it such backups are "
        "crash-consistent), and to checksum and verify backups.",
    ),
    cfg.StrOpt(
        "user",
        default="cinderbak-ro",
        help="Ceph client id (without 'client.'); give it only "
        "\"mon 'profile rbd' osd 'profile rbd-read-only pool=<pool>'\".",
    ),
    cfg.StrOpt(
        "keyring",
        help="Keyring of that client; default: what ceph.conf says.",
    ),
    cfg.ListOpt(
        "pools",
        default=["volumes"],
        help="Pools where Cinder's RBD driver keeps volume images.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.2,
        min=0.05,
        help="Seconds between two looks for the driver's snapshots while "
        "a guest is frozen.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def image_name(volume_id: str) -> str:
    return IMAGE_PREFIX + volume_id


class VolumeCluster:
    """One read-only connection to the volume cluster, shared by the
    parts that look at volume images."""

    def __init__(
        self,
        conffile: str,
        user: str,
        pools: list[str],
        keyring: str | None = None,
    ) -> None:
        import rados  # Debian's python3-rados; only needed when configured

        settings = {"client_mount_timeout": "10"}
        if keyring:
            settings["keyring"] = keyring
        self._cluster = rados.Rados(
            conffile=conffile, rados_id=user, conf=settings
        )
        self._cluster.connect()
        self.pools = list(pools)
        self.conffile = conffile
        self.user = user
        self.keyring = keyring

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> VolumeCluster | None:
        """Connect as ``[volume_cluster]`` says; None when not configured."""
        group = conf[GROUP]
        if not group.conf:
            return None
        return cls(group.conf, group.user, group.pools, group.keyring)

    @contextlib.contextmanager
    def open_image(
        self, volume_id: str, snapshot: str | None = None
    ) -> Iterator[Any]:
        """Yield the ``rbd.Image`` of a Cinder volume (at ``snapshot`` if
        given), opened read-only, from the first pool that has it.

        Raise LookupError when no configured pool has the image or the
        snapshot.
        """
        with self.open_named(image_name(volume_id), snapshot) as image:
            yield image

    @contextlib.contextmanager
    def open_named(
        self, name: str, snapshot: str | None = None
    ) -> Iterator[Any]:
        """Like open_image, for an image given by its RBD name."""
        import rbd

        for pool in self.pools:
            with self._cluster.open_ioctx(pool) as ioctx:
                try:
                    image = rbd.Image(
                        ioctx, name, snapshot=snapshot, read_only=True
                    )
                except rbd.ImageNotFound:
                    continue
                try:
                    yield image
                finally:
                    image.close()
                return
        where = f"{name}@{snapshot}" if snapshot else name
        raise LookupError(
            f"no image {where} in pool(s) {', '.join(self.pools)}"
        )

    def pool_of(self, name: str) -> str | None:
        """The first configured pool holding image ``name``, or None."""
        import rbd

        for pool in self.pools:
            with self._cluster.open_ioctx(pool) as ioctx:
                if name in rbd.RBD().list(ioctx):
                    return pool
        return None

    def snapshots(self, volume_id: str) -> list[str]:
        """Return the RBD snapshot names of a volume's image; [] when the
        image is in none of the pools (not an RBD volume, or deleted)."""
        try:
            with self.open_image(volume_id) as image:
                return [snap["name"] for snap in image.list_snaps()]
        except LookupError:
            return []

    def close(self) -> None:
        self._cluster.shutdown()
