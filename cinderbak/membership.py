"""Who is alive, who leads, and whose work must be taken over: pure rules.

Several daemons share one journal and one tooz group. These functions
decide from what was observed (the group's members, or ``None`` when the
backend could not be asked) and ``now``; :mod:`cinderbak.coordination`
does the observing and carries the decisions out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping


def leader_of(members: Iterable[str]) -> str | None:
    """The member that does what must happen once per region.

    The smallest member id: every member computes the same answer from
    the same membership, and it needs nothing from the backend beyond
    group membership (tooz's etcd3gw driver has no leader election).
    """
    return min(members, default=None)


def partition_key(server_id: str | None, volume_id: str) -> str:
    """The unit of work a member owns: a server's freeze group (all its
    volumes, so one freeze window stays on one member) or a detached
    volume."""
    return f"server:{server_id}" if server_id else f"volume:{volume_id}"


@dataclasses.dataclass(frozen=True)
class View:
    """What one member has seen of the group so far.

    ``healthy_since`` is when this member last (re)appeared in the group
    without a gap; ``absent_since`` maps each host that has unfinished
    work in the journal but is not a member to when it was first seen
    missing while this member was healthy.
    """

    healthy_since: float | None = None
    absent_since: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # Hosts this member has seen in its group, and hosts that had work in
    # flight at its first look: the only ones it may ever take over.
    known: frozenset[str] = frozenset()
    # Each host's journal beat counter, and when (on our clock) we last
    # saw it change (None before the first reading).
    beats: Mapping[str, tuple[int, float]] | None = None
    # The members work is shared between: the backend's members and the
    # hosts still beating in the journal.
    live: frozenset[str] = frozenset()


def stale_after(lease: float, check_interval: float) -> float:
    """How long a journal beat counter may stand still before its host
    counts as gone: two looks under a lease (the last change we saw may
    be a look late, and our own look another), so that a dead daemon's
    beat is stale by the time its backend key expires and the key stays
    what decides the takeover; but never less than two beats (one beat
    may be late, its reader looking just before it)."""
    return max(lease - 2 * check_interval, 2 * check_interval)


def _track_beats(
    view: View, now: float, beats: Mapping[str, int] | None
) -> dict[str, tuple[int, float]] | None:
    """Only a change is evidence of life. At our first look every
    counter is just a number (the row of a host that died long ago looks
    the same as a live one's); from then on a counter that moved, or a
    row that appeared, is a beat seen now."""
    if beats is None:
        return None if view.beats is None else dict(view.beats)
    if view.beats is None:
        return {host: (count, -math.inf) for host, count in beats.items()}
    tracked: dict[str, tuple[int, float]] = {}
    for host, count in beats.items():
        seen = view.beats.get(host)
        tracked[host] = seen if seen and seen[0] == count else (count, now)
    return tracked


def beating(
    tracked: Mapping[str, tuple[int, float]] | None, now: float, stale: float
) -> frozenset[str]:
    """Hosts whose journal beat changed within ``stale`` seconds."""
    if tracked is None:
        return frozenset()
    return frozenset(h for h, (_, t) in tracked.items() if now - t < stale)


def observe(
    view: View,
    now: float,
    me: str,
    members: frozenset[str] | None,
    hosts_with_work: Iterable[str],
    beats: Mapping[str, int] | None = None,
    stale: float = 0.0,
) -> View:
    """The view after one look at the group.

    ``members`` is None when the backend did not answer: nobody can be
    judged dead on no evidence, so every absence restarts, and so does
    our own health (we may have lost our membership meanwhile); the
    shared-out members stay as they were.

    ``beats`` are the group's journal beat counters. A host still beating
    is alive even when the backend has lost it (cut off from etcd, but
    not from Cinder, its guests or the journal): it keeps its share of
    the work and is never taken over.
    """
    tracked = _track_beats(view, now, beats)
    if members is None or me not in members:
        return View(None, {}, view.known, tracked, view.live)
    alive = members | beating(tracked, now, stale)
    working = set(hosts_with_work)
    known = view.known | alive
    if not view.known:
        # The first look: work left by daemons gone before we started.
        known |= working
    healthy_since = (
        view.healthy_since if view.healthy_since is not None else now
    )
    absent = {
        host: view.absent_since.get(host, now)
        for host in working
        if host not in alive and host != me and host in known
    }
    return View(healthy_since, absent, frozenset(known), tracked, alive)


def due_for_takeover(view: View, now: float, lease: float) -> list[str]:
    """Hosts whose work this member should take over now.

    A host is due once it is missing from the group while this member
    has been a healthy member for at least one lease. Only hosts this
    member has seen in its group, or found with work in flight at its
    first look, are ever due: a daemon configured with another group
    name, sharing the journal by mistake, is not taken for dead.

    The lease is how long a crashed member's key outlives it, so in
    steady state a dead member is taken over as soon as its key expires.
    Right after an outage of the backend every member rejoins anew;
    waiting one lease of our own health first gives the others time to
    rejoin, so a live member is not taken for dead.
    """
    if view.healthy_since is None or now - view.healthy_since < lease:
        return []
    return sorted(view.absent_since)
