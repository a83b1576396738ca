"""The pure checks of expiry: the last look before a delete, which policy
governs a deleted volume's backups, and policy selection."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openstack.block_storage.v3.backup import Backup

from cinderbak import expiry
from cinderbak.chains import BackupInfo

UTC = datetime.UTC
VOL = "vol-1"
ME = "dep-1"


def info(**changes) -> BackupInfo:
    base = BackupInfo(
        id="b1",
        created_at=datetime.datetime(2026, 11, 1, 3, tzinfo=UTC),
        data_timestamp=datetime.datetime(2026, 11, 1, 3, tzinfo=UTC),
        is_incremental=False,
        status="available",
        ours=True,
        held=False,
        has_dependent_backups=False,
    )
    return base._replace(**changes)


def test_an_available_backup_of_ours_without_dependents_may_go():
    assert expiry.refusal(info(), VOL, VOL) is None


def test_an_error_backup_of_ours_may_go():
    assert expiry.refusal(info(status="error"), VOL, VOL) is None


@pytest.mark.parametrize(
    ("changes", "volume", "says"),
    [
        ({"ours": False}, VOL, "not ours"),
        ({"held": True}, VOL, "held (cinderbak:hold)"),
        ({"status": "restoring"}, VOL, "status is now restoring"),
        ({"status": "deleting"}, VOL, "status is now deleting"),
        ({"status": "creating"}, VOL, "status is now creating"),
        ({"has_dependent_backups": True}, VOL, "dependent backups"),
        ({}, "vol-2", "belongs to volume vol-2, not vol-1"),
    ],
)
def test_the_last_look_refuses_what_must_stay(changes, volume, says):
    assert says in expiry.refusal(info(**changes), volume, VOL)


def test_not_ours_wins_over_every_other_reason():
    refused = info(ours=False, held=True, has_dependent_backups=True)
    assert expiry.refusal(refused, VOL, VOL).startswith("not ours")


def backup(id: str, day: int, metadata: dict, data_day: int | None = None):
    return Backup(
        id=id,
        volume_id=VOL,
        status="available",
        created_at=f"2026-11-{day:02d}T03:00:00.000000",
        data_timestamp=(
            None if data_day is None else f"2026-11-{data_day:02d}T03:00:00"
        ),
        metadata=metadata,
    )


def mark(policy: str, owner: str = ME) -> dict:
    return {"cinderbak:owner": owner, "cinderbak:policy": policy}


def test_the_newest_backup_of_ours_names_the_governing_policy():
    listed = [
        backup("a", 1, mark("daily")),
        backup("b", 3, mark("weekly")),
        backup("c", 2, mark("daily")),
    ]
    assert expiry.governing_policy(listed, ME) == "weekly"


def test_newest_is_by_data_timestamp_then_creation():
    listed = [
        backup("late-copy-of-old-data", 5, mark("weekly"), data_day=1),
        backup("b", 3, mark("daily")),
    ]
    assert expiry.governing_policy(listed, ME) == "daily"


def test_backups_of_others_do_not_govern():
    listed = [
        backup("a", 1, mark("daily")),
        backup("tenant", 4, {}),
        backup("other-deployment", 5, mark("weekly", owner="dep-2")),
    ]
    assert expiry.governing_policy(listed, ME) == "daily"


def test_no_backup_of_ours_means_no_policy():
    listed = [backup("tenant", 4, {"cinderbak:policy": "daily"})]
    assert expiry.governing_policy(listed, ME) is None
    assert expiry.governing_policy([], ME) is None


def test_select_policies_defaults_to_all_sorted():
    policies = {"weekly": "W", "daily": "D"}
    assert expiry.select_policies(policies, []) == ["D", "W"]
    assert expiry.select_policies(policies, ["weekly"]) == ["W"]


def test_select_policies_names_the_unknown_one_and_the_choices():
    with pytest.raises(LookupError) as err:
        expiry.select_policies({"daily": "D"}, ["dialy"])
    assert "'dialy'" in str(err.value)
    assert "daily" in str(err.value)


def test_a_problem_row_fails_the_pass():
    row = expiry.ExpiryRow.problem("daily", "p1", "", "no role")
    assert row.failed
    assert row.row(expiry.PLAN_COLUMNS)[-1] == "no role"


def test_columns_of_plan_and_expire():
    assert expiry.PLAN_COLUMNS[-1] == "reasons"
    assert expiry.EXPIRE_COLUMNS[-2:] == ("result", "reasons")
    assert set(expiry.PLAN_COLUMNS) < set(expiry.EXPIRE_COLUMNS)


@pytest.mark.parametrize("exists", [True, False])
def test_plan_rows_are_the_rows_of_the_plan(exists):
    """``cinderbak plan`` prints plan_rows(): the same cells as the rows
    an expiry pass reports, column for column."""
    from cinderbak import retention
    from cinderbak.policy import parse_policy

    policy = parse_policy(
        "daily",
        {"schedule": "every 24h", "retention": "last=2", "full_every": "3"},
    )
    start = datetime.datetime(2026, 11, 1, 3, tzinfo=UTC)
    history = {
        f"b{i}": info(
            id=f"b{i}",
            created_at=start + datetime.timedelta(days=i),
            data_timestamp=start + datetime.timedelta(days=i),
            is_incremental=i % 3 != 0,
            status="error" if i == 4 else "available",
        )
        for i in range(6)
    }
    plan = expiry.VolumePlan(
        policy=policy,
        project_id="p1",
        volume_id=VOL,
        volume_exists=exists,
        history=history,
        plan=retention.plan(
            history.values(),
            policy.retention,
            start + datetime.timedelta(days=7),
            volume_exists=exists,
        ),
    )
    assert plan.plan.deletions
    assert list(plan.plan_rows()) == [
        row.row(expiry.PLAN_COLUMNS) for row in plan.rows()
    ]


@given(
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(9998, 12, 30),
        timezones=st.sampled_from(
            [
                datetime.UTC,
                datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
                datetime.timezone(-datetime.timedelta(hours=11)),
            ]
        ),
    )
)
def test_a_plan_prints_times_in_utc_to_the_second(
    value: datetime.datetime,
) -> None:
    assert expiry._iso(value) == value.astimezone(datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
