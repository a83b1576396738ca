"""Restore time objective (RTO) on the local stack: full and incremental
restores per GiB of written data, and what verification adds.

For a volume of --size GiB filled with data, one full backup, then
--change MiB rewritten and one incremental, this prints how long Cinder
takes to restore each to a new volume (the tenant's restore) and how long
``cinderbak verify`` takes for each (restore over a scratch volume, then
a checksum of the restored image with a sparse copy and a filesystem
check), as seconds and MiB/s of volume size.

Usage: python bench/bench_restore.py [--size 2] [--change 64]
Needs the local stack up (tools/localstack up).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import openstack

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import localstack  # noqa: E402

MIB = 1024 * 1024
CINDERBAK = pathlib.Path(sys.executable).with_name("cinderbak")


def fill(stack, volume_id: str, start: int, length: int, seed: str) -> None:
    """Write incompressible-looking data, 16 MiB at a time."""
    block = hashlib.sha256(seed.encode()).digest() * (16 * MIB // 32)
    for offset in range(start, start + length, 16 * MIB):
        chunk = min(16 * MIB, start + length - offset)
        localstack.write_volume(stack, volume_id, offset, block[:chunk])


def wait(get, resource_id: str, status: str = "available") -> float:
    started = time.monotonic()
    while (current := get(resource_id)).status != status:
        if current.status.startswith("error"):
            raise RuntimeError(f"{resource_id}: {current.status}")
        time.sleep(0.5)
    return time.monotonic() - started


def restore_seconds(conn, backup_id: str) -> float:
    storage = conn.block_storage
    started = time.monotonic()
    answer = storage.restore_backup(backup_id, name="bench-restore")
    wait(storage.get_volume, answer.volume_id)
    wait(storage.get_backup, backup_id)
    seconds = time.monotonic() - started
    storage.delete_volume(answer.volume_id)
    return seconds


def cinderbak(config: pathlib.Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [str(CINDERBAK), "--config-file", str(config), *args, "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"cinderbak {args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.find("[") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2, help="GiB")
    parser.add_argument("--change", type=int, default=64, help="MiB")
    args = parser.parse_args()
    stack = localstack.ensure_up()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(stack.clouds_yaml)
    alice = openstack.connect(
        cloud=stack.cloud("tenant-a"), block_storage_api_version="3"
    )
    storage = alice.block_storage
    policy = f"bench-{uuid.uuid4().hex[:8]}"
    a = stack.ceph("a")
    ro = stack.readonly_user
    with tempfile.TemporaryDirectory() as tmp:
        config = pathlib.Path(tmp) / "cinderbak.conf"
        config.write_text(
            textwrap.dedent(f"""\
            [DEFAULT]
            deployment_id = {policy}
            poll_interval = 0.5
            state_path = {tmp}/state
            [cloud]
            cloud = {stack.cloud("cinderbak")}
            [journal]
            connection = sqlite:///{tmp}/journal.sqlite
            [volume_cluster]
            conf = {a.conf}
            user = {ro.user}
            keyring = {ro.keyring}
            pools = {a.pool}
            [policy:{policy}]
            schedule = every 1d
            transfer_mode = volume
            """)
        )
        volume = storage.create_volume(
            size=args.size, name=policy, metadata={"cinderbak:policy": policy}
        )
        wait(storage.get_volume, volume.id)
        try:
            fill(stack, volume.id, 0, args.size * 1024 * MIB, "full")
            backups = []
            for label in ("full", "incremental"):
                if label == "incremental":
                    fill(stack, volume.id, 0, args.change * MIB, "change")
                (row,) = cinderbak(
                    config, "run-once", "--policy", policy, "--no-audit"
                )
                backups.append((label, row["backup_id"], row["seconds"]))
            size_mib = args.size * 1024
            print(
                f"volume {args.size} GiB, fully written; incremental after "
                f"{args.change} MiB rewritten"
            )
            print(
                "backup       backup_s  restore_s  restore_MiB/s  "
                "verify_restore_MiB/s  verify_check_MiB/s"
            )
            for label, backup_id, backup_s in backups:
                seconds = restore_seconds(alice, backup_id)
                (verified,) = cinderbak(config, "verify", backup_id)
                assert verified["result"] == "ok", verified
                print(
                    f"{label:<12} {backup_s:>8.1f}  {seconds:>9.1f}  "
                    f"{size_mib / seconds:>13.0f}  "
                    f"{verified['restore_mib_s']:>20}  "
                    f"{verified['check_mib_s']:>18}"
                )
        finally:
            # Newest first: an incremental before its parent.
            for backup in list(storage.backups(volume_id=volume.id)):
                storage.delete_backup(backup.id)
                while storage.find_backup(backup.id, ignore_missing=True):
                    time.sleep(1)
            storage.delete_volume(volume.id)


if __name__ == "__main__":
    main()
