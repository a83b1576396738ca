"""Freeze window (freeze issued -> thaw done) for 1 and 4 volumes of a
server, in both transfer modes, on the local stack.

Usage: python bench/bench_freeze_window.py [--repeat N]
Needs the local stack up (tools/localstack up). The guest is libvirt's
test driver, so the numbers measure cinderbak + Cinder + Ceph, not a
guest agent (fsFreeze on the tiny real guest adds ~10 ms, see docs).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import textwrap
import time
import uuid

import libvirt
import openstack

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cinderbak import service  # noqa: E402
from tests import configs, localstack  # noqa: E402

SERVER = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # test:///default's domain


def attach(conn, volume_id: str) -> str:
    body = {"attachment": {"volume_uuid": volume_id, "instance_uuid": SERVER}}
    response = conn.block_storage.post(
        "/attachments", json=body, microversion="3.54"
    )
    attachment_id = response.json()["attachment"]["id"]
    conn.block_storage.post(
        f"/attachments/{attachment_id}/action",
        json={"os-complete": None},
        microversion="3.44",
    )
    return attachment_id


def config(stack, workdir: pathlib.Path, mode: str) -> pathlib.Path:
    ceph_a, readonly = stack.ceph("a"), stack.readonly_user
    path = workdir / f"{mode}.conf"
    path.write_text(
        textwrap.dedent(f"""\
        [DEFAULT]
        deployment_id = bench-{uuid.uuid4().hex}
        poll_interval = 0.5
        state_path = {workdir}
        [cloud]
        cloud = localstack-cinderbak
        [journal]
        connection = sqlite:///{workdir}/{mode}.sqlite
        [consistency]
        quiescer = libvirt
        [libvirt]
        uri_template = test:///default
        [limits]
        max_in_flight = 8
        max_in_flight_per_project = 8
        [volume_cluster]
        conf = {ceph_a.conf}
        user = {readonly.user}
        keyring = {readonly.keyring}
        pools = {ceph_a.pool}
        [policy:bench]
        schedule = every 1h
        transfer_mode = {mode}
        """)
    )
    return path


def measure(stack, tenant, workdir, mode: str, count: int) -> float:
    volumes = [
        tenant.block_storage.create_volume(
            size=1,
            name=f"bench-{uuid.uuid4().hex[:6]}",
            metadata={"cinderbak:policy": "bench"},
        )
        for _ in range(count)
    ]
    try:
        for volume in volumes:
            tenant.block_storage.wait_for_status(volume, "available", wait=120)
            attach(tenant, volume.id)
        parts = configs.parts_from(config(stack, workdir, mode))
        try:
            outcomes = service.run_once(parts, ["bench"], audit=False)
        finally:
            parts.close()
        windows = {o.freeze_seconds for o in outcomes}
        assert len(windows) == 1 and all(
            o.consistency == "quiesced" for o in outcomes
        ), outcomes
        return windows.pop()
    finally:
        cleanup(tenant, volumes)


def cleanup(conn, volumes) -> None:
    """Detach and delete the volumes; request their backups' deletion.

    A volume can go before its backups, so nothing waits on the backup
    service, which other work may be keeping busy.
    """
    storage = conn.block_storage
    for volume in volumes:
        for attachment in storage.attachments(volume_id=volume.id):
            storage.delete_attachment(attachment)
        for backup in storage.backups(volume_id=volume.id):
            storage.wait_for_status(backup, "available", wait=600)
            storage.delete_backup(backup)
        storage.wait_for_status(
            storage.get_volume(volume.id), "available", wait=120
        )
        storage.delete_volume(volume, cascade=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stack = localstack.load_stack()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(stack.clouds_yaml)
    tenant = openstack.connect(
        cloud="localstack-tenant-a", block_storage_api_version="3"
    )
    libvirt.registerErrorHandler(lambda *_: None, None)
    keep_alive = libvirt.open("test:///default")  # shared driver state
    print("mode      volumes  freeze window (s): median  min    max")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("snapshot", "volume"):
            for count in (1, 4):
                started = time.monotonic()
                samples = [
                    measure(stack, tenant, pathlib.Path(tmp), mode, count)
                    for _ in range(args.repeat)
                ]
                median = statistics.median(samples)
                print(
                    f"{mode:<9} {count:>7}  {median:>25.3f}"
                    f"  {min(samples):.3f}  {max(samples):.3f}"
                    f"   ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    keep_alive.close()


if __name__ == "__main__":
    main()
