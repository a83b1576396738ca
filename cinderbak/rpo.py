"""Recovery point objectives: what a policy promises, who is past it.

A policy's RPO is the longest gap between two of its scheduled times,
times ``[metrics] rpo_factor`` (a factor of 1.5 on a daily schedule
tolerates one run that finishes late, not one that is missed). The
daemon keeps, per volume, the time its RPO clock started (its last
successful backup, or when it was first seen under the policy) and
exports the volumes past it; the alert rules compare the same numbers.

Pure: every function takes ``now``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping

from cinderbak.policy import Schedule

CRON_GAPS = 16
"""Scheduled times looked at to find a cron schedule's longest gap
(enough for any weekly pattern of a few runs a day)."""


def interval(schedule: Schedule, now: datetime.datetime) -> datetime.timedelta:
    """Given a schedule, return the longest gap between its slots."""
    if schedule.interval is not None:
        return schedule.interval
    trigger = schedule.trigger()
    fires: list[datetime.datetime] = []
    previous = None
    when = now
    for _ in range(CRON_GAPS + 1):
        fire = trigger.get_next_fire_time(previous, when)
        if fire is None:
            break
        fires.append(fire)
        previous = fire
        when = fire + datetime.timedelta(seconds=1)
    gaps = [b - a for a, b in zip(fires, fires[1:], strict=False)]
    return max(gaps, default=datetime.timedelta(days=1))


def rpo(
    schedule: Schedule, factor: float, now: datetime.datetime
) -> datetime.timedelta:
    """Given a schedule and the factor, return the RPO it promises."""
    return interval(schedule, now) * factor


@dataclasses.dataclass(frozen=True)
class Clock:
    """Where one volume's RPO clock stands."""

    policy: str
    volume_id: str
    project_id: str
    since: datetime.datetime  # last successful backup, or first seen
    succeeded: bool  # False: it never had a successful backup


def overdue(
    clocks: Iterable[Clock],
    rpos: Mapping[str, datetime.timedelta],
    now: datetime.datetime,
    limit: int,
) -> tuple[list[Clock], dict[str, int]]:
    """Given the volumes' clocks and each policy's RPO, return the
    volumes past their RPO (longest overdue first, at most ``limit``)
    and how many each policy has in all (the cap never hides a count).
    """
    late = [
        c
        for c in clocks
        if c.policy in rpos and now - c.since > rpos[c.policy]
    ]
    counts: dict[str, int] = {}
    for clock in late:
        counts[clock.policy] = counts.get(clock.policy, 0) + 1
    late.sort(key=lambda c: (c.since, c.policy, c.volume_id))
    return late[: max(0, limit)], counts
