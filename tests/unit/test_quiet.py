"""When an expiry pass may skip listing a project (cinderbak.quiet).

The property that a quiet volume never gets a deletion as time passes is
in test_retention_properties.py, next to the planner's other properties.
"""

from __future__ import annotations

import datetime

import pytest

from cinderbak import retention
from cinderbak.quiet import (
    fingerprint,
    kept_by_last,
    may_skip,
    quiet_after,
    volume_stays_quiet,
)
from tests.unit.test_retention import at, daily, mk

DAY = datetime.timedelta(days=1)
LAST_3 = retention.parse_retention("last=3")
DAILY_7 = retention.parse_retention("last=1,daily=7")


def test_up_to_last_available_backups_of_ours_stay_quiet():
    for backups in (daily(1, 3), []):
        assert kept_by_last(backups, LAST_3)
        assert volume_stays_quiet(backups, LAST_3, at(5))
    # Foreign backups do not count, whatever their state.
    foreign = daily(4, 9, ours=False, status="error")
    assert kept_by_last(daily(1, 3) + foreign, LAST_3)


@pytest.mark.parametrize("status", ["error", "creating", "deleting"])
def test_a_backup_of_ours_not_available_is_not_quiet(status):
    backups = [*daily(1, 2), mk("x", at(3), status=status)]
    assert not kept_by_last(backups, LAST_3)
    assert not volume_stays_quiet(backups, DAILY_7, at(5))


def test_count_rules_rank_periods_with_backups_so_time_moves_nothing():
    four = daily(1, 4)
    assert not kept_by_last(four, DAILY_7)
    assert volume_stays_quiet(four, DAILY_7, at(5))
    assert retention.plan(four, DAILY_7, at(5) + 400 * DAY).delete_ids == ()


def test_what_within_keeps_is_not_quiet_it_ages_out():
    keep = retention.parse_retention("last=1,within=7d")
    three = daily(1, 3)
    assert retention.plan(three, keep, at(4)).delete_ids == ()
    assert retention.plan(three, keep, at(4) + 7 * DAY).delete_ids
    assert not volume_stays_quiet(three, keep, at(4))
    only_within = retention.parse_retention("within=7d")
    assert not volume_stays_quiet(daily(1, 1), only_within, at(2))


def test_a_backup_dated_after_now_is_not_quiet():
    # The planner keeps a timestamp that makes no sense; time fixes it.
    for late in (mk("late", at(9)), mk("late", at(9), data=at(2, hour=9))):
        backups = [*daily(1, 3), late]
        assert retention.plan(backups, LAST_3, at(5)).delete_ids == ()
        assert retention.plan(backups, LAST_3, at(10)).delete_ids
        assert not volume_stays_quiet(backups, LAST_3, at(5))


def test_quiet_after_names_the_deletions_it_takes():
    assert quiet_after(daily(1, 5), ["d1", "d2"], LAST_3, at(6)) == frozenset(
        {"d1", "d2"}
    )
    assert quiet_after(daily(1, 3), (), LAST_3, at(6)) == frozenset()


def test_quiet_after_is_none_when_a_volume_keeps_too_many():
    # Paced: only one of the two due is deleted in this pass.
    assert quiet_after(daily(1, 5), ["d1"], LAST_3, at(6)) is None


def _fingerprint(**changes):
    values = {
        "retention": LAST_3,
        "deployment_id": "region-1",
        "volume_ids": ["v1", "v2"],
        "creations": (4, 30, 4, 4),
    }
    values.update(changes)
    return fingerprint(**values)


def test_the_fingerprint_changes_with_everything_that_can_make_a_backup_due():
    base = _fingerprint()
    assert _fingerprint(volume_ids=["v2", "v1"]) == base  # order is no change
    others = [
        _fingerprint(retention=retention.parse_retention("last=2")),
        _fingerprint(
            retention=retention.Retention(last=3, orphan_keep_days=3)
        ),
        _fingerprint(deployment_id="region-2"),
        _fingerprint(volume_ids=["v1"]),
        _fingerprint(volume_ids=["v1", "v2", "v3"]),
        _fingerprint(creations=(5, 41, 4, 4)),
        _fingerprint(creations=(4, 30, 5, 4)),
        _fingerprint(creations=(4, 30, 4, 5)),
    ]
    assert len({base, *others}) == len(others) + 1


def test_a_look_is_trusted_only_unchanged_and_young():
    now = at(10)
    look = ("f", now - 3 * DAY)
    assert may_skip(look, "f", now, 4 * DAY)
    assert not may_skip(look, "g", now, 4 * DAY)  # something changed
    assert not may_skip(look, "f", now, 3 * DAY)  # too old
    assert not may_skip(look, "f", now, datetime.timedelta())  # disabled
    assert not may_skip(None, "f", now, 4 * DAY)
    # A pass replayed for an earlier slot does not trust a later look.
    assert not may_skip(look, "f", now - 4 * DAY, 30 * DAY)
