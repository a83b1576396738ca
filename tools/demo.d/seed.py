"""The demo's tenant side: a volume of tenant-a opted in, data written.

Usage: seed.py write base|change   (creates the volume on first use)
       seed.py show                (the volume's backups and cluster B)
Run with the project venv's python; reads the local stack's stack.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys

import openstack
import rados
import rbd

REPO = pathlib.Path(__file__).resolve().parents[2]
STATE = pathlib.Path(os.environ.get("LOCALSTACK_DIR", REPO / ".localstack"))
STACK = json.loads((STATE / "stack.json").read_text())
NAME = "cinderbak-demo"
MIB = 1024 * 1024
# (offset, size) of the writes: a full 16 MiB first, then 1 MiB inside it,
# so the incremental's diff on cluster B is about 1 MiB.
WRITES = {"base": (0, 16 * MIB), "change": (4 * MIB, MIB)}


def tenant() -> openstack.connection.Connection:
    return openstack.connect(
        cloud=STACK["clouds"]["tenant-a"], block_storage_api_version="3"
    )


def demo_volume(conn):
    for volume in conn.block_storage.volumes(name=NAME):
        return volume
    volume = conn.block_storage.create_volume(
        name=NAME, size=1, metadata={"cinderbak:policy": "demo"}
    )
    return conn.block_storage.wait_for_status(volume, "available", wait=120)


def cluster(letter: str) -> rados.Rados:
    ceph = STACK["ceph"][letter]
    # Connects on entering its ``with`` block.
    return rados.Rados(
        conffile=ceph["conf"],
        rados_id="admin",
        conf={
            "keyring": ceph["admin"]["keyring"],
            "client_mount_timeout": "10",
        },
    )


def write(label: str) -> None:
    volume = demo_volume(tenant())
    offset, size = WRITES[label]
    block = hashlib.sha256(label.encode()).digest() * (MIB // 32)
    with (
        cluster("a") as handle,
        handle.open_ioctx(STACK["ceph"]["a"]["pool"]) as ioctx,
        rbd.Image(ioctx, f"volume-{volume.id}") as image,
    ):
        for start in range(offset, offset + size, MIB):
            image.write(block, start)
        image.flush()
    print(f"demo: wrote {size // MIB} MiB ({label}) into volume {volume.id}")


def show() -> None:
    conn = tenant()
    volume = demo_volume(conn)
    print(f"demo volume {volume.id} metadata:")
    for key, value in sorted(
        conn.block_storage.get_volume(volume).metadata.items()
    ):
        print(f"  {key} = {value}")
    print("its backups, as tenant-a sees them:")
    for backup in conn.block_storage.backups(volume_id=volume.id):
        kind = "incremental" if backup.is_incremental else "full"
        print(f"  {backup.id} {backup.created_at} {kind} {backup.status}")
    print("on Ceph cluster B (pool backups):")
    with (
        cluster("b") as handle,
        handle.open_ioctx(STACK["ceph"]["b"]["pool"]) as ioctx,
    ):
        for name in sorted(rbd.RBD().list(ioctx)):
            if volume.id not in name:
                continue
            with rbd.Image(ioctx, name, read_only=True) as image:
                for snap in image.list_snaps():
                    print(f"  {name}@{snap['name']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"] and sys.argv[2:3] in (["base"], ["change"]):
        write(sys.argv[2])
    elif sys.argv[1:] == ["show"]:
        show()
    else:
        sys.exit(__doc__)
