"""Backup cycles against the local stack: requests, wall time, busy share.

10 x 1 GiB volumes of tenant-a (one also has a manual backup of the
tenant's), 3 cycles with 4 MiB + 4 KiB written into each volume between
cycles, in one process (as the daemon would run them). Per cycle it
prints the Cinder and Keystone requests cinderbak made (read from the
services' own access logs), requests per completed backup, wall time,
and the backup service's busy share: the time some backup was
``creating`` over the cycle's wall time. With ``--write-back`` the
volumes' status keys are written too. Then 2 projects with 8 and 2
volumes: when each project's first backup started.

    python bench/bench_cycle.py [--write-back] [--volumes 10] [--cycles 3]

Needs ``tools/localstack up``; run nothing else against the stack then.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import sys
import tempfile
import textwrap
import time
import uuid

import openstack

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cinderbak import backups as backup_reads  # noqa: E402
from cinderbak import service, tenant  # noqa: E402
from tests import configs, localstack  # noqa: E402

MIB = 1024 * 1024
POLICY = "cycle"


def config(
    stack, workdir: pathlib.Path, write_back: bool, label: str = "cycle"
) -> pathlib.Path:
    """A config of its own, journal included, for each part."""
    ceph_a, readonly = stack.ceph("a"), stack.readonly_user
    path = workdir / f"{label}.conf"
    path.write_text(
        textwrap.dedent(f"""\
        [DEFAULT]
        deployment_id = bench-{uuid.uuid4().hex}
        write_back_status = {str(write_back).lower()}
        state_path = {workdir}
        [cloud]
        cloud = localstack-cinderbak
        [journal]
        connection = sqlite:///{workdir}/{label}.sqlite
        [volume_cluster]
        conf = {ceph_a.conf}
        user = {readonly.user}
        keyring = {readonly.keyring}
        pools = {ceph_a.pool}
        [policy:{POLICY}]
        schedule = every 1h
        retention = last=10
        """)
    )
    return path


class AccessLogs:
    """Counts the requests cinderbak made from the services' logs."""

    CINDER = re.compile(r'eventlet\.wsgi\.server \[[^]]* (\w+) (\w+) .*"')

    def __init__(self, stack, user_id: str) -> None:
        logs = pathlib.Path(stack.raw["log_dir"])
        self.cinder = logs / "cinder-api.log"
        self.keystone = logs / "keystone.out"
        self.user_id = user_id
        self.mark()

    def mark(self) -> None:
        self._offsets = {
            p: p.stat().st_size for p in (self.cinder, self.keystone)
        }

    def _new_lines(self, path: pathlib.Path) -> list[str]:
        with path.open("rb") as f:
            f.seek(self._offsets[path])
            return f.read().decode(errors="replace").splitlines()

    def counts(self) -> tuple[int, int]:
        """(Cinder, Keystone) requests since the last mark."""
        cinder = sum(
            "eventlet.wsgi.server" in line and f" {self.user_id} " in line
            for line in self._new_lines(self.cinder)
        )
        keystone = sum(
            "openstacksdk" in line or "keystoneauth1" in line
            for line in self._new_lines(self.keystone)
        )
        return cinder, keystone


FINISHED = re.compile(
    r"^(\S+ \S+) .*Create backup finished\. backup: ([0-9a-f-]{36})"
)


def finish_times(stack) -> dict[str, float]:
    """When cinder-backup finished each backup, from its own log (UTC):
    ``updated_at`` also moves when cinderbak writes its marks later."""
    path = pathlib.Path(stack.raw["log_dir"]) / "cinder-backup.log"
    found: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = FINISHED.match(line)
        if match:
            when = datetime.datetime.strptime(
                match.group(1), "%Y-%m-%d %H:%M:%S.%f"
            ).replace(tzinfo=datetime.UTC)
            found[match.group(2)] = when.timestamp()
    return found


def busy_share(
    stack, admin, volume_ids: set[str], since: datetime.datetime, wall: float
) -> float:
    """Share of the wall time with some backup of these volumes creating:
    the union of [created, finished] of the cycle's backups."""
    finished = finish_times(stack)
    spans = []
    for backup in admin.block_storage.backups(details=True, all_projects=True):
        if backup.volume_id not in volume_ids:
            continue
        start = backup_reads.parse_time(backup.created_at)
        end = finished.get(backup.id)
        if start is None or end is None or start < since:
            continue
        spans.append((start.timestamp(), end))
    spans.sort()
    busy, cursor = 0.0, float("-inf")
    for start, end in spans:
        if end <= cursor:
            continue
        busy += end - max(start, cursor)
        cursor = end
    return busy / wall if wall else 0.0


def make_volumes(conn, count: int, policy: str) -> list:
    volumes = [
        conn.block_storage.create_volume(
            size=1,
            name=f"bench-{uuid.uuid4().hex[:6]}",
            metadata={tenant.POLICY: policy},
        )
        for _ in range(count)
    ]
    return [
        conn.block_storage.wait_for_status(v, "available", wait=120)
        for v in volumes
    ]


def cleanup(conn, volumes) -> None:
    storage = conn.block_storage
    for volume in volumes:
        for backup in sorted(
            storage.backups(details=True, volume_id=volume.id),
            key=lambda b: b.created_at,
            reverse=True,
        ):
            storage.wait_for_status(backup, "available", wait=600)
            storage.delete_backup(backup)
            storage.wait_for_delete(backup, wait=600)
        storage.delete_volume(volume, cascade=True)


def cycles(stack, args, workdir: pathlib.Path) -> None:
    alice = openstack.connect(cloud=stack.cloud("tenant-a"))
    admin = openstack.connect(cloud=stack.cloud("admin"))
    volumes = make_volumes(alice, args.volumes, POLICY)
    manual = alice.block_storage.create_backup(
        volume_id=volumes[0].id, name="tenant-manual"
    )
    alice.block_storage.wait_for_status(manual, "available", wait=300)
    ids = {v.id for v in volumes}
    parts = configs.parts_from(config(stack, workdir, args.write_back))
    logs = AccessLogs(stack, parts.cloud.service.current_user_id)
    poll = parts.conf.poll_interval
    print(
        f"{args.volumes} x 1 GiB volumes, write_back_status = "
        f"{args.write_back}"
    )
    print(
        "cycle  backups  cinder  keystone  cinder/backup  keystone/backup"
        "  wall_s  busy_share  wall/(busy+poll)"
    )
    try:
        for cycle in range(1, args.cycles + 1):
            for volume in volumes:
                localstack.write_volume(
                    stack, volume.id, 0, os.urandom(4 * MIB + 4096)
                )
            since = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
            logs.mark()
            started = time.monotonic()
            outcomes = service.run_once(parts, [POLICY], audit=False)
            wall = time.monotonic() - started
            cinder, keystone = logs.counts()
            done = sum(o.status == "ok" for o in outcomes)
            share = busy_share(stack, admin, ids, since, wall)
            busy = share * wall
            print(
                f"{cycle:5d}  {done:7d}  {cinder:6d}  {keystone:8d}  "
                f"{cinder / max(done, 1):13.2f}  "
                f"{keystone / max(done, 1):15.2f}  {wall:6.1f}  "
                f"{share:10.2f}  {wall / (busy + poll):16.2f}"
            )
            kinds = sorted({o.kind for o in outcomes})
            print(f"       kinds: {', '.join(kinds)}")
    finally:
        parts.close()
        alice.block_storage.delete_backup(manual)
        alice.block_storage.wait_for_delete(manual, wait=300)
        cleanup(alice, volumes)


def fairness(stack, workdir: pathlib.Path) -> None:
    alice = openstack.connect(cloud=stack.cloud("tenant-a"))
    bob = openstack.connect(cloud=stack.cloud("tenant-b"))
    many = make_volumes(alice, 8, POLICY)
    few = make_volumes(bob, 2, POLICY)
    path = config(stack, workdir, False, label="fairness")
    text = path.read_text() + "[limits]\nmax_in_flight = 2\n"
    path.write_text(text)
    parts = configs.parts_from(path)
    try:
        started = time.monotonic()
        service.run_once(parts, [POLICY], audit=False)
        wall = time.monotonic() - started
        runs = [
            r
            for r in parts.journal.runs(policy=POLICY, limit=100)
            if r.target != "*" and r.started_at
        ]
    finally:
        parts.close()
    first = min(r.started_at for r in runs)
    order = sorted(runs, key=lambda r: r.started_at)
    for label, group in (("8 volumes", many), ("2 volumes", few)):
        ids = {v.id for v in group}
        mine = [i for i, r in enumerate(order) if r.target in ids]
        delay = min(
            (r.started_at - first).total_seconds()
            for r in runs
            if r.target in ids
        )
        print(
            f"project with {label}: first backup started {delay:.1f} s "
            f"after the slot's first, positions {mine}"
        )
    print(f"fairness run: {len(runs)} backups in {wall:.1f} s")
    cleanup(alice, many)
    cleanup(bob, few)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--write-back", action="store_true")
    parser.add_argument("--skip-fairness", action="store_true")
    args = parser.parse_args()
    stack = localstack.load_stack()
    os.environ.setdefault("OS_CLIENT_CONFIG_FILE", stack.clouds_yaml)
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
        cycles(stack, args, pathlib.Path(tmp))
        if not args.skip_fairness:
            fairness(stack, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
