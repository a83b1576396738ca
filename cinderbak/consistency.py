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

from cinderbak import volume_cluster
from cinderbak.quiesce.base import Quiescer, load_quiescer
from cinderbak.volume_cluster import VolumeCluster

LOG = logging.getLogger(__name__)

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "quiescer",
        default="noop",
        help="Consistency driver (entry point in cinderbak.quiescers): "
        "'libvirt' freezes guests through the QEMU guest agent (see "
        "[libvirt]); 'noop' takes crash-consistent copies only.",
    ),
]

GROUP = "consistency"
# The observer's options live with the connection, in volume_cluster.py.
OBSERVER_GROUP = volume_cluster.GROUP


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
    volume_cluster.register_opts(conf)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


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

    def __init__(
        self,
        cluster: VolumeCluster,
        poll_interval: float,
        *,
        owns_cluster: bool = True,
    ) -> None:
        self._cluster = cluster
        self._interval = poll_interval
        self._owns_cluster = owns_cluster

    @classmethod
    def from_conf(
        cls, conf: cfg.ConfigOpts, cluster: VolumeCluster | None = None
    ) -> SourceSnapshotObserver | None:
        """Build the observer ``[volume_cluster]`` asks for; None when it
        is not configured. Given a ``cluster``, share it (the caller
        closes it) instead of opening a connection of its own."""
        if cluster is not None:
            return cls(
                cluster,
                conf[OBSERVER_GROUP].poll_interval,
                owns_cluster=False,
            )
        own = VolumeCluster.from_conf(conf)
        if own is None:
            return None
        return cls(own, conf[OBSERVER_GROUP].poll_interval)

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
                names = self._cluster.snapshots(volume_id)
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
        if self._owns_cluster:
            self._cluster.close()
