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
import datetime
import threading

from openstack import exceptions as sdk_exceptions
from oslo_log import log as logging

from cinderbak import (
    backups,
    chains,
    discovery,
    expiry,
    policy,
    tenant,
    verify,
)
from cinderbak.journal import (
    InvalidTransition,
    RunRecord,
    StepRecord,
    states,
    steps,
)
from cinderbak.quiesce.base import QuiesceError, ServerRef
from cinderbak.service import Parts
from cinderbak.summary import Outcome
from cinderbak.workflow import Job, PolicyRun, resource_name

LOG = logging.getLogger(__name__)


def thaw_left_frozen(parts: Parts) -> int:
    """Thaw every guest the journal shows frozen; return how many.

    Runs first at start-up: a guest left frozen by a killed daemon hangs
    its applications until someone thaws it. A thaw that fails stays in
    the journal and is tried again at the next start.
    """
    thawed = 0
    for step in parts.journal.frozen_servers():
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
            details={"by": "recovery", "filesystems": count},
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


def finish_snapshot_deletions(
    parts: Parts, stop: threading.Event, timeout: float = 600
) -> int:
    """Delete temporary snapshots whose deletion is still open; return how
    many are gone now.

    A snapshot stuck in ``creating`` (volume service down) cannot be
    deleted when its run ends; once the service is back it can. The
    service user does it: it may act in every project.
    """
    done = 0
    for step in parts.journal.open_steps(kind=steps.SNAPSHOT_DELETE):
        if step.resource_id is None:
            continue
        try:
            backups.delete_snapshot_when_free(
                parts.cloud,
                parts.cloud.service,
                step.resource_id,
                timeout=timeout,
                stop=stop,
            )
        except (sdk_exceptions.SDKException, TimeoutError) as exc:
            LOG.warning(
                "recovery: snapshot %s not deleted yet: %s",
                step.resource_id,
                exc,
            )
            continue
        try:
            parts.journal.complete_step(step.id)
        except InvalidTransition:
            continue  # the run that owns it finished the deletion itself
        LOG.info(
            "recovery: deleted leaked temporary snapshot %s", step.resource_id
        )
        done += 1
    return done


def recover(parts: Parts, stop: threading.Event) -> list[Outcome]:
    """Settle every unfinished run of this host; return their outcomes."""
    thaw_left_frozen(parts)
    finish_snapshot_deletions(parts, stop)
    by_policy: dict[str, list[RunRecord]] = collections.defaultdict(list)
    for record in parts.journal.unfinished_runs():
        # A file-level restore that fell back to a scratch restore leaves
        # the same kind of scratch volume as a verification.
        if record.policy.startswith((verify.RUN_PREFIX, "files:")):
            settle_verification(parts, record)
        elif record.policy.startswith(expiry.RUN_PREFIX):
            parts.journal.finish_run(
                record.id,
                states.FAILED,
                {"error": "interrupted; the next pass plans again"},
            )
        else:
            by_policy[record.policy].append(record)
    outcomes: list[Outcome] = []
    for name, records in sorted(by_policy.items()):
        known = parts.policies.get(name) or policy.fallback_policy(name)
        for record in records:
            run = PolicyRun.for_parts(
                parts, known, record.scheduled_at, stop=stop
            )
            job = _job_for(parts, run, record)
            if job is None:
                continue
            LOG.info(
                "recovery: run %s of %s on %s: %s",
                record.id,
                name,
                record.target,
                job.outcome.status
                if job.outcome
                else "waiting for its backup",
            )
            outcomes.extend(run.drive([], [job]))
    return outcomes


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
    for volume in parts.cloud.call(
        lambda: list(
            storage.volumes(name=discovery.SCRATCH_PREFIX + backup_id)
        )
    ):
        if discovery.is_scratch(
            volume, parts.cloud.service.current_project_id
        ):
            return volume.id
    return None


def _last(record: RunRecord, kind: steps.StepKind) -> StepRecord | None:
    found = [step for step in record.steps or () if step.kind == kind]
    return found[-1] if found else None


def _job_for(parts: Parts, run: PolicyRun, record: RunRecord) -> Job | None:
    """Rebuild the in-memory job of an interrupted run, or settle it."""
    journal = parts.journal
    if record.state is states.PENDING:
        journal.finish_run(
            record.id,
            states.MISSED,
            {"error": "the daemon stopped before this run started"},
        )
        return None
    try:
        volume = parts.cloud.call(
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
    )
    job.started = run.clock()
    job.deadline = job.started + run.policy.backup_timeout
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
        return job
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
    return job


def _adopt(
    parts: Parts, listing, step: StepRecord, run: PolicyRun
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
            return item.id
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
        run = parts.journal.begin_run(name, "*", slot, project_id=None)
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
