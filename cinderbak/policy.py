"""Backup policies: what the operator offers tenants, one config section each.

A policy lives in a ``[policy:NAME]`` section of the config file. Parsing is
pure (:func:`parse_policy` takes plain strings), so every rule is unit
tested; :func:`load_policies` only adapts oslo.config to it. An invalid
policy stops start-up with an error naming the section and the option:
a typo found at 03:00 by a failed run is found too late.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from oslo_config import cfg

from cinderbak import chains, durations, retention
from cinderbak.tenant import QuiesceMode

SECTION_PREFIX = "policy:"
_T = TypeVar("_T")
# Interval schedules count from a fixed instant, so their slots (and the
# journal keys made from them) are the same across restarts.
INTERVAL_ANCHOR = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class TransferMode(enum.StrEnum):
    """Where the backup reads from (see DESIGN.md, two facts of Cinder)."""

    VOLUME = "volume"  # differential on Ceph; volume is backing-up meanwhile
    SNAPSHOT = "snapshot"  # never blocks the volume; full copies on Ceph


class Ownership(enum.StrEnum):
    """Which project a backup belongs to."""

    PROJECT = "project"  # the volume's own project: tenants see and pay
    SERVICE = "service"  # the daemon's project: out of a tenant's reach


POLICY_OPTS = [
    cfg.StrOpt(
        "schedule",
        help="When the policy runs: a five-field crontab expression "
        "('0 3 * * *') or 'every <duration>' ('every 6h'). Required.",
    ),
    cfg.IntOpt(
        "jitter",
        default=0,
        min=0,
        help="Seconds of random delay added to each run, so that many "
        "daemons or policies do not hit the API at the same second.",
    ),
    cfg.IntOpt(
        "misfire_grace_time",
        default=3600,
        min=1,
        help="A run missed (daemon down, busy) is still started if it is "
        "at most this many seconds late; later it is recorded as missed.",
    ),
    cfg.StrOpt(
        "retention",
        default="last=7",
        help="Which backups to keep: comma-separated key=value items from "
        "last, within, hourly, daily, weekly, monthly, yearly, e.g. "
        "'last=7, daily=14, weekly=8, monthly=12'.",
    ),
    cfg.IntOpt(
        "error_grace_hours",
        default=24,
        min=0,
        help="A backup of ours that ended in error is deleted by expiry "
        "once it is this many hours old (kept meanwhile for diagnosis).",
    ),
    cfg.IntOpt(
        "orphan_keep_last",
        default=1,
        min=1,
        help="When a volume was deleted by its tenant, keep at least this "
        "many of its newest backups ...",
    ),
    cfg.IntOpt(
        "orphan_keep_days",
        default=30,
        min=0,
        help="... for this many days after its newest backup; the newest "
        "successful backup is never deleted by expiry.",
    ),
    cfg.StrOpt(
        "full_every",
        default="6, 7d",
        help="Start a new full backup after this many incrementals, or "
        "when the chain's full is older than this age, or both: '6', "
        "'14d', '6, 14d'. Bounds chain length and restore time.",
    ),
    cfg.StrOpt(
        "transfer_mode",
        default=TransferMode.VOLUME.value,
        choices=[
            (
                TransferMode.VOLUME.value,
                "Back up straight from the volume: "
                "differential on Ceph; the volume is backing-up meanwhile.",
            ),
            (
                TransferMode.SNAPSHOT.value,
                "Back up from a temporary Cinder "
                "snapshot: never blocks the volume; the Ceph backup driver "
                "copies such backups in full.",
            ),
        ],
        help="Where backups read from.",
    ),
    cfg.StrOpt(
        "ownership",
        default=Ownership.PROJECT.value,
        choices=[
            (
                Ownership.PROJECT.value,
                "Backups belong to the volume's "
                "project: tenants list, restore and pay for them. The service "
                "user needs a role in each such project.",
            ),
            (
                Ownership.SERVICE.value,
                "Backups belong to the service "
                "user's project, out of the tenants' reach.",
            ),
        ],
        help="Which project owns the backups.",
    ),
    cfg.StrOpt(
        "backup_availability_zone",
        help="Availability zone of the backup service to use; unset lets "
        "Cinder choose.",
    ),
    cfg.StrOpt(
        "backup_container",
        help="Backup container (for the Ceph backup driver: the pool); "
        "unset uses the backup service's default.",
    ),
    cfg.StrOpt(
        "quiesce",
        default=QuiesceMode.PREFERRED.value,
        choices=[mode.value for mode in QuiesceMode],
        help="Default quiesce mode; tenants may override it per volume "
        "with cinderbak:quiesce. required: no backup unless the guest "
        "froze; preferred: fall back to crash-consistent and say so.",
    ),
    cfg.FloatOpt(
        "max_freeze_seconds",
        default=10.0,
        min=1.0,
        help="A guest is never kept frozen longer than this (10 s is "
        "the limit Windows VSS tolerates).",
    ),
    cfg.IntOpt(
        "snapshot_timeout",
        default=600,
        min=1,
        help="Seconds a temporary snapshot may take to become available.",
    ),
    cfg.IntOpt(
        "backup_timeout",
        default=6 * 3600,
        min=1,
        help="Seconds a backup may stay creating before the run reports "
        "it as timed out.",
    ),
    cfg.BoolOpt(
        "record_checksums",
        default=True,
        help="Checksum each backup's source (the driver's or our snapshot) "
        "on the volume cluster when the backup is done, so verification "
        "can compare a restore with what was backed up. Reads the "
        "volume's allocated blocks once per backup; needs "
        "[volume_cluster] conf.",
    ),
    cfg.StrOpt(
        "verify_schedule",
        help="When to verify this policy's backups by restoring them to a "
        "scratch volume: same forms as 'schedule'. Unset: only on demand "
        "(cinderbak verify).",
    ),
    cfg.StrOpt(
        "verify_sample",
        default="1",
        help="How many backups one verification pass restores: a count "
        "('2') or a percentage of the policy's backups ('10%'), never "
        "verified ones first, oldest first, then those verified longest "
        "ago.",
    ),
    cfg.IntOpt(
        "verify_timeout",
        default=6 * 3600,
        min=1,
        help="Seconds one verification (restore and checks) may take.",
    ),
]


class PolicyConfigError(ValueError):
    """A policy option that cannot work; names the section and option."""

    def __init__(self, section: str, option: str, problem: str) -> None:
        self.section = section
        self.option = option
        super().__init__(f"[{section}] {option}: {problem}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule; builds APScheduler triggers on demand."""

    text: str
    crontab: str | None = None
    interval: datetime.timedelta | None = None

    def trigger(
        self, jitter: int = 0, timezone: datetime.tzinfo = datetime.UTC
    ) -> BaseTrigger:
        """Return the APScheduler trigger for this schedule."""
        if self.crontab is not None:
            minute, hour, day, month, weekday = self.crontab.split()
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=cron_weekdays(weekday),
                timezone=timezone,
                jitter=jitter or None,
            )
        assert self.interval is not None  # a Schedule has one or the other
        return IntervalTrigger(
            seconds=self.interval.total_seconds(),
            start_date=INTERVAL_ANCHOR,
            jitter=jitter or None,
            timezone=timezone,
        )

    def last_fire_time(
        self, now: datetime.datetime
    ) -> datetime.datetime | None:
        """Return the newest scheduled time at or before ``now``.

        It names a run whatever the jitter or delay of its actual start,
        so the same slot always makes the same journal key.
        """
        if self.interval is not None:
            slots = (now - INTERVAL_ANCHOR) // self.interval
            return INTERVAL_ANCHOR + slots * self.interval
        trigger = self.trigger()
        window = datetime.timedelta(minutes=1)
        while window <= datetime.timedelta(days=800):
            fire = trigger.get_next_fire_time(None, now - window)
            if fire is not None and fire <= now:
                while True:
                    later = trigger.get_next_fire_time(
                        fire, fire + datetime.timedelta(seconds=1)
                    )
                    if later is None or later > now:
                        found: datetime.datetime = fire
                        return found
                    fire = later
            window *= 2
        return None


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_weekdays(field: str) -> str:
    """Given crontab's weekday field, return it in APScheduler's terms.

    crontab counts 0 (and 7) as Sunday; APScheduler 3 counts 0 as Monday,
    so '0 3 * * 0' would silently run on Mondays. Spelling the days out
    by name removes the ambiguity. Raise ValueError for a bad field.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else None
        if step_text and not step:
            raise ValueError(f"bad step in weekday field {field!r}")
        if spec == "*":
            first, last = 0, 6
        else:
            start, _, end = spec.partition("-")
            first = _weekday_number(start, field)
            if end:
                last = _weekday_number(end, field)
                if last == 0 and first > 0:
                    last = 7  # 'fri-sun': up to Sunday
            else:
                last = 6 if step else first  # 'N/2' runs N through Saturday
            if last < first:
                raise ValueError(f"backwards range in weekday field {field!r}")
        days.update(day % 7 for day in range(first, last + 1, step or 1))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def _weekday_number(token: str, field: str) -> int:
    """Return crontab's number for a weekday token; 7 stays 7 (Sunday)."""
    if token in _WEEKDAYS:
        return _WEEKDAYS.index(token)
    if token.isdigit() and int(token) <= 7:
        return int(token)
    raise ValueError(
        f"{token!r} in weekday field {field!r} is not 0-7 or sun-sat"
    )


def parse_schedule(text: str) -> Schedule:
    """Given ``'0 3 * * *'`` or ``'every 6h'``, return a Schedule.

    Raise ValueError saying what forms are accepted.
    """
    stripped = " ".join(text.split())
    if stripped.lower().startswith("every "):
        return Schedule(
            text=stripped,
            interval=durations.parse_duration(stripped[len("every ") :]),
        )
    fields = stripped.split(" ")
    try:
        if len(fields) != 5:
            raise ValueError(f"it has {len(fields)} fields, not 5")
        Schedule(text=stripped, crontab=stripped).trigger()
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is neither a crontab expression "
            f"('minute hour day month weekday', e.g. '0 3 * * *') nor "
            f"'every <duration>' (e.g. 'every 6h'): {exc}"
        ) from None
    return Schedule(text=stripped, crontab=stripped)


@dataclasses.dataclass(frozen=True)
class Sample:
    """How many backups a verification pass takes: a count or a share."""

    count: int | None = None
    percent: float | None = None

    def size(self, population: int) -> int:
        """How many of ``population`` backups to verify (at least one of
        a non-empty population when a percentage is asked)."""
        if self.count is not None:
            return min(self.count, population)
        wanted = math.ceil(population * (self.percent or 0) / 100)
        return min(population, max(wanted, 1 if population else 0))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{self.percent:g}%"


def parse_sample(text: str) -> Sample:
    """'3' -> three backups per pass; '10%' -> a tenth of them."""
    stripped = text.strip()
    try:
        if stripped.endswith("%"):
            percent = float(stripped[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return Sample(percent=percent)
        count = int(stripped)
        if count < 1:
            raise ValueError
        return Sample(count=count)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a count of at least 1 ('2') nor a "
            "percentage above 0 and at most 100 ('10%')"
        ) from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """One operator-defined backup policy, validated."""

    name: str
    schedule: Schedule
    jitter: int
    misfire_grace_time: int
    retention: retention.Retention
    full_every: chains.FullEvery
    transfer_mode: TransferMode
    ownership: Ownership
    backup_availability_zone: str | None
    backup_container: str | None
    quiesce: QuiesceMode
    max_freeze_seconds: float
    snapshot_timeout: int
    backup_timeout: int
    record_checksums: bool = True
    verify_schedule: Schedule | None = None
    verify_sample: Sample = dataclasses.field(
        default_factory=lambda: Sample(count=1)
    )
    verify_timeout: int = 6 * 3600

    @property
    def section(self) -> str:
        return SECTION_PREFIX + self.name


def parse_policy(name: str, values: Mapping[str, Any]) -> Policy:
    """Given a policy's name and option values, return the Policy.

    ``values`` holds what oslo.config already typed (ints, floats, checked
    choices); the free-form strings are parsed here. Raise
    PolicyConfigError naming the section and the option.
    """
    section = SECTION_PREFIX + name
    if not _NAME.match(name):
        raise PolicyConfigError(
            section,
            "(section name)",
            f"policy name {name!r} must be 1-63 characters of a-z, 0-9, "
            "'_', '.', '-', starting with a letter or digit; tenants "
            "write it into volume metadata",
        )

    def parsed(option: str, parser: Callable[[str], _T]) -> _T:
        raw = values.get(option)
        if raw is None or str(raw).strip() == "":
            raise PolicyConfigError(section, option, "a value is required")
        try:
            return parser(str(raw))
        except ValueError as exc:
            raise PolicyConfigError(section, option, str(exc)) from None

    return Policy(
        name=name,
        schedule=parsed("schedule", parse_schedule),
        jitter=int(values.get("jitter") or 0),
        misfire_grace_time=int(values.get("misfire_grace_time") or 3600),
        retention=dataclasses.replace(
            parsed("retention", retention.parse_retention),
            error_grace=datetime.timedelta(
                hours=int(values.get("error_grace_hours", 24))
            ),
            orphan_keep_last=int(values.get("orphan_keep_last") or 1),
            orphan_keep_days=int(values.get("orphan_keep_days", 30)),
        ),
        full_every=parsed("full_every", chains.parse_full_every),
        transfer_mode=TransferMode(values.get("transfer_mode", "volume")),
        ownership=Ownership(values.get("ownership", "project")),
        backup_availability_zone=values.get("backup_availability_zone"),
        backup_container=values.get("backup_container"),
        quiesce=QuiesceMode(values.get("quiesce", "preferred")),
        max_freeze_seconds=float(values.get("max_freeze_seconds") or 10.0),
        snapshot_timeout=int(values.get("snapshot_timeout") or 600),
        backup_timeout=int(values.get("backup_timeout") or 6 * 3600),
        record_checksums=bool(values.get("record_checksums", True)),
        verify_schedule=(
            parsed("verify_schedule", parse_schedule)
            if values.get("verify_schedule")
            else None
        ),
        verify_sample=parsed("verify_sample", parse_sample)
        if values.get("verify_sample") is not None
        else Sample(count=1),
        verify_timeout=int(values.get("verify_timeout") or 6 * 3600),
    )


def load_policies(conf: cfg.ConfigOpts) -> dict[str, Policy]:
    """Return every ``[policy:NAME]`` section of ``conf`` as a Policy.

    Raise PolicyConfigError for the first section that does not parse.
    """
    policies = {}
    for section in sorted(conf.list_all_sections()):
        if not section.startswith(SECTION_PREFIX):
            continue
        conf.register_opts(POLICY_OPTS, group=section)
        group = conf[section]
        values = {}
        for opt in POLICY_OPTS:
            try:
                values[opt.dest] = getattr(group, opt.dest)
            except (cfg.ConfigFileValueError, ValueError) as exc:
                raise PolicyConfigError(section, opt.dest, str(exc)) from None
        name = section[len(SECTION_PREFIX) :]
        policies[name] = parse_policy(name, values)
    return policies


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options of one policy, shown in the sample under a placeholder."""
    return [(SECTION_PREFIX + "NAME", POLICY_OPTS)]


def fallback_policy(name: str) -> Policy:
    """A policy with default options, for finishing runs of a policy that
    was removed from the configuration while they were in flight."""
    return parse_policy(
        name,
        {opt.dest: opt.default for opt in POLICY_OPTS}
        | {"schedule": "every 1d"},
    )
