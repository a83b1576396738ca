"""The retention planner, case by case: each test reads as a rule.

Backups are named after the day (and hour) their data is from, e.g.
``d12`` is the backup of 2026-11-12 03:00 UTC.
"""

from __future__ import annotations

import datetime

import pytest

from cinderbak import chains
from cinderbak.retention import (
    BackupInfo,
    Retention,
    RetentionSyntaxError,
    infer_parents,
    parse_retention,
    plan,
)

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def at(day: int, hour: int = 3, month: int = 11) -> datetime.datetime:
    return datetime.datetime(2026, month, day, hour, tzinfo=UTC)


def mk(
    id: str,
    created: datetime.datetime,
    *,
    inc: bool = False,
    status: str = "available",
    ours: bool = True,
    held: bool = False,
    dependents: bool = False,
    data: datetime.datetime | None = None,
    parent: str | None = None,
) -> BackupInfo:
    return BackupInfo(
        id=id,
        created_at=created,
        data_timestamp=data or created,
        is_incremental=inc,
        status=status,
        ours=ours,
        held=held,
        has_dependent_backups=dependents,
        parent_id=parent,
    )


def daily(first: int, last: int, **kw) -> list[BackupInfo]:
    """One full backup per day at 03:00, named d<day>."""
    return [mk(f"d{day}", at(day), **kw) for day in range(first, last + 1)]


def chain(days: list[int], *, full_every: int) -> list[BackupInfo]:
    """Daily backups where every (full_every + 1)-th one is a full."""
    return [
        mk(f"d{day}", at(day), inc=k % (full_every + 1) != 0)
        for k, day in enumerate(days)
    ]


def ids(*days: int) -> set[str]:
    return {f"d{day}" for day in days}


NOW = at(22, 12)  # Sunday 2026-11-22 12:00 UTC, ISO week 47


# -- what each rule keeps ---------------------------------------------


def test_a_week_and_a_half_of_dailies_with_last_3_weekly_2():
    # Thursday 12th (week 46) to Sunday 22nd (week 47). last=3 keeps the
    # 22nd, 21st and 20th; weekly=2 keeps the newest of week 47 (22nd) and
    # of week 46 (Sunday 15th).
    result = plan(daily(12, 22), parse_retention("last=3, weekly=2"), NOW)
    assert result.keep_ids == ("d22", "d21", "d20", "d15")  # newest first
    assert set(result.delete_ids) == ids(12, 13, 14, 16, 17, 18, 19)
    assert result.decision("d22").reasons == (
        "newest successful",
        "last=3 #1",
        "weekly 2026-W47",
    )
    assert result.decision("d15").reasons == ("weekly 2026-W46",)
    assert result.decision("d12").reasons == (
        "expired: no rule of (last=3, weekly=2) keeps it",
    )


def test_periods_without_backups_do_not_count():
    # daily=3 keeps the three newest days *that have a backup*: when
    # backups stop for a while, retention does not thin out the rest.
    backups = [
        mk("d1", at(1)),
        mk("d5", at(5)),
        mk("d10", at(10)),
        mk("d11", at(11)),
    ]
    result = plan(backups, parse_retention("daily=3"), NOW)
    assert set(result.keep_ids) == ids(11, 10, 5)
    assert result.delete_ids == ("d1",)


def test_each_period_keeps_its_newest_backup():
    backups = [mk(f"h{h}", at(20, h)) for h in (1, 9, 17)] + [
        mk(f"y{h}", at(19, h)) for h in (2, 23)
    ]
    result = plan(backups, parse_retention("daily=2"), NOW)
    assert set(result.keep_ids) == {"h17", "y23"}
    assert result.decision("y23").reasons == ("daily 2026-11-19",)


def test_hourly_monthly_and_yearly_label_their_period():
    backups = [
        mk("a", datetime.datetime(2024, 6, 1, tzinfo=UTC)),
        mk("b", datetime.datetime(2025, 12, 31, 23, tzinfo=UTC)),
        mk("c", at(21, 10)),
        mk("d", at(21, 11)),
    ]
    result = plan(
        backups, parse_retention("hourly=2, monthly=2, yearly=3"), NOW
    )
    assert result.decision("d").reasons == (
        "newest successful",
        "hourly 2026-11-21 11h",
        "monthly 2026-11",
        "yearly 2026",
    )
    assert result.decision("c").reasons == ("hourly 2026-11-21 10h",)
    assert result.decision("b").reasons == ("monthly 2025-12", "yearly 2025")
    assert result.decision("a").reasons == ("yearly 2024",)


def test_within_keeps_everything_younger_inclusive():
    backups = daily(17, 22)
    result = plan(backups, parse_retention("within=3d"), NOW)
    # now - 3d = 19th 12:00: the 19th at 03:00 is older, the 20th is not.
    assert set(result.keep_ids) == ids(20, 21, 22)
    assert "within 3d" in result.decision("d20").reasons
    edge = [
        mk("new", NOW),
        mk("edge", NOW - 3 * DAY),
        mk("old", NOW - 3 * DAY - HOUR),
    ]
    result = plan(edge, parse_retention("within=3d"), NOW)
    assert result.keep_ids == ("new", "edge")


def test_the_newest_successful_backup_is_always_kept():
    backups = daily(1, 5) + [mk("failed", at(6), status="error")]
    result = plan(backups, parse_retention("within=1h"), at(20))
    assert set(result.keep_ids) == {"d5"}
    assert result.decision("d5").reasons == ("newest successful",)


def test_slots_are_counted_on_data_timestamp():
    # A backup taken from a yesterday's snapshot counts for yesterday.
    late = mk("late", at(21, 1), data=at(20, 23))
    result = plan(
        [mk("d20", at(20)), late, mk("d21", at(21, 2))],
        parse_retention("daily=2"),
        NOW,
    )
    assert set(result.keep_ids) == {"late", "d21"}


# -- chains -------------------------------------------------------------


def test_with_full_every_6_the_old_chain_goes_newest_first():
    backups = chain(list(range(1, 11)), full_every=6)  # full d1 and d8
    result = plan(backups, parse_retention("last=3"), at(10, 12))
    assert set(result.keep_ids) == ids(10, 9, 8)
    assert result.delete_ids == ("d7", "d6", "d5", "d4", "d3", "d2", "d1")


def test_a_kept_incremental_keeps_its_whole_chain():
    backups = chain([1, 2, 3, 4], full_every=6)
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ()
    assert result.decision("d3").reasons == ("ancestor of kept d4",)
    assert result.decision("d1").reasons == ("ancestor of kept d2",)


def test_a_held_backup_keeps_its_ancestors():
    backups = chain([1, 2, 3, 4], full_every=3) + [
        mk("d5", at(5)),
        mk("d6", at(6), inc=True),
    ]
    backups[1] = mk("d2", at(2), inc=True, held=True)
    result = plan(backups, parse_retention("last=1"), at(10))
    assert set(result.keep_ids) == ids(6, 5, 2, 1)
    assert result.delete_ids == ("d4", "d3")
    assert result.decision("d2").reasons == ("held",)
    assert result.decision("d1").reasons == ("ancestor of kept d2",)


def test_chains_are_deleted_oldest_chain_first_each_newest_first():
    backups = chain([1, 2, 3, 4, 5, 6, 7], full_every=2)  # d1, d4, d7
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ("d3", "d2", "d1", "d6", "d5", "d4")


def test_a_foreign_incremental_pins_our_chain():
    backups = [
        mk("d1", at(1)),
        mk("d2", at(2), inc=True),
        mk("tenant", at(3), inc=True, ours=False),
        mk("d4", at(4)),
    ]
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ()
    assert result.decision("tenant").reasons == ("not ours",)
    assert result.decision("d2").reasons == ("ancestor of kept tenant",)


def test_our_incremental_on_a_foreign_full_keeps_it_and_never_deletes_it():
    backups = [
        mk("manual", at(1), ours=False),
        mk("d2", at(2), inc=True),
        mk("d3", at(3)),
    ]
    result = plan(backups, parse_retention("last=1"), at(10))
    assert infer_parents(backups)["d2"] == "manual"
    assert result.delete_ids == ("d2",)
    assert result.decision("manual").action == "keep"


def test_cinder_reports_dependents_we_cannot_see():
    backups = [mk("d1", at(1), dependents=True), mk("d2", at(2))]
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ()
    assert result.decision("d1").reasons == (
        "Cinder reports dependents we cannot see",
    )


def test_reported_dependents_that_are_deleted_first_are_fine():
    backups = [
        mk("d1", at(1), dependents=True),
        mk("d2", at(2), inc=True),
        mk("d3", at(3)),
    ]
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ("d2", "d1")
    assert result.decision("d1").reasons[-1] == (
        "Cinder reports dependents: the 1 we infer are deleted before it"
    )


# -- states and odd data ------------------------------------------------


@pytest.mark.parametrize(
    "status",
    ["creating", "deleting", "restoring", "error_deleting", "backing-up"],
)
def test_backups_in_flight_are_not_touched_and_keep_their_chain(status):
    backups = [
        mk("d1", at(1)),
        mk("d2", at(2), inc=True),
        mk("x", at(3), inc=True, status=status),
        mk("d4", at(4)),
    ]
    result = plan(backups, parse_retention("last=1"), at(10))
    assert result.delete_ids == ()
    assert result.decision("x").reasons == (f"status {status}",)


def test_failed_backups_go_after_error_grace():
    backups = [
        mk("d1", at(1)),
        mk("old-error", at(20), status="error"),
        mk("new-error", at(22, 10), status="error"),
        mk("foreign-error", at(5), status="error", ours=False),
        mk("stuck-error", at(6), status="error", dependents=True),
    ]
    result = plan(backups, parse_retention("last=3"), NOW)
    assert result.delete_ids == ("old-error",)
    assert result.decision("old-error").reasons == (
        "error for 2d 9h, past error_grace 1d",
    )
    assert result.decision("new-error").reasons == (
        "error, within error_grace 1d",
    )
    assert result.decision("stuck-error").reasons[-1] == (
        "Cinder reports dependents we cannot see"
    )
    quick = Retention(last=3, error_grace=datetime.timedelta(hours=1))
    assert "new-error" in plan(backups, quick, NOW).delete_ids


def test_a_failed_backup_neither_chains_nor_is_chained_onto():
    backups = [
        mk("d1", at(1)),
        mk("bad", at(2), status="error", inc=True),
        mk("d3", at(3), inc=True),
    ]
    assert infer_parents(backups) == {"d1": None, "bad": None, "d3": "d1"}


@pytest.mark.parametrize(
    "backup, reason",
    [
        (
            mk("future", at(23)),
            "created_at 2026-11-23T03:00:00+00:00 is after now",
        ),
        (
            mk("future-data", at(21), data=at(23)),
            "data_timestamp 2026-11-23T03:00:00+00:00 is after now",
        ),
        (
            mk("naive", datetime.datetime(2026, 11, 1)),
            "timestamp missing or without time zone: cannot place it in time",
        ),
        (
            mk("missing", None),  # type: ignore[arg-type]
            "timestamp missing or without time zone: cannot place it in time",
        ),
    ],
)
def test_a_timestamp_that_makes_no_sense_keeps_the_backup(backup, reason):
    result = plan([backup, mk("d20", at(20))], parse_retention("last=1"), NOW)
    assert result.decision(backup.id).reasons == (reason,)
    assert result.decision(backup.id).action == "keep"


def test_timestamps_in_other_zones_are_read_as_utc():
    cet = datetime.timezone(datetime.timedelta(hours=1))
    backups = [
        mk("late", datetime.datetime(2026, 11, 21, 0, 30, tzinfo=cet)),
        mk("d21", at(21, 1)),
    ]
    result = plan(backups, parse_retention("daily=2"), NOW)
    assert result.decision("late").reasons == ("daily 2026-11-20",)


def test_naive_now_and_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        plan([], parse_retention("last=1"), datetime.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="backup d1 is listed twice"):
        plan(
            [mk("d1", at(1)), mk("d1", at(2))], parse_retention("last=1"), NOW
        )
    with pytest.raises(ValueError, match="max_deletions"):
        plan([], parse_retention("last=1"), NOW, max_deletions=-1)


def test_nothing_to_plan():
    assert plan([], parse_retention("last=1"), NOW).decisions == ()


# -- orphans and bounded passes -----------------------------------------


ORPHAN = Retention(daily=7, orphan_keep_last=2, orphan_keep_days=30)


def test_an_orphan_keeps_its_retention_during_the_orphan_period():
    result = plan(daily(1, 10), ORPHAN, at(20), volume_exists=False)
    assert set(result.keep_ids) == ids(*range(4, 11))
    assert result.decision("d9").reasons == (
        "orphan_keep_last=2 #2",
        "daily 2026-11-09",
    )


def test_after_the_orphan_period_only_the_newest_stay():
    later = at(10) + 30 * DAY
    result = plan(daily(1, 10), ORPHAN, later, volume_exists=False)
    assert set(result.keep_ids) == ids(10, 9)
    assert result.decision("d8").reasons == (
        "volume deleted; orphan period ended 2026-12-10: only "
        "orphan_keep_last=2 stay",
    )


def test_an_orphan_never_loses_its_last_backup():
    retention = Retention(last=5, orphan_keep_last=0, orphan_keep_days=0)
    result = plan(daily(1, 3), retention, at(20), volume_exists=False)
    assert result.keep_ids == ("d3",)


def test_max_deletions_takes_a_safe_prefix():
    backups = chain([1, 2, 3, 4, 5, 6, 7], full_every=2)
    full = plan(backups, parse_retention("last=1"), at(10))
    bounded = plan(backups, parse_retention("last=1"), at(10), max_deletions=2)
    assert bounded.delete_ids == full.delete_ids[:2] == ("d3", "d2")
    assert bounded.decision("d1").reasons[0] == "deferred by max_deletions=2"
    none = plan(backups, parse_retention("last=1"), at(10), max_deletions=0)
    assert none.delete_ids == ()


def test_planning_again_over_what_was_kept_deletes_nothing():
    backups = chain(list(range(1, 23)), full_every=4)
    retention = parse_retention("last=3, weekly=2, within=2d")
    first = plan(backups, retention, NOW)
    assert first.delete_ids
    kept = [b for b in backups if b.id in set(first.keep_ids)]
    assert plan(kept, retention, NOW).delete_ids == ()


# -- chain inference ----------------------------------------------------


def test_the_parent_is_the_newest_completed_backup_with_older_data():
    # Cinder's own example: a backup at 8:00, a snapshot at 8:10, a
    # backup at 8:20; an incremental of the snapshot builds on 8:00.
    backups = [
        mk("b0800", at(1, 8)),
        mk("b0820", at(1, 8) + 20 * datetime.timedelta(minutes=1)),
        mk(
            "snap",
            at(1, 9),
            inc=True,
            data=at(1, 8) + 10 * datetime.timedelta(minutes=1),
        ),
        mk(
            "creating",
            at(
                1,
                9,
            ),
            status="creating",
        ),
        mk("later", at(1, 10), inc=True),
    ]
    parents = infer_parents(backups)
    assert parents["snap"] == "b0800"
    assert parents["later"] == "b0820"


def test_a_recorded_parent_wins_unless_it_is_not_older():
    backups = [
        mk("a", at(1)),
        mk("b", at(2)),
        mk("c", at(3), inc=True, parent="a"),
        mk("d", at(4), inc=True, parent="e"),
        mk("e", at(5), inc=True, parent="gone"),
    ]
    assert infer_parents(backups) == {
        "a": None,
        "b": None,
        "c": "a",
        "d": "c",
        "e": "gone",
    }


def test_backups_created_together_do_not_chain_onto_each_other():
    backups = [
        mk("a", at(1)),
        mk("b", at(2), inc=True, data=at(1, 5)),
        mk("c", at(2), inc=True, data=at(1, 6)),
    ]
    assert infer_parents(backups) == {"a": None, "b": "a", "c": "a"}


# -- syntax -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "last=7, within=3d, hourly=24, daily=14, weekly=8, monthly=12, "
        "yearly=3",
        "daily=14",
        "within=36h",
        "weekly=0, last=2",
    ],
)
def test_retention_text_round_trips(text):
    retention = parse_retention(text)
    assert parse_retention(str(retention)) == retention


def test_retention_text_is_read_as_written():
    assert parse_retention(" last = 7 ,within=2w, daily=0 ") == Retention(
        last=7, within=datetime.timedelta(weeks=2)
    )
    assert str(parse_retention("within=90m, last=1")) == ("last=1, within=90m")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "daly=3",
            "\"daly=3\": unknown key 'daly'; expected one of last, within, "
            "hourly, daily, weekly, monthly, yearly",
        ),
        (
            "daily=3, daily=4",
            '"daily=4": daily is given twice; each key at most once',
        ),
        (
            "daily=-1",
            '"daily=-1": daily takes a whole number (0 or more), e.g. daily=7',
        ),
        (
            "last=1.5",
            '"last=1.5": last takes a whole number (0 or more), e.g. last=7',
        ),
        (
            "within=3",
            '"within=3": within takes a duration such as 90m, 36h, 14d or 2w',
        ),
        ("daily 3", '"daily 3": expected key=value, e.g. daily=14'),
        (
            "daily=3,,last=1",
            '"daily=3,,last=1": empty item between commas; expected '
            "comma-separated key=value",
        ),
        (
            "",
            "keeps nothing but the newest backup; set at least one of "
            "last, within, hourly",
        ),
        ("last=0, daily=0", "write last=1 if only the newest should stay"),
    ],
)
def test_bad_retention_text_names_the_token_and_the_form(text, message):
    with pytest.raises(RetentionSyntaxError) as info:
        parse_retention(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_retention_fields_are_checked():
    with pytest.raises(ValueError, match="orphan_keep_last must be 0"):
        Retention(last=1, orphan_keep_last=-1)
    with pytest.raises(ValueError, match="error_grace must not be"):
        Retention(last=1, error_grace=-HOUR)
    with pytest.raises(ValueError, match="daily must be a whole number"):
        Retention(daily=True)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("6", chains.FullEvery(incrementals=6)),
        ("14d", chains.FullEvery(max_age=14 * DAY)),
        (" 6 , 14d ", chains.FullEvery(6, 14 * DAY)),
        ("2w, 0", chains.FullEvery(0, 14 * DAY)),
    ],
)
def test_full_every_forms(text, expected):
    assert chains.parse_full_every(text) == expected
    assert chains.parse_full_every(str(expected)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "6x",
            '"6x": neither a number of incrementals nor a duration; '
            "expected a number of incrementals (6), a maximum chain age (14d),"
            " or both (6, 14d)",
        ),
        ("6, 7", '"7": the number of incrementals is given twice'),
        ("14d, 2w", '"2w": the maximum chain age is given twice'),
        ("0d", '"0d": neither a number of incrementals nor a duration'),
        ("", 'full_every "" is empty'),
        ("6,", '"6,": empty item between commas'),
    ],
)
def test_bad_full_every_names_the_token_and_the_form(text, message):
    with pytest.raises(chains.FullEverySyntaxError) as info:
        chains.parse_full_every(text)
    assert message in str(info.value)


# -- full or incremental ------------------------------------------------


SIX = chains.FullEvery(incrementals=6, max_age=30 * DAY)


@pytest.mark.parametrize(
    "history, kind, reason",
    [
        ([], "full", "no available backup of ours to build on"),
        (
            [mk("x", at(1), ours=False)],
            "full",
            "no available backup of ours to build on",
        ),
        (
            chain([1, 2, 3], full_every=6),
            "incremental",
            "incremental #3 on d3, chain from full d1 (21d 9h old, "
            "full_every 6, 30d)",
        ),
        (
            chain(list(range(1, 8)), full_every=6),
            "full",
            "the chain from full d1 holds 6 incrementals (full_every 6, 30d)",
        ),
        (chain([1, 2], full_every=6), "incremental", "#2 on d2"),
        (
            [mk("d1", at(1, 3, month=10)), mk("d2", at(20), inc=True)],
            "full",
            "the chain's full d1 is 52d 9h old (full_every 6, 30d)",
        ),
        # Cinder picks the newest *available* backup as the parent: a
        # newer backup in error or creating does not stop an incremental.
        (
            [mk("d1", at(1)), mk("d2", at(2), status="error")],
            "incremental",
            "incremental #1 on d1",
        ),
        (
            [mk("d1", at(1)), mk("manual", at(2), ours=False)],
            "full",
            "an incremental would build on manual, which is not ours",
        ),
        (
            [mk("d1", at(1), inc=True, parent="gone")],
            "full",
            "cannot trace the chain of d1 back to its full",
        ),
        (
            [mk("d1", at(1)), mk("d2", at(2), inc=True, status="creating")],
            "incremental",
            "incremental #1 on d1",
        ),
    ],
)
def test_next_backup_kind(history, kind, reason):
    result = chains.next_backup_kind(history, SIX, NOW)
    assert result[0] == kind
    assert reason in result[1]


def test_a_broken_chain_gets_a_new_full():
    history = [
        mk("d1", at(1)),
        mk("d2", at(2), inc=True, status="deleting"),
        mk("d3", at(3), inc=True, parent="d2"),
        mk("d4", at(4), inc=True),
    ]
    assert chains.next_backup_kind(history, SIX, NOW) == (
        "full",
        "the chain of d4 runs through d2 (deleting)",
    )


def test_full_every_zero_means_always_full():
    kind, reason = chains.next_backup_kind(
        chain([1, 2], full_every=6), chains.FullEvery(0), NOW
    )
    assert (kind, reason) == ("full", "full_every=0: every backup is a full")


def test_expected_parent_is_the_newest_available_backup():
    history = [
        mk("d1", at(1)),
        mk("manual", at(2), ours=False),
        mk("d3", at(3), status="error"),
    ]
    assert chains.expected_parent(history) == "manual"
    assert chains.expected_parent(history, before=at(2)) == "d1"
    assert chains.expected_parent([]) is None


def test_durations_for_people():
    assert chains.human_duration(datetime.timedelta(days=2, minutes=5)) == (
        "2d"
    )
    assert chains.human_duration(datetime.timedelta(seconds=75)) == "1m 15s"
    assert chains.human_duration(datetime.timedelta()) == "0s"
    assert chains.format_duration(datetime.timedelta(hours=36)) == "36h"
    assert chains.format_duration(datetime.timedelta(weeks=2)) == "2w"
