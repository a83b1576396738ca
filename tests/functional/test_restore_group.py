"""`cinderbak restore --group` against the real stack.

Two volumes of one server are backed up in one freeze by the real
`cinderbak run-once` (libvirt's test driver, ``test:///default``, plays
the guest inside the command's process); the restore point comes back as
two new volumes, each with its own source's bytes. With one backup gone
the restore point is incomplete and refused, and nothing is created.
"""

from __future__ import annotations

import textwrap
import uuid

from tests import localstack
from tests.functional.test_consistency import TEST_DOMAIN
from tests.functional.test_run_once import (
    _pattern,
    _wait_backup,
    attach_to_server,
)

MIB = 1024 * 1024


def _restored_volumes(conn, sources) -> dict[str, str]:
    """{volume id: name} of the project's volumes restored from sources."""
    prefixes = tuple(f"{source.name}-restored-" for source in sources)
    return {
        volume.id: volume.name
        for volume in conn.block_storage.volumes()
        if (volume.name or "").startswith(prefixes)
    }


def test_restore_point_restored_whole_and_refused_when_incomplete(
    stack, alice, make_volume, cinderbak_config, cleanup
):
    # A policy name of its own: runs of other tests never see our volumes.
    policy = f"grp-{uuid.uuid4().hex[:10]}"
    cinderbak = cinderbak_config(
        textwrap.dedent(f"""\
        [consistency]
        quiescer = libvirt
        [libvirt]
        uri_template = test:///default
        [policy:{policy}]
        schedule = every 1h
        transfer_mode = snapshot
        """)
    )
    sources = [
        make_volume(alice, metadata={"cinderbak:policy": policy})
        for _ in range(2)
    ]
    expected = {}
    for number, source in enumerate(sources):
        # Distinct head and a tail near the end, so a swapped or partial
        # restore cannot match.
        localstack.write_volume(
            stack, source.id, 0, _pattern(f"{source.id}-head", 8 * MIB)
        )
        localstack.write_volume(
            stack,
            source.id,
            (1024 - 4) * MIB,
            _pattern(f"{source.id}-tail-{number}", 4 * MIB),
        )
        expected[source.id] = localstack.read_volume_md5(stack, source.id)
        attach_to_server(alice, source.id, TEST_DOMAIN)
    assert len(set(expected.values())) == 2

    outcomes = cinderbak.run("run-once", "--policy", policy, "--no-audit")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert {o["volume_id"] for o in outcomes} == set(expected)
    assert {o["consistency"] for o in outcomes} == {"quiesced"}, outcomes
    (group,) = {o["group_id"] for o in outcomes}
    backups = {
        o["volume_id"]: alice.block_storage.get_backup(o["backup_id"])
        for o in outcomes
    }
    for backup in backups.values():
        assert backup.metadata["cinderbak:group"] == group
        assert backup.metadata["cinderbak:group_size"] == "2"
        assert backup.metadata["cinderbak:owner"] == cinderbak.deployment_id

    rows = cinderbak.run("restore", "--group", group)
    for row in rows:
        cleanup.add("volume", row["volume_id"])
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert {row["source_volume"] for row in rows} == set(expected)
    names = {source.id: source.name for source in sources}
    for row in rows:
        source = row["source_volume"]
        assert row["group"] == group
        assert row["backup"] == backups[source].id
        assert row["status"] == "ok", row
        assert row["project"] == alice.current_project_id
        assert row["size"] == 1
        assert row["seconds"] > 0
        assert row["volume_name"].startswith(f"{names[source]}-restored-")
        restored = alice.block_storage.get_volume(row["volume_id"])
        assert restored.status == "available"
        # Cinder copied the source's opt-in; the restore removed it.
        assert row["opt_in"].startswith("removed cinderbak:"), row
        assert "cinderbak:policy" in row["opt_in"]
        assert not [k for k in restored.metadata if k.startswith("cinderbak")]
        assert (
            localstack.read_volume_md5(stack, restored.id)
            == (expected[source])
        )
    # Restored together: one time in both names.
    assert len({row["volume_name"][-14:] for row in rows}) == 1

    # The tenant forges a third member: its own backup with every mark
    # copied, the size raised to 3. The marks agree; the journal, which
    # recorded the freeze, refuses it.
    genuine = next(iter(backups.values())).metadata
    third = make_volume(alice)
    forged = alice.block_storage.create_backup(
        volume_id=third.id,
        name=backups[sources[0].id].name,
        metadata=dict(genuine) | {"cinderbak:group_size": "3"},
    )
    cleanup.add("backup", forged.id)
    _wait_backup(alice, forged.id)
    before = _restored_volumes(alice, sources)
    assert cinderbak.run("restore", "--group", group) == []
    assert cinderbak.last_returncode != 0
    assert (
        f"refused: group {group}: backup {forged.id} of volume {third.id} "
        "carries the group's mark, but the journal records no such backup "
        "of this restore point"
    ) in cinderbak.last_stderr
    assert _restored_volumes(alice, sources) == before
    alice.block_storage.delete_backup(forged.id)
    alice.block_storage.wait_for_delete(forged, wait=300)

    # One backup of the restore point gone: refused as incomplete.
    gone, kept = sources
    alice.block_storage.delete_backup(backups[gone.id].id)
    alice.block_storage.wait_for_delete(backups[gone.id], wait=300)
    before = _restored_volumes(alice, sources)
    assert len(before) == 2

    rows = cinderbak.run("restore", "--group", group)

    assert cinderbak.last_returncode != 0, rows
    assert rows == []
    kept_backup = backups[kept.id].id
    # Its size and members come from the journal, not the marks.
    assert (
        f"refused: group {group} is incomplete: the journal records 2 "
        f"volumes in its freeze, missing volume {gone.id} (backup "
        f"{backups[gone.id].id})"
    ) in cinderbak.last_stderr
    assert _restored_volumes(alice, sources) == before
    assert alice.block_storage.get_backup(kept_backup).status == "available"


def test_group_refuses_a_target_volume_and_an_unknown_group(
    cinderbak_config,
):
    cinderbak = cinderbak_config("")
    unknown = str(uuid.uuid4())

    assert cinderbak.run("restore", "--group", unknown) == []
    assert cinderbak.last_returncode != 0
    assert (
        f"refused: group {unknown}: no backup of this deployment carries "
        f"cinderbak:group={unknown}"
    ) in cinderbak.last_stderr

    rows = cinderbak.run("restore", "--group", unknown, "--to-volume", "x")
    assert rows == []
    assert cinderbak.last_returncode != 0
    assert "--to-volume cannot be used with --group" in cinderbak.last_stderr
