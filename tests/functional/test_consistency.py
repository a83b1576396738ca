"""A server's volumes frozen together, on the real stack.

The guest is libvirt's real test driver (``test:///default``), opened
in-process by both the run and the test, so the test sees the domain's
frozen state; Cinder, Keystone and both Ceph clusters are real. The
same driver against a real QEMU guest is in test_quiesce_guest.py.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import textwrap
import threading
import time
import uuid

import libvirt
import pytest
import rbd

from cinderbak import recovery, service
from cinderbak.journal import Journal, steps
from tests import configs, localstack
from tests.functional.conftest import config_text
from tests.functional.test_run_once import attach_to_server

# The one running domain of libvirt's test:///default driver.
TEST_DOMAIN = "6695eb01-f6a4-8304-79aa-97f2502e193f"


@pytest.fixture
def guest():
    """A connection that keeps test:///default's state alive; the domain
    starts thawed and the test asserts it ends thawed."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("test:///default")
    domain = conn.lookupByUUIDString(TEST_DOMAIN)
    domain.fsThaw()
    yield domain
    conn.close()


def _build(
    stack, tmp_path, transfer_mode: str, *, observer: bool = True, extra=""
):
    """Configure and connect as the daemon would; return (conf, parts)."""
    ceph_a = stack.ceph("a")
    readonly = stack.readonly_user
    path = tmp_path / "cinderbak.conf"
    path.write_text(
        config_text(
            tmp_path,
            f"ft-{uuid.uuid4().hex}",
            cloud="cloud = localstack-cinderbak\n",
        )
        + textwrap.dedent(f"""\
        [consistency]
        quiescer = libvirt
        [libvirt]
        uri_template = test:///default
        [limits]
        max_in_flight = 6
        max_in_flight_per_project = 6
        [policy:app]
        schedule = every 1h
        transfer_mode = {transfer_mode}
        """)
        + textwrap.dedent(extra)
    )
    if observer:
        with path.open("a") as config:
            config.write(
                textwrap.dedent(f"""\
                [volume_cluster]
                conf = {ceph_a.conf}
                user = {readonly.user}
                keyring = {readonly.keyring}
                pools = {ceph_a.pool}
                """)
            )
    conf = configs.conf_from(path)
    return conf, service.build(conf)


def _run(
    stack, tmp_path, transfer_mode: str, *, observer: bool = True, extra=""
):
    """Run one policy in-process; return (outcomes, journal)."""
    _, parts = _build(
        stack, tmp_path, transfer_mode, observer=observer, extra=extra
    )
    try:
        outcomes = service.run_once(parts, ["app"], audit=False)
    finally:
        parts.close()
    return outcomes, Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")


def _steps(journal: Journal, kind) -> list:
    return [
        step
        for run in journal.runs(policy="app")
        for step in journal.get_run(run.id).steps or ()
        if step.kind == kind
    ]


def _server_volumes(alice, make_volume, server_id, count, **metadata):
    volumes = [
        make_volume(alice, metadata={"cinderbak:policy": "app", **metadata})
        for _ in range(count)
    ]
    for volume in volumes:
        attach_to_server(alice, volume.id, server_id)
    return volumes


@pytest.mark.parametrize("transfer_mode", ["snapshot", "volume"])
def test_one_freeze_for_a_servers_three_volumes(
    stack, alice, make_volume, tmp_path, guest, transfer_mode
):
    volumes = _server_volumes(alice, make_volume, TEST_DOMAIN, 3)

    outcomes, journal = _run(stack, tmp_path, transfer_mode)

    rows = {o.volume_id: o for o in outcomes}
    assert set(rows) == {v.id for v in volumes}
    assert all(o.status == "ok" for o in outcomes), outcomes
    assert {o.consistency for o in outcomes} == {"quiesced"}, outcomes
    assert len({o.group_id for o in outcomes}) == 1
    for outcome in outcomes:
        backup = alice.block_storage.get_backup(outcome.backup_id)
        assert backup.metadata["cinderbak:consistency"] == "quiesced"
        assert backup.metadata["cinderbak:group"] == outcome.group_id
    freezes = _steps(journal, steps.FREEZE)
    thaws = _steps(journal, steps.THAW)
    assert len(freezes) == 1 and len(thaws) == 1
    assert guest.fsThaw() == 0, "the guest was left frozen"
    if transfer_mode == "volume":
        # RBD keeps a snapshot's time in whole seconds: a snapshot taken
        # in the second the freeze began reads as that second's start.
        frozen_at = freezes[0].created_at.replace(microsecond=0)
        thawed_at = thaws[0].created_at
        for outcome in outcomes:
            taken = _driver_snapshot_time(
                stack, outcome.volume_id, outcome.backup_id
            )
            assert frozen_at <= taken <= thawed_at, (
                frozen_at,
                taken,
                thawed_at,
            )


def _driver_snapshot_time(stack, volume_id, backup_id):
    """When Cinder's Ceph driver snapshotted the volume for a backup."""
    prefix = f"backup.{backup_id}.snap."
    with (
        localstack.ioctx(stack, "a") as ioctx,
        rbd.Image(ioctx, f"volume-{volume_id}", read_only=True) as image,
    ):
        for snap in image.list_snaps():
            if snap["name"].startswith(prefix):
                stamp = image.get_snap_timestamp(snap["id"])
                return stamp.replace(tzinfo=datetime.UTC)
    raise LookupError(prefix)


def test_freeze_failure_preferred_gives_crash_consistent_backups(
    stack, alice, make_volume, tmp_path
):
    missing = str(uuid.uuid4())  # no such domain
    volumes = _server_volumes(alice, make_volume, missing, 2)

    outcomes, _ = _run(stack, tmp_path, "snapshot")

    assert {o.volume_id for o in outcomes} == {v.id for v in volumes}
    for outcome in outcomes:
        assert outcome.status == "ok", outcome
        assert outcome.consistency == "crash"
        assert any(
            "not quiesced" in note and missing in note
            for note in outcome.notes
        ), outcome.notes
        backup = alice.block_storage.get_backup(outcome.backup_id)
        assert backup.metadata["cinderbak:consistency"] == "crash"


def test_freeze_failure_required_makes_no_backup(
    stack, alice, make_volume, tmp_path
):
    missing = str(uuid.uuid4())
    volumes = _server_volumes(
        alice, make_volume, missing, 2, **{"cinderbak:quiesce": "required"}
    )

    outcomes, _ = _run(stack, tmp_path, "snapshot")

    for outcome in outcomes:
        assert outcome.status == "error"
        assert "cinderbak:quiesce=required" in outcome.error
        assert missing in outcome.error
        assert outcome.backup_id is None
    for volume in volumes:
        assert list(alice.block_storage.backups(volume_id=volume.id)) == []
        assert list(alice.block_storage.snapshots(volume_id=volume.id)) == []


def test_volume_mode_without_volume_cluster_access_says_crash(
    stack, alice, make_volume, tmp_path, guest
):
    _server_volumes(alice, make_volume, TEST_DOMAIN, 1)

    outcomes, _ = _run(stack, tmp_path, "volume", observer=False)

    (outcome,) = outcomes
    assert outcome.status == "ok"
    assert outcome.consistency == "crash"
    assert any("[volume_cluster]" in note for note in outcome.notes)
    assert guest.fsThaw() == 0


def test_start_up_thaws_a_guest_left_frozen_by_a_killed_daemon(
    stack, tmp_path, guest
):
    """What kill -9 inside a freeze window leaves: a freeze step with no
    thaw in the journal, and a frozen guest. Start-up recovery thaws it."""
    journal = Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")
    journal.upgrade()
    run = journal.begin_run(
        "app",
        "volume-x",
        datetime.datetime.now(datetime.UTC),
        project_id=None,
    )
    journal.start_run(run.id)
    journal.begin_step(
        run.id, steps.FREEZE, target=TEST_DOMAIN, details={"host": None}
    )
    assert guest.fsFreeze() == 2

    conf, parts = _build(stack, tmp_path, "snapshot")
    try:
        assert recovery.thaw_left_frozen(parts) == 1
        assert recovery.thaw_left_frozen(parts) == 0  # settled
    finally:
        parts.close()
    assert guest.fsThaw() == 0, "recovery did not thaw the guest"
    assert journal.frozen_servers() == []


def test_hung_snapshot_guest_thawed_by_watchdog_snapshot_cleaned_later(
    stack, alice, make_volume, tmp_path, guest
):
    """cinder-volume paused: the snapshot never leaves creating."""
    (volume,) = _server_volumes(alice, make_volume, TEST_DOMAIN, 1)
    volume_service = int(
        pathlib.Path(stack.raw["pid_files"]["cinder-volume"]).read_text()
    )
    os.killpg(volume_service, signal.SIGSTOP)
    try:
        outcomes, journal = _run(
            stack,
            tmp_path,
            "snapshot",
            extra="max_freeze_seconds = 2\nsnapshot_timeout = 10\n",
        )
    finally:
        os.killpg(volume_service, signal.SIGCONT)

    (outcome,) = outcomes
    assert outcome.status == "timeout", outcome
    (freeze,) = _steps(journal, steps.FREEZE)
    (thaw,) = _steps(journal, steps.THAW)
    assert thaw.details["by_watchdog"] is True
    held = (thaw.created_at - freeze.created_at).total_seconds()
    assert held < 2 + 1.5, held
    assert guest.fsThaw() == 0, "the guest was left frozen"
    assert any("the sweep deletes it" in note for note in outcome.notes)
    # The volume service is back: the sweep deletes the leaked snapshot,
    # one step per pass, and converges.
    _, parts = _build(stack, tmp_path, "snapshot")
    passes = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            passes.append(recovery.sweep(parts))
            if "snapshots confirmed gone" in passes[-1]:
                break
            time.sleep(2)
        assert recovery.sweep(parts) == {}, "a settled sweep did more"
    finally:
        parts.close()
    assert any("snapshot deletions requested" in p for p in passes), passes
    assert list(alice.block_storage.snapshots(volume_id=volume.id)) == []
    assert journal.open_steps(kind=steps.SNAPSHOT_DELETE) == []


def test_two_policies_on_one_server_never_freeze_it_at_once(
    stack, alice, make_volume, tmp_path, guest
):
    """Each policy's run freezes the server for its own volume; the runs
    go at the same time, the freezes one after the other."""
    (first,) = _server_volumes(alice, make_volume, TEST_DOMAIN, 1)
    second = make_volume(alice, metadata={"cinderbak:policy": "app2"})
    attach_to_server(alice, second.id, TEST_DOMAIN)
    _, parts = _build(
        stack,
        tmp_path,
        "snapshot",
        extra="""\
        [policy:app2]
        schedule = every 1h
        transfer_mode = snapshot
        """,
    )
    results: dict[str, list] = {}
    try:
        threads = [
            threading.Thread(
                target=lambda name=name: results.__setitem__(
                    name, service.run_once(parts, [name], audit=False)
                )
            )
            for name in ("app", "app2")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        parts.close()
    outcomes = results["app"] + results["app2"]
    assert {o.volume_id for o in outcomes} == {first.id, second.id}
    assert all(o.status == "ok" for o in outcomes), outcomes
    assert {o.consistency for o in outcomes} == {"quiesced"}, outcomes
    journal = Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")
    windows = []
    for name in ("app", "app2"):
        for run in journal.runs(policy=name):
            kinds = {s.kind: s for s in journal.get_run(run.id).steps or ()}
            if steps.FREEZE in kinds:
                windows.append(
                    (
                        kinds[steps.FREEZE].created_at,
                        kinds[steps.THAW].finished_at,
                        kinds[steps.THAW].details["freeze_seconds"],
                    )
                )
    windows.sort()
    assert len(windows) == 2, windows
    assert windows[0][1] <= windows[1][0], f"freezes overlapped: {windows}"
    # The thaw step records the real window (it used to be null).
    assert all(seconds is not None and seconds > 0 for *_, seconds in windows)
    assert guest.fsThaw() == 0, "the guest was left frozen"
