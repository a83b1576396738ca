"""One scheduled run of a policy, from opted-in volumes to finished backups.

A run prepares a job per volume (checks, ownership, full or incremental,
quota), then drives all jobs from a single loop: it starts what the limits
allow and polls Cinder with one list call per resource kind for everything
in flight, instead of one GET per backup. Every action is written to the
journal before it is taken and marked done after, so a restart knows what
was in flight. One volume's failure is that volume's outcome only.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import openstack.connection
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import backups, chains, consistency, metrics, tenant
from cinderbak.checksums import SourceChecksummer
from cinderbak.cloud import Cloud, NoRoleInProject
from cinderbak.consistency import SourceSnapshotObserver
from cinderbak.discovery import Problem, Target
from cinderbak.journal import Journal, states, steps
from cinderbak.limits import Limiter
from cinderbak.policy import Ownership, Policy, TransferMode
from cinderbak.quiesce.base import (
    Quiescer,
    QuiesceRequiredError,
    ServerRef,
    ThawFailed,
)
from cinderbak.quiesce.noop import NoopQuiescer
from cinderbak.quiesce.window import FreezeWindow, freeze_window
from cinderbak.summary import Outcome

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt(
        "deployment_id",
        default="cinderbak",
        help="This deployment's mark on the backups and snapshots it "
        "creates (metadata cinderbak:owner). Expiry only ever touches "
        "backups with this mark: give each deployment sharing a cloud "
        "its own, and never change it without migrating the marks.",
    ),
    cfg.BoolOpt(
        "write_back_status",
        default=False,
        help="Write cinderbak:last_backup and cinderbak:last_status into "
        "the metadata of each opted-in volume, so tenants see the outcome "
        "without asking the operator.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=5.0,
        min=0.1,
        help="Seconds between two status polls of in-flight work. Each "
        "poll is one list call per resource kind, whatever the number "
        "of volumes in flight.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("DEFAULT", OPTS)]


def resource_name(run_label: str) -> str:
    """Name of everything a run creates: recovery finds leaks by it."""
    return f"cinderbak-{run_label}"


SNAPSHOT_NOTE = (
    "taken from a snapshot: Cinder's Ceph backup driver copies such "
    "backups in full; use transfer_mode = volume for differential copies"
)


@dataclasses.dataclass
class Job:
    """Mutable state of one volume's backup within one run."""

    target: Target
    run_id: str
    conn: openstack.connection.Connection
    kind: str
    kind_reason: str
    expected_parent: str | None
    consistency: str = "crash"
    notes: list[str] = dataclasses.field(default_factory=list)
    snapshot_id: str | None = None
    snapshot_step: int | None = None
    backup_id: str | None = None
    backup_step: int | None = None
    started: float = 0.0
    deadline: float = 0.0
    holds_slot: bool = False
    group_id: str | None = None
    group_size: int = 0
    freeze_seconds: float | None = None
    # The available backup, while its source is being checksummed.
    done_backup: object | None = None
    checksum: concurrent.futures.Future | None = None
    checksum_step: int | None = None
    checksum_mark: str | None = None
    outcome: Outcome | None = None


class PolicyRun:
    """Carries out one run of one policy over a set of targets."""

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        cloud: Cloud,
        journal: Journal,
        limiter: Limiter,
        policy: Policy,
        scheduled_at: datetime.datetime,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        quiescer: Quiescer | None = None,
        observer: SourceSnapshotObserver | None = None,
        checksummer: SourceChecksummer | None = None,
    ) -> None:
        self.conf = conf
        self.quiescer = quiescer or NoopQuiescer(conf)
        self.observer = observer
        self.checksummer = checksummer if policy.record_checksums else None
        # Checksums read whole images: a couple at a time, off the poll
        # loop, so one large volume does not hold up everyone's polling.
        self._checksums: concurrent.futures.ThreadPoolExecutor | None = None
        self.cloud = cloud
        self.journal = journal
        self.limiter = limiter
        self.policy = policy
        self.scheduled_at = scheduled_at
        self.stop = stop or threading.Event()
        self.clock = clock
        self.run_label = f"{policy.name}@{scheduled_at:%Y-%m-%dT%H:%M:%SZ}"

    @classmethod
    def for_parts(
        cls,
        parts,
        policy: Policy,
        scheduled_at: datetime.datetime,
        stop: threading.Event | None = None,
    ) -> PolicyRun:
        """Build a run from the parts every command shares."""
        return cls(
            parts.conf,
            parts.cloud,
            parts.journal,
            parts.limiter,
            policy,
            scheduled_at,
            stop=stop,
            quiescer=parts.quiescer,
            observer=parts.observer,
            checksummer=parts.checksummer,
        )

    # -- the run ---------------------------------------------------------

    def execute(self, found: Iterable[Target | Problem]) -> list[Outcome]:
        """Back up every target; return one outcome per volume."""
        outcomes: list[Outcome] = []
        queued: list[Job] = []
        for item in found:
            if isinstance(item, Problem):
                outcomes.append(report_problem(self.conf, self.cloud, item))
                continue
            job_or_outcome = self._prepare(item)
            if isinstance(job_or_outcome, Outcome):
                outcomes.append(job_or_outcome)
            else:
                queued.append(job_or_outcome)
        return outcomes + self.drive(queued)

    def drive(
        self, queued: list[Job], in_flight: list[Job] | None = None
    ) -> list[Outcome]:
        """Start queued jobs as limits allow and poll until all are done.

        ``in_flight`` takes jobs already under way (recovery resumes them).
        On stop, returns early: what is in flight stays in the journal.
        """
        try:
            return self._drive(queued, list(in_flight or []))
        finally:
            if self._checksums is not None:
                self._checksums.shutdown(wait=True, cancel_futures=True)
                self._checksums = None

    def _drive(self, queued: list[Job], in_flight: list[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for job in [j for j in in_flight if j.outcome is not None]:
            in_flight.remove(job)
            self._finish(job)
            outcomes.append(job.outcome)
        while (queued or in_flight) and not self.stop.is_set():
            self._start_what_limits_allow(queued, in_flight)
            if not in_flight and not queued:
                break
            if self.stop.wait(self.conf.poll_interval):
                LOG.info(
                    "run %s: stopping; in-flight work stays in the "
                    "journal for the next start",
                    self.run_label,
                )
                break
            if in_flight:
                self._poll_or_wait(in_flight)
            for job in [j for j in in_flight if j.outcome is not None]:
                in_flight.remove(job)
                self._finish(job)
                outcomes.append(job.outcome)
        return outcomes

    # -- preparing -------------------------------------------------------

    def _prepare(self, target: Target) -> Job | Outcome:
        policy = self.policy
        run = self.journal.begin_run(
            policy.name,
            target.volume_id,
            self.scheduled_at,
            project_id=target.project_id,
            attrs={
                "transfer_mode": policy.transfer_mode.value,
                "ownership": policy.ownership.value,
            },
        )
        if run.is_final or run.state is not states.PENDING:
            # Done already, or a worker or recovery holds it: never twice.
            return self._outcome(
                target, "skipped", error=f"run already {run.state}"
            )

        def refuse(reason: str, status: str = "error") -> Outcome:
            final = states.SKIPPED if status == "skipped" else states.FAILED
            self.journal.finish_run(run.id, final, {"error": reason})
            if status == "error":
                self._write_back(target, reason)
            return self._outcome(target, status, error=reason)

        if target.status == "backing-up":
            return refuse(
                "the volume is already backing-up (another "
                "backup is in progress)",
                "skipped",
            )
        if target.status not in ("available", "in-use"):
            return refuse(
                f"volume status is {target.status}; backups "
                "need available or in-use"
            )
        try:
            conn = self._owner_connection(target)
            history = backups.history(
                conn, target.volume_id, self.conf.deployment_id
            )
            shortfall = backups.quota_shortfall(
                self.cloud.call(
                    self.cloud.service.block_storage.get_quota_set,
                    self._owner(target),
                    usage=True,
                ),
                target.size_gb,
            )
        except NoRoleInProject as exc:
            return refuse(str(exc))
        except sdk_exceptions.SDKException as exc:
            return refuse(f"cannot read backups or quota: {exc}")
        if shortfall:
            return refuse(f"project {self._owner(target)}: {shortfall}")
        now = datetime.datetime.now(datetime.UTC)
        kind, reason = chains.next_backup_kind(history, policy.full_every, now)
        return Job(
            target=target,
            run_id=run.id,
            conn=conn,
            kind=kind,
            kind_reason=reason,
            expected_parent=chains.expected_parent(history),
        )

    def _owner(self, target: Target) -> str:
        if self.policy.ownership is Ownership.PROJECT:
            return target.project_id
        return self.cloud.service.current_project_id

    def _owner_connection(
        self, target: Target
    ) -> openstack.connection.Connection:
        if self.policy.ownership is Ownership.PROJECT:
            return self.cloud.for_project(target.project_id)
        return self.cloud.service

    # -- starting --------------------------------------------------------

    def _start_what_limits_allow(
        self, queued: list[Job], in_flight: list[Job]
    ) -> None:
        zone = self.policy.backup_availability_zone
        for group in consistency.group_by(list(queued), _freeze_key):
            project = group[0].target.project_id
            if not self.limiter.try_acquire(project, zone, len(group)):
                continue
            for job in group:
                queued.remove(job)
                job.holds_slot = True
                job.started = self.clock()
                self.journal.start_run(job.run_id)
                in_flight.append(job)
            if _freeze_key(group[0]) is None:
                for job in group:
                    job.notes.append(
                        "not attached to a server: nothing to freeze"
                    )
                    self._request_copy(job)
            else:
                self._start_group(group)

    def _request_copy(self, job: Job) -> None:
        """Ask Cinder for the point-in-time copy: snapshot or backup."""
        if self.policy.transfer_mode is TransferMode.SNAPSHOT:
            self._create_snapshot(job)
        else:
            self._create_backup(job)

    def _start_group(self, group: list[Job]) -> None:
        """One freeze for a server's volumes, all copies requested inside.

        A copy is marked quiesced only when its point in time is known to
        lie inside the freeze: the snapshot left ``creating``, or the Ceph
        driver's source snapshot was seen, while the guest was frozen.
        """
        attachment = group[0].target.attachments[0]
        server = ServerRef(attachment.server_id, attachment.host)
        group_id = str(uuid.uuid4())
        mode = _strictest(job.target.quiesce for job in group)
        volume_mode = self.policy.transfer_mode is TransferMode.VOLUME
        if volume_mode and self.observer is None:
            if mode is tenant.QuiesceMode.REQUIRED:
                for job in group:
                    job.outcome = self.job_outcome(
                        job,
                        "error",
                        "cinderbak:quiesce=required in "
                        "transfer_mode=volume needs read-only access to the "
                        "volume cluster ([volume_cluster] conf)",
                    )
                return
            mode = tenant.QuiesceMode.OFF  # a freeze nobody can confirm
        for job in group:
            job.group_id = group_id
            job.group_size = len(group)
        freeze_step: list[int] = []

        def intent(ref: ServerRef) -> None:
            freeze_step.append(
                self.journal.begin_step(
                    group[0].run_id,
                    steps.FREEZE,
                    target=ref.server_id,
                    details={
                        "host": ref.host,
                        "group": group_id,
                        "volumes": [j.target.volume_id for j in group],
                    },
                )
            )

        def thawed(ref: ServerRef, window: FreezeWindow) -> None:
            if freeze_step:
                self.journal.complete_step(
                    freeze_step[0],
                    details={
                        "quiesced": window.quiesced,
                        "error": window.error,
                    },
                )
            thaw = self.journal.begin_step(
                group[0].run_id,
                steps.THAW,
                target=ref.server_id,
                details={"by_watchdog": window.thawed_by_watchdog},
            )
            self.journal.complete_step(
                thaw, details={"freeze_seconds": window.duration}
            )

        try:
            with freeze_window(
                self.quiescer,
                server,
                max_freeze_seconds=self.policy.max_freeze_seconds,
                mode=mode,
                on_freeze_intent=intent,
                on_thawed=thawed,
            ) as window:
                confirmed = self._copies_in_window(group, window)
        except QuiesceRequiredError as exc:
            for job in group:
                job.outcome = self.job_outcome(
                    job, "error", f"cinderbak:quiesce=required: {exc}"
                )
            return
        except ThawFailed as exc:
            LOG.error("server %s MAY STILL BE FROZEN: %s", server, exc)
            for job in group:
                job.notes.append(f"thaw failed, guest may be frozen: {exc}")
            confirmed = set()
        LOG.info(
            "server %s: freeze window %s s for %d volumes (%s)",
            server.server_id,
            _seconds(window.duration),
            len(group),
            "quiesced" if confirmed else "crash-consistent",
        )
        for job in group:
            job.freeze_seconds = window.duration
            if window.error:
                job.notes.append(f"not quiesced: {window.error}")
            if job.target.volume_id in confirmed:
                job.consistency = "quiesced"
                if job.backup_id:
                    self._remark(job)
            elif window.quiesced:
                job.notes.append(
                    "copy not confirmed inside the freeze; marked crash"
                )
            if (
                mode is tenant.QuiesceMode.OFF
                and volume_mode
                and (self.observer is None)
            ):
                job.notes.append(
                    "no read-only access to the volume "
                    "cluster ([volume_cluster] conf): "
                    "volume-mode backups are crash-consistent"
                )

    def _copies_in_window(
        self, group: list[Job], window: FreezeWindow
    ) -> set[str]:
        """Request every copy of the group in parallel; return the volume
        ids whose point in time is confirmed inside the freeze."""
        with concurrent.futures.ThreadPoolExecutor(len(group)) as pool:
            list(pool.map(self._request_copy, group))
        started = [j for j in group if j.outcome is None]
        if not window.quiesced:
            return set()
        try:
            if self.policy.transfer_mode is TransferMode.SNAPSHOT:
                return self._snapshots_done_while_frozen(started, window)
            seen = self.observer.wait_for_sources(
                [(j.target.volume_id, j.backup_id) for j in started],
                window.is_frozen,
            )
        except Exception as exc:  # noqa: BLE001 - any failure: not confirmed
            # The copies exist and polling carries on; what cannot be
            # confirmed inside the freeze is crash-consistent, never lost.
            LOG.warning(
                "run %s: cannot confirm the copies' point in time "
                "(%s); marking them crash",
                self.run_label,
                exc,
            )
            return set()
        return {j.target.volume_id for j in started if j.backup_id in seen}

    def _snapshots_done_while_frozen(
        self, jobs: list[Job], window: FreezeWindow
    ) -> set[str]:
        pending = {j.snapshot_id: j for j in jobs}
        done: set[str] = set()
        while pending and window.is_frozen():
            creating = backups.ids_in_status(
                self.cloud, "snapshots", "creating"
            )
            if not window.is_frozen():
                break
            for snapshot_id in [s for s in pending if s not in creating]:
                done.add(pending.pop(snapshot_id).target.volume_id)
            if pending:
                self.stop.wait(0.2)
        return done

    def _remark(self, job: Job) -> None:
        """Record on a backup the consistency confirmed after creation.

        Cinder replaces backup metadata on update, so the full set of our
        marks (and anything a tenant added meanwhile) is written back.
        """
        try:
            current = self.cloud.call(
                job.conn.block_storage.get_backup, job.backup_id
            )
            metadata = dict(current.metadata or {}) | self._marks(job)
            self.cloud.call(
                job.conn.block_storage.put,
                f"/backups/{job.backup_id}",
                json={"backup": {"metadata": metadata}},
                microversion="3.43",
            ).raise_for_status()
        except Exception as exc:  # the backup stays as it was marked
            if job.consistency == "quiesced" and not job.checksum_mark:
                job.consistency = "crash"
            job.notes.append(f"could not update the backup's marks: {exc}")

    def _marks(self, job: Job) -> dict[str, str]:
        checksum = (
            {tenant.CHECKSUM: job.checksum_mark} if job.checksum_mark else {}
        )
        return (
            checksum
            | {
                tenant.OWNER: self.conf.deployment_id,
                tenant.POLICY: self.policy.name,
                tenant.RUN: self.run_label,
                tenant.CONSISTENCY: job.consistency,
            }
            | (
                {
                    tenant.GROUP: job.group_id,
                    tenant.GROUP_SIZE: str(job.group_size),
                }
                if job.group_id
                else {}
            )
        )

    def _create_snapshot(self, job: Job) -> None:
        target = job.target
        job.snapshot_step = self.journal.begin_step(
            job.run_id,
            steps.SNAPSHOT_CREATE,
            target=target.volume_id,
            details={"force": target.in_use},
        )
        job.snapshot_id = self._request(
            job,
            job.snapshot_step,
            "snapshot",
            job.conn.block_storage.create_snapshot,
            self.policy.snapshot_timeout,
            volume_id=target.volume_id,
            name=resource_name(self.run_label),
            description="temporary: source of a cinderbak backup",
            force=target.in_use,
            metadata=self._marks(job),
        )

    def _create_backup(self, job: Job) -> None:
        target = job.target
        incremental = job.kind == chains.INCREMENTAL
        job.backup_step = self.journal.begin_step(
            job.run_id,
            steps.BACKUP_CREATE,
            target=target.volume_id,
            details={
                "kind": job.kind,
                "reason": job.kind_reason,
                "expected_parent": job.expected_parent,
                "snapshot_id": job.snapshot_id,
            },
        )
        attrs = {
            "volume_id": target.volume_id,
            "name": resource_name(self.run_label),
            "description": f"cinderbak {job.kind} backup, run "
            f"{self.run_label}",
            "is_incremental": incremental,
            "metadata": self._marks(job),
        }
        if job.snapshot_id:
            attrs["snapshot_id"] = job.snapshot_id
        elif target.in_use:
            attrs["force"] = True
        if self.policy.backup_availability_zone:
            attrs["availability_zone"] = self.policy.backup_availability_zone
        if self.policy.backup_container:
            attrs["container"] = self.policy.backup_container
        job.backup_id = self._request(
            job,
            job.backup_step,
            "backup",
            job.conn.block_storage.create_backup,
            self.policy.backup_timeout,
            **attrs,
        )

    def _request(
        self, job: Job, step: int, what: str, create, timeout: float, **attrs
    ) -> str | None:
        """Ask Cinder to create a snapshot or backup, once.

        The id is recorded as soon as the API returns it: a kill after
        this point leaves a resource recovery knows by id. A refusal is
        the job's outcome. Never repeated on an ambiguous failure: a
        second create could make a second backup.
        """
        try:
            resource = self.cloud.call(create, idempotent=False, **attrs)
        except sdk_exceptions.SDKException as exc:
            self.journal.fail_step(step, str(exc))
            job.outcome = self.job_outcome(
                job, "error", f"{what} refused: {exc}"
            )
            return None
        self.journal.set_step_resource(step, resource.id)
        job.deadline = self.clock() + timeout
        return resource.id

    # -- polling ---------------------------------------------------------

    def _poll_or_wait(self, in_flight: Sequence[Job]) -> None:
        """Poll; if the API cannot be reached, try again next interval.

        Jobs still time out on their own deadlines, so an API that stays
        away ends the run with per-volume timeouts, not a crash; what is in
        flight stays in the journal for recovery.
        """
        try:
            self._poll(in_flight)
        except (
            sdk_exceptions.SDKException,
            ks_exceptions.ClientException,
        ) as exc:
            LOG.warning(
                "run %s: status poll failed (%s); trying again in %.1f s",
                self.run_label,
                exc,
                self.conf.poll_interval,
            )
            for job in in_flight:
                if job.outcome is None:
                    self._check_deadline(
                        job, "backup" if job.backup_id else "snapshot"
                    )

    def _poll(self, in_flight: Sequence[Job]) -> None:
        """One list call per kind for all jobs; a GET only for those done."""
        waiting_snap = [
            j
            for j in in_flight
            if j.outcome is None and j.backup_id is None and j.snapshot_id
        ]
        for job in in_flight:
            if job.outcome is None and job.checksum and job.checksum.done():
                self._checksum_done(job)
        waiting_backup = [
            j
            for j in in_flight
            if j.outcome is None and j.backup_id and j.checksum is None
        ]
        if waiting_snap:
            creating = backups.ids_in_status(
                self.cloud, "snapshots", "creating"
            )
            for job in waiting_snap:
                if job.snapshot_id in creating:
                    self._check_deadline(job, "snapshot")
                    continue
                self._snapshot_settled(job)
        if waiting_backup:
            creating = backups.ids_in_status(self.cloud, "backups", "creating")
            for job in waiting_backup:
                if job.backup_id in creating:
                    self._check_deadline(job, "backup")
                    continue
                self._backup_settled(job)

    def _check_deadline(self, job: Job, what: str) -> None:
        if self.clock() < job.deadline:
            return
        resource = job.backup_id if what == "backup" else job.snapshot_id
        job.outcome = self.job_outcome(
            job,
            "timeout",
            f"{what} {resource} still creating after its timeout; it is "
            "left in the journal and checked again on the next start",
        )

    def _snapshot_settled(self, job: Job) -> None:
        snapshot = self.cloud.call(
            self.cloud.service.block_storage.get_snapshot, job.snapshot_id
        )
        if snapshot.status == "available":
            self.journal.complete_step(job.snapshot_step)
            self._create_backup(job)
            return
        self.journal.fail_step(
            job.snapshot_step, f"snapshot status {snapshot.status}"
        )
        job.outcome = self.job_outcome(
            job, "error", f"snapshot {snapshot.id} ended {snapshot.status}"
        )

    def _backup_settled(self, job: Job) -> None:
        backup = self.cloud.call(
            self.cloud.service.block_storage.get_backup, job.backup_id
        )
        if backup.status == "available":
            self.journal.complete_step(
                job.backup_step,
                resource_id=backup.id,
                details={
                    "is_incremental": backup.is_incremental,
                    "size_gb": backup.size,
                },
            )
            if job.kind == chains.INCREMENTAL and not backup.is_incremental:
                job.notes.append("Cinder made a full backup")
            if job.snapshot_id:
                job.notes.append(SNAPSHOT_NOTE)
            if self.checksummer is not None:
                self._start_checksum(job, backup)
                return
            job.outcome = self.job_outcome(job, "ok", backup=backup)
            return
        reason = backup.fail_reason or f"status {backup.status}"
        self.journal.fail_step(job.backup_step, reason)
        job.outcome = self.job_outcome(
            job, "error", f"backup failed: {reason}"
        )
        self._delete_failed_backup(job)

    # -- checksums -------------------------------------------------------

    def _start_checksum(self, job: Job, backup) -> None:
        """Checksum what the backup copied, while its source still exists:
        the driver's snapshot (volume mode) or our snapshot."""
        job.done_backup = backup
        job.checksum_step = self.journal.begin_step(
            job.run_id,
            steps.CHECKSUM,
            target=job.target.volume_id,
            details={"snapshot_id": job.snapshot_id},
        )
        self.journal.set_step_resource(job.checksum_step, job.backup_id)
        if self._checksums is None:
            self._checksums = concurrent.futures.ThreadPoolExecutor(
                2, thread_name_prefix="cinderbak-checksum"
            )
        job.checksum = self._checksums.submit(
            self.checksummer.of_backup_source,
            job.target.volume_id,
            job.backup_id,
            job.snapshot_id,
        )

    def _checksum_done(self, job: Job) -> None:
        """Record the checksum (journal, then the backup's marks); a
        failure costs the checksum, never the backup."""
        try:
            found = job.checksum.result()
        except Exception as exc:  # noqa: BLE001 - reported, backup kept
            self.journal.fail_step(job.checksum_step, str(exc))
            job.notes.append(f"no source checksum recorded: {exc}")
        else:
            self.journal.complete_step(
                job.checksum_step, details=found.details()
            )
            job.checksum_mark = found.checksum.mark()
            self._remark(job)
            LOG.info(
                "backup %s: source %s checksummed, %s",
                job.backup_id,
                found.source,
                found.rate(),
            )
        job.outcome = self.job_outcome(job, "ok", backup=job.done_backup)

    # -- finishing -------------------------------------------------------

    def _delete_failed_backup(self, job: Job) -> None:
        """Remove a backup of ours that ended in error; it holds no data."""
        step = self.journal.begin_step(
            job.run_id,
            steps.BACKUP_DELETE,
            target=job.target.volume_id,
            details={"reason": "backup ended in error"},
        )
        self.journal.set_step_resource(step, job.backup_id)
        try:
            self.cloud.call(
                job.conn.block_storage.delete_backup,
                job.backup_id,
                ignore_missing=True,
            )
        except sdk_exceptions.SDKException as exc:
            self.journal.fail_step(step, str(exc))
            job.notes.append(f"could not delete failed backup: {exc}")
            return
        self.journal.complete_step(step)

    def _delete_snapshot(self, job: Job) -> None:
        """Remove the temporary snapshot, whatever became of the backup.

        A deletion that cannot finish now (the volume service is down, the
        snapshot still busy) stays an open step: recovery finishes it.
        """
        step = self.journal.begin_step(
            job.run_id,
            steps.SNAPSHOT_DELETE,
            target=job.target.volume_id,
            details={},
        )
        self.journal.set_step_resource(step, job.snapshot_id)
        try:
            backups.delete_snapshot_when_free(
                self.cloud,
                job.conn,
                job.snapshot_id,
                timeout=self.policy.snapshot_timeout,
                stop=self.stop,
            )
        except (sdk_exceptions.SDKException, TimeoutError) as exc:
            LOG.warning(
                "temporary snapshot %s not deleted yet: %s; recovery retries",
                job.snapshot_id,
                exc,
            )
            job.notes.append(
                f"temporary snapshot {job.snapshot_id} not yet deleted "
                f"({exc}); retried by recovery"
            )
            return
        self.journal.complete_step(step)

    def _finish(self, job: Job) -> None:
        if job.holds_slot:
            self.limiter.release(
                job.target.project_id, self.policy.backup_availability_zone
            )
            job.holds_slot = False
        timed_out = job.outcome.status == "timeout"
        if job.snapshot_id and not (timed_out and job.backup_id):
            self._delete_snapshot(job)
            job.outcome.notes = list(job.notes)
        state = {"ok": states.SUCCEEDED, "timeout": states.TIMED_OUT}.get(
            job.outcome.status, states.FAILED
        )
        self.journal.finish_run(job.run_id, state, job.outcome.as_dict())
        metrics.record_backup(self.policy.name, job.outcome.status)
        if job.outcome.status == "ok":
            self._write_back(job.target, None, job.backup_id)
        elif job.outcome.status == "error":
            self._write_back(job.target, job.outcome.error)
        LOG.info("%s", job.outcome.log_line())

    def _write_back(
        self, target: Target, error: str | None, backup_id: str | None = None
    ) -> None:
        write_back(self.conf, self.cloud, target.volume_id, error, backup_id)

    def _outcome(
        self, target: Target, status: str, *, error: str | None = None
    ) -> Outcome:
        return Outcome(
            volume_id=target.volume_id,
            volume_name=target.name,
            project_id=target.project_id,
            policy=self.policy.name,
            mode=self.policy.transfer_mode.value,
            status=status,
            error=error,
        )

    def job_outcome(
        self, job: Job, status: str, error: str | None = None, backup=None
    ) -> Outcome:
        outcome = self._outcome(job.target, status, error=error)
        outcome.kind = job.kind
        outcome.backup_id = job.backup_id
        outcome.seconds = round(self.clock() - job.started, 1)
        outcome.consistency = job.consistency
        outcome.group_id = job.group_id
        outcome.freeze_seconds = job.freeze_seconds
        outcome.notes = list(job.notes)
        if backup is not None:
            outcome.size_gb = backup.size
            outcome.kind = (
                chains.INCREMENTAL if backup.is_incremental else chains.FULL
            )
        return outcome


def write_back(
    conf: cfg.ConfigOpts,
    cloud: Cloud,
    volume_id: str,
    error: str | None,
    backup_id: str | None = None,
) -> None:
    """Tell the tenant, on the volume itself, how its last run went.

    Only our own keys are set (merged, never replacing the tenant's), and
    only when the operator enabled it.
    """
    if not conf.write_back_status:
        return
    values = {tenant.LAST_STATUS: tenant.status_text(error)}
    if backup_id:
        now = datetime.datetime.now(datetime.UTC)
        values[tenant.LAST_BACKUP] = f"{backup_id} {now:%Y-%m-%dT%H:%M:%SZ}"
    try:
        cloud.call(
            cloud.service.block_storage.set_volume_metadata,
            volume_id,
            **values,
        )
    except sdk_exceptions.SDKException as exc:
        LOG.warning(
            "volume %s: could not write back status: %s", volume_id, exc
        )


def report_problem(
    conf: cfg.ConfigOpts, cloud: Cloud, problem: Problem
) -> Outcome:
    """Log a volume's broken opt-in and show it to its tenant."""
    LOG.error("%s", problem.error)
    write_back(conf, cloud, problem.volume_id, problem.error)
    return Outcome(
        volume_id=problem.volume_id,
        project_id=problem.project_id,
        policy=problem.policy or "",
        status="error",
        error=problem.error,
    )


def _freeze_key(job: Job) -> tuple[str, str] | None:
    """Volumes of one server under one policy share a freeze."""
    target = job.target
    if not target.attachments:
        return None
    return (target.project_id, target.attachments[0].server_id)


_STRICTNESS = (
    tenant.QuiesceMode.OFF,
    tenant.QuiesceMode.PREFERRED,
    tenant.QuiesceMode.REQUIRED,
)


def _strictest(modes: Iterable[tenant.QuiesceMode]) -> tenant.QuiesceMode:
    """A group is frozen as its most demanding volume asks."""
    return max(modes, key=_STRICTNESS.index)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
