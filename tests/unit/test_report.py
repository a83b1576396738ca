"""The run report, the RPO arithmetic and the notification payloads:
pure functions of journal records and ``now``."""

from __future__ import annotations

import datetime

import pytest
from oslo_config import cfg

from cinderbak import mailer, notifier, opts, report, rpo
from cinderbak.journal import RunRecord, RunState, StepRecord, StepState
from cinderbak.policy import parse_schedule
from cinderbak.summary import Outcome

UTC = datetime.UTC
SLOT = datetime.datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
GIB = 1024**3


def run(
    target: str,
    state: RunState,
    summary: dict | None = None,
    *,
    policy: str = "daily",
    project: str | None = "p1",
    minutes: int = 5,
    steps: tuple[StepRecord, ...] | None = None,
    attrs: dict | None = None,
    scheduled_at: datetime.datetime = SLOT,
) -> RunRecord:
    finished = scheduled_at + datetime.timedelta(minutes=minutes)
    final = state not in (RunState.PENDING, RunState.RUNNING)
    return RunRecord(
        id=f"run-{target}",
        policy=policy,
        target=target,
        scheduled_at=scheduled_at,
        project_id=project,
        host="h",
        state=state,
        attrs=attrs or {},
        summary=summary,
        created_at=scheduled_at,
        updated_at=finished,
        started_at=scheduled_at,
        finished_at=finished if final else None,
        steps=steps,
    )


def ok(volume: str, kind: str, size: int, seconds: float, **more) -> RunRecord:
    return run(
        volume,
        RunState.SUCCEEDED,
        {
            "volume_id": volume,
            "project_id": "p1",
            "status": "ok",
            "kind": kind,
            "backup_id": f"b-{volume}",
            "size_gb": size,
            "seconds": seconds,
            **more,
        },
    )


def slot() -> list[RunRecord]:
    return [
        run(
            "*",
            RunState.PARTIAL,
            {"volumes": 4, "ok": 2, "failed": 1, "skipped": 1},
            project=None,
            minutes=30,
        ),
        ok("v1", "full", 10, 120.0, freeze_seconds=1.5, group_id="g1"),
        ok("v2", "incremental", 2, 30.0, freeze_seconds=1.5, group_id="g1"),
        run(
            "v3",
            RunState.FAILED,
            {"error": "no role in project p2: grant it a role"},
            project="p2",
        ),
        run("v4", RunState.SKIPPED, {"error": "volume is backing-up"}),
    ]


def test_a_slot_report_counts_names_reasons_and_sums_bytes():
    done = report.build(slot(), SLOT + 2 * HOUR)
    assert done.kind == report.BACKUP
    assert done.policy == "daily"
    assert done.run_id == "run-*"
    assert done.state == "partial"
    assert done.failed
    assert (done.count("ok"), done.count("failed"), done.count("skipped")) == (
        2,
        1,
        1,
    )
    assert done.kinds() == {"full": 1, "incremental": 1}
    assert done.backed_up_bytes == 12 * GIB
    assert done.volumes[0].volume_id == "v3"  # failures first
    assert done.volumes[0].reason == "no role in project p2: grant it a role"
    assert [v.volume_id for v in done.slowest()] == ["v1", "v2"]
    # Two volumes of one freeze group: one window.
    assert [(v.group_id, v.freeze_seconds) for v in done.freezes()] == [
        ("g1", 1.5)
    ]
    assert done.finished_at == SLOT + datetime.timedelta(minutes=30)
    assert done.projects() == ["p1", "p2"]
    text = report.render(done)
    assert "v3 (project p2): no role in project p2: grant it a role" in text
    assert "1 full, 1 incremental, 12.0 GiB" in text
    assert "Freeze windows (longest first):\n  g1: 1.500 s" in text
    assert "v4 (project p1): volume is backing-up" in text
    assert done.subject().startswith("[cinderbak] backup run of policy daily")
    assert "FAILED (2 ok, 1 failed, 1 skipped)" in done.subject()


def test_long_lists_are_capped_unless_all_is_asked_for():
    runs = [ok(f"v{i:03}", "incremental", 1, 10.0) for i in range(120)]
    done = report.build(runs, SLOT + HOUR)
    text = report.render(done)
    assert "  ... and 20 more (cinderbak runs show --all)" in text
    assert "v119" not in text
    assert "v119" in report.render(done, None)


def test_a_run_once_slot_without_a_policy_level_run_takes_the_worst():
    runs = slot()[1:3]
    done = report.build(runs, SLOT + HOUR)
    assert done.state == "succeeded"
    assert not done.failed
    runs = slot()[1:4]
    assert report.build(runs, SLOT + HOUR).state == "partial"
    assert report.build(slot()[3:4], SLOT + HOUR).state == "failed"


def test_interrupted_volumes_of_a_slot_are_said():
    runs = slot()
    runs[0] = run(
        "*",
        RunState.PARTIAL,
        {"volumes": 6, "ok": 2, "failed": 1, "interrupted": 2},
        project=None,
    )
    done = report.build(runs, SLOT + HOUR)
    assert done.remarks == (
        "2 of the 6 volumes found were interrupted before their outcome "
        "(a stop)",
    )
    assert "note:       2 of the 6 volumes" in report.render(done)


def test_a_run_still_going_is_reported_as_such():
    runs = [*slot()[1:3], run("v5", RunState.RUNNING)]
    done = report.build(runs, SLOT + HOUR)
    assert done.state == "running"
    assert done.finished_at is None
    assert done.count(report.IN_FLIGHT) == 1


def test_newly_out_of_rpo_is_the_failed_volume_whose_clock_ran_out_now():
    marks = {
        # Good backup 20 h before the slot: within a 26 h RPO at the
        # slot, past it by the end of the run: newly out.
        "v3": report.BackupMark(
            last_success=SLOT - 20 * HOUR, first_seen=SLOT - 100 * HOUR
        ),
    }
    done = report.build(
        slot(), SLOT + 7 * HOUR, marks=marks, rpo=datetime.timedelta(hours=26)
    )
    # The run ended at SLOT + 30 min: 20.5 h since the last success.
    assert done.out_of_rpo == ()
    runs = slot()
    runs[0] = run("*", RunState.PARTIAL, {}, project=None, minutes=7 * 60)
    done = report.build(
        runs, SLOT, marks=marks, rpo=datetime.timedelta(hours=26)
    )
    [line] = done.out_of_rpo
    assert (line.volume_id, line.newly) == ("v3", True)
    assert line.overdue_seconds == pytest.approx(3600.0)
    assert "NEW v3 (project p2): last good backup" in report.render(done)


def test_long_out_of_rpo_is_not_new_never_backed_up_counts_from_first_seen():
    marks = {
        "v3": report.BackupMark(
            last_success=None, first_seen=SLOT - 50 * HOUR
        ),
    }
    done = report.build(
        slot(), SLOT, marks=marks, rpo=datetime.timedelta(hours=26)
    )
    [line] = done.out_of_rpo
    assert line.last_success is None
    assert line.since == SLOT - 50 * HOUR
    assert not line.newly
    assert "v3 (project p2): last good backup never" in report.render(done)


def test_expiry_report_lists_deletions_and_kept():
    steps = (
        _delete_step(1, "v1", "b1", StepState.DONE),
        _delete_step(2, "v1", "b2", StepState.FAILED, reason="Cinder refused"),
    )
    record = run(
        "expiry",
        RunState.PARTIAL,
        {"deleted": 1, "failed": 1, "skipped": 0},
        policy="expire:daily",
        project=None,
        steps=steps,
        attrs={"deletions": 2, "kept": 7},
    )
    done = report.build([record], SLOT + HOUR)
    assert done.kind == report.EXPIRY
    assert done.policy == "daily"
    assert done.kept == 7
    assert [(d.backup_id, d.status) for d in done.deletions] == [
        ("b1", "deleted"),
        ("b2", "failed"),
    ]
    assert done.failed
    assert done.counts_text() == "1 deleted, 1 failed, 0 skipped, 7 kept"
    text = report.render(done)
    assert "b2 of volume v1 (project p1): failed: Cinder refused" in text
    assert "b1 of volume v1 (project p1): deleted: past last=7" in text


def _delete_step(
    step_id: int, volume: str, backup: str, state: StepState, reason=None
) -> StepRecord:
    return StepRecord(
        id=step_id,
        run_id="run-expiry",
        kind="backup_delete",
        target=volume,
        state=state,
        resource_id=backup,
        details={
            "backup_id": backup,
            "project_id": "p1",
            "reasons": ["past last=7"],
        },
        reason=reason,
        created_at=SLOT,
        updated_at=SLOT,
        finished_at=SLOT,
    )


def test_verify_pass_report_uses_the_verdicts():
    runs = [
        run(
            "b1",
            RunState.SUCCEEDED,
            {
                "volume_id": "v1",
                "project_id": "p1",
                "result": "ok",
                "problems": [],
                "restore_seconds": 3.0,
                "check_seconds": 1.0,
            },
            policy="verify:daily",
        ),
        run(
            "b2",
            RunState.FAILED,
            {
                "volume_id": "v2",
                "project_id": "p1",
                "result": "failed",
                "problems": ["content MISMATCH"],
            },
            policy="verify:daily",
        ),
    ]
    done = report.build(runs, SLOT + HOUR)
    assert done.kind == report.VERIFY
    assert done.state == "partial"
    failed = [v for v in done.volumes if v.status == "failed"]
    assert [(v.backup_id, v.reason) for v in failed] == [
        ("b2", "content MISMATCH")
    ]
    assert "backup b2 of v2 (project p1): content MISMATCH" in report.render(
        done
    )


def test_a_drill_or_any_other_kind_is_reported_generically():
    runs = [
        run("v1", RunState.SUCCEEDED, {}, policy="drill:daily"),
        run(
            "v2",
            RunState.FAILED,
            {"error": "restore failed"},
            policy="drill:daily",
        ),
    ]
    done = report.build(runs, SLOT + HOUR)
    assert (done.kind, done.policy, done.state) == (
        "drill",
        "daily",
        "partial",
    )
    assert [v.reason for v in done.volumes if v.status == "failed"] == [
        "restore failed"
    ]


def test_reports_refuse_nothing_and_mixed_slots():
    with pytest.raises(ValueError, match="at least one"):
        report.build([], SLOT)
    other = run("v9", RunState.SUCCEEDED, {}, scheduled_at=SLOT + HOUR)
    with pytest.raises(ValueError, match="several slots"):
        report.build([*slot(), other], SLOT)


def test_tenant_text_in_reasons_is_escaped():
    runs = [
        run(
            "v1", RunState.FAILED, {"error": "bad cinderbak:quiesce='\x1b[2J'"}
        )
    ]
    text = report.render(report.build(runs, SLOT))
    assert "\x1b" not in text
    assert "\\x1b[2J" in text


# -- RPO -------------------------------------------------------------------


def test_rpo_is_the_longest_schedule_gap_times_the_factor():
    now = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert rpo.rpo(
        parse_schedule("every 20s"), 1.5, now
    ) == datetime.timedelta(seconds=30)
    assert rpo.rpo(parse_schedule("0 3 * * *"), 1.0, now) == 24 * HOUR
    # Weekdays only: the weekend gap is the longest.
    assert rpo.interval(parse_schedule("0 3 * * 1-5"), now) == 72 * HOUR


def test_overdue_caps_the_series_but_never_the_counts():
    now = SLOT
    clocks = [
        rpo.Clock("daily", f"v{i}", "p1", now - (30 + i) * HOUR, True)
        for i in range(5)
    ] + [rpo.Clock("daily", "fresh", "p1", now - HOUR, True)]
    late, counts = rpo.overdue(clocks, {"daily": 26 * HOUR}, now, limit=2)
    assert [c.volume_id for c in late] == ["v4", "v3"]  # longest overdue
    assert counts == {"daily": 5}
    late, _ = rpo.overdue(clocks, {}, now, limit=10)
    assert late == []  # a policy no longer configured raises nothing


# -- notifications and mail ----------------------------------------------


def test_backup_payloads_carry_project_and_version():
    outcome = Outcome(
        volume_id="v1",
        project_id="p1",
        policy="daily",
        status="error",
        error="quota",
    )
    priority, event, payload = notifier.backup_payload(outcome, "r1", SLOT)
    assert (priority, event) == ("error", "cinderbak.backup.error")
    assert payload["project_id"] == "p1"
    assert payload["cinderbak_version"] == notifier.PAYLOAD_VERSION
    assert payload["error"] == "quota"
    assert payload["scheduled_at"] == "2026-05-01T03:00:00Z"
    outcome.status, outcome.error = "ok", None
    assert (
        notifier.backup_payload(outcome, "r1", SLOT)[1]
        == "cinderbak.backup.end"
    )


def test_run_end_is_one_notification_per_project_with_its_own_failures():
    done = report.build(slot(), SLOT + HOUR)
    events = list(notifier.run_payloads(done))
    assert [(p, e, d["project_id"]) for p, e, d in events] == [
        ("info", "cinderbak.run.end", "p1"),
        ("error", "cinderbak.run.end", "p2"),
    ]
    p1, p2 = (d for _, _, d in events)
    assert p1["project"]["ok"] == 2 and p1["failures"] == []
    assert p2["failures"] == [
        {"volume_id": "v3", "reason": "no role in project p2: grant it a role"}
    ]
    assert p2["run"]["ok"] == 2 and p2["run"]["failed"] == 1
    assert p1["run"]["bytes"] == 12 * GIB
    assert p1["state"] == "partial"


def test_mail_goes_on_failure_only_unless_always():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(args=[], project="cinderbak", default_config_files=[])
    conf.set_override("recipients", ["ops@example.org"], group="report")
    failed = report.build(slot(), SLOT + HOUR)
    fine = report.build(slot()[1:3], SLOT + HOUR)
    assert mailer.wanted(conf, failed)
    assert not mailer.wanted(conf, fine)
    conf.set_override("when", "always", group="report")
    assert mailer.wanted(conf, fine)
    mail = mailer.message(conf, failed)
    assert mail["To"] == "ops@example.org"
    assert mail["Subject"] == failed.subject()
    assert "grant it a role" in mail.get_content()
    conf.set_override("recipients", [], group="report")
    assert not mailer.wanted(conf, failed)
