"""Pure decisions of a run's engine: who starts next, how many may run,
and when the backup service is to be considered gone.

The engine in :mod:`cinderbak.workflow` observes Cinder and carries these
decisions out; nothing here reads a clock or talks to a service, so each
rule is unit tested on plain values.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Work waiting to start, served round-robin across projects.

    Fairness, exactly: the projects with work queued are visited in a
    fixed rotation, each starting one group (one detached volume, or one
    server's volumes) per turn, and the rotation waits at the first
    project whose group does not fit the free capacity. So while a
    project has work queued, every other project starts at most one group
    before it gets its turn, whatever the number of volumes each has.
    Within a project, groups start in the order they were queued.
    """

    def __init__(self) -> None:
        self._by_project: dict[Hashable, collections.deque[tuple[int, T]]] = {}
        self._rotation: list[Hashable] = []
        self._next = 0
        self._count = 0
        self._idle = 0  # projects in the rotation with nothing queued
        self._rotating: set[Hashable] = set()

    def add(self, project: Hashable, group: T, size: int = 1) -> None:
        """Queue a group (one start) of ``size`` jobs for ``project``."""
        queue = self._by_project.get(project)
        if queue is None:
            queue = self._by_project[project] = collections.deque()
            self._rotation.append(project)
            self._rotating.add(project)
        elif not queue:
            if project in self._rotating:
                self._idle -= 1
            else:  # left the rotation while it had nothing queued
                self._rotation.append(project)
                self._rotating.add(project)
        queue.append((size, group))
        self._count += size

    def __len__(self) -> int:
        """Jobs queued (not groups)."""
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def projects(self) -> list[Hashable]:
        """Projects with work queued, in rotation order."""
        return [p for p in self._rotation if self._by_project[p]]

    def take(
        self, fits: Callable[[Hashable, T, int], bool | None]
    ) -> list[tuple[Hashable, T]]:
        """Remove and return, in start order, every group that may start
        now, one per project per turn of the rotation.

        ``fits(project, group, size)`` is asked once per candidate and
        must reserve what it grants (the caller's limiter). It answers
        True (started), False (no capacity: the rotation stops here, so
        a large group is not overtaken by small ones and starts as soon
        as enough work ends), or None (this group cannot start now for a
        reason of its own, e.g. its server is frozen by another policy:
        the rotation moves past it).

        Costs O(1) per group started or asked about, whatever the number
        of projects: the rotation is walked from where it stopped, and
        projects with nothing queued leave it once they are the majority.
        """
        started: list[tuple[Hashable, T]] = []
        skipped: set[Hashable] = set()
        self._compact()
        n = len(self._rotation)
        position = self._next
        without_start = 0
        while self._count and without_start < n:
            project = self._rotation[position]
            queue = self._by_project[project]
            if queue and project not in skipped:
                size, group = queue[0]
                verdict = fits(project, group, size)
                if verdict is None:
                    skipped.add(project)
                elif not verdict:
                    self._next = position
                    return started
                else:
                    queue.popleft()
                    self._count -= size
                    if not queue:
                        self._idle += 1
                    started.append((project, group))
                    position = self._next = (position + 1) % n
                    without_start = 0
                    continue
            position = (position + 1) % n
            without_start += 1
        return started

    def drain(self) -> list[T]:
        """Remove and return every queued group (the run gives up)."""
        groups = [
            group
            for project in self._order()
            for _size, group in self._by_project[project]
        ]
        for queue in self._by_project.values():
            queue.clear()
        self._count = 0
        self._idle = len(self._rotation)
        return groups

    def _order(self) -> list[Hashable]:
        n = len(self._rotation)
        return [self._rotation[(self._next + i) % n] for i in range(n)]

    def _compact(self) -> None:
        """Drop projects with nothing queued from the rotation when they
        are most of it, keeping the order and where the next turn starts."""
        if self._idle * 2 <= len(self._rotation) or not self._rotation:
            return
        order = self._order()
        self._rotation = [p for p in order if self._by_project[p]]
        self._rotating = set(self._rotation)
        self._next = 0
        self._idle = 0


@dataclasses.dataclass
class Capacity:
    """How many backups may be in flight: additive increase, halving on
    overload (the TCP rule), between 1 and ``ceiling``.

    The ceiling follows what the backup services can take (services up
    times Cinder's per-service ``backup_max_operations``), so a region
    with more backup hosts gets more parallel work without new options.
    """

    ceiling: int
    current: int = 0

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        if self.current <= 0 or self.current > self.ceiling:
            self.current = self.ceiling

    def overloaded(self) -> int:
        """Cinder said over limit (413): halve; return the new limit."""
        self.current = max(1, self.current // 2)
        return self.current

    def succeeded(self) -> int:
        """A backup was accepted and finished: one more, up to the
        ceiling; return the new limit."""
        self.current = min(self.ceiling, self.current + 1)
        return self.current

    def resize(self, ceiling: int) -> None:
        """New ceiling (services came or went); keep within it."""
        self.ceiling = max(1, ceiling)
        self.current = min(self.current, self.ceiling) or 1


def ceiling_for(services_up: int, per_service: int, cap: int | None) -> int:
    """Given the backup services up, what each may run at once, and the
    operator's optional cap, return the ceiling of backups in flight.
    With no service known up, one service's worth."""
    derived = max(1, services_up) * per_service
    return min(derived, cap) if cap else derived


@dataclasses.dataclass(frozen=True)
class ServiceState:
    """One ``cinder-backup`` service as ``os-services`` lists it."""

    host: str
    zone: str | None
    up: bool
    enabled: bool
    updated_at: datetime.datetime | None


def backup_services_down(
    services: Iterable[ServiceState], zone: str | None
) -> str | None:
    """Given the backup services and the zone a run backs up to, return why
    no backup can progress there, or None while one is up and enabled.

    Cinder keeps accepting backups for a dead backup host (they stay
    ``creating``), so this is how a run learns to stop submitting.
    """
    relevant = [s for s in services if zone is None or s.zone == zone]
    if any(s.up and s.enabled for s in relevant):
        return None
    where = f" in zone {zone}" if zone else ""
    if not relevant:
        return f"no cinder-backup service{where}"
    down = sorted(relevant, key=lambda s: s.host)
    return "; ".join(
        f"backup service {s.host}{where} "
        + (
            "disabled"
            if s.up
            else "down since "
            + (f"{s.updated_at:%Y-%m-%d %H:%M:%S}Z" if s.updated_at else "?")
        )
        for s in down
    )


def stall_bound(
    completed_seconds: Sequence[float], floor: float, factor: float = 3.0
) -> float:
    """Seconds without any backup of the run leaving ``creating`` after
    which the run stops submitting new ones: ``factor`` times the slowest
    backup this run has seen finish, never under ``floor``."""
    if not completed_seconds:
        return floor
    return max(floor, factor * max(completed_seconds))


def stalled(
    in_flight_since: float | None,
    last_progress: float | None,
    now: float,
    bound: float,
) -> bool:
    """Whether backups stopped progressing: some are in flight, and none
    settled within ``bound`` seconds (counted from the later of the
    oldest submission still waiting and the last settlement)."""
    if in_flight_since is None:
        return False
    since = max(in_flight_since, last_progress or in_flight_since)
    return now - since >= bound
