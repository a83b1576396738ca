"""The run engine's pure rules: job phases, fair share, capacity, the
backup service's health, and the sweep's convergence."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cinderbak import phases, runplan, settle
from cinderbak.phases import Phase

# -- phases ----------------------------------------------------------------


def test_every_phase_reaches_an_outcome():
    for start in Phase:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in phases.TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & phases.FINAL, start


@pytest.mark.parametrize(
    "path",
    [
        # volume mode, detached volume
        [Phase.QUEUED, Phase.BACKING_UP, Phase.CHECKSUMMING, Phase.DONE],
        # volume mode, a server's group
        [Phase.QUEUED, Phase.FREEZING, Phase.BACKING_UP, Phase.DONE],
        # snapshot mode: copy, backup, cleanup
        [
            Phase.QUEUED,
            Phase.FREEZING,
            Phase.COPYING,
            Phase.BACKING_UP,
            Phase.CHECKSUMMING,
            Phase.CLEANING_UP,
            Phase.DONE,
        ],
        # the snapshot never left creating
        [Phase.QUEUED, Phase.COPYING, Phase.TIMED_OUT],
        # backup failed, its snapshot deleted
        [
            Phase.QUEUED,
            Phase.COPYING,
            Phase.BACKING_UP,
            Phase.CLEANING_UP,
            Phase.FAILED,
        ],
        # quiesce=required and the guest would not freeze
        [Phase.QUEUED, Phase.FREEZING, Phase.FAILED],
        # the backup service died: the run gives up on it
        [Phase.QUEUED, Phase.BACKING_UP, Phase.FAILED],
        # a snapshot that cannot be deleted in time: the sweep's job
        [
            Phase.QUEUED,
            Phase.COPYING,
            Phase.BACKING_UP,
            Phase.CLEANING_UP,
            Phase.TIMED_OUT,
        ],
    ],
)
def test_the_paths_a_job_takes_are_allowed(path):
    phase = path[0]
    for nxt in path[1:]:
        phase = phases.move(phase, nxt)
    assert phase in phases.FINAL


@pytest.mark.parametrize(
    "current, target",
    [
        (Phase.DONE, Phase.FAILED),
        (Phase.FAILED, Phase.DONE),
        (Phase.QUEUED, Phase.DONE),
        (Phase.CHECKSUMMING, Phase.BACKING_UP),
        (Phase.CLEANING_UP, Phase.BACKING_UP),
    ],
)
def test_moves_the_table_forbids_are_refused_by_name(current, target):
    with pytest.raises(phases.BadMove, match=f"from {current} to {target}"):
        phases.move(current, target, what="job of volume v1")


def test_after_outcome_cleans_up_only_when_a_snapshot_is_left():
    assert phases.after_outcome(True, Phase.DONE) is Phase.CLEANING_UP
    assert phases.after_outcome(False, Phase.FAILED) is Phase.FAILED
    with pytest.raises(ValueError):
        phases.after_outcome(True, Phase.BACKING_UP)


# -- fair share ------------------------------------------------------------


def _take_all(queue, limit):
    """Start groups one slot at a time, as capacity frees up one by one."""
    order = []
    while queue:
        started = queue.take(lambda p, g, n: n <= limit)
        assert started, "nothing started although capacity was free"
        order.extend(started)
    return order


def test_a_small_tenant_waits_one_turn_not_behind_a_big_one():
    queue: runplan.FairQueue[str] = runplan.FairQueue()
    for i in range(50):
        queue.add("big", f"big-{i}")
    queue.add("small", "small-0")
    queue.add("small", "small-1")
    # Capacity for 2 at a time, freed one at a time afterwards.
    first = queue.take(_budget(2))
    assert [p for p, _ in first] == ["big", "small"]
    second = queue.take(_budget(1))
    third = queue.take(_budget(1))
    assert [p for p, _ in second + third] == ["big", "small"]


def _budget(n):
    left = [n]

    def fits(project, group, size):
        if left[0] < size:
            return False
        left[0] -= size
        return True

    return fits


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from("abcdef"),
        st.lists(st.integers(1, 3), min_size=1, max_size=20),
        min_size=1,
    ),
    st.integers(1, 5),
)
def test_no_project_waits_more_than_one_turn_of_each_other(work, capacity):
    queue: runplan.FairQueue[tuple[str, int]] = runplan.FairQueue()
    for project, sizes in work.items():
        for i, size in enumerate(sizes):
            queue.add(project, (project, i), size)
    order: list[str] = []
    while queue:
        started = queue.take(_budget(max(capacity, 3)))
        assert started
        order.extend(p for p, _ in started)
    assert len(order) == sum(len(s) for s in work.values())
    # Between two starts of one project, no other project starts twice
    # while the first still had work queued.
    remaining = {p: len(s) for p, s in work.items()}
    last_seen: dict[str, int] = {}
    for position, project in enumerate(order):
        for other, seen_at in last_seen.items():
            if other != project and remaining[other] > 0:
                between = order[seen_at + 1 : position]
                assert between.count(project) <= 1
        last_seen[project] = position
        remaining[project] -= 1


def test_groups_of_a_project_keep_their_order_and_drain_empties():
    queue: runplan.FairQueue[str] = runplan.FairQueue()
    for name in ("a1", "a2", "a3"):
        queue.add("a", name)
    queue.add("b", "b1", size=2)
    assert len(queue) == 5
    assert [g for _, g in queue.take(_budget(1))] == ["a1"]
    assert queue.drain() == ["b1", "a2", "a3"]
    assert not queue and len(queue) == 0


# -- capacity --------------------------------------------------------------


def test_capacity_follows_the_services_and_halves_on_overload():
    assert runplan.ceiling_for(2, 15, None) == 30
    assert runplan.ceiling_for(2, 15, 8) == 8
    assert runplan.ceiling_for(0, 15, None) == 15  # probe with one's worth
    capacity = runplan.Capacity(30)
    assert capacity.current == 30
    assert capacity.overloaded() == 15
    assert capacity.overloaded() == 7
    assert capacity.succeeded() == 8
    for _ in range(100):
        capacity.succeeded()
    assert capacity.current == 30
    for _ in range(10):
        capacity.overloaded()
    assert capacity.current == 1
    capacity.resize(4)
    assert capacity.ceiling == 4 and capacity.current == 1


# -- the backup service --------------------------------------------------

T = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


def _svc(host, up=True, enabled=True, zone="nova"):
    return runplan.ServiceState(host, zone, up, enabled, T)


def test_backup_service_down_is_named_with_its_time():
    reason = runplan.backup_services_down([_svc("b1", up=False)], None)
    assert reason == "backup service b1 down since 2026-12-01 09:00:00Z"
    assert runplan.backup_services_down([_svc("b1")], None) is None
    assert (
        runplan.backup_services_down([_svc("b1", up=False), _svc("b2")], None)
        is None
    )
    assert "disabled" in runplan.backup_services_down(
        [_svc("b1", enabled=False)], None
    )
    assert runplan.backup_services_down([], None) == (
        "no cinder-backup service"
    )
    # Only the run's zone counts.
    assert (
        runplan.backup_services_down(
            [_svc("b1", zone="z1"), _svc("b2", up=False, zone="z2")], "z2"
        )
        == "backup service b2 in zone z2 down since 2026-12-01 09:00:00Z"
    )


def test_stall_is_measured_from_the_last_progress():
    assert runplan.stall_bound([], 30) == 30
    assert runplan.stall_bound([5.0, 40.0], 30) == 120
    assert not runplan.stalled(None, None, 1000, 30)
    assert runplan.stalled(0.0, None, 30, 30)
    assert not runplan.stalled(0.0, 20.0, 30, 30)
    assert runplan.stalled(0.0, 20.0, 50, 30)


# -- the sweep converges -------------------------------------------------

# Cinder's side, as a tiny model: what each status becomes on its own
# (None: the resource is gone), and what a delete request does.
_NEXT = {
    "creating": ["creating", "available", "error"],
    "backing-up": ["backing-up", "available"],
    "deleting": ["deleting", None],
    "available": ["available"],
    "error": ["error"],
    None: [None],
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_NEXT, key=str)),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(0, 2), min_size=40, max_size=40),
)
def test_replaying_the_sweep_converges_and_never_raises(
    status, is_backup, step_open, fate
):
    """Any starting state, any number of passes (and Cinder moving on its
    own in between): the record ends settled, and once settled a pass
    does nothing."""
    settled = False
    deletes = 0
    for choice in fate:
        if settled:
            break
        action = (
            settle.for_backup(step_open, status)
            if is_backup
            else settle.for_snapshot(status)
        )
        if action is settle.Action.GONE:
            settled = True
        elif action is settle.Action.RECORD:
            assert is_backup and status == "available"
            settled = True
        elif action is settle.Action.DELETE:
            assert status in ("available", "error")
            if is_backup:
                assert status == "error", "a good backup is never deleted"
            deletes += 1
            status = "deleting"
        options = _NEXT[status]
        status = options[choice % len(options)]
    # What is left is either settled, or waiting on Cinder itself.
    if not settled:
        assert (
            status in ("creating", "backing-up", "deleting")
            or (is_backup and status == "available" and not step_open)
            or status is None
        )


# -- an owner mark is trusted only as far as the journal backs it ----------


def _info(backup_id, ours=True):
    from cinderbak.chains import BackupInfo

    return BackupInfo(
        id=backup_id,
        created_at=T,
        data_timestamp=T,
        is_incremental=False,
        status="available",
        ours=ours,
        held=False,
        has_dependent_backups=False,
    )


def test_a_forged_owner_mark_is_not_ours_where_the_journal_knows_the_volume():
    from cinderbak.backups import trusted_view

    trusted = {"vol-1": {"b-ours"}}
    assert trusted_view(_info("b-ours"), "vol-1", trusted).ours
    assert not trusted_view(_info("b-forged"), "vol-1", trusted).ours
    # No record of the volume (journal lost, new host): the mark counts.
    assert trusted_view(_info("b-any"), "vol-2", trusted).ours
    assert trusted_view(_info("b-any"), "vol-1", None).ours
    # A backup without our mark never becomes ours.
    assert not trusted_view(_info("b-x", ours=False), "vol-2", {}).ours


# -- what a poll's observation leads to ------------------------------------

V = phases.Verdict
STATUSES = [
    None,
    "creating",
    "available",
    "error",
    "deleting",
    "error_deleting",
    "backing-up",
    "restoring",
]


@pytest.mark.parametrize(
    "phase, status, late, requested, verdict",
    [
        # the temporary snapshot
        (Phase.COPYING, "creating", False, False, V.WAIT),
        (Phase.COPYING, "creating", True, False, V.TIME_OUT),
        (Phase.COPYING, "available", False, False, V.SNAPSHOT_READY),
        (Phase.COPYING, "available", True, False, V.SNAPSHOT_READY),
        (Phase.COPYING, "error", False, False, V.FAILED),
        (Phase.COPYING, None, False, False, V.VANISHED),
        # the backup: a dead backup service keeps it creating
        (Phase.BACKING_UP, "creating", False, False, V.WAIT),
        (Phase.BACKING_UP, "creating", True, False, V.TIME_OUT),
        (Phase.BACKING_UP, "available", True, False, V.BACKUP_READY),
        (Phase.BACKING_UP, "error", False, False, V.FAILED),
        (Phase.BACKING_UP, "deleting", False, False, V.FAILED),
        # deleted by an admin while a restart waited for it
        (Phase.BACKING_UP, None, False, False, V.VANISHED),
        # cleaning up the temporary snapshot
        (Phase.CLEANING_UP, "available", False, False, V.DELETE_SNAPSHOT),
        (Phase.CLEANING_UP, "error", True, False, V.DELETE_SNAPSHOT),
        (Phase.CLEANING_UP, "available", False, True, V.WAIT),
        (Phase.CLEANING_UP, "backing-up", False, False, V.WAIT),
        (Phase.CLEANING_UP, "deleting", False, True, V.WAIT),
        (Phase.CLEANING_UP, "deleting", True, True, V.LEAVE_TO_SWEEP),
        # a hung volume service: still creating at the deadline
        (Phase.CLEANING_UP, "creating", True, False, V.LEAVE_TO_SWEEP),
        (Phase.CLEANING_UP, "error_deleting", False, True, V.LEAVE_TO_SWEEP),
        (Phase.CLEANING_UP, None, False, True, V.CLEANED),
        (Phase.CLEANING_UP, None, True, False, V.CLEANED),
    ],
)
def test_what_a_poll_leads_to(phase, status, late, requested, verdict):
    now, deadline = (100.0, 50.0) if late else (10.0, 50.0)
    assert (
        phases.on_poll(
            phase,
            status,
            now=now,
            deadline=deadline,
            delete_requested=requested,
        )
        is verdict
    )


@given(
    st.sampled_from(sorted(phases.WAITING_ON_CINDER)),
    st.sampled_from(STATUSES),
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.booleans(),
)
def test_every_observation_has_an_answer_and_waiting_ends(
    phase, status, now, deadline, requested
):
    """Total over every phase and status; once past the deadline, no
    answer is WAIT: a job never waits on Cinder for ever."""
    verdict = phases.on_poll(
        phase, status, now=now, deadline=deadline, delete_requested=requested
    )
    assert isinstance(verdict, phases.Verdict)
    if now >= deadline:
        assert verdict is not phases.Verdict.WAIT


@pytest.mark.parametrize("phase", [Phase.QUEUED, Phase.CHECKSUMMING])
def test_phases_that_wait_on_nothing_are_refused(phase):
    with pytest.raises(ValueError, match="waits on no resource"):
        phases.on_poll(phase, "available", now=0, deadline=1)
