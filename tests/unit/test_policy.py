"""Policy parsing: what operators write, what start-up refuses."""

import datetime

import pytest
from oslo_config import cfg

from cinderbak import policy
from cinderbak.policy import PolicyConfigError

UTC = datetime.UTC
VALID = {"schedule": "0 3 * * *", "retention": "last=7", "full_every": "6"}


def test_minimal_policy_takes_documented_defaults():
    parsed = policy.parse_policy("daily", VALID)
    assert parsed.transfer_mode is policy.TransferMode.VOLUME
    assert parsed.ownership is policy.Ownership.PROJECT
    assert parsed.max_freeze_seconds == 10.0
    assert parsed.section == "policy:daily"


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("schedule", "0 3 * *", "neither a crontab expression"),
        ("schedule", "every 0h", "not a duration"),
        ("schedule", "every fortnight", "not a duration"),
        ("schedule", "", "a value is required"),
        ("retention", "daly=3", "daly"),
        ("full_every", "often", "often"),
    ],
)
def test_bad_values_name_section_and_option(option, value, fragment):
    values = dict(VALID, **{option: value})
    with pytest.raises(PolicyConfigError) as err:
        policy.parse_policy("daily", values)
    assert str(err.value).startswith(f"[policy:daily] {option}: ")
    assert fragment in str(err.value)


def test_policy_name_must_be_usable_as_metadata_value():
    with pytest.raises(PolicyConfigError, match="policy name 'Daily Run'"):
        policy.parse_policy("Daily Run", VALID)


def test_interval_schedule():
    schedule = policy.parse_schedule("every  6h")
    assert schedule.interval == datetime.timedelta(hours=6)
    start = datetime.datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    trigger = schedule.trigger()
    first = trigger.get_next_fire_time(None, start)
    second = trigger.get_next_fire_time(first, first)
    assert second - first == datetime.timedelta(hours=6)


def test_crontab_sunday_is_sunday_not_apschedulers_monday():
    trigger = policy.parse_schedule("30 2 * * 0").trigger()
    monday = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, monday)
    assert fire == datetime.datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    assert fire.strftime("%A") == "Sunday"


@pytest.mark.parametrize(
    "field, expected",
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("fri-sun", "sun,fri,sat"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1,3", "mon,wed"),
        ("sat", "sat"),
    ],
)
def test_cron_weekdays(field, expected):
    assert policy.cron_weekdays(field) == expected


@pytest.mark.parametrize("field", ["8", "mon-sun-tue", "5-1", "*/0", "xyz"])
def test_bad_weekday_fields(field):
    with pytest.raises(ValueError):
        policy.cron_weekdays(field)


def _conf(tmp_path, text):
    path = tmp_path / "cinderbak.conf"
    path.write_text(text)
    conf = cfg.ConfigOpts()
    conf(args=[f"--config-file={path}"], default_config_files=[])
    return conf


def test_load_policies_reads_every_policy_section(tmp_path):
    conf = _conf(
        tmp_path,
        "[policy:daily]\nschedule = 0 3 * * *\n"
        "[policy:hourly]\nschedule = every 1h\ntransfer_mode = snapshot\n"
        "[other]\nx = 1\n",
    )
    policies = policy.load_policies(conf)
    assert sorted(policies) == ["daily", "hourly"]
    assert policies["hourly"].transfer_mode is policy.TransferMode.SNAPSHOT


def test_load_policies_rejects_a_bad_choice_naming_section(tmp_path):
    conf = _conf(
        tmp_path,
        "[policy:daily]\nschedule = 0 3 * * *\ntransfer_mode = tape\n",
    )
    with pytest.raises(PolicyConfigError, match=r"\[policy:daily\] transfer"):
        policy.load_policies(conf)


def test_load_policies_requires_a_schedule(tmp_path):
    conf = _conf(tmp_path, "[policy:daily]\nretention = last=3\n")
    with pytest.raises(PolicyConfigError, match="schedule: a value is req"):
        policy.load_policies(conf)


def test_interval_slots_are_stable_across_restarts():
    schedule = policy.parse_schedule("every 6h")
    now = datetime.datetime(2026, 11, 24, 13, 59, tzinfo=UTC)
    assert schedule.last_fire_time(now) == datetime.datetime(
        2026, 11, 24, 12, 0, tzinfo=UTC
    )
    fire = schedule.trigger().get_next_fire_time(None, now)
    assert fire == datetime.datetime(2026, 11, 24, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "crontab, now, expected",
    [
        ("0 3 * * *", (2026, 11, 24, 2, 59), (2026, 11, 23, 3, 0)),
        ("0 3 * * *", (2026, 11, 24, 3, 0), (2026, 11, 24, 3, 0)),
        ("*/5 * * * *", (2026, 11, 24, 3, 7), (2026, 11, 24, 3, 5)),
        ("0 0 1 1 *", (2026, 11, 24, 0, 0), (2026, 1, 1, 0, 0)),
    ],
)
def test_last_fire_time_of_crontab(crontab, now, expected):
    schedule = policy.parse_schedule(crontab)
    at = datetime.datetime(*now, tzinfo=UTC)
    assert schedule.last_fire_time(at) == datetime.datetime(
        *expected, tzinfo=UTC
    )


def test_fallback_policy_has_defaults():
    assert policy.fallback_policy("gone").retention.last == 7
