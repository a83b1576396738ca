"""Wait for Cinder, set the default quota class, and prove readiness
functionally. Runs in the keystone venv (openstacksdk) after the Cinder
services were (re)started.

Readiness = as admin: a 1 GiB volume becomes available, a backup of it
(RBD export-diff from cluster A into cluster B) becomes available, then
both are deleted. os-services alone can show stale 'up' rows for 60 s
after a restart, so only a real operation counts.
"""

import sys
import time

import lsconf
import openstack
import requests

# Default quota class: finite (so quota accounting stays exercised and a
# runaway test fails with 413 instead of filling an OSD) but far
# above what any test needs. Per-project limits can still be lowered.
QUOTAS = {
    "volumes": 200,
    "snapshots": 1000,
    "backups": 1000,
    "gigabytes": 1000,
    "backup_gigabytes": 5000,
    "per_volume_gigabytes": 100,
    "groups": 50,
}
SERVICES = ("cinder-scheduler", "cinder-volume", "cinder-backup")
READINESS = "localstack-readiness"


def step(msg: str) -> None:
    print(f"[setup_cinder {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(what: str, timeout: float, check) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.5)
    sys.exit(
        f"timed out after {timeout:.0f}s waiting for {what} "
        f"(last error: {last!r})"
    )


def services_up(conn) -> bool:
    # microversion 3.0: from 3.49 on, os-services makes a scheduler RPC that
    # can hang for rpc_response_timeout right after a start
    resp = conn.block_storage.get(
        "/os-services", microversion="3.0", raise_exc=True
    )
    states = {s["binary"]: s["state"] for s in resp.json()["services"]}
    return all(states.get(b) == "up" for b in SERVICES)


def wait_status(conn, get, res, want: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = get(res.id)
        if res.status == want:
            return res
        if res.status.startswith("error"):
            return res
        time.sleep(0.5)
    sys.exit(
        f"timed out after {timeout:.0f}s: {res.id} is {res.status}, "
        f"want {want}"
    )


def delete_backup(conn, backup) -> None:
    """Delete a readiness backup. The Ceph backup driver does not support
    force delete (405), so a backup stuck in a transient state is reset to
    error first, which a plain delete accepts."""
    bs = conn.block_storage
    if backup.status not in ("available", "error"):
        bs.reset_backup_status(backup, "error")
    bs.delete_backup(backup)
    bs.wait_for_delete(backup, interval=0.5, wait=120)


def remove_leftovers(conn) -> None:
    """Delete readiness volumes/backups an interrupted earlier run left."""
    bs = conn.block_storage
    for backup in bs.backups(name=READINESS):
        delete_backup(conn, backup)
    for vol in bs.volumes(name=READINESS):
        bs.delete_volume(vol, force=True)
        bs.wait_for_delete(vol, interval=0.5, wait=120)


def readiness(conn) -> None:
    try:
        check(conn)
    finally:
        remove_leftovers(conn)


def check(conn) -> None:
    bs = conn.block_storage
    for attempt in range(1, 6):
        vol = bs.create_volume(size=1, name=READINESS)
        vol = wait_status(conn, bs.get_volume, vol, "available", 120)
        if vol.status == "available":
            break
        step(
            f"readiness volume {vol.id} went {vol.status} "
            f"(attempt {attempt}); retrying"
        )
        bs.delete_volume(vol, force=True)
        time.sleep(2)
    else:
        sys.exit("could not create an available volume")
    step(f"volume {vol.id} available")
    # Right after a restart the scheduler may not have the backup service's
    # capability report yet ("Service not found for creating backup"); it
    # comes within backup_driver_stats_polling_interval.
    deadline = time.monotonic() + 150
    while True:
        backup = bs.create_backup(volume_id=vol.id, name=READINESS)
        backup = wait_status(conn, bs.get_backup, backup, "available", 180)
        if backup.status == "available":
            break
        step(
            f"readiness backup {backup.id} is {backup.status}: "
            f"{backup.fail_reason}"
        )
        delete_backup(conn, backup)
        wait_status(conn, bs.get_volume, vol, "available", 60)
        if time.monotonic() > deadline:
            sys.exit("no backup could be made")
        time.sleep(2)
    step(f"backup {backup.id} available")
    bs.delete_backup(backup)
    bs.wait_for_delete(backup, interval=0.5, wait=120)
    bs.delete_volume(vol)
    bs.wait_for_delete(vol, interval=0.5, wait=120)
    step("readiness volume and backup deleted")


def main() -> None:
    step("waiting for the API")
    wait(
        "cinder-api",
        120,
        lambda: (
            requests.get(
                lsconf.CINDER_URL.rsplit("/v3", 1)[0] + "/", timeout=5
            ).status_code
            == 300
        ),
    )
    conn = openstack.connect(cloud="localstack-admin")
    endpoint = conn.block_storage.get_endpoint()
    if endpoint.rstrip("/") != lsconf.CINDER_URL.rstrip("/"):
        sys.exit(
            f"catalog gives block-storage endpoint {endpoint}, "
            f"expected {lsconf.CINDER_URL}"
        )
    mv = conn.block_storage.get_endpoint_data().max_microversion
    step(f"block-storage endpoint {endpoint}, max microversion {mv}")
    step("waiting for scheduler, volume and backup services")
    wait("cinder services up", 120, lambda: services_up(conn))
    resp = conn.block_storage.put(
        "/os-quota-class-sets/default",
        json={"quota_class_set": QUOTAS},
        raise_exc=True,
    )
    step(f"default quota class: {resp.json()['quota_class_set']}")
    remove_leftovers(conn)
    readiness(conn)


if __name__ == "__main__":
    main()
