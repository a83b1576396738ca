"""A tenant opts a volume in; the running cinderbak daemon backs it up.

Everything goes through the cloud's APIs, as a tenant would see it: the
volume's metadata says what happened, the backup lists show the backups,
a restore gives the data back. One volume serves the whole module (a
scheduled backup is the slow part); it and every backup of it are deleted
at the end, also after a failure.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import Cleanup

OPT_IN = "cinderbak:policy"
LAST_STATUS = "cinderbak:last_status"
LAST_BACKUP = "cinderbak:last_backup"
OWNER = "cinderbak:owner"
MIB = 1024 * 1024


@dataclasses.dataclass
class OptedIn:
    volume_id: str
    size: int
    md5: str | None
    seen: list[str] = dataclasses.field(default_factory=list)
    """Backup ids reported in cinderbak:last_backup, oldest first."""


def _pattern(label: str, size: int) -> bytes:
    block = (label.encode() * (4096 // len(label) + 1))[:4096]
    return block * (size // 4096)


def wait_for_new_backup(tenant, settings, opted: OptedIn) -> str:
    """Wait until the volume reports a backup not seen before; return its
    id. Fail at once when the daemon reports an error for the volume."""
    deadline = time.monotonic() + settings.timeout
    meta = {}
    while time.monotonic() < deadline:
        meta = tenant.block_storage.get_volume(opted.volume_id).metadata
        status = meta.get(LAST_STATUS, "")
        if status.startswith("error"):
            pytest.fail(f"cinderbak reports for the volume: {status}")
        backup_id = meta.get(LAST_BACKUP, "").split(" ")[0]
        if status == "ok" and backup_id and backup_id not in opted.seen:
            opted.seen.append(backup_id)
            return backup_id
        time.sleep(3)
    pytest.fail(
        f"no new scheduled backup of volume {opted.volume_id} within "
        f"{settings.timeout:.0f} s (policy {settings.policy!r}; is the "
        f"daemon running with it?); metadata: {meta}"
    )


def get_backup(tenant, admin, backup_id: str):
    """The backup as its owner sees it: the tenant for ownership=project,
    else the admin (ownership=service)."""
    found = tenant.block_storage.find_backup(backup_id, ignore_missing=True)
    if found is not None:
        return tenant, tenant.block_storage.get_backup(backup_id)
    return admin, admin.block_storage.get_backup(backup_id)


def our_backups(admin, volume_id: str) -> list:
    return [
        b
        for b in admin.block_storage.backups(
            details=True, volume_id=volume_id, all_projects=True
        )
        if OWNER in (b.metadata or {})
    ]


@pytest.fixture(scope="module")
def cleanup(admin):
    tracker = Cleanup(admin)
    yield tracker
    tracker.run()


@pytest.fixture(scope="module")
def opted(settings, tenant, cleanup, rbd_stack) -> OptedIn:
    storage = tenant.block_storage
    volume = storage.create_volume(
        size=1, name=f"cinderbak-it-{uuid.uuid4().hex[:8]}"
    )
    cleanup.volume(volume.id)
    storage.wait_for_status(
        volume, status="available", failures=["error"], wait=300
    )
    md5 = None
    if rbd_stack is not None:
        from tests import localstack

        localstack.write_volume(
            rbd_stack, volume.id, 0, _pattern("cinderbak-it", 4 * MIB)
        )
        md5 = localstack.read_volume_md5(rbd_stack, volume.id)
    # The tenant opts in: nothing else tells the daemon about the volume.
    storage.set_volume_metadata(volume, **{OPT_IN: settings.policy})
    return OptedIn(volume_id=volume.id, size=volume.size, md5=md5)


@pytest.fixture(scope="module")
def first_backup(settings, tenant, opted) -> str:
    return wait_for_new_backup(tenant, settings, opted)


def test_scheduled_backup_is_reported_on_the_volume(
    settings, tenant, admin, opted, first_backup
):
    meta = tenant.block_storage.get_volume(opted.volume_id).metadata
    assert meta[OPT_IN] == settings.policy
    assert meta[LAST_STATUS] == "ok"
    assert meta[LAST_BACKUP].startswith(first_backup + " ")
    owner, backup = get_backup(tenant, admin, first_backup)
    owner.block_storage.wait_for_status(
        backup, status="available", failures=["error"], wait=300
    )
    assert backup.volume_id == opted.volume_id
    assert backup.metadata[OWNER]
    assert backup.metadata["cinderbak:policy"] == settings.policy
    assert backup.metadata["cinderbak:consistency"] in ("quiesced", "crash")
    assert not backup.is_incremental  # the first backup of a volume


def test_restore_gives_the_volume_back(
    tenant, admin, cleanup, opted, first_backup, rbd_stack
):
    owner, backup = get_backup(tenant, admin, first_backup)
    storage = owner.block_storage
    restore = storage.restore_backup(
        backup, name=f"cinderbak-it-restore-{uuid.uuid4().hex[:6]}"
    )
    restored_id = (
        restore["volume_id"]
        if isinstance(restore, dict)
        else restore.volume_id
    )
    cleanup.volume(restored_id)
    restored = storage.wait_for_status(
        storage.get_volume(restored_id),
        status="available",
        failures=["error", "error_restoring"],
        wait=600,
    )
    storage.wait_for_status(
        storage.get_backup(first_backup),
        status="available",
        failures=["error"],
        wait=300,
    )
    assert restored.size == opted.size
    # Cinder restores the backed-up volume's metadata onto the new volume,
    # the opt-in among it: the copy would be backed up too. Opt it out.
    if OPT_IN in (restored.metadata or {}):
        storage.delete_volume_metadata(restored, keys=[OPT_IN])
    if rbd_stack is None:
        return  # no RBD access: size and status are what can be compared
    from tests import localstack

    assert localstack.read_volume_md5(rbd_stack, restored_id) == opted.md5


def test_retention_after_a_few_runs(
    settings, tenant, admin, opted, first_backup, rbd_stack
):
    if settings.keep is None:
        pytest.skip("CINDERBAK_IT_KEEP (most backups retention keeps) unset")
    if settings.runs <= settings.keep:
        pytest.skip("CINDERBAK_IT_RUNS must exceed CINDERBAK_IT_KEEP")
    for run in range(1, settings.runs):
        if rbd_stack is not None:
            from tests import localstack

            localstack.write_volume(
                rbd_stack, opted.volume_id, run * MIB, _pattern(f"r{run}", MIB)
            )
        wait_for_new_backup(tenant, settings, opted)
        if settings.expire_command:
            subprocess.run(
                shlex.split(settings.expire_command),
                check=True,
                env=os.environ,
                timeout=settings.timeout,
            )
    assert len(opted.seen) >= settings.runs
    # Expiry may trail the backup a little: wait for it to settle.
    deadline = time.monotonic() + settings.timeout
    while True:
        ours = our_backups(admin, opted.volume_id)
        settled = all(b.status in ("available", "error") for b in ours)
        if settled and len(ours) <= settings.keep:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(ours)} backups of ours remain after "
                f"{len(opted.seen)} runs; retention keeps "
                f"{settings.keep}: "
                + ", ".join(f"{b.id} {b.status}" for b in ours)
            )
        time.sleep(3)
    ids = {b.id for b in ours}
    # Expiry deleted some of the scheduled backups, never the newest one,
    # and never a full that a kept incremental still depends on.
    assert set(opted.seen) - ids
    assert opted.seen[-1] in ids
    if any(b.is_incremental for b in ours):
        assert any(not b.is_incremental for b in ours)
