"""The run report: what one run did, built from its journal records.

A report is a pure function of the run's records (the policy-level run
and its per-volume runs, or an expiry pass with its deletion steps, or a
verification pass), what the journal knows of each volume's last good
backup, the policy's RPO, and ``now``. Nothing here reads a clock, the
cloud or the database, so ``cinderbak runs show`` can print the report
of any past run exactly as the mail and the notifications said it.

Which kind a run is comes from its policy name, as the engine records
it: ``daily`` (backups), ``expire:daily``, ``verify:daily``, and any
other ``<kind>:<policy>`` (a DR drill records ``drill:<policy>``), whose
runs are reported generically: one line per run, its state and reason.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cinderbak.escape import escape
from cinderbak.journal.api import RunRecord, StepRecord
from cinderbak.journal.states import (
    FAILURE_RUN_STATES,
    FINAL_RUN_STATES,
    RunState,
    StepState,
)
from cinderbak.journal.steps import StepKind

GIB = 1024**3
BACKUP = "backup"
EXPIRY = "expiry"
VERIFY = "verify"
POLICY_TARGET = "*"  # the policy-level run of a slot (workflow's)


def is_slot(target: str) -> bool:
    """A policy-level run: ``*`` for a daemon alone, ``*@host`` for one
    daemon's share when several divide the slot."""
    return target.startswith(POLICY_TARGET)


SLOWEST = 5
"""How many of the slowest volumes a report lists."""

OK, FAILED, SKIPPED, IN_FLIGHT = "ok", "failed", "skipped", "in flight"


def kind_of(policy: str) -> tuple[str, str]:
    """Given a run's recorded policy name, return (kind, policy)."""
    prefix, sep, rest = policy.partition(":")
    if not sep:
        return BACKUP, policy
    return {"expire": EXPIRY}.get(prefix, prefix), rest


def status_of(state: RunState) -> str:
    """Given a run state, return the report's word for it."""
    if state is RunState.SUCCEEDED:
        return OK
    if state is RunState.SKIPPED:
        return SKIPPED
    if state in FAILURE_RUN_STATES:
        return FAILED
    return IN_FLIGHT


@dataclasses.dataclass(frozen=True, kw_only=True)
class VolumeLine:
    """One volume's (or one verified backup's) line in a report."""

    volume_id: str
    project_id: str
    status: str
    state: str
    reason: str = ""
    kind: str = ""  # full or incremental
    backup_id: str = ""
    size_bytes: int | None = None
    seconds: float | None = None
    freeze_seconds: float | None = None
    group_id: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deletion:
    """One backup an expiry pass deleted, or tried to."""

    volume_id: str
    project_id: str
    backup_id: str
    status: str  # deleted, failed, in flight
    reason: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RpoLine:
    """A volume past its policy's RPO when the run ended."""

    volume_id: str
    project_id: str
    last_success: datetime.datetime | None
    since: datetime.datetime  # when the RPO clock started
    overdue_seconds: float
    newly: bool  # within its RPO when the run was scheduled


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupMark:
    """What the journal knows of a volume's backups before a run: its
    last successful one (None: never) and when it was first seen."""

    last_success: datetime.datetime | None
    first_seen: datetime.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    """What one run did; :func:`render` prints it."""

    kind: str
    policy: str
    run_id: str
    scheduled_at: datetime.datetime
    state: str
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    volumes: tuple[VolumeLine, ...] = ()
    deletions: tuple[Deletion, ...] = ()
    expiry_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    kept: int | None = None
    rpo_seconds: float | None = None
    out_of_rpo: tuple[RpoLine, ...] = ()
    remarks: tuple[str, ...] = ()

    def count(self, status: str) -> int:
        return sum(line.status == status for line in self.volumes)

    @property
    def failed(self) -> bool:
        """Whether an operator should look at this run."""
        return (
            self.state in (str(s) for s in FAILURE_RUN_STATES)
            or self.count(FAILED) > 0
            or any(d.status == FAILED for d in self.deletions)
            or self.expiry_counts.get(FAILED, 0) > 0
        )

    @property
    def backed_up_bytes(self) -> int:
        return sum(v.size_bytes or 0 for v in self.volumes if v.status == OK)

    def kinds(self) -> dict[str, int]:
        """Successful backups counted by kind (full, incremental)."""
        counts: dict[str, int] = {}
        for line in self.volumes:
            if line.status == OK and line.kind:
                counts[line.kind] = counts.get(line.kind, 0) + 1
        return counts

    def slowest(self, n: int = SLOWEST) -> list[VolumeLine]:
        timed = [v for v in self.volumes if v.seconds is not None]
        return sorted(timed, key=lambda v: -(v.seconds or 0.0))[:n]

    def freezes(self) -> list[VolumeLine]:
        """One line per freeze window (volumes of one group share it),
        longest first."""
        seen: dict[str, VolumeLine] = {}
        for line in self.volumes:
            if line.freeze_seconds is None:
                continue
            seen.setdefault(line.group_id or line.volume_id, line)
        return sorted(seen.values(), key=lambda v: -(v.freeze_seconds or 0))

    def newly_out_of_rpo(self) -> list[RpoLine]:
        return [line for line in self.out_of_rpo if line.newly]

    def projects(self) -> list[str]:
        found = {v.project_id for v in self.volumes if v.project_id}
        found |= {d.project_id for d in self.deletions if d.project_id}
        return sorted(found)

    def subject(self) -> str:
        """A one-line summary, the mail's subject."""
        verdict = "FAILED" if self.failed else "ok"
        what = f"{self.kind} run of policy {self.policy}"
        return (
            f"[cinderbak] {what} at {_iso(self.scheduled_at)}: {verdict} "
            f"({self.counts_text()})"
        )

    def counts_text(self) -> str:
        if self.kind == EXPIRY:
            counts = self.expiry_counts
            text = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
            if self.kept is not None:
                text += f", {self.kept} kept"
            return text or "nothing to do"
        parts = [
            f"{self.count(s)} {s}"
            for s in (OK, FAILED, SKIPPED, IN_FLIGHT)
            if self.count(s) or s in (OK, FAILED)
        ]
        return ", ".join(parts)


# -- building ------------------------------------------------------------


def build(
    runs: Sequence[RunRecord],
    now: datetime.datetime,
    *,
    marks: Mapping[str, BackupMark] | None = None,
    rpo: datetime.timedelta | None = None,
) -> Report:
    """Given the records of one run (every run sharing its policy and
    scheduled time, steps loaded for an expiry pass), return its report.

    ``marks`` says, per volume, what the journal knew of its backups
    before this run; with ``rpo`` the report lists the volumes past it
    when the run ended (or at ``now`` for a run still going). Raise
    ValueError for no runs or runs of several policies or slots.
    """
    if not runs:
        raise ValueError("a report needs at least one run")
    keys = {(r.policy, r.scheduled_at) for r in runs}
    if len(keys) != 1:
        raise ValueError(f"runs of several slots: {sorted(map(str, keys))}")
    kind, policy = kind_of(runs[0].policy)
    head = _head(runs)
    ended = _ended(runs, now)
    common: dict[str, Any] = {
        "kind": kind,
        "policy": policy,
        "run_id": head.id,
        "scheduled_at": head.scheduled_at,
        "state": str(_overall_state(runs, head)),
        "started_at": min(
            (r.started_at for r in runs if r.started_at), default=None
        ),
        "finished_at": ended if _all_final(runs) else None,
    }
    remarks = _remarks(runs)
    if kind == EXPIRY:
        return _expiry_report(head, common, remarks)
    members = [r for r in runs if not is_slot(r.target)]
    lines = tuple(
        sorted(
            (_line(kind, r) for r in members),
            key=lambda v: (v.status != FAILED, v.project_id, v.volume_id),
        )
    )
    out: tuple[RpoLine, ...] = ()
    if kind == BACKUP and rpo is not None:
        out = tuple(out_of_rpo(lines, marks or {}, rpo, head, ended))
    return Report(
        **common,
        volumes=lines,
        rpo_seconds=None if rpo is None else rpo.total_seconds(),
        out_of_rpo=out,
        remarks=remarks,
    )


def _head(runs: Sequence[RunRecord]) -> RunRecord:
    """The run that names the report: the policy-level run of a slot,
    else the earliest recorded."""
    for run in runs:
        if is_slot(run.target):
            return run
    return min(runs, key=lambda r: (r.created_at, r.id))


def _all_final(runs: Iterable[RunRecord]) -> bool:
    return all(r.state in FINAL_RUN_STATES for r in runs)


def _ended(
    runs: Sequence[RunRecord], now: datetime.datetime
) -> datetime.datetime:
    if not _all_final(runs):
        return now
    return max((r.finished_at for r in runs if r.finished_at), default=now)


def _overall_state(runs: Sequence[RunRecord], head: RunRecord) -> RunState:
    """The policy-level run's state when there is one; else the worst
    of the runs (run-once and verification passes have no head run)."""
    heads = [r for r in runs if is_slot(r.target)]
    if len(heads) == 1:
        return head.state
    if heads:
        # Several daemons' shares of one slot: judged together.
        runs = heads
    if not _all_final(runs):
        return RunState.RUNNING
    states = {r.state for r in runs}
    bad = states & FAILURE_RUN_STATES
    if not bad:
        return (
            RunState.SUCCEEDED
            if RunState.SUCCEEDED in states
            else RunState.SKIPPED
        )
    if RunState.SUCCEEDED in states:
        return RunState.PARTIAL
    return RunState.FAILED


def _remarks(runs: Sequence[RunRecord]) -> tuple[str, ...]:
    found = []
    for run in runs:
        if is_slot(run.target) or run.policy.startswith("expire:"):
            summary = run.summary or {}
            text = summary.get("error") or summary.get("note")
            if text:
                found.append(str(text))
            stopped = summary.get("interrupted")
            if isinstance(stopped, int) and stopped > 0:
                found.append(
                    f"{stopped} of the {summary.get('volumes', '?')} volumes "
                    "found were interrupted before their outcome (a stop)"
                )
    return tuple(found)


def _line(kind: str, run: RunRecord) -> VolumeLine:
    summary = run.summary or {}
    status = status_of(run.state)
    if kind == VERIFY:
        return _verify_line(run, summary, status)
    reason = summary.get("error") or ""
    if not reason and status == FAILED:
        reason = f"run {run.state}"
    notes = summary.get("notes") or ()
    if status == OK and notes:
        reason = "; ".join(str(n) for n in notes)
    size = summary.get("size_gb")
    return VolumeLine(
        volume_id=str(summary.get("volume_id") or run.target),
        project_id=str(summary.get("project_id") or run.project_id or ""),
        status=status,
        state=str(run.state),
        reason=str(reason),
        kind=str(summary.get("kind") or ""),
        backup_id=str(summary.get("backup_id") or ""),
        size_bytes=None if size is None else int(size) * GIB,
        seconds=_float(summary.get("seconds")),
        freeze_seconds=_float(summary.get("freeze_seconds")),
        group_id=str(summary.get("group_id") or ""),
    )


def _verify_line(
    run: RunRecord, summary: Mapping[str, Any], status: str
) -> VolumeLine:
    result = str(summary.get("result") or "")
    if result == "failed":
        status = FAILED
    problems = "; ".join(str(p) for p in summary.get("problems") or ())
    seconds = [
        _float(summary.get(k)) for k in ("restore_seconds", "check_seconds")
    ]
    size = summary.get("size_gb")
    return VolumeLine(
        volume_id=str(
            summary.get("volume_id") or run.attrs.get("volume_id") or ""
        ),
        project_id=str(summary.get("project_id") or run.project_id or ""),
        status=status,
        state=str(run.state),
        reason=problems or (result if result not in ("", "ok") else ""),
        backup_id=run.target,
        size_bytes=None if size is None else int(size) * GIB,
        seconds=None
        if all(s is None for s in seconds)
        else round(sum(s or 0.0 for s in seconds), 1),
    )


def _expiry_report(
    run: RunRecord, common: dict[str, Any], remarks: tuple[str, ...]
) -> Report:
    summary = run.summary or {}
    deletions = tuple(
        _deletion(step)
        for step in run.steps or ()
        if step.kind == StepKind.BACKUP_DELETE
    )
    counts = {
        key: int(summary[key])
        for key in ("deleted", FAILED, SKIPPED)
        if isinstance(summary.get(key), int)
    }
    kept = run.attrs.get("kept")
    return Report(
        **common,
        deletions=deletions,
        expiry_counts=counts,
        kept=kept if isinstance(kept, int) else None,
        remarks=remarks,
    )


def _deletion(step: StepRecord) -> Deletion:
    details = step.details
    status = {
        StepState.DONE: "deleted",
        StepState.FAILED: FAILED,
        StepState.UNDONE: SKIPPED,
    }.get(step.state, IN_FLIGHT)
    reason = step.reason or str(details.get("note") or "")
    if status == "deleted" and not reason:
        reason = "; ".join(str(r) for r in details.get("reasons") or ())
    return Deletion(
        volume_id=step.target,
        project_id=str(details.get("project_id") or ""),
        backup_id=str(details.get("backup_id") or step.resource_id or ""),
        status=status,
        reason=reason,
    )


def out_of_rpo(
    lines: Iterable[VolumeLine],
    marks: Mapping[str, BackupMark],
    rpo: datetime.timedelta,
    head: RunRecord,
    ended: datetime.datetime,
) -> list[RpoLine]:
    """Given a slot's lines, the volumes past ``rpo`` at ``ended``.

    A volume backed up in this run is within it. For the others the RPO
    clock runs from their last successful backup, or from when they were
    first seen if they never had one. ``newly``: still within it at the
    slot's scheduled time, so this run is the one that let it lapse.
    """
    found = []
    for line in lines:
        if line.status in (OK, SKIPPED):
            continue
        mark = marks.get(line.volume_id)
        last = mark.last_success if mark else None
        since = last or (mark.first_seen if mark else head.scheduled_at)
        overdue = (ended - since - rpo).total_seconds()
        if overdue <= 0:
            continue
        newly = head.scheduled_at - since <= rpo
        found.append(
            RpoLine(
                volume_id=line.volume_id,
                project_id=line.project_id,
                last_success=last,
                since=since,
                overdue_seconds=round(overdue, 1),
                newly=newly,
            )
        )
    return sorted(found, key=lambda r: (not r.newly, -r.overdue_seconds))


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _iso(value: datetime.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- rendering -----------------------------------------------------------


LIMIT = 100
"""Lines per list in a rendered report unless asked for all: a mail of
10,000 volumes names its failures, not every success."""


def render(report: Report, limit: int | None = LIMIT) -> str:
    """Given a report, return it as plain text (the mail body, and what
    ``cinderbak runs show`` prints), at most ``limit`` lines per list
    (None: all)."""
    out = [
        report.subject().removeprefix("[cinderbak] "),
        "",
        f"run:        {report.run_id}",
        f"policy:     {report.policy} ({report.kind})",
        f"scheduled:  {_iso(report.scheduled_at)}",
        f"started:    {_iso(report.started_at)}",
        f"finished:   {_iso(report.finished_at)}",
        f"state:      {report.state}",
    ]
    out += [f"note:       {text}" for text in report.remarks]
    if report.kind == EXPIRY:
        out += _render_expiry(report, limit)
    else:
        out += _render_volumes(report, limit)
    # Reasons quote tenant metadata: shown escaped (see escape.py).
    return "\n".join(escape(line) for line in out) + "\n"


def _capped(lines: list[str], limit: int | None) -> list[str]:
    if limit is None or len(lines) <= limit:
        return lines
    more = len(lines) - limit
    return [
        *lines[:limit],
        f"  ... and {more} more (cinderbak runs show --all)",
    ]


def _render_volumes(report: Report, limit: int | None) -> list[str]:
    out = [f"volumes:    {report.counts_text()}"]
    if report.kind == BACKUP:
        kinds = report.kinds()
        out.append(
            f"backups:    {kinds.get('full', 0)} full, "
            f"{kinds.get('incremental', 0)} incremental, "
            f"{_size(report.backed_up_bytes)} (Cinder backup sizes)"
        )
    for title, status in (("Failed", FAILED), ("In flight", IN_FLIGHT)):
        rows = [v for v in report.volumes if v.status == status]
        if rows:
            out += ["", f"{title}:"]
            out += _capped(
                [f"  {_who(v)}: {v.reason or v.state}" for v in rows], limit
            )
    skipped = [v for v in report.volumes if v.status == SKIPPED]
    if skipped:
        out += ["", "Skipped:"]
        out += _capped(
            [f"  {_who(v)}: {v.reason or 'skipped'}" for v in skipped], limit
        )
    if report.rpo_seconds is not None:
        out += ["", f"Out of RPO ({_duration(report.rpo_seconds)}):"]
        if not report.out_of_rpo:
            out.append("  none")
        late = []
        for r in report.out_of_rpo:
            last = _iso(r.last_success) if r.last_success else "never"
            late.append(
                f"  {'NEW ' if r.newly else ''}{r.volume_id} "
                f"(project {r.project_id}): last good backup {last}, "
                f"{_duration(r.overdue_seconds)} overdue"
            )
        out += _capped(late, limit)
    slow = report.slowest()
    if slow:
        out += ["", "Slowest:"]
        out += [f"  {_who(v)}: {v.seconds:.1f} s {v.kind}" for v in slow]
    freezes = report.freezes()
    if freezes:
        out += ["", "Freeze windows (longest first):"]
        out += _capped(
            [
                f"  {v.group_id or v.volume_id}: {v.freeze_seconds:.3f} s"
                for v in freezes
            ],
            limit,
        )
    done = []
    for v in report.volumes:
        if v.status == OK:
            size = "" if v.size_bytes is None else f", {_size(v.size_bytes)}"
            kind = f" {v.kind}" if v.kind else ""
            done.append(f"  {_who(v)}:{kind} {v.backup_id}{size}")
    if done:
        out += ["", "Done:", *_capped(done, limit)]
    return out


def _render_expiry(report: Report, limit: int | None) -> list[str]:
    out = [f"expiry:     {report.counts_text()}"]
    if report.deletions:
        out += ["", "Deletions:"]
        ordered = sorted(report.deletions, key=lambda d: d.status == "deleted")
        out += _capped(
            [
                f"  {d.backup_id} of volume {d.volume_id} (project "
                f"{d.project_id}): {d.status}"
                + (f": {d.reason}" if d.reason else "")
                for d in ordered
            ],
            limit,
        )
    return out


def _who(line: VolumeLine) -> str:
    what = line.volume_id
    if line.backup_id and line.status != OK and line.kind == "":
        what = f"backup {line.backup_id} of {line.volume_id}"
    return f"{what} (project {line.project_id})"


def _size(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
