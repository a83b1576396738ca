"""Incremental chains of Cinder backups: who depends on whom, and when a new
full backup is due.

Cinder's API does not show a backup's parent, so the chain is inferred the
way Cinder chose it. When an incremental is requested, Cinder looks at the
backups of that volume *in the caller's project* (ours and the tenant's
alike) and takes the one with the newest ``data_timestamp`` - for a backup
taken from a snapshot, only those older than the snapshot - and that one
must be ``available``. Older releases take the newest of any status and
refuse the request when it is not available; newer ones skip backups that
are not available. Either way, for an incremental that exists:

    parent = the backup with the newest data_timestamp among those created
             before it whose data_timestamp is older than its own, leaving
             out those that never completed (status creating or error).

A backup now in ``error`` may once have been available (a failed delete
sets ``error`` too); if it still has a dependent, Cinder's
``has_dependent_backups`` says so and the planner keeps it for that reason.
A failed backup depends on nothing: Cinder counts a dependent only when it
completes, so an ``error`` backup has no parent here. A parent recorded in
our journal (``BackupInfo.parent_id``) wins over inference, unless it is
not older than its child, which would make the chain a loop.

Pure: no I/O and no clock reads; ``now`` is always an argument.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import re
from collections.abc import Iterable, Sequence
from typing import Final, Literal, NamedTuple

from cinderbak import durations

UTC = datetime.UTC
FULL: Final = "full"
INCREMENTAL: Final = "incremental"
Kind = Literal["full", "incremental"]

AVAILABLE: Final = "available"
ERROR: Final = "error"
# A backup in one of these never completed, so nothing was built on it.
NEVER_COMPLETED = frozenset({"creating", ERROR})
# Statuses in which a backup's data is intact and readable.
READABLE = frozenset({AVAILABLE, "restoring"})

_EPOCH = datetime.datetime.min.replace(tzinfo=UTC)


class BackupInfo(NamedTuple):
    """What the planner needs to know about one Cinder backup.

    A named tuple, not a frozen dataclass: a plan builds one per listed
    backup (100,000 at 10,000 volumes), and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, five
    times the cost of a tuple (measured 2.9 against 0.6 us). Change one
    with ``_replace``.
    """

    id: str
    # tz-aware UTC; None when Cinder gave none (the planner keeps it)
    created_at: datetime.datetime | None
    data_timestamp: datetime.datetime | None  # point in time of the data
    is_incremental: bool
    status: str  # available, creating, deleting, restoring, error, ...
    ours: bool  # carries our cinderbak:owner mark
    held: bool  # metadata cinderbak:hold == 'true'
    has_dependent_backups: bool  # Cinder's own flag, before any delete
    parent_id: str | None = None  # when known (journal); else inferred


def _as_utc(
    value: datetime.datetime | None,
) -> tuple[datetime.datetime, bool]:
    """Return ``value`` in UTC and whether it was unusable as given.

    A naive time is read as UTC (Cinder stores UTC) so that the chain can
    still be inferred; the planner keeps such a backup and says why.
    """
    if value is None:
        return _EPOCH, True
    tz = value.tzinfo
    if tz is UTC:
        return value, False
    if tz is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC), True
    return value.astimezone(UTC), False


def _newest_first(
    rows: list[
        tuple[datetime.datetime, datetime.datetime, str, bool, BackupInfo]
    ],
) -> list[int]:
    """Indexes of ``rows`` (sorted by created_at, data_timestamp, id) by
    data_timestamp, created_at and id, newest first.

    Almost always each backup's data is no older than the one created
    before it (data_timestamp is created_at but for backups of a
    snapshot): then the order is the creation order reversed, found with
    one comparison per backup instead of a sort by a built key (a sixth
    of planning a volume of ten backups)."""
    n = len(rows)
    previous = None
    for row in rows:
        key = (row[1], row[0], row[2])
        if previous is not None and key < previous:
            return sorted(
                range(n),
                key=lambda i: (rows[i][1], rows[i][0], rows[i][2]),
                reverse=True,
            )
        previous = key
    return list(range(n - 1, -1, -1))


class _Ranks:
    """A set of ranks 0..size-1 with O(log n) "highest member below r".

    A Fenwick tree of counts: inference asks, for every incremental, for
    the newest candidate parent seen so far, which keeps chain inference
    O(n log n) even for volumes with tens of thousands of backups.
    """

    __slots__ = ("_tree", "_top")

    def __init__(self, size: int) -> None:
        self._tree = [0] * (size + 1)
        self._top = 1 << (size.bit_length() - 1) if size else 0

    def add(self, rank: int) -> None:
        tree = self._tree
        i = rank + 1
        while i < len(tree):
            tree[i] += 1
            i += i & -i

    def highest_below(self, bound: int) -> int:
        """Return the highest member < bound, or -1."""
        tree = self._tree
        count = 0
        i = bound
        while i > 0:
            count += tree[i]
            i -= i & -i
        if not count:
            return -1
        # Descend to the count-th member: the one we want.
        pos = 0
        step = self._top
        while step:
            nxt = pos + step
            if nxt < len(tree) and tree[nxt] < count:
                pos = nxt
                count -= tree[nxt]
            step >>= 1
        return pos


class Chains:
    """The backups of one volume with their dependencies resolved.

    Backups are held in creation order, so a parent always comes before
    its children (its index is lower): walking the indexes backwards
    visits every child before its parent.
    """

    __slots__ = (
        "backups",
        "created",
        "data",
        "unusable_time",
        "parent",
        "children",
        "index",
        "recorded_missing",
        "newest_first",
    )

    def __init__(self, backups: Iterable[BackupInfo]) -> None:
        rows: list[
            tuple[datetime.datetime, datetime.datetime, str, bool, BackupInfo]
        ] = []
        for b in backups:
            created, data = b.created_at, b.data_timestamp
            if (
                created is not None
                and data is not None
                and created.tzinfo is UTC
                and data.tzinfo is UTC
            ):
                rows.append((created, data, b.id, False, b))
            else:
                utc_created, bad_c = _as_utc(created)
                utc_data, bad_d = _as_utc(data)
                rows.append((utc_created, utc_data, b.id, bad_c or bad_d, b))
        n = len(rows)
        if len({r[2] for r in rows}) != n:
            seen: set[str] = set()
            for row in rows:
                if row[2] in seen:
                    raise ValueError(f"backup {row[2]} is listed twice")
                seen.add(row[2])
        rows.sort()  # by created_at, data_timestamp, id: ids are unique
        self.backups: list[BackupInfo] = [r[4] for r in rows]
        self.created: list[datetime.datetime] = [r[0] for r in rows]
        self.data: list[datetime.datetime] = [r[1] for r in rows]
        self.unusable_time: list[bool] = [r[3] for r in rows]
        self.index: dict[str, int] = {r[2]: i for i, r in enumerate(rows)}
        # "Newest" is by data_timestamp (the point in time a restore gives
        # back), then created_at and id so that the order is total.
        self.newest_first: list[int] = _newest_first(rows)
        self.parent: list[int] = [-1] * n
        self.recorded_missing: dict[int, str] = {}
        self._resolve_parents()
        children: list[list[int]] = [[] for _ in range(n)]
        for i, p in enumerate(self.parent):
            if p >= 0:
                children[p].append(i)
        self.children = children

    def _resolve_parents(self) -> None:
        backups, created, data = self.backups, self.created, self.data
        parent, n = self.parent, len(self.backups)
        needs = [False] * n
        for i, b in enumerate(backups):
            if not b.is_incremental or b.status == ERROR:
                continue
            if b.parent_id is not None:
                j = self.index.get(b.parent_id)
                if j is None:
                    self.recorded_missing[i] = b.parent_id
                    continue
                if created[j] < created[i]:
                    parent[i] = j
                    continue
            needs[i] = True
        if not any(needs):
            return
        # Candidate parents, oldest first.
        cands = [
            i
            for i in reversed(self.newest_first)
            if backups[i].status not in NEVER_COMPLETED
            and backups[i].created_at is not None
            and backups[i].data_timestamp is not None
        ]
        cand_data = [data[i] for i in cands]
        rank = [-1] * n
        for r, i in enumerate(cands):
            rank[i] = r
        # Most incrementals' data is newer than every candidate so far:
        # then the answer is the highest rank added (``top``). The Fenwick
        # tree is only filled once a backup from an older snapshot asks.
        present: _Ranks | None = None
        pending: list[int] = []
        top = -1
        start = 0
        while start < n:
            # Backups created at the same instant cannot chain onto each
            # other: answer the whole group before adding it.
            end = start + 1
            while end < n and created[end] == created[start]:
                end += 1
            for i in range(start, end):
                if not needs[i]:
                    continue
                bound = bisect.bisect_left(cand_data, data[i])
                if top < bound:
                    r = top
                else:
                    if present is None:
                        present = _Ranks(len(cands))
                    for added in pending:
                        present.add(added)
                    pending.clear()
                    r = present.highest_below(bound)
                if r >= 0:
                    parent[i] = cands[r]
            for i in range(start, end):
                r = rank[i]
                if r >= 0:
                    pending.append(r)
                    if r > top:
                        top = r
            start = end

    def parent_ids(self) -> dict[str, str | None]:
        ids = [b.id for b in self.backups]
        result: dict[str, str | None] = {}
        for i, p in enumerate(self.parent):
            result[ids[i]] = ids[p] if p >= 0 else self.recorded_missing.get(i)
        return result

    def ancestry(self, i: int) -> list[int]:
        """Return ``i`` and its ancestors, newest first."""
        chain = [i]
        while (i := self.parent[i]) >= 0:
            chain.append(i)
        return chain


def infer_parents(backups: Iterable[BackupInfo]) -> dict[str, str | None]:
    """Given all backups of one volume in one project, map each id to its
    parent's id (None for a full, a failed backup, or an unknown parent).

    A recorded ``parent_id`` is used as is, even when that backup is not in
    the list. Raise ValueError if an id is listed twice.
    """
    return Chains(backups).parent_ids()


def expected_parent(
    history: Iterable[BackupInfo],
    before: datetime.datetime | None = None,
) -> str | None:
    """Return the id of the backup Cinder would pick as the parent of an
    incremental requested now: the newest available backup of the volume
    in the project, ours or not. ``before`` is the snapshot's creation time
    when backing up from a snapshot (only older data qualifies).
    """
    bound = _as_utc(before)[0] if before is not None else None
    best: tuple[datetime.datetime, datetime.datetime, str] | None = None
    for b in history:
        if b.status != AVAILABLE:
            continue
        data = _as_utc(b.data_timestamp)[0]
        if bound is not None and data >= bound:
            continue
        key = (data, _as_utc(b.created_at)[0], b.id)
        if best is None or key > best:
            best = key
    return best[2] if best else None


# -- when to start a new full -------------------------------------------

FULL_EVERY_FORM: Final = (
    "a number of incrementals (6), a maximum chain age (14d), or both (6, 14d)"
)


class FullEverySyntaxError(ValueError):
    """A ``full_every`` value that does not parse; the message names the
    offending part and the expected form."""


@dataclasses.dataclass(frozen=True)
class FullEvery:
    """When to start a new chain: after ``incrementals`` incrementals, or
    when the chain's full is ``max_age`` old, whichever comes first.

    Both bound restore time (a restore reads the whole chain) and limit
    the damage of one bad link.
    """

    incrementals: int | None = None
    max_age: datetime.timedelta | None = None

    def __post_init__(self) -> None:
        if self.incrementals is None and self.max_age is None:
            raise ValueError(
                "full_every needs a count, an age or both: an unbounded "
                "chain makes every restore slower"
            )
        if self.incrementals is not None and (
            isinstance(self.incrementals, bool)
            or not isinstance(self.incrementals, int)
            or self.incrementals < 0
        ):
            raise ValueError(
                f"incrementals must be a whole number >= 0, "
                f"not {self.incrementals!r}"
            )
        if self.max_age is not None and self.max_age <= datetime.timedelta():
            raise ValueError(f"max_age must be positive, not {self.max_age}")

    def __str__(self) -> str:
        parts = []
        if self.incrementals is not None:
            parts.append(str(self.incrementals))
        if self.max_age is not None:
            parts.append(format_duration(self.max_age))
        return ", ".join(parts)


_COUNT = re.compile(r"[0-9]+")


def parse_full_every(text: str) -> FullEvery:
    """Given ``"6"``, ``"14d"`` or ``"6, 14d"``, return the FullEvery.

    ``0`` means every backup is a full. Raise FullEverySyntaxError naming
    the offending part.
    """
    stripped = text.strip()
    if not stripped:
        raise FullEverySyntaxError(
            f'full_every "{text}" is empty; expected {FULL_EVERY_FORM}'
        )
    incrementals: int | None = None
    max_age: datetime.timedelta | None = None
    for raw in stripped.split(","):
        item = raw.strip()
        if not item:
            raise FullEverySyntaxError(
                f'"{stripped}": empty item between commas; '
                f"expected {FULL_EVERY_FORM}"
            )
        if _COUNT.fullmatch(item):
            if incrementals is not None:
                raise FullEverySyntaxError(
                    f'"{item}": the number of incrementals is given twice; '
                    f"expected {FULL_EVERY_FORM}"
                )
            incrementals = int(item)
            continue
        try:
            age = durations.parse_duration(item)
        except ValueError:
            raise FullEverySyntaxError(
                f'"{item}": neither a number of incrementals nor a '
                f"duration; expected {FULL_EVERY_FORM}"
            ) from None
        if max_age is not None:
            raise FullEverySyntaxError(
                f'"{item}": the maximum chain age is given twice; '
                f"expected {FULL_EVERY_FORM}"
            )
        max_age = age
    return FullEvery(incrementals=incrementals, max_age=max_age)


def next_backup_kind(
    history: Sequence[BackupInfo],
    full_every: FullEvery,
    now: datetime.datetime,
) -> tuple[Kind, str]:
    """Given all backups of the volume in the project, say whether the next
    backup should be a full or an incremental, and why.

    The chain measured is the one Cinder would extend: that of the newest
    *available* backup by data timestamp (Cinder ignores backups in any
    other state when it picks the parent, so a failed backup after a dead
    backup service does not force fulls). A full is due when there is no
    available backup of ours, when that parent is not ours (an incremental
    would pin a tenant's backup), when the chain is broken or unknown, or
    when it reached ``full_every``'s count or age.
    """
    now = _aware(now, "now")
    if not any(b.ours and b.status == AVAILABLE for b in history):
        return FULL, "no available backup of ours to build on"
    if full_every.incrementals == 0:
        return FULL, "full_every=0: every backup is a full"
    chains = Chains(history)
    parent = -1
    for i in range(len(chains.backups)):
        if chains.data[i] >= now:
            continue
        key = (chains.data[i], chains.created[i], chains.backups[i].id)
        if chains.backups[i].status == AVAILABLE and (
            parent < 0 or key > _key(chains, parent)
        ):
            parent = i
    if parent < 0:
        return FULL, "no available backup older than now to build on"
    p = chains.backups[parent]
    if not p.ours:
        return FULL, (
            f"an incremental would build on {p.id}, which is not ours; "
            "a full keeps the tenant's backup deletable"
        )
    chain = chains.ancestry(parent)
    for i in chain:
        b = chains.backups[i]
        if b.status not in READABLE:
            return FULL, (
                f"the chain of {p.id} runs through {b.id} ({b.status})"
            )
    root = chains.backups[chain[-1]]
    if root.is_incremental:
        return FULL, f"cannot trace the chain of {p.id} back to its full"
    count = sum(chains.backups[i].is_incremental for i in chain)
    limit = full_every.incrementals
    if limit is not None and count >= limit:
        return FULL, (
            f"the chain from full {root.id} holds {count} incrementals "
            f"(full_every {full_every})"
        )
    age = now - chains.data[chain[-1]]
    if full_every.max_age is not None and age >= full_every.max_age:
        return FULL, (
            f"the chain's full {root.id} is {human_duration(age)} old "
            f"(full_every {full_every})"
        )
    return INCREMENTAL, (
        f"incremental #{count + 1} on {p.id}, chain from full {root.id} "
        f"({human_duration(age)} old, full_every {full_every})"
    )


def _key(
    chains: Chains, i: int
) -> tuple[datetime.datetime, datetime.datetime, str]:
    return chains.data[i], chains.created[i], chains.backups[i].id


def _aware(value: datetime.datetime, name: str) -> datetime.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, not {value!r}")
    return value.astimezone(UTC)


# -- durations for messages ---------------------------------------------

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(value: datetime.timedelta) -> str:
    """Return ``value`` as the config syntax writes it (``2w``, ``36h``):
    the largest unit that divides it exactly, so it parses back the same.
    """
    seconds = value.total_seconds()
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        return str(value)
    for unit, size in _UNITS:
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"  # pragma: no cover - "s" always divides


def human_duration(value: datetime.timedelta) -> str:
    """Return an age for people: the two largest units, e.g. ``2d 3h``."""
    total = int(value.total_seconds())
    if total < 0:
        return "-" + human_duration(-value)
    amounts = []
    for unit, size in _UNITS[1:]:
        amount, total = divmod(total, size)
        amounts.append((amount, unit))
    first = next((k for k, (a, _) in enumerate(amounts) if a), 3)
    parts = [f"{a}{u}" for a, u in amounts[first : first + 2] if a]
    return " ".join(parts) or "0s"
