"""The restore refusals: plain facts in, reasons out."""

from __future__ import annotations

import dataclasses
import datetime

from cinderbak import restore
from cinderbak.restore import (
    BackupFacts,
    GroupMember,
    VolumeFacts,
    group_refusals,
    new_volume_name,
    refusals,
    restore_failure,
    restore_finished,
    restored_name,
)

BACKUP = BackupFacts(
    id="b1", project_id="pa", size=2, status="available", name="nightly"
)
TARGET = VolumeFacts(
    id="v1", name="db", project_id="pa", size=2, status="available"
)


def _target(**changes) -> VolumeFacts:
    return dataclasses.replace(TARGET, **changes)


def test_new_volume_from_an_available_backup_is_allowed():
    assert refusals(BACKUP) == []


def test_a_backup_that_is_not_available_is_refused():
    (reason,) = refusals(dataclasses.replace(BACKUP, status="creating"))
    assert "backup b1 in project pa is creating" in reason


def test_confirmed_overwrite_of_a_fit_volume_is_allowed():
    assert refusals(BACKUP, TARGET, confirmed=True) == []


def test_unconfirmed_overwrite_names_volume_and_project_and_asks_yes():
    (reason,) = refusals(BACKUP, TARGET)
    assert "volume v1 (db) in project pa" in reason
    assert "overwrite" in reason
    assert "--yes" in reason


def test_attached_volume_is_refused_naming_the_server():
    target = _target(status="in-use", attachments=("srv-1",))
    (reason,) = refusals(BACKUP, target, confirmed=True)
    assert reason == (
        "volume v1 (db) in project pa is in-use, attached to server "
        "srv-1: detach it first"
    )


def test_volume_not_available_is_refused():
    (reason,) = refusals(
        BACKUP, _target(status="error_restoring"), confirmed=True
    )
    assert "volume v1 (db) in project pa is error_restoring" in reason


def test_too_small_volume_is_refused_with_both_sizes():
    (reason,) = refusals(BACKUP, _target(size=1), confirmed=True)
    assert "volume v1 (db) in project pa is 1 GiB" in reason
    assert "2 GiB of backup b1" in reason


def test_larger_volume_is_allowed():
    assert refusals(BACKUP, _target(size=5), confirmed=True) == []


def test_volume_of_another_project_is_refused():
    (reason,) = refusals(BACKUP, _target(project_id="pb"), confirmed=True)
    assert "volume v1 (db) in project pb" in reason
    assert "project pa of backup b1" in reason


def test_every_problem_is_reported_and_yes_is_not_asked_for_then():
    target = _target(
        project_id="pb", size=1, status="in-use", attachments=("s",)
    )
    reasons = refusals(BACKUP, target)
    assert len(reasons) == 3
    assert not any("--yes" in reason for reason in reasons)


def test_yes_does_not_override_a_refusal():
    assert refusals(BACKUP, _target(size=1), confirmed=True)


def test_unnamed_volume_is_named_by_id_only():
    (reason,) = refusals(BACKUP, _target(name=""))
    assert "volume v1 in project pa" in reason


def test_new_volume_name_derives_from_backup_and_time():
    now = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    assert new_volume_name(BACKUP, now) == "nightly-restored-20240506070809"
    unnamed = dataclasses.replace(BACKUP, name="")
    assert new_volume_name(unnamed, now) == "b1-restored-20240506070809"


# -- a server's restore point (--group) ---------------------------------

GROUP = "g-1"


def _member(
    backup_id: str,
    volume_id: str,
    *,
    status: str = "available",
    project_id: str = "pa",
    group_size: str = "2",
    run: str = "app@2024-05-06T07:00:00Z",
) -> GroupMember:
    """A member of GROUP as a two-volume freeze marks it."""
    return GroupMember(
        backup=BackupFacts(
            id=backup_id, project_id=project_id, size=1, status=status
        ),
        volume_id=volume_id,
        group_size=group_size,
        run=run,
    )


PAIR = [_member("b1", "v1"), _member("b2", "v2")]


def test_a_complete_restore_point_is_allowed():
    assert group_refusals(GROUP, PAIR) == []


def test_a_group_no_backup_carries_is_refused_naming_it():
    (reason,) = group_refusals(GROUP, [])
    assert reason == (
        "group g-1: no backup of this deployment carries cinderbak:group=g-1"
    )


def test_an_incomplete_group_names_found_expected_and_who_is_there():
    (reason,) = group_refusals(GROUP, [_member("b2", "v2")])
    assert reason.startswith(
        "group g-1 is incomplete: found 1 of 2 backups "
        "(backup b2 of volume v2)"
    )
    assert "cinderbak restore BACKUP" in reason


def test_more_backups_than_the_freeze_covered_is_refused():
    (reason,) = group_refusals(GROUP, [*PAIR, _member("b3", "v3")])
    assert "found 3 backups" in reason
    assert "more than the 2 its freeze covered" in reason
    assert "backup b3 of volume v3" in reason


def test_two_backups_of_one_volume_are_not_one_restore_point():
    (reason,) = group_refusals(
        GROUP, [_member("b1", "v1"), _member("b9", "v1")]
    )
    assert reason == (
        "group g-1: volume v1 has several backups (b1, b9): "
        "not one restore point"
    )


def test_members_disagreeing_on_group_size_are_refused_naming_each():
    members = [_member("b1", "v1"), _member("b2", "v2", group_size="3")]
    (reason,) = group_refusals(GROUP, members)
    assert reason.startswith(
        "group g-1: backups disagree on cinderbak:group_size"
    )
    assert "backup b1 of volume v1 says 2" in reason
    assert "backup b2 of volume v2 says 3" in reason


def test_members_of_different_runs_are_refused():
    members = [_member("b1", "v1"), _member("b2", "v2", run="app@other")]
    (reason,) = group_refusals(GROUP, members)
    assert "disagree on cinderbak:run" in reason
    assert "backup b2 of volume v2 says app@other" in reason


def test_members_in_different_projects_are_refused_saying_why():
    members = [_member("b1", "v1"), _member("b2", "v2", project_id="pb")]
    (reason,) = group_refusals(GROUP, members)
    assert "disagree on project" in reason
    assert "backup b1 of volume v1 says pa" in reason
    assert "backup b2 of volume v2 says pb" in reason
    assert "a server's volumes belong to one project" in reason


def test_a_member_not_available_is_refused_naming_it_and_its_project():
    members = [_member("b1", "v1"), _member("b2", "v2", status="restoring")]
    (reason,) = group_refusals(GROUP, members)
    assert reason == (
        "group g-1: backup b2 of volume v2 in project pa is restoring: "
        "only an available backup can be restored"
    )


def test_a_group_without_a_usable_size_cannot_be_judged_complete():
    for size, said in (
        ("", "no count"),
        ("two", "cinderbak:group_size='two'"),
        ("0", "cinderbak:group_size='0'"),
    ):
        members = [_member("b1", "v1", group_size=size)]
        (reason,) = group_refusals(GROUP, members)
        assert said in reason, size
        assert "cannot tell whether the restore point is complete" in reason


def test_every_problem_of_a_group_is_reported():
    members = [
        _member("b1", "v1", status="error"),
        _member("b2", "v2", status="creating", run="other"),
        _member("b3", "v3"),
    ]
    reasons = group_refusals(GROUP, members)
    assert len(reasons) == 4, reasons
    assert all(reason.startswith("group g-1") for reason in reasons)


def test_members_are_named_in_a_stable_order():
    backwards = [_member("b2", "v2"), _member("b1", "v1")]
    (reason,) = group_refusals(GROUP, [*backwards, _member("b3", "v3")])
    assert "(backup b1 of volume v1, backup b2 of volume v2, backup b3" in (
        reason
    )


def test_restored_name_is_source_and_time():
    now = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    assert restored_name("db", now) == "db-restored-20240506070809"


def test_restore_in_progress_is_neither_failed_nor_finished():
    assert restore_failure("v", "restoring-backup", "b", "restoring") is None
    assert not restore_finished("restoring-backup", "restoring")
    # The volume is ready a moment before Cinder releases the backup.
    assert not restore_finished("available", "restoring")
    assert restore_finished("available", "available")


def test_restore_failure_names_the_resource_and_status():
    assert restore_failure("v", "error_restoring", "b", "available") == (
        "volume v went to error_restoring during the restore"
    )
    assert restore_failure("v", "error", "b", "restoring") == (
        "volume v went to error during the restore"
    )
    assert restore_failure("v", "creating", "b", "error") == (
        "backup b went to error during the restore"
    )


def test_a_restore_strips_our_volume_keys_in_any_spelling():
    copied = {
        "cinderbak:policy": "daily",
        "cinderbak:quiesce": "off",
        "cinderbak:last_status": "ok",
        "cinderbak:last_backup": "b1 2026-01-01T00:00:00Z",
        "CinderBak:policy": "weekly",
        "app": "db",
        "cinderbak-notes": "tenant's own",
    }
    assert restore.opt_in_keys(copied) == [
        "CinderBak:policy",
        "cinderbak:last_backup",
        "cinderbak:last_status",
        "cinderbak:policy",
        "cinderbak:quiesce",
    ]
    assert restore.opt_in_keys({"app": "db"}) == []


def test_the_output_says_what_happened_to_the_opt_in():
    keys = ["cinderbak:last_status", "cinderbak:policy"]
    assert restore.opt_in_note(keys, kept=False) == (
        "removed cinderbak:last_status, cinderbak:policy"
    )
    assert restore.opt_in_note(keys, kept=True) == (
        "kept cinderbak:last_status, cinderbak:policy (--keep-opt-in)"
    )
    assert restore.opt_in_note([], kept=False) == "none copied"


# -- the journal, not the marks, says who belongs ------------------------

RECORDED = {"v1": "b1", "v2": "b2"}


def test_a_recorded_restore_point_is_restored_whatever_its_size_marks():
    # A tenant rewrote both size marks: the journal's two volumes count.
    edited = [
        dataclasses.replace(m, group_size="1", run="forged") for m in PAIR
    ]
    assert group_refusals(GROUP, edited, RECORDED) == []


def test_a_forged_member_with_consistent_marks_is_refused_by_the_journal():
    forged = _member("b9", "v9", group_size="3")
    marks_only = [dataclasses.replace(m, group_size="3") for m in PAIR]
    # The marks alone would call it a complete three-volume point.
    assert group_refusals(GROUP, [*marks_only, forged]) == []
    (reason,) = group_refusals(GROUP, [*marks_only, forged], RECORDED)
    assert reason.startswith(
        "group g-1: backup b9 of volume v9 carries the group's mark, but "
        "the journal records no such backup of this restore point"
    )
    assert "a forged or copied mark" in reason


def test_a_member_the_journal_made_but_cinder_lacks_is_incomplete():
    (reason,) = group_refusals(GROUP, [PAIR[0]], RECORDED)
    assert reason.startswith(
        "group g-1 is incomplete: the journal records 2 volumes in its "
        "freeze, missing volume v2 (backup b2)"
    )
    unfinished = {"v1": "b1", "v2": None}
    (reason,) = group_refusals(GROUP, [PAIR[0]], unfinished)
    assert "missing volume v2 (no backup made)" in reason


def test_without_the_journal_members_must_be_created_close_together():
    t0 = datetime.datetime(2024, 5, 6, 7, 0, tzinfo=datetime.UTC)
    close = [
        dataclasses.replace(m, created_at=t0 + datetime.timedelta(minutes=i))
        for i, m in enumerate(PAIR)
    ]
    assert group_refusals(GROUP, close) == []
    late = dataclasses.replace(
        close[1], created_at=t0 + datetime.timedelta(days=2)
    )
    (reason,) = group_refusals(GROUP, [close[0], late])
    assert reason.startswith("group g-1: backups were created 2 days, 0:00")
    assert "the journal has no record of this restore point" in reason
