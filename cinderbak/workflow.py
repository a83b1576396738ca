"""One scheduled run of a policy, from opted-in volumes to finished backups.

A run prepares a job per volume (checks, ownership, full or incremental,
quota; each project's backup history and quota read once), then drives
all jobs from a single loop: it starts queued work round-robin across
projects as capacity allows, and observes Cinder with one listing per
resource kind for everything in flight. Each job's phase is explicit
(:mod:`cinderbak.phases`); the rules of who starts, how many, and when
the backup service counts as gone are pure (:mod:`cinderbak.runplan`).
Every action is written to the journal before it is taken and marked done
after, so a restart knows what was in flight. One volume's failure is
that volume's outcome only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import openstack.connection
from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import (
    announce,
    backups,
    chains,
    consistency,
    creating,
    listing,
    metrics,
    phases,
    runplan,
    tenant,
)
from cinderbak import cloud as cloud_mod
from cinderbak.checksums import Checksummed, SourceChecksummer
from cinderbak.cloud import API_ERRORS, Cloud, NoRoleInProject
from cinderbak.consistency import SourceSnapshotObserver
from cinderbak.discovery import (
    FreezeGroup,
    Problem,
    Target,
    freeze_groups,
    freeze_key,
)
from cinderbak.journal import (
    Journal,
    RunEnd,
    RunHandle,
    states,
    steps,
)
from cinderbak.limits import Limiter, ServerLocks
from cinderbak.phases import Phase, Verdict
from cinderbak.policy import Ownership, Policy, TransferMode
from cinderbak.quiesce.base import (
    Quiescer,
    QuiesceRequiredError,
    ServerRef,
    ThawFailed,
)
from cinderbak.quiesce.noop import NoopQuiescer
from cinderbak.quiesce.window import (
    FreezeWindow,
    freeze_window,
    unfrozen_reason,
)
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
        "poll lists the run's snapshots and its backups still creating; "
        "backups that left creating since are read from a listing "
        "sorted by update time, so a poll costs what is in flight, not "
        "what the run has done.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("DEFAULT", OPTS)]


POLICY_TARGET = "*"
"""Target of the policy-level run that stands for a whole slot."""


def slot_target(member: str | None = None) -> str:
    """Target of a slot's policy-level run: ``*`` for a daemon alone;
    ``*@member`` for each member's share when several daemons divide the
    slot (each member records and settles its own share)."""
    return POLICY_TARGET if member is None else f"{POLICY_TARGET}@{member}"


def is_slot_target(target: str) -> bool:
    """Whether a run stands for (a share of) a slot rather than a volume:
    volume ids are UUIDs and never start with ``*``."""
    return target.startswith(POLICY_TARGET)


def resource_name(run_label: str) -> str:
    """Name of everything a run creates: recovery finds leaks by it."""
    return f"cinderbak-{run_label}"


SNAPSHOT_NOTE = (
    "taken from a snapshot: Cinder's Ceph backup driver copies such "
    "backups in full; use transfer_mode = volume for differential copies"
)


@dataclasses.dataclass(eq=False)
class Job:
    """One volume's backup within one run; its phase says where it is."""

    target: Target
    run_id: str
    conn: openstack.connection.Connection
    kind: str
    kind_reason: str
    expected_parent: str | None
    phase: Phase = Phase.QUEUED
    consistency: str = "crash"
    notes: list[str] = dataclasses.field(default_factory=list)
    snapshot_id: str | None = None
    snapshot_step: int | None = None
    snapshot_delete_step: int | None = None
    snapshot_delete_requested: bool = False
    backup_id: str | None = None
    # Submitted and not yet seen settled: the backup may still be reading.
    backup_open: bool = False
    backup_step: int | None = None
    started: float = 0.0
    submitted: float | None = None
    deadline: float = 0.0
    holds_slot: bool = False
    group_id: str | None = None
    group_size: int = 0
    freeze_seconds: float | None = None
    # The backup as listed when it became available.
    done_backup: dict[str, Any] | None = None
    checksum: concurrent.futures.Future[Checksummed] | None = None
    checksum_step: int | None = None
    checksum_mark: str | None = None
    # The backup step seen DONE in this poll round, written with the
    # run's outcome in the round's one transaction (id, details).
    done_step: tuple[int, dict[str, Any]] | None = None
    outcome: Outcome | None = None

    def move(self, target: Phase) -> None:
        self.phase = phases.move(
            self.phase, target, what=f"job of volume {self.target.volume_id}"
        )

    @property
    def server_id(self) -> str | None:
        attachments = self.target.attachments
        return attachments[0].server_id if attachments else None


class PolicyRun:
    """Carries out one run of one policy over a set of targets.

    The loop observes Cinder once per interval (one listing of the run's
    backups, one of its snapshots, whatever their number), moves each job
    along :mod:`cinderbak.phases`, and starts queued work round-robin
    across projects (:class:`cinderbak.runplan.FairQueue`) as capacity
    allows. Nothing in the loop blocks on one job: snapshot deletions are
    requested and then observed like everything else.
    """

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
        server_locks: ServerLocks | None = None,
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
        self.server_locks = server_locks or ServerLocks()
        self.policy = policy
        self.scheduled_at = scheduled_at
        self.stop = stop or threading.Event()
        self.clock = clock
        self.run_label = f"{policy.name}@{scheduled_at:%Y-%m-%dT%H:%M:%SZ}"
        self.name = resource_name(self.run_label)
        self.capacity: runplan.Capacity | None = None
        self.gave_up: str | None = None
        self._completed_seconds: list[float] = []
        self._last_progress: float | None = None
        self._last_service_check = -1e18
        self._last_poll = clock()
        self._histories: dict[str, dict[str, list[chains.BackupInfo]]] = {}
        self._quotas: dict[str, backups.Quota] = {}
        self._quota_taken: collections.Counter[tuple[str, str]] = (
            collections.Counter()
        )
        self._trusted: dict[str, set[str]] = {}
        # Runs of the project being prepared, begun in one transaction.
        self._handles: dict[str, RunHandle] = {}
        # Outcomes of runs another daemon claimed between our preparing
        # and our starting them (never acted on, never finished by us).
        self._taken: list[Outcome] = []
        # Per tenant project, (backups, GiB) it holds in the service
        # project, counted once per run (ownership = service only).
        self._tenant_usage: dict[str, tuple[int, int]] | None = None

    @classmethod
    def for_parts(
        cls,
        parts: Any,
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
            server_locks=parts.server_locks,
        )

    # -- the run ---------------------------------------------------------

    def execute(self, found: Iterable[Target | Problem]) -> list[Outcome]:
        """Back up every target; return one outcome per volume.

        Targets are grouped into freeze groups (:func:`freeze_groups`),
        then prepared project by project inside the run's loop: a
        project's backups start as soon as that project is prepared,
        while the next ones are read, so the first backup of a slot is
        requested within seconds whatever the number of volumes.
        """
        outcomes: list[Outcome] = []
        targets: list[Target] = []
        for item in found:
            if isinstance(item, Problem):
                outcomes.append(report_problem(self.conf, self.cloud, item))
            else:
                targets.append(item)
        if self.policy.ownership is Ownership.SERVICE:
            # One listing of the service project holds every target's
            # backups: the journal's view of all of them is needed first.
            self._trusted = self.journal.known_backups(
                t.volume_id for t in targets
            )
        groups = self.freeze_groups(targets)
        by_project: dict[str, list[FreezeGroup]] = {}
        for group in groups:
            by_project.setdefault(group.project_id, []).append(group)
        return outcomes + self._run(
            collections.deque(by_project.values()), [], []
        )

    def freeze_groups(self, targets: Sequence[Target]) -> list[FreezeGroup]:
        """The run's work as freeze groups: a server's volumes (one freeze)
        or one detached volume each. Every grouping of a run's targets
        happens here, once, before anything is prepared."""
        return freeze_groups(targets)

    def drive(
        self, queued: list[Job], in_flight: list[Job] | None = None
    ) -> list[Outcome]:
        """Start queued jobs as capacity allows and poll until all are done.

        ``in_flight`` takes jobs already under way (recovery resumes them,
        in the phase the journal shows). On stop, returns early: what is
        in flight stays in the journal.
        """
        return self._run(collections.deque(), queued, list(in_flight or []))

    def _run(
        self,
        unprepared: collections.deque[list[FreezeGroup]],
        queued: list[Job],
        in_flight: list[Job],
    ) -> list[Outcome]:
        try:
            return self._drive(unprepared, queued, in_flight) + self._taken
        finally:
            if self._checksums is not None:
                self._checksums.shutdown(wait=True, cancel_futures=True)
                self._checksums = None

    def _drive(
        self,
        unprepared: collections.deque[list[FreezeGroup]],
        queued: list[Job],
        in_flight: list[Job],
    ) -> list[Outcome]:
        queue: runplan.FairQueue[list[Job]] = runplan.FairQueue()
        for jobs in consistency.group_by(queued, _freeze_key):
            queue.add(jobs[0].target.project_id, jobs, len(jobs))
        outcomes: list[Outcome] = []
        while not self.stop.is_set():
            self._collect(in_flight, outcomes)
            if not queue and not in_flight and not unprepared:
                break
            self._prepare_some(unprepared, queue, outcomes, in_flight)
            if queue and self.capacity is None:
                self._size_capacity()
            if queue and self.gave_up is None:
                self._start(queue, in_flight)
            if self.gave_up is not None and queue:
                self._fail_queued(queue, outcomes)
            self._collect(in_flight, outcomes)
            if not in_flight and not queue and not unprepared:
                break
            if not unprepared:
                self._pause(in_flight)
            if self.stop.is_set():
                break
            self._take_checksums(in_flight)
            if self.clock() < self._last_poll + self.conf.poll_interval:
                continue  # woken early, or preparing: Cinder polled on time
            self._last_poll = self.clock()
            self._observe(in_flight)
            self._watch_backup_service(in_flight)
            if self.gave_up is not None:
                self._leave_to_recovery(in_flight, outcomes)
        if self.stop.is_set() and (queue or in_flight or unprepared):
            LOG.info(
                "run %s: stopping; %d jobs in flight stay in the journal "
                "for the next start, %d queued are not started",
                self.run_label,
                len(in_flight),
                len(queue),
            )
            self._unstarted(queue, unprepared)
        return outcomes

    def _prepare_some(
        self,
        unprepared: collections.deque[list[FreezeGroup]],
        queue: runplan.FairQueue[list[Job]],
        outcomes: list[Outcome],
        in_flight: Sequence[Job],
    ) -> None:
        """Prepare projects, one at a time, until there is work queued
        beyond the free capacity and the next poll is due: starting and
        polling never wait for the rest of the region to be read."""
        while unprepared and not self.stop.is_set():
            self._prepare_project(unprepared.popleft(), queue, outcomes)
            ceiling = self.capacity.current if self.capacity else 1
            busy = len(queue) + len(in_flight) > ceiling
            if busy and self.clock() >= self._last_poll + (
                self.conf.poll_interval
            ):
                return
            if busy and len(queue) > ceiling:
                return

    def _prepare_project(
        self,
        groups: list[FreezeGroup],
        queue: runplan.FairQueue[list[Job]],
        outcomes: list[Outcome],
    ) -> None:
        """Prepare every volume of one project and queue its groups; the
        project's history is read once and dropped after."""
        if self.policy.ownership is Ownership.PROJECT:
            # The project's backups are read now, for its volumes only.
            self._trusted = self.journal.known_backups(
                t.volume_id for g in groups for t in g.targets
            )
        self._handles = self.journal.begin_runs(
            self.policy.name,
            {t.volume_id: t.project_id for g in groups for t in g.targets},
            self.scheduled_at,
            attrs=self._run_attrs(),
        )
        for group in groups:
            jobs: list[Job] = []
            for target in group.targets:
                job_or_outcome = self._prepare(target)
                if isinstance(job_or_outcome, Outcome):
                    outcomes.append(job_or_outcome)
                else:
                    jobs.append(job_or_outcome)
            if jobs:
                queue.add(group.project_id, jobs, len(jobs))
        if self.policy.ownership is Ownership.PROJECT:
            self._histories.pop(groups[0].project_id, None)
        self._handles = {}

    def _collect(self, in_flight: list[Job], outcomes: list[Outcome]) -> None:
        """Finish every job whose outcome is known and whose cleanup is
        over (their outcomes written in one transaction); start cleanup
        for the others."""
        ended: list[Job] = []
        for job in in_flight:
            if job.outcome is not None and job.phase not in phases.FINAL:
                if job.phase is not Phase.CLEANING_UP:
                    self._begin_cleanup(job)
                if job.phase is Phase.CLEANING_UP:
                    continue
            if job.phase in phases.FINAL:
                ended.append(job)
        if not ended:
            return
        gone = {id(job) for job in ended}
        in_flight[:] = [job for job in in_flight if id(job) not in gone]
        self._finish_all(ended)
        for job in ended:
            assert job.outcome is not None
            outcomes.append(job.outcome)

    # -- preparing -------------------------------------------------------

    def _prepare(self, target: Target) -> Job | Outcome:
        policy = self.policy
        run = self._handles.pop(target.volume_id, None) or self._begin_run(
            target
        )
        if run.is_final or run.state is not states.PENDING:
            # Done already, or a worker or recovery holds it: never twice.
            return self._outcome(
                target, "skipped", error=f"run already {run.state}"
            )

        def refuse(reason: str, status: str = "error") -> Outcome:
            final = states.SKIPPED if status == "skipped" else states.FAILED
            self.journal.finish_run(run.id, final, {"error": reason})
            metrics.record_backup(self.policy.name, status)
            if status == "error":
                self._write_back(target, reason)
            outcome = self._outcome(target, status, error=reason)
            announce.backup_ended(
                self.conf,
                outcome,
                run_id=run.id,
                scheduled_at=self.scheduled_at,
            )
            return outcome

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
        owner = self._owner(target)
        try:
            conn = self._owner_connection(target)
            history = self._history(owner, conn).get(target.volume_id, [])
            over_cap = self._tenant_cap_shortfall(target, owner, conn)
            shortfall = (
                None
                if over_cap
                else self._quota_shortfall(owner, target.size_gb)
            )
        except NoRoleInProject as exc:
            return refuse(str(exc))
        except API_ERRORS as exc:
            return refuse(f"cannot read backups or quota: {exc}")
        if over_cap:
            return refuse(over_cap)
        if shortfall:
            return refuse(f"project {owner}: {shortfall}")
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

    def _history(
        self, owner: str, conn: openstack.connection.Connection
    ) -> dict[str, list[chains.BackupInfo]]:
        """The owner project's backups by volume, listed once per run."""
        if owner not in self._histories:
            self._histories[owner] = backups.history_by_volume(
                self.cloud, conn, self.conf.deployment_id, self._trusted
            )
        return self._histories[owner]

    def _quota_shortfall(self, owner: str, size_gb: int) -> str | None:
        """Check one more backup against the owner's quota, read once per
        run, counting what this run has already asked for."""
        if owner not in self._quotas:
            self._quotas[owner] = creating.quota(self.cloud, owner)
        taken_backups = self._quota_taken[(owner, "backups")]
        taken_gb = self._quota_taken[(owner, "gigabytes")]
        shortfall = backups.quota_shortfall(
            self._quotas[owner],
            size_gb,
            already=(taken_backups, taken_gb),
        )
        if shortfall is None:
            self._quota_taken[(owner, "backups")] += 1
            self._quota_taken[(owner, "gigabytes")] += size_gb
        return shortfall

    def _tenant_cap_shortfall(
        self,
        target: Target,
        owner: str,
        conn: openstack.connection.Connection,
    ) -> str | None:
        """With ownership = service, hold each tenant project to its own
        caps in the shared service project; count what this run adds."""
        limits = self.conf.limits
        max_backups = limits.service_backups_per_project
        max_gb = limits.service_gigabytes_per_project
        if self.policy.ownership is not Ownership.SERVICE or not (
            max_backups or max_gb
        ):
            return None
        if self._tenant_usage is None:
            present = {
                info.id
                for infos in self._history(owner, conn).values()
                for info in infos
            }
            usage: dict[str, tuple[int, int]] = {}
            for project, backup_id, size in self.journal.service_backups():
                if backup_id in present:
                    count, gb = usage.get(project, (0, 0))
                    usage[project] = (count + 1, gb + size)
            self._tenant_usage = usage
        count, gb = self._tenant_usage.get(target.project_id, (0, 0))
        problems = []
        if max_backups and count + 1 > max_backups:
            problems.append(
                f"it holds {count} backups, "
                f"service_backups_per_project is {max_backups}"
            )
        if max_gb and gb + target.size_gb > max_gb:
            problems.append(
                f"it holds {gb} GiB and this backup needs "
                f"{target.size_gb}, service_gigabytes_per_project is {max_gb}"
            )
        if problems:
            return (
                f"project {target.project_id} is over its cinderbak quota "
                "in the service project: " + "; ".join(problems)
            )
        self._tenant_usage[target.project_id] = (
            count + 1,
            gb + target.size_gb,
        )
        return None

    def _owner(self, target: Target) -> str:
        if self.policy.ownership is Ownership.PROJECT:
            return target.project_id
        return str(self.cloud.service.current_project_id)

    def _owner_connection(
        self, target: Target
    ) -> openstack.connection.Connection:
        if self.policy.ownership is Ownership.PROJECT:
            return self.cloud.for_project(target.project_id)
        return self.cloud.service

    # -- capacity and the backup service -----------------------------------

    def _size_capacity(self) -> None:
        """Size this run's concurrency from the backup services up (one
        os-services read per run); the operator's cap bounds it."""
        cap = self.conf.limits.max_in_flight or None
        per_service = self.conf.limits.per_backup_service
        try:
            services = self._backup_services()
        except API_ERRORS as exc:
            LOG.warning(
                "run %s: cannot list backup services (%s); starting with "
                "one service's worth of concurrency",
                self.run_label,
                exc,
            )
            services = []
            up = 1
        else:
            up = sum(s.up and s.enabled for s in services)
            reason = runplan.backup_services_down(
                services, self.policy.backup_availability_zone
            )
            if reason is not None:
                self.gave_up = reason
        self.capacity = runplan.Capacity(
            runplan.ceiling_for(up, per_service, cap)
        )
        self.limiter.set_total(self.capacity.current)

    def _backup_services(self) -> list[runplan.ServiceState]:
        self._last_service_check = self.clock()
        return [
            runplan.ServiceState(
                host=str(item.get("host") or "?"),
                zone=item.get("zone"),
                up=item.get("state") == "up",
                enabled=item.get("status") == "enabled",
                updated_at=backups.parse_time(item.get("updated_at")),
            )
            for item in listing.backup_services(self.cloud)
        ]

    def _watch_backup_service(self, in_flight: Sequence[Job]) -> None:
        """When no backup of the run settles for a while, ask os-services
        whether the backup service is alive; if not, give up at once
        instead of waiting out every backup's timeout."""
        waiting = [
            j.submitted
            for j in in_flight
            if j.phase is Phase.BACKING_UP and j.submitted is not None
        ]
        if not waiting or self.gave_up is not None:
            return
        now = self.clock()
        floor = max(3 * self.conf.poll_interval, 30.0)
        bound = runplan.stall_bound(self._completed_seconds, floor)
        if not runplan.stalled(min(waiting), self._last_progress, now, bound):
            return
        if now - self._last_service_check < floor:
            return
        try:
            services = self._backup_services()
        except API_ERRORS as exc:
            LOG.warning("run %s: os-services: %s", self.run_label, exc)
            return
        reason = runplan.backup_services_down(
            services, self.policy.backup_availability_zone
        )
        if reason is not None:
            LOG.error("run %s: %s; giving up the run", self.run_label, reason)
            self.gave_up = reason

    def _fail_queued(
        self, queue: runplan.FairQueue[list[Job]], outcomes: list[Outcome]
    ) -> None:
        """The backup service is gone: every job not yet submitted fails
        now, with the reason, written back to its volume."""
        for group in queue.drain():
            for job in group:
                self.journal.start_run(job.run_id)
                job.started = self.clock()
                job.outcome = self.job_outcome(
                    job, "error", f"not started: {self.gave_up}"
                )
                job.move(Phase.FAILED)
                self._finish(job)
                outcomes.append(job.outcome)

    def _leave_to_recovery(
        self, in_flight: list[Job], outcomes: list[Outcome]
    ) -> None:
        """Backups submitted to a dead service are not waited for: their
        runs end failed now, their steps stay open, and the sweep settles
        them when Cinder does (our error backups deleted, available ones
        kept)."""
        for job in list(in_flight):
            if job.phase is not Phase.BACKING_UP or job.outcome is not None:
                continue
            job.outcome = self.job_outcome(
                job,
                "error",
                f"{self.gave_up}; backup {job.backup_id} is settled by the "
                "next sweep",
            )
        self._collect(in_flight, outcomes)

    # -- starting --------------------------------------------------------

    def _start(
        self, queue: runplan.FairQueue[list[Job]], in_flight: list[Job]
    ) -> None:
        zone = self.policy.backup_availability_zone

        def fits(project: Any, group: list[Job], size: int) -> bool | None:
            if not self.limiter.project_has_room(str(project), size):
                return None  # at its own cap: the others go on
            server = group[0].server_id if _freeze_key(group[0]) else None
            if server and not self.server_locks.try_acquire(
                server, self.run_label
            ):
                return None  # another policy freezes it: its turn later
            if self.limiter.try_acquire(str(project), zone, size):
                return True
            if server:
                self.server_locks.release(server, self.run_label)
            return False

        taken = queue.take(fits)
        # The runs of detached volumes and of server groups no freeze is
        # issued for, requested right below one after the other, are
        # claimed in one transaction; a group that freezes is claimed when
        # its turn comes (its freeze takes a while).
        unfrozen = {
            id(jobs) for _project, jobs in taken if self._unfrozen(jobs)
        }
        claimed = self.journal.start_runs(
            job.run_id
            for _project, jobs in taken
            if id(jobs) in unfrozen
            for job in jobs
        )
        solo: list[Job] = []
        plain: list[list[Job]] = []
        groups: list[list[Job]] = []
        for _project, taken_group in taken:
            mine = claimed
            if id(taken_group) not in unfrozen:
                mine = self.journal.start_runs(
                    job.run_id for job in taken_group
                )
            group = []
            for job in taken_group:
                job.started = self.clock()
                if job.run_id not in mine:
                    # Another daemon claimed this volume's run since it was
                    # prepared (the ring changed under us): it is theirs.
                    self.limiter.release(job.target.project_id, zone)
                    self._taken.append(
                        self._outcome(
                            job.target,
                            "skipped",
                            error="another daemon has this volume's run",
                        )
                    )
                    continue
                job.holds_slot = True
                group.append(job)
                in_flight.append(job)
            if not group:
                server = taken_group[0].server_id
                if server and _freeze_key(taken_group[0]):
                    self.server_locks.release(server, self.run_label)
                continue
            if _freeze_key(group[0]) is None:
                solo.extend(group)
            elif id(taken_group) in unfrozen:
                plain.append(group)
            else:
                groups.append(group)
        # Detached volumes and groups nothing freezes first, in one round
        # of requests (one journal transaction for their intents, one for
        # their ids): each takes milliseconds, a freeze window a while.
        if solo or plain:
            self._request_unfrozen(solo, plain)
        for group in groups:
            server = group[0].server_id
            assert server is not None
            try:
                self._start_group(group)
            finally:
                self.server_locks.release(server, self.run_label)

    def _unfrozen(self, jobs: Sequence[Job]) -> bool:
        """Whether the copies of these jobs are requested without a freeze
        window: a detached volume, or a server's group whose window would
        issue no freeze (quiesce off, or a quiescer that freezes nothing
        and a group that does not require it)."""
        if _freeze_key(jobs[0]) is None:
            return True
        mode = self._group_mode(jobs)
        return mode is tenant.QuiesceMode.OFF or (
            mode is tenant.QuiesceMode.PREFERRED
            and unfrozen_reason(self.quiescer) is not None
        )

    def _group_mode(self, group: Sequence[Job]) -> tenant.QuiesceMode:
        """How a server's group is frozen: as its most demanding volume
        asks; in transfer_mode = volume without read-only access to the
        volume cluster a freeze nobody can confirm is not issued (off),
        and required stays required (the group fails)."""
        mode = _strictest(job.target.quiesce for job in group)
        volume_mode = self.policy.transfer_mode is TransferMode.VOLUME
        if volume_mode and self.observer is None:
            if mode is not tenant.QuiesceMode.REQUIRED:
                return tenant.QuiesceMode.OFF
        return mode

    def _request_unfrozen(
        self, solo: Sequence[Job], groups: Sequence[list[Job]]
    ) -> None:
        """Request the copies of a start round's detached volumes and of
        its server groups no freeze is issued for, together: what a
        group's window would have recorded (its id, why it is
        crash-consistent) is recorded as if it had been opened."""
        for job in solo:
            job.notes.append("not attached to a server: nothing to freeze")
        for group in groups:
            group_id = str(uuid.uuid4())
            for job in group:
                job.group_id = group_id
                job.group_size = len(group)
        try:
            self._request_copies([*solo, *(j for g in groups for j in g)])
        finally:
            for group in groups:
                server = group[0].server_id
                assert server is not None
                self.server_locks.release(server, self.run_label)
        for group in groups:
            mode = self._group_mode(group)
            reason = (
                None
                if mode is tenant.QuiesceMode.OFF
                else unfrozen_reason(self.quiescer)
            )
            LOG.info(
                "server %s: freeze window %s s for %d volumes (%s)",
                group[0].server_id,
                _seconds(None),
                len(group),
                "crash-consistent",
            )
            unconfirmable = (
                mode is tenant.QuiesceMode.OFF
                and self.policy.transfer_mode is TransferMode.VOLUME
                and self.observer is None
            )
            for job in group:
                if reason:
                    job.notes.append(f"not quiesced: {reason}")
                if unconfirmable:
                    job.notes.append(
                        "no read-only access to the volume "
                        "cluster ([volume_cluster] conf): "
                        "volume-mode backups are crash-consistent"
                    )

    def _request_copies(
        self, jobs: Sequence[Job], *, parallel: bool = False
    ) -> None:
        """Request the copies of several jobs (a start round's detached
        volumes, or a server's volumes inside its freeze, ``parallel``):
        every intent in one journal transaction before the first request,
        then the requests, then every id Cinder gave in one transaction.
        A crash before the last commit leaves steps in INTENT, which
        recovery resolves by the run's name as after an answer lost on
        the way back."""
        snapshot = self.policy.transfer_mode is TransferMode.SNAPSHOT
        kind = steps.SNAPSHOT_CREATE if snapshot else steps.BACKUP_CREATE
        for job in jobs:
            job.move(Phase.COPYING if snapshot else Phase.BACKING_UP)
        step_ids = self.journal.begin_steps(
            [
                (job.run_id, kind, job.target.volume_id, self._intent(job))
                for job in jobs
            ]
        )
        made: list[tuple[int, str]] = []

        def request(job: Job, step: int) -> None:
            if snapshot:
                self._create_snapshot(job, step, record=False)
                made_id = job.snapshot_id
            else:
                self._create_backup(job, step, record=False)
                made_id = job.backup_id
            if made_id is not None:
                made.append((step, made_id))

        try:
            if parallel and len(jobs) > 1:
                with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
                    list(pool.map(request, jobs, step_ids))
            else:
                for job, step in zip(jobs, step_ids, strict=True):
                    request(job, step)
        finally:
            self.journal.set_step_resources(made)

    def _unstarted(
        self,
        queue: runplan.FairQueue[list[Job]],
        unprepared: collections.deque[list[FreezeGroup]],
    ) -> None:
        """A stop came before these started: their runs stay PENDING and
        start-up records them as missed. Volumes not prepared yet get
        their PENDING run now, so the slot's record is whole."""
        queue.drain()
        for groups in unprepared:
            for group in groups:
                for target in group.targets:
                    self._begin_run(target)
        unprepared.clear()

    def _begin_run(self, target: Target) -> RunHandle:
        """The volume's run of this slot in the journal (created PENDING,
        or the one already there)."""
        return self.journal.begin_run(
            self.policy.name,
            target.volume_id,
            self.scheduled_at,
            project_id=target.project_id,
            attrs=self._run_attrs(),
        )

    def _run_attrs(self) -> dict[str, str]:
        return {
            "transfer_mode": self.policy.transfer_mode.value,
            "ownership": self.policy.ownership.value,
        }

    def _start_group(self, group: list[Job]) -> None:
        """One freeze for a server's volumes, all copies requested inside.
        Only for groups that freeze or require it: a group nothing freezes
        is requested with the round (:meth:`_request_unfrozen`).

        A copy is marked quiesced only when its point in time is known to
        lie inside the freeze: the snapshot left ``creating``, or the Ceph
        driver's source snapshot was seen, while the guest was frozen.
        """
        attachment = group[0].target.attachments[0]
        server = ServerRef(attachment.server_id, attachment.host)
        group_id = str(uuid.uuid4())
        mode = self._group_mode(group)
        volume_mode = self.policy.transfer_mode is TransferMode.VOLUME
        for job in group:
            job.move(Phase.FREEZING)
        if volume_mode and self.observer is None:
            if mode is tenant.QuiesceMode.REQUIRED:
                for job in group:
                    self._fail(
                        job,
                        "cinderbak:quiesce=required in "
                        "transfer_mode=volume needs read-only access to the "
                        "volume cluster ([volume_cluster] conf)",
                    )
                return
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
            self.journal.record_thaw(
                group[0].run_id,
                ref.server_id,
                freeze_step[0] if freeze_step else None,
                freeze_details={
                    "quiesced": window.quiesced,
                    "error": window.error,
                },
                thaw_details={
                    "by_watchdog": window.thawed_by_watchdog,
                    "freeze_seconds": window.duration,
                },
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
                self._fail(job, f"cinderbak:quiesce=required: {exc}")
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
            elif window.quiesced:
                job.notes.append(
                    "copy not confirmed inside the freeze; marked crash"
                )

    def _copies_in_window(
        self, group: list[Job], window: FreezeWindow
    ) -> set[str]:
        """Request every copy of the group in parallel; return the volume
        ids whose point in time is confirmed inside the freeze."""
        self._request_copies(group, parallel=True)
        started = [j for j in group if j.outcome is None]
        if not window.quiesced:
            return set()
        try:
            if self.policy.transfer_mode is TransferMode.SNAPSHOT:
                return self._snapshots_done_while_frozen(started, window)
            assert self.observer is not None
            seen = self.observer.wait_for_sources(
                [(j.target.volume_id, str(j.backup_id)) for j in started],
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
            listed = listing.run_resources(self.cloud, "snapshots", self.name)
            if not window.is_frozen():
                break
            for snapshot_id in list(pending):
                item = listed.get(str(snapshot_id))
                if item is not None and item.get("status") != "creating":
                    done.add(pending.pop(snapshot_id).target.volume_id)
            if pending:
                self.stop.wait(0.2)
        return done

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

    def _intent(self, job: Job) -> dict[str, Any]:
        """The details of a create step, recorded before the request."""
        if job.phase is Phase.COPYING:
            return {"force": job.target.in_use}
        return {
            "kind": job.kind,
            "reason": job.kind_reason,
            "expected_parent": job.expected_parent,
            "snapshot_id": job.snapshot_id,
        }

    def _intent_step(self, job: Job, kind: str, step: int | None) -> int:
        """The create's intent step: recorded already with its group's
        (``step``), or recorded now."""
        if step is not None:
            return step
        return self.journal.begin_step(
            job.run_id,
            kind,
            target=job.target.volume_id,
            details=self._intent(job),
        )

    def _create_snapshot(
        self, job: Job, step: int | None = None, *, record: bool = True
    ) -> None:
        """Request the temporary snapshot; ``step``: its intent, recorded
        already (else recorded here); ``record``: write its id now."""
        target = job.target
        job.snapshot_step = self._intent_step(job, steps.SNAPSHOT_CREATE, step)
        job.snapshot_id = self._request(
            job,
            job.snapshot_step,
            "snapshot",
            self.policy.snapshot_timeout,
            record=record,
            volume_id=target.volume_id,
            name=self.name,
            description="temporary: source of a cinderbak backup",
            force=target.in_use,
            metadata=self._marks(job),
        )

    def _create_backup(
        self, job: Job, step: int | None = None, *, record: bool = True
    ) -> None:
        """Request the backup; ``step`` and ``record`` as for
        :meth:`_create_snapshot`."""
        target = job.target
        incremental = job.kind == chains.INCREMENTAL
        if job.phase is not Phase.BACKING_UP:
            job.move(Phase.BACKING_UP)
        job.backup_step = self._intent_step(job, steps.BACKUP_CREATE, step)
        attrs: dict[str, Any] = {
            "volume_id": target.volume_id,
            "name": self.name,
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
            self.policy.backup_timeout,
            record=record,
            **attrs,
        )
        if job.backup_id is not None:
            job.submitted = self.clock()
            job.backup_open = True

    def _request(
        self,
        job: Job,
        step: int,
        what: str,
        timeout: float,
        *,
        record: bool = True,
        **attrs: Any,
    ) -> str | None:
        """Ask Cinder to create a snapshot or backup, exactly once.

        Everything a run creates carries the run's name on its volume
        (one per volume and run), recorded in the journal's step before
        the request: after an answer lost on the way back the step looks
        the resource up by it and adopts it instead of creating a second
        one (:meth:`cinderbak.cloud.Cloud.create`). The id is recorded as
        soon as it is known; a refusal is the job's outcome. Request and
        answer are plain JSON (:mod:`cinderbak.creating` says why).
        """

        def create(**fields: Any) -> dict[str, Any]:
            return creating.create(self.cloud, job.conn, what, **fields)

        def find() -> dict[str, Any] | None:
            return creating.find_created(
                self.cloud,
                job.conn,
                what,
                volume_id=job.target.volume_id,
                name=self.name,
                deployment_id=self.conf.deployment_id,
            )

        create.__name__ = f"create_{what}"
        try:
            resource = self.cloud.create(create, find, **attrs)
        except API_ERRORS as exc:
            if cloud_mod.status_of(exc) == 413 and self.capacity is not None:
                limit = self.capacity.overloaded()
                self.limiter.set_total(limit)
                LOG.warning(
                    "run %s: Cinder refused a %s as over limit; %d in "
                    "flight from now on",
                    self.run_label,
                    what,
                    limit,
                )
            self.journal.fail_step(step, str(exc))
            self._fail(job, f"{what} refused: {exc}")
            return None
        if record:
            self.journal.set_step_resource(step, str(resource["id"]))
        job.deadline = self.clock() + timeout
        return str(resource["id"])

    # -- observing -------------------------------------------------------

    def _pause(self, in_flight: Sequence[Job]) -> None:
        """Sleep until the next poll is due; a checksum that ends wakes the
        loop at once (it needs no poll), so a run does not wait an extra
        interval for its last checksums. A stop ends the sleep at once
        when no checksum is pending, else within one interval."""
        remaining = max(
            0.0, self._last_poll + self.conf.poll_interval - self.clock()
        )
        pending = [
            j.checksum
            for j in in_flight
            if j.phase is Phase.CHECKSUMMING
            and j.checksum is not None
            and not j.checksum.done()
        ]
        if pending:
            concurrent.futures.wait(
                pending,
                timeout=remaining,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
        else:
            self.stop.wait(remaining)

    def _take_checksums(self, in_flight: Sequence[Job]) -> None:
        for job in in_flight:
            if job.phase is Phase.CHECKSUMMING and job.checksum is not None:
                if job.checksum.done():
                    self._checksum_done(job)

    def _observe(self, in_flight: Sequence[Job]) -> None:
        """A few listings for every job waiting on Cinder (see
        :func:`cinderbak.listing.run_backups`: what it costs follows what
        is in flight, not the run's size); if the API cannot be reached,
        try again next interval (jobs still time out on their own
        deadlines)."""
        waiting_snapshots = [
            j
            for j in in_flight
            if j.phase in (Phase.COPYING, Phase.CLEANING_UP)
        ]
        waiting_backups = [j for j in in_flight if j.phase is Phase.BACKING_UP]
        try:
            if waiting_snapshots:
                listed = listing.run_resources(
                    self.cloud, "snapshots", self.name
                )
                for job in waiting_snapshots:
                    self._seen(job, listed.get(str(job.snapshot_id)))
            if waiting_backups:
                listed = listing.run_backups(
                    self.cloud,
                    self.name,
                    [str(j.backup_id) for j in waiting_backups],
                )
                for job in waiting_backups:
                    self._seen(job, listed.get(str(job.backup_id)))
        except API_ERRORS as exc:
            LOG.warning(
                "run %s: status poll failed (%s); trying again in %.1f s",
                self.run_label,
                exc,
                self.conf.poll_interval,
            )
            for job in in_flight:
                late = self.clock() >= job.deadline
                if job.phase in phases.WAITING_ON_CINDER and late:
                    self._time_out(job)

    def _time_out(self, job: Job, status: str | None = None) -> None:
        """Stop waiting for the job's resource; say what is left to whom."""
        if job.phase is Phase.CLEANING_UP:
            assert job.outcome is not None
            job.notes.append(
                f"temporary snapshot {job.snapshot_id} not deleted yet "
                f"({status or 'no answer'}); the sweep deletes it"
            )
            job.outcome.notes = list(job.notes)
            job.move(_outcome_phase(job.outcome))
            return
        what = "backup" if job.phase is Phase.BACKING_UP else "snapshot"
        resource = job.backup_id if what == "backup" else job.snapshot_id
        job.outcome = self.job_outcome(
            job,
            "timeout",
            f"{what} {resource} still creating after its timeout; the "
            "sweep settles it when Cinder does",
        )

    def _seen(self, job: Job, item: dict[str, Any] | None) -> None:
        """Carry out what :func:`phases.on_poll` decides for the job."""
        verdict = phases.on_poll(
            job.phase,
            None if item is None else item.get("status"),
            now=self.clock(),
            deadline=job.deadline,
            delete_requested=job.snapshot_delete_requested,
        )
        if verdict is Verdict.WAIT:
            return
        if verdict in (Verdict.TIME_OUT, Verdict.LEAVE_TO_SWEEP):
            self._time_out(job, None if item is None else item.get("status"))
            return
        if job.phase is Phase.CLEANING_UP:
            self._cleanup_seen(job, verdict)
        elif job.phase is Phase.COPYING:
            self._snapshot_seen(job, verdict, item)
        else:
            self._backup_seen(job, verdict, item)

    def _snapshot_seen(
        self, job: Job, verdict: Verdict, item: dict[str, Any] | None
    ) -> None:
        assert job.snapshot_step is not None
        if verdict is Verdict.SNAPSHOT_READY:
            self.journal.complete_step(job.snapshot_step)
            self._create_backup(job)
            return
        reason = (
            f"snapshot {job.snapshot_id} vanished"
            if item is None
            else f"snapshot {job.snapshot_id} ended {item.get('status')}"
        )
        self.journal.fail_step(job.snapshot_step, reason)
        self._fail(job, reason)

    def _backup_seen(
        self, job: Job, verdict: Verdict, item: dict[str, Any] | None
    ) -> None:
        assert job.backup_step is not None
        self._progress(job)
        job.backup_open = False
        if verdict is Verdict.VANISHED or item is None:
            reason = (
                f"backup {job.backup_id} vanished while it was being "
                "created (deleted behind our back)"
            )
            self.journal.undo_step(job.backup_step, reason)
            self._fail(job, reason)
            return
        if verdict is Verdict.BACKUP_READY:
            self._backup_available(job, item)
            return
        reason = item.get("fail_reason") or f"status {item.get('status')}"
        self.journal.fail_step(job.backup_step, reason)
        self._fail(job, f"backup failed: {reason}")
        self._delete_failed_backup(job)

    def _progress(self, job: Job) -> None:
        now = self.clock()
        self._last_progress = now
        if job.submitted is not None:
            self._completed_seconds.append(now - job.submitted)

    def _backup_available(self, job: Job, item: dict[str, Any]) -> None:
        assert job.backup_step is not None
        details = {
            "is_incremental": bool(item.get("is_incremental")),
            "size_gb": item.get("size"),
        }
        if self.checksummer is None and not job.snapshot_id:
            # The job ends in this round: its step is written DONE with
            # the run's outcome (:meth:`_finish_all`), one transaction for
            # the round. The step already holds the backup's id (ACTING).
            job.done_step = (job.backup_step, details)
        else:
            self.journal.complete_step(
                job.backup_step, resource_id=job.backup_id, details=details
            )
        if self.capacity is not None:
            self.limiter.set_total(self.capacity.succeeded())
        if job.kind == chains.INCREMENTAL and not item.get("is_incremental"):
            job.notes.append("Cinder made a full backup")
        if job.snapshot_id:
            job.notes.append(SNAPSHOT_NOTE)
        job.done_backup = item
        if self.checksummer is not None:
            self._start_checksum(job)
            return
        self._settle_marks(job)
        job.outcome = self.job_outcome(job, "ok", backup=item)

    # -- checksums -------------------------------------------------------

    def _start_checksum(self, job: Job) -> None:
        """Checksum what the backup copied, while its source still exists:
        the driver's snapshot (volume mode) or our snapshot."""
        assert self.checksummer is not None and job.backup_id is not None
        job.move(Phase.CHECKSUMMING)
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
        assert job.checksum is not None and job.checksum_step is not None
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
            LOG.info(
                "backup %s: source %s checksummed, %s",
                job.backup_id,
                found.source,
                found.rate(),
            )
        self._settle_marks(job)
        job.outcome = self.job_outcome(job, "ok", backup=job.done_backup)

    def _settle_marks(self, job: Job) -> None:
        """Write the marks learnt after creation (consistency confirmed,
        checksum) onto the backup: one PUT, from the metadata the status
        listing showed, and only when something changed.

        Cinder replaces backup metadata on update, so the full set is
        written back, keeping anything a tenant added meanwhile.
        """
        listed = dict((job.done_backup or {}).get("metadata") or {})
        wanted = listed | self._marks(job)
        if wanted == listed:
            return
        try:
            response = self.cloud.call(
                job.conn.block_storage.put,
                f"/backups/{job.backup_id}",
                json={"backup": {"metadata": wanted}},
                microversion="3.43",
            )
            sdk_exceptions.raise_from_response(response)
        except Exception as exc:  # noqa: BLE001 - the backup stays as marked
            if job.consistency == "quiesced":
                job.consistency = listed.get(tenant.CONSISTENCY, "crash")
            job.notes.append(f"could not update the backup's marks: {exc}")

    # -- finishing -------------------------------------------------------

    def _fail(self, job: Job, reason: str) -> None:
        job.outcome = self.job_outcome(job, "error", reason)

    def _begin_cleanup(self, job: Job) -> None:
        """Once the outcome is known: delete our temporary snapshot, or
        end the job at once when there is none (or it must stay: a backup
        still reading it after a time-out)."""
        assert job.outcome is not None
        outcome = _outcome_phase(job.outcome)
        if job.snapshot_id and job.backup_open:
            job.notes.append(
                f"temporary snapshot {job.snapshot_id} kept while backup "
                f"{job.backup_id} may still read it; the sweep deletes it"
            )
            job.outcome.notes = list(job.notes)
        job.move(
            phases.after_outcome(
                bool(job.snapshot_id) and not job.backup_open, outcome
            )
        )
        if job.phase is not Phase.CLEANING_UP:
            return
        job.snapshot_delete_step = self.journal.begin_step(
            job.run_id,
            steps.SNAPSHOT_DELETE,
            target=job.target.volume_id,
            details={},
        )
        self.journal.set_step_resource(
            job.snapshot_delete_step, str(job.snapshot_id)
        )
        job.deadline = self.clock() + self.policy.snapshot_timeout

    def _cleanup_seen(self, job: Job, verdict: Verdict) -> None:
        """The temporary snapshot as the last poll saw it."""
        assert job.outcome is not None and job.snapshot_delete_step
        if verdict is Verdict.CLEANED:
            self.journal.complete_step(job.snapshot_delete_step)
            job.move(_outcome_phase(job.outcome))
            return
        try:
            self.cloud.call(
                job.conn.block_storage.delete_snapshot,
                job.snapshot_id,
                ignore_missing=True,
            )
            job.snapshot_delete_requested = True
        except API_ERRORS as exc:
            LOG.warning(
                "temporary snapshot %s: delete refused (%s); retried",
                job.snapshot_id,
                exc,
            )

    def _delete_failed_backup(self, job: Job) -> None:
        """Remove a backup of ours that ended in error; it holds no data.
        Requested, not waited for: the sweep finishes what this misses."""
        step = self.journal.begin_step(
            job.run_id,
            steps.BACKUP_DELETE,
            target=job.target.volume_id,
            details={"reason": "backup ended in error"},
        )
        self.journal.set_step_resource(step, str(job.backup_id))
        try:
            self.cloud.call(
                job.conn.block_storage.delete_backup,
                job.backup_id,
                ignore_missing=True,
            )
        except API_ERRORS as exc:
            self.journal.fail_step(step, str(exc))
            job.notes.append(f"could not delete failed backup: {exc}")
            return
        self.journal.complete_step(step)

    def _finish(self, job: Job) -> None:
        self._finish_all([job])

    def _finish_all(self, jobs: Sequence[Job]) -> None:
        """Record the outcomes of jobs that ended, with the backup steps
        they saw DONE, in one journal transaction; then release, count,
        announce and write back. A crash before the commit leaves the
        runs RUNNING and their steps ACTING: recovery looks at the
        backups again and settles them, so nothing is lost."""
        ends = []
        for job in jobs:
            assert job.outcome is not None
            if job.holds_slot:
                self.limiter.release(
                    job.target.project_id, self.policy.backup_availability_zone
                )
                job.holds_slot = False
            job.outcome.notes = list(job.notes)
            state = {"ok": states.SUCCEEDED, "timeout": states.TIMED_OUT}.get(
                job.outcome.status, states.FAILED
            )
            done = (job.done_step,) if job.done_step else ()
            job.done_step = None
            ends.append(RunEnd(job.run_id, state, job.outcome.as_dict(), done))
        self.journal.finish_runs(ends)
        for job in jobs:
            self._announce(job)

    def _announce(self, job: Job) -> None:
        assert job.outcome is not None
        metrics.record_backup(self.policy.name, job.outcome.status)
        announce.backup_ended(
            self.conf,
            job.outcome,
            run_id=job.run_id,
            scheduled_at=self.scheduled_at,
        )
        if job.outcome.status == "ok":
            self._write_back(job.target, None, job.backup_id)
        elif job.outcome.status in ("error", "timeout"):
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
        self,
        job: Job,
        status: str,
        error: str | None = None,
        backup: Mapping[str, Any] | None = None,
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
            outcome.size_gb = backup.get("size")
            outcome.kind = (
                chains.INCREMENTAL
                if backup.get("is_incremental")
                else chains.FULL
            )
        return outcome


def _outcome_phase(outcome: Outcome) -> Phase:
    return {"ok": Phase.DONE, "timeout": Phase.TIMED_OUT}.get(
        outcome.status, Phase.FAILED
    )


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
    values: dict[str, Any] = {tenant.LAST_STATUS: tenant.status_text(error)}
    if backup_id:
        now = datetime.datetime.now(datetime.UTC)
        values[tenant.LAST_BACKUP] = f"{backup_id} {now:%Y-%m-%dT%H:%M:%SZ}"
    try:
        cloud.call(
            cloud.service.block_storage.set_volume_metadata,
            volume_id,
            **values,
        )
    except API_ERRORS as exc:
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
    return freeze_key(job.target)


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
