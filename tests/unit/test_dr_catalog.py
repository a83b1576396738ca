"""The DR catalog's pure decisions: entries, selection, order, reconcile."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json

import pytest

from cinderbak import dr_catalog
from cinderbak.dr_catalog import CatalogError, Entry

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
PROJECT = "p" * 32


def _url(**fields: object) -> str:
    return base64.b64encode(json.dumps(fields).encode()).decode()


def _backup(backup_id: str = "b1", **metadata: str) -> dict:
    return {
        "id": backup_id,
        "created_at": "2026-12-01T10:00:00.000000",
        "size": 1,
        "is_incremental": False,
        "os-backup-project-attr:project_id": PROJECT,
        "metadata": {
            "cinderbak:owner": "dep",
            "cinderbak:group": "g1",
            "cinderbak:group_size": "2",
            "cinderbak:policy": "daily",
            "cinderbak:consistency": "quiesced",
            "cinderbak:checksum": "blake2b-4m:1073741824:ab",
        }
        | metadata,
    }


def _record(backup_id: str = "b1", **extra: object) -> dict:
    fields = {
        "id": backup_id,
        "volume_id": "v1",
        "size": 1,
        "service_metadata": "{}",
        "parent_id": None,
    } | extra
    return {
        "backup_service": "cinder.backup.drivers.ceph.CephBackupDriver",
        "backup_url": _url(**fields),
    }


def _entry(backup_id: str, volume: str = "v1", **kw: object) -> Entry:
    values: dict = {
        "backup_id": backup_id,
        "volume_id": volume,
        "project_id": PROJECT,
        "backup_service": "ceph",
        "backup_url": "x",
        "created_at": f"2026-12-01T{backup_id[-2:]}:00:00",
        "size_gb": 1,
    } | kw
    return Entry(**values)


def test_an_entry_keeps_the_export_record_and_the_marks():
    entry = dr_catalog.build_entry(
        _backup(), _record(), deployment_id="dep", now=NOW
    )
    assert entry.backup_id == "b1"
    assert entry.volume_id == "v1"
    assert entry.project_id == PROJECT
    assert entry.group == "g1" and entry.group_size == 2
    assert entry.policy == "daily"
    assert entry.consistency == "quiesced"
    assert entry.checksum == "blake2b-4m:1073741824:ab"
    assert entry.recorded_at == "2026-12-01T12:00:00Z"
    assert dr_catalog.parse_entry(entry.to_bytes(), "obj") == entry


def test_a_record_of_another_backup_is_refused():
    with pytest.raises(CatalogError, match="describes backup 'b2'"):
        dr_catalog.build_entry(
            _backup(), _record("b2"), deployment_id="dep", now=NOW
        )


def test_a_record_that_import_cannot_use_is_refused():
    record = _record()
    fields = json.loads(base64.b64decode(record["backup_url"]))
    del fields["service_metadata"]
    record["backup_url"] = _url(**fields)
    with pytest.raises(CatalogError, match="lacks service_metadata"):
        dr_catalog.build_entry(_backup(), record, deployment_id="d", now=NOW)
    with pytest.raises(CatalogError, match="not base64"):
        dr_catalog.build_entry(
            _backup(),
            {"backup_service": "s", "backup_url": "%%%"},
            deployment_id="d",
            now=NOW,
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schema": 2}', "schema 2, expected 1"),
        (b'{"schema": 1, "backup_id": "b"}', "missing volume_id"),
    ],
)
def test_unreadable_entries_say_where_and_why(data, message):
    with pytest.raises(CatalogError, match=f"pool/obj: {message}"):
        dr_catalog.parse_entry(data, "pool/obj")


def test_selection_brings_the_parents_a_restore_needs():
    full = _entry("b10")
    inc = _entry("b11", parent_id="b10", group="g2")
    other = _entry("b12", volume="v2", group="g2")
    foreign = _entry("b13", volume="v3", project_id="q" * 32)
    entries = [other, inc, full, foreign]
    assert dr_catalog.select(entries, group="g2") == [full, inc, other]
    assert dr_catalog.select(entries, volume="v1") == [full, inc]
    assert dr_catalog.select(entries, project=PROJECT) == [full, inc, other]
    with pytest.raises(dr_catalog.SelectionError, match="group nope"):
        dr_catalog.select(entries, group="nope")


def test_parents_are_imported_before_their_children():
    # the child is older by its (skewed) clock, the parent must come first
    child = _entry("b01", parent_id="b02")
    parent = _entry("b02")
    assert dr_catalog.import_order([child, parent]) == [parent, child]


def test_reconcile_writes_missing_and_stale_entries_and_keeps_unlisted():
    catalog = {
        "kept": _entry("kept", checksum="c1"),
        "stale": _entry("stale", checksum=None),
        "unlisted": _entry("unlisted"),
        "deleted": _entry("deleted"),
    }
    ours = {"kept": "c1", "stale": "c2", "new": ""}
    plan = dr_catalog.reconcile(ours, catalog, gone={"deleted"})
    assert plan.write == ["new", "stale"]
    # Cinder not listing a backup (its database lost) removes nothing
    assert plan.remove == ["deleted"]


def test_an_import_limited_to_a_project_refuses_others():
    entry = _entry("b1", project_id="other")
    assert dr_catalog.refuse_foreign(entry, None) is None
    assert "limited to mine" in str(dr_catalog.refuse_foreign(entry, ["mine"]))


def test_the_drill_samples_the_newest_group_then_other_volumes():
    entries = [
        _entry("b01", volume="v1"),
        _entry("b02", volume="v2", group="g"),
        _entry("b03", volume="v3", group="g"),
        _entry("b04", volume="v1"),
        _entry("b05", volume="v4", group="h"),
        _entry("b06", volume="v5", group="h"),
    ]
    picked = dr_catalog.drill_sample(entries, 3)
    assert [e.backup_id for e in picked] == ["b04", "b05", "b06"]
    assert [e.backup_id for e in dr_catalog.drill_sample(entries[:4], 1)] == [
        "b04"
    ]
    assert dr_catalog.drill_sample([], 2) == []


def test_rto_per_gib():
    assert dr_catalog.rto_seconds_per_gib(30.0, 2) == 15.0
    assert dr_catalog.rto_seconds_per_gib(30.0, 0) is None


def test_export_round_trip():
    entries = [_entry("b02"), _entry("b01")]
    doc = dr_catalog.export_document(entries, NOW)
    parsed = dr_catalog.parse_export(json.dumps(doc), "file")
    assert parsed == sorted(entries, key=lambda e: e.created_at)
    assert dataclasses.replace(parsed[0], recorded_at="x").same_content(
        parsed[0]
    )
    with pytest.raises(CatalogError, match="file: expected"):
        dr_catalog.parse_export("[]", "file")


def test_the_drill_verdict():
    from cinderbak.dr_drill import DrillRow, verdict

    def row(content: str, error: str = "") -> DrillRow:
        return DrillRow(
            "b", "v", "p", "imported", content=content, error=error
        )

    assert verdict([row("match"), row("match")]) == "ok"
    assert verdict([row("match"), row("no-checksum")]) == "warning"
    assert verdict([row("match"), row("MISMATCH")]) == "failed"
    assert verdict([row("not-read", "restore failed")]) == "failed"
    assert verdict([]) == "failed"


def test_a_drill_imports_the_parents_only():
    older = _entry("b01")
    full = _entry("b02")
    inc = _entry("b03", parent_id="b02")
    catalog = {e.backup_id: e for e in (older, full, inc)}
    assert dr_catalog.with_parents(catalog, [inc]) == [full, inc]
