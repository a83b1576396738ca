"""Journal write and query costs, on a real SQLite file by default.

Records --runs runs of --steps steps each through the public API, one
short transaction per call as the daemon does (every commit is fsynced:
``synchronous=FULL``), then times the recovery and operator queries on
the result. Prints one line per phase.

    .venv/bin/python bench/bench_journal.py [--runs 10000] [--steps 4]
        [--threads 1] [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cinderbak.journal import Journal, RunState, StepKind  # noqa: E402

T0 = datetime.datetime(2026, 1, 1, 3, 0, tzinfo=datetime.UTC)
KINDS = [
    StepKind.SNAPSHOT_CREATE,
    StepKind.BACKUP_CREATE,
    StepKind.SNAPSHOT_DELETE,
    StepKind.METADATA_WRITE,
]


def phase(
    name: str,
    items: Sequence[object],
    call: Callable[[object], object],
    threads: int,
) -> list[object]:
    """Apply *call* to every item, timing each; print the figures."""
    latencies: list[float] = []
    results: list[object] = [None] * len(items)

    def one(index: int) -> None:
        started = time.perf_counter()
        results[index] = call(items[index])
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    if threads == 1:
        for i in range(len(items)):
            one(i)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(items))))
    wall = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0
    print(
        f"{name:<34} {len(items):>7} ops {wall:8.2f} s "
        f"{len(items) / wall:9.0f} ops/s  "
        f"p50 {statistics.median(latencies) * 1e3:6.2f} ms  "
        f"p99 {p99 * 1e3:6.2f} ms"
    )
    return results


def timed(name: str, call: Callable[[], object]) -> None:
    started = time.perf_counter()
    result = call()
    wall = time.perf_counter() - started
    size = len(result) if hasattr(result, "__len__") else result
    print(f"{name:<34} {wall * 1e3:10.1f} ms  ({size} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--url", help="default: a new SQLite file in /tmp")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/bench.sqlite"
        jr = Journal.from_url(url, host="bench")
        jr.upgrade()
        print(
            f"# {jr.engine.dialect.name}, {args.runs} runs x {args.steps} "
            f"steps, {args.threads} thread(s)"
        )
        started = time.perf_counter()
        runs = phase(
            "begin_run (insert)",
            range(args.runs),
            lambda i: (
                jr.begin_run(
                    "daily",
                    f"vol-{i:06d}",
                    T0,
                    project_id=f"proj-{i % 50}",
                    attrs={"mode": "snapshot"},
                ).id
            ),
            args.threads,
        )
        phase(
            "begin_run again (same key)",
            range(0, args.runs, 10),
            lambda i: (
                jr.begin_run("daily", f"vol-{i:06d}", T0, project_id="p").id
            ),
            args.threads,
        )
        phase("start_run", runs, jr.start_run, args.threads)
        step_items = [
            (run_id, kind, f"vol-{i:06d}")
            for i, run_id in enumerate(runs)
            for kind in KINDS[: args.steps]
        ]
        step_ids = phase(
            "begin_step (insert)",
            step_items,
            lambda item: jr.begin_step(
                item[0],
                item[1],
                target=item[2],
                details={"expected_parent": None},
            ),
            args.threads,
        )
        phase(
            "set_step_resource",
            step_ids,
            lambda sid: jr.set_step_resource(sid, f"res-{sid}"),
            args.threads,
        )
        phase("complete_step", step_ids, jr.complete_step, args.threads)
        phase(
            "finish_run",
            runs,
            lambda run_id: jr.finish_run(run_id, RunState.SUCCEEDED, {}),
            args.threads,
        )
        total = time.perf_counter() - started
        ops = args.runs * (3 + 3 * args.steps)
        print(
            f"{'whole lifecycle':<34} {ops:>7} ops {total:8.2f} s "
            f"{ops / total:9.0f} ops/s  "
            f"{total / args.runs * 1e3:.2f} ms per run"
        )

        # Leave a tenth in flight, for the recovery queries to find.
        for i in range(args.runs // 10):
            run_id = jr.begin_run(
                "hourly", f"vol-{i:06d}", T0, project_id="p"
            ).id
            jr.start_run(run_id)
            jr.begin_step(run_id, StepKind.FREEZE, target=f"srv-{i}")
        timed("unfinished_runs (with steps)", jr.unfinished_runs)
        timed("open_steps", jr.open_steps)
        timed("frozen_servers", jr.frozen_servers)
        timed("last_run_per_policy", jr.last_run_per_policy)
        timed("last_backup_per_target", jr.last_backup_per_target)
        timed("runs(limit=100)", jr.runs)
        timed("runs(failed_only)", lambda: jr.runs(failed_only=True))
        timed(
            "prune (every finished run)",
            lambda: jr.prune(T0 + datetime.timedelta(days=36500)),
        )
        if args.url is None:
            size = Path(tmp, "bench.sqlite").stat().st_size
            print(f"{'sqlite file before prune':<34} {size / 1e6:10.1f} MB")
        jr.close()


if __name__ == "__main__":
    main()
