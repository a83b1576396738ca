"""Prometheus metrics of the daemon: what operators alert on.

The daemon serves them over HTTP when ``[metrics] port`` is set. Labels
are policies, kinds, results and HTTP methods and statuses: bounded sets.
Volume ids appear in one place only, the per-volume RPO series, and
only for volumes past their RPO (or whose last verification failed), at
most ``[metrics] volume_series_limit`` of them, longest overdue first;
the per-policy counts are always complete. At 10,000 healthy volumes
that is zero per-volume series; at 10,000 failing ones, the limit. The
journal and ``cinderbak runs show`` hold every detail.
"""

from __future__ import annotations

import collections
import datetime
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import prometheus_client
from oslo_config import cfg
from oslo_log import log as logging
from prometheus_client import core as prom_core
from prometheus_client import registry as prom_registry

from cinderbak import report, rpo
from cinderbak.journal.states import FAILURE_RUN_STATES

if TYPE_CHECKING:
    from cinderbak.journal import Journal
    from cinderbak.policy import Policy
    from cinderbak.summary import Outcome
    from cinderbak.verify import VerifyRow

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.PortOpt(
        "port",
        default=0,
        help="Port the daemon serves Prometheus metrics on (0: off).",
    ),
    cfg.HostAddressOpt(
        "address",
        default="127.0.0.1",
        help="Address the metrics port binds to.",
    ),
    cfg.FloatOpt(
        "rpo_factor",
        default=1.5,
        min=1.0,
        help="A policy's RPO is the longest gap between two of its "
        "scheduled times times this factor: a volume with no successful "
        "backup for longer is out of RPO (metrics, reports, alerts).",
    ),
    cfg.IntOpt(
        "volume_series_limit",
        default=500,
        min=0,
        help="At most this many per-volume series (volumes out of RPO, "
        "or whose last verification failed), longest overdue first; "
        "the per-policy counts stay complete.",
    ),
]
GROUP = "metrics"

REGISTRY = prometheus_client.CollectorRegistry()

BACKUPS = prometheus_client.Counter(
    "cinderbak_backups",
    "Backup runs of one volume, by policy and outcome.",
    ["policy", "status"],
    registry=REGISTRY,
)
VERIFICATIONS = prometheus_client.Counter(
    "cinderbak_verifications",
    "Backups restored to a scratch volume and checked, by result.",
    ["policy", "result"],
    registry=REGISTRY,
)
LAST_VERIFICATION = prometheus_client.Gauge(
    "cinderbak_verification_last_timestamp_seconds",
    "When a verification of the policy last ended with this result.",
    ["policy", "result"],
    registry=REGISTRY,
)
RESTORE_RATE = prometheus_client.Gauge(
    "cinderbak_verification_restore_mib_per_second",
    "Restore throughput of the policy's last verification.",
    ["policy"],
    registry=REGISTRY,
)
CHECK_RATE = prometheus_client.Gauge(
    "cinderbak_verification_check_mib_per_second",
    "Checksum and copy throughput of the policy's last verification.",
    ["policy"],
    registry=REGISTRY,
)

TAKEOVERS = prometheus_client.Counter(
    "cinderbak_takeovers",
    "Takeovers of the work of a daemon that left the group, by the "
    "daemon taken over (as many series as daemons in the region).",
    ["host"],
    registry=REGISTRY,
)
TAKEOVER_THAWS = prometheus_client.Counter(
    "cinderbak_takeover_thaws",
    "Guests a survivor thawed that a dead daemon had left frozen.",
    registry=REGISTRY,
)


BACKUP_DURATION = prometheus_client.Histogram(
    "cinderbak_backup_duration_seconds",
    "Time from a volume's job start to its backup's outcome.",
    ["policy"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
    registry=REGISTRY,
)
_GIB = 1024**3
BACKUP_SIZE = prometheus_client.Histogram(
    "cinderbak_backup_size_bytes",
    "Size of each successful backup as Cinder reports it (the source "
    "volume's size: Cinder does not report bytes written).",
    ["policy"],
    buckets=tuple(
        n * _GIB for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    ),
    registry=REGISTRY,
)
FREEZE_WINDOW = prometheus_client.Histogram(
    "cinderbak_freeze_window_seconds",
    "How long a guest's filesystems stayed frozen, once per freeze.",
    ["policy"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
    registry=REGISTRY,
)
FREEZE_OVERRUNS = prometheus_client.Counter(
    "cinderbak_freeze_overruns",
    "Freezes that lasted longer than the policy's max_freeze_seconds.",
    ["policy"],
    registry=REGISTRY,
)
API_LATENCY = prometheus_client.Histogram(
    "cinderbak_api_request_duration_seconds",
    "Latency of each HTTP request to the OpenStack APIs.",
    ["method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
API_ERRORS = prometheus_client.Counter(
    "cinderbak_api_errors",
    "HTTP answers of the OpenStack APIs with a status of 400 or more.",
    ["method", "status"],
    registry=REGISTRY,
)
EXPIRY_DELETIONS = prometheus_client.Counter(
    "cinderbak_expiry_deletions",
    "Backups expiry deleted (or failed to), by policy and result.",
    ["policy", "result"],
    registry=REGISTRY,
)
RUNS = prometheus_client.Counter(
    "cinderbak_runs",
    "Runs that ended (backup slots, expiry and verification passes), by "
    "kind, policy and state.",
    ["kind", "policy", "state"],
    registry=REGISTRY,
)
LAST_RUN_FAILED = prometheus_client.Gauge(
    "cinderbak_last_run_failed",
    "1 when the newest run of this kind and policy needs a look.",
    ["kind", "policy"],
    registry=REGISTRY,
)
LAST_RUN_END = prometheus_client.Gauge(
    "cinderbak_last_run_end_timestamp_seconds",
    "When the newest run of this kind and policy ended.",
    ["kind", "policy"],
    registry=REGISTRY,
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def serve(conf: cfg.ConfigOpts) -> None:
    """Start the metrics endpoint in a thread, when configured."""
    group = conf[GROUP]
    if not group.port:
        return
    prometheus_client.start_http_server(
        group.port, addr=group.address, registry=REGISTRY
    )
    LOG.info("metrics on http://%s:%d/metrics", group.address, group.port)


def record_takeover(host: str) -> None:
    TAKEOVERS.labels(host).inc()


def record_takeover_thaws(count: int) -> None:
    TAKEOVER_THAWS.inc(count)


def record_backup(policy: str, status: str) -> None:
    BACKUPS.labels(policy, status).inc()


def record_outcome(outcome: Outcome, now: datetime.datetime) -> None:
    """Observe one volume's finished job: histograms and its RPO clock."""
    policy = outcome.policy
    if outcome.status == "ok":
        if outcome.seconds is not None:
            BACKUP_DURATION.labels(policy).observe(outcome.seconds)
        if outcome.size_gb is not None:
            BACKUP_SIZE.labels(policy).observe(outcome.size_gb * _GIB)
    if outcome.freeze_seconds is not None and _first_of_freeze(outcome):
        FREEZE_WINDOW.labels(policy).observe(outcome.freeze_seconds)
        if outcome.freeze_seconds > CLOCKS.freeze_limit(policy):
            FREEZE_OVERRUNS.labels(policy).inc()
    CLOCKS.backup_ended(outcome, now)


_FREEZES: collections.OrderedDict[str, None] = collections.OrderedDict()
_FREEZES_LOCK = threading.Lock()


def _first_of_freeze(outcome: Outcome) -> bool:
    """The volumes of one server share one freeze: count it once."""
    if not outcome.group_id:
        return True
    with _FREEZES_LOCK:
        if outcome.group_id in _FREEZES:
            return False
        _FREEZES[outcome.group_id] = None
        while len(_FREEZES) > 1000:
            _FREEZES.popitem(last=False)
    return True


def record_report(done: report.Report) -> None:
    """Count one finished run: its state, and expiry's deletions."""
    failed = 1 if done.failed else 0
    RUNS.labels(done.kind, done.policy, done.state).inc()
    LAST_RUN_FAILED.labels(done.kind, done.policy).set(failed)
    when = done.finished_at or done.scheduled_at
    LAST_RUN_END.labels(done.kind, done.policy).set(when.timestamp())
    for deletion in done.deletions:
        if deletion.status in ("deleted", report.FAILED):
            EXPIRY_DELETIONS.labels(done.policy, deletion.status).inc()
    if done.kind == report.BACKUP and done.state != "running":
        CLOCKS.slot_ended(done)


def observe_response(response: Any, *args: object, **kwargs: object) -> None:
    """A ``requests`` response hook: latency, and errors by status."""
    method = str(getattr(response.request, "method", "") or "").upper()
    API_LATENCY.labels(method).observe(response.elapsed.total_seconds())
    if response.status_code >= 400:
        API_ERRORS.labels(method, str(response.status_code)).inc()


def instrument(conn: Any) -> None:
    """Observe every HTTP request an openstacksdk connection makes."""
    session = getattr(getattr(conn, "session", None), "session", None)
    hooks = getattr(session, "hooks", None)
    if hooks is not None and observe_response not in hooks["response"]:
        hooks["response"].append(observe_response)


class Clocks(prom_registry.Collector):
    """Every volume's RPO clock, and what the journal says is queued, in
    flight or frozen; computed when Prometheus scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clocks: dict[tuple[str, str], rpo.Clock] = {}
        self._last_ok: dict[str, datetime.datetime] = {}
        self._verify_failed: dict[str, rpo.Clock] = {}
        self._policies: Callable[[], Mapping[str, Policy]] = dict
        self._journal: Journal | None = None
        self._factor = 1.5
        self._limit = 500
        self._now: Callable[[], datetime.datetime] = _utcnow

    def watch(
        self,
        conf: cfg.ConfigOpts,
        journal: Journal,
        policies: Callable[[], Mapping[str, Policy]],
    ) -> None:
        """Start from what the journal knows (one grouped query)."""
        self._factor = conf[GROUP].rpo_factor
        self._limit = conf[GROUP].volume_series_limit
        self._journal = journal
        self._policies = policies
        marks = journal.backup_marks()
        # How the newest run of each kind and policy ended, so a restart
        # neither clears nor invents a failed-run alert.
        for name, slot in journal.last_run_per_policy().items():
            if not slot.finished:
                continue
            kind, policy = report.kind_of(name)
            failed = any(s in FAILURE_RUN_STATES for s in slot.states)
            LAST_RUN_FAILED.labels(kind, policy).set(1 if failed else 0)
            if slot.last_finished_at is not None:
                LAST_RUN_END.labels(kind, policy).set(
                    slot.last_finished_at.timestamp()
                )
        with self._lock:
            for (policy, volume), (project, last, first) in marks.items():
                self._clocks[(policy, volume)] = rpo.Clock(
                    policy, volume, project or "", last or first, bool(last)
                )
                if last is not None:
                    newest = self._last_ok.get(policy)
                    if newest is None or last > newest:
                        self._last_ok[policy] = last

    def freeze_limit(self, policy: str) -> float:
        """The policy's max_freeze_seconds (its default when unknown)."""
        known = self._policies().get(policy)
        return known.max_freeze_seconds if known is not None else 10.0

    def backup_ended(self, outcome: Outcome, now: datetime.datetime) -> None:
        key = (outcome.policy, outcome.volume_id)
        with self._lock:
            if outcome.status == "ok":
                self._clocks[key] = rpo.Clock(
                    outcome.policy,
                    outcome.volume_id,
                    outcome.project_id,
                    now,
                    True,
                )
                self._last_ok[outcome.policy] = now
            elif outcome.status != "skipped" and key not in self._clocks:
                self._clocks[key] = rpo.Clock(
                    outcome.policy,
                    outcome.volume_id,
                    outcome.project_id,
                    now,
                    False,
                )

    def slot_ended(self, done: report.Report) -> None:
        """Forget the volumes of the policy the slot did not find: they
        left it (opted out, deleted)."""
        if any(v.status == report.IN_FLIGHT for v in done.volumes):
            return
        present = {v.volume_id for v in done.volumes}
        with self._lock:
            for key in [k for k in self._clocks if k[0] == done.policy]:
                if key[1] not in present:
                    del self._clocks[key]

    def verified(self, row: VerifyRow, now: datetime.datetime) -> None:
        with self._lock:
            if row.result == "failed":
                self._verify_failed[row.volume_id] = rpo.Clock(
                    row.policy, row.volume_id, row.project_id, now, False
                )
            else:
                self._verify_failed.pop(row.volume_id, None)

    def describe(self) -> Iterator[prom_core.Metric]:
        return iter(())  # collected at scrape time only

    def collect(self) -> Iterator[prom_core.Metric]:
        now = self._now()
        policies = dict(self._policies())
        rpos = {
            name: rpo.rpo(known.schedule, self._factor, now)
            for name, known in policies.items()
        }
        with self._lock:
            clocks = list(self._clocks.values())
            last_ok = dict(self._last_ok)
            verify_failed = list(self._verify_failed.values())
        late, counts = rpo.overdue(clocks, rpos, now, self._limit)
        gauge = prom_core.GaugeMetricFamily
        rpo_g = gauge(
            "cinderbak_policy_rpo_seconds",
            "The policy's RPO: its longest schedule gap times rpo_factor.",
            labels=["policy"],
        )
        volumes_g = gauge(
            "cinderbak_policy_volumes",
            "Volumes the policy backs up (those seen in its runs).",
            labels=["policy"],
        )
        out_g = gauge(
            "cinderbak_policy_volumes_out_of_rpo",
            "Volumes of the policy with no successful backup within its RPO.",
            labels=["policy"],
        )
        newest_g = gauge(
            "cinderbak_policy_last_success_timestamp_seconds",
            "The policy's newest successful backup.",
            labels=["policy"],
        )
        oldest_g = gauge(
            "cinderbak_policy_oldest_success_timestamp_seconds",
            "The policy's volume longest without a successful backup: its "
            "last one (or when it was first seen, if it never had one).",
            labels=["policy"],
        )
        per_policy: dict[str, list[rpo.Clock]] = {}
        for clock in clocks:
            per_policy.setdefault(clock.policy, []).append(clock)
        for name in sorted(policies):
            rpo_g.add_metric([name], rpos[name].total_seconds())
            mine = per_policy.get(name, [])
            volumes_g.add_metric([name], len(mine))
            out_g.add_metric([name], counts.get(name, 0))
            if name in last_ok:
                newest_g.add_metric([name], last_ok[name].timestamp())
            if mine:
                oldest = min(c.since for c in mine)
                oldest_g.add_metric([name], oldest.timestamp())
        yield from (rpo_g, volumes_g, out_g, newest_g, oldest_g)
        volume_g = gauge(
            "cinderbak_volume_last_success_timestamp_seconds",
            "Last successful backup of a volume past its RPO (when it was "
            "first seen, if never; see never_succeeded).",
            labels=["policy", "project_id", "volume_id", "never_succeeded"],
        )
        for clock in late:
            volume_g.add_metric(
                [
                    clock.policy,
                    clock.project_id,
                    clock.volume_id,
                    "false" if clock.succeeded else "true",
                ],
                clock.since.timestamp(),
            )
        yield volume_g
        verify_g = gauge(
            "cinderbak_volume_verification_failed_timestamp_seconds",
            "When the newest verification of a backup of this volume failed.",
            labels=["policy", "project_id", "volume_id"],
        )
        for clock in sorted(verify_failed, key=lambda c: c.since)[
            : self._limit
        ]:
            verify_g.add_metric(
                [clock.policy, clock.project_id, clock.volume_id],
                clock.since.timestamp(),
            )
        yield verify_g
        yield from self._from_journal(now)

    def _from_journal(self, now: datetime.datetime) -> Iterator[Any]:
        journal = self._journal
        if journal is None:
            return
        try:
            unfinished = journal.unfinished_counts()
            frozen = journal.frozen_servers()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer
            LOG.warning("metrics: cannot read the journal: %s", exc)
            return
        gauge = prom_core.GaugeMetricFamily
        queued = gauge(
            "cinderbak_jobs_queued",
            "Runs recorded and not started (PENDING), by kind and policy.",
            labels=["kind", "policy"],
        )
        running = gauge(
            "cinderbak_jobs_in_flight",
            "Runs under way (RUNNING), by kind and policy.",
            labels=["kind", "policy"],
        )
        for (name, state), count in sorted(unfinished.items()):
            kind, policy = report.kind_of(name)
            family = queued if state == "pending" else running
            family.add_metric([kind, policy], count)
        yield queued
        yield running
        frozen_g = gauge(
            "cinderbak_guest_frozen_since_timestamp_seconds",
            "Guests this daemon froze and has not recorded thawed.",
            labels=["server_id"],
        )
        for step in frozen:
            frozen_g.add_metric([step.target], step.created_at.timestamp())
        yield frozen_g


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


CLOCKS = Clocks()
REGISTRY.register(CLOCKS)


def record_verification(row: VerifyRow) -> None:
    """Count one verification (a VerifyRow)."""
    VERIFICATIONS.labels(row.policy, row.result).inc()
    CLOCKS.verified(row, _utcnow())
    LAST_VERIFICATION.labels(row.policy, row.result).set_to_current_time()
    if row.restore_mib_s is not None:
        RESTORE_RATE.labels(row.policy).set(row.restore_mib_s)
    if row.check_mib_s is not None:
        CHECK_RATE.labels(row.policy).set(row.check_mib_s)
