"""Control-plane cost at region scale, against bench/simcloud.py.

For each size it seeds a simulated Cinder (N volumes in N/20 projects,
``--history`` backups of ours per volume) and runs cinderbak in a
subprocess, so CPU and peak RSS are cinderbak's own (``wait4``):

* ``plan``: ``cinderbak plan`` - discovery of the policy's volumes, every
  owning project's backups read and every volume's retention planned;
* ``run-once``: one policy run over every volume (``--run-sizes``): wall
  time, time from start to the first backup requested, CPU ms per
  completed backup, requests per backup;
* ``expiry``: ``--days`` simulated days over ``--expiry-volumes``
  volumes: each day ages every backup by a day, adds the day's backup
  of every volume and records it in the journal (as the policy's run
  would: expiry trusts an owner mark only where the journal backs it,
  and leaves a quiet project unlisted until the journal shows a new
  backup there), and runs the expiry passes of that day (one after the
  run, plus one per ``expiry_interval``, 4 a day by default); prints
  the backlog (backups retention no longer keeps, still present) at the
  end of each day. It must not grow.

    python bench/bench_scale.py [--sizes 1000,10000,50000] \
        [--run-sizes 1000,10000] [--days 5] [--expiry-volumes 2000]

Only ``run-once`` at 1,000 volumes (the plan before it is printed too):

    python bench/bench_scale.py --sizes 1000 --run-sizes 1000 --only run

``--wrap-run COMMAND`` runs ``run-once`` under a profiler, e.g.
``--wrap-run 'py-spy record -r 250 -f raw -o run.txt --'`` (py-spy samples
every thread and, by default, only while on CPU; install it into your own
venv). The CPU printed then includes the profiler's.

``--pythonpath DIR`` runs another checkout's cinderbak (e.g. the code
before a change, ``git archive`` unpacked) with this venv.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import simcloud  # noqa: E402

POLICY = "bench"
DEPLOYMENT = "bench"
PER_PROJECT = 20


def config(
    workdir: pathlib.Path,
    url: str,
    *,
    retention: str,
    full_every: str,
    ownership: str,
) -> pathlib.Path:
    path = workdir / "cinderbak.conf"
    path.write_text(
        textwrap.dedent(f"""\
        [DEFAULT]
        deployment_id = {DEPLOYMENT}
        state_path = {workdir}
        poll_interval = 0.5
        [journal]
        connection = sqlite:///{workdir}/journal.sqlite
        [service_auth]
        auth_type = password
        auth_url = {url}/identity/v3
        username = cinderbak
        password = bench
        project_name = service
        user_domain_name = Default
        project_domain_name = Default
        [expiry]
        max_concurrent_deletions = 40
        [policy:{POLICY}]
        schedule = every 24h
        retention = {retention}
        full_every = {full_every}
        ownership = {ownership}
        """)
    )
    return path


# Runs the measured command and reports its rusage. ``ru_maxrss`` of a
# child forked from this process would count this process's own memory
# (the simulator's, hundreds of MB): Linux keeps the high-water mark of
# the address space a child had before exec, and a vfork child has ours.
# Forked from this small launcher instead, the child's peak is its own.
LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_pid, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump([os.waitstatus_to_exitcode(status),
               usage.ru_utime + usage.ru_stime, usage.ru_maxrss], out)
"""


class Measured:
    """One cinderbak subprocess: wall time, CPU seconds, peak RSS (MB)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        with (
            tempfile.TemporaryFile("w+") as log,
            tempfile.NamedTemporaryFile("r") as report,
        ):
            self.started = time.time()
            # Not from the checkout's root: ``-m`` would put it first on
            # sys.path, before --pythonpath.
            subprocess.run(
                [sys.executable, "-c", LAUNCHER, report.name, *argv],
                env=env,
                cwd=tempfile.gettempdir(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                check=True,
            )
            self.wall = time.time() - self.started
            self.status, self.cpu, maxrss = json.load(report)
            log.seek(0)
            self.stderr = log.read()
        self.rss_mb = maxrss / 1024


def control(url: str, path: str) -> dict:
    method = "GET" if path.split("?")[0] in ("stats", "ours") else "POST"
    request = urllib.request.Request(f"{url}/_sim/{path}", method=method)
    with urllib.request.urlopen(request) as answer:  # noqa: S310 - local
        return json.load(answer)


def cinderbak(
    args: argparse.Namespace,
    conf: pathlib.Path,
    *cmd: str,
    wrap: str | None = None,
):
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    argv = [
        *shlex.split(wrap or ""),
        sys.executable,
        "-m",
        "cinderbak.cmd.cli",
        "--config-file",
        str(conf),
        *cmd,
    ]
    measured = Measured(argv, env)
    if measured.status not in (0, 1):
        sys.stderr.write(measured.stderr[-3000:])
        raise SystemExit(f"cinderbak {' '.join(cmd)}: exit {measured.status}")
    return measured


# Records backups in the journal as the runs that made them would have:
# one run per volume, a done backup_create step with the backup's id.
# Run with the measured code (its journal schema), from the bench.
RECORDER = """
import datetime, json, sys
from cinderbak.journal import Journal, RunEnd, RunState, StepKind
url, policy, when = sys.argv[1], sys.argv[2], sys.argv[3]
journal = Journal.from_url(url)
journal.upgrade()
made = json.load(sys.stdin)
known = journal.known_backups(v for v, _p, _b in made)
fresh = [m for m in made if m[2] not in known.get(m[0], ())]
projects = {v: p for v, p, _b in fresh}
runs = journal.begin_runs(
    policy, projects, datetime.datetime.fromisoformat(when))
journal.start_runs(r.id for r in runs.values())
steps = journal.begin_steps(
    (runs[v].id, StepKind.BACKUP_CREATE, v, None) for v, _p, _b in fresh)
journal.set_step_resources(
    (s, b) for s, (_v, _p, b) in zip(steps, fresh, strict=True))
done = {}
for s, (v, _p, _b) in zip(steps, fresh, strict=True):
    done.setdefault(runs[v].id, []).append((s, None))
journal.finish_runs(
    RunEnd(r, RunState.SUCCEEDED, {}, tuple(d)) for r, d in done.items())
print(len(fresh))
"""


def record_as_runs(
    args: argparse.Namespace, workdir: pathlib.Path, url: str, day: int
) -> int:
    """Record every backup of ours the simulator holds that the journal
    does not know yet, as the runs that make them would (a region's
    backups of ours come from our runs, and the journal has each):
    expiry trusts an owner mark only where the journal backs it, and
    skips a quiet project until the journal shows a new backup there."""
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    made = control(url, f"ours?deployment_id={DEPLOYMENT}")["backups"]
    when = (
        datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        + datetime.timedelta(days=day)
    ).isoformat()
    recorded = subprocess.run(
        [
            sys.executable,
            "-c",
            RECORDER,
            f"sqlite:///{workdir}/journal.sqlite",
            POLICY,
            when,
        ],
        input=json.dumps(made),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(recorded.stdout)


def sim_args(
    args: argparse.Namespace, volumes: int, **extra
) -> argparse.Namespace:
    values = simcloud.parser().parse_args([])
    values.port = args.port
    values.volumes = volumes
    values.projects = max(1, volumes // PER_PROJECT)
    values.history = args.history
    values.full_every = args.sim_full_every
    values.policy = POLICY
    values.deployment_id = DEPLOYMENT
    values.ownership = args.ownership
    values.backup_seconds = args.backup_seconds
    values.services = args.services
    values.max_limit = args.max_limit
    for key, value in extra.items():
        setattr(values, key, value)
    return values


def requests_total(stats: dict) -> int:
    return sum(
        n for name, n in stats["requests"].items() if "/_sim/" not in name
    )


def per_process(stats: dict) -> int:
    """Requests that each ``expire`` process makes because it is a new
    process: Keystone tokens (the service user's and each project's it
    deletes in) and the API version documents. A daemon running the same
    passes keeps its tokens (hours) and its endpoints."""
    return sum(
        n
        for name, n in stats["requests"].items()
        if name.startswith(("POST /identity/", "GET /identity/"))
        or name == "GET /"
    )


NO_VOLUME = "00000000-0000-0000-0000-000000000000"


@contextlib.contextmanager
def region(
    args: argparse.Namespace, volumes: int
) -> Iterator[tuple[Any, pathlib.Path]]:
    """A simulated region of ``volumes`` and a cinderbak configuration
    for it, both gone afterwards."""
    sim = simcloud.start(sim_args(args, volumes))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            yield (
                sim,
                config(
                    pathlib.Path(tmp),
                    sim.url,
                    retention=args.retention,
                    full_every=args.full_every,
                    ownership=args.ownership,
                ),
            )
    finally:
        sim.stop()


def byte_compiled(args: argparse.Namespace) -> None:
    """Byte-compile the cinderbak being measured, as installing a package
    does: where PYTHONDONTWRITEBYTECODE is set (this lab's shells set it),
    every measured process compiled all its modules again, about 0.3 CPU
    s of start-up that no installed daemon pays."""
    root = pathlib.Path(args.pythonpath) if args.pythonpath else HERE.parent
    compileall.compile_dir(root / "cinderbak", quiet=1)


def plan_startup(args: argparse.Namespace) -> float:
    """CPU of ``plan`` over a region with no volume: the interpreter, the
    imports, the configuration, the journal's schema check and one token
    (the journal exists: the first command made it)
    What a size costs above it is discovery, reading and planning."""
    with region(args, 0) as (_sim, conf):
        # The first command creates the journal; what is measured is a
        # start on a journal that exists, as every later one is. The
        # median of three: one start-up varies by a few tenths of a
        # second on a shared machine, and every "above start-up" figure
        # carries that error.
        cinderbak(args, conf, "plan", "-f", "value")
        cpus = sorted(
            cinderbak(args, conf, "plan", "-f", "value").cpu for _ in range(3)
        )
    cpu = cpus[1]
    print(
        f"plan           0 volumes: {cpu:7.1f} CPU s (start-up, median of "
        f"{', '.join(f'{c:.2f}' for c in cpus)})",
        flush=True,
    )
    return float(cpu)


def bench_size(
    args: argparse.Namespace, volumes: int, run: bool, startup: float
) -> None:
    with region(args, volumes) as (sim, conf):
        control(sim.url, "reset-stats")
        plan = cinderbak(args, conf, "plan", "-f", "value")
        stats = control(sim.url, "stats")
        print(
            f"plan      {volumes:>6} volumes: {plan.cpu:7.1f} CPU s, "
            f"{plan.rss_mb:6.0f} MB peak RSS, {plan.wall:7.1f} s wall, "
            f"{requests_total(stats)} requests",
            flush=True,
        )
        # --volume limits what is printed, not what is planned: with a
        # volume that does not exist, everything is read and planned
        # and nothing printed.
        quiet = cinderbak(
            args,
            conf,
            "plan",
            "-f",
            "value",
            "--volume",
            NO_VOLUME,
            wrap=args.wrap_plan,
        )
        print(
            f"          {volumes:>6} volumes: above start-up, "
            f"discovery + reading + planning {quiet.cpu - startup:.1f} "
            f"CPU s, printing {plan.cpu - quiet.cpu:.1f} CPU s",
            flush=True,
        )
        if not run:
            return
        control(sim.url, "reset-stats")
        once = cinderbak(
            args,
            conf,
            "run-once",
            "--no-audit",
            "-f",
            "value",
            wrap=args.wrap_run,
        )
        stats = control(sim.url, "stats")
        made = stats["created"].get("backups", 0)
        first = stats["first_create"].get("backups")
        to_first = "-" if first is None else f"{first - once.started:.1f}"
        per_backup_ms = 1000 * once.cpu / made if made else float("nan")
        print(
            f"run-once  {volumes:>6} volumes: {once.cpu:7.1f} CPU s, "
            f"{once.rss_mb:6.0f} MB peak RSS, {once.wall:7.1f} s wall, "
            f"first backup requested after {to_first} s, "
            f"{made} backups, {per_backup_ms:.1f} CPU ms per backup, "
            f"{requests_total(stats) / max(made, 1):.2f} requests per "
            "backup",
            flush=True,
        )
        if args.verbose:
            print(json.dumps(stats["requests"], indent=1, sort_keys=True))


def bench_expiry(args: argparse.Namespace) -> None:
    keep = int(args.expiry_retention.split("=")[1])
    sim = simcloud.start(
        sim_args(args, args.expiry_volumes, full_every=1, history=args.history)
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-expiry-") as tmp:
            conf = config(
                pathlib.Path(tmp),
                sim.url,
                retention=args.expiry_retention,
                full_every="1",
                ownership=args.ownership,
            )

            def backlog() -> int:
                stats = control(sim.url, "stats")
                present = sum(stats["resources"]["backups"].values())
                return present - keep * args.expiry_volumes

            record_as_runs(args, pathlib.Path(tmp), sim.url, 0)
            print(
                f"expiry over {args.expiry_volumes} volumes, "
                f"{args.expiry_retention}, one full backup a day each, "
                f"{args.passes} passes a day; backlog at start "
                f"{backlog()}",
                flush=True,
            )
            for day in range(1, args.days + 1):
                control(sim.url, "age?days=1")
                owner = "&owner=service" if args.ownership == "service" else ""
                made = control(
                    sim.url,
                    f"daily-backups?policy={POLICY}&deployment_id="
                    f"{DEPLOYMENT}&incremental=0{owner}",
                )["created"]
                record_as_runs(args, pathlib.Path(tmp), sim.url, day)
                control(sim.url, "reset-stats")
                cpu = wall = 0.0
                for _ in range(args.passes):
                    measured = cinderbak(args, conf, "expire", "-f", "value")
                    cpu += measured.cpu
                    wall += measured.wall
                stats = control(sim.url, "stats")
                deletes = stats["requests"].get("DELETE /backups/{id}", 0)
                total = requests_total(stats)
                print(
                    f"day {day}: {made} created, {deletes} deleted, backlog "
                    f"{backlog()}; {cpu:.1f} CPU s, {wall:.0f} s wall, "
                    f"{total / max(deletes, 1):.2f} requests per deletion "
                    f"({(total - per_process(stats)) / max(deletes, 1):.2f} "
                    "without each pass's tokens and version discovery, "
                    "which a daemon keeps)",
                    flush=True,
                )
                if args.verbose:
                    print(
                        json.dumps(stats["requests"], indent=1, sort_keys=True)
                    )
    finally:
        sim.stop()


# A fixed pure-Python workload of the kind a plan is made of (decoding
# JSON, building and sorting dicts): its CPU time says how fast this
# machine (and its neighbours' load) runs Python, so numbers taken on
# different days can be compared. The README records it with each table.
REFERENCE = """
import json, time
start = time.process_time()
for _ in range(4):
    items = [{"id": f"{n:032x}", "volume_id": f"v{n % 997:05}",
              "created_at": f"2026-01-{n % 28 + 1:02}T00:00:{n % 60:02}"}
             for n in range(100000)]
    again = json.loads(json.dumps(items))
    again.sort(key=lambda i: (i["volume_id"], i["created_at"], i["id"]))
print(time.process_time() - start)
"""


def machine_reference() -> float:
    """CPU seconds of REFERENCE in a fresh interpreter, median of 3."""
    times = sorted(
        float(
            subprocess.run(
                [sys.executable, "-c", REFERENCE],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(3)
    )
    return times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--run-sizes", default="1000,10000")
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--sim-full-every", type=int, default=7)
    parser.add_argument("--retention", default="last=7")
    parser.add_argument("--full-every", default="6")
    parser.add_argument(
        "--ownership", choices=("project", "service"), default="project"
    )
    parser.add_argument("--backup-seconds", type=float, default=1.0)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument(
        "--max-limit",
        type=int,
        default=1000,
        help="the simulated Cinder's osapi_max_limit (longest page)",
    )
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--expiry-volumes", type=int, default=2000)
    parser.add_argument("--expiry-retention", default="last=7")
    parser.add_argument("--port", type=int, default=19960)
    parser.add_argument("--pythonpath", help="run cinderbak from here")
    parser.add_argument(
        "--wrap-run",
        metavar="COMMAND",
        help="run run-once under this command (a profiler), e.g. "
        "'py-spy record -f raw -o run.txt --'",
    )
    parser.add_argument(
        "--wrap-plan",
        metavar="COMMAND",
        help="run the plan that prints nothing under this command, as "
        "--wrap-run",
    )
    parser.add_argument(
        "--only", choices=("plan", "run", "expiry"), help="one part"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    byte_compiled(args)
    print(
        f"machine: reference workload {machine_reference():.2f} CPU s "
        "(median of 3; compare with the README's before comparing numbers)",
        flush=True,
    )
    if args.only != "expiry":
        runs = {int(n) for n in args.run_sizes.split(",") if n}
        startup = plan_startup(args)
        for size in (int(n) for n in args.sizes.split(",") if n):
            bench_size(
                args,
                size,
                run=size in runs and args.only != "plan",
                startup=startup,
            )
    if args.only in (None, "expiry"):
        bench_expiry(args)


if __name__ == "__main__":
    main()
