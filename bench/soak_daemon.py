"""Soak: the daemon on an interval schedule; its RSS after every slot.

Starts the real ``cinderbak-daemon`` (as systemd would, from its config)
against the local stack with one policy ``every N s`` over V volumes of
tenant-a, writes 1 MiB into each volume between slots, and prints per
slot: its outcome, wall time and the daemon's RSS (VmRSS) when the slot
was settled. RSS must level off; the README records where.

    python bench/soak_daemon.py [--slots 20] [--volumes 10] [--every 30]

Needs ``tools/localstack up``; stops the daemon and deletes what it made.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import openstack

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cinderbak.journal import Journal  # noqa: E402
from tests import localstack  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_cycle import cleanup, make_volumes  # noqa: E402

MIB = 1024 * 1024
DAEMON = pathlib.Path(sys.executable).with_name("cinderbak-daemon")


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--every", type=int, default=30)
    args = parser.parse_args()
    stack = localstack.load_stack()
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=stack.clouds_yaml)
    os.environ.update(env)
    alice = openstack.connect(cloud=stack.cloud("tenant-a"))
    name = f"soak{uuid.uuid4().hex[:6]}"
    volumes = make_volumes(alice, args.volumes, name)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = pathlib.Path(tmp)
        conf = work / "cinderbak.conf"
        conf.write_text(
            textwrap.dedent(f"""\
            [DEFAULT]
            deployment_id = soak-{uuid.uuid4().hex}
            poll_interval = 1
            state_path = {work}
            [cloud]
            cloud = localstack-cinderbak
            [journal]
            connection = sqlite:///{work}/journal.sqlite
            [daemon]
            expire_after_run = true
            [policy:{name}]
            schedule = every {args.every}s
            retention = last=3
            full_every = 6
            """)
        )
        out = (work / "daemon.out").open("w")
        daemon = subprocess.Popen(
            [str(DAEMON), "--config-file", str(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        journal = None
        seen: set[str] = set()
        print("slot  state      ok  failed  wall_s  rss_mib")
        try:
            deadline = time.monotonic() + args.slots * args.every * 3 + 300
            while len(seen) < args.slots and time.monotonic() < deadline:
                time.sleep(1)
                if daemon.poll() is not None:
                    raise SystemExit("the daemon died; see its output")
                if journal is None:
                    if not (work / "journal.sqlite").exists():
                        continue
                    journal = Journal.from_url(
                        f"sqlite:///{work}/journal.sqlite"
                    )
                for run in journal.runs(policy=name, target="*", limit=50):
                    if not run.is_final or run.id in seen:
                        continue
                    seen.add(run.id)
                    summary = run.summary or {}
                    wall = run.duration.total_seconds() if run.duration else 0
                    print(
                        f"{len(seen):4d}  {run.state!s:9s} "
                        f"{summary.get('ok', 0):3d}  "
                        f"{summary.get('failed', 0):6d}  {wall:6.1f}  "
                        f"{rss_mib(daemon.pid):7.1f}",
                        flush=True,
                    )
                    for volume in volumes:
                        localstack.write_volume(
                            stack, volume.id, 0, os.urandom(MIB)
                        )
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
            if journal is not None:
                journal.close()
            out.close()
            cleanup(alice, volumes)
    print(f"policy {name}: {len(seen)} slots settled")


if __name__ == "__main__":
    main()
