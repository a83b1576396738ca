"""One daemon against three: a slot of a large region, shared through tooz.

Seeds bench/simcloud.py with ``--volumes`` volumes (20 per project, half
of them attached to servers), then for each member count in ``--members``
starts that many ``cinderbak-daemon`` processes sharing one PostgreSQL
journal (a fresh schema on the local stack's PostgreSQL, or
``--journal-url``) and a private etcd (Debian's ``etcd-server``, started
here), lets them join, and times the one slot they run together. Prints
per daemon: volumes in its share, slot wall time, CPU seconds in the slot,
peak RSS; and for the slot: requests per backup.

    eval "$(tools/localstack env)"   # for its PostgreSQL
    python bench/bench_scale_out.py --volumes 10000 --members 1,3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_scale  # noqa: E402
import simcloud  # noqa: E402

UTC = datetime.UTC
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLOT_LINE = re.compile(r"slot (\S+ \S+): (succeeded|partial|failed)")
SHARE_LINE = re.compile(r"(\d+) of (\d+) volumes are this daemon's share")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    parts = fields.split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Etcd:
    """A private etcd on two free ports, in a temporary directory."""

    def __init__(self, workdir: pathlib.Path, port: int) -> None:
        self.url = f"etcd3+http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                shutil.which("etcd") or "/usr/bin/etcd",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{port + 1}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{port + 1}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{port + 1}",
                "--log-level",
                "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def journal_schema(base: str) -> tuple[str, Callable[[], None]]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = (
        sa.make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

    return url, drop


def daemon_config(
    workdir: pathlib.Path,
    sim_url: str,
    member: str,
    journal_url: str,
    etcd_url: str,
    schedule: str,
    group: str,
) -> pathlib.Path:
    base = bench_scale.config(
        workdir,
        sim_url,
        retention="last=30",
        full_every="7",
        ownership="project",
    )
    text = base.read_text()
    text = text.replace(
        f"connection = sqlite:///{workdir}/journal.sqlite",
        f"connection = {journal_url}",
    )
    text = text.replace("schedule = every 24h", f"schedule = {schedule}")
    text = text.replace("[DEFAULT]\n", f"[DEFAULT]\nhost = {member}\n", 1) + (
        f"misfire_grace_time = 30\n"
        f"[coordination]\nbackend_url = {etcd_url}\n"
        f"group = {group}\n"
        f"[daemon]\nexpire_after_run = false\naudit_interval = 0\n"
        f"sweep_interval = 0\n"
    )
    path = workdir / f"{member}.conf"
    path.write_text(text)
    return path


def run_members(args, count: int, journal_base: str) -> None:
    sim = simcloud.start(bench_scale.sim_args(args, args.volumes))
    journal_url, drop = journal_schema(journal_base)
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        workdir = pathlib.Path(tmp)
        etcd = Etcd(workdir, args.etcd_port)
        procs: dict[str, subprocess.Popen] = {}
        try:
            # A cron slot two minutes ahead: time for every member to
            # start and join before it fires.
            fire = datetime.datetime.now(UTC).replace(
                second=0, microsecond=0
            ) + datetime.timedelta(minutes=2)
            schedule = f"{fire.minute} {fire.hour} * * *"
            members = [f"m{i}" for i in range(1, count + 1)]
            group = f"bench-{uuid.uuid4().hex[:6]}"
            for member in members:
                conf = daemon_config(
                    workdir,
                    sim.url,
                    member,
                    journal_url,
                    etcd.url,
                    schedule,
                    group,
                )
                log = open(workdir / f"{member}.log", "w")  # noqa: SIM115
                procs[member] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cinderbak.cmd.daemon",
                        "--config-file",
                        str(conf),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tempfile.gettempdir(),
                )
            while datetime.datetime.now(UTC) < fire - datetime.timedelta(
                seconds=2
            ):
                time.sleep(0.5)
            before = {m: cpu_seconds(p.pid) for m, p in procs.items()}
            bench_scale.control(sim.url, "reset-stats")
            ended: dict[str, float] = {}
            deadline = time.time() + args.timeout
            while len(ended) < count and time.time() < deadline:
                for member in members:
                    if member in ended:
                        continue
                    text = (workdir / f"{member}.log").read_text()
                    if SLOT_LINE.search(text):
                        ended[member] = time.time()
                        before[member] = (
                            cpu_seconds(procs[member].pid) - before[member]
                        )
                time.sleep(0.5)
            stats = bench_scale.control(sim.url, "stats")
            made = stats["created"].get("backups", 0)
            total = bench_scale.requests_total(stats)
            print(
                f"{count} daemon(s), {args.volumes} volumes: slot of "
                f"{made} backups, {total / max(made, 1):.2f} requests per "
                "backup",
                flush=True,
            )
            for member in members:
                text = (workdir / f"{member}.log").read_text()
                share = SHARE_LINE.search(text)
                mine = share.group(1) if share else str(args.volumes)
                wall = (
                    f"{ended[member] - fire.timestamp():7.1f} s"
                    if member in ended
                    else "  (not done)"
                )
                cpu = before[member] if member in ended else float("nan")
                print(
                    f"  {member}: {mine:>6} volumes, slot wall {wall}, "
                    f"{cpu:6.1f} CPU s in the slot, "
                    f"{peak_rss_mb(procs[member].pid):6.0f} MB peak RSS",
                    flush=True,
                )
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            etcd.stop()
            sim.stop()
            drop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--volumes", type=int, default=10_000)
    p.add_argument("--members", default="1,3")
    p.add_argument("--port", type=int, default=19970)
    p.add_argument("--etcd-port", type=int, default=19975)
    p.add_argument("--journal-url")
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--sim-full-every", type=int, default=7)
    p.add_argument("--ownership", default="project")
    p.add_argument("--backup-seconds", type=float, default=1.0)
    p.add_argument("--services", type=int, default=20)
    p.add_argument(
        "--max-limit",
        type=int,
        default=1000,
        help="the simulated Cinder's osapi_max_limit (longest page)",
    )
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    base = args.journal_url
    if not base:
        stack = json.load(open(os.environ["LOCALSTACK_JSON"]))  # noqa: SIM115
        base = stack["postgres_url"].replace(
            "postgresql:", "postgresql+psycopg:", 1
        )
    for count in (int(n) for n in args.members.split(",")):
        run_members(args, count, base)


if __name__ == "__main__":
    main()
