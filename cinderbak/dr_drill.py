"""The DR drill: prove, on a schedule, that the catalog restores elsewhere.

A drill takes a sample of the DR catalog (the newest restore point, a
server group's backups when it has one), imports it into the DR region
(idempotently: what an earlier drill imported is skipped), restores each
backup there into a new volume of the backup's own project, checksums
the restored image on the DR region's volume cluster and compares it with
the checksum taken of the source at backup time, deletes the volumes it
made, and records the verdict and the recovery time per GiB in the
journal as a run of its own (policy ``dr-drill:``, target ``*``).

What it makes it deletes, and only that: volumes named
``cinderbak-drill-<backup id>``, also those an interrupted drill left. The
imported backup records stay: deleting one in the DR region would make
its Ceph driver delete the data on the backup cluster too.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from typing import Any

from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import (
    answers,
    dr_catalog,
    dr_import,
    verification,
    waiting,
)
from cinderbak.checksums import SourceChecksummer
from cinderbak.dr_catalog import Entry, Outcome
from cinderbak.dr_store import CatalogStore
from cinderbak.journal import Journal, states
from cinderbak.volume_cluster import VolumeCluster
from cinderbak.workflow import POLICY_TARGET

LOG = logging.getLogger(__name__)

GROUP = "dr"
RUN_PREFIX = "dr-drill:"
VOLUME_PREFIX = "cinderbak-drill-"

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "drill_cloud",
        help="clouds.yaml entry of the DR region that 'cinderbak dr "
        "drill' imports into and restores in. Its user needs the admin "
        "role in the projects of the backups: Cinder's import is "
        "admin-only and gives the backup the project of the token.",
    ),
    cfg.IntOpt(
        "drill_sample",
        default=2,
        min=1,
        help="Volumes restored per drill: the newest restore point (all "
        "of its server group), then the newest backups of other volumes.",
    ),
    cfg.IntOpt(
        "drill_interval",
        default=0,
        min=0,
        help="Seconds between two drills run by the daemon; 0: never "
        "(run 'cinderbak dr drill' instead).",
    ),
    cfg.IntOpt(
        "drill_timeout",
        default=3600,
        min=60,
        help="Seconds one import or restore of a drill may take.",
    ),
    cfg.StrOpt(
        "drill_volume_conf",
        help="ceph.conf of the DR region's volume cluster, where the "
        "drill checksums what it restored. Unset: restores are timed "
        "but not compared.",
    ),
    cfg.StrOpt(
        "drill_volume_user",
        default="cinderbak-dr-ro",
        help="Ceph client id there; give it only \"mon 'profile rbd' "
        "osd 'profile rbd-read-only pool=<pool>'\".",
    ),
    cfg.StrOpt("drill_volume_keyring", help="Keyring of that client."),
    cfg.ListOpt(
        "drill_volume_pools",
        default=["dr-volumes"],
        help="Pools of the DR region's volumes (its rbd_pool).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


class DrillError(RuntimeError):
    """The drill cannot start (configuration, empty catalog)."""


@dataclasses.dataclass
class DrillRow:
    backup_id: str
    volume_id: str
    project_id: str
    imported: str
    import_seconds: float | None = None
    restore_seconds: float | None = None
    restore_mib_s: float | None = None
    size_gb: int = 0
    content: str = verification.Content.NOT_READ.value
    error: str = ""

    COLUMNS = (
        "backup_id",
        "volume_id",
        "project_id",
        "imported",
        "import_seconds",
        "restore_seconds",
        "restore_mib_s",
        "size_gb",
        "content",
        "error",
    )

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, c) for c in self.COLUMNS)


def scheduled(parts: Any, stop: threading.Event) -> None:
    """The daemon's drill job ([dr] drill_interval): never raises."""
    try:
        Drill(parts.conf, parts.journal, parts.dr_catalog, stop).run(
            datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        )
    except Exception:  # noqa: BLE001 - the next interval tries again
        LOG.exception("DR drill failed; tried again at the next interval")


def verdict(rows: list[DrillRow]) -> str:
    """ok: every sampled backup restored and matched its checksum;
    warning: restored, but some had no checksum to compare; failed
    otherwise."""
    if not rows or any(
        r.error or r.content == verification.Content.MISMATCH for r in rows
    ):
        return verification.Result.FAILED.value
    if any(r.content != verification.Content.MATCH for r in rows):
        return verification.Result.WARNING.value
    return verification.Result.OK.value


class Drill:
    """One drill. Needs the catalog, the journal and the DR region, not
    region A: a drill is as useful during region A's outage as before."""

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        journal: Journal,
        store: CatalogStore | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.conf = conf
        self.journal = journal
        self.stop = stop or threading.Event()
        if store is None:
            raise DrillError("no DR catalog: set [dr] catalog_conf")
        self.store = store
        if not self.conf.dr.drill_cloud:
            raise DrillError("no DR region: set [dr] drill_cloud")

    def _cluster(self) -> VolumeCluster | None:
        d = self.conf.dr
        if not d.drill_volume_conf:
            return None
        return VolumeCluster(
            d.drill_volume_conf,
            d.drill_volume_user,
            d.drill_volume_pools,
            d.drill_volume_keyring,
        )

    def run(
        self, now: datetime.datetime
    ) -> tuple[str, dict[str, Any], list[DrillRow]]:
        """Drill once; return (verdict, summary, rows)."""
        journal = self.journal
        for record in journal.unfinished_runs():
            if record.policy.startswith(RUN_PREFIX):
                journal.finish_run(
                    record.id, states.FAILED, {"error": "interrupted"}
                )
        entries, problems = self.store.entries()
        for problem in problems:
            LOG.warning("DR catalog: %s", problem)
        sample = dr_catalog.drill_sample(
            entries.values(), self.conf.dr.drill_sample
        )
        if not sample:
            raise DrillError("the DR catalog is empty: nothing to drill")
        needed = dr_catalog.with_parents(entries, sample)
        handle = journal.begin_run(
            RUN_PREFIX + self.conf.dr.drill_cloud,
            POLICY_TARGET,
            now,
            project_id=None,
            attrs={"sample": [e.backup_id for e in sample]},
        )
        journal.start_run(handle.id)
        dr = dr_import.DrCloud(
            self.conf.dr.drill_cloud, api_timeout=self.conf.cloud.api_timeout
        )
        cluster = None
        rows: list[DrillRow] = []
        started = time.monotonic()
        try:
            cluster = self._cluster()
            self._delete_leftovers(dr, {e.project_id for e in sample})
            imported = {
                r.backup_id: r
                for r in dr_import.import_entries(
                    dr, needed, timeout=self.conf.dr.drill_timeout
                )
            }
            for entry in sample:
                rows.append(self._restore(dr, entry, imported, cluster))
        finally:
            if cluster is not None:
                cluster.close()
            dr.close()
        seconds = time.monotonic() - started
        gib = sum(r.size_gb for r in rows)
        result = verdict(rows)
        summary = {
            "verdict": result,
            "region": self.conf.dr.drill_cloud,
            "backups": len(rows),
            "gib": gib,
            "seconds": round(seconds, 1),
            "rto_seconds_per_gib": dr_catalog.rto_seconds_per_gib(
                seconds, gib
            ),
            "rows": [dataclasses.asdict(r) for r in rows],
        }
        journal.finish_run(
            handle.id,
            states.SUCCEEDED if result != "failed" else states.FAILED,
            summary,
        )
        LOG.info(
            "DR drill: %s, %d backups, %d GiB in %.1f s (%s s/GiB)",
            result,
            len(rows),
            gib,
            seconds,
            summary["rto_seconds_per_gib"],
        )
        return result, summary, rows

    def _delete_leftovers(
        self, dr: dr_import.DrCloud, projects: set[str]
    ) -> None:
        for project in projects:
            conn = dr.for_project(project)
            if isinstance(conn, str):
                continue
            for volume in conn.block_storage.volumes():
                if (volume.name or "").startswith(VOLUME_PREFIX):
                    self._delete_volume(conn, volume.id)

    def _delete_volume(self, conn: Any, volume_id: str) -> None:
        storage = conn.block_storage
        try:
            volume = storage.get_volume(volume_id)
            if volume.status not in ("available", "error"):
                waiting.poll(
                    lambda: (
                        storage.get_volume(volume_id).status
                        in ("available", "error")
                        or None
                    ),
                    timeout=self.conf.dr.drill_timeout,
                    interval=1.0,
                    what=f"DR volume {volume_id} to settle",
                    stop=self.stop,
                )
            storage.delete_volume(volume_id)
            storage.wait_for_delete(volume, interval=1, wait=300)
        except sdk_exceptions.NotFoundException:
            return

    def _restore(
        self,
        dr: dr_import.DrCloud,
        entry: Entry,
        imported: dict[str, dr_catalog.ImportRow],
        cluster: VolumeCluster | None,
    ) -> DrillRow:
        result = imported[entry.backup_id]
        row = DrillRow(
            entry.backup_id,
            "",
            entry.project_id,
            result.result,
            result.seconds,
            size_gb=entry.size_gb,
        )
        if result.result == Outcome.REFUSED:
            row.error = f"import refused: {result.reason}"
            return row
        conn = dr.for_project(entry.project_id)
        assert not isinstance(conn, str)
        storage = conn.block_storage
        started = time.monotonic()
        try:
            response = storage.post(
                f"/backups/{entry.backup_id}/restore",
                json={"restore": {"name": VOLUME_PREFIX + entry.backup_id}},
            )
            restore = answers.decoded(response)["restore"]
            row.volume_id = restore["volume_id"]

            def restored() -> bool | None:
                volume = storage.get_volume(row.volume_id)
                if volume.status == "error":
                    raise RuntimeError(
                        f"DR volume {row.volume_id} went to error"
                    )
                backup = storage.get_backup(entry.backup_id)
                return (
                    volume.status == "available"
                    and backup.status == "available"
                ) or None

            waiting.poll(
                restored,
                timeout=self.conf.dr.drill_timeout,
                interval=1.0,
                what=f"restore of {entry.backup_id}",
                stop=self.stop,
            )
            row.restore_seconds = round(time.monotonic() - started, 2)
            row.restore_mib_s = round(
                entry.size_gb * 1024 / max(row.restore_seconds, 0.01), 1
            )
            row.content = self._compare(entry, row.volume_id, cluster)
        except Exception as exc:  # noqa: BLE001 - reported in the verdict
            row.error = " ".join(str(exc).split())[:300]
        finally:
            if row.volume_id:
                try:
                    self._delete_volume(conn, row.volume_id)
                except Exception as exc:  # noqa: BLE001 - next drill
                    LOG.warning(
                        "DR drill: volume %s not deleted (%s); the next "
                        "drill deletes it",
                        row.volume_id,
                        exc,
                    )
        return row

    @staticmethod
    def _compare(
        entry: Entry, volume_id: str, cluster: VolumeCluster | None
    ) -> str:
        expected = verification.parse_checksum(entry.checksum)
        if expected is None:
            return verification.Content.NO_CHECKSUM.value
        if cluster is None:
            return verification.Content.NOT_READ.value
        found = SourceChecksummer(cluster).of_volume(
            volume_id, size=expected.size
        )
        same = (
            found.checksum.algorithm == expected.algorithm
            and found.checksum.hexdigest == expected.hexdigest
        )
        return (
            verification.Content.MATCH
            if same
            else verification.Content.MISMATCH
        ).value
