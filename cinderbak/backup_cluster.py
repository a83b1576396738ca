"""A read-only view of the Ceph cluster holding Cinder's Ceph backups.

Cinder's Ceph backup driver keeps a backup of volume V as an RBD image on
the backup cluster: a chain's base image ``volume-V.backup.<first backup
id>`` (``volume-V.backup.base`` for a backup taken from a snapshot) with
one snapshot per backup, ``backup.<backup id>.snap.<timestamp>``, or, for
a full copy of a non-RBD source, an image ``volume-V.backup.<backup id>``
of its own. ``cinderbak files`` reads a backup there instead of restoring
it. The client is restricted by its cephx capabilities to reading
(``osd 'profile rbd-read-only pool=<pool>'``), so nothing here can change a
backup; images are opened read-only as well.
"""

from __future__ import annotations

from collections.abc import Mapping

from oslo_config import cfg

from cinderbak.volume_cluster import VolumeCluster

GROUP = "backup_cluster"

OPTS = [
    cfg.StrOpt(
        "conf",
        help="ceph.conf of the cluster where Cinder's Ceph backup driver "
        "keeps backups. Lets 'cinderbak files' read a backup where it lies "
        "instead of restoring it to a scratch volume first.",
    ),
    cfg.StrOpt(
        "user",
        default="cinderbak-backup-ro",
        help="Ceph client id (without 'client.'); give it only "
        "\"mon 'profile rbd' osd 'profile rbd-read-only pool=<pool>'\".",
    ),
    cfg.StrOpt(
        "keyring",
        help="Keyring of that client; default: what ceph.conf says. Read "
        "by librados only: the key is never put on a command line.",
    ),
    cfg.ListOpt(
        "pools",
        default=["backups"],
        help="Pools where Cinder's Ceph backup driver keeps backups "
        "(backup_ceph_pool).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def image_prefix(volume_id: str) -> str:
    return f"volume-{volume_id}.backup."


def find_backup_image(
    images: Mapping[str, list[str]], volume_id: str, backup_id: str
) -> tuple[str, str | None] | None:
    """Where the Ceph backup driver keeps ``backup_id`` of ``volume_id``:
    (image, snapshot) given {image name: its snapshot names} of a pool, or
    None when it is not there. The snapshot is None for a backup stored as
    an image of its own."""
    prefix = image_prefix(volume_id)
    snap_prefix = f"backup.{backup_id}.snap."
    for image in sorted(images):
        if not image.startswith(prefix):
            continue
        for snap in sorted(images[image]):
            if snap.startswith(snap_prefix):
                return image, snap
    own = prefix + backup_id
    if own in images and not images[own]:
        return own, None
    return None


class BackupCluster(VolumeCluster):
    """One read-only connection to the backup cluster."""

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> BackupCluster | None:
        """Connect as ``[backup_cluster]`` says; None when not configured."""
        group = conf[GROUP]
        if not group.conf:
            return None
        return cls(group.conf, group.user, group.pools, group.keyring)

    def locate(
        self, volume_id: str, backup_id: str
    ) -> tuple[str, str, str | None] | None:
        """(pool, image, snapshot) of a backup, or None when no configured
        pool holds it (another driver, or deleted)."""
        import rbd

        prefix = image_prefix(volume_id)
        for pool in self.pools:
            with self._cluster.open_ioctx(pool) as ioctx:
                images: dict[str, list[str]] = {}
                for name in rbd.RBD().list(ioctx):
                    if not name.startswith(prefix):
                        continue
                    try:
                        with rbd.Image(ioctx, name, read_only=True) as image:
                            images[name] = [
                                s["name"] for s in image.list_snaps()
                            ]
                    except rbd.ImageNotFound:
                        continue
            found = find_backup_image(images, volume_id, backup_id)
            if found:
                return pool, *found
        return None
