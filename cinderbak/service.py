"""Wiring shared by the daemon and the CLI: config in, ready parts out."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import threading
from collections.abc import Iterable

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import (
    announce,
    consistency,
    coordination,
    discovery,
    dr_store,
    dr_sync,
    hostlock,
    journal,
    policy,
)
from cinderbak.checksums import SourceChecksummer
from cinderbak.cloud import Cloud
from cinderbak.consistency import SourceSnapshotObserver
from cinderbak.limits import Limiter, ServerLocks
from cinderbak.quiesce.base import Quiescer
from cinderbak.summary import Outcome
from cinderbak.volume_cluster import VolumeCluster
from cinderbak.workflow import PolicyRun, report_problem

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Parts:
    """What every command needs, built once from the configuration."""

    conf: cfg.ConfigOpts
    policies: dict[str, policy.Policy]
    cloud: Cloud
    journal: journal.Journal
    limiter: Limiter
    quiescer: Quiescer
    # One read-only connection to the volume cluster, shared by the
    # observer (freeze windows) and the checksummer (verification).
    volume_cluster: VolumeCluster | None = None
    observer: SourceSnapshotObserver | None = None
    checksummer: SourceChecksummer | None = None
    # One freeze at a time per server, whichever policy asks.
    server_locks: ServerLocks = dataclasses.field(default_factory=ServerLocks)
    # This process's place among the daemons of the region (alone unless
    # [coordination] backend_url is set).
    membership: coordination.Membership | None = None
    # The DR catalog on the backup cluster ([dr] catalog_conf), if any.
    dr_catalog: dr_store.CatalogStore | None = None
    # The lock this process shares with the others of its host
    # (:mod:`cinderbak.hostlock`); None where it could not be opened.
    host_lock: hostlock.HostLock | None = None

    @property
    def members(self) -> coordination.Membership:
        if self.membership is None:
            self.membership = coordination.Solo(self.journal.host)
        return self.membership

    def close(self) -> None:
        if self.membership is not None:
            group = self.membership.beat_group
            if group is not None:
                # Leaving on purpose: stop counting as alive at once.
                with contextlib.suppress(Exception):
                    self.journal.forget_beat(group, self.journal.host)
            self.membership.close()
        self.quiescer.close()
        if self.volume_cluster is not None:
            self.volume_cluster.close()
        self.cloud.close()
        self.journal.close()
        if self.host_lock is not None:
            self.host_lock.close()
        if self.dr_catalog is not None:
            self.dr_catalog.close()


def build(conf: cfg.ConfigOpts, *, daemon: bool = False) -> Parts:
    """Validate the configuration and connect.

    Raise PolicyConfigError for a bad policy and CloudTooOld when the
    cloud cannot do what we need, before anything is touched. With
    ``[coordination] backend_url``, a daemon joins the daemons' group and
    takes a share of the work; a command joins the commands' group, so
    its runs in flight are never taken for a dead daemon's. A command
    holds this host's lock shared from here on, so that no process of
    the host takes its runs for leftovers; the daemon takes it when it
    lists its leftovers (:func:`cinderbak.recovery.take_leftovers`).
    """
    policies = policy.load_policies(conf)
    if conf.journal.connection.startswith("sqlite:///"):
        os.makedirs(conf.state_path, mode=0o750, exist_ok=True)
    coordination.register_opts(conf)
    if daemon:
        # Recovery is a daemon's first job: without the lock it cannot
        # know the host's other processes, so it does not start.
        lock: hostlock.HostLock | None = hostlock.HostLock.for_daemon(
            conf.state_path, conf.host
        )
    else:
        lock = hostlock.open_lock(conf.state_path, conf.host)
        if lock is not None:
            lock.share()
    store = journal.Journal(conf, host=conf.host)
    store.upgrade()
    cloud = Cloud(conf)
    version = cloud.check_microversion()
    LOG.info(
        "Block Storage API microversion %d.%d; %d policies: %s",
        *version,
        len(policies),
        ", ".join(sorted(policies)) or "-",
    )
    cluster = VolumeCluster.from_conf(conf)
    members = coordination.connect(conf, store.host, daemon=daemon)
    return Parts(
        conf,
        policies,
        cloud,
        store,
        Limiter.from_conf(conf),
        consistency.load(conf),
        cluster,
        SourceSnapshotObserver.from_conf(conf, cluster) if cluster else None,
        SourceChecksummer(cluster) if cluster else None,
        membership=members,
        dr_catalog=dr_store.CatalogStore.from_conf(conf),
        host_lock=lock,
    )


def run_once(
    parts: Parts,
    names: Iterable[str] | None = None,
    *,
    audit: bool = True,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Run the named policies (all by default) now; return the outcomes.

    With ``audit``, also report volumes whose opt-in names no policy.
    """
    names = sorted(names or parts.policies)
    unknown = [name for name in names if name not in parts.policies]
    if unknown:
        raise policy.PolicyConfigError(
            policy.SECTION_PREFIX + unknown[0],
            "(section)",
            "no such policy; defined: " + ", ".join(sorted(parts.policies)),
        )
    scheduled_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    outcomes: list[Outcome] = []
    for name in names:
        found = discovery.discover(parts.cloud, parts.policies, [name])
        run = PolicyRun.for_parts(
            parts, parts.policies[name], scheduled_at, stop=stop
        )
        outcomes.extend(dr_sync.recorded(parts, run.execute(found)))
        announce.run_ended(parts, name, scheduled_at)
    if audit:
        problems = discovery.audit(parts.cloud, parts.policies)
        outcomes.extend(
            report_problem(parts.conf, parts.cloud, problem)
            for problem in problems
        )
    return outcomes
