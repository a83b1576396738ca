"""Show which localstack services run and how much memory they use.

Usage: status.py [--json] STATE NAME=PIDFILE...

Every process the stack starts carries LOCALSTACK_OWNER=<state dir> in its
environment. A process is counted under the service whose pid file names
it, or names its process group leader or its nearest such ancestor; marked
processes that fit nowhere show up as "(other)". Memory comes from
/proc/<pid>/smaps_rollup.
Standard library only.
"""

import json
import os
import sys


def read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            first = f.readline().strip()
        return int(first) if first.isdigit() else None
    except OSError:
        return None


def owned_pids(mark: bytes) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def stat_of(pid: int) -> tuple[int, int]:
    """Return (ppid, pgid) of pid."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2])


def memory_kib(pid: int) -> tuple[int, int]:
    """Return (RSS, PSS) in KiB."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def process_table() -> dict[int, tuple[int, int]]:
    """Return {pid: (ppid, pgid)} for all processes."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                table[int(entry)] = stat_of(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return table


def service_of(pid: int, table: dict, leaders: dict[int, str]) -> str | None:
    """The service of a pid: as leader, by process group, or by ancestry."""
    ppid, pgid = table[pid]
    name = leaders.get(pid) or leaders.get(pgid)
    seen = set()
    while name is None and ppid > 1 and ppid in table and ppid not in seen:
        seen.add(ppid)
        name = leaders.get(ppid)
        ppid = table[ppid][0]
    return name


def collect(state: str, services: list[tuple[str, str]]) -> list[dict]:
    mark = f"LOCALSTACK_OWNER={state}".encode()
    owned = set(owned_pids(mark))
    leaders = {}
    for name, pidfile in services:
        pid = read_pidfile(pidfile)
        if pid in owned:
            leaders[pid] = name
    rows = {
        name: {
            "service": name,
            "running": pid_running,
            "pids": [],
            "rss_kib": 0,
            "pss_kib": 0,
        }
        for name, pid_running in (
            (n, n in leaders.values()) for n, _ in services
        )
    }
    table = process_table()
    for pid in sorted(table):
        # postgres children rewrite their environment area (process titles),
        # hiding the mark: they count through their parent instead
        name = service_of(pid, table, leaders) or (
            "(other)" if pid in owned else None
        )
        if name is None:
            continue
        row = rows.setdefault(
            name,
            {
                "service": name,
                "running": False,
                "pids": [],
                "rss_kib": 0,
                "pss_kib": 0,
            },
        )
        rss, pss = memory_kib(pid)
        row["pids"].append(pid)
        row["rss_kib"] += rss
        row["pss_kib"] += pss
    return list(rows.values())


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    state, specs = args[0], args[1:]
    services = [tuple(s.split("=", 1)) for s in specs]
    rows = collect(state, services)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        head = ("service", "state", "procs", "RSS MiB", "PSS MiB")
        print("{:<18} {:<8} {:>5} {:>9} {:>9}".format(*head))
        for r in rows:
            state_s = (
                "running"
                if r["running"]
                else ("stray" if r["pids"] else "stopped")
            )
            print(
                f"{r['service']:<18} {state_s:<8} {len(r['pids']):>5} "
                f"{r['rss_kib'] / 1024:>9.1f} {r['pss_kib'] / 1024:>9.1f}"
            )
        print(
            f"{'total':<18} {'':<8} {sum(len(r['pids']) for r in rows):>5} "
            f"{sum(r['rss_kib'] for r in rows) / 1024:>9.1f} "
            f"{sum(r['pss_kib'] for r in rows) / 1024:>9.1f}"
        )
    expected = [r for r in rows if r["service"] != "(other)"]
    return 0 if all(r["running"] for r in expected) else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
