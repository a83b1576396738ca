"""How many deletions an expiry pass may make: sized from the backlog.

A fixed number per pass cannot keep up with a region: 50 a pass, five
passes a day, is 250 deletions a day against the 10,000 backups a day a
daily policy over 10,000 volumes creates, so expired backups pile up
(and keep counting against tenants' quotas). Deleting the whole backlog
at once is no better after a retention change, when it can be the size
of the region's history. So a pass deletes a share of what is due: at
least ``floor`` (small backlogs clear in one pass), otherwise one
deletion per volume that has one due (what each slot adds in steady
state) and one ``spread``-th of the rest, so an excess is worked off
over about ``spread`` passes and, in steady state, expiry deletes what a
slot made due in the next pass (the backlog settles at a bounded size
instead of growing). ``cap``, when set, is the operator's hard bound.

The allowance is a function of the backlog seen so far, so a pass can
decide volume by volume while it streams through the projects: after the
whole backlog is seen, the pass has been allowed exactly
:func:`pass_budget` of it. Pure, no I/O.
"""

from __future__ import annotations

import math


def pass_budget(
    backlog: int, *, floor: int, spread: int, cap: int = 0, volumes: int = 0
) -> int:
    """Given the deletions due (``backlog``) over ``volumes`` volumes,
    return how many one pass makes: all of a backlog up to ``floor``;
    otherwise one per volume plus one ``spread``-th of the rest, rounded
    up; never more than ``cap`` when ``cap`` is set.

    One per volume is the steady state: each slot pushes one backup of
    each volume out of its retention, and deleting it in the next pass
    leaves the project with nothing due, which later passes of the day
    then need not even list (:mod:`cinderbak.quiet`). Only the excess (a
    retention change, a pause) is spread over passes; it bounds the extra
    load the same way, and the per-volume part adds at most what the
    slot itself created.
    """
    if backlog < 0 or floor < 0 or spread < 1 or cap < 0:
        raise ValueError(
            f"backlog {backlog}, floor {floor}, cap {cap} must be 0 or "
            f"more and spread {spread} at least 1"
        )
    if not 0 <= volumes <= backlog:
        raise ValueError(
            f"volumes {volumes} must be 0 or more and at most the "
            f"backlog {backlog}: each has at least one deletion due"
        )
    share = volumes + math.ceil((backlog - volumes) / spread)
    budget = min(backlog, max(floor, share))
    return min(budget, cap) if cap else budget


def allowance(
    seen: int,
    used: int,
    due: int,
    *,
    floor: int,
    spread: int,
    cap: int = 0,
    volumes: int = 0,
) -> int:
    """Given the backlog seen before this volume (``seen``, over
    ``volumes`` volumes with something due), the deletions the pass
    already granted (``used``) and this volume's deletions due (``due``),
    return how many of them the pass makes now. Granted volume by volume
    this way, a pass makes exactly :func:`pass_budget` of what it saw."""
    budget = pass_budget(
        seen + due,
        floor=floor,
        spread=spread,
        cap=cap,
        volumes=volumes + (1 if due else 0),
    )
    return max(0, min(due, budget - used))
