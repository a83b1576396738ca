"""Smoke tests of the local stack itself (tools/localstack): Keystone users
and scopes, Cinder on Ceph cluster A, the Ceph backup driver into cluster B
(full, then an RBD export-diff incremental), restore, tenant isolation and
the read-only cephx user.

Needs root and a machine where `tools/localstack up` works; takes about a
minute once the stack runs.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator

import openstack
import pytest
from openstack import exceptions as sdk_exc

from tests import localstack

MIB = 1024 * 1024
TIMEOUT = 180


@pytest.fixture(scope="session")
def stack() -> localstack.Stack:
    """The local stack, started if needed (the lead moves this to conftest)."""
    described = localstack.ensure_up()
    os.environ["OS_CLIENT_CONFIG_FILE"] = described.clouds_yaml
    return described


def connect(
    stack: localstack.Stack, who: str
) -> openstack.connection.Connection:
    return openstack.connect(
        cloud=stack.cloud(who), block_storage_api_version="3"
    )


@pytest.fixture
def cleanup() -> Iterator[
    Callable[[openstack.connection.Connection, str, str], None]
]:
    """Register (conn, "volume"|"backup", id); all are deleted at teardown,
    newest first, even when the test failed."""
    made: list[tuple[openstack.connection.Connection, str, str]] = []
    yield lambda conn, kind, rid: made.append((conn, kind, rid))
    errors = []
    for conn, kind, rid in reversed(made):
        try:
            bs = conn.block_storage
            get, delete = (
                (bs.get_backup, bs.delete_backup)
                if kind == "backup"
                else (bs.get_volume, bs.delete_volume)
            )
            res = wait_final(get, rid)
            if res is not None:
                delete(rid, ignore_missing=True)
                bs.wait_for_delete(res, interval=0.5, wait=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            errors.append(f"{kind} {rid}: {exc!r}")
    assert not errors, errors


def wait_final(get, rid: str):
    """Wait until a volume/backup leaves its transitional state.
    Return it, or None if it is gone."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            res = get(rid)
        except sdk_exc.NotFoundException:
            return None
        if res.status in (
            "available",
            "error",
            "error_deleting",
            "error_restoring",
            "in-use",
        ):
            return res
        time.sleep(0.5)
    raise TimeoutError(f"{rid} still {res.status}")


def wait_available(get, rid: str):
    res = wait_final(get, rid)
    assert res is not None and res.status == "available", (
        f"{rid}: {getattr(res, 'status', 'gone')} "
        f"{getattr(res, 'fail_reason', '')}"
    )
    return res


def pattern(tag: str, size: int) -> bytes:
    """size bytes of deterministic, incompressible-looking data."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{tag}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_volume(conn, cleanup, name: str):
    vol = conn.block_storage.create_volume(
        size=1, name=f"lstest-{name}-{uuid.uuid4().hex[:6]}"
    )
    cleanup(conn, "volume", vol.id)
    return wait_available(conn.block_storage.get_volume, vol.id)


def test_every_cloud_authenticates_and_finds_cinder(stack):
    for who in ("admin", "cinderbak", "tenant-a", "tenant-b", "tenant-c"):
        conn = connect(stack, who)
        conn.authorize()
        assert conn.block_storage.get_endpoint().rstrip(
            "/"
        ) == stack.cinder_url.rstrip("/")
    assert set(stack.projects) >= {
        "admin",
        "service",
        "tenant-a",
        "tenant-b",
        "tenant-c",
    }


def test_cinderbak_scopes(stack):
    """cinderbak may act in tenant-a and tenant-b; no role on tenant-c."""

    def scoped(project: str):
        return openstack.connect(
            auth_url=stack.keystone_url,
            username="cinderbak",
            password=stack.password("cinderbak"),
            project_name=project,
            user_domain_name="Default",
            project_domain_name="Default",
            region_name=stack.raw["region"],
            load_yaml_config=False,
            load_envvars=False,
        )

    for project in ("tenant-a", "tenant-b"):
        scoped(project).authorize()
    with pytest.raises(sdk_exc.SDKException, match="HTTP 401"):
        scoped("tenant-c").authorize()


def test_full_incremental_restore_across_clusters(stack, cleanup):
    alice = connect(stack, "tenant-a")
    bs = alice.block_storage
    vol = make_volume(alice, cleanup, "chain")
    localstack.write_volume(stack, vol.id, 0, pattern("base", 8 * MIB))

    full = bs.create_backup(volume_id=vol.id, name="lstest-full")
    cleanup(alice, "backup", full.id)
    full = wait_available(bs.get_backup, full.id)
    assert not full.is_incremental
    image, full_snap = localstack.backup_snapshot(stack, full.id)
    assert image.startswith(f"volume-{vol.id}.backup.")
    assert localstack.diff_bytes(stack, "b", image, None, full_snap) >= 8 * MIB
    # the driver keeps its source snapshot on A for the next diff
    assert any(
        s.startswith(f"backup.{full.id}.snap.")
        for s in localstack.snapshots_of_volume(stack, vol.id)
    )

    # rewrite 1 MiB inside the region already written: an extent-exact diff
    localstack.write_volume(stack, vol.id, 2 * MIB, pattern("change", MIB))
    incr = bs.create_backup(
        volume_id=vol.id, name="lstest-incr", is_incremental=True
    )
    cleanup(alice, "backup", incr.id)
    incr = wait_available(bs.get_backup, incr.id)
    assert incr.is_incremental

    incr_image, _ = localstack.backup_snapshot(stack, incr.id)
    assert incr_image == image  # a new snapshot on the same base image
    assert set(localstack.backup_images(stack)[image]) >= {
        full_snap,
        localstack.backup_snapshot(stack, incr.id)[1],
    }
    changed = localstack.backup_diff_bytes(stack, full.id, incr.id)
    assert MIB <= changed <= MIB + 64 * 1024, changed

    resp = bs.post(
        f"/backups/{incr.id}/restore",
        json={"restore": {"name": "lstest-restored"}},
        raise_exc=True,
    )
    restored_id = resp.json()["restore"]["volume_id"]
    cleanup(alice, "volume", restored_id)
    wait_available(bs.get_volume, restored_id)
    wait_available(bs.get_backup, incr.id)
    assert localstack.read_volume_md5(
        stack, restored_id
    ) == localstack.read_volume_md5(stack, vol.id)
    assert (
        localstack.read_volume_md5(stack, vol.id, size=10 * MIB)
        == hashlib.md5(
            pattern("base", 2 * MIB)
            + pattern("change", MIB)
            + pattern("base", 8 * MIB)[3 * MIB :]
            + bytes(2 * MIB)
        ).hexdigest()
    )


def test_alice_cannot_see_bobs_volume(stack, cleanup):
    alice, bob = connect(stack, "tenant-a"), connect(stack, "tenant-b")
    vol = make_volume(bob, cleanup, "private")
    assert vol.project_id == stack.projects["tenant-b"]
    assert vol.id not in {v.id for v in alice.block_storage.volumes()}
    with pytest.raises(sdk_exc.NotFoundException):
        alice.block_storage.get_volume(vol.id)


def test_readonly_ceph_user_reads_but_cannot_write(stack, cleanup):
    import rados
    import rbd

    admin = connect(stack, "admin")
    vol = make_volume(admin, cleanup, "ro")
    ro = stack.readonly_user
    assert ro.client == "client.cinderbak-ro"
    with localstack.ioctx(stack, "a", user=ro) as io:
        assert f"volume-{vol.id}" in rbd.RBD().list(io)
        with rbd.Image(io, f"volume-{vol.id}", read_only=True) as img:
            assert img.size() == 1024**3
            assert img.read(0, 4096) == bytes(4096)
        with pytest.raises(
            (
                rbd.PermissionError,
                rados.PermissionDeniedError,
                rbd.ReadOnlyImage,
            )
        ):
            with rbd.Image(io, f"volume-{vol.id}") as img:
                img.write(b"x" * 4096, 0)
        with pytest.raises((rbd.PermissionError, rados.PermissionDeniedError)):
            rbd.RBD().create(io, f"lstest-ro-{uuid.uuid4().hex[:6]}", MIB)
