"""`cinderbak plan` and `cinderbak expire` against the real stack.

Backups are made by `cinderbak run-once`, each after writing a little
data, so chains are real Ceph incrementals; expiry then deletes through
Cinder, which refuses to delete a backup with dependents - a wrong order
would show as a failed row.
"""

from __future__ import annotations

import subprocess

from openstack import exceptions as sdk_exceptions

from cinderbak.journal import Journal
from tests import localstack
from tests.functional.conftest import CINDERBAK
from tests.functional.test_daemon import wait_until
from tests.functional.test_run_once import MIB, _pattern, _restore, _row

KEEP3 = """
[policy:keep3]
schedule = every 1h
retention = last=3
full_every = 2
"""

HOLD = """
[policy:hold1]
schedule = every 1h
retention = last=1
full_every = 2
"""

ORPHAN = """
[policy:orphan1]
schedule = every 1h
retention = last=1
full_every = 0
"""


def _manual_backup(conn, volume_id, metadata=None):
    """A backup taken by hand (one at a time: the volume is backing-up)."""
    backup = conn.block_storage.create_backup(
        volume_id=volume_id, name="manual", metadata=metadata or {}
    )
    return conn.block_storage.wait_for_status(
        backup, status="available", failures=["error"], wait=300
    )


def _backups(admin, volume_id) -> dict[str, object]:
    """Every backup of a volume, in any project, by id."""
    return {
        b.id: b
        for b in admin.block_storage.backups(
            volume_id=volume_id, all_projects=True, details=True
        )
    }


def _runs(cinderbak, stack, policy, volumes, count):
    """`run-once` ``count`` times, writing new data before each; return
    the backup rows of each volume, oldest first."""
    made = {volume.id: [] for volume in volumes}
    for i in range(count):
        for volume in volumes:
            localstack.write_volume(
                stack, volume.id, i * MIB, _pattern(f"{volume.id}{i}", MIB)
            )
        rows = cinderbak.run(
            "run-once", "--policy", policy, "--no-audit", check=True
        )
        for volume in volumes:
            row = _row(rows, volume.id)
            assert row["status"] == "ok", row
            made[volume.id].append(row)
    return made


def _deletions(rows, volume_id):
    return [
        row["backup_id"]
        for row in rows
        if row["volume_id"] == volume_id and row["action"] == "delete"
    ]


def test_last_three_with_full_every_two_leaves_the_newest_chain(
    stack, alice, bob, admin, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config(KEEP3)
    volume = make_volume(alice, metadata={"cinderbak:policy": "keep3"})
    theirs = make_volume(bob, metadata={"cinderbak:policy": "keep3"})
    # Backups that are not ours, on the very volumes expiry works on;
    # taken first, so that none of them becomes a parent of ours.
    localstack.write_volume(stack, volume.id, 0, _pattern("pre", MIB))
    foreign = [
        _manual_backup(alice, volume.id),
        _manual_backup(
            alice,
            volume.id,
            {
                "cinderbak:owner": "another-deployment",
                "cinderbak:policy": "keep3",
            },
        ),
        _manual_backup(bob, theirs.id),
    ]
    for backup in foreign:
        cleanup.add("backup", backup.id)

    made = _runs(cinderbak, stack, "keep3", [volume, theirs], 6)

    # full_every = 2: a new full after two incrementals.
    kinds = ["full", "incremental", "incremental"] * 2
    assert [r["kind"] for r in made[volume.id]] == kinds
    assert [r["kind"] for r in made[theirs.id]] == kinds
    ours = [r["backup_id"] for r in made[volume.id]]
    bobs = [r["backup_id"] for r in made[theirs.id]]
    before = {**_backups(admin, volume.id), **_backups(admin, theirs.id)}
    assert len(before) == 15

    # last=3 keeps the newest chain (4, 5, 6); the old chain goes, newest
    # first. The plan says so for every backup, and deletes nothing.
    plan = cinderbak.run("plan", "--policy", "keep3")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert _deletions(plan, volume.id) == ours[2::-1]
    assert _deletions(plan, theirs.id) == bobs[2::-1]
    by_id = {row["backup_id"]: row for row in plan}
    assert len(by_id) == 15
    assert "last=3 #1" in by_id[ours[5]]["reasons"]
    assert "ancestor of kept" in by_id[ours[3]]["reasons"]
    assert "not ours" in by_id[foreign[1].id]["reasons"]
    assert by_id[foreign[1].id]["action"] == "keep"
    only = cinderbak.run("plan", "--volume", theirs.id)
    assert {row["volume_id"] for row in only} == {theirs.id}

    dry = cinderbak.run("expire", "--policy", "keep3", "--dry-run")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert _deletions(dry, volume.id) == ours[2::-1]
    assert {row["result"] for row in dry} == {"dry run: would delete"}
    assert set(_backups(admin, volume.id)) | set(
        _backups(admin, theirs.id)
    ) == set(before)

    done = cinderbak.run("expire", "--policy", "keep3")

    assert cinderbak.last_returncode == 0, (done, cinderbak.last_stderr)
    assert _deletions(done, volume.id) == ours[2::-1]
    assert _deletions(done, theirs.id) == bobs[2::-1]
    # Cinder never refused a deletion: the order was right.
    assert {row["result"] for row in done} == {"deleted"}, done
    left = _backups(admin, volume.id)
    assert set(left) == {*ours[3:], foreign[0].id, foreign[1].id}
    assert set(_backups(admin, theirs.id)) == {*bobs[3:], foreign[2].id}
    # Backups of others are exactly as they were.
    assert left[foreign[1].id].metadata == foreign[1].metadata
    assert left[foreign[0].id].metadata == {}
    # The pass's report: what it deleted and how much it kept (ours and
    # others' backups alike).
    journal = Journal.from_url(
        f"sqlite:///{cinderbak.path.parent}/journal.sqlite"
    )
    [run] = journal.runs(policy="expire:keep3")
    shown = subprocess.run(
        [CINDERBAK, "--config-file", cinderbak.path, "runs", "show", run.id],
        env=cinderbak.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "expiry run of policy keep3" in shown
    assert "expiry:     6 deleted, 0 failed, 0 skipped, 9 kept" in shown
    assert f"{ours[0]} of volume {volume.id}" in shown
    # The pass saw both projects left with nothing retention could ever
    # delete: a second pass neither lists them nor finds anything to do.
    assert set(journal.quiet_looks("keep3")) == {
        volume.project_id,
        theirs.project_id,
    }
    assert cinderbak.run("expire", "--policy", "keep3") == []
    assert cinderbak.last_returncode == 0
    assert "keep3: 2 projects not listed" in cinderbak.last_stderr
    # The newest kept backup restores to exactly the volume's data.
    restored = _restore(alice, ours[5], cleanup)
    assert localstack.read_volume_md5(stack, restored) == (
        localstack.read_volume_md5(stack, volume.id)
    )


def test_a_held_backup_survives_and_keeps_its_chain(
    stack, alice, admin, make_volume, cinderbak_config
):
    cinderbak = cinderbak_config(HOLD)
    volume = make_volume(alice, metadata={"cinderbak:policy": "hold1"})
    made = _runs(cinderbak, stack, "hold1", [volume], 2)[volume.id]
    first, second = (row["backup_id"] for row in made)
    backup = alice.block_storage.get_backup(second)
    assert backup.is_incremental
    # What a tenant meets: Cinder has no /backups/{id}/metadata, so the
    # SDK's set_backup_metadata fails, and PUT /backups/{id} (3.43)
    # *replaces* the metadata: the tenant must send our marks back.
    try:
        alice.block_storage.set_backup_metadata(second, x="y")
    except sdk_exceptions.NotFoundException:
        pass
    else:
        raise AssertionError("Cinder grew a backup metadata API")
    alice.block_storage.update_backup(
        second, metadata={**backup.metadata, "cinderbak:hold": "true"}
    )
    held = alice.block_storage.get_backup(second).metadata
    assert held == {**backup.metadata, "cinderbak:hold": "true"}
    made = _runs(cinderbak, stack, "hold1", [volume], 2)[volume.id]
    third, fourth = (row["backup_id"] for row in made)
    assert [row["kind"] for row in made] == ["incremental", "full"]

    rows = cinderbak.run("expire", "--policy", "hold1")

    assert cinderbak.last_returncode == 0, (rows, cinderbak.last_stderr)
    # last=1 keeps the new full (4); 3 goes; 2 is held and keeps 1.
    assert [(r["backup_id"], r["result"]) for r in rows] == [
        (third, "deleted")
    ]
    assert set(_backups(admin, volume.id)) == {first, second, fourth}
    plan = {r["backup_id"]: r for r in cinderbak.run("plan")}
    assert set(plan) == {first, second, fourth}
    assert {r["action"] for r in plan.values()} == {"keep"}
    assert "held" in plan[second]["reasons"]
    assert f"ancestor of kept {second}" in plan[first]["reasons"]


def test_a_deleted_volume_keeps_its_newest_backup(
    stack, alice, admin, make_volume, cinderbak_config, cleanup
):
    cinderbak = cinderbak_config(ORPHAN)
    volume = make_volume(alice, metadata={"cinderbak:policy": "orphan1"})
    made = _runs(cinderbak, stack, "orphan1", [volume], 2)[volume.id]
    older, newer = (row["backup_id"] for row in made)
    cleanup.add("backup", older)
    cleanup.add("backup", newer)
    alice.block_storage.delete_volume(volume.id)
    alice.block_storage.wait_for_delete(volume, wait=120)

    plan = {r["backup_id"]: r for r in cinderbak.run("plan")}
    assert plan[newer]["action"] == "keep"
    assert "volume deleted" in plan[older]["reasons"]
    rows = cinderbak.run("expire")

    assert cinderbak.last_returncode == 0, (rows, cinderbak.last_stderr)
    assert [(r["backup_id"], r["result"]) for r in rows] == [
        (older, "deleted")
    ]
    assert set(_backups(admin, volume.id)) == {newer}


def test_service_ownership_expires_in_the_service_project(
    stack, alice, admin, make_volume, cinderbak_config, tmp_path
):
    cinderbak = cinderbak_config("""
        [policy:vault1]
        schedule = every 1h
        retention = last=1
        full_every = 0
        ownership = service
        """)
    volume = make_volume(alice, metadata={"cinderbak:policy": "vault1"})
    made = _runs(cinderbak, stack, "vault1", [volume], 2)[volume.id]
    older, newer = (row["backup_id"] for row in made)

    rows = cinderbak.run("expire", "--policy", "vault1")

    assert cinderbak.last_returncode == 0, (rows, cinderbak.last_stderr)
    assert [(r["backup_id"], r["result"]) for r in rows] == [
        (older, "deleted")
    ]
    assert rows[0]["project_id"] == stack.project_ids["service"]
    assert set(_backups(admin, volume.id)) == {newer}
    # The pass is a journal run; each deletion a step, done.
    journal = Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")
    (run,) = journal.runs(policy="expire:vault1")
    assert run.state == "succeeded"
    assert run.summary == {"deleted": 1, "failed": 0, "skipped": 0}
    (step,) = journal.get_run(run.id).steps
    assert (step.kind, step.state) == ("backup_delete", "done")
    assert (step.target, step.resource_id) == (volume.id, older)
    journal.close()


def test_a_pass_killed_mid_deletion_is_finished_by_the_next(
    stack, alice, admin, make_volume, cinderbak_config
):
    """kill -9 while a pass deletes: the next pass finishes the work, and
    the backup retention keeps is never touched."""
    cinderbak = cinderbak_config("""
        [policy:kill1]
        schedule = every 1h
        retention = last=1
        full_every = 0
        """)
    volume = make_volume(alice, metadata={"cinderbak:policy": "kill1"})
    made = _runs(cinderbak, stack, "kill1", [volume], 3)[volume.id]
    *older, newest = (row["backup_id"] for row in made)
    journal = Journal.from_url(
        f"sqlite:///{cinderbak.path.parent}/journal.sqlite"
    )

    def deleting():
        return [
            step
            for run in journal.unfinished_runs(any_host=True)
            for step in run.steps or ()
            if step.kind == "backup_delete"
        ]

    process = subprocess.Popen(
        [CINDERBAK, "--config-file", cinderbak.path, "expire"],
        env=cinderbak.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(deleting, 120, "the pass's first deletion", interval=0.05)
    finally:
        process.kill()
        process.wait(30)

    def only_the_newest_left():
        cinderbak.run("expire", "--policy", "kill1")
        return set(_backups(admin, volume.id)) == {newest} or None

    wait_until(only_the_newest_left, 300, "the next passes", interval=5)
    assert admin.block_storage.get_backup(newest).status == "available"
    # The killed pass's deletion was recorded before it was asked for.
    assert {s.resource_id for s in deleting()} - {None} <= set(older)
    assert deleting(), "the killed pass left no record of its deletion"
    journal.close()
