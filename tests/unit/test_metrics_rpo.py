"""The RPO collector: per-volume series only for volumes in trouble,
capped, with complete per-policy counts; names as Prometheus wants."""

from __future__ import annotations

import datetime
import types

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from cinderbak import metrics
from cinderbak.policy import parse_schedule
from cinderbak.summary import Outcome

UTC = datetime.UTC
T0 = datetime.datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
HOURLY = {"hourly": types.SimpleNamespace(schedule=parse_schedule("every 1h"))}


def scrape(clocks: metrics.Clocks) -> dict[str, list]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(clocks)
    text = prometheus_client.generate_latest(registry).decode()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def collector(now: datetime.datetime, limit: int = 2) -> metrics.Clocks:
    clocks = metrics.Clocks()
    clocks._policies = lambda: HOURLY  # noqa: SLF001 - no journal here
    clocks._limit = limit  # noqa: SLF001
    clocks._now = lambda: now  # noqa: SLF001
    return clocks


def outcome(volume: str, status: str) -> Outcome:
    return Outcome(
        volume_id=volume, project_id="p1", policy="hourly", status=status
    )


def test_only_volumes_out_of_rpo_get_series_and_the_cap_keeps_the_worst():
    clocks = collector(T0 + 10 * datetime.timedelta(hours=1), limit=2)
    for i in range(5):
        # v0 failed first (longest overdue), v4 last.
        clocks.backup_ended(
            outcome(f"v{i}", "error"), T0 + datetime.timedelta(minutes=i)
        )
    clocks.backup_ended(outcome("fine", "ok"), T0 + 9.9 * 60 * 60 * _S)
    clocks.backup_ended(outcome("gone", "skipped"), T0)
    found = scrape(clocks)
    [rpo] = found["cinderbak_policy_rpo_seconds"]
    assert rpo.value == 1.5 * 3600  # default rpo_factor
    [count] = found["cinderbak_policy_volumes_out_of_rpo"]
    assert count.value == 5  # never capped
    [volumes] = found["cinderbak_policy_volumes"]
    assert volumes.value == 6  # skipped-only volumes are not tracked
    series = found["cinderbak_volume_last_success_timestamp_seconds"]
    assert [s.labels["volume_id"] for s in series] == ["v0", "v1"]
    assert series[0].labels["never_succeeded"] == "true"
    assert series[0].value == T0.timestamp()
    [newest] = found["cinderbak_policy_last_success_timestamp_seconds"]
    assert newest.value == (T0 + 9.9 * 60 * 60 * _S).timestamp()


def test_a_good_backup_stops_the_clock_and_a_slot_forgets_who_left():
    clocks = collector(T0 + datetime.timedelta(hours=3))
    clocks.backup_ended(outcome("v1", "error"), T0)
    clocks.backup_ended(outcome("v2", "error"), T0)
    assert (
        len(scrape(clocks)["cinderbak_volume_last_success_timestamp_seconds"])
        == 2
    )
    clocks.backup_ended(outcome("v1", "ok"), T0 + datetime.timedelta(hours=3))
    series = scrape(clocks)["cinderbak_volume_last_success_timestamp_seconds"]
    assert [s.labels["volume_id"] for s in series] == ["v2"]
    # The next slot found only v1: v2 left the policy.
    done = types.SimpleNamespace(
        policy="hourly",
        volumes=[types.SimpleNamespace(volume_id="v1", status="ok")],
    )
    clocks.slot_ended(done)  # type: ignore[arg-type]
    found = scrape(clocks)
    assert "cinderbak_volume_last_success_timestamp_seconds" not in found
    assert found["cinderbak_policy_volumes"][0].value == 1


def test_a_policy_no_longer_configured_exports_nothing():
    clocks = collector(T0 + datetime.timedelta(days=3))
    clocks.backup_ended(
        Outcome(
            volume_id="v1", project_id="p1", policy="gone", status="error"
        ),
        T0,
    )
    found = scrape(clocks)
    assert "cinderbak_volume_last_success_timestamp_seconds" not in found
    assert [
        s.labels["policy"] for s in found["cinderbak_policy_rpo_seconds"]
    ] == ["hourly"]


def test_metric_names_follow_the_conventions():
    text = prometheus_client.generate_latest(metrics.REGISTRY).decode()
    names = {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE")
    }
    for name in names:
        assert name.startswith("cinderbak_"), name
    kinds = {
        line.split()[2]: line.split()[3]
        for line in text.splitlines()
        if line.startswith("# TYPE")
    }
    for name, kind in kinds.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
    assert "cinderbak_api_request_duration_seconds" in kinds
    assert kinds["cinderbak_api_errors_total"] == "counter"
    assert kinds["cinderbak_expiry_deletions_total"] == "counter"


_S = datetime.timedelta(seconds=1)


def test_a_freeze_is_observed_once_and_counted_over_its_policys_limit():
    policy = f"frz-{id(object())}"
    strict = types.SimpleNamespace(
        schedule=parse_schedule("every 1h"), max_freeze_seconds=2.0
    )
    saved = metrics.CLOCKS._policies  # noqa: SLF001
    metrics.CLOCKS._policies = lambda: {policy: strict}  # noqa: SLF001
    try:
        for volume, seconds, group in (
            ("v1", 3.5, "g1"),
            ("v2", 3.5, "g1"),  # the same freeze as v1
            ("v3", 1.0, "g2"),
        ):
            done = Outcome(
                volume_id=volume,
                project_id="p1",
                policy=policy,
                status="ok",
                freeze_seconds=seconds,
                group_id=group,
            )
            metrics.record_outcome(done, T0)
    finally:
        metrics.CLOCKS._policies = saved  # noqa: SLF001
    value = metrics.REGISTRY.get_sample_value
    labels = {"policy": policy}
    assert value("cinderbak_freeze_window_seconds_count", labels) == 2
    assert value("cinderbak_freeze_overruns_total", labels) == 1
