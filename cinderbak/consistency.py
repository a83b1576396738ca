"""Application consistency: which guests to freeze, and for how long.

Volumes attached to one server under one policy form a group: one freeze,
all point-in-time copies requested together, one thaw. How long the guest
stays frozen depends on the transfer mode:

* snapshot mode: until every Cinder snapshot of the group has left
  ``creating`` (the snapshot *is* the point in time);
* volume mode: until the Ceph backup driver's own source snapshot
  (``backup.<backup id>.snap.<ts>``) of every volume exists on the volume
  cluster. Cinder does not report that moment, so it is observed through
  a read-only Ceph client the operator configures.

A copy whose point in time is not known to lie inside the freeze is marked
``crash``, never ``quiesced``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak.quiesce.base import Quiescer, load_quiescer

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt(
        "quiescer",
        default="noop",
        help="Consistency driver (entry point in cinderbak.quiescers): "
        "'libvirt' freezes guests through the QEMU guest agent (see "
        "[libvirt]); 'noop' takes crash-consistent copies only.",
    ),
]

OBSERVER_OPTS = [
    cfg.StrOpt(
        "conf",
        help="ceph.conf of the cluster holding the volumes. Needed to hold "
        "a freeze in transfer_mode=volume until the backup driver's "
        "source snapshot exists; without it such backups are "
        "crash-consistent.",
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

GROUP = "consistency"
OBSERVER_GROUP = "volume_cluster"


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
    conf.register_opts(OBSERVER_OPTS, group=OBSERVER_GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS), (OBSERVER_GROUP, OBSERVER_OPTS)]


T = TypeVar("T")


def group_by(
    items: Iterable[T], key: Callable[[T], Hashable | None]
) -> list[list[T]]:
    """Given items, return groups of those sharing a key, in first-seen
    order; an item whose key is None forms a group of its own."""
    groups: dict[Hashable, list[T]] = collections.OrderedDict()
    alone: list[list[T]] = []
    for item in items:
        value = key(item)
        if value is None:
            alone.append([item])
        else:
            groups.setdefault(value, []).append(item)
    return [*groups.values(), *alone]


def load(conf: cfg.ConfigOpts) -> Quiescer:
    """Load the configured consistency driver; fail at start-up if absent."""
    return load_quiescer(conf[GROUP].quiescer, conf)


class SourceSnapshotObserver:
    """Sees, read-only, when the backup driver's snapshots appear."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        import rados  # Debian's python3-rados; only needed when configured

        group = conf[OBSERVER_GROUP]
        settings = {"client_mount_timeout": "10"}
        if group.keyring:
            settings["keyring"] = group.keyring
        self._cluster = rados.Rados(
            conffile=group.conf, rados_id=group.user, conf=settings
        )
        self._cluster.connect()
        self._pools = list(group.pools)
        self._interval = group.poll_interval

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> SourceSnapshotObserver | None:
        if not conf[OBSERVER_GROUP].conf:
            return None
        return cls(conf)

    def _snapshots(self, volume_id: str) -> list[str]:
        import rbd

        for pool in self._pools:
            with self._cluster.open_ioctx(pool) as ioctx:
                try:
                    with rbd.Image(
                        ioctx, f"volume-{volume_id}", read_only=True
                    ) as image:
                        return [snap["name"] for snap in image.list_snaps()]
                except rbd.ImageNotFound:
                    continue
        return []

    def wait_for_sources(
        self,
        backups: Sequence[tuple[str, str]],
        still_frozen: Callable[[], bool],
    ) -> set[str]:
        """Wait while the guest is frozen for each (volume, backup) pair's
        source snapshot; return the backup ids whose snapshot was seen.
        """
        pending = dict(backups)
        seen: set[str] = set()
        while pending and still_frozen():
            for volume_id, backup_id in list(pending.items()):
                prefix = f"backup.{backup_id}.snap."
                names = self._snapshots(volume_id)
                # Frozen *after* the snapshot was seen: it predates the thaw.
                if any(n.startswith(prefix) for n in names) and (
                    still_frozen()
                ):
                    seen.add(backup_id)
                    del pending[volume_id]
            if pending:
                time.sleep(self._interval)
        return seen

    def close(self) -> None:
        self._cluster.shutdown()
