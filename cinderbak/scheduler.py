"""The daemon's scheduling: one APScheduler job per policy, and its life.

Each policy is one job of a ``BackgroundScheduler`` (memory job store,
rebuilt from the configuration at every start: APScheduler's own rule
that a job store is never shared). A job turns its fire time into the
policy's nominal *slot* (whatever the jitter), records a policy-level run
keyed (policy, ``*``, slot) in the journal, and backs up the policy's
volumes through :class:`~cinderbak.workflow.PolicyRun`, whose per-volume
runs are keyed (policy, volume, slot). A slot whose policy-level run is
final is done: firing it again makes no second backup.

Start-up settles what the last process left unfinished (in a worker
thread, so schedules start at once) and runs once, now, each policy whose
latest slot was missed while the daemon was down and is still within the
policy's misfire grace. Stopping pauses the scheduler, sets the stop
event every run checks, and waits (bounded) for runs to reach a safe
point; whatever is still in flight is in the journal for the next start.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from apscheduler import events as aps_events
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import (
    announce,
    discovery,
    dr_drill,
    dr_sync,
    expiry,
    membership,
    metrics,
    recovery,
    systemd,
    verify,
)
from cinderbak.journal import (
    InvalidTransition,
    RunRecord,
    StepRecord,
    states,
    steps,
)
from cinderbak.policy import Policy
from cinderbak.service import Parts
from cinderbak.summary import Outcome
from cinderbak.workflow import (
    PolicyRun,
    is_slot_target,
    report_problem,
    slot_target,
)

LOG = logging.getLogger(__name__)

GROUP = "daemon"

OPTS = [
    cfg.IntOpt(
        "shutdown_timeout",
        default=60,
        min=0,
        help="Seconds a stop (SIGTERM, SIGINT) waits for runs in progress "
        "to reach a safe point (no new work starts once the stop is "
        "asked). Whatever is still in flight then stays in the journal "
        "and is settled at the next start. Keep the systemd unit's "
        "TimeoutStopSec above it.",
    ),
    cfg.IntOpt(
        "audit_interval",
        default=3600,
        min=0,
        help="Seconds between two audits, which page through every volume "
        "of the cloud for opt-ins naming no policy and report them to "
        "their tenants. 0 disables the audit.",
    ),
    cfg.BoolOpt(
        "recovery_on_start",
        default=True,
        help="Settle the runs the previous process left unfinished when "
        "the daemon starts: wait for backups still creating, delete "
        "temporary snapshots, record runs that never started as missed. "
        "Turn off only to inspect the journal by hand first: those runs "
        "then stay in flight and their slots are not repeated.",
    ),
    cfg.BoolOpt(
        "expire_after_run",
        default=True,
        help="Expire a policy's backups by its retention right after each "
        "of its runs, so a new backup and the one it supersedes never "
        "both count against a tenant's quota for long.",
    ),
    cfg.IntOpt(
        "expiry_interval",
        default=6 * 3600,
        min=0,
        help="Seconds between two expiry passes over every policy, on top "
        "of the pass after each run: it catches deletions Cinder refused "
        "earlier and backups of volumes deleted since. 0 disables it.",
    ),
    cfg.IntOpt(
        "sweep_interval",
        default=600,
        min=0,
        help="Seconds between two sweeps, which settle what finished runs "
        "left behind: temporary snapshots not yet deleted (a volume "
        "service that was down), our backups in error, backups that "
        "became available after their run gave up. Also run at start-up "
        "and by run-once. 0 disables the periodic sweep.",
    ),
    cfg.IntOpt(
        "prune_interval",
        default=86400,
        min=0,
        help="Seconds between two prunings of the journal (runs older "
        "than [journal] retention_days). 0 disables pruning.",
    ),
]


AUDIT_JOB = "cinderbak:audit"
PRUNE_JOB = "cinderbak:prune"
SWEEP_JOB = "cinderbak:sweep"
DR_DRILL_JOB = "cinderbak:dr-drill"
EXPIRY_JOB = "cinderbak:expiry"
HEARTBEAT_JOB = "cinderbak:heartbeat"
MEMBERSHIP_JOB = "cinderbak:membership"
CATCH_UP_SUFFIX = "@catch-up"
VERIFY_SUFFIX = "@verify"
"""Job ids: a policy's job is its name. Policy names cannot contain ':'
or '@', so internal jobs and catch-up runs never collide with one."""

_FAILED_STATES = frozenset(
    {states.FAILED, states.PARTIAL, states.MISSED, states.TIMED_OUT}
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- pure helpers --------------------------------------------------------


def executor_size(policy_count: int) -> int:
    """Threads for policy runs: one per policy, the audit and one spare
    (a catch-up run at start-up, the pruning)."""
    return policy_count + 2


def next_run(
    policy: Policy, now: datetime.datetime
) -> datetime.datetime | None:
    """Given a policy and the time, return its next nominal fire time
    after ``now`` (jitter may add up to ``policy.jitter`` seconds)."""
    fire: datetime.datetime | None = (
        policy.schedule.trigger().get_next_fire_time(None, now)
    )
    return fire


def expiry_summary(rows: Sequence[expiry.ExpiryRow]) -> str:
    """Given an expiry pass's rows, say what it did in one line."""
    counts = collections.Counter(
        "failed" if row.failed else row.result or row.action for row in rows
    )
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


def slot_summary(outcomes: Sequence[Outcome], targets: int) -> dict[str, Any]:
    """Given a slot's per-volume outcomes, return the policy-level counts.

    ``targets`` is how many volumes (and broken opt-ins) discovery found;
    those without an outcome were interrupted by a stop.
    """
    counts = collections.Counter(outcome.status for outcome in outcomes)
    return {
        "volumes": targets,
        "ok": counts["ok"],
        "failed": counts["error"] + counts["timeout"],
        "timed_out": counts["timeout"],
        "skipped": counts["skipped"],
        "interrupted": max(0, targets - len(outcomes)),
    }


def summary_from_states(
    run_states: Iterable[states.RunState],
) -> dict[str, Any]:
    """Given the states of a slot's per-volume runs, return the counts.

    Runs not yet final count as interrupted.
    """
    counts = collections.Counter(run_states)
    return {
        "volumes": sum(counts.values()),
        "ok": counts[states.SUCCEEDED],
        "failed": sum(counts[s] for s in _FAILED_STATES),
        "timed_out": counts[states.TIMED_OUT],
        "skipped": counts[states.SKIPPED],
        "interrupted": sum(
            n for s, n in counts.items() if s not in states.FINAL
        ),
    }


def slot_state(summary: Mapping[str, Any]) -> states.RunState:
    """Given slot counts, return the policy-level run's outcome.

    SUCCEEDED when no volume failed or was interrupted (an empty slot
    included), FAILED when none succeeded, PARTIAL otherwise.
    """
    not_ok = summary.get("failed", 0) + summary.get("interrupted", 0)
    if not not_ok:
        return states.SUCCEEDED
    if not summary.get("ok", 0):
        return states.FAILED
    return states.PARTIAL


def summary_text(summary: Mapping[str, Any] | None) -> str:
    """Given a policy-level summary, return 'ok=3 failed=1 ...: note'."""
    if not summary:
        return ""
    keys = ("ok", "failed", "skipped", "interrupted")
    text = " ".join(f"{key}={summary[key]}" for key in keys if key in summary)
    remark = summary.get("error") or summary.get("note")
    if remark:
        text = f"{text}: {remark}" if text else remark
    return text


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a reload changes in the schedule."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rescheduled: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.added or self.removed or self.rescheduled or self.updated
        )

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("rescheduled", self.rescheduled),
                ("changed", self.updated),
            )
            if names
        ]
        return "; ".join(parts) or "no change"


def _timing(policy: Policy) -> tuple[object, ...]:
    return (policy.schedule, policy.jitter, policy.misfire_grace_time)


def plan_changes(
    old: Mapping[str, Policy], new: Mapping[str, Policy]
) -> Changes:
    """Given the policies in force and the reloaded ones, return the
    changes: jobs to add, remove, reschedule (schedule, jitter or misfire
    grace changed) and policies whose other settings changed (they apply
    from the next run; runs in flight keep what they started with)."""
    both = sorted(old.keys() & new.keys())
    return Changes(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        rescheduled=tuple(
            n for n in both if _timing(old[n]) != _timing(new[n])
        ),
        updated=tuple(
            n
            for n in both
            if old[n] != new[n] and _timing(old[n]) == _timing(new[n])
        ),
    )


class Daemon:
    """The scheduler, its jobs, and the daemon's start, reload and stop.

    ``load_policies`` re-reads the configuration files and returns the
    policies they define (raising on a bad one); it is called on reload.
    """

    def __init__(
        self,
        parts: Parts,
        load_policies: Callable[[], dict[str, Policy]],
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.parts = parts
        self.conf = parts.conf
        self._load_policies = load_policies
        self._environ = os.environ if environ is None else environ
        # Set on stop: every PolicyRun and recovery returns at its next
        # safe point, leaving in-flight work to the journal.
        self.stop = threading.Event()
        self._halt = threading.Event()  # ends the watchdog thread
        self._cond = threading.Condition()
        self._active: dict[str, str] = {}  # work in progress -> what
        self._slots: dict[str, datetime.datetime] = {}
        self._stopping = False
        self._beat = time.monotonic()
        self._recovery: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        # One more thread when coordinated: the membership check must
        # not wait behind long runs.
        self._pool = executor_size(len(parts.policies)) + (
            1 if parts.members.coordinated else 0
        )
        self.scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={
                "default": ThreadPoolExecutor(self._pool),
                # Runs in the scheduler's own thread: the heartbeat proves
                # that thread is alive and dispatching.
                "inline": DebugExecutor(),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=datetime.UTC,
        )
        self.scheduler.add_listener(
            self._on_skipped,
            aps_events.EVENT_JOB_MAX_INSTANCES | aps_events.EVENT_JOB_MISSED,
        )

    # -- start -----------------------------------------------------------

    def start(
        self,
        leftovers: recovery.Leftovers,
        now: datetime.datetime | None = None,
    ) -> None:
        """Schedule every policy, start recovery, tell systemd we're up.

        ``leftovers`` were listed before any job could begin a run, while
        no other process of this host was alive
        (:func:`cinderbak.recovery.take_leftovers`): recovery settles
        these only, never what this process or a later command began.
        """
        now = now or _utcnow()
        unfinished, frozen = leftovers
        due = recovery.missed_runs(self.parts, now)
        for name in sorted(self.parts.policies):
            self._add_policy_job(self.parts.policies[name])
            self._add_verify_job(self.parts.policies[name])
        for name in sorted(n for n, is_due in due.items() if is_due):
            LOG.info(
                "policy %s: no run recorded for its slot at %s, still "
                "within misfire_grace_time: running it now",
                name,
                self.parts.policies[name].schedule.last_fire_time(now),
            )
            self.scheduler.add_job(
                self._run_policy,
                DateTrigger(now),
                args=[name],
                id=name + CATCH_UP_SUFFIX,
                name=f"policy {name} (catch-up)",
                misfire_grace_time=self.parts.policies[
                    name
                ].misfire_grace_time,
            )
        self._add_service_jobs(now)
        if self.members.coordinated:
            self.scheduler.add_job(
                self._watch_members,
                IntervalTrigger(seconds=self.conf.coordination.check_interval),
                id=MEMBERSHIP_JOB,
                name="membership of the daemons' group",
                misfire_grace_time=None,
                max_instances=1,
            )
        interval = systemd.watchdog_interval(self._environ)
        if interval:
            self.scheduler.add_job(
                self._heartbeat,
                IntervalTrigger(seconds=interval),
                id=HEARTBEAT_JOB,
                executor="inline",
                misfire_grace_time=None,
            )
        self.scheduler.start()
        if self.conf.daemon.recovery_on_start:
            self._recovery = threading.Thread(
                target=self._recover,
                args=(unfinished, frozen),
                name="cinderbak-recovery",
            )
            self._claim("recovery", "start-up recovery")
            self._recovery.start()
        elif unfinished:
            LOG.warning(
                "recovery_on_start is off: %d runs stay unfinished",
                len(unfinished),
            )
        if interval:
            self._watchdog = threading.Thread(
                target=self._ping_watchdog,
                args=(interval,),
                name="cinderbak-watchdog",
                daemon=True,
            )
            self._watchdog.start()
        LOG.info(
            "scheduling %d policies with %d worker threads: %s",
            len(self.parts.policies),
            self._pool,
            ", ".join(self._describe_next(now)) or "-",
        )
        self._notify(systemd.READY)

    def _add_policy_job(
        self, policy: Policy, *, replace: bool = False
    ) -> None:
        self.scheduler.add_job(
            self._run_policy,
            policy.schedule.trigger(policy.jitter),
            args=[policy.name],
            id=policy.name,
            name=f"policy {policy.name}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=policy.misfire_grace_time,
            replace_existing=replace,
        )

    def _add_verify_job(self, policy: Policy) -> None:
        """(Re)schedule the policy's verification passes, if it has any."""
        job_id = policy.name + VERIFY_SUFFIX
        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.remove_job(job_id)
        if policy.verify_schedule is None:
            return
        self.scheduler.add_job(
            self._verify,
            policy.verify_schedule.trigger(policy.jitter),
            args=[policy.name],
            id=job_id,
            name=f"verification of policy {policy.name}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=policy.misfire_grace_time,
        )

    def _add_service_jobs(self, now: datetime.datetime) -> None:
        """Audit, expiry and pruning, each on its interval (0: off)."""
        daemon = self.conf.daemon
        jobs = (
            (
                AUDIT_JOB,
                "audit of opt-ins",
                self._audit,
                daemon.audit_interval,
                None,
            ),
            (
                EXPIRY_JOB,
                "expiry of every policy",
                self._expire_all,
                daemon.expiry_interval,
                None,
            ),
            (
                SWEEP_JOB,
                "sweep of leftovers",
                self._sweep,
                daemon.sweep_interval,
                None,
            ),
            (
                DR_DRILL_JOB,
                "DR drill",
                self._drill,
                self.conf.dr.drill_interval,
                None,
            ),
            # Soon after start too, so frequent restarts still prune.
            (
                PRUNE_JOB,
                "journal pruning",
                self._prune,
                daemon.prune_interval,
                now + datetime.timedelta(minutes=5),
            ),
        )
        for job_id, name, func, interval, first in jobs:
            if not interval:
                continue
            extra = {"next_run_time": first} if first else {}
            self.scheduler.add_job(
                func,
                IntervalTrigger(seconds=interval),
                id=job_id,
                name=name,
                misfire_grace_time=interval,
                **extra,
            )

    def _describe_next(self, now: datetime.datetime) -> list[str]:
        return [
            f"{name} next at {next_run(p, now):%Y-%m-%d %H:%M:%S}Z"
            for name, p in sorted(self.parts.policies.items())
            if next_run(p, now) is not None
        ]

    # -- the jobs --------------------------------------------------------

    @property
    def members(self) -> Any:
        """This daemon's place in the group (see cinderbak.coordination)."""
        return self.parts.members

    def _slot_target(self) -> str:
        members = self.members
        return slot_target(members.member_id if members.coordinated else None)

    def _owns(self, item: discovery.Target | discovery.Problem) -> bool:
        """Whether this daemon backs up ``item``: the member the ring gives
        its server's freeze group (or the detached volume) to."""
        server = None
        if isinstance(item, discovery.Target) and item.attachments:
            server = item.attachments[0].server_id
        return bool(
            self.members.owns(membership.partition_key(server, item.volume_id))
        )

    def _owns_volume(self, volume_id: str) -> bool:
        return bool(
            self.members.owns(membership.partition_key(None, volume_id))
        )

    def _claim(self, key: str, what: str) -> str | None:
        """Mark work as in progress; return what holds ``key`` if busy."""
        with self._cond:
            if key in self._active:
                return self._active[key]
            self._active[key] = what
        return None

    def _release(self, key: str) -> None:
        with self._cond:
            self._active.pop(key, None)
            self._cond.notify_all()
        self._status()

    def _run_policy(self, name: str) -> None:
        """The job of a policy: run its current slot, at most once."""
        if self.stop.is_set():
            return
        policies = self.parts.policies
        known = policies.get(name)
        if known is None:
            LOG.info("policy %s is no longer configured; not run", name)
            return
        slot = known.schedule.last_fire_time(_utcnow())
        if slot is None:
            return
        with self._cond:
            running = self._slots.get(name)
            if running is None:
                self._slots[name] = slot
                self._active[f"policy:{name}"] = f"{name}@{slot:%H:%M:%S}Z"
        if running is not None:
            if running != slot:
                self._record_slot(
                    name,
                    slot,
                    states.SKIPPED,
                    f"the run of slot {running:%Y-%m-%d %H:%M:%S}Z was "
                    "still in progress",
                )
            return
        self._status()
        try:
            self._run_slot(known, policies, slot)
        except Exception:
            LOG.exception("policy %s, slot %s: the run failed", name, slot)
        finally:
            with self._cond:
                self._slots.pop(name, None)
            self._release(f"policy:{name}")

    def _run_slot(
        self,
        known: Policy,
        policies: Mapping[str, Policy],
        slot: datetime.datetime,
    ) -> None:
        journal = self.parts.journal
        name = known.name
        handle = journal.begin_run(
            name,
            self._slot_target(),
            slot,
            project_id=None,
            attrs={"kind": "policy", "schedule": known.schedule.text},
        )
        if handle.state is not states.PENDING:
            LOG.info(
                "policy %s, slot %s: already %s; not run again",
                name,
                slot,
                handle.state,
            )
            return
        try:
            journal.start_run(handle.id)
        except InvalidTransition:
            LOG.info("policy %s, slot %s: taken by another worker", name, slot)
            return
        LOG.info("policy %s, slot %s: run started", name, slot)
        self._run_started_slot(handle.id, known, policies, slot)

    def _run_started_slot(
        self,
        run_id: str,
        known: Policy,
        policies: Mapping[str, Policy],
        slot: datetime.datetime,
        *,
        leftovers_of: str | None = None,
    ) -> None:
        """Discover and back up a slot whose policy-level run is RUNNING;
        the number of volumes found is journaled first, so an
        interrupted slot is never settled as a success with fewer.

        Among several daemons, only the volumes this one owns are backed
        up. ``leftovers_of`` names a dead daemon whose share of the slot
        this one finishes: every volume of the slot that no daemon has
        begun yet (a volume begun twice is still backed up once: its run
        is keyed by the slot).
        """
        journal = self.parts.journal
        name = known.name
        try:
            found = discovery.discover(self.parts.cloud, policies, [name])
            if leftovers_of is not None:
                begun = journal.targets_of_slot(name, slot)
                mine = [f for f in found if f.volume_id not in begun]
            else:
                mine = [f for f in found if self._owns(f)]
            step = journal.begin_step(
                run_id, steps.DISCOVER, target=self._slot_target()
            )
            details: dict[str, Any] = {"volumes": len(mine)}
            if self.members.coordinated:
                details.update(
                    discovered=len(found),
                    member=self.members.member_id,
                    members=sorted(self.members.members()),
                )
            if leftovers_of is not None:
                details["leftovers_of"] = leftovers_of
            journal.complete_step(step, details=details)
            if len(mine) != len(found):
                LOG.info(
                    "policy %s, slot %s: %d of %d volumes are this "
                    "daemon's share",
                    name,
                    slot,
                    len(mine),
                    len(found),
                )
            run = PolicyRun.for_parts(self.parts, known, slot, stop=self.stop)
            outcomes = dr_sync.recorded(self.parts, run.execute(mine))
        except Exception as exc:
            journal.finish_run(
                run_id,
                states.FAILED,
                {"error": f"{type(exc).__name__}: {exc}"},
            )
            self._announce_slot(name, slot)
            raise
        summary = slot_summary(outcomes, len(mine))
        if self.stop.is_set() and summary["interrupted"]:
            # Left open like after a kill -9: the next start settles it
            # once recovery has finished the volumes' runs it stands for.
            LOG.info(
                "policy %s, slot %s: stopped with %d volume runs in "
                "flight; the next start finishes them",
                name,
                slot,
                summary["interrupted"],
            )
            return
        state = slot_state(summary)
        journal.finish_run(run_id, state, summary)
        self._announce_slot(name, slot)
        LOG.info(
            "policy %s, slot %s: %s (%s)",
            name,
            slot,
            state,
            summary_text(summary),
        )
        if self.conf.daemon.expire_after_run and not self.stop.is_set():
            self._expire(known)

    def _announce_slot(self, name: str, slot: datetime.datetime) -> None:
        """Report the slot once it is over: alone, at once; among several
        daemons, by the one whose share ends last (the report covers
        every share)."""
        if self.members.coordinated:
            shares = [
                r
                for r in self.parts.journal.runs(
                    policy=name, slots=True, limit=1000
                )
                if r.scheduled_at == slot
            ]
            if not all(r.is_final for r in shares):
                return
        announce.run_ended(self.parts, name, slot)

    def _record_slot(
        self,
        name: str,
        slot: datetime.datetime,
        state: states.RunState,
        reason: str,
    ) -> None:
        """Record a slot that will not run, unless it is already known."""
        handle = self.parts.journal.begin_run(
            name,
            self._slot_target(),
            slot,
            project_id=None,
            attrs={"kind": "policy"},
        )
        if handle.state is states.PENDING:
            self.parts.journal.finish_run(handle.id, state, {"error": reason})
            self._announce_slot(name, slot)
            LOG.warning(
                "policy %s, slot %s: %s: %s", name, slot, state, reason
            )

    def _on_skipped(self, event: Any) -> None:
        """APScheduler refused a run: record the slot, so it shows."""
        known = self.parts.policies.get(event.job_id)
        if known is None:
            return
        if event.code == aps_events.EVENT_JOB_MISSED:
            times = [event.scheduled_run_time]
            state = states.MISSED
            reason = (
                "started later than misfire_grace_time after its time "
                "(the daemon was busy or suspended)"
            )
        else:
            times = list(event.scheduled_run_times)
            state = states.SKIPPED
            reason = "the policy's previous run was still in progress"
        for when in times:
            slot = known.schedule.last_fire_time(when)
            with self._cond:
                if slot is None or self._slots.get(known.name) == slot:
                    continue
            self._record_slot(known.name, slot, state, reason)

    def _audit(self) -> None:
        if not self.members.is_leader():
            return
        if self.stop.is_set() or self._claim("audit", "audit"):
            return
        try:
            problems = discovery.audit(self.parts.cloud, self.parts.policies)
            for problem in problems:
                report_problem(self.conf, self.parts.cloud, problem)
            LOG.info(
                "audit: %d volumes opted in to no configured policy",
                len(problems),
            )
        except Exception:
            LOG.exception("audit failed; tried again at the next interval")
        finally:
            self._release("audit")

    def _expire(self, known: Policy) -> None:
        """One expiry pass of a policy; failures wait for the next pass."""
        try:
            rows = expiry.expire_policy(
                self.parts,
                known,
                _utcnow(),
                dry_run=False,
                stop=self.stop,
                owns=self._owns_volume if self.members.coordinated else None,
            )
        except Exception:
            LOG.exception(
                "policy %s: expiry failed; tried again at the next pass",
                known.name,
            )
            return
        if rows:
            LOG.info("policy %s: expiry: %s", known.name, expiry_summary(rows))

    def _expire_all(self) -> None:
        if self.stop.is_set() or self._claim("expiry", "expiry"):
            return
        try:
            for name in sorted(self.parts.policies):
                if self.stop.is_set():
                    break
                self._expire(self.parts.policies[name])
        finally:
            self._release("expiry")

    def _verify(self, name: str) -> None:
        """One verification pass of a policy; failures are logged, the
        next pass tries again."""
        key = name + VERIFY_SUFFIX
        known = self.parts.policies.get(name)
        if not self.members.is_leader():
            return  # the leader picks and verifies the sample
        if known is None or self.stop.is_set() or self._claim(key, key):
            return
        try:
            rows = verify.Verifier(self.parts, stop=self.stop).verify_policy(
                known, _utcnow()
            )
            failed = sum(row.result == "failed" for row in rows)
            LOG.info(
                "policy %s: verification pass: %d verified, %d failed",
                name,
                len(rows),
                failed,
            )
        except Exception:
            LOG.exception(
                "policy %s: verification pass failed; tried again at the "
                "next one",
                name,
            )
        finally:
            self._release(key)

    def _drill(self) -> None:
        """The scheduled DR drill: once per region, by the leader."""
        if not self.members.is_leader():
            return
        dr_drill.scheduled(self.parts, self.stop)

    def _sweep(self) -> None:
        if self.stop.is_set() or self._claim("sweep", "sweep"):
            return
        try:
            recovery.sweep(self.parts)
        except Exception:
            LOG.exception("sweep failed; tried again at the next interval")
        finally:
            self._release("sweep")

    def _prune(self) -> None:
        if not self.members.is_leader():
            return
        if self.stop.is_set() or self._claim("prune", "journal pruning"):
            return
        try:
            pruned = self.parts.journal.prune()
            if pruned:
                LOG.info("journal: pruned %d old runs", pruned)
        except Exception:
            LOG.exception("journal pruning failed")
        finally:
            self._release("prune")

    # -- recovery --------------------------------------------------------

    def _recover(
        self, unfinished: Sequence[RunRecord], frozen: Sequence[StepRecord]
    ) -> None:
        """Settle the runs the previous process left unfinished."""
        with self.members.lock(f"recover-{self.parts.journal.host}") as mine:
            if not mine:
                LOG.warning(
                    "recovery: another daemon is taking over this host's "
                    "runs (it saw this daemon gone); it settles them"
                )
                self._release("recovery")
                return
            self._recover_held(unfinished, frozen)

    def _recover_held(
        self, unfinished: Sequence[RunRecord], frozen: Sequence[StepRecord]
    ) -> None:
        try:
            volumes = [r for r in unfinished if not is_slot_target(r.target)]
            slots = [r for r in unfinished if is_slot_target(r.target)]
            if not unfinished and not frozen:
                LOG.info("recovery: the journal has no unfinished run")
                recovery.sweep(self.parts)
                return
            found = collections.Counter(str(r.state) for r in volumes)
            LOG.info(
                "recovery: %d unfinished volume runs (%s) in %d slots",
                len(volumes),
                ", ".join(f"{n} {s}" for s, n in sorted(found.items()))
                or "none",
                len(slots),
            )
            self._notify(status=f"recovering {len(volumes)} unfinished runs")
            outcomes = recovery.recover(
                self.parts, self.stop, unfinished=volumes, frozen=frozen
            )
            done = collections.Counter(o.status for o in outcomes)
            LOG.info(
                "recovery: %d runs resumed or cleaned up (%s); %d that "
                "never started recorded as missed",
                len(outcomes),
                ", ".join(f"{n} {s}" for s, n in sorted(done.items()))
                or "none",
                sum(r.state is states.PENDING for r in volumes),
            )
            if self.stop.is_set():
                return
            for record in slots:
                self._settle_slot(record)
        except Exception:
            LOG.exception("recovery failed; it is tried again at next start")
        finally:
            self._release("recovery")

    def _settle_slot(self, record: RunRecord) -> None:
        """Finish a policy-level run the previous process left open."""
        journal = self.parts.journal
        if record.state is states.PENDING:
            journal.finish_run(
                record.id,
                states.MISSED,
                {"error": "the daemon stopped before this run started"},
            )
            self._announce_slot(record.policy, record.scheduled_at)
            return
        discovered = [
            s for s in record.steps or () if s.kind == steps.DISCOVER
        ]
        known = self.parts.policies.get(record.policy)
        if not discovered:
            late = (_utcnow() - record.scheduled_at).total_seconds()
            if known is not None and late <= known.misfire_grace_time:
                # Killed before its volumes were known: the slot runs now
                # (each volume's run is keyed by the slot: never twice).
                LOG.info(
                    "recovery: policy %s, slot %s was interrupted before "
                    "discovery; running it now",
                    record.policy,
                    record.scheduled_at,
                )
                self._run_started_slot(
                    record.id,
                    known,
                    self.parts.policies,
                    record.scheduled_at,
                )
                return
            journal.finish_run(
                record.id,
                states.FAILED,
                {
                    "error": "interrupted before its volumes were "
                    "discovered, and past misfire_grace_time: no volume "
                    "was backed up in this slot"
                },
            )
            self._announce_slot(record.policy, record.scheduled_at)
            return
        runs = [
            r
            for r in journal.runs(policy=record.policy, limit=100_000)
            if r.scheduled_at == record.scheduled_at
            and not is_slot_target(r.target)
            and r.host == record.host
        ]
        summary = summary_from_states(r.state for r in runs)
        found = int(discovered[-1].details.get("volumes", 0))
        # Volumes found but never given a run: not a success.
        summary["interrupted"] += max(0, found - len(runs))
        summary["volumes"] = max(summary["volumes"], found)
        summary["note"] = (
            "the daemon stopped during this run; start-up recovery "
            "finished its volumes' runs"
        )
        state = slot_state(summary)
        journal.finish_run(record.id, state, summary)
        self._announce_slot(record.policy, record.scheduled_at)
        LOG.info(
            "recovery: policy %s, slot %s: %s (%s)",
            record.policy,
            record.scheduled_at,
            state,
            summary_text(summary),
        )

    # -- several daemons -------------------------------------------------

    def _watch_members(self) -> None:
        """Look at the group; take over the work of daemons gone from it."""
        if self.stop.is_set():
            return
        journal = self.parts.journal
        group = self.members.beat_group
        try:
            beats = journal.beat(group, journal.host) if group else None
            hosts = journal.hosts_with_open_work()
        except Exception:
            LOG.exception("coordination: cannot read the journal")
            return
        for host in self.members.check(hosts, beats):
            key = f"takeover:{host}"
            if self._claim(key, f"takeover of {host}"):
                continue
            threading.Thread(
                target=self._take_over,
                args=(host,),
                name=f"cinderbak-takeover-{host}",
                daemon=True,
            ).start()

    def _take_over(self, host: str) -> None:
        """Thaw, clean up and settle what a dead daemon left: its frozen
        guests first, then its runs in flight (waiting for backups still
        creating), its leaked temporary snapshots, and its share of any
        slot still open. One survivor at a time, under the host's
        recovery lock (the one the host takes itself when it restarts)."""
        journal = self.parts.journal
        try:
            with self.members.lock(f"recover-{host}") as mine:
                if not mine:
                    return
                frozen = journal.frozen_servers(host=host)
                unfinished = journal.unfinished_runs(host=host)
                if not frozen and not unfinished:
                    return
                LOG.warning(
                    "takeover: daemon %s left the group with %d guests "
                    "possibly frozen and %d runs in flight; %s settles them",
                    host,
                    len(frozen),
                    len(unfinished),
                    journal.host,
                )
                metrics.record_takeover(host)
                thawed = recovery.thaw_left_frozen(self.parts, frozen)
                metrics.record_takeover_thaws(thawed)
                volumes = [
                    r for r in unfinished if not is_slot_target(r.target)
                ]
                outcomes = recovery.recover(
                    self.parts,
                    self.stop,
                    unfinished=volumes,
                    frozen=[],
                    host=host,
                )
                for record in unfinished:
                    if (
                        is_slot_target(record.target)
                        and not self.stop.is_set()
                    ):
                        try:
                            self._settle_taken_slot(record)
                        except InvalidTransition:
                            continue  # settled meanwhile by someone else
                LOG.warning(
                    "takeover of %s done: %d guests thawed, %d runs settled",
                    host,
                    thawed,
                    len(outcomes),
                )
        except Exception:
            LOG.exception("takeover of %s failed; tried again", host)
        finally:
            self._release(f"takeover:{host}")

    def _settle_taken_slot(self, record: RunRecord) -> None:
        """A dead daemon's share of a slot: finish what nobody has begun
        while the slot is within its grace, then settle its record."""
        known = self.parts.policies.get(record.policy)
        late = (_utcnow() - record.scheduled_at).total_seconds()
        if known is not None and late <= known.misfire_grace_time:
            journal = self.parts.journal
            if record.state is states.PENDING:
                try:
                    journal.start_run(record.id)
                except InvalidTransition:
                    return  # settled meanwhile (by its own start-up)
            LOG.info(
                "takeover: policy %s, slot %s: backing up the volumes of "
                "%s's share that nobody began",
                record.policy,
                record.scheduled_at,
                record.host,
            )
            self._run_started_slot(
                record.id,
                known,
                self.parts.policies,
                record.scheduled_at,
                leftovers_of=record.host,
            )
            return
        self._settle_slot(record)

    # -- reload ----------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the policies; apply them, or keep the old ones.

        Return whether the new policies are in force. Runs in flight go
        on with the settings they started with.
        """
        self._notify(
            systemd.RELOADING,
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
        )
        rejected: Exception | None = None
        try:
            new = self._load_policies()
        except (ValueError, cfg.Error) as exc:
            rejected = exc
        if rejected is not None:
            # Logged outside the except clause: oslo.log would append the
            # whole exception to every line. ConfigProblems lists every
            # problem of the pass start-up runs; PolicyConfigError is a
            # ValueError naming one.
            for problem in getattr(rejected, "problems", None) or (rejected,):
                LOG.error(
                    "reload rejected, the %d policies in force are kept: %s",
                    len(self.parts.policies),
                    problem,
                )
            self._notify(
                systemd.READY,
                status=f"reload rejected: {rejected}",
            )
            return False
        # Imported here: this method is the only part of the module that
        # the configuration check touches.
        from cinderbak import config_check

        options = getattr(new, "options", None)
        if options is not None:
            # Only policies are re-read into the running daemon; every
            # other option was read once at start-up.
            restart = config_check.changed_options(
                config_check.option_values(self.conf), options
            )
            if restart:
                LOG.warning(
                    "reload: %s changed in the file; not applied, they "
                    "take effect at the next restart",
                    ", ".join(restart),
                )
        changes = plan_changes(self.parts.policies, new)
        for name in changes.removed:
            for job_id in (
                name,
                name + CATCH_UP_SUFFIX,
                name + VERIFY_SUFFIX,
            ):
                try:
                    self.scheduler.remove_job(job_id)
                except JobLookupError:
                    pass
        self.parts.policies = new
        for name in changes.added + changes.rescheduled:
            self._add_policy_job(new[name], replace=True)
        for name in sorted(new):
            self._add_verify_job(new[name])
        if len(new) + 2 > self._pool:
            LOG.warning(
                "%d policies now share %d worker threads; runs may wait "
                "for one another until the daemon is restarted",
                len(new),
                self._pool,
            )
        LOG.info(
            "reload: %s; %d policies in force%s",
            changes.describe(),
            len(new),
            "; runs in flight keep their settings"
            if changes and self._slots
            else "",
        )
        self._notify(systemd.READY)
        return True

    # -- stop ------------------------------------------------------------

    def shutdown(self) -> bool:
        """Stop taking work and wait for runs to reach a safe point.

        Return True when everything stopped within ``shutdown_timeout``;
        False when some work is still running (its state is in the
        journal, and the caller should exit anyway).
        """
        timeout = self.conf.daemon.shutdown_timeout
        self._stopping = True
        with self._cond:
            busy = sorted(self._active.values())
        LOG.info(
            "stopping: no new runs; waiting up to %d s for %s",
            timeout,
            ", ".join(busy) or "nothing",
        )
        self._notify(systemd.STOPPING, status="stopping")
        if self.scheduler.running:
            self.scheduler.pause()
        self.stop.set()
        with self._cond:
            clean = self._cond.wait_for(lambda: not self._active, timeout)
            left = sorted(self._active.values())
        self._halt.set()
        if not clean:
            LOG.error(
                "stopping: still running after %d s: %s; their steps are "
                "in the journal and the next start settles them",
                timeout,
                ", ".join(left),
            )
            return False
        if self.scheduler.running:
            # Nothing runs any more: this returns at once.
            self.scheduler.shutdown(wait=True)
        if self._recovery is not None:
            self._recovery.join()
        in_flight = len(self.parts.journal.unfinished_runs())
        LOG.info(
            "stopped; %d runs left in flight for the next start", in_flight
        )
        self.parts.close()
        return True

    # -- systemd ---------------------------------------------------------

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()

    def _ping_watchdog(self, interval: float) -> None:
        """Ping systemd while the scheduler's thread keeps beating."""
        stale_logged = False
        while not self._halt.wait(interval):
            stale = time.monotonic() - self._beat
            if self._stopping or stale < 2 * interval:
                self._notify(systemd.WATCHDOG)
                stale_logged = False
            elif not stale_logged:
                LOG.error(
                    "the scheduler has not run for %.0f s; withholding "
                    "the watchdog ping so systemd restarts the daemon",
                    stale,
                )
                stale_logged = True

    def _status(self) -> None:
        with self._cond:
            busy = sorted(self._active.values())
        text = f"{len(self.parts.policies)} policies"
        if busy:
            text += "; running: " + ", ".join(busy)
        self._notify(status=text)

    def _notify(self, *items: str, status: str | None = None) -> None:
        systemd.notify(*items, status=status, environ=self._environ)
