"""Keeping the DR catalog in step with region A's backups.

Two ways in, both idempotent, so a kill -9 at any point costs nothing:
:func:`record` writes the entries of the backups a run just made
(best effort, right after the run), and :func:`reconcile`, called by the
sweep, writes every missing or stale entry and removes the entries of
backups we deleted. :func:`forget` removes entries as expiry deletes
their backups. None of them ever raises into its caller: the catalog is
a copy of what Cinder knows, and losing a write only delays it to the
next sweep.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from openstack import exceptions as sdk_exceptions
from oslo_log import log as logging

from cinderbak import answers, dr_catalog, listing, tenant
from cinderbak.backup_cluster import BackupCluster
from cinderbak.cloud import Cloud
from cinderbak.dr_catalog import CatalogError, Entry
from cinderbak.dr_store import CatalogStore
from cinderbak.journal import states, steps
from cinderbak.summary import Outcome

LOG = logging.getLogger(__name__)

MICROVERSION = "3.45"
"""Backup listing with metadata (3.43) and the project attribute (3.18)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def export_record(cloud: Cloud, backup_id: str) -> dict[str, Any]:
    """Cinder's export record of a backup (admin-only by default policy:
    the service user needs the admin role). GET /backups/{id}/export_record
    through the SDK's own call."""
    storage = cloud.service.block_storage
    answer: dict[str, Any] = cloud.call(storage.export_backup, backup_id)
    record = answer.get("backup-record", answer)
    if not isinstance(record, dict):
        raise CatalogError(f"backup {backup_id}: unexpected export answer")
    return record


def get_backup(cloud: Cloud, backup_id: str) -> dict[str, Any] | None:
    """A backup as an admin sees it (any project), or None when gone."""
    conn = cloud.service
    try:
        response = cloud.call(
            conn.block_storage.get,
            f"/backups/{backup_id}",
            microversion=MICROVERSION,
        )
        backup: dict[str, Any] = answers.decoded(response)["backup"]
    except sdk_exceptions.NotFoundException:
        return None
    return backup


def entry_for(
    cloud: Cloud, backup: dict[str, Any], deployment_id: str
) -> Entry:
    return dr_catalog.build_entry(
        backup,
        export_record(cloud, str(backup["id"])),
        deployment_id=deployment_id,
        now=_now(),
    )


def record(
    store: CatalogStore | None,
    cloud: Cloud,
    deployment_id: str,
    backup_ids: Iterable[str],
) -> int:
    """Write the entries of backups that just became available; return
    how many were written. Failures are logged: the sweep retries."""
    if store is None:
        return 0
    written = 0
    for backup_id in backup_ids:
        try:
            backup = get_backup(cloud, backup_id)
            if backup is None or backup.get("status") != "available":
                continue
            store.put(entry_for(cloud, backup, deployment_id))
            written += 1
        except Exception as exc:  # noqa: BLE001 - the sweep writes it later
            LOG.warning(
                "DR catalog: backup %s not recorded now (%s); the next "
                "sweep records it",
                backup_id,
                exc,
            )
    return written


def recorded(parts: Any, outcomes: list[Outcome]) -> list[Outcome]:
    """The one call after a run: record every backup it made in the DR
    catalog (best effort); return the outcomes unchanged."""
    record(
        getattr(parts, "dr_catalog", None),
        parts.cloud,
        parts.conf.deployment_id,
        [o.backup_id for o in outcomes if o.status == "ok" and o.backup_id],
    )
    return outcomes


def forget(parts: Any, backup_ids: Iterable[str]) -> int:
    """Remove the entries of backups expiry deleted; return how many."""
    store: CatalogStore | None = getattr(parts, "dr_catalog", None)
    if store is None:
        return 0
    removed = 0
    for backup_id in backup_ids:
        try:
            removed += store.remove(backup_id)
        except Exception as exc:  # noqa: BLE001 - the sweep removes it later
            LOG.warning(
                "DR catalog: entry of deleted backup %s not removed now "
                "(%s); the next sweep removes it",
                backup_id,
                exc,
            )
    return removed


def our_backups(cloud: Cloud, deployment_id: str) -> dict[str, dict[str, Any]]:
    """Our available backups in every project, by id."""
    found = {}
    for item in listing.pages(
        cloud, cloud.service, "/backups/detail", "backups", {"all_tenants": 1}
    ):
        metadata = item.get("metadata") or {}
        if item.get("status") == "available" and tenant.is_ours(
            metadata, deployment_id
        ):
            found[item["id"]] = item
    return found


def confirmed_gone(
    parts: Any, entry: Entry, backup_cluster: BackupCluster | None
) -> bool:
    """Whether an entry's backup is certainly gone: Cinder does not know
    it and either our journal deleted it or its data is no longer on the
    backup cluster. Cinder's word alone is not enough: after the loss of
    region A's database Cinder knows nothing, and that is exactly when
    the catalog is needed."""
    if get_backup(parts.cloud, entry.backup_id) is not None:
        return False
    for step in parts.journal.steps_of_resource(
        steps.BACKUP_DELETE, entry.backup_id
    ):
        if step.state is states.DONE:
            return True
    if backup_cluster is None:
        return False
    return backup_cluster.locate(entry.volume_id, entry.backup_id) is None


def reconcile(parts: Any) -> dict[str, int]:
    """Bring the catalog in step with Cinder; return the counts of what
    changed, for the sweep's log line (nothing when nothing did)."""
    store: CatalogStore | None = getattr(parts, "dr_catalog", None)
    if store is None:
        return {}
    counts = {"written": 0, "removed": 0, "failed": 0}
    try:
        ours = our_backups(parts.cloud, parts.conf.deployment_id)
        catalog, problems = store.entries()
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        LOG.warning("DR catalog: reconcile skipped (%s)", exc)
        return {"DR catalog entries failed": 1}
    for problem in problems:
        LOG.warning("DR catalog: %s (left as it is)", problem)
    # Another deployment's entries are its own to keep.
    deployment = parts.conf.deployment_id
    catalog = {i: e for i, e in catalog.items() if e.deployment == deployment}
    missing = [i for i in catalog if i not in ours]
    gone: set[str] = set()
    if missing:
        cluster = None
        try:
            cluster = BackupCluster.from_conf(parts.conf)
            for backup_id in missing:
                if confirmed_gone(parts, catalog[backup_id], cluster):
                    gone.add(backup_id)
        except Exception as exc:  # noqa: BLE001 - removal waits a sweep
            LOG.warning("DR catalog: cannot confirm deletions (%s)", exc)
        finally:
            if cluster is not None:
                cluster.close()
    plan = dr_catalog.reconcile(
        {
            i: (b.get("metadata") or {}).get(tenant.CHECKSUM, "")
            for i, b in ours.items()
        },
        catalog,
        gone,
    )
    for backup_id in plan.write:
        try:
            store.put(
                entry_for(
                    parts.cloud, ours[backup_id], parts.conf.deployment_id
                )
            )
            counts["written"] += 1
        except Exception as exc:  # noqa: BLE001 - next sweep
            counts["failed"] += 1
            LOG.warning("DR catalog: backup %s: %s", backup_id, exc)
    for backup_id in plan.remove:
        try:
            counts["removed"] += store.remove(backup_id)
        except Exception as exc:  # noqa: BLE001 - next sweep
            counts["failed"] += 1
            LOG.warning("DR catalog: entry %s: %s", backup_id, exc)
    return {f"DR catalog entries {k}": n for k, n in counts.items() if n}
