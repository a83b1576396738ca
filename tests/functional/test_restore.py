"""`cinderbak restore` against the real stack: real bytes in and out.

One backup of a tenant's volume is restored to a new volume and over an
existing one; every unsafe target is refused with the target unchanged.
"""

from __future__ import annotations

import uuid

from tests import localstack
from tests.functional.test_run_once import (
    _pattern,
    _wait_backup,
    attach_to_server,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
HEAD = 16 * MIB  # enough to see that a refused target was not written


def _seeded(stack, conn, make_volume, size, label):
    """A volume with a known head; return it and the head's md5, to show
    later that a refused restore left it untouched."""
    volume = make_volume(conn, size=size)
    localstack.write_volume(stack, volume.id, 0, _pattern(label, HEAD))
    return volume, localstack.read_volume_md5(stack, volume.id, HEAD)


def _refused(cinderbak, *args: str) -> str:
    rows = cinderbak.run("restore", *args)
    assert cinderbak.last_returncode != 0, rows
    assert rows == []
    return cinderbak.last_stderr


def test_restore_to_new_and_over_existing_volume_refusing_unsafe_targets(
    stack, alice, bob, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config("")
    project = alice.current_project_id
    source = make_volume(alice, size=2)
    localstack.write_volume(stack, source.id, 0, _pattern("head", 8 * MIB))
    localstack.write_volume(
        stack, source.id, GIB + GIB // 2, _pattern("tail", 4 * MIB)
    )
    backup = alice.block_storage.create_backup(
        volume_id=source.id, name="ft-restore-src"
    )
    cleanup.add("backup", backup.id)
    _wait_backup(alice, backup.id)
    expected = localstack.read_volume_md5(stack, source.id)

    # To a new volume, in the backup's project.
    name = f"ft-restored-{uuid.uuid4().hex[:6]}"
    (row,) = cinderbak.run("restore", backup.id, "--new-volume", name)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    cleanup.add("volume", row["volume_id"])
    assert row["backup"] == backup.id
    assert row["volume_name"] == name
    assert row["project"] == project
    assert row["size"] == 2
    assert row["seconds"] > 0
    restored = alice.block_storage.get_volume(row["volume_id"])
    assert restored.status == "available"
    assert localstack.read_volume_md5(stack, restored.id) == expected

    # Over an attached volume: refused, naming the server.
    attached = make_volume(alice, size=2)
    server = str(uuid.uuid4())
    attach_to_server(alice, attached.id, server)
    err = _refused(cinderbak, backup.id, "--to-volume", attached.id, "--yes")
    assert (
        f"volume {attached.id} ({attached.name}) in project {project} "
        f"is in-use, attached to server {server}: detach it first"
    ) in err
    assert alice.block_storage.get_volume(attached.id).status == "in-use"

    # Over a volume of another project: refused, target untouched.
    foreign, before = _seeded(stack, bob, make_volume, 2, "bob")
    err = _refused(cinderbak, backup.id, "--to-volume", foreign.id, "--yes")
    assert (
        f"volume {foreign.id} ({foreign.name}) in project "
        f"{bob.current_project_id} does not belong to project {project}"
    ) in err
    assert localstack.read_volume_md5(stack, foreign.id, HEAD) == before
    assert bob.block_storage.get_volume(foreign.id).status == "available"

    # Over a volume smaller than the backup: refused, target untouched.
    small, before = _seeded(stack, alice, make_volume, 1, "small")
    err = _refused(cinderbak, backup.id, "--to-volume", small.id, "--yes")
    assert (
        f"volume {small.id} ({small.name}) in project {project} is 1 GiB, "
        f"smaller than the 2 GiB of backup {backup.id}"
    ) in err
    assert localstack.read_volume_md5(stack, small.id, HEAD) == before

    # A fit volume without --yes: refused, saying what would be lost.
    target, before = _seeded(stack, alice, make_volume, 2, "old")
    err = _refused(cinderbak, backup.id, "--to-volume", target.name)
    assert (
        f"would overwrite volume {target.id} ({target.name}) in project "
        f"{project}"
    ) in err
    assert "re-run with --yes" in err
    assert localstack.read_volume_md5(stack, target.id, HEAD) == before

    # With --yes it is overwritten with the backup's content.
    (row,) = cinderbak.run(
        "restore", backup.id, "--to-volume", target.id, "--yes"
    )
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert row["volume_id"] == target.id
    assert row["project"] == project
    assert alice.block_storage.get_volume(target.id).status == "available"
    assert localstack.read_volume_md5(stack, target.id) == expected
    assert alice.block_storage.get_backup(backup.id).status == "available"


def test_a_restored_volume_is_not_opted_in_unless_asked(
    alice, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config("")
    opted_in = {
        "cinderbak:policy": f"gone-{uuid.uuid4().hex[:8]}",
        "cinderbak:last_status": "error: stale",
        "cinderbak:last_backup": "b0 2026-01-01T00:00:00Z",
        "app": "db",
    }
    source = make_volume(alice, metadata=opted_in)
    backup = alice.block_storage.create_backup(
        volume_id=source.id, name="ft-restore-optin"
    )
    cleanup.add("backup", backup.id)
    _wait_backup(alice, backup.id)

    (row,) = cinderbak.run("restore", backup.id)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    cleanup.add("volume", row["volume_id"])
    assert row["opt_in"] == (
        "removed cinderbak:last_backup, cinderbak:last_status, "
        "cinderbak:policy"
    )
    metadata = alice.block_storage.get_volume(row["volume_id"]).metadata
    # Cinder adds src_backup_id; the tenant's own keys stay.
    assert metadata == {"app": "db", "src_backup_id": backup.id}

    # Asked to keep them, it does: Cinder really copies them.
    (row,) = cinderbak.run("restore", backup.id, "--keep-opt-in")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    cleanup.add("volume", row["volume_id"])
    assert row["opt_in"].startswith("kept cinderbak:last_backup, ")
    assert row["opt_in"].endswith(" (--keep-opt-in)")
    metadata = alice.block_storage.get_volume(row["volume_id"]).metadata
    assert metadata == opted_in | {"src_backup_id": backup.id}
