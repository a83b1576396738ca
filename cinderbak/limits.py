"""Concurrency limits: how many backups may be in flight, and where.

The backup service must be kept busy but never flooded: a request queued
behind ``backup_max_operations`` leaves a frozen guest waiting and eats
into a run's timeout. Limits hold globally, per project and per backup
availability zone, across every policy run in the process.
"""

from __future__ import annotations

import collections
import threading

from oslo_config import cfg

OPTS: list[cfg.Opt] = [
    cfg.IntOpt(
        "max_in_flight",
        default=0,
        min=0,
        help="Cap on backups (and their temporary snapshots) in flight at "
        "once across all policies. 0: follow the backup services, i.e. "
        "the cinder-backup services up times per_backup_service, read "
        "from os-services at each run; a 413 from Cinder halves it for "
        "the run and each success adds one back.",
    ),
    cfg.IntOpt(
        "per_backup_service",
        default=15,
        min=1,
        help="Backups one cinder-backup service takes at once: Cinder's "
        "own backup_max_operations (15 by default). Set it to what the "
        "backup hosts are configured with.",
    ),
    cfg.IntOpt(
        "max_in_flight_per_project",
        default=0,
        min=0,
        help="Backups in flight at once for one project; 0 for no cap of "
        "its own. Fairness does not depend on it: queued work starts "
        "round-robin across projects (see doc/source/engine.rst).",
    ),
    cfg.IntOpt(
        "service_backups_per_project",
        default=0,
        min=0,
        help="With ownership = service every tenant's backups share the "
        "service project's Cinder quota: this caps the backups one tenant "
        "project may hold there, counted by cinderbak from its journal, "
        "so one tenant opting in more volumes cannot make another's "
        "backups fail. 0: no cap.",
    ),
    cfg.IntOpt(
        "service_gigabytes_per_project",
        default=0,
        min=0,
        help="Like service_backups_per_project, for backup gigabytes "
        "(Cinder counts a backup at its volume's size). 0: no cap.",
    ),
    cfg.IntOpt(
        "max_in_flight_per_zone",
        default=0,
        min=0,
        help="Backups in flight at once on one backup availability zone; "
        "0 for no cap of its own.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group="limits")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("limits", OPTS)]


class Limiter:
    """Counts slots in use; never blocks, so one loop can drive many jobs."""

    def __init__(self, total: int, per_project: int, per_zone: int) -> None:
        self._total = total
        self._per_project = per_project
        self._per_zone = per_zone
        self._lock = threading.Lock()
        self._in_use = 0
        self._projects: collections.Counter[str] = collections.Counter()
        self._zones: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> Limiter:
        return cls(
            conf.limits.max_in_flight or conf.limits.per_backup_service,
            conf.limits.max_in_flight_per_project,
            conf.limits.max_in_flight_per_zone,
        )

    def try_acquire(
        self, project: str, zone: str | None, count: int = 1
    ) -> bool:
        """Take ``count`` slots for ``project`` in ``zone`` if every limit
        allows all of them; a server's volumes start together or not at
        all. A group larger than a limit may start when nothing else of
        that scope is in flight, so it is never starved.
        """
        zone = zone or ""
        with self._lock:
            if not (
                self._fits(self._in_use, self._total, count)
                and self._fits(
                    self._projects[project], self._per_project, count
                )
                and self._fits(self._zones[zone], self._per_zone, count)
            ):
                return False
            self._in_use += count
            self._projects[project] += count
            self._zones[zone] += count
            return True

    @staticmethod
    def _fits(used: int, limit: int, count: int) -> bool:
        if limit <= 0:
            return True  # no cap of its own
        return used + count <= limit or (used == 0 and count > limit)

    def project_has_room(self, project: str, count: int = 1) -> bool:
        """Whether the project's own cap (if any) lets ``count`` more in:
        a project at its cap waits without holding up the others."""
        with self._lock:
            return self._fits(
                self._projects[project], self._per_project, count
            )

    def set_total(self, total: int) -> None:
        """Change the global limit (the services' capacity changed); work
        in flight keeps its slots."""
        with self._lock:
            self._total = max(1, total)

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def release(self, project: str, zone: str | None, count: int = 1) -> None:
        zone = zone or ""
        with self._lock:
            self._in_use -= count
            self._projects[project] -= count
            self._zones[zone] -= count

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use


class ServerLocks:
    """One freeze at a time per server, across every policy run of the
    process: a second policy's group for a frozen server waits its turn
    instead of overlapping (and ending) the first one's freeze."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, str] = {}

    def try_acquire(self, server_id: str, holder: str) -> bool:
        with self._lock:
            current = self._holders.setdefault(server_id, holder)
            return current == holder

    def release(self, server_id: str, holder: str) -> None:
        with self._lock:
            if self._holders.get(server_id) == holder:
                del self._holders[server_id]

    def holder(self, server_id: str) -> str | None:
        with self._lock:
            return self._holders.get(server_id)
