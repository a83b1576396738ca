"""Registering the DR catalog's backups in another Cinder (import_record).

How Cinder treats an import (cinder/backup/api.py, _get_import_backup,
and the backup manager's import_record): the record keeps the backup's id,
volume id, parent, size and the driver's service metadata; the new row
gets the ``project_id`` and ``user_id`` of the caller's token, never the
record's. The default policy makes the call admin-only
(``backup:backup-import`` = ``rule:admin_api``). So project ownership is
kept by importing each backup with a token scoped to the backup's own
project, as a user holding the admin role there; a backup is never
imported into any other project. A tenant cannot import at all (Cinder
refuses the call), cannot read the catalog (its cephx key is the
operator's), and cannot see, let alone restore, another project's
imported backups.

An id already known to the DR Cinder (a second import, or a concurrent
one) is skipped, never replaced: imports are idempotent. Nothing here
deletes a backup in the DR region: with the Ceph driver that would delete
the data on the backup cluster that region A's record points to as well.

openstacksdk's ``import_backup`` (4.x) posts to ``export_record`` and
sends the path as the URL, so the import goes through the SDK's own REST
adapter (python-cinderclient is not needed for one POST).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import openstack
import openstack.connection
from openstack import exceptions as sdk_exceptions
from oslo_log import log as logging

from cinderbak import answers, dr_catalog
from cinderbak import cloud as cloud_mod
from cinderbak.dr_catalog import Entry, ImportRow, Outcome

LOG = logging.getLogger(__name__)

MICROVERSION = "3.45"


class DrCloud:
    """Connections to the DR region: one per project, scoped to it."""

    def __init__(self, cloud_name: str, *, api_timeout: float = 60.0) -> None:
        self.cloud_name = cloud_name
        self.base = openstack.connect(
            cloud=cloud_name,
            block_storage_api_version="3",
            api_timeout=api_timeout,
        )
        self._scoped: dict[str, openstack.connection.Connection | str] = {}

    def for_project(
        self, project_id: str
    ) -> openstack.connection.Connection | str:
        """A connection scoped to ``project_id``, or why there is none."""
        if project_id not in self._scoped:
            try:
                if self.base.current_project_id == project_id:
                    conn = self.base
                else:
                    conn = self.base.connect_as(project_id=project_id)
                conn.authorize()
                self._scoped[project_id] = conn
            except Exception as exc:  # noqa: BLE001 - reported per backup
                self._scoped[project_id] = (
                    f"cloud {self.cloud_name} cannot act in project "
                    f"{project_id} ({_short(exc)}); importing keeps a "
                    "backup's project, so the importing user needs the "
                    "admin role in it"
                )
        return self._scoped[project_id]

    def close(self) -> None:
        self.base.close()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def find_backup(
    conn: openstack.connection.Connection, backup_id: str
) -> dict[str, Any] | None:
    response = conn.block_storage.get(
        f"/backups/{backup_id}", microversion=MICROVERSION
    )
    if response.status_code == 404:
        return None
    found: dict[str, Any] = answers.decoded(response)["backup"]
    return found


def _wait(
    conn: openstack.connection.Connection,
    backup_id: str,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any] | None:
    deadline = clock() + timeout
    while True:
        backup = find_backup(conn, backup_id)
        if backup is None or backup["status"] in ("available", "error"):
            return backup
        if clock() >= deadline:
            return backup
        time.sleep(1.0)


def import_one(
    dr: DrCloud,
    entry: Entry,
    *,
    allowed_projects: Iterable[str] | None = None,
    timeout: float = 300.0,
) -> ImportRow:
    """Import one catalog entry into its own project; never raises for
    what the cloud says, it is reported in the row."""

    def row(
        result: str, reason: str = "", seconds: float | None = None
    ) -> ImportRow:
        return ImportRow(
            entry.backup_id,
            entry.volume_id,
            entry.project_id,
            result,
            reason,
            seconds,
        )

    allowed = set(allowed_projects) if allowed_projects is not None else None
    why = dr_catalog.refuse_foreign(entry, allowed)
    if why:
        return row(Outcome.REFUSED, why)
    conn = dr.for_project(entry.project_id)
    if isinstance(conn, str):
        return row(Outcome.REFUSED, conn)
    started = time.monotonic()
    try:
        existing = find_backup(conn, entry.backup_id)
        if existing is not None:
            owner = existing.get("os-backup-project-attr:project_id")
            note = f"already there ({existing['status']})"
            if owner and owner != entry.project_id:
                note += f", in project {owner}"
            return row(Outcome.SKIPPED, note)
        response = conn.block_storage.post(
            "/backups/import_record",
            json={
                "backup-record": {
                    "backup_service": entry.backup_service,
                    "backup_url": entry.backup_url,
                }
            },
            microversion=MICROVERSION,
        )
        if response.status_code == 400 and "already exists" in response.text:
            return row(Outcome.SKIPPED, "already there (imported meanwhile)")
        sdk_exceptions.raise_from_response(response)
        backup = _wait(conn, entry.backup_id, timeout)
    except sdk_exceptions.SDKException as exc:
        status = cloud_mod.status_of(exc)
        if status == 403:
            return row(
                Outcome.REFUSED,
                "Cinder refused the import (403): import_record is "
                "admin-only; the importing user needs the admin role in "
                f"project {entry.project_id}",
            )
        return row(Outcome.REFUSED, f"Cinder refused: {_short(exc)}")
    seconds = round(time.monotonic() - started, 2)
    if backup is None:
        return row(Outcome.REFUSED, "the imported record vanished", seconds)
    if backup["status"] != "available":
        reason = backup.get("fail_reason") or f"status {backup['status']}"
        return row(Outcome.REFUSED, f"import failed: {reason}", seconds)
    LOG.info(
        "DR import: backup %s of volume %s imported into project %s in %.1f s",
        entry.backup_id,
        entry.volume_id,
        entry.project_id,
        seconds,
    )
    return row(Outcome.IMPORTED, "", seconds)


def import_entries(
    dr: DrCloud,
    entries: Iterable[Entry],
    *,
    allowed_projects: Iterable[str] | None = None,
    timeout: float = 300.0,
) -> list[ImportRow]:
    """Import in dependency order; a child whose parent was refused is
    refused too (Cinder could not restore it)."""
    rows: list[ImportRow] = []
    refused: set[str] = set()
    for entry in dr_catalog.import_order(entries):
        if entry.parent_id and entry.parent_id in refused:
            rows.append(
                ImportRow(
                    entry.backup_id,
                    entry.volume_id,
                    entry.project_id,
                    Outcome.REFUSED,
                    f"its parent {entry.parent_id} was refused",
                )
            )
            refused.add(entry.backup_id)
            continue
        result = import_one(
            dr, entry, allowed_projects=allowed_projects, timeout=timeout
        )
        if result.result == Outcome.REFUSED:
            refused.add(entry.backup_id)
        rows.append(result)
    return rows
