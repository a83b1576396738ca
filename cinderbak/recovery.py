"""Start-up recovery: finish what a killed daemon left in flight.

The journal says, for every run that never reached an outcome, which
actions were intended and which the cloud acknowledged. Recovery turns
that into decisions: a backup still creating is waited for, a temporary
snapshot is deleted, a run that never started is recorded as missed.
A step whose resource id was never recorded (killed between the API call
and the journal write) is matched by the name the run gives everything it
creates, so nothing leaks and nothing is created twice.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import threading
from collections.abc import Callable, Sequence
from typing import Any

from openstack import exceptions as sdk_exceptions
from oslo_log import log as logging

from cinderbak import (
    chains,
    discovery,
    dr_sync,
    expiry,
    policy,
    settle,
    tenant,
    verify,
)
from cinderbak.cloud import API_ERRORS
from cinderbak.filerestore import RUN_PREFIX as FILES_RUN_PREFIX
from cinderbak.journal import (
    RunRecord,
    StepRecord,
    states,
    steps,
)
from cinderbak.phases import Phase
from cinderbak.quiesce.base import QuiesceError, ServerRef
from cinderbak.service import Parts
from cinderbak.summary import Outcome
from cinderbak.workflow import (
    Job,
    PolicyRun,
    is_slot_target,
    resource_name,
    slot_target,
    write_back,
)

LOG = logging.getLogger(__name__)


def thaw_left_frozen(
    parts: Parts,
    frozen: Sequence[StepRecord] | None = None,
    host: str | None = None,
) -> int:
    """Thaw every guest the journal shows frozen; return how many.

    Runs first at start-up: a guest left frozen by a killed daemon hangs
    its applications until someone thaws it. A thaw that fails stays in
    the journal and is tried again at the next start.
    """
    thawed = 0
    listed = (
        parts.journal.frozen_servers(host=host) if frozen is None else frozen
    )
    for step in listed:
        server = ServerRef(step.target, step.details.get("host"))
        try:
            count = parts.quiescer.thaw(server)
        except QuiesceError as exc:
            LOG.error(
                "recovery: server %s may still be frozen: %s", server, exc
            )
            continue
        thaw = parts.journal.begin_step(
            step.run_id,
            steps.THAW,
            target=step.target,
            details={
                "by": "recovery",
                "filesystems": count,
                "host": parts.journal.host,
            },
        )
        parts.journal.complete_step(thaw)
        if step.is_open:
            parts.journal.undo_step(step.id, "thawed by recovery")
        LOG.warning(
            "recovery: thawed server %s, left frozen by a stopped "
            "daemon (%d filesystems)",
            server,
            count,
        )
        thawed += 1
    return thawed


def sweep(parts: Parts, host: str | None = None) -> dict[str, int]:
    """Settle what finished runs left behind; return counts of what moved.

    Convergent and idempotent: each pass looks at what Cinder says now
    about every temporary snapshot and every unsettled backup of ours the
    journal knows, and takes one step towards the end state (a snapshot
    deleted, an error backup deleted, a late available backup recorded).
    Running it again, or twice at once, does nothing more. The daemon
    runs it at start-up and on ``[daemon] sweep_interval``; ``run-once``
    runs it first. ``host`` sweeps after another daemon (a takeover);
    this host's records by default.
    """
    counts: collections.Counter[str] = collections.Counter()
    journal = parts.journal
    for step in journal.unsettled_creations(steps.SNAPSHOT_CREATE, host=host):
        counts[_sweep_snapshot(parts, step)] += 1
    for step in journal.unsettled_creations(steps.BACKUP_CREATE, host=host):
        counts[_sweep_backup(parts, step)] += 1
    # Deletions requested before a stop and never confirmed.
    get_snapshot = parts.cloud.service.block_storage.get_snapshot
    for step in journal.open_steps(kind=steps.SNAPSHOT_DELETE, host=host):
        if not step.resource_id:
            continue
        try:
            status, _ = _status(parts, get_snapshot, step.resource_id)
        except API_ERRORS:
            continue
        if status is None:
            journal.complete_step(step.id)
            counts["snapshot deletions confirmed"] += 1
    counts.update(dr_sync.reconcile(parts))  # the DR catalog, if configured
    counts.pop("waiting", None)
    if counts:
        LOG.info(
            "sweep: %s",
            ", ".join(f"{n} {what}" for what, n in sorted(counts.items())),
        )
    return dict(counts)


def _status(
    parts: Parts, get: Callable[[str], Any], resource_id: str
) -> tuple[str | None, Any]:
    """(status, resource) as Cinder shows it now; (None, None) if gone."""
    try:
        resource = parts.cloud.call(get, resource_id)
    except sdk_exceptions.NotFoundException:
        return None, None
    return resource.status, resource


def _sweep_snapshot(parts: Parts, step: StepRecord) -> str:
    """One temporary snapshot of a finished run (see settle.for_snapshot)."""
    storage = parts.cloud.service.block_storage
    snapshot_id = str(step.resource_id)
    try:
        status, _ = _status(parts, storage.get_snapshot, snapshot_id)
        action = settle.for_snapshot(status)
        if action is settle.Action.GONE:
            parts.journal.undo_step(step.id, "temporary snapshot deleted")
            return "snapshots confirmed gone"
        if action is settle.Action.DELETE:
            parts.cloud.call(
                storage.delete_snapshot, snapshot_id, ignore_missing=True
            )
            LOG.info(
                "sweep: deleting leaked temporary snapshot %s of volume %s",
                snapshot_id,
                step.target,
            )
            return "snapshot deletions requested"
    except API_ERRORS as exc:
        LOG.warning("sweep: snapshot %s: %s", snapshot_id, exc)
    return "waiting"


def _sweep_backup(parts: Parts, step: StepRecord) -> str:
    """One backup of ours whose run ended without settling it (see
    settle.for_backup)."""
    storage = parts.cloud.service.block_storage
    backup_id = str(step.resource_id)
    try:
        status, backup = _status(parts, storage.get_backup, backup_id)
        action = settle.for_backup(step.is_open, status)
        if action is settle.Action.GONE:
            parts.journal.undo_step(step.id, "the backup is gone")
            return "backups confirmed gone"
        if action is settle.Action.RECORD:
            parts.journal.complete_step(
                step.id,
                details={
                    "is_incremental": backup.is_incremental,
                    "size_gb": backup.size,
                    "settled_by": "sweep",
                },
            )
            write_back(parts.conf, parts.cloud, step.target, None, backup_id)
            return "late backups recorded available"
        if action is settle.Action.DELETE:
            if step.is_open:
                parts.journal.fail_step(step.id, backup.fail_reason or "error")
            parts.cloud.call(
                storage.delete_backup, backup_id, ignore_missing=True
            )
            LOG.info("sweep: deleting our error backup %s", backup_id)
            return "error backups deleted"
    except API_ERRORS as exc:
        LOG.warning("sweep: backup %s: %s", backup_id, exc)
    return "waiting"


Leftovers = tuple[list[RunRecord], list[StepRecord]]


def take_leftovers(parts: Parts) -> Leftovers | None:
    """List this host's unfinished runs and guests left frozen, as this
    process's to settle, if no other process of the host is alive
    (:mod:`cinderbak.hostlock`); then hold the lock shared like the rest.

    Return None when another process of the host is alive (what is
    unfinished may be its own, in flight) or the lock could not be
    opened. A failed attempt leaves the lock as it was: shared for a
    command, which took it when it started; nothing for a daemon, which
    must hold nothing while it waits for its turn.
    """
    lock = parts.host_lock
    if lock is None or not lock.try_alone():
        return None
    try:
        return (
            parts.journal.unfinished_runs(),
            parts.journal.frozen_servers(),
        )
    finally:
        lock.share()


def recover(
    parts: Parts,
    stop: threading.Event,
    unfinished: Sequence[RunRecord] | None = None,
    frozen: Sequence[StepRecord] | None = None,
    host: str | None = None,
) -> list[Outcome]:
    """Settle every unfinished run of this host; return their outcomes.

    ``unfinished`` and ``frozen`` default to what the journal lists now;
    the daemon passes what it listed before its scheduler started, so the
    runs (and freezes) of the new process are never taken for leftovers.

    Each run is rebuilt from the journal into a job in the phase its
    steps show and carried on by the same engine as a fresh run; runs of
    one (policy, slot) share one engine, slots are settled in parallel
    (bounded). A resource that vanished meanwhile settles its job at
    once. Safe to repeat: a settled record is a no-op. ``host`` names a
    dead daemon whose records a survivor takes over.
    """
    thaw_left_frozen(parts, frozen, host)
    by_slot: dict[tuple[str, Any], list[RunRecord]] = collections.defaultdict(
        list
    )
    if unfinished is None:
        unfinished = parts.journal.unfinished_runs(host=host)
    for record in unfinished:
        # A file-level restore that fell back to a scratch restore leaves
        # the same kind of scratch volume as a verification.
        if record.policy.startswith((verify.RUN_PREFIX, FILES_RUN_PREFIX)):
            settle_verification(parts, record)
        elif record.policy.startswith(expiry.RUN_PREFIX):
            parts.journal.finish_run(
                record.id,
                states.FAILED,
                {"error": "interrupted; the next pass plans again"},
            )
        elif not is_slot_target(record.target):
            by_slot[(record.policy, record.scheduled_at)].append(record)
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(
        RECOVERY_WORKERS, thread_name_prefix="cinderbak-recovery"
    ) as pool:
        for result in pool.map(
            lambda item: _recover_slot(parts, stop, *item),
            sorted(by_slot.items(), key=lambda kv: (kv[0][0], kv[0][1])),
        ):
            outcomes.extend(result)
    sweep(parts, host)
    return outcomes


RECOVERY_WORKERS = 4


def _recover_slot(
    parts: Parts,
    stop: threading.Event,
    key: tuple[str, Any],
    records: list[RunRecord],
) -> list[Outcome]:
    name, scheduled_at = key
    known = parts.policies.get(name) or policy.fallback_policy(name)
    run = PolicyRun.for_parts(parts, known, scheduled_at, stop=stop)
    jobs = []
    for record in records:
        try:
            job = _job_for(parts, run, record)
        except API_ERRORS as exc:
            LOG.warning(
                "recovery: run %s of %s on %s: cannot read it now (%s); "
                "the next start tries again",
                record.id,
                name,
                record.target,
                exc,
            )
            continue
        if job is None:
            continue
        LOG.info(
            "recovery: run %s of %s on %s: %s",
            record.id,
            name,
            record.target,
            job.outcome.status if job.outcome else f"resumed {job.phase}",
        )
        jobs.append(job)
    return run.drive([], jobs) if jobs else []


def settle_verification(parts: Parts, record: RunRecord) -> None:
    """Delete the scratch volume of an interrupted verification and end
    it; the backup is picked again by a later pass (it was not marked)."""
    journal = parts.journal
    created = _last(record, steps.SCRATCH_CREATE)
    deleted = _last(record, steps.SCRATCH_DELETE)
    scratch = created.resource_id if created else None
    if created is not None and scratch is None:
        scratch = _scratch_by_name(parts, record.target)
    error = "interrupted by a stop; verified again at a later pass"
    if scratch and not (deleted and deleted.state is states.DONE):
        step = deleted.id if deleted and deleted.is_open else None
        if step is None:
            step = journal.begin_step(
                record.id, steps.SCRATCH_DELETE, target=scratch, details={}
            )
            journal.set_step_resource(step, scratch)
        try:
            verify.delete_scratch(parts.cloud, scratch)
        except Exception as exc:  # noqa: BLE001 - the open step retries
            LOG.warning(
                "recovery: scratch volume %s not deleted: %s", scratch, exc
            )
            error += f"; scratch volume {scratch} not deleted yet: {exc}"
        else:
            journal.complete_step(step)
            LOG.info("recovery: deleted scratch volume %s", scratch)
    if created is not None and created.is_open:
        journal.fail_step(created.id, "interrupted")
    journal.finish_run(record.id, states.FAILED, {"error": error})


def _scratch_by_name(parts: Parts, backup_id: str) -> str | None:
    """The scratch volume a killed verification created before the
    journal learnt its id: our project, our name for it."""
    storage = parts.cloud.service.block_storage
    found: list[Any] = parts.cloud.call(
        lambda: list(
            storage.volumes(name=discovery.SCRATCH_PREFIX + backup_id)
        )
    )
    for volume in found:
        if discovery.is_scratch(
            volume, str(parts.cloud.service.current_project_id)
        ):
            return str(volume.id)
    return None


def _last(record: RunRecord, kind: steps.StepKind) -> StepRecord | None:
    found = [step for step in record.steps or () if step.kind == kind]
    return found[-1] if found else None


def _job_for(parts: Parts, run: PolicyRun, record: RunRecord) -> Job | None:
    """Rebuild the job of an interrupted run in the phase its journal
    shows, or settle the run at once."""
    journal = parts.journal
    if record.state is states.PENDING:
        journal.finish_run(
            record.id,
            states.MISSED,
            {"error": "the daemon stopped before this run started"},
        )
        return None
    try:
        volume: Any = parts.cloud.call(
            parts.cloud.service.block_storage.get_volume, record.target
        )
    except sdk_exceptions.NotFoundException:
        journal.finish_run(
            record.id,
            states.FAILED,
            {
                "error": "the volume was deleted while the run was "
                "interrupted; Cinder removed its snapshots with it"
            },
        )
        return None
    target = discovery.target_of(volume, run.policy, run.policy.quiesce)
    ownership = record.attrs.get("ownership", run.policy.ownership.value)
    conn = (
        parts.cloud.for_project(target.project_id)
        if ownership == policy.Ownership.PROJECT.value
        else parts.cloud.service
    )
    backup_step = _last(record, steps.BACKUP_CREATE)
    snapshot_step = _last(record, steps.SNAPSHOT_CREATE)
    details = backup_step.details if backup_step else {}
    job = Job(
        target=target,
        run_id=record.id,
        conn=conn,
        kind=details.get("kind", chains.FULL),
        kind_reason="resumed after a restart",
        expected_parent=details.get("expected_parent"),
        consistency=details.get("consistency", "crash"),
        phase=Phase.COPYING,
    )
    job.started = run.clock()
    job.deadline = job.started + run.policy.backup_timeout
    for step in record.steps or ():
        if step.kind == steps.CHECKSUM and step.is_open:
            # Killed while checksumming: the backup is taken again from
            # the listing and checksummed anew if its source still exists.
            journal.fail_step(step.id, "interrupted by a stop")
    if snapshot_step is not None:
        job.snapshot_step = snapshot_step.id
        job.snapshot_id = snapshot_step.resource_id or _adopt(
            parts, conn.block_storage.snapshots, snapshot_step, run
        )
    if backup_step is None:
        job.outcome = run.job_outcome(
            job,
            "error",
            "interrupted before the backup was requested; "
            "the next scheduled run backs the volume up",
        )
        if snapshot_step is not None and snapshot_step.is_open:
            journal.fail_step(snapshot_step.id, "interrupted by a stop")
        return job
    job.phase = Phase.BACKING_UP
    job.backup_step = backup_step.id
    job.backup_id = backup_step.resource_id or _adopt(
        parts, conn.block_storage.backups, backup_step, run
    )
    if job.backup_id is None:
        job.outcome = run.job_outcome(
            job,
            "error",
            "interrupted while requesting the backup; Cinder never created it",
        )
    else:
        job.backup_open = True
        job.submitted = job.started
    return job


def _adopt(
    parts: Parts,
    listing: Callable[..., Any],
    step: StepRecord,
    run: PolicyRun,
) -> str | None:
    """Find what a step created when the journal missed its id.

    Everything a run creates carries the run's name and our owner mark.
    """
    name = resource_name(run.run_label)
    for item in parts.cloud.call(
        lambda: list(listing(details=True, volume_id=step.target, name=name))
    ):
        if tenant.is_ours(item.metadata or {}, parts.conf.deployment_id):
            parts.journal.set_step_resource(step.id, item.id)
            return str(item.id)
    if step.is_open:
        parts.journal.fail_step(step.id, "the cloud never created it")
    return None


def missed_runs(parts: Parts, now: datetime.datetime) -> dict[str, bool]:
    """For each policy, whether its last slot before ``now`` is due.

    Return ``{policy: True}`` when the slot was missed (no run recorded)
    and is still within the misfire grace: it runs once, now. A slot past
    the grace is recorded as missed and returns False.
    """
    due: dict[str, bool] = {}
    last = parts.journal.last_run_per_policy()
    for name, known in parts.policies.items():
        slot = known.schedule.last_fire_time(now)
        if slot is None:
            continue
        recorded = last.get(name)
        if recorded is not None and recorded.scheduled_at >= slot:
            continue
        late = (now - slot).total_seconds()
        if late <= known.misfire_grace_time:
            due[name] = True
            continue
        members = parts.members
        run = parts.journal.begin_run(
            name,
            slot_target(members.member_id if members.coordinated else None),
            slot,
            project_id=None,
        )
        if run.created:
            parts.journal.finish_run(
                run.id,
                states.MISSED,
                {
                    "error": f"the daemon was down at {slot:%Y-%m-%d %H:%M} "
                    f"UTC, {late:.0f} s ago, longer than "
                    f"misfire_grace_time"
                },
            )
        due[name] = False
    return due
