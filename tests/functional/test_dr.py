"""Disaster recovery against the real stack: the DR catalog on cluster B,
an import into the DR region (`tools/localstack up --dr`) with region A's
Cinder stopped and its database gone, a group restore there, the drill,
expiry, tenants kept apart, and a cinderbak host that lost its journal.

Region A's database is renamed, not dropped: to region A's Cinder that is
the same loss, and renaming it back afterwards leaves region A exactly as
the tests that run after this one expect it. The DR region is stopped at
the end (`tools/localstack dr-down`): only this module pays for it.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid

import openstack
import pytest
import requests
import sqlalchemy as sa
from openstack import exceptions as sdk_exceptions

from cinderbak import recovery
from tests import configs, localstack
from tests.functional.conftest import Cinderbak, config_text
from tests.functional.test_consistency import TEST_DOMAIN
from tests.functional.test_run_once import _pattern, attach_to_server

MIB = 1024 * 1024
DR_ADMIN = "localstack-dr-admin"


def _tool(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(localstack.LOCALSTACK), *args],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return time.monotonic() - started


@pytest.fixture(scope="module")
def dr_region(stack):
    """The DR region, started for this module only."""
    seconds = _tool("up", "--dr")
    print(f"\nDR region up in {seconds:.1f} s")
    described = localstack.load_stack()
    assert described.raw["dr"]["enabled"]
    yield described
    print(f"\nDR region down in {_tool('dr-down'):.1f} s")


class _Clock:
    """Prints how long each part took (the CI cost of this module)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"  {what}: {now - self.last:.1f} s", flush=True)
        self.last = now


def _dr_conn(name: str):
    return openstack.connect(cloud=name, block_storage_api_version="3")


def _dr_sections(stack) -> str:
    b = stack.raw["ceph"]["b"]
    a = stack.ceph("a")
    ro = stack.readonly_user
    bro = stack.backup_readonly_user
    return textwrap.dedent(f"""\
        [volume_cluster]
        conf = {a.conf}
        user = {ro.user}
        keyring = {ro.keyring}
        pools = {a.pool}
        [backup_cluster]
        conf = {b["conf"]}
        user = {bro.user}
        keyring = {bro.keyring}
        [dr]
        catalog_conf = {b["conf"]}
        catalog_keyring = {b["users"]["dr-catalog"]["keyring"]}
        drill_cloud = {DR_ADMIN}
        drill_volume_conf = {b["conf"]}
        drill_volume_keyring = {b["users"]["dr-readonly"]["keyring"]}
        """)


def _catalog(cinderbak, group: str | None = None) -> dict[str, dict]:
    rows = cinderbak.run("dr", "catalog", check=True)
    return {
        r["backup_id"]: r for r in rows if group is None or r["group"] == group
    }


def _run(cinderbak, policy: str) -> dict[str, dict]:
    rows = cinderbak.run(
        "run-once", "--policy", policy, "--no-audit", check=True
    )
    assert {r["status"] for r in rows} == {"ok"}, rows
    assert {r["consistency"] for r in rows} == {"quiesced"}, rows
    return {r["volume_id"]: r for r in rows}


def _decisions(cinderbak, policy: str) -> set[tuple[str, str]]:
    rows = cinderbak.run("plan", "--policy", policy, check=True)
    return {(r["backup_id"], r["action"]) for r in rows}


def _region_a_db(stack, new: str, old: str) -> None:
    """Rename region A's database (its Cinder is stopped)."""
    url = stack.raw["postgres_url"].rsplit("/", 1)[0] + "/postgres"
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
    )
    with engine.connect() as c:
        c.execute(
            sa.text(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = :db"
            ),
            {"db": old},
        )
        c.execute(sa.text(f'alter database "{old}" rename to "{new}"'))
    engine.dispose()


def test_region_a_lost_restored_from_the_catalog_alone(
    stack, dr_region, alice, admin, make_volume, cinderbak_config, tmp_path
):
    lap = _Clock()
    policy = f"dr-{uuid.uuid4().hex[:10]}"
    cinderbak = cinderbak_config(
        _dr_sections(stack)
        + textwrap.dedent(f"""\
        [consistency]
        quiescer = libvirt
        [libvirt]
        uri_template = test:///default
        [verify]
        scratch_dir = {tmp_path}/scratch
        [policy:{policy}]
        schedule = every 1h
        transfer_mode = volume
        retention = last=1
        full_every = 1
        """)
    )
    sources = [
        make_volume(alice, metadata={"cinderbak:policy": policy})
        for _ in range(2)
    ]
    for number, source in enumerate(sources):
        localstack.write_volume(
            stack, source.id, 0, _pattern(f"{source.id}-1-{number}", 4 * MIB)
        )
        attach_to_server(alice, source.id, TEST_DOMAIN)

    # Run 1: a quiesced group, full backups, catalogued with checksums.
    first = _run(cinderbak, policy)
    (group1,) = {r["group_id"] for r in first.values()}
    entries = _catalog(cinderbak, group1)
    assert set(entries) == {r["backup_id"] for r in first.values()}
    for entry in entries.values():
        assert entry["project_id"] == alice.current_project_id
        assert entry["policy"] == policy
        assert entry["consistency"] == "quiesced"
        assert entry["checksum"], entry

    # An entry lost (a kill -9 before the write): the sweep writes it
    # again; the entry of a backup merely missing from Cinder stays.
    lost_id = next(iter(entries))
    with localstack.ioctx(stack, "b", "cinderbak-dr") as io:
        io.remove_object(f"backup.{lost_id}")
    parts = configs.parts_from(cinderbak.path)
    try:
        assert recovery.sweep(parts)["DR catalog entries written"] == 1
    finally:
        parts.close()
    assert set(_catalog(cinderbak, group1)) == set(entries)
    lap("run 1, catalog, sweep")
    # The cinderbak host is lost: its journal goes. The plan is the same,
    # the next run is incremental on the right parents.
    planned = _decisions(cinderbak, policy)
    (tmp_path / "journal.sqlite").unlink()
    assert _decisions(cinderbak, policy) == planned
    for number, source in enumerate(sources):
        localstack.write_volume(
            stack, source.id, MIB, _pattern(f"{source.id}-2-{number}", MIB)
        )
    second = _run(cinderbak, policy)
    (group2,) = {r["group_id"] for r in second.values()}
    expected = {
        source.id: localstack.read_volume_md5(stack, source.id)
        for source in sources
    }
    for row in second.values():
        assert row["kind"] == "incremental", row
    lap("plans, run 2")
    # ... and verification still finds the checksum (from the marks).
    backup2 = second[sources[0].id]["backup_id"]
    (verified,) = cinderbak.run("verify", backup2)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert verified["content"] == "match", verified

    lap("verify")
    exported = tmp_path / "catalog.json"
    cinderbak.run("dr", "export", "--to", str(exported), check=True)
    doc = json.loads(exported.read_text())
    by_id = {e["backup_id"]: e for e in doc["entries"]}
    for volume_id, row in second.items():
        # the parent Cinder recorded, as the export record carries it
        assert (
            by_id[row["backup_id"]]["parent_id"]
            == (first[volume_id]["backup_id"])
        )

    # Tenants cannot import: not another project's backups (no role
    # there), and not their own (import_record is admin-only).
    for cloud in ("localstack-dr-tenant-b", "localstack-dr-tenant-a"):
        rows = cinderbak.run(
            "dr",
            "import",
            "--cloud",
            cloud,
            "--from",
            str(exported),
            "--group",
            group2,
        )
        assert cinderbak.last_returncode == 1, cinderbak.last_stderr
        assert len(rows) == 4
        assert {r["result"] for r in rows} == {"refused"}, rows
    assert "admin-only" in rows[0]["reason"], rows

    lap("export, tenants refused")
    # Disaster: region A's Cinder stops and its database is gone.
    lost = f"cinder_lost_{uuid.uuid4().hex[:8]}"
    dr_volumes: list[str] = []
    renamed = False
    try:
        _tool("cinder-down")
        _region_a_db(stack, lost, "cinder")
        renamed = True
        with pytest.raises(requests.ConnectionError):
            requests.get(stack.cinder_url, timeout=5)

        lap("region A down")
        # Import from the catalog on cluster B (no file, no region A).
        started = time.monotonic()
        rows = cinderbak.run(
            "dr", "import", "--cloud", DR_ADMIN, "--group", group2
        )
        import_seconds = time.monotonic() - started
        assert cinderbak.last_returncode == 0, cinderbak.last_stderr
        assert sorted(r["result"] for r in rows) == ["imported"] * 4, rows
        print(
            f"\nDR import: 4 backups in {import_seconds:.1f} s "
            f"({import_seconds / 4:.1f} s per backup)"
        )
        again = cinderbak.run(
            "dr", "import", "--cloud", DR_ADMIN, "--group", group2
        )
        assert cinderbak.last_returncode == 0, cinderbak.last_stderr
        assert sorted(r["result"] for r in again) == ["skipped"] * 4, again
        dr_admin = _dr_conn(DR_ADMIN)
        listed = list(
            dr_admin.block_storage.backups(all_projects=True, details=True)
        )
        ids = [b.id for b in listed if b.id in {r["backup_id"] for r in rows}]
        assert len(ids) == len(set(ids)) == 4
        for b in listed:
            if b.id in ids:
                assert b.project_id == alice.current_project_id
                assert b.status == "available"

        lap("imports")
        # Restore the group in the DR region, from a fresh cinderbak
        # config and journal (the host is gone too).
        dr_conf = tmp_path / "dr.conf"
        dr_conf.write_text(
            config_text(
                tmp_path / "drhost",
                cinderbak.deployment_id,
                "",
                "cloud = localstack-dr-cinderbak\napi_retries = 2\n",
            ).replace(
                f"sqlite:///{tmp_path}/drhost/journal.sqlite",
                f"sqlite:///{tmp_path}/dr-journal.sqlite",
            )
        )
        dr_cinderbak = Cinderbak(dr_conf, cinderbak.env)
        started = time.monotonic()
        restored = dr_cinderbak.run("restore", "--group", group2)
        restore_seconds = time.monotonic() - started
        dr_volumes = [r["volume_id"] for r in restored if r.get("volume_id")]
        assert dr_cinderbak.last_returncode == 0, dr_cinderbak.last_stderr
        assert {r["source_volume"] for r in restored} == set(expected)
        for row in restored:
            assert row["status"] == "ok", row
            assert row["project"] == alice.current_project_id
            assert (
                localstack.read_volume_md5(
                    stack, f"dr-volumes/volume-{row['volume_id']}"
                )
                == expected[row["source_volume"]]
            )
        print(
            f"DR restore --group: 2 GiB in {restore_seconds:.1f} s "
            f"({2048 / restore_seconds:.1f} MiB/s)"
        )

        # Ownership kept: the tenant sees its backups in the DR region,
        # another tenant neither sees nor restores them.
        alice_dr = _dr_conn("localstack-dr-tenant-a")
        bob_dr = _dr_conn("localstack-dr-tenant-b")
        assert alice_dr.block_storage.get_backup(backup2).status == (
            "available"
        )
        with pytest.raises(sdk_exceptions.NotFoundException):
            bob_dr.block_storage.get_backup(backup2)
        response = bob_dr.block_storage.post(
            f"/backups/{backup2}/restore", json={"restore": {"name": "x"}}
        )
        assert response.status_code in (403, 404), response.text

        lap("restore, tenant checks")
        # The drill: imports skipped, restores compared with the
        # checksums taken at backup time, its volumes deleted.
        drilled = cinderbak.run("dr", "drill")
        assert cinderbak.last_returncode == 0, cinderbak.last_stderr
        assert {r["content"] for r in drilled} == {"match"}, drilled
        assert {r["imported"] for r in drilled} == {"skipped"}, drilled
        print("DR drill: " + cinderbak.last_stderr.strip().splitlines()[-1])
        leftovers = [
            v
            for v in dr_admin.block_storage.volumes(all_projects=True)
            if (v.name or "").startswith("cinderbak-drill-")
        ]
        assert leftovers == []
        lap("drill")
    finally:
        for volume_id in dr_volumes:
            _dr_conn(DR_ADMIN).block_storage.delete_volume(
                volume_id, ignore_missing=True
            )
        if renamed:
            _region_a_db(stack, "cinder", lost)
        restored_a = _tool("up")
        print(f"region A back (database, services, ready): {restored_a:.0f} s")

    # Expiry in region A removes the entries with the backups it deletes
    # (run 3 is a full: full_every = 1; last=1 lets older backups go).
    lap("region A back")
    third = _run(cinderbak, policy)
    rows = cinderbak.run("expire", "--policy", policy, check=True)
    deleted = {r["backup_id"] for r in rows if r["result"] == "deleted"}
    older = {r["backup_id"] for r in [*first.values(), *second.values()]}
    assert deleted and deleted <= older, rows
    entries = _catalog(cinderbak)
    assert not deleted & set(entries)
    # what is still in region A is still in the catalog
    assert (older - deleted) | {r["backup_id"] for r in third.values()} <= (
        set(entries)
    )
    lap("run 3, expiry")


def test_catalog_key_writes_only_its_pool(stack):
    """The catalog's cephx key can neither read nor change a backup."""
    import rados

    user = localstack.CephUser(**stack.raw["ceph"]["b"]["users"]["dr-catalog"])
    with localstack.ioctx(stack, "b", "backups", user) as io:
        with pytest.raises(rados.PermissionError):
            io.stat("rbd_directory")
        with pytest.raises(rados.PermissionError):
            io.write_full("probe", b"x")
    with localstack.ioctx(stack, "b", "cinderbak-dr", user) as io:
        io.write_full("probe", b"x")
        io.remove_object("probe")
