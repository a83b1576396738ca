"""The DR catalog's storage: one RADOS object per backup on the backup
cluster, in a pool of its own.

Why there: the catalog must outlive region A (its Cinder database, its
volume cluster, the cinderbak host), and the backup cluster is the one
thing a disaster recovery needs anyway; an entry lies next to the data it
describes. The cephx key given here should be able to write only that
pool (``mon 'allow r' osd 'allow rw pool=<pool>'``), so a leaked key can
neither read nor damage a backup.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import dr_catalog
from cinderbak.dr_catalog import CatalogError, Entry

LOG = logging.getLogger(__name__)

GROUP = "dr"

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "catalog_conf",
        help="ceph.conf of the cluster that keeps the DR catalog: the "
        "backup cluster, so the catalog survives the volume cluster and "
        "region A's Cinder database. Unset: no DR catalog is written.",
    ),
    cfg.StrOpt(
        "catalog_user",
        default="cinderbak-dr",
        help="Ceph client id (without 'client.') that writes the catalog; "
        "give it only \"mon 'allow r' osd 'allow rw pool=<catalog_pool>'\".",
    ),
    cfg.StrOpt(
        "catalog_keyring",
        help="Keyring of that client; default: what ceph.conf says.",
    ),
    cfg.StrOpt(
        "catalog_pool",
        default="cinderbak-dr",
        help="RADOS pool of the DR catalog (one object per backup, "
        "named backup.<backup id>).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


class CatalogStore:
    """Read and write catalog entries; every call opens what it needs,
    so a store object can be shared by threads."""

    def __init__(
        self,
        conffile: str,
        user: str,
        pool: str,
        keyring: str | None = None,
    ) -> None:
        self._conffile = conffile
        self._user = user
        self._keyring = keyring
        self._cluster: Any = None
        self._lock = threading.Lock()
        self.pool = pool

    def _connected(self) -> Any:
        """Connect on first use: a backup cluster that does not answer
        costs a catalog write (retried by the next sweep), never the
        start of a run or of the daemon."""
        import rados  # Debian's python3-rados; only needed when configured

        with self._lock:
            if self._cluster is None:
                settings = {
                    "client_mount_timeout": "10",
                    "rados_osd_op_timeout": "30",
                }
                if self._keyring:
                    settings["keyring"] = self._keyring
                cluster = rados.Rados(
                    conffile=self._conffile, rados_id=self._user, conf=settings
                )
                cluster.connect(timeout=15)
                self._cluster = cluster
            return self._cluster

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> CatalogStore | None:
        group = conf[GROUP]
        if not group.catalog_conf:
            return None
        return cls(
            group.catalog_conf,
            group.catalog_user,
            group.catalog_pool,
            group.catalog_keyring,
        )

    def _ioctx(self) -> Any:
        return self._connected().open_ioctx(self.pool)

    def put(self, entry: Entry) -> None:
        """Write (or replace) one entry: a single write_full, atomic for
        readers, so a kill -9 leaves the old entry or the new one."""
        with self._ioctx() as ioctx:
            ioctx.write_full(
                dr_catalog.object_name(entry.backup_id), entry.to_bytes()
            )

    def remove(self, backup_id: str) -> bool:
        """Remove an entry; False when there was none."""
        import rados

        with self._ioctx() as ioctx:
            try:
                ioctx.remove_object(dr_catalog.object_name(backup_id))
            except rados.ObjectNotFound:
                return False
        return True

    def get(self, backup_id: str) -> Entry | None:
        import rados

        name = dr_catalog.object_name(backup_id)
        with self._ioctx() as ioctx:
            try:
                data = self._read(ioctx, name)
            except rados.ObjectNotFound:
                return None
        return dr_catalog.parse_entry(data, f"{self.pool}/{name}")

    @staticmethod
    def _read(ioctx: Any, name: str) -> bytes:
        size, _ = ioctx.stat(name)
        return bytes(ioctx.read(name, length=max(size, 1)))

    def entries(self) -> tuple[dict[str, Entry], list[str]]:
        """All entries by backup id, and one problem line per object that
        is not a readable entry (reported, never deleted)."""
        import rados

        found: dict[str, Entry] = {}
        problems: list[str] = []
        with self._ioctx() as ioctx:
            for obj in ioctx.list_objects():
                backup_id = dr_catalog.backup_id_of(obj.key)
                where = f"{self.pool}/{obj.key}"
                if backup_id is None:
                    problems.append(f"{where}: not a catalog entry")
                    continue
                try:
                    entry = dr_catalog.parse_entry(
                        self._read(ioctx, obj.key), where
                    )
                except rados.ObjectNotFound:
                    continue  # removed while listing
                except CatalogError as exc:
                    problems.append(str(exc))
                    continue
                except rados.Error as exc:
                    if getattr(exc, "errno", None) == errno.ENOENT:
                        continue
                    raise
                if entry.backup_id != backup_id:
                    problems.append(f"{where}: holds backup {entry.backup_id}")
                    continue
                found[backup_id] = entry
        return found, problems

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None
