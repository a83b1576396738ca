"""How fast is the retention planner, and how much memory does it take?

Run: ``python bench/bench_retention.py`` (from the repository root). It
prints wall time and peak memory for

* one volume with many backups (hourly backups with a daily full, some
  from snapshots, tenants' backups, holds and failures interleaved), at
  1,000 / 10,000 / 100,000 backups to show the O(n log n) growth;
* many volumes with 10 backups each (100,000 volumes: 1M backups), the
  shape of a region-wide expiry pass.

Time is measured without tracing; peak memory is what tracemalloc sees
allocated by the planner on a second, traced run (the input excluded).
Numbers are recorded in doc/source/retention.rst.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cinderbak.retention import (  # noqa: E402
    BackupInfo,
    infer_parents,
    parse_retention,
    plan,
)

UTC = datetime.UTC
HOUR = datetime.timedelta(hours=1)
START = datetime.datetime(2025, 1, 1, tzinfo=UTC)
RETENTION = parse_retention(
    "last=24, within=2d, hourly=48, daily=30, weekly=12, monthly=12, yearly=3"
)


def one_volume(count: int, prefix: str = "") -> list[BackupInfo]:
    """Hourly backups, a full each day at 00:00; every 97th is a tenant's
    manual backup, every 101st failed, every 1009th is held, every 7th is
    taken from a snapshot 5 minutes older than the backup."""
    backups = []
    for k in range(count):
        created = START + k * HOUR
        data = (
            created - datetime.timedelta(minutes=5)
            if k % 7 == 0
            else (created)
        )
        failed = k % 101 == 50
        backups.append(
            BackupInfo(
                id=f"{prefix}{k:07d}",
                created_at=created,
                data_timestamp=data,
                is_incremental=created.hour != 0,
                status="error" if failed else "available",
                ours=k % 97 != 13,
                held=k % 1009 == 500,
                has_dependent_backups=not failed and created.hour != 23,
            )
        )
    backups.reverse()  # as a listing sorted newest first returns them
    return backups


def many_volumes(volumes: int, per_volume: int) -> list[list[BackupInfo]]:
    """Daily backups at 03:00, a full every 7 days; times are shared the
    way real schedules share them, ids are not."""
    days = [
        START + datetime.timedelta(days=d, hours=3) for d in range(per_volume)
    ]
    result = []
    for v in range(volumes):
        offset = v % 7
        result.append(
            [
                BackupInfo(
                    id=f"v{v:06d}-{k:02d}",
                    created_at=days[k],
                    data_timestamp=days[k],
                    is_incremental=(k + offset) % 7 != 0,
                    status="available",
                    ours=True,
                    held=False,
                    has_dependent_backups=(
                        k + 1 < per_volume and (k + 1 + offset) % 7 != 0
                    ),
                )
                for k in range(per_volume)
            ]
        )
    return result


def timed(fn, repeat: int) -> tuple[float, float]:
    """Return (best, median) wall seconds of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs), statistics.median(runs)


def traced_peak(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def mib(size: int) -> str:
    if size < 2**20:
        return f"{size / 2**10:.0f} KiB"
    return f"{size / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="backups on the single volume",
    )
    parser.add_argument("--volumes", type=int, default=100_000)
    parser.add_argument("--per-volume", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.processor() or platform.platform()}"
    )
    print(f"retention: {RETENTION}")
    print()
    print(
        "one volume                 plan best / median    infer "
        "parents   planner peak"
    )
    for count in (int(s) for s in args.sizes.split(",")):
        backups = one_volume(count)
        now = START + count * HOUR
        result = plan(backups, RETENTION, now)
        best, median = timed(
            lambda b=backups, n=now: plan(b, RETENTION, n), args.repeat
        )
        infer, _ = timed(lambda b=backups: infer_parents(b), args.repeat)
        peak = traced_peak(lambda b=backups, n=now: plan(b, RETENTION, n))
        print(
            f"{count:>9,} backups  {best * 1e3:9.1f} / {median * 1e3:7.1f}"
            f" ms  {infer * 1e3:9.1f} ms  {mib(peak):>12}"
            f"   ({len(result.delete_ids):,} to delete)"
        )

    print()
    total = args.volumes * args.per_volume
    print(
        f"{args.volumes:,} volumes x {args.per_volume} backups "
        f"({total:,} backups)"
    )
    volumes = many_volumes(args.volumes, args.per_volume)
    now = START + datetime.timedelta(days=args.per_volume, hours=12)
    retention = parse_retention("last=3, weekly=1")

    def plan_all() -> int:
        deletions = 0
        for backups in volumes:
            deletions += len(plan(backups, retention, now).delete_ids)
        return deletions

    deletions = plan_all()
    best, median = timed(plan_all, max(1, args.repeat - 1))
    peak = traced_peak(plan_all)
    print(
        f"  plan every volume: {best:.2f} s best, {median:.2f} s median "
        f"({best / args.volumes * 1e6:.1f} us per volume, "
        f"{deletions:,} deletions)"
    )
    print(f"  planner peak (tracemalloc): {mib(peak)}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"  process max RSS, input included: {mib(rss * 1024)}")


if __name__ == "__main__":
    main()
