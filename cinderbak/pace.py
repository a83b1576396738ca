"""How many deletions an expiry pass may make: sized from the backlog.

A fixed number per pass cannot keep up with a region: 50 a pass, five
passes a day, is 250 deletions a day against the 10,000 backups a day a
daily policy over 10,000 volumes creates, so expired backups pile up
(and keep counting against tenants' quotas). Deleting the whole backlog
at once is no better after a retention change, when it can be the size
of the region's history. So a pass deletes a share of what is due: at
least ``floor`` (small backlogs clear in one pass), otherwise one
``spread``-th of the backlog, so a backlog is worked off over about
``spread`` passes and, in steady state, expiry deletes each day as many
backups as the policies create (the backlog settles at a bounded size
instead of growing). ``cap``, when set, is the operator's hard bound.

The allowance is a function of the backlog seen so far, so a pass can
decide volume by volume while it streams through the projects: after the
whole backlog is seen, the pass has been allowed exactly
:func:`pass_budget` of it. Pure, no I/O.
"""

from __future__ import annotations

import math


def pass_budget(backlog: int, *, floor: int, spread: int, cap: int = 0) -> int:
    """Given the deletions due (``backlog``), return how many one pass
    makes: all of a backlog up to ``floor``; otherwise one ``spread``-th
    of it, rounded up; never more than ``cap`` when ``cap`` is set."""
    if backlog < 0 or floor < 0 or spread < 1 or cap < 0:
        raise ValueError(
            f"backlog {backlog}, floor {floor}, cap {cap} must be 0 or "
            f"more and spread {spread} at least 1"
        )
    budget = min(backlog, max(floor, math.ceil(backlog / spread)))
    return min(budget, cap) if cap else budget


def allowance(
    seen: int, used: int, due: int, *, floor: int, spread: int, cap: int = 0
) -> int:
    """Given the backlog seen before this volume (``seen``), the deletions
    the pass already granted (``used``) and this volume's deletions due
    (``due``), return how many of them the pass makes now."""
    budget = pass_budget(seen + due, floor=floor, spread=spread, cap=cap)
    return max(0, min(due, budget - used))
