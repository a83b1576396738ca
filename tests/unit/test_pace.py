"""Expiry keeps pace: deletions per pass sized from the backlog."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cinderbak import pace


def test_a_small_backlog_clears_in_one_pass():
    assert pace.pass_budget(30, floor=50, spread=4) == 30
    assert pace.pass_budget(0, floor=50, spread=4) == 0


def test_a_large_backlog_is_spread_over_passes():
    assert pace.pass_budget(10_000, floor=50, spread=4) == 2_500
    assert pace.pass_budget(10_001, floor=50, spread=4) == 2_501


def test_the_operators_cap_bounds_every_pass():
    assert pace.pass_budget(10_000, floor=50, spread=4, cap=300) == 300


def test_nonsense_is_refused_by_name():
    with pytest.raises(ValueError, match="spread 0"):
        pace.pass_budget(1, floor=1, spread=0)
    with pytest.raises(ValueError, match="backlog -1"):
        pace.pass_budget(-1, floor=1, spread=1)


def days(
    created: int, passes: int, start: int, n: int, *, floor: int, spread: int
) -> list[tuple[int, int]]:
    """(deleted that day, backlog at the end of it) over ``n`` days: each
    day the policies create ``created`` backups that expire, then
    ``passes`` passes each delete their budget."""
    backlog, out = start, []
    for _ in range(n):
        deleted, backlog = one_day(
            backlog, created, passes, floor=floor, spread=spread
        )
        out.append((deleted, backlog))
    return out


def one_day(
    backlog: int, created: int, passes: int, *, floor: int, spread: int
) -> tuple[int, int]:
    """(deleted, backlog after) for one day: ``created`` backups expire,
    then ``passes`` passes each delete their budget."""
    backlog += created
    deleted = 0
    for _ in range(passes):
        budget = pace.pass_budget(backlog, floor=floor, spread=spread)
        deleted += budget
        backlog -= budget
    return deleted, backlog


@settings(max_examples=300, deadline=None)
@given(
    created=st.integers(0, 60_000),
    passes=st.integers(1, 24),
    start=st.integers(0, 500_000),
    floor=st.integers(1, 500),
    spread=st.integers(1, 12),
)
def test_the_backlog_never_grows_past_its_steady_bound(
    created, passes, start, floor, spread
):
    bound = max(start, (spread - 1) * created)
    for _deleted, backlog in days(
        created, passes, start, 40, floor=floor, spread=spread
    ):
        assert 0 <= backlog <= bound


@settings(max_examples=100, deadline=None)
@given(
    created=st.integers(1, 60_000),
    passes=st.integers(1, 24),
    floor=st.integers(1, 500),
    spread=st.integers(1, 12),
)
def test_in_steady_state_a_day_deletes_what_a_day_creates(
    created, passes, floor, spread
):
    # The day-to-day map of the backlog is deterministic, so from an
    # empty backlog it settles into a cycle (near the floor it may first
    # creep up by one a day, for up to about floor x spread days). Over
    # the cycle, the days delete exactly what the policies create.
    backlog, seen, deleted_by_day = 0, {}, []
    for day in range(50_000):
        if backlog in seen:
            break
        seen[backlog] = day
        deleted, backlog = one_day(
            backlog, created, passes, floor=floor, spread=spread
        )
        deleted_by_day.append(deleted)
    else:
        raise AssertionError("the backlog never settled")
    cycle = deleted_by_day[seen[backlog] :]
    assert sum(cycle) == created * len(cycle)


def test_one_per_volume_is_granted_on_top_of_the_spread_share():
    # Steady state: a slot made one backup of each volume due.
    assert pace.pass_budget(500, floor=50, spread=4, volumes=500) == 500
    # 100 volumes, 400 due: 100 plus a quarter of the other 300.
    assert pace.pass_budget(400, floor=50, spread=4, volumes=100) == 175
    assert pace.pass_budget(400, floor=50, spread=4, volumes=100, cap=120) == (
        120
    )
    with pytest.raises(ValueError, match="volumes 5"):
        pace.pass_budget(4, floor=1, spread=1, volumes=5)


@settings(max_examples=300, deadline=None)
@given(
    dues=st.lists(st.integers(0, 40), max_size=200),
    floor=st.integers(0, 100),
    spread=st.integers(1, 8),
    cap=st.integers(0, 300),
)
def test_deciding_volume_by_volume_grants_the_whole_passes_budget(
    dues, floor, spread, cap
):
    seen = used = volumes = 0
    for due in dues:
        granted = pace.allowance(
            seen,
            used,
            due,
            floor=floor,
            spread=spread,
            cap=cap,
            volumes=volumes,
        )
        assert 0 <= granted <= due
        seen += due
        used += granted
        volumes += 1 if due else 0
    budget = pace.pass_budget(
        seen, floor=floor, spread=spread, cap=cap, volumes=volumes
    )
    assert used == budget
    assert budget >= min(volumes, cap or volumes)


@settings(max_examples=200, deadline=None)
@given(
    volumes=st.integers(1, 5_000),
    excess=st.integers(0, 100_000),
    passes=st.integers(1, 24),
    floor=st.integers(0, 500),
    spread=st.integers(1, 12),
)
def test_after_an_excess_each_slot_is_deleted_by_the_pass_after_it(
    volumes, excess, passes, floor, spread
):
    """Each day a slot makes one backup of every volume due; an excess
    (a retention change) is spread, but once it is worked off the first
    pass after each slot deletes everything due, and the day's other
    passes find nothing (so they need not list: cinderbak.quiet)."""
    backlog = excess
    for _day in range(200):
        backlog += volumes
        first = pace.pass_budget(
            backlog, floor=floor, spread=spread, volumes=volumes
        )
        assert first >= volumes
        backlog -= first
        for _later in range(passes - 1):
            # The excess left is at most one per volume's worth spread
            # thin: count it as on as many volumes as it can cover.
            backlog -= pace.pass_budget(
                backlog,
                floor=floor,
                spread=spread,
                volumes=min(backlog, volumes),
            )
        if backlog == 0:
            break
    else:
        raise AssertionError(f"an excess of {excess} was never worked off")
