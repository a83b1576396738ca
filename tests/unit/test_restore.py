"""The restore refusals: plain facts in, reasons out."""

from __future__ import annotations

import dataclasses
import datetime

from cinderbak.restore import (
    BackupFacts,
    VolumeFacts,
    new_volume_name,
    refusals,
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
