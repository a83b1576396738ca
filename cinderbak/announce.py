"""Tell people what happened: the one place the engine calls at the end
of a volume's job, of a verification and of a run.

It carries out what :mod:`cinderbak.report` and :mod:`cinderbak.notifier`
decide: metrics, OpenStack notifications, the mailed report. Nothing
here may fail a backup: every error is logged and swallowed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import mailer, metrics, notifier, report, rpo
from cinderbak.journal import Journal, RunRecord

if TYPE_CHECKING:
    from cinderbak.policy import Policy
    from cinderbak.summary import Outcome
    from cinderbak.verify import VerifyRow

LOG = logging.getLogger(__name__)

_NOTIFIERS: dict[int, notifier.Notifier] = {}


def _notifier(conf: cfg.ConfigOpts) -> notifier.Notifier:
    """One notifier (one broker connection pool) per configuration."""
    found = _NOTIFIERS.get(id(conf))
    if found is None:
        found = _NOTIFIERS[id(conf)] = notifier.Notifier(conf)
    return found


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def backup_ended(
    conf: cfg.ConfigOpts,
    outcome: Outcome,
    *,
    run_id: str,
    scheduled_at: datetime.datetime,
) -> None:
    """One volume's job is over (its run is final in the journal)."""
    try:
        metrics.record_outcome(outcome, _utcnow())
        _notifier(conf).send(
            *notifier.backup_payload(outcome, run_id, scheduled_at)
        )
    except Exception:
        LOG.exception("volume %s: could not announce", outcome.volume_id)


def verification_ended(
    conf: cfg.ConfigOpts, row: VerifyRow, run_id: str
) -> None:
    """One backup's verification is over (recorded in the journal)."""
    try:
        _notifier(conf).send(*notifier.verify_payload(row, run_id))
    except Exception:
        LOG.exception("backup %s: could not announce", row.backup_id)


def slot_runs(
    journal: Journal, policy: str, scheduled_at: datetime.datetime
) -> list[RunRecord]:
    """The runs of one slot as its report needs them: with their steps
    for an expiry pass (its deletions), without for the others."""
    kind, _ = report.kind_of(policy)
    return journal.slot_runs(
        policy, scheduled_at, with_steps=kind == report.EXPIRY
    )


def load(
    journal: Journal,
    conf: cfg.ConfigOpts,
    policies: Mapping[str, Policy],
    run: RunRecord,
    now: datetime.datetime,
    runs: list[RunRecord] | None = None,
) -> report.Report:
    """Read one run's slot from the journal (unless ``runs`` are that
    slot's, already read) and build its report."""
    if runs is None:
        runs = slot_runs(journal, run.policy, run.scheduled_at)
    kind, name = report.kind_of(run.policy)
    known = policies.get(name)
    if kind != report.BACKUP or known is None:
        return report.build(runs or [run], now)
    marks = {
        volume: report.BackupMark(
            last_success=last, first_seen=first or run.scheduled_at
        )
        for (_, volume), (_, last, first) in journal.backup_marks(
            policy=name, before=run.scheduled_at
        ).items()
    }
    return report.build(
        runs or [run],
        now,
        marks=marks,
        rpo=rpo.rpo(known.schedule, conf.metrics.rpo_factor, now),
    )


def run_ended(
    parts: Any, policy_name: str, scheduled_at: datetime.datetime
) -> report.Report | None:
    """A run (backup slot, expiry or verification pass) is over: count
    it, notify and mail its report. Return the report."""
    try:
        runs = slot_runs(parts.journal, policy_name, scheduled_at)
        if not runs:
            return None
        done = load(
            parts.journal,
            parts.conf,
            parts.policies,
            runs[0],
            _utcnow(),
            runs,
        )
        metrics.record_report(done)
        sender = _notifier(parts.conf)
        for event in notifier.run_payloads(done):
            sender.send(*event)
        mailer.send(parts.conf, done)
        sender.flush(notifier.FLUSH_AT_RUN_END)
    except Exception:
        LOG.exception(
            "run of %s at %s: could not report", policy_name, scheduled_at
        )
        return None
    return done
