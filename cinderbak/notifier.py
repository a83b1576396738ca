"""OpenStack notifications of what cinderbak did, through oslo.messaging.

Configured as every OpenStack service is: ``[oslo_messaging_notifications]
driver`` (``messagingv2`` for RabbitMQ), ``topics`` and ``transport_url``.
No driver, no notifications (and oslo.messaging is not even loaded).

Events (documented in doc/source/notifications.rst), each payload with
``cinderbak_version`` (the payload's version: a consumer checks the major
number) and ``project_id``, so a per-project consumer can tell tenants:

* ``cinderbak.backup.end`` / ``cinderbak.backup.error``: one volume's
  backup in a run, as it ended (INFO / ERROR priority);
* ``cinderbak.run.end``: a backup run ended, one notification per
  project touched, with that project's volumes and the run's totals;
* ``cinderbak.expire.end``: an expiry pass ended, one per project;
* ``cinderbak.verify.end`` / ``cinderbak.verify.error``: one backup's
  verification ended / failed.

The payload builders are pure; :class:`Notifier` only sends.
"""

from __future__ import annotations

import atexit
import datetime
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import report

if TYPE_CHECKING:
    from cinderbak.summary import Outcome
    from cinderbak.verify import VerifyRow

LOG = logging.getLogger(__name__)

GROUP = "oslo_messaging_notifications"
PAYLOAD_VERSION = "1.0"
"""Bumped in its minor number for added keys, major for changed ones."""
RETRIES = 2
"""Attempts to re-send a notification the broker did not take: a broker
down must not hold up a backup run (oslo.messaging's default is forever)."""
QUEUE_SIZE = 20_000
"""Events waiting for the broker at most (two per volume of a 10,000
volume run); beyond that they are dropped, never the run held up."""
FLUSH_AT_RUN_END = 30.0
FLUSH_AT_EXIT = 10.0
FAILURES = 20
"""At most this many failed volumes named in one ``run.end`` payload."""

BACKUP_END = "cinderbak.backup.end"
BACKUP_ERROR = "cinderbak.backup.error"
RUN_END = "cinderbak.run.end"
EXPIRE_END = "cinderbak.expire.end"
VERIFY_END = "cinderbak.verify.end"
VERIFY_ERROR = "cinderbak.verify.error"


def _iso(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- payloads (pure) -------------------------------------------------------


def backup_payload(
    outcome: Outcome, run_id: str, scheduled_at: datetime.datetime
) -> tuple[str, str, dict[str, Any]]:
    """Given one volume's outcome, return (priority, event, payload)."""
    failed = outcome.status in ("error", "timeout")
    payload = {
        "cinderbak_version": PAYLOAD_VERSION,
        "project_id": outcome.project_id,
        "volume_id": outcome.volume_id,
        "volume_name": outcome.volume_name,
        "policy": outcome.policy,
        "run_id": run_id,
        "scheduled_at": _iso(scheduled_at),
        "status": outcome.status,
        "kind": outcome.kind or None,
        "backup_id": outcome.backup_id,
        "size_gb": outcome.size_gb,
        "seconds": outcome.seconds,
        "consistency": outcome.consistency or None,
        "group_id": outcome.group_id,
        "freeze_seconds": outcome.freeze_seconds,
        "error": outcome.error,
        "notes": list(outcome.notes),
    }
    if failed:
        return "error", BACKUP_ERROR, payload
    return "info", BACKUP_END, payload


def verify_payload(
    row: VerifyRow, run_id: str
) -> tuple[str, str, dict[str, Any]]:
    """Given one verification's row, return (priority, event, payload)."""
    payload = {
        "cinderbak_version": PAYLOAD_VERSION,
        "project_id": row.project_id,
        "volume_id": row.volume_id,
        "backup_id": row.backup_id,
        "policy": row.policy,
        "run_id": run_id,
        "result": row.result,
        "content": row.content,
        "filesystem": row.filesystem,
        "consistency": row.consistency,
        "size_gb": row.size_gb,
        "restore_seconds": row.restore_seconds,
        "check_seconds": row.check_seconds,
        "problems": list(row.problems),
    }
    if row.result == "failed":
        return "error", VERIFY_ERROR, payload
    return "info", VERIFY_END, payload


def run_payloads(
    done: report.Report,
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Given a finished run's report, return its per-project events:
    ``run.end`` for a backup run (a DR drill's too), ``expire.end`` for
    an expiry pass. Verification passes send per-backup events only."""
    if done.kind == report.VERIFY:
        return
    common: dict[str, Any] = {
        "cinderbak_version": PAYLOAD_VERSION,
        "run_id": done.run_id,
        "kind": done.kind,
        "policy": done.policy,
        "scheduled_at": _iso(done.scheduled_at),
        "started_at": _iso(done.started_at),
        "finished_at": _iso(done.finished_at),
        "state": done.state,
        "failed": done.failed,
    }
    projects = done.projects() or [""]
    # Grouped by project once: one pass per project over the whole run
    # cost O(projects x volumes), 1.5 ms per backup at 10,000 volumes.
    if done.kind == report.EXPIRY:
        deletions = _by_project(done.deletions)
        for project in projects:
            payload = dict(common, project_id=project or None)
            payload.update(_expiry_part(done, deletions.get(project, [])))
            yield "info", EXPIRE_END, payload
        return
    whole = _counts(done.volumes) | {"bytes": done.backed_up_bytes}
    volumes = _by_project(done.volumes)
    late = _by_project(done.out_of_rpo)
    for project in projects:
        payload = dict(common, project_id=project or None)
        part = _backup_part(
            done, whole, volumes.get(project, []), late.get(project, [])
        )
        payload.update(part)
        priority = "error" if part["project"][report.FAILED] else "info"
        yield priority, RUN_END, payload


L = TypeVar("L", report.VolumeLine, report.RpoLine, report.Deletion)


def _by_project(lines: Iterable[L]) -> dict[str, list[L]]:
    grouped: dict[str, list[L]] = {}
    for line in lines:
        grouped.setdefault(line.project_id, []).append(line)
    return grouped


def _backup_part(
    done: report.Report,
    whole: Mapping[str, int],
    mine: list[report.VolumeLine],
    late_lines: list[report.RpoLine],
) -> dict[str, Any]:
    failed = [v for v in mine if v.status == report.FAILED]
    late = {r.volume_id: r for r in late_lines}
    return {
        "run": dict(whole),
        "project": _counts(mine)
        | {"bytes": sum(v.size_bytes or 0 for v in mine if v.status == "ok")},
        "failures": [
            {"volume_id": v.volume_id, "reason": v.reason}
            for v in failed[:FAILURES]
        ],
        "newly_out_of_rpo": sorted(v for v, r in late.items() if r.newly),
        "out_of_rpo": sorted(late),
        "rpo_seconds": done.rpo_seconds,
    }


def _counts(lines: Any) -> dict[str, int]:
    lines = list(lines)
    counts = {
        status: sum(v.status == status for v in lines)
        for status in (report.OK, report.FAILED, report.SKIPPED)
    }
    counts["in_flight"] = sum(v.status == report.IN_FLIGHT for v in lines)
    counts["full"] = sum(v.status == "ok" and v.kind == "full" for v in lines)
    counts["incremental"] = sum(
        v.status == "ok" and v.kind == "incremental" for v in lines
    )
    return counts


def _expiry_part(
    done: report.Report, mine: list[report.Deletion]
) -> dict[str, Any]:
    return {
        "run": dict(done.expiry_counts) | {"kept": done.kept},
        "deleted": [
            {"backup_id": d.backup_id, "volume_id": d.volume_id}
            for d in mine
            if d.status == "deleted"
        ],
        "failed": [
            {
                "backup_id": d.backup_id,
                "volume_id": d.volume_id,
                "reason": d.reason,
            }
            for d in mine
            if d.status == report.FAILED
        ],
    }


# -- sending -------------------------------------------------------------


class Notifier:
    """Sends events when a driver is configured; else does nothing.

    Events go through a bounded queue to one sender thread: a slow or
    absent broker must not hold up the run's poll loop (each event may
    wait for RETRIES reconnections). When the queue is full, events are
    dropped and counted in the log. :meth:`flush` waits for the queue to
    drain (at a run's end, and at exit).
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self._conf = conf
        self._lock = threading.Lock()
        self._notifier: Any = None
        self._checked = False
        self._queue: queue.Queue[tuple[str, str, dict[str, Any]]] = (
            queue.Queue(maxsize=QUEUE_SIZE)
        )
        self._sender: threading.Thread | None = None
        self._dropped = 0

    def _get(self) -> Any:
        with self._lock:
            if self._checked:
                return self._notifier
            self._checked = True
            if GROUP not in self._conf.list_all_sections():
                return None
            # Imported only when configured: it brings its drivers along.
            import oslo_messaging

            transport = oslo_messaging.get_notification_transport(self._conf)
            notifier = oslo_messaging.Notifier(
                transport,
                publisher_id=f"cinderbak.{socket.gethostname()}",
                retry=RETRIES,
            )
            if notifier.is_enabled():
                self._notifier = notifier
                self._sender = threading.Thread(
                    target=self._send_loop,
                    name="cinderbak-notifier",
                    daemon=True,
                )
                self._sender.start()
                atexit.register(self.flush, FLUSH_AT_EXIT)
                LOG.info(
                    "notifications: %s on topics %s",
                    ", ".join(self._conf[GROUP].driver),
                    ", ".join(self._conf[GROUP].topics),
                )
            return self._notifier

    def send(
        self, priority: str, event: str, payload: Mapping[str, Any]
    ) -> None:
        """Queue one event for sending; never blocks, never raises."""
        try:
            if self._get() is None:
                return
            self._queue.put_nowait((priority, event, dict(payload)))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or not self._dropped % 1000:
                LOG.warning(
                    "notification queue full (the broker is slow or "
                    "down): %d events dropped so far",
                    self._dropped,
                )
        except Exception as exc:  # noqa: BLE001 - a backup outranks a message
            LOG.warning("notification %s not sent: %s", event, exc)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued events to be sent;
        return whether the queue drained."""
        if self._sender is None:
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                LOG.warning(
                    "%d notifications still unsent after %.0f s",
                    self._queue.unfinished_tasks,
                    timeout,
                )
                return False
            time.sleep(0.05)
        return True

    def _send_loop(self) -> None:
        while True:
            priority, event, payload = self._queue.get()
            try:
                context = {"project_id": payload.get("project_id")}
                getattr(self._notifier, priority)(context, event, payload)
            except Exception as exc:  # noqa: BLE001 - logged, next one
                LOG.warning("notification %s not sent: %s", event, exc)
            finally:
                self._queue.task_done()
