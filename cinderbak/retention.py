"""The retention planner: which backups of one volume to keep, which to
delete, in which order, and why.

Pure: no I/O, no clock reads (``now`` is an argument), stdlib only, so
every rule is tested exhaustively and a dry run is the real thing.

Rules, in the words the decisions use (doc/source/retention.rst has the
reasoning and examples):

* Only backups of ours in a final state (``available``, ``error``) with
  sensible timestamps can be deleted. Foreign, held and in-flight backups
  and those with a timestamp in the future or without a time zone are
  kept, and so is everything they depend on.
* Among our available backups: the ``last`` N, all younger than
  ``within``, and the newest backup in each of the newest H hours, D days,
  W ISO weeks, M months and Y years (UTC) *that hold a backup* are kept.
  Empty periods are not counted: when backups stop, retention does not
  thin out what is left. The newest successful backup is always kept.
* A kept backup keeps every backup it depends on (chains.py).
* Our backups in ``error`` are deleted once older than ``error_grace``.
* A backup Cinder says has dependents is deleted only after dependents we
  can see; if we see none, it is kept.
* When the volume is gone, the normal rules hold for ``orphan_keep_days``
  after its newest backup; then only the newest ``orphan_keep_last`` stay.
  The newest successful backup stays in any case, so an orphan is never
  emptied by expiry.
* Deletions come in a safe order (oldest chain first, each chain newest
  first, so no backup goes before its dependents); ``max_deletions`` takes
  a prefix of that order.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Callable, Iterable
from typing import Final, Literal, NamedTuple

from cinderbak import durations
from cinderbak.chains import (
    AVAILABLE,
    ERROR,
    BackupInfo,
    Chains,
    format_duration,
    human_duration,
    infer_parents,
)

__all__ = [
    "BackupInfo",
    "Decision",
    "Plan",
    "Retention",
    "RetentionSyntaxError",
    "infer_parents",
    "parse_retention",
    "plan",
]

UTC = datetime.UTC
KEEP: Final = "keep"
DELETE: Final = "delete"
Action = Literal["keep", "delete"]
FINAL = frozenset({AVAILABLE, ERROR})

KEYS: Final = (
    "last",
    "within",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
)
COUNT_KEYS = tuple(k for k in KEYS if k != "within")
FORM: Final = (
    "comma-separated key=value, e.g. last=7, within=3d, daily=14, "
    "weekly=8, monthly=12"
)


class RetentionSyntaxError(ValueError):
    """A retention text that does not parse; the message names the
    offending part and the expected form."""


@dataclasses.dataclass(frozen=True)
class Retention:
    """How many backups of a volume to keep; see the module docstring.

    ``error_grace`` and the orphan fields come from the policy config, not
    from the retention text.
    """

    last: int = 0
    within: datetime.timedelta = datetime.timedelta()
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    error_grace: datetime.timedelta = datetime.timedelta(days=1)
    orphan_keep_last: int = 1
    orphan_keep_days: int = 30

    def __post_init__(self) -> None:
        for name in (*COUNT_KEYS, "orphan_keep_last", "orphan_keep_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"{name} must be a whole number, not {value!r}"
                )
            if value < 0:
                raise ValueError(f"{name} must be 0 or more, not {value}")
        for name in ("within", "error_grace"):
            if getattr(self, name) < datetime.timedelta():
                raise ValueError(f"{name} must not be negative")
        if not self.within and not any(getattr(self, k) for k in COUNT_KEYS):
            # Rejected rather than read as "keep everything" or "keep the
            # newest": a forgotten value must not silently delete history.
            raise ValueError(
                "this retention keeps nothing but the newest backup; set "
                f"at least one of {', '.join(KEYS)} (write last=1 if only "
                "the newest should stay)"
            )

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        parts = []
        for key in KEYS:
            value = getattr(self, key)
            if key == "within":
                if value:
                    parts.append(f"within={format_duration(value)}")
            elif value:
                parts.append(f"{key}={value}")
        return ", ".join(parts)


def parse_retention(text: str) -> Retention:
    """Given ``"last=7, within=3d, daily=14, weekly=8"``, return the
    Retention. Keys are optional, each at most once; counts are whole
    numbers; ``within`` takes a duration (``90m``, ``36h``, ``14d``,
    ``2w``). Raise RetentionSyntaxError naming the offending part.
    """
    stripped = text.strip()
    values: dict[str, object] = {}
    for raw in stripped.split(",") if stripped else ():
        item = raw.strip()
        if not item:
            raise RetentionSyntaxError(
                f'"{stripped}": empty item between commas; expected {FORM}'
            )
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise RetentionSyntaxError(
                f'"{item}": expected key=value, e.g. daily=14'
            )
        if key not in KEYS:
            raise RetentionSyntaxError(
                f'"{item}": unknown key {key!r}; expected one of '
                f"{', '.join(KEYS)}"
            )
        if key in values:
            raise RetentionSyntaxError(
                f'"{item}": {key} is given twice; each key at most once'
            )
        if key == "within":
            try:
                values[key] = durations.parse_duration(value)
            except ValueError:
                raise RetentionSyntaxError(
                    f'"{item}": within takes a duration such as 90m, 36h, '
                    "14d or 2w"
                ) from None
        elif value.isascii() and value.isdigit():
            values[key] = int(value)
        else:
            raise RetentionSyntaxError(
                f'"{item}": {key} takes a whole number (0 or more), '
                f"e.g. {key}=7"
            )
    try:
        return Retention(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RetentionSyntaxError(f'"{stripped}": {exc}') from None


class Decision(NamedTuple):
    """What to do with one backup, and every reason for it.

    A named tuple rather than a frozen dataclass: a region-wide pass
    creates a million of them, and a tuple is several times cheaper.
    """

    backup_id: str
    action: Action
    reasons: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The decisions for one volume: kept backups first (newest first),
    then deletions in the order they must be carried out."""

    decisions: tuple[Decision, ...]

    @functools.cached_property
    def keep_ids(self) -> tuple[str, ...]:
        return tuple(d.backup_id for d in self.decisions if d.action == KEEP)

    @functools.cached_property
    def deletions(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == DELETE)

    @functools.cached_property
    def delete_ids(self) -> tuple[str, ...]:
        """Ids to delete, in a safe order: carry them out one by one."""
        return tuple(d.backup_id for d in self.deletions)

    def decision(self, backup_id: str) -> Decision:
        """Return the decision about ``backup_id`` (KeyError if unknown)."""
        return self._by_id[backup_id]

    @functools.cached_property
    def _by_id(self) -> dict[str, Decision]:
        return {d.backup_id: d for d in self.decisions}


# -- GFS periods: an integer key per UTC period, and a label for people --


def _hour(t: datetime.datetime) -> int:
    return t.toordinal() * 24 + t.hour


def _day(t: datetime.datetime) -> int:
    return t.toordinal()


def _week(t: datetime.datetime) -> int:
    return t.toordinal() - t.weekday()  # the ISO week's Monday


def _month(t: datetime.datetime) -> int:
    return t.year * 12 + t.month


def _year(t: datetime.datetime) -> int:
    return t.year


def _iso_week(t: datetime.datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


PERIODS: Final[
    tuple[
        tuple[
            str,
            Callable[[datetime.datetime], int],
            Callable[[datetime.datetime], str],
        ],
        ...,
    ]
] = (
    ("hourly", _hour, lambda t: f"{t:%Y-%m-%d %H}h"),
    ("daily", _day, lambda t: f"{t:%Y-%m-%d}"),
    ("weekly", _week, _iso_week),
    ("monthly", _month, lambda t: f"{t:%Y-%m}"),
    ("yearly", _year, lambda t: f"{t:%Y}"),
)


def _timestamp_problem(chains: Chains, i: int) -> str:
    """Say what is wrong with the times of a backup known to be odd."""
    if chains.unusable_time[i]:
        return (
            "timestamp missing or without time zone: cannot place it in time"
        )
    if chains.data[i] <= chains.created[i]:
        return f"created_at {chains.created[i].isoformat()} is after now"
    return f"data_timestamp {chains.data[i].isoformat()} is after now"


def nothing_to_delete(
    backups: Iterable[BackupInfo], retention: Retention, *, volume_exists: bool
) -> bool:
    """Return True only when :func:`plan` would certainly delete nothing,
    cheaply: the volume exists, none of our backups is in error, and our
    available backups are no more than ``last`` keeps. An expiry pass
    skips planning such a volume (most of them, in steady state, between
    two runs); False means "plan it", not that something will go.
    """
    if not volume_exists or not retention.last:
        return False
    ours_available = 0
    for backup in backups:
        if not backup.ours:
            continue
        if backup.status == ERROR:
            return False
        if backup.status == AVAILABLE:
            ours_available += 1
    return ours_available <= retention.last


def plan(
    backups: Iterable[BackupInfo],
    retention: Retention,
    now: datetime.datetime,
    *,
    volume_exists: bool = True,
    max_deletions: int | None = None,
) -> Plan:
    """Given all backups of one volume in one project (ours and foreign),
    return which to keep and which to delete, in a safe order, with the
    reasons. Raise ValueError for a naive ``now``, a negative
    ``max_deletions`` or an id listed twice.

    Runs in O(n log n) for n backups.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, not {now!r}")
    if max_deletions is not None and max_deletions < 0:
        raise ValueError(
            f"max_deletions must be 0 or more, not {max_deletions}"
        )
    now = now.astimezone(UTC)
    chains = Chains(backups)
    items = chains.backups
    n = len(items)
    reasons: list[list[str]] = [[] for _ in range(n)]
    kept = [False] * n
    doomed: list[int] = []  # ours, final, not protected: deletable
    good = [False] * n  # ours, available, sane: these fill the slots

    def keep(i: int, reason: str) -> None:
        kept[i] = True
        reasons[i].append(reason)

    grace = retention.error_grace
    data, created, odd = chains.data, chains.created, chains.unusable_time
    for i, b in enumerate(items):
        if not b.ours:
            keep(i, "not ours")
        if b.held:
            keep(i, "held")
        if b.status not in FINAL:
            keep(i, f"status {b.status}")
        if odd[i] or created[i] > now or data[i] > now:
            keep(i, _timestamp_problem(chains, i))
        if kept[i]:
            continue
        if b.status == AVAILABLE:
            good[i] = True
            doomed.append(i)
            continue
        age = now - created[i]
        if age > grace:
            reasons[i].append(
                f"error for {human_duration(age)}, past "
                f"error_grace {format_duration(grace)}"
            )
            doomed.append(i)
        else:
            keep(i, f"error, within error_grace {format_duration(grace)}")

    successful = [i for i in chains.newest_first if good[i]]
    expired = ""
    if successful:
        keep(successful[0], "newest successful")
        normal = True
        if not volume_exists:
            count = retention.orphan_keep_last
            for k, i in enumerate(successful[:count], 1):
                keep(i, f"orphan_keep_last={count} #{k}")
            end = data[successful[0]] + datetime.timedelta(
                days=retention.orphan_keep_days
            )
            normal = now < end
            if not normal:
                expired = (
                    f"volume deleted; orphan period ended {end:%Y-%m-%d}: "
                    f"only orphan_keep_last={count} stay"
                )
        if normal:
            _normal_rules(retention, successful, data, now, keep)

    # Cinder knows of dependents we cannot see (another project's backup,
    # a parent we inferred differently): never delete such a backup.
    children = chains.children
    for i in doomed:
        if not kept[i] and items[i].has_dependent_backups and not children[i]:
            keep(i, "Cinder reports dependents we cannot see")

    # A kept backup keeps its chain. Children come after their parents,
    # so walking backwards settles every child before its parent.
    parent = chains.parent
    noted = [False] * n
    for i in range(n - 1, -1, -1):
        p = parent[i]
        if p >= 0 and kept[i]:
            kept[p] = True
            if not noted[p]:
                noted[p] = True
                reasons[p].append(f"ancestor of kept {items[i].id}")

    root = list(range(n))
    for i in range(n):
        if parent[i] >= 0:
            root[i] = root[parent[i]]
    deletes = [i for i in doomed if not kept[i]]
    deletes.sort(key=lambda i: (root[i], -i))
    for i in deletes:
        b = items[i]
        if b.status == AVAILABLE:
            expired = expired or f"expired: no rule of ({retention}) keeps it"
            reasons[i].append(expired)
        if b.has_dependent_backups:
            reasons[i].append(
                f"Cinder reports dependents: the {len(children[i])} we "
                "infer are deleted before it"
            )
    if max_deletions is not None and len(deletes) > max_deletions:
        for i in deletes[max_deletions:]:
            kept[i] = True
            reasons[i].insert(0, f"deferred by max_deletions={max_deletions}")
        del deletes[max_deletions:]

    # List comprehensions, not generators: tuple() of a generator resumes
    # it once per item (a tenth of planning a volume of ten backups).
    decisions = [
        Decision(items[i].id, KEEP, tuple(reasons[i]))
        for i in chains.newest_first
        if kept[i]
    ]
    decisions += [
        Decision(items[i].id, DELETE, tuple(reasons[i])) for i in deletes
    ]
    return Plan(tuple(decisions))


def _normal_rules(
    retention: Retention,
    successful: list[int],
    data: list[datetime.datetime],
    now: datetime.datetime,
    keep: Callable[[int, str], None],
) -> None:
    """Apply last, within and the GFS periods to ``successful`` (newest
    first)."""
    last = retention.last
    for k, i in enumerate(successful[:last], 1):
        keep(i, f"last={last} #{k}")
    if retention.within:
        oldest = now - retention.within
        reason = f"within {format_duration(retention.within)}"
        for i in successful:
            if data[i] < oldest:
                break
            keep(i, reason)
    for name, period, label in PERIODS:
        wanted = getattr(retention, name)
        if not wanted:
            continue
        previous = None
        found = 0
        for i in successful:
            key = period(data[i])
            if key == previous:
                continue
            found += 1
            if found > wanted:
                break
            previous = key
            keep(i, f"{name} {label(data[i])}")
