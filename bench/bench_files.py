"""File-level restore on the local stack: time to the first listing and
fetch throughput of ``cinderbak files``, against a full ``cinderbak
restore`` of the same backup.

A --size GiB volume gets an ext4 in a GPT partition holding --data MiB
of incompressible files (--files of them, under /data), is backed up
once (Cinder's Ceph driver: an RBD snapshot on cluster B), then:

* ``files ls BACKUP /data``: wall time of the whole command (CLI start,
  Cinder and Keystone look-ups, nbdkit, the libguestfs appliance boot,
  mount, listing);
* ``files get BACKUP /data --to DIR``: wall time, and the MiB/s of file
  data the command reports for its transfer phase; checksums compared;
* ``cinderbak restore BACKUP --new-volume``: wall time until the new
  volume is available (the files are not even reachable yet: the volume
  would still need attaching and mounting somewhere).

Usage: python bench/bench_files.py [--size 4] [--data 512] [--files 64]
Needs the local stack up (tools/localstack up) and libguestfs
(tools/setup-venv); LIBGUESTFS_BACKEND_SETTINGS=force_tcg where KVM is
unusable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import openstack

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import diskimages, localstack  # noqa: E402

MIB = 1024 * 1024
CINDERBAK = pathlib.Path(sys.executable).with_name("cinderbak")


def cinderbak(config: pathlib.Path, *args: str) -> tuple[list[dict], str]:
    out = subprocess.run(
        [str(CINDERBAK), "--config-file", str(config), *args, "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"cinderbak {args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.find("[") :]), out.stderr


def timed(config: pathlib.Path, *args: str) -> tuple[float, list[dict], str]:
    started = time.monotonic()
    rows, said = cinderbak(config, *args)
    return time.monotonic() - started, rows, said


def wait(get, resource_id: str) -> None:
    while (current := get(resource_id)).status != "available":
        if current.status.startswith("error"):
            raise RuntimeError(f"{resource_id}: {current.status}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4, help="volume GiB")
    parser.add_argument("--data", type=int, default=512, help="MiB of files")
    parser.add_argument("--files", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    stack = localstack.ensure_up()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(stack.clouds_yaml)
    alice = openstack.connect(
        cloud=stack.cloud("tenant-a"), block_storage_api_version="3"
    )
    storage = alice.block_storage
    policy = f"bench-{uuid.uuid4().hex[:8]}"
    a, b = stack.ceph("a"), stack.ceph("b")
    ro, bro = stack.readonly_user, stack.backup_readonly_user
    settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = pathlib.Path(tmp)
        config = work / "cinderbak.conf"
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
            [backup_cluster]
            conf = {b.conf}
            user = {bro.user}
            keyring = {bro.keyring}
            pools = {b.pool}
            [files]
            libguestfs_backend_settings = {settings.replace(":", ",")}
            [policy:{policy}]
            schedule = every 1d
            transfer_mode = volume
            """)
        )
        per_file = args.data * MIB // args.files
        source = work / "source"
        sums = {}
        for n in range(args.files):
            data = os.urandom(per_file)
            path = source / "data" / f"d{n % 8}" / f"f{n:04d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            sums[str(path.relative_to(source))] = hashlib.md5(
                data, usedforsecurity=False
            ).hexdigest()
        image = work / "disk.img"
        diskimages.build_ext4_gpt_from_dir(
            image, args.size * 1024 * MIB, source
        )
        volume = storage.create_volume(
            size=args.size, name=policy, metadata={"cinderbak:policy": policy}
        )
        wait(storage.get_volume, volume.id)
        restored = None
        try:
            diskimages.write_to_volume(stack, volume.id, image)
            image.unlink()
            (row,), _ = cinderbak(
                config, "run-once", "--policy", policy, "--no-audit"
            )
            backup_id = row["backup_id"]
            ls_s, rows, _ = timed(config, "files", "ls", backup_id, "/data")
            assert len(rows) == 8, rows
            to = work / "fetched"
            to.mkdir()
            get_s, rows, said = timed(
                config, "files", "get", backup_id, "/data", "--to", str(to)
            )
            got = {
                str(p.relative_to(to)): hashlib.md5(
                    p.read_bytes(), usedforsecurity=False
                ).hexdigest()
                for p in to.rglob("*.bin")
            }
            assert got == sums, "fetched files differ"
            transfer = re.search(r"in ([\d.]+) s \(([\d.]+) MiB/s\)", said)
            restore_s, (restored,), _ = timed(
                config, "restore", backup_id, "--new-volume", f"{policy}-r"
            )
            print(
                f"volume {args.size} GiB, {args.data} MiB in {args.files} "
                f"files (ext4 in a GPT partition), one full backup"
            )
            print(f"files ls, first listing (whole command)  {ls_s:7.1f} s")
            print(
                f"files get /data (whole command)          {get_s:7.1f} s  "
                f"{args.data / get_s:6.1f} MiB/s of files"
            )
            if transfer:
                print(
                    f"  of which the transfer                  "
                    f"{float(transfer[1]):7.1f} s  "
                    f"{float(transfer[2]):6.1f} MiB/s"
                )
            rate = args.size * 1024 / restore_s
            print(
                f"cinderbak restore (new volume available) {restore_s:7.1f} "
                f"s  {rate:6.1f} MiB/s of volume"
            )
        finally:
            if restored:
                storage.delete_volume(restored["volume_id"])
            for backup in list(storage.backups(volume_id=volume.id)):
                storage.delete_backup(backup.id)
                while storage.find_backup(backup.id, ignore_missing=True):
                    time.sleep(1)
            storage.delete_volume(volume.id)


if __name__ == "__main__":
    main()
