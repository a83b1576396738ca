"""The DR catalog's entries and the decisions made on them: pure, no I/O.

Region A's Cinder database is the only thing that says what the RBD
images on the backup cluster are. The DR catalog keeps, next to those
images, one entry per backup of ours: Cinder's export record of it (what
``import_record`` needs to register the backup in another Cinder) plus
what an operator picks by and checks against (volume, project, server
group, policy, consistency, the source checksum taken at backup time).
This module builds and parses entries, selects them, orders imports,
and decides what a reconcile pass writes and removes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from cinderbak import tenant

SCHEMA = 1
OBJECT_PREFIX = "backup."


class CatalogError(ValueError):
    """An entry (or an export record) that cannot be used, and why."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One backup of ours as the DR catalog keeps it."""

    backup_id: str
    volume_id: str
    project_id: str
    backup_service: str
    backup_url: str
    created_at: str
    size_gb: int
    is_incremental: bool = False
    parent_id: str | None = None
    volume_name: str = ""
    group: str | None = None
    group_size: int | None = None
    policy: str | None = None
    consistency: str | None = None
    checksum: str | None = None
    deployment: str = ""
    recorded_at: str = ""

    COLUMNS = (
        "backup_id",
        "volume_id",
        "project_id",
        "created_at",
        "size_gb",
        "is_incremental",
        "group",
        "policy",
        "consistency",
        "checksum",
    )

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, column) for column in self.COLUMNS)

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA} | dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    def same_content(self, other: Entry) -> bool:
        """Equal but for when it was recorded: nothing to rewrite."""
        return dataclasses.replace(other, recorded_at=self.recorded_at) == self


def object_name(backup_id: str) -> str:
    return OBJECT_PREFIX + backup_id


def backup_id_of(object_name_: str) -> str | None:
    """The backup id an object of the catalog pool is named after, or
    None for an object that is not an entry."""
    if not object_name_.startswith(OBJECT_PREFIX):
        return None
    return object_name_[len(OBJECT_PREFIX) :] or None


def decode_backup_url(backup_url: str) -> dict[str, Any]:
    """What Cinder's export record holds: base64 of the backup's fields
    as JSON (cinder.objects.Backup.encode_record). Raise CatalogError."""
    try:
        decoded = json.loads(base64.b64decode(backup_url, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise CatalogError(
            f"backup_url is not base64 of a JSON object ({exc})"
        ) from None
    if not isinstance(decoded, dict):
        raise CatalogError("backup_url does not hold a JSON object")
    return decoded


def build_entry(
    backup: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    deployment_id: str,
    now: datetime.datetime,
    volume_name: str = "",
) -> Entry:
    """Make an entry from a backup as Cinder shows it to an admin and
    its export record (``backup-record``). Raise CatalogError when the
    record does not describe that backup (or lacks what import needs)."""
    backup_id = str(backup["id"])
    service = record.get("backup_service")
    url = record.get("backup_url")
    if not service or not url:
        raise CatalogError(
            f"backup {backup_id}: the export record has no "
            "backup_service/backup_url"
        )
    fields = decode_backup_url(str(url))
    if fields.get("id") != backup_id:
        raise CatalogError(
            f"backup {backup_id}: the export record describes backup "
            f"{fields.get('id')!r}"
        )
    missing = {"size", "volume_id", "service_metadata"} - set(fields)
    if missing:
        raise CatalogError(
            f"backup {backup_id}: the export record lacks "
            + ", ".join(sorted(missing))
        )
    metadata = dict(backup.get("metadata") or {})
    project = backup.get("os-backup-project-attr:project_id") or fields.get(
        "project_id"
    )
    if not project:
        raise CatalogError(f"backup {backup_id}: no project id shown")
    group_size = metadata.get(tenant.GROUP_SIZE)
    return Entry(
        backup_id=backup_id,
        volume_id=str(fields["volume_id"]),
        project_id=str(project),
        backup_service=str(service),
        backup_url=str(url),
        created_at=str(backup.get("created_at") or ""),
        size_gb=int(backup.get("size") or fields["size"] or 0),
        is_incremental=bool(backup.get("is_incremental")),
        parent_id=fields.get("parent_id"),
        volume_name=volume_name,
        group=metadata.get(tenant.GROUP),
        group_size=int(str(group_size))
        if str(group_size or "").isdigit()
        else None,
        policy=metadata.get(tenant.POLICY),
        consistency=metadata.get(tenant.CONSISTENCY),
        checksum=metadata.get(tenant.CHECKSUM),
        deployment=deployment_id,
        recorded_at=now.astimezone(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
    )


_REQUIRED = (
    "backup_id",
    "volume_id",
    "project_id",
    "backup_service",
    "backup_url",
    "created_at",
    "size_gb",
)


def parse_entry(data: bytes | str | Mapping[str, Any], where: str) -> Entry:
    """Read an entry (an object's content, or one item of an exported
    file); raise CatalogError naming ``where`` and what is wrong."""
    if isinstance(data, Mapping):
        item: Any = dict(data)
    else:
        try:
            item = json.loads(data)
        except ValueError as exc:
            raise CatalogError(f"{where}: not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a JSON object")
    if item.get("schema") != SCHEMA:
        raise CatalogError(
            f"{where}: schema {item.get('schema')!r}, expected {SCHEMA}"
        )
    missing = [key for key in _REQUIRED if item.get(key) in (None, "")]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(Entry)}
    try:
        return Entry(**{k: v for k, v in item.items() if k in known})
    except TypeError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def parse_export(text: str, where: str) -> list[Entry]:
    """Read a file written by ``cinderbak dr export``."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CatalogError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise CatalogError(f"{where}: expected {{'entries': [...]}}")
    return [
        parse_entry(item, f"{where} entry {n}")
        for n, item in enumerate(doc["entries"])
    ]


def export_document(
    entries: Iterable[Entry], now: datetime.datetime
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "exported_at": now.astimezone(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "entries": [e.as_dict() for e in sorted(entries, key=_order)],
    }


def _order(entry: Entry) -> tuple[str, str]:
    return (entry.created_at, entry.backup_id)


class SelectionError(ValueError):
    """A selection that names nothing in the catalog."""


def select(
    entries: Iterable[Entry],
    *,
    project: str | None = None,
    volume: str | None = None,
    group: str | None = None,
) -> list[Entry]:
    """Entries of a project, a volume or a server group (with their
    incremental parents, which a restore of them needs), oldest first."""
    chosen = [e for e in entries if project is None or e.project_id == project]
    by_id = {e.backup_id: e for e in chosen}
    if volume is not None:
        chosen = [e for e in chosen if e.volume_id == volume]
    if group is not None:
        chosen = [e for e in chosen if e.group == group]
    wanted = {e.backup_id for e in chosen}
    for entry in list(chosen):
        parent = entry.parent_id
        while parent and parent in by_id and parent not in wanted:
            wanted.add(parent)
            parent = by_id[parent].parent_id
    if (volume or group) and not wanted:
        raise SelectionError(
            f"the catalog has no backup of {'volume' if volume else 'group'} "
            f"{volume or group}"
            + (f" in project {project}" if project else "")
        )
    return sorted((by_id[i] for i in wanted), key=_order)


def with_parents(
    catalog: Mapping[str, Entry], chosen: Iterable[Entry]
) -> list[Entry]:
    """The chosen entries and the chains of parents a restore of them
    needs (as far as the catalog has them), oldest first."""
    found: dict[str, Entry] = {}
    for entry in chosen:
        current: Entry | None = entry
        while current is not None and current.backup_id not in found:
            found[current.backup_id] = current
            parent = current.parent_id
            current = catalog.get(parent) if parent else None
    return sorted(found.values(), key=_order)


def import_order(entries: Iterable[Entry]) -> list[Entry]:
    """Parents before children (Cinder links an incremental to its
    parent by id), otherwise oldest first."""
    pending = sorted(entries, key=_order)
    ids = {e.backup_id for e in pending}
    done: set[str] = set()
    ordered: list[Entry] = []
    while pending:
        rest = []
        for entry in pending:
            if entry.parent_id in ids and entry.parent_id not in done:
                rest.append(entry)
            else:
                ordered.append(entry)
                done.add(entry.backup_id)
        if len(rest) == len(pending):  # a cycle cannot happen; be total
            ordered.extend(rest)
            break
        pending = rest
    return ordered


@dataclasses.dataclass(frozen=True)
class Reconcile:
    """What one reconcile pass does to the catalog."""

    write: list[str]  # backup ids whose entry is missing or stale
    remove: list[str]  # entries of backups that are gone


def reconcile(
    ours: Mapping[str, str],
    catalog: Mapping[str, Entry],
    gone: Collection[str],
) -> Reconcile:
    """Given our available backups ({id: checksum mark or ''}), the
    catalog's entries, and the catalog's backups confirmed gone (deleted
    by us, or absent from Cinder and from the backup cluster), say what
    to write and what to remove.

    An entry whose backup Cinder merely does not list is kept: region A's
    database being lost is exactly when the catalog must not shrink.
    """
    write = sorted(
        backup_id
        for backup_id, checksum in ours.items()
        if backup_id not in catalog
        or (catalog[backup_id].checksum or "") != checksum
    )
    remove = sorted(i for i in catalog if i in gone and i not in ours)
    return Reconcile(write, remove)


class Outcome:
    """What an import did with one entry."""

    IMPORTED = "imported"
    SKIPPED = "skipped"
    REFUSED = "refused"


@dataclasses.dataclass(frozen=True)
class ImportRow:
    backup_id: str
    volume_id: str
    project_id: str
    result: str
    reason: str = ""
    seconds: float | None = None

    COLUMNS = (
        "backup_id",
        "volume_id",
        "project_id",
        "result",
        "reason",
        "seconds",
    )

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, column) for column in self.COLUMNS)


def refuse_foreign(
    entry: Entry, allowed: Collection[str] | None
) -> str | None:
    """Why an entry may not be imported by this caller, or None. An
    import scoped to a project list never touches another project's
    backups, whatever the catalog holds."""
    if allowed is not None and entry.project_id not in allowed:
        return (
            f"backup of project {entry.project_id}; this import is "
            f"limited to {', '.join(sorted(allowed))}"
        )
    return None


def rto_seconds_per_gib(seconds: float, size_gb: int) -> float | None:
    """The drill's recovery time per GiB restored (None for nothing)."""
    if size_gb <= 0:
        return None
    return round(seconds / size_gb, 2)


def drill_sample(entries: Iterable[Entry], size: int) -> list[Entry]:
    """What a drill restores: the newest backup of each of the ``size``
    most recently backed-up volumes (a group's newest backups when the
    newest volume belongs to one, so the drill proves a group restore).
    """
    newest: dict[str, Entry] = {}
    for entry in sorted(entries, key=_order):
        newest[entry.volume_id] = entry
    ranked = sorted(newest.values(), key=_order, reverse=True)
    if not ranked:
        return []
    first = ranked[0]
    picked = [e for e in ranked if first.group and e.group == first.group]
    picked = picked or [first]
    for entry in ranked:
        if len(picked) >= size:
            break
        if entry not in picked:
            picked.append(entry)
    return sorted(picked, key=_order)
