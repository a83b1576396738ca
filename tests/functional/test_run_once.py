"""`cinderbak run-once` against the real stack: Keystone, Cinder, two Cephs.

Backups land on Ceph cluster B through Cinder's Ceph backup driver; data
is written and read through RBD on cluster A, so every check is on real
bytes.
"""

from __future__ import annotations

import hashlib
import textwrap
import uuid

import pytest
from openstack import exceptions as sdk_exceptions

from cinderbak.journal import Journal
from tests import localstack
from tests.functional.conftest import Cinderbak, config_text

MIB = 1024 * 1024
DAILY = """
[policy:daily]
schedule = 0 3 * * *
retention = last=7
full_every = 6
"""


def _row(rows: list[dict], volume_id: str) -> dict:
    matches = [row for row in rows if row["volume_id"] == volume_id]
    assert len(matches) == 1, (volume_id, rows)
    return matches[0]


def _pattern(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def _wait_backup(conn, backup_id):
    backup = conn.block_storage.get_backup(backup_id)
    return conn.block_storage.wait_for_status(
        backup, status="available", failures=["error"], wait=300
    )


def _restore(conn, backup_id, cleanup):
    """Restore a backup to a new volume; return the volume once ready."""
    restore = conn.block_storage.restore_backup(
        backup_id, name=f"ft-restore-{uuid.uuid4().hex[:6]}"
    )
    volume_id = (
        restore["volume_id"]
        if isinstance(restore, dict)
        else (restore.volume_id)
    )
    cleanup.add("volume", volume_id)
    volume = conn.block_storage.get_volume(volume_id)
    conn.block_storage.wait_for_status(
        volume,
        status="available",
        failures=["error", "error_restoring"],
        wait=300,
    )
    _wait_backup(conn, backup_id)  # restoring -> available
    return volume_id


def assert_restores_identical(stack, conn, backup_id, volume_id, cleanup):
    """Restore a backup to a new volume: it must equal the source byte
    for byte."""
    restored = _restore(conn, backup_id, cleanup)
    assert localstack.read_volume_md5(stack, restored) == (
        localstack.read_volume_md5(stack, volume_id)
    )


def _in_use_opted_in(stack, conn, make_volume, policy, seed):
    """A volume of ``conn``'s project opted in to ``policy``, attached to
    a made-up server, holding 4 MiB of data."""
    volume = make_volume(conn, metadata={"cinderbak:policy": policy})
    attach_to_server(conn, volume.id, str(uuid.uuid4()))
    localstack.write_volume(stack, volume.id, 0, _pattern(seed, 4 * MIB))
    return volume


def attach_to_server(conn, volume_id: str, server_id: str) -> None:
    """Make a volume in-use by a server without Nova: a connector-less
    attachment, which Cinder lets us delete later without asking Nova."""
    response = conn.block_storage.post(
        "/attachments",
        json={
            "attachment": {
                "volume_uuid": volume_id,
                "instance_uuid": server_id,
            }
        },
        microversion="3.54",
    )
    response.raise_for_status()
    attachment_id = response.json()["attachment"]["id"]
    conn.block_storage.post(
        f"/attachments/{attachment_id}/action",
        json={"os-complete": None},
        microversion="3.44",
    ).raise_for_status()
    volume = conn.block_storage.get_volume(volume_id)
    assert volume.status == "in-use"


def test_project_mode_full_then_incremental_on_the_second_cluster(
    stack, alice, bob, admin, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config(DAILY)
    volume = make_volume(alice, metadata={"cinderbak:policy": "daily"})
    nope = make_volume(alice, metadata={"cinderbak:policy": "nope"})
    bystander = make_volume(bob, metadata={"app": "db"})
    manual = bob.block_storage.create_backup(
        volume_id=bystander.id, name="bob-manual"
    )
    cleanup.add("backup", manual.id)
    manual = _wait_backup(bob, manual.id)
    localstack.write_volume(stack, volume.id, 0, _pattern("base", 8 * MIB))

    rows = cinderbak.run("run-once")

    first = _row(rows, volume.id)
    assert first["status"] == "ok", first
    assert first["kind"] == "full"
    bad = _row(rows, nope.id)
    assert bad["status"] == "error"
    assert "cinderbak:policy='nope'" in bad["error"]
    assert "daily" in bad["error"]
    assert cinderbak.last_returncode == 1  # a failed volume is reported
    # The tenant owns, sees and could restore the backup.
    full = alice.block_storage.get_backup(first["backup_id"])
    assert full.metadata["cinderbak:owner"] == cinderbak.deployment_id
    assert full.metadata["cinderbak:policy"] == "daily"
    assert full.metadata["cinderbak:run"].startswith("daily@")
    assert not full.is_incremental
    # Outcome written back where the tenant looks.
    meta = alice.block_storage.get_volume(volume.id).metadata
    assert meta["cinderbak:last_status"] == "ok"
    assert meta["cinderbak:last_backup"].startswith(full.id)
    assert (
        alice.block_storage.get_volume(nope.id)
        .metadata["cinderbak:last_status"]
        .startswith("error: volume")
    )

    localstack.write_volume(stack, volume.id, 2 * MIB, _pattern("change", MIB))
    second = _row(cinderbak.run("run-once", "--policy", "daily"), volume.id)

    assert second["status"] == "ok", second
    assert second["kind"] == "incremental"
    incremental = alice.block_storage.get_backup(second["backup_id"])
    assert incremental.is_incremental
    # On cluster B the incremental is a diff of about the changed bytes.
    changed = localstack.backup_diff_bytes(stack, full.id, incremental.id)
    assert MIB <= changed <= 2 * MIB, changed
    # The incremental restores to exactly the source.
    assert_restores_identical(stack, alice, incremental.id, volume.id, cleanup)
    # Tenant B's volume and manual backup were not touched.
    assert bob.block_storage.get_backup(manual.id).metadata == (
        manual.metadata
    )
    assert bob.block_storage.get_volume(bystander.id).metadata == {"app": "db"}


def test_service_mode_hides_backups_from_the_tenant_in_use_volume(
    stack, alice, admin, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config("""
        [policy:vault]
        schedule = every 1h
        ownership = service
        """)
    volume = _in_use_opted_in(stack, alice, make_volume, "vault", "vault")

    row = _row(cinderbak.run("run-once", "--policy", "vault"), volume.id)

    assert row["status"] == "ok", row
    backup = admin.block_storage.get_backup(row["backup_id"])
    assert backup.project_id == stack.projects["service"]
    assert backup.metadata["cinderbak:owner"] == cinderbak.deployment_id
    with pytest.raises(sdk_exceptions.NotFoundException):
        alice.block_storage.get_backup(backup.id)
    assert list(alice.block_storage.backups(volume_id=volume.id)) == []
    assert_restores_identical(stack, admin, backup.id, volume.id, cleanup)


def test_snapshot_mode_backs_up_in_use_volume_and_removes_snapshot(
    stack, alice, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config("""
        [policy:snappy]
        schedule = every 1h
        transfer_mode = snapshot
        """)
    volume = _in_use_opted_in(stack, alice, make_volume, "snappy", "snap")

    row = _row(cinderbak.run("run-once", "--policy", "snappy"), volume.id)

    assert row["status"] == "ok", row
    assert "copies such backups in full" in row["notes"]
    assert list(alice.block_storage.snapshots(volume_id=volume.id)) == []
    backup = alice.block_storage.get_backup(row["backup_id"])
    assert backup.snapshot_id
    assert_restores_identical(stack, alice, backup.id, volume.id, cleanup)


def test_refusals_are_per_volume_and_say_what_to_do(
    stack, alice, bob, carol, admin, make_volume, cinderbak_config
):
    cinderbak = cinderbak_config(DAILY)
    no_role = make_volume(carol, metadata={"cinderbak:policy": "daily"})
    no_quota = make_volume(bob, metadata={"cinderbak:policy": "daily"})
    fine = make_volume(alice, metadata={"cinderbak:policy": "daily"})
    bad_quiesce = make_volume(
        alice,
        metadata={"cinderbak:policy": "daily", "cinderbak:quiesce": "maybe"},
    )
    tenant_b = stack.projects["tenant-b"]
    usage = admin.block_storage.get_quota_set(tenant_b, usage=True)
    admin.block_storage.update_quota_set(
        tenant_b, backups=usage.usage.get("backups", 0)
    )
    try:
        rows = cinderbak.run("run-once", "--policy", "daily", "--no-audit")
    finally:
        admin.block_storage.update_quota_set(tenant_b, backups=-1)

    role = _row(rows, no_role.id)
    assert role["status"] == "error"
    assert "grant it a role" in role["error"]
    assert stack.projects["tenant-c"] in role["error"]
    quota = _row(rows, no_quota.id)
    assert quota["status"] == "error"
    assert "backups quota" in quota["error"]
    quiesce = _row(rows, bad_quiesce.id)
    assert "cinderbak:quiesce='maybe'" in quiesce["error"]
    assert _row(rows, fine.id)["status"] == "ok"


def test_the_journal_records_each_volume_run(
    alice, make_volume, tmp_path, cinderbak_config
):
    """Each volume's run is a journal record with its outcome."""
    cinderbak = cinderbak_config(DAILY)
    volume = make_volume(alice, metadata={"cinderbak:policy": "daily"})
    rows = cinderbak.run("run-once", "--policy", "daily", "--no-audit")
    assert _row(rows, volume.id)["status"] == "ok"
    journal = Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")
    runs = journal.runs(policy="daily")
    assert [run.target for run in runs] == [volume.id]
    assert runs[0].state == "succeeded"


def test_keystoneauth_options_instead_of_a_named_cloud(
    stack, alice, make_volume, tmp_path, clouds_env
):
    """[service_auth] as a deployment tool writes it; project ownership
    then scopes by overriding the project in the loaded auth plugin."""
    config = tmp_path / "cinderbak.conf"
    config.write_text(
        config_text(
            tmp_path,
            f"ft-{uuid.uuid4().hex}",
            cloud=f"region_name = {stack.raw['region']}\n",
        )
        + textwrap.dedent(f"""\
        [service_auth]
        auth_type = password
        auth_url = {stack.keystone_url}
        username = cinderbak
        password = {stack.password("cinderbak")}
        project_name = service
        user_domain_name = Default
        project_domain_name = Default
        """)
        + DAILY
    )
    volume = make_volume(alice, metadata={"cinderbak:policy": "daily"})
    runner = Cinderbak(config, clouds_env)

    rows = runner.run("run-once", "--policy", "daily", "--no-audit")

    row = _row(rows, volume.id)
    assert row["status"] == "ok", (row, runner.last_stderr)
    # Tenant A lists it (members do not see project ids; listing does).
    listed = [b.id for b in alice.block_storage.backups(volume_id=volume.id)]
    assert listed == [row["backup_id"]]
    backup = alice.block_storage.get_backup(row["backup_id"])
    assert (
        backup.metadata["cinderbak:owner"]
        == runner.path.read_text().split("deployment_id = ")[1].split()[0]
    )
