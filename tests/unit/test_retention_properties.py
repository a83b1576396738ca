"""Properties of the retention planner over random histories.

Each history is one volume's backups: random chains of fulls and
incrementals, foreign backups interleaved, random statuses, holds, stale
journal records, odd timestamps, and a random ``now``. The invariants are
the safety rules of DESIGN.md; an independent brute-force model of chain
inference checks the fast one.

Examples per property: CINDERBAK_RETENTION_EXAMPLES (default 400). The
total run is printed at the end of the module.
"""

from __future__ import annotations

import collections
import datetime
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinderbak import chains
from cinderbak.quiet import kept_by_last, volume_stays_quiet
from cinderbak.retention import (
    BackupInfo,
    Retention,
    infer_parents,
    nothing_to_delete,
    plan,
)

UTC = datetime.UTC
MINUTE = datetime.timedelta(minutes=1)
BASE = datetime.datetime(2024, 12, 28, tzinfo=UTC)
STATUSES = ["available"] * 6 + [
    "error",
    "error",
    "creating",
    "deleting",
    "restoring",
    "error_deleting",
]

settings.register_profile(
    "cinderbak-retention",
    max_examples=int(os.environ.get("CINDERBAK_RETENTION_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("cinderbak-retention")
EXAMPLES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request):
    yield
    total = sum(EXAMPLES.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES.items()))
    line = f"retention properties: {total} examples ({detail})"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


def utc(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def sane(b: BackupInfo, now: datetime.datetime) -> bool:
    return (
        b.created_at.tzinfo is not None
        and b.data_timestamp.tzinfo is not None
        and b.created_at <= now
        and b.data_timestamp <= now
    )


def newest_key(b: BackupInfo) -> tuple:
    return utc(b.data_timestamp), utc(b.created_at), b.id


def model_parents(backups: list[BackupInfo]) -> dict[str, str | None]:
    """Chain inference, the slow obvious way (see chains.py's rule)."""
    by_id = {b.id: b for b in backups}
    created = {b.id: utc(b.created_at) for b in backups}
    data = {b.id: utc(b.data_timestamp) for b in backups}
    completed = [b for b in backups if b.status not in ("creating", "error")]
    result: dict[str, str | None] = {}
    for child in backups:
        result[child.id] = None
        if not child.is_incremental or child.status == "error":
            continue
        if child.parent_id is not None:
            recorded = by_id.get(child.parent_id)
            if recorded is None:
                result[child.id] = child.parent_id
                continue
            if created[recorded.id] < created[child.id]:
                result[child.id] = recorded.id
                continue
        candidates = [
            (data[b.id], created[b.id], b.id)
            for b in completed
            if created[b.id] < created[child.id]
            and data[b.id] < data[child.id]
        ]
        if candidates:
            result[child.id] = max(candidates)[2]
    return result


def successful(backups, now) -> list[BackupInfo]:
    """Ours, available, sensible times: newest first."""
    return sorted(
        (
            b
            for b in backups
            if b.ours and b.status == "available" and sane(b, now)
        ),
        key=newest_key,
        reverse=True,
    )


# Minutes between two backups: from the same instant to a year apart, so
# that hours, days, ISO weeks, months and years all get exercised.
GAPS = (
    [0, 0, 0, 1, 2, 5, 10, 30]
    + [60 * h for h in (1, 2, 3, 5, 8, 12, 18, 23, 24, 25, 36, 47)]
    + [1440 * d for d in (1, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14)]
    + [1440 * d for d in (15, 20, 27, 28, 29, 30, 31, 32, 45, 59, 60, 61)]
    + [1440 * d for d in (90, 120, 180, 200, 300, 364, 365, 366, 400, 800)]
    + [1440 * 7 * w for w in (3, 5, 6, 8, 10, 12)]
)
LAGS = (0, 0, 0, 7, 180)  # data older than created: taken from a snapshot


FIELDS = 9  # bytes per backup


def decode(raw: bytes, k: int, earlier: list[BackupInfo], t, tidy: bool):
    """Build backup number ``k`` from ``FIELDS`` random bytes.

    One draw of bytes for the whole history keeps generation fast (and
    bytes come out near uniform, unlike the digits of one big integer).
    Every byte's zero is the plainest choice (no gap, ours, available, a
    full, not held), so failures shrink to readable histories. ``tidy``
    histories are daily-ish and mostly healthy: long chains, as the daemon
    usually sees them.
    """
    gap, lag, naive, inc, record, status, foreign, held, pick = raw
    if tidy:
        gap, naive, foreign = gap % 28, 0, foreign // 8
        status = 0 if status % 4 else status
    t += GAPS[gap % len(GAPS)] * MINUTE
    created = t if naive < 250 else t.replace(tzinfo=None)
    parent = None
    if inc >= 64 and earlier and record >= 236:
        parent = "gone"
    elif inc >= 64 and earlier and record >= 216:
        parent = earlier[pick % len(earlier)].id
    backup = BackupInfo(
        id=f"b{k:02d}{'xyz'[pick % 3]}",
        created_at=created,
        data_timestamp=t - LAGS[lag % len(LAGS)] * MINUTE,
        is_incremental=inc >= 64,
        status=STATUSES[status * len(STATUSES) // 256],
        ours=foreign < 205,
        held=held >= 230,
        has_dependent_backups=False,
        parent_id=parent,
    )
    return backup, t


@st.composite
def histories(draw, max_size: int = 30, tidy: bool = False):
    size = draw(st.integers(0, max_size))
    raw = draw(st.binary(min_size=size * FIELDS, max_size=size * FIELDS))
    t = BASE
    backups: list[BackupInfo] = []
    for k in range(size):
        chunk = raw[k * FIELDS : (k + 1) * FIELDS]
        backup, t = decode(chunk, k, backups, t, tidy)
        backups.append(backup)
    # Cinder's flag: a parent with a completed child, plus a few that
    # depend on backups we cannot see.
    parents = model_parents(backups)
    counted = {
        parents[b.id] for b in backups if b.status not in ("creating", "error")
    }
    unseen = draw(st.sets(st.integers(0, 40), max_size=2))
    backups = [
        _replace(b, has_dependent_backups=b.id in counted or k in unseen)
        for k, b in enumerate(backups)
    ]
    last = max((utc(b.created_at) for b in backups), default=BASE)
    now = last + draw(st.integers(-3 * 1440, 900 * 1440)) * MINUTE
    return backups, now


HISTORIES = histories(tidy=True) | histories()


def _replace(b: BackupInfo, **changes) -> BackupInfo:
    fields = {f: getattr(b, f) for f in BackupInfo._fields}
    fields.update(changes)
    return BackupInfo(**fields)


@st.composite
def retentions(draw):
    counts = {
        key: draw(st.integers(0, 4))
        for key in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    }
    within = (
        draw(st.sampled_from([0, 0, 90, 36 * 60, 3 * 1440, 14 * 1440]))
        * MINUTE
    )
    if not within and not any(counts.values()):
        counts["last"] = 1
    return Retention(
        within=within,
        error_grace=draw(st.sampled_from([60, 1440, 3 * 1440])) * MINUTE,
        orphan_keep_last=draw(st.integers(0, 3)),
        orphan_keep_days=draw(st.integers(0, 60)),
        **counts,
    )


def check_safety(backups, retention, now, result, volume_exists):
    """The rules that must hold for every plan."""
    by_id = {b.id: b for b in backups}
    parents = infer_parents(backups)
    decided = [d.backup_id for d in result.decisions]
    assert sorted(decided) == sorted(by_id), "every backup decided once"
    assert all(d.reasons for d in result.decisions)
    deleted = result.delete_ids
    position = {backup_id: k for k, backup_id in enumerate(deleted)}
    kept = set(result.keep_ids)
    good = successful(backups, now)
    if good:
        assert good[0].id in kept, "newest successful kept"
    for backup_id in deleted:
        b = by_id[backup_id]
        assert b.ours, "only ours deleted"
        assert b.status in ("available", "error"), "only final deleted"
        assert not b.held, "held never deleted"
        assert sane(b, now), "odd timestamps keep the backup"
        if b.status == "error":
            assert now - b.created_at > retention.error_grace
    children = collections.defaultdict(list)
    for child, parent in parents.items():
        if parent in by_id:
            children[parent].append(child)
    for backup_id in kept:
        parent = parents[backup_id]
        if parent in by_id:
            assert parent in kept, "a kept backup keeps its parent"
    for backup_id in deleted:
        for child in children[backup_id]:
            # A kept child would have kept its parent (above), so every
            # dependent is deleted too, and before it.
            assert position[child] < position[backup_id], "dependents first"
        if by_id[backup_id].has_dependent_backups:
            assert children[backup_id], "unseen dependents keep a backup"
    if not volume_exists and good:
        for b in good[: max(retention.orphan_keep_last, 1)]:
            assert b.id in kept, "an orphan keeps its newest"


def expected_slots(backups, retention, now) -> dict[str, str]:
    """Which backup each last/within/GFS slot must keep (id -> slot)."""
    good = successful(backups, now)
    wanted = {b.id: "newest" for b in good[:1]}
    for b in good[: retention.last]:
        wanted[b.id] = "last"
    for b in good:
        if retention.within and now - b.data_timestamp <= retention.within:
            wanted[b.id] = "within"
    periods = {
        "hourly": lambda t: (t.date(), t.hour),
        "daily": lambda t: t.date(),
        "weekly": lambda t: t.isocalendar()[:2],
        "monthly": lambda t: (t.year, t.month),
        "yearly": lambda t: t.year,
    }
    for name, period in periods.items():
        newest_in = {}
        for b in good:  # newest first: the first seen is the newest
            newest_in.setdefault(period(utc(b.data_timestamp)), b)
        buckets = sorted(newest_in, reverse=True)[: getattr(retention, name)]
        for bucket in buckets:
            wanted[newest_in[bucket].id] = name
    return wanted


# -- the properties -------------------------------------------------------


@PROFILE
@given(histories(max_size=60))
def test_fast_chain_inference_matches_the_model(case):
    EXAMPLES["inference"] += 1
    backups, _ = case
    assert infer_parents(backups) == model_parents(backups)


@PROFILE
@given(HISTORIES)
def test_newest_first_is_the_order_by_data_time(case):
    """The fast path (creation order reversed) and the sort agree with
    the definition: data_timestamp, then created_at, then id, newest
    first, whatever the times (backups of snapshots, naive, missing)."""
    EXAMPLES["newest_first"] += 1
    backups, _ = case
    found = chains.Chains(backups)
    expected = sorted(
        found.backups,
        key=lambda b: (
            found.data[found.index[b.id]],
            found.created[found.index[b.id]],
            b.id,
        ),
        reverse=True,
    )
    assert [found.backups[i] for i in found.newest_first] == expected


@PROFILE
@given(HISTORIES, retentions(), st.booleans(), st.none() | st.integers(0, 6))
def test_every_plan_is_safe(case, retention, volume_exists, max_deletions):
    EXAMPLES["safety"] += 1
    backups, now = case
    result = plan(
        backups,
        retention,
        now,
        volume_exists=volume_exists,
        max_deletions=max_deletions,
    )
    check_safety(backups, retention, now, result, volume_exists)


@PROFILE
@given(HISTORIES, retentions())
def test_every_slot_that_can_be_filled_is_kept(case, retention):
    EXAMPLES["slots"] += 1
    backups, now = case
    kept = set(plan(backups, retention, now).keep_ids)
    for backup_id, slot in expected_slots(backups, retention, now).items():
        assert backup_id in kept, slot


@PROFILE
@given(HISTORIES, retentions(), st.booleans())
def test_planning_the_kept_set_again_deletes_nothing(
    case, retention, volume_exists
):
    EXAMPLES["idempotence"] += 1
    backups, now = case
    first = plan(backups, retention, now, volume_exists=volume_exists)
    kept = [b for b in backups if b.id in set(first.keep_ids)]
    again = plan(kept, retention, now, volume_exists=volume_exists)
    assert again.delete_ids == ()


@PROFILE
@given(HISTORIES, retentions(), st.booleans())
def test_a_volume_skipped_as_having_nothing_to_delete_has_nothing(
    case, retention, volume_exists
):
    EXAMPLES["skip"] += 1
    backups, now = case
    if nothing_to_delete(backups, retention, volume_exists=volume_exists):
        EXAMPLES["skip (nothing to delete)"] += 1
        assert (
            plan(
                backups, retention, now, volume_exists=volume_exists
            ).delete_ids
            == ()
        )


@PROFILE
@given(HISTORIES, retentions(), st.integers(0, 8))
def test_a_bounded_pass_is_a_prefix_of_the_full_one(
    case, retention, max_deletions
):
    EXAMPLES["bounded"] += 1
    backups, now = case
    full = plan(backups, retention, now)
    bounded = plan(backups, retention, now, max_deletions=max_deletions)
    assert bounded.delete_ids == full.delete_ids[:max_deletions]


@PROFILE
@given(
    histories(), retentions(), st.randoms(use_true_random=False), st.booleans()
)
def test_the_plan_does_not_depend_on_input_order(
    case, retention, rnd, volume_exists
):
    EXAMPLES["order"] += 1
    backups, now = case
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan(shuffled, retention, now, volume_exists=volume_exists) == (
        plan(backups, retention, now, volume_exists=volume_exists)
    )


@PROFILE
@given(HISTORIES, st.integers(0, 8), st.sampled_from([1, 7, 30]))
def test_an_incremental_is_asked_only_on_a_short_sound_chain(
    case, count, days
):
    EXAMPLES["next_kind"] += 1
    backups, now = case
    now = utc(now)
    full_every = chains.FullEvery(count, datetime.timedelta(days=days))
    kind, reason = chains.next_backup_kind(backups, full_every, now)
    assert reason
    if kind == chains.FULL:
        return
    by_id = {b.id: b for b in backups}
    parents = model_parents(backups)
    parent = by_id[chains.expected_parent(backups, before=now)]
    assert parent.ours and parent.status == "available"
    chain = [parent]
    while parents[chain[-1].id] is not None:
        chain.append(by_id[parents[chain[-1].id]])
    assert not chain[-1].is_incremental
    assert sum(b.is_incremental for b in chain) < count
    assert now - utc(chain[-1].data_timestamp) < full_every.max_age


@PROFILE
@given(
    HISTORIES,
    retentions(),
    st.integers(0, 2000 * 1440),
    st.data(),
)
def test_what_last_keeps_alone_stays_without_deletions_whatever_happens(
    case, retention, later_minutes, data
):
    """A volume whose backups ``last`` alone keeps: no later plan deletes
    anything however much time passes, whichever backups disappear,
    holds come or go, or foreign backups change status, as long as no
    backup is added (cinderbak.quiet)."""
    EXAMPLES["quiet"] += 1
    backups, now = case
    if not kept_by_last(backups, retention):
        return
    EXAMPLES["quiet (kept by last)"] += 1
    kept = data.draw(st.lists(st.booleans(), min_size=len(backups)))
    later: list[BackupInfo] = []
    for b, stays in zip(backups, kept, strict=False):
        if not stays:
            continue
        changes = {"held": data.draw(st.booleans())}
        if not b.ours:
            changes["status"] = data.draw(st.sampled_from(STATUSES))
        later.append(_replace(b, **changes))
    result = plan(later, retention, now + later_minutes * MINUTE)
    assert result.delete_ids == ()


@PROFILE
@given(HISTORIES, retentions(), st.integers(0, 2000 * 1440))
def test_a_quiet_volume_gets_no_deletion_by_time_alone(
    case, retention, later_minutes
):
    """What lets an expiry pass skip listing a quiet project while
    nothing it can see changed: time alone makes nothing due."""
    EXAMPLES["quiet in time"] += 1
    backups, now = case
    if not volume_stays_quiet(backups, retention, now):
        return
    EXAMPLES["quiet in time (quiet)"] += 1
    result = plan(backups, retention, now + later_minutes * MINUTE)
    assert result.delete_ids == ()
