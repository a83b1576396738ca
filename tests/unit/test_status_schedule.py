"""What `cinderbak status` shows as the schedule of each kind of row."""

from __future__ import annotations

import datetime

from cinderbak.cmd.status import schedule_of
from cinderbak.policy import POLICY_OPTS, parse_policy

NOW = datetime.datetime(2026, 11, 24, 7, 30, tzinfo=datetime.UTC)
DEFAULTS = {opt.dest: opt.default for opt in POLICY_OPTS}


def policy(name, **values):
    return parse_policy(name, DEFAULTS | {"schedule": "0 3 * * *"} | values)


def test_rows_of_backups_verification_and_expiry():
    configured = {
        "daily": policy("daily", verify_schedule="0 5 * * 0"),
        "plain": policy("plain"),
    }
    assert schedule_of("daily", configured, NOW) == (
        "0 3 * * *",
        datetime.datetime(2026, 11, 25, 3, 0, tzinfo=datetime.UTC),
    )
    assert schedule_of("verify:daily", configured, NOW) == (
        "0 5 * * 0",
        datetime.datetime(2026, 11, 29, 5, 0, tzinfo=datetime.UTC),
    )
    assert schedule_of("verify:plain", configured, NOW) == (
        "on demand (cinderbak verify)",
        None,
    )
    assert schedule_of("expire:plain", configured, NOW)[1] is None
    assert schedule_of("gone", configured, NOW) == ("(not configured)", None)
    assert schedule_of("verify:gone", configured, NOW) == (
        "(not configured)",
        None,
    )
