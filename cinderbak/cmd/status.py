"""``cinderbak status``: what the daemon is doing, from the journal alone.

Reads the journal the daemon writes and the policies of the config file;
it never talks to the cloud, so it answers when the cloud does not.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa
from oslo_config import cfg

from cinderbak import expiry, journal, policy, scheduler, verify, workflow
from cinderbak.cmd.base import EscapedLister, Table
from cinderbak.journal import Journal, RunRecord, StepRecord
from cinderbak.journal.api import PolicySlot

if TYPE_CHECKING:
    from cinderbak.cmd.cli import CinderbakApp

POLICY_COLUMNS = (
    "policy",
    "schedule",
    "next_run",
    "last_slot",
    "last_state",
    "last_summary",
    "last_finished",
    "in_flight",
    "volumes_backed_up",
)
DAEMON_COLUMNS = ("group", "host", "last_beat", "beats", "runs_in_flight")
VOLUME_COLUMNS = (
    "volume_id",
    "policy",
    "last_backup_id",
    "last_backup_kind",
    "last_backup_at",
    "last_run_slot",
    "last_run_state",
    "last_error",
)


def when(value: datetime.datetime | None) -> str:
    """Return an aware time as '2024-05-01T03:00:00Z' ('' for None)."""
    if value is None:
        return ""
    return f"{value.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


def open_journal(conf: cfg.ConfigOpts) -> Journal | None:
    """Open the daemon's journal to read it; None when there is none yet.

    A SQLite file that does not exist is not created, and nothing is
    upgraded: reading must not change what the daemon owns.
    """
    journal.register_opts(conf)
    url = sa.make_url(conf.journal.connection)
    if url.get_backend_name() == "sqlite" and not os.path.exists(
        url.database or ""
    ):
        return None
    store = Journal(conf)
    if store.schema_revision() is None:
        store.close()
        return None
    return store


def configured_policies(app: CinderbakApp) -> dict[str, policy.Policy]:
    """The config file's policies; on a bad one, say so and use none."""
    try:
        return policy.load_policies(app.conf)
    except policy.PolicyConfigError as exc:
        app.stderr.write(f"warning: {exc}; showing the journal only\n")
        return {}


class _JournalLister(EscapedLister):
    """A lister over the journal; no rows when it does not exist yet."""

    def column_names(self, parsed_args: argparse.Namespace) -> tuple[str, ...]:
        raise NotImplementedError

    def rows(
        self, store: Journal, parsed_args: argparse.Namespace
    ) -> Iterator[tuple[object, ...]]:
        raise NotImplementedError

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        columns = self.column_names(parsed_args)
        store = open_journal(self.app_conf())
        if store is None:
            # Not the URL: it may hold the database password.
            self.app.stderr.write(
                "no journal yet: the daemon never ran with this "
                "configuration\n"
            )
            return columns, []
        try:
            return columns, list(self.rows(store, parsed_args))
        finally:
            store.close()


def schedule_of(
    name: str,
    configured: Mapping[str, policy.Policy],
    now: datetime.datetime,
) -> tuple[str, datetime.datetime | None]:
    """The schedule text and next time of a row: a policy's backups, its
    verification passes (``verify:P``) or its expiry (``expire:P``)."""
    for prefix in (verify.RUN_PREFIX, expiry.RUN_PREFIX):
        if name.startswith(prefix):
            known = configured.get(name[len(prefix) :])
            break
    else:
        known = configured.get(name)
        if known is None:
            return "(not configured)", None
        return known.schedule.text, scheduler.next_run(known, now)
    if known is None:
        return "(not configured)", None
    if prefix == expiry.RUN_PREFIX:
        return "after runs and at [daemon] expiry_interval", None
    if known.verify_schedule is None:
        return "on demand (cinderbak verify)", None
    trigger = known.verify_schedule.trigger()
    return known.verify_schedule.text, trigger.get_next_fire_time(None, now)


class Status(_JournalLister):
    """Show each policy's schedule, last and next run, and work in flight.

    With --volumes, one row per volume instead: its last backup and the
    result of its last run. With --daemons, one row per daemon sharing
    the journal: its last heartbeat and its runs in flight.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--volumes",
            action="store_true",
            help="one row per volume: last backup and last run result",
        )
        parser.add_argument(
            "--daemons",
            action="store_true",
            help="one row per daemon of the journal ([coordination]): "
            "its last heartbeat and its runs in flight",
        )
        parser.add_argument(
            "--policy",
            metavar="NAME",
            help="only this policy",
        )
        return parser

    def column_names(self, parsed_args: argparse.Namespace) -> tuple[str, ...]:
        if parsed_args.daemons:
            return DAEMON_COLUMNS
        return VOLUME_COLUMNS if parsed_args.volumes else POLICY_COLUMNS

    def rows(
        self, store: Journal, parsed_args: argparse.Namespace
    ) -> Iterator[tuple[object, ...]]:
        if parsed_args.daemons:
            yield from _daemon_rows(store)
            return
        configured = configured_policies(cast("CinderbakApp", self.app))
        slots = store.last_run_per_policy()
        verifying = {
            verify.RUN_PREFIX + name
            for name, known in configured.items()
            if known.verify_schedule is not None
        }
        names = sorted(configured.keys() | slots.keys() | verifying)
        if parsed_args.policy:
            names = [n for n in names if n == parsed_args.policy]
        if parsed_args.volumes:
            for name in names:
                yield from self._volume_rows(store, name)
            return
        now = datetime.datetime.now(datetime.UTC)
        in_flight: dict[str, int] = {}
        for run in store.in_flight():
            if not workflow.is_slot_target(run.target):
                in_flight[run.policy] = in_flight.get(run.policy, 0) + 1
        for name in names:
            yield self._policy_row(
                store, name, configured, slots.get(name), in_flight, now
            )

    def _policy_row(
        self,
        store: Journal,
        name: str,
        configured: Mapping[str, policy.Policy],
        slot: PolicySlot | None,
        in_flight: Mapping[str, int],
        now: datetime.datetime,
    ) -> tuple[object, ...]:
        last = store.runs(policy=name, slots=True, limit=1)
        last_slot: datetime.datetime | None
        finished: datetime.datetime | None
        if last:
            state = str(last[0].state)
            summary = scheduler.summary_text(last[0].summary)
            last_slot, finished = last[0].scheduled_at, last[0].finished_at
        elif slot is not None:
            # Runs without a policy-level record (cinderbak run-once).
            state = ", ".join(
                f"{s}={n}" for s, n in sorted(slot.states.items())
            )
            summary = ""
            last_slot, finished = slot.scheduled_at, slot.last_finished_at
        else:
            state = summary = ""
            last_slot = finished = None
        schedule, next_at = schedule_of(name, configured, now)
        return (
            name,
            schedule,
            when(next_at),
            when(last_slot),
            state,
            summary,
            when(finished),
            in_flight.get(name, 0),
            len(store.last_backup_per_target(policy=name)),
        )

    def _volume_rows(
        self, store: Journal, name: str
    ) -> Iterator[tuple[object, ...]]:
        backups = store.last_backup_per_target(policy=name)
        latest: dict[str, RunRecord] = {}
        window = 4 * len(backups) + 200
        for run in store.runs(policy=name, limit=window):
            if not workflow.is_slot_target(run.target):
                latest.setdefault(run.target, run)
        for volume_id, made in backups.items():
            if volume_id not in latest:
                latest[volume_id] = store.get_run(made.run_id)
        for volume_id in sorted(latest):
            run = latest[volume_id]
            step = backups.get(volume_id)
            yield (
                volume_id,
                name,
                step.resource_id if step else "",
                _kind(step),
                when(step.finished_at) if step else "",
                when(run.scheduled_at),
                str(run.state),
                (run.summary or {}).get("error") or "",
            )


def _daemon_rows(store: Journal) -> Iterator[tuple[object, ...]]:
    """Daemons that beat in the journal, and hosts with runs in flight
    that never did (a single daemon, or one from before the heartbeat)."""
    in_flight: dict[str, int] = {}
    for run in store.in_flight():
        in_flight[run.host] = in_flight.get(run.host, 0) + 1
    beating = set()
    for group, host, beats, beat_at in store.beat_rows():
        beating.add(host)
        yield group, host, when(beat_at), beats, in_flight.get(host, 0)
    for host in sorted(in_flight.keys() - beating):
        yield "", host, "", 0, in_flight[host]


def _kind(step: StepRecord | None) -> str:
    if step is None:
        return ""
    incremental = step.details.get("is_incremental")
    if incremental is None:
        return str(step.details.get("kind", ""))
    return "incremental" if incremental else "full"
