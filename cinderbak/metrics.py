"""Prometheus metrics of the daemon: what operators alert on.

The daemon serves them over HTTP when ``[metrics] port`` is set. Labels
are policies and results, never volume or backup ids: those would grow
without bound (the journal and ``cinderbak runs`` hold the details).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import prometheus_client
from oslo_config import cfg
from oslo_log import log as logging

if TYPE_CHECKING:
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


def record_verification(row: VerifyRow) -> None:
    """Count one verification (a VerifyRow)."""
    VERIFICATIONS.labels(row.policy, row.result).inc()
    LAST_VERIFICATION.labels(row.policy, row.result).set_to_current_time()
    if row.restore_mib_s is not None:
        RESTORE_RATE.labels(row.policy).set(row.restore_mib_s)
    if row.check_mib_s is not None:
        CHECK_RATE.labels(row.policy).set(row.check_mib_s)
