"""The journal: what every run did, written down before it was done.

A worker records each step as an INTENT before it acts on the cloud, the
resource id as soon as the cloud returns one, and the outcome after. After
a ``kill -9`` the next start finds, through :meth:`Journal.unfinished_runs`,
:meth:`Journal.open_steps` and :meth:`Journal.frozen_servers`, exactly what
to resume, undo or skip. The journal itself never decides that: the
caller's recovery logic moves each record to its outcome.

Thread safety: one engine per :class:`Journal`, a new session and a short
transaction per call, and plain frozen records (never ORM objects) handed
back, so worker threads may share one :class:`Journal`.

Concurrency: a run or step is read under a row lock (``SELECT ... FOR
UPDATE``; on SQLite every write transaction starts with ``BEGIN
IMMEDIATE``) before its transition is checked, so two workers racing for
the same run see each other's outcome and the loser gets
:class:`~cinderbak.journal.states.InvalidTransition`, never a second
backup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa
from oslo_config import cfg
from oslo_log import log as logging
from sqlalchemy import orm

from cinderbak.chains import INCREMENTAL
from cinderbak.journal import models, options
from cinderbak.journal.migrations import HEAD, VERSION_TABLE
from cinderbak.journal.models import to_utc
from cinderbak.journal.states import (
    FAILURE_RUN_STATES,
    FINAL_RUN_STATES,
    IN_FLIGHT_RUN_STATES,
    OPEN_STEP_STATES,
    InvalidTransition,
    RunState,
    StepState,
    check_run_transition,
    check_step_transition,
)
from cinderbak.journal.steps import EXPECTED_PARENT, StepKind

if TYPE_CHECKING:
    from alembic import config as alembic_config

MIGRATIONS = "cinderbak.journal:migrations"
_IN_BATCH = 500  # ids per SQL IN (...) list
"""Alembic script location as a package resource: no alembic.ini and no
path relative to the working directory, so it works when installed."""

LOG = logging.getLogger(__name__)

_WRITE = "cinderbak_journal_write"

# Alembic runs migrations through module-global proxies (alembic.context,
# alembic.op): two upgrades in threads of one process would trample each
# other. Between processes the database lock orders them (env.py).
_UPGRADE_LOCK = threading.Lock()
_PRUNE_BATCH = 500

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class NotFound(LookupError):
    """No run or step with that id (pruned, or never recorded)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One step as recorded. ``details`` is a copy: changing it changes
    nothing in the journal."""

    id: int
    run_id: str
    kind: str
    target: str
    state: StepState
    resource_id: str | None
    details: dict[str, Any]
    reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None

    @property
    def is_open(self) -> bool:
        """True while the step's effect is unknown or under way."""
        return self.state in OPEN_STEP_STATES

    @property
    def expected_parent(self) -> str | None:
        """The incremental parent cinderbak expected (backup steps)."""
        value = self.details.get(EXPECTED_PARENT)
        return None if value is None else str(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run as recorded. ``steps`` is None when the query did not load
    them, and a tuple (oldest first) when it did."""

    id: str
    policy: str
    target: str
    scheduled_at: datetime.datetime
    project_id: str | None
    host: str
    state: RunState
    attrs: dict[str, Any]
    summary: dict[str, Any] | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    steps: tuple[StepRecord, ...] | None = None

    @property
    def is_final(self) -> bool:
        """True once the run has its outcome and will never move again."""
        return self.state in FINAL_RUN_STATES

    @property
    def duration(self) -> datetime.timedelta | None:
        """How long the run ran, once it has started and finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunHandle(RunRecord):
    """What :meth:`Journal.begin_run` returns.

    ``created`` says whether this call recorded the run. When it is False
    the run already existed: look at ``state`` before doing anything (a
    final run is done; a RUNNING one belongs to a worker or to recovery).
    """

    created: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicySlot:
    """The newest scheduled time of one policy and how its runs ended."""

    policy: str
    scheduled_at: datetime.datetime
    states: dict[RunState, int]
    last_finished_at: datetime.datetime | None

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def finished(self) -> bool:
        """True when every run of the slot has its outcome."""
        return not any(s in IN_FLIGHT_RUN_STATES for s in self.states)


def _step_record(row: Any) -> StepRecord:
    """A step from an ORM row or a Core row (same attribute names)."""
    return StepRecord(
        id=row.id,
        run_id=row.run_id,
        kind=row.kind,
        target=row.target,
        state=StepState(row.state),
        resource_id=row.resource_id,
        details=dict(row.details),
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _run_fields(row: Any, with_steps: bool) -> dict[str, Any]:
    """A run's fields from an ORM row or (without steps) a Core row."""
    return {
        "id": row.id,
        "policy": row.policy,
        "target": row.target,
        "scheduled_at": row.scheduled_at,
        "project_id": row.project_id,
        "host": row.host,
        "state": RunState(row.state),
        "attrs": dict(row.attrs),
        "summary": None if row.summary is None else dict(row.summary),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "steps": (
            tuple(_step_record(s) for s in row.steps) if with_steps else None
        ),
    }


def _run_record(row: models.Run, *, with_steps: bool = False) -> RunRecord:
    return RunRecord(**_run_fields(row, with_steps))


def _unthawed_freeze() -> sa.ColumnElement[bool]:
    """A freeze step with no later DONE thaw of the same target in its run.

    UNDONE freezes are excluded: recovery marks a freeze UNDONE when it
    knows the guest is not frozen (e.g. the server is gone).
    """
    thaw = orm.aliased(models.Step)
    return sa.and_(
        models.Step.kind == StepKind.FREEZE,
        models.Step.state != StepState.UNDONE,
        ~sa.exists().where(
            thaw.run_id == models.Step.run_id,
            thaw.kind == StepKind.THAW,
            thaw.target == models.Step.target,
            thaw.state == StepState.DONE,
            thaw.id > models.Step.id,
        ),
    )


_RUNS: sa.Table = models.Run.__table__  # type: ignore[assignment]
_STEPS: sa.Table = models.Step.__table__  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """One run's outcome for :meth:`Journal.finish_runs`, with the steps
    (id, details merged in) it observed DONE in the same round."""

    run_id: str
    state: RunState
    summary: Mapping[str, Any] | None = None
    done_steps: tuple[tuple[int, Mapping[str, Any] | None], ...] = ()


def _run_row(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A run's fields as the table's columns (no steps)."""
    return {k: v for k, v in fields.items() if k != "steps"}


_LOCK = {
    table.name: sa.select(table)
    .where(table.c.id == sa.bindparam("key"))
    .with_for_update()
    for table in (_RUNS, _STEPS)
}
_LOCK_MANY = {
    table.name: sa.select(table)
    .where(table.c.id.in_(sa.bindparam("keys", expanding=True)))
    # In id order, as start_runs claims: two writers locking overlapping
    # rows wait for each other instead of deadlocking.
    .order_by(table.c.id)
    .with_for_update()
    for table in (_RUNS, _STEPS)
}
_UPDATE = {
    table.name: sa.update(table).where(table.c.id == sa.bindparam("key"))
    for table in (_RUNS, _STEPS)
}
_RUN_BY_KEY = sa.select(_RUNS).where(
    _RUNS.c.policy == sa.bindparam("policy"),
    _RUNS.c.target == sa.bindparam("target"),
    _RUNS.c.scheduled_at == sa.bindparam("when", type_=models.UTCDateTime()),
)
_RUNS_EXIST = sa.select(_RUNS.c.id).where(
    _RUNS.c.id.in_(sa.bindparam("keys", expanding=True))
)
_INSERT_STEPS = sa.insert(_STEPS).returning(
    _STEPS.c.id, sort_by_parameter_order=True
)
_SLOT_RUNS = (
    sa.select(_RUNS)
    .where(
        _RUNS.c.policy == sa.bindparam("policy"),
        _RUNS.c.scheduled_at
        == sa.bindparam("when", type_=models.UTCDateTime()),
    )
    .order_by(_RUNS.c.created_at, _RUNS.c.id)
)
_KNOWN_BACKUPS = sa.select(_STEPS.c.target, _STEPS.c.resource_id).where(
    _STEPS.c.kind == StepKind.BACKUP_CREATE,
    _STEPS.c.resource_id.is_not(None),
    _STEPS.c.target.in_(sa.bindparam("keys", expanding=True)),
)
_CREATIONS = sa.select(
    sa.func.count(),
    sa.func.coalesce(sa.func.sum(_STEPS.c.id), 0),
    sa.func.count(_STEPS.c.resource_id),
    sa.func.count(_STEPS.c.finished_at),
).where(
    _STEPS.c.kind == StepKind.BACKUP_CREATE,
    _STEPS.c.target.in_(sa.bindparam("keys", expanding=True)),
)
_CREATE_DETAILS = sa.select(_STEPS.c.resource_id, _STEPS.c.details).where(
    _STEPS.c.kind == StepKind.BACKUP_CREATE,
    _STEPS.c.state == StepState.DONE,
    _STEPS.c.resource_id.in_(sa.bindparam("keys", expanding=True)),
)
"""Statements built once: building and hashing a statement per call was
most of a journal write's CPU (SQLAlchemy caches the compiled form)."""


_VERSION_ROWS = sa.select(
    sa.table(VERSION_TABLE, sa.column("version_num")).c.version_num
)


def _locked(c: sa.Connection, table: sa.Table, key: object, what: str) -> Any:
    """One run or step read under a row lock (``FOR UPDATE``; on SQLite
    the transaction already holds the write lock). Raise NotFound."""
    row = c.execute(_LOCK[table.name], {"key": key}).one_or_none()
    if row is None:
        raise NotFound(f"no {what} {key}")
    return row


def _locked_many(
    c: sa.Connection, table: sa.Table, keys: Sequence[Any], what: str
) -> dict[Any, Any]:
    """Several runs or steps read under row locks, in id order, a few
    hundred per statement; by id. Raise NotFound for a missing one."""
    wanted = sorted(set(keys))
    rows: dict[Any, Any] = {}
    for start in range(0, len(wanted), _IN_BATCH):
        batch = wanted[start : start + _IN_BATCH]
        for row in c.execute(_LOCK_MANY[table.name], {"keys": batch}):
            rows[row.id] = row
    for key in wanted:
        if key not in rows:
            raise NotFound(f"no {what} {key}")
    return rows


def _update(
    c: sa.Connection, table: sa.Table, key: object, changes: Mapping[str, Any]
) -> None:
    """Set ``changes`` on one run or step."""
    c.execute(_UPDATE[table.name], {"key": key, **changes})


class _Merged:
    """A row as it reads after an update: the changed columns over the
    old ones (attribute access, like the row)."""

    def __init__(self, row: Any, changes: Mapping[str, Any]) -> None:
        self._row = row
        self._changes = changes

    def __getattr__(self, name: str) -> Any:
        if name in self._changes:
            return self._changes[name]
        return getattr(self._row, name)


class Journal:
    """Persistent records of runs and steps, shared by worker threads.

    Build it from configuration (``Journal(conf)``; it registers its
    options if nobody did) or from a URL (:meth:`from_url`), then call
    :meth:`upgrade` once at start-up.

    ``host`` names this daemon; runs it begins carry it, and the recovery
    queries return only this host's records unless ``any_host=True``, so
    daemons sharing one database never "recover" each other's live work.
    ``clock`` returns the current aware time; tests pass their own.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        host: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        options.register_opts(conf)
        group = conf[options.GROUP]
        self.host = host or socket.gethostname()
        self.retention = datetime.timedelta(days=group.retention_days)
        self._clock = clock or _utcnow
        self._engine = _make_engine(
            group.connection, busy_timeout=group.sqlite_busy_timeout
        )
        self._read = orm.sessionmaker(self._engine, expire_on_commit=False)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        self._write = orm.sessionmaker(self._writer, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process queue
        # on a lock rather than on SQLite's busy handler, which polls with
        # sleeps of up to 100 ms and so turns contention into latency.
        # Other processes still wait through the busy timeout.
        self._write_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock()
            if self._engine.dialect.name == "sqlite"
            else contextlib.nullcontext()
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        host: str | None = None,
        clock: Clock | None = None,
        retention_days: int | None = None,
        sqlite_busy_timeout: float | None = None,
    ) -> Self:
        """Build a journal on *url*, other options at their defaults.

        For tools and tests that have a URL rather than a config file.
        """
        conf = cfg.ConfigOpts()
        options.register_opts(conf)
        conf([], default_config_files=[], default_config_dirs=[])
        conf.set_override("connection", url, group=options.GROUP)
        if retention_days is not None:
            conf.set_override(
                "retention_days", retention_days, group=options.GROUP
            )
        if sqlite_busy_timeout is not None:
            conf.set_override(
                "sqlite_busy_timeout", sqlite_busy_timeout, options.GROUP
            )
        return cls(conf, host=host, clock=clock)

    # -- lifecycle ---------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The engine, for tests and diagnostics; prefer the methods."""
        return self._engine

    def close(self) -> None:
        """Close pooled connections. The object is unusable afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _alembic_config(self) -> alembic_config.Config:
        from alembic import config as alembic_config

        config = alembic_config.Config()
        config.set_main_option("script_location", MIGRATIONS)
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to *revision* (default: the newest).

        Safe to call at every start: at head it changes nothing. Daemons
        upgrading at once take turns (SQLite's write lock, a PostgreSQL
        advisory lock) and the later ones find nothing to do.

        A database already at this code's newest revision is told apart by
        one read of the version table, before alembic is imported:
        importing it (and through it every SQL dialect's DDL) was about
        0.35 s of CPU in every command, to learn that nothing changes.
        """
        if revision == "head" and self._stored_revisions() == (HEAD,):
            return
        from alembic import command as alembic_command

        config = self._alembic_config()
        writer = self._engine.execution_options(**{_WRITE: True})
        with _UPGRADE_LOCK:
            before = self.schema_revision()
            with writer.connect() as conn:
                config.attributes["connection"] = conn
                alembic_command.upgrade(config, revision)
                conn.commit()
            after = self.schema_revision()
        if after != before:
            LOG.info(
                "journal %s upgraded from schema %s to %s",
                self._engine.url.render_as_string(hide_password=True),
                before or "(empty)",
                after,
            )

    def _stored_revisions(self) -> tuple[str, ...]:
        """The version table's rows as they are (none when the table is
        missing or unreadable: then alembic decides, and says why)."""
        try:
            with self._engine.connect() as c:
                rows = c.execute(_VERSION_ROWS).scalars().all()
        except sa.exc.DBAPIError:
            return ()
        return tuple(str(row) for row in rows)

    def schema_revision(self) -> str | None:
        """The revision the database is at; None before :meth:`upgrade`."""
        from alembic import migration as alembic_migration

        with self._engine.connect() as c:
            ctx = alembic_migration.MigrationContext.configure(
                c, opts={"version_table": VERSION_TABLE}
            )
            return ctx.get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision this code knows, as alembic reads it from
        the migration scripts (a unit test checks ``HEAD`` against it)."""
        from alembic import script as alembic_script

        scripts = alembic_script.ScriptDirectory.from_config(
            self._alembic_config()
        )
        return scripts.get_current_head()

    # -- runs --------------------------------------------------------

    def begin_run(
        self,
        policy: str,
        target: str,
        scheduled_at: datetime.datetime,
        *,
        project_id: str | None,
        attrs: Mapping[str, Any] | None = None,
    ) -> RunHandle:
        """Record the run (policy, target, scheduled_at), or find it.

        The key is unique in the database, so calling this twice, from two
        threads or two daemons at once, yields the same run; only one
        caller gets ``created=True``. A run found rather than created
        keeps its own attrs. The run starts PENDING: claim it with
        :meth:`start_run` before acting. Raise ValueError for a naive
        *scheduled_at*.
        """
        when = to_utc(scheduled_at)
        found = self._find_run(policy, target, when)
        if found is not None:
            return RunHandle(**found, created=False)
        fields = self._new_run(policy, target, when, project_id, attrs)
        try:
            with self._core_writing() as c:
                c.execute(sa.insert(_RUNS), [_run_row(fields)])
        except sa.exc.IntegrityError:
            # Someone else inserted the same key between our look-up and
            # our insert: theirs is the run.
            found = self._find_run(policy, target, when)
            if found is None:
                raise
            return RunHandle(**found, created=False)
        return RunHandle(**fields, created=True)

    def begin_runs(
        self,
        policy: str,
        targets: Mapping[str, str | None],
        scheduled_at: datetime.datetime,
        *,
        attrs: Mapping[str, Any] | None = None,
    ) -> dict[str, RunHandle]:
        """:meth:`begin_run` for many targets of one slot at once (target
        to its project id): one read and one transaction, not two per
        target. Same guarantees: a run found keeps its state and attrs,
        only the inserter gets ``created=True``; if another daemon
        inserts one of them meanwhile, each is begun on its own.
        """
        when = to_utc(scheduled_at)
        wanted = sorted(targets)
        handles: dict[str, RunHandle] = {}
        with self._engine.connect() as c:
            for start in range(0, len(wanted), _IN_BATCH):
                query = sa.select(_RUNS).where(
                    _RUNS.c.policy == policy,
                    _RUNS.c.scheduled_at == when,
                    _RUNS.c.target.in_(wanted[start : start + _IN_BATCH]),
                )
                for row in c.execute(query):
                    handles[row.target] = RunHandle(
                        **_run_fields(row, False), created=False
                    )
        new = {
            target: self._new_run(policy, target, when, project, attrs)
            for target, project in targets.items()
            if target not in handles
        }
        if not new:
            return handles
        try:
            with self._core_writing() as c:
                c.execute(
                    sa.insert(_RUNS), [_run_row(f) for f in new.values()]
                )
        except sa.exc.IntegrityError:
            for target in new:
                handles[target] = self.begin_run(
                    policy,
                    target,
                    when,
                    project_id=targets[target],
                    attrs=attrs,
                )
            return handles
        for target, fields in new.items():
            handles[target] = RunHandle(**fields, created=True)
        return handles

    def _new_run(
        self,
        policy: str,
        target: str,
        when: datetime.datetime,
        project_id: str | None,
        attrs: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        now = self._now()
        return {
            "id": str(uuid.uuid4()),
            "policy": policy,
            "target": target,
            "scheduled_at": when,
            "project_id": project_id,
            "host": self.host,
            "state": RunState.PENDING,
            "attrs": dict(attrs or {}),
            "summary": None,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
            "steps": None,
        }

    def _find_run(
        self, policy: str, target: str, when: datetime.datetime
    ) -> dict[str, Any] | None:
        key = {"policy": policy, "target": target, "when": when}
        with self._engine.connect() as c:
            row = c.execute(_RUN_BY_KEY, key).one_or_none()
            return None if row is None else _run_fields(row, False)

    def start_run(self, run_id: str) -> RunRecord:
        """Claim a PENDING run: it becomes RUNNING, ``started_at`` is set.

        Only one caller can win; the others get InvalidTransition (from
        running to running), which means "someone else has it".
        """
        with self._core_writing() as c:
            return self._start_run(c, run_id)

    def start_runs(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        """Claim several PENDING runs in one transaction (a group about to
        start); return the records of those claimed. A run someone else
        claimed first is left out, as :meth:`start_run` would have
        refused it; an unknown id raises NotFound.

        Rows are locked in id order: two daemons claiming overlapping
        groups (the ring changing under them) then wait for each other
        instead of deadlocking, and the first takes the whole group."""
        wanted = sorted(set(run_ids))
        claimed: dict[str, RunRecord] = {}
        if not wanted:
            return claimed
        with self._core_writing() as c:
            # Two statements for the whole group, not two per run: the
            # rows locked in id order, the claims written as one batch.
            rows = _locked_many(c, _RUNS, wanted, "run")
            now = self._now()
            changes = {
                "state": RunState.RUNNING,
                "started_at": now,
                "updated_at": now,
            }
            for run_id in wanted:
                row = rows[run_id]
                try:
                    check_run_transition(
                        row.state, RunState.RUNNING, what=f"run {run_id}"
                    )
                except InvalidTransition:
                    continue
                claimed[run_id] = RunRecord(
                    **{**_run_fields(row, False), **changes}
                )
            if claimed:
                c.execute(
                    _UPDATE["runs"],
                    [{"key": run_id, **changes} for run_id in claimed],
                )
        return claimed

    def _start_run(self, c: sa.Connection, run_id: str) -> RunRecord:
        now = self._now()
        row = _locked(c, _RUNS, run_id, "run")
        state = check_run_transition(
            row.state, RunState.RUNNING, what=f"run {run_id}"
        )
        changes = {"state": state, "started_at": now, "updated_at": now}
        _update(c, _RUNS, run_id, changes)
        return RunRecord(**{**_run_fields(row, False), **changes})

    def finish_run(
        self,
        run_id: str,
        state: RunState,
        summary: Mapping[str, Any] | None = None,
        *,
        attrs: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Give a run its outcome; ``finished_at`` is set.

        *state* must be final and reachable from the run's current state
        (see :data:`~cinderbak.journal.states.RUN_TRANSITIONS`), else
        InvalidTransition. *summary* is free JSON for operators (counts,
        errors, the consistency reached). *attrs* are merged into the
        run's own: what a run learns only as it goes (an expiry pass
        plans while it deletes).
        """
        with self._core_writing() as c:
            return self._finish_run(c, run_id, state, summary, attrs)

    def finish_runs(self, ends: Iterable[RunEnd]) -> None:
        """Settle several runs, and the steps each observed DONE, in one
        transaction: what a poll round learnt, written at once.

        Each end is checked exactly as :meth:`complete_step` and
        :meth:`finish_run` check it. When one is refused (a transition
        the tables forbid, an unknown id) nothing of the batch is kept
        and each end is written on its own, so the others are recorded
        and the refused one raises as it would have alone.
        """
        ends = list(ends)
        if not ends:
            return
        try:
            with self._core_writing() as c:
                self._settle_ends(c, ends)
        except (InvalidTransition, NotFound):
            for end in ends:
                with self._core_writing() as c:
                    self._settle_ends(c, [end])

    def _settle_ends(self, c: sa.Connection, ends: list[RunEnd]) -> None:
        """Read every run and step of ``ends`` under lock in two queries,
        check each move against the tables, write them in two batches."""
        now = self._now()
        step_ids = [sid for end in ends for sid, _ in end.done_steps]
        steps = (
            {
                row.id: row
                for row in c.execute(_LOCK_MANY["steps"], {"keys": step_ids})
            }
            if step_ids
            else {}
        )
        runs = {
            row.id: row
            for row in c.execute(
                _LOCK_MANY["runs"], {"keys": [e.run_id for e in ends]}
            )
        }
        step_rows: list[dict[str, Any]] = []
        run_rows: list[dict[str, Any]] = []
        for end in ends:
            for step_id, details in end.done_steps:
                step = steps.get(step_id)
                if step is None:
                    raise NotFound(f"no step {step_id}")
                if step.state == StepState.DONE:
                    continue  # a replayed settlement changes nothing
                state = check_step_transition(
                    step.state, StepState.DONE, what=f"step {step_id}"
                )
                step_rows.append(
                    {
                        "key": step_id,
                        "state": state,
                        "details": {**step.details, **(details or {})},
                        "finished_at": now,
                        "updated_at": now,
                    }
                )
            if RunState(end.state) not in FINAL_RUN_STATES:
                raise ValueError(f"{end.state} is not a final run state")
            run = runs.get(end.run_id)
            if run is None:
                raise NotFound(f"no run {end.run_id}")
            if run.state == RunState(end.state):
                continue  # the first outcome stands
            run_rows.append(
                {
                    "key": end.run_id,
                    "state": check_run_transition(
                        run.state, end.state, what=f"run {end.run_id}"
                    ),
                    "summary": dict(end.summary or {}),
                    "finished_at": now,
                    "updated_at": now,
                }
            )
        if step_rows:
            c.execute(_UPDATE["steps"], step_rows)
        if run_rows:
            c.execute(_UPDATE["runs"], run_rows)

    def _finish_run(
        self,
        c: sa.Connection,
        run_id: str,
        state: RunState,
        summary: Mapping[str, Any] | None,
        attrs: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        if RunState(state) not in FINAL_RUN_STATES:
            raise ValueError(f"{state} is not a final run state")
        now = self._now()
        row = _locked(c, _RUNS, run_id, "run")
        if row.state == RunState(state):
            # Settling twice (recovery replayed, two settlers racing)
            # is a no-op: the first outcome stands.
            return RunRecord(**_run_fields(row, False))
        changes = {
            "state": check_run_transition(
                row.state, state, what=f"run {run_id}"
            ),
            "summary": dict(summary or {}),
            "finished_at": now,
            "updated_at": now,
        }
        if attrs:
            changes["attrs"] = {**(row.attrs or {}), **attrs}
        _update(c, _RUNS, run_id, changes)
        return RunRecord(**{**_run_fields(row, False), **changes})

    def get_run(self, run_id: str) -> RunRecord:
        """Return a run with its steps. Raise NotFound."""
        with self._read() as s:
            found = s.get(
                models.Run,
                run_id,
                options=[orm.selectinload(models.Run.steps)],
            )
            if found is None:
                raise NotFound(f"no run {run_id}")
            return _run_record(found, with_steps=True)

    # -- steps -------------------------------------------------------

    def begin_step(
        self,
        run_id: str,
        kind: StepKind | str,
        *,
        target: str,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """Record the intent to act, before acting; return the step id.

        *target* is what the step acts on (a volume, a server, a
        snapshot). For ``backup_create`` put the expected incremental
        parent in *details* under
        :data:`~cinderbak.journal.steps.EXPECTED_PARENT`. Raise
        ValueError for an unknown *kind*, NotFound for an unknown run.

        A final run may still get steps: recovery records the thaw or the
        cleanup it did for a run that ended badly.
        """
        return self.begin_steps([(run_id, kind, target, details)])[0]

    def begin_steps(
        self,
        intents: Iterable[
            tuple[str, StepKind | str, str, Mapping[str, Any] | None]
        ],
    ) -> list[int]:
        """:meth:`begin_step` for several (run id, kind, target, details)
        in one transaction, committed before any of them is acted on;
        return the step ids in order. Nothing is recorded if one is
        refused."""
        rows = [
            (run_id, StepKind(kind), target, dict(details or {}))
            for run_id, kind, target, details in intents
        ]
        with self._core_writing() as c:
            return self._insert_steps(c, rows)

    def _insert_steps(
        self,
        c: sa.Connection,
        rows: list[tuple[str, StepKind, str, dict[str, Any]]],
    ) -> list[int]:
        if not rows:
            return []
        now = self._now()
        runs = sorted({row[0] for row in rows})
        found: set[str] = set()
        for start in range(0, len(runs), _IN_BATCH):
            batch = runs[start : start + _IN_BATCH]
            found.update(c.execute(_RUNS_EXIST, {"keys": batch}).scalars())
        for run_id in runs:
            if run_id not in found:
                raise NotFound(f"no run {run_id}")
        # One statement for the batch; the ids come back in the order of
        # the rows.
        inserted = c.execute(
            _INSERT_STEPS,
            [
                {
                    "run_id": run_id,
                    "kind": kind,
                    "target": target,
                    "state": StepState.INTENT,
                    "resource_id": None,
                    "details": details,
                    "reason": None,
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": None,
                }
                for run_id, kind, target, details in rows
            ],
        )
        return [int(key) for key in inserted.scalars()]

    def record_thaw(
        self,
        run_id: str,
        server_id: str,
        freeze_step: int | None,
        *,
        freeze_details: Mapping[str, Any],
        thaw_details: Mapping[str, Any],
    ) -> int:
        """A guest was thawed: its freeze step DONE (when one was
        recorded) and a DONE thaw step, in one transaction, so the journal
        never shows the freeze finished without its thaw. Return the thaw
        step's id."""
        with self._core_writing() as c:
            if freeze_step is not None:
                self._finish_step(
                    c, freeze_step, StepState.DONE, None, None, freeze_details
                )
            thaw = self._insert_steps(
                c, [(run_id, StepKind.THAW, server_id, {})]
            )[0]
            self._finish_step(
                c, thaw, StepState.DONE, None, None, thaw_details
            )
            return thaw

    def set_step_resource(self, step_id: int, resource_id: str) -> None:
        """Record what the action created as soon as the cloud says so.

        The step becomes ACTING: after a crash between "the API returned
        the backup id" and "the backup is available", recovery waits for
        or deletes that exact resource. Setting the same id again is a
        no-op; a different one raises ValueError (two resources for one
        step would leak one of them).
        """
        self.set_step_resources([(step_id, resource_id)])

    def set_step_resources(self, resources: Iterable[tuple[int, str]]) -> None:
        """:meth:`set_step_resource` for several (step id, resource id) in
        one transaction (the ids a round of requests was given)."""
        resources = list(resources)
        if not resources:
            return
        try:
            with self._core_writing() as c:
                self._set_step_resources(c, resources)
        except (InvalidTransition, NotFound, ValueError):
            # One refused: the others are recorded, the refused one raises
            # as it would have alone.
            for step_id, resource_id in resources:
                with self._core_writing() as c:
                    self._set_step_resource(c, step_id, resource_id)

    def _set_step_resources(
        self, c: sa.Connection, resources: list[tuple[int, str]]
    ) -> None:
        """Each (step, resource) checked as :meth:`_set_step_resource`
        checks it, against the steps read under lock in one statement and
        written in one batch."""
        rows = _locked_many(c, _STEPS, [step for step, _ in resources], "step")
        # What each step holds as the batch goes: a step named twice is
        # checked against its first resource, as one at a time would.
        held = {key: (row.state, row.resource_id) for key, row in rows.items()}
        now = self._now()
        updates: dict[int, dict[str, Any]] = {}
        for step_id, resource_id in resources:
            state, current = held[step_id]
            if state == StepState.ACTING:
                if current == resource_id:
                    continue
                raise ValueError(
                    f"step {step_id} already has resource "
                    f"{current}, not {resource_id}"
                )
            state = check_step_transition(
                state, StepState.ACTING, what=f"step {step_id}"
            )
            held[step_id] = (state, resource_id)
            updates[step_id] = {
                "key": step_id,
                "state": state,
                "resource_id": resource_id,
                "updated_at": now,
            }
        if updates:
            c.execute(_UPDATE["steps"], list(updates.values()))

    def _set_step_resource(
        self, c: sa.Connection, step_id: int, resource_id: str
    ) -> None:
        row = _locked(c, _STEPS, step_id, "step")
        if row.state == StepState.ACTING:
            if row.resource_id == resource_id:
                return
            raise ValueError(
                f"step {step_id} already has resource "
                f"{row.resource_id}, not {resource_id}"
            )
        state = check_step_transition(
            row.state, StepState.ACTING, what=f"step {step_id}"
        )
        _update(
            c,
            _STEPS,
            step_id,
            {
                "state": state,
                "resource_id": resource_id,
                "updated_at": self._now(),
            },
        )

    def complete_step(
        self,
        step_id: int,
        *,
        resource_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> StepRecord:
        """Mark the step DONE; *details* are merged into the recorded ones.

        A step already DONE stays as it is (no-op); raise
        InvalidTransition from FAILED or UNDONE.
        """
        with self._core_writing() as c:
            return self._finish_step(
                c, step_id, StepState.DONE, None, resource_id, details
            )

    def fail_step(
        self,
        step_id: int,
        reason: str,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> StepRecord:
        """Mark the step FAILED with *reason* (shown to operators)."""
        with self._core_writing() as c:
            return self._finish_step(
                c, step_id, StepState.FAILED, reason, None, details
            )

    def undo_step(
        self,
        step_id: int,
        reason: str,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> StepRecord:
        """Mark the step UNDONE: its effect was reversed or is known absent.

        E.g. a leaked snapshot was deleted, or a guest recorded as frozen
        is gone. Allowed from any state but UNDONE.
        """
        with self._core_writing() as c:
            return self._finish_step(
                c, step_id, StepState.UNDONE, reason, None, details
            )

    def get_step(self, step_id: int) -> StepRecord:
        """Return one step. Raise NotFound."""
        with self._read() as s:
            row = s.get(models.Step, step_id)
            if row is None:
                raise NotFound(f"no step {step_id}")
            return _step_record(row)

    def _finish_step(
        self,
        c: sa.Connection,
        step_id: int,
        state: StepState,
        reason: str | None,
        resource_id: str | None,
        details: Mapping[str, Any] | None,
    ) -> StepRecord:
        now = self._now()
        row = _locked(c, _STEPS, step_id, "step")
        if row.state == state:
            # Already there: a replayed settlement changes nothing.
            return _step_record(row)
        changes: dict[str, Any] = {
            "state": check_step_transition(
                row.state, state, what=f"step {step_id}"
            ),
            "finished_at": now,
            "updated_at": now,
        }
        if reason is not None:
            changes["reason"] = reason
        if resource_id is not None:
            changes["resource_id"] = resource_id
        if details:
            changes["details"] = {**row.details, **details}
        _update(c, _STEPS, step_id, changes)
        return _step_record(_Merged(row, changes))

    @contextlib.contextmanager
    def _core_writing(self) -> Iterator[sa.Connection]:
        """A write transaction without the ORM: the run engine's hot path
        (several per backup) costs a fraction of a session's flush."""
        with self._write_lock, self._writer.begin() as c:
            yield c

    # -- recovery ----------------------------------------------------

    def unfinished_runs(
        self, *, any_host: bool = False, host: str | None = None
    ) -> list[RunRecord]:
        """Runs not in a final state, with their steps, oldest first.

        At start-up these are the runs the daemon died in (or never
        started). Each needs a decision from the caller: resume it, or
        clean up after it and finish it. ``host`` names another daemon
        whose runs are taken over (this host's by default).
        """
        query = (
            sa.select(models.Run)
            .where(models.Run.state.in_(IN_FLIGHT_RUN_STATES))
            .options(orm.selectinload(models.Run.steps))
            .order_by(models.Run.scheduled_at, models.Run.id)
        )
        if not any_host:
            query = query.where(models.Run.host == (host or self.host))
        with self._read() as s:
            return [_run_record(r, with_steps=True) for r in s.scalars(query)]

    def open_steps(
        self,
        kind: StepKind | str | None = None,
        *,
        any_host: bool = False,
        host: str | None = None,
    ) -> list[StepRecord]:
        """INTENT and ACTING steps, oldest first, of any run state.

        Open steps of a final run are resources a crash or a bug left
        unaccounted for; recovery should settle them too.
        """
        query = (
            sa.select(models.Step)
            .where(models.Step.state.in_(OPEN_STEP_STATES))
            .order_by(models.Step.id)
        )
        if kind is not None:
            query = query.where(models.Step.kind == StepKind(kind))
        return self._steps(query, any_host, host)

    def frozen_servers(
        self, *, any_host: bool = False, host: str | None = None
    ) -> list[StepRecord]:
        """Freeze steps that may have left a guest frozen, oldest first.

        A freeze (in any state but UNDONE: even a failed freeze may have
        frozen some filesystems) counts until a later thaw of the same
        target in the same run is DONE. Recovery thaws each and records
        it as a thaw step, or marks the freeze UNDONE when the guest is
        known not to be frozen.
        """
        query = (
            sa.select(models.Step)
            .where(_unthawed_freeze())
            .order_by(models.Step.id)
        )
        return self._steps(query, any_host, host)

    def steps_of_resource(
        self, kind: StepKind | str, resource_id: str
    ) -> list[StepRecord]:
        """Steps of one kind that acted on a resource, of any host, oldest
        first (e.g. the checksum recorded for a backup)."""
        query = (
            sa.select(models.Step)
            .where(
                models.Step.kind == StepKind(kind),
                models.Step.resource_id == resource_id,
            )
            .order_by(models.Step.id)
        )
        return self._steps(query, any_host=True)

    def projects_of_policy(self, policy: str) -> set[str]:
        """Projects that runs of ``policy`` were recorded in, of any host:
        where backups of a policy may live even after its volumes left."""
        run = models.Run
        query = (
            sa.select(run.project_id)
            .where(run.policy == policy, run.project_id.is_not(None))
            .distinct()
        )
        with self._read() as s:
            return {value for value in s.scalars(query) if value}

    def expected_parents(self, backup_ids: Iterable[str]) -> dict[str, str]:
        """Map each backup id created as an incremental to the parent
        expected when it was requested (its ``backup_create`` step)."""
        wanted = sorted(set(backup_ids))
        found: dict[str, str] = {}
        with self._engine.connect() as c:
            for start in range(0, len(wanted), _IN_BATCH):
                keys = {"keys": wanted[start : start + _IN_BATCH]}
                for backup_id, details in c.execute(_CREATE_DETAILS, keys):
                    parent = (details or {}).get(EXPECTED_PARENT)
                    if parent and (details or {}).get("kind") == INCREMENTAL:
                        found[backup_id] = str(parent)
        return found

    def unsettled_creations(
        self,
        create: StepKind | str,
        *,
        any_host: bool = False,
        host: str | None = None,
    ) -> list[StepRecord]:
        """Resources our finished runs created and nobody settled since.

        For ``snapshot_create``: every temporary snapshot with a known id
        not yet recorded as gone (UNDONE), whatever its step says: they
        are all ours to delete. For ``backup_create``: backups whose step
        is still open or FAILED (never DONE: a good backup is kept). Runs
        still in flight are left to whoever drives them.
        """
        step, run = models.Step, models.Run
        kind = StepKind(create)
        unsettled = (
            [
                StepState.INTENT,
                StepState.ACTING,
                StepState.DONE,
                StepState.FAILED,
            ]
            if kind == StepKind.SNAPSHOT_CREATE
            else [StepState.INTENT, StepState.ACTING, StepState.FAILED]
        )
        finished = sa.select(run.id).where(run.state.in_(FINAL_RUN_STATES))
        query = (
            sa.select(step)
            .where(
                step.kind == kind,
                step.resource_id.is_not(None),
                step.state.in_(unsettled),
                step.run_id.in_(finished),
            )
            .order_by(step.id)
        )
        return self._steps(query, any_host, host)

    def targets_of_slot(
        self, policy: str, scheduled_at: datetime.datetime
    ) -> set[str]:
        """Volumes with a run in the slot (any host, any state): what some
        daemon has begun and nobody else may begin again."""
        run = models.Run
        query = sa.select(run.target).where(
            run.policy == policy, run.scheduled_at == to_utc(scheduled_at)
        )
        with self._read() as s:
            return {str(t) for (t,) in s.execute(query)}

    def hosts_with_open_work(self) -> set[str]:
        """Hosts with runs in flight: what a survivor must take over if
        the host's daemon is gone. A guest is frozen only inside a run in
        flight (a run ends after its freeze window closes), so this also
        finds every host that may have left a guest frozen. Asked every
        few seconds by every daemon: one indexed query on the run state.
        """
        run = models.Run
        query = (
            sa.select(run.host)
            .where(run.state.in_(IN_FLIGHT_RUN_STATES))
            .distinct()
        )
        with self._read() as s:
            return {str(h) for (h,) in s.execute(query)}

    def beat(self, group: str, host: str) -> dict[str, int]:
        """Count one heartbeat of ``host`` in ``group`` and return every
        beat counter of the group (see :class:`models.Beat`): one
        transaction every few seconds per daemon."""
        beat = models.Beat
        mine = (beat.group == group) & (beat.host == host)
        with self._writing() as s:
            bumped = s.execute(
                sa.update(beat)
                .where(mine)
                .values(beats=beat.beats + 1, beat_at=self._now())
            )
            if not getattr(bumped, "rowcount", 0):
                s.add(
                    beat(group=group, host=host, beats=1, beat_at=self._now())
                )
                s.flush()
            query = sa.select(beat.host, beat.beats).where(beat.group == group)
            return {str(h): int(n) for h, n in s.execute(query)}

    def beat_rows(self) -> list[tuple[str, str, int, datetime.datetime]]:
        """Every daemon's heartbeat: (group, host, beats, last beat time
        on that daemon's clock), for operators."""
        beat = models.Beat
        query = sa.select(beat).order_by(beat.group, beat.host)
        with self._read() as s:
            return [
                (row.group, row.host, row.beats, row.beat_at)
                for row in s.scalars(query)
            ]

    def forget_beat(self, group: str, host: str) -> None:
        """A daemon leaving its group on purpose stops beating at once."""
        beat = models.Beat
        with self._writing() as s:
            s.execute(
                sa.delete(beat).where(
                    (beat.group == group) & (beat.host == host)
                )
            )

    def service_backups(self) -> list[tuple[str, str, int]]:
        """(tenant project, backup id, size in GiB) of every backup our
        runs made in the service project (ownership = service): what a
        tenant's volumes hold there, counted against its own caps."""
        step, run = models.Step, models.Run
        query = sa.select(
            run.project_id, run.attrs, step.resource_id, step.details
        ).where(
            step.run_id == run.id,
            step.kind == StepKind.BACKUP_CREATE,
            step.state == StepState.DONE,
            step.resource_id.is_not(None),
            run.project_id.is_not(None),
        )
        found: list[tuple[str, str, int]] = []
        with self._read() as s:
            for project, attrs, backup_id, details in s.execute(query):
                if (attrs or {}).get("ownership") != "service":
                    continue
                size = int((details or {}).get("size_gb") or 0)
                found.append((str(project), str(backup_id), size))
        return found

    def known_backups(self, volume_ids: Iterable[str]) -> dict[str, set[str]]:
        """Map each volume id to the backups our runs created for it (any
        host, any outcome): what an owner mark must be backed by."""
        wanted = sorted(set(volume_ids))
        found: dict[str, set[str]] = {}
        with self._engine.connect() as c:  # once per project a plan reads
            for start in range(0, len(wanted), _IN_BATCH):
                keys = {"keys": wanted[start : start + _IN_BATCH]}
                for volume_id, backup_id in c.execute(_KNOWN_BACKUPS, keys):
                    found.setdefault(volume_id, set()).add(str(backup_id))
        return found

    def creations_mark(self, volume_ids: Iterable[str]) -> tuple[int, ...]:
        """A mark of every backup creation recorded for these volumes,
        any host: it changes with each new creation step, each backup id
        or outcome recorded, and each step pruned. Expiry compares it to
        tell that no backup was made in a project since it last looked.
        """
        wanted = sorted(set(volume_ids))
        totals = [0, 0, 0, 0]
        with self._engine.connect() as c:
            for start in range(0, len(wanted), _IN_BATCH):
                keys = {"keys": wanted[start : start + _IN_BATCH]}
                row = c.execute(_CREATIONS, keys).one()
                totals = [t + int(v) for t, v in zip(totals, row, strict=True)]
        return tuple(totals)

    def quiet_looks(
        self, policy: str
    ) -> dict[str, tuple[str, datetime.datetime]]:
        """For each project: the fingerprint and time of the last look
        at its backups that found nothing ``policy`` could delete."""
        look = models.QuietLook
        query = sa.select(look).where(look.policy == policy)
        with self._read() as s:
            return {
                row.project_id: (row.fingerprint, row.looked_at)
                for row in s.scalars(query)
            }

    def remember_quiet(
        self,
        policy: str,
        fingerprints: Mapping[str, str],
        looked_at: datetime.datetime,
    ) -> None:
        """Record quiet looks (project id to fingerprint), replacing the
        projects' earlier ones. Two daemons may record the same project
        at once: both write what they saw, and either row will do."""
        if not fingerprints:
            return
        look = models.QuietLook
        when = to_utc(looked_at)
        projects = sorted(fingerprints)
        for attempt in (1, 2):
            try:
                with self._writing() as s:
                    s.execute(
                        sa.delete(look).where(
                            look.policy == policy,
                            look.project_id.in_(projects),
                        )
                    )
                    s.add_all(
                        look(
                            policy=policy,
                            project_id=p,
                            fingerprint=fingerprints[p],
                            looked_at=when,
                        )
                        for p in projects
                    )
                return
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise

    def forget_quiet(self, policy: str, project_ids: Iterable[str]) -> None:
        """Drop the quiet looks of these projects: a later look found
        something to do there."""
        projects = sorted(set(project_ids))
        if not projects:
            return
        look = models.QuietLook
        with self._writing() as s:
            s.execute(
                sa.delete(look).where(
                    look.policy == policy, look.project_id.in_(projects)
                )
            )

    def last_final_runs(
        self, policy: str, targets: Iterable[str]
    ) -> dict[str, RunRecord]:
        """For each target, the newest finished run of ``policy`` (e.g.
        when each backup was last verified, as we recorded it)."""
        run = models.Run
        wanted = sorted(set(targets))
        found: dict[str, RunRecord] = {}
        with self._read() as s:
            for start in range(0, len(wanted), _IN_BATCH):
                query = (
                    sa.select(run)
                    .where(
                        run.policy == policy,
                        run.target.in_(wanted[start : start + _IN_BATCH]),
                        run.state.in_(FINAL_RUN_STATES),
                        run.finished_at.is_not(None),
                    )
                    .order_by(run.finished_at)
                )
                for row in s.scalars(query):
                    found[row.target] = _run_record(row)
        return found

    def has_runs(self, policy: str) -> bool:
        """Whether any run of ``policy`` is recorded, of any host: tells
        a journal that never saw a policy from one that was lost."""
        query = sa.select(models.Run.id).where(models.Run.policy == policy)
        with self._read() as s:
            return s.execute(query.limit(1)).first() is not None

    def restore_point(self, group_id: str) -> dict[str, str | None] | None:
        """The restore point one freeze made, as we recorded it: each
        volume the freeze covered mapped to the backup made of it in that
        slot (None when none was recorded done). None when no freeze of
        ``group_id`` is recorded (pruned, lost, or not ours)."""
        step, run = models.Step, models.Run
        freeze = (
            sa.select(step.details, run.policy, run.scheduled_at)
            .join(run, step.run_id == run.id)
            .where(
                step.kind == StepKind.FREEZE,
                step.details["group"].as_string() == group_id,
            )
            .limit(1)
        )
        with self._read() as s:
            row = s.execute(freeze).first()
            if row is None:
                return None
            details, policy, scheduled_at = row
            volumes = [str(v) for v in (details or {}).get("volumes") or ()]
            found: dict[str, str | None] = dict.fromkeys(volumes)
            made = (
                sa.select(step.target, step.resource_id)
                .join(run, step.run_id == run.id)
                .where(
                    run.policy == policy,
                    run.scheduled_at == scheduled_at,
                    step.kind == StepKind.BACKUP_CREATE,
                    step.state == StepState.DONE,
                    step.target.in_(volumes),
                )
            )
            for volume_id, backup_id in s.execute(made):
                if backup_id:
                    found[volume_id] = backup_id
        return found

    def _steps(
        self, query: sa.Select[Any], any_host: bool, host: str | None = None
    ) -> list[StepRecord]:
        if not any_host:
            query = query.join(models.Run).where(
                models.Run.host == (host or self.host)
            )
        with self._read() as s:
            return [_step_record(r) for r in s.scalars(query)]

    # -- operators ---------------------------------------------------

    def in_flight(self) -> list[RunRecord]:
        """Unfinished runs of every host, with their steps."""
        return self.unfinished_runs(any_host=True)

    def runs(
        self,
        *,
        policy: str | None = None,
        target: str | None = None,
        slots: bool = False,
        failed_only: bool = False,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest scheduled first, without their steps.

        *slots* keeps the policy-level runs (target ``*``, or ``*@host``
        for one daemon's share of a slot).

        *failed_only* keeps the outcomes an operator should look at
        (:data:`~cinderbak.journal.states.FAILURE_RUN_STATES`).
        """
        query = sa.select(models.Run).order_by(
            models.Run.scheduled_at.desc(), models.Run.id
        )
        if policy is not None:
            query = query.where(models.Run.policy == policy)
        if target is not None:
            query = query.where(models.Run.target == target)
        if slots:
            query = query.where(models.Run.target.startswith("*"))
        if failed_only:
            query = query.where(models.Run.state.in_(FAILURE_RUN_STATES))
        with self._read() as s:
            return [_run_record(r) for r in s.scalars(query.limit(limit))]

    def last_run_per_policy(self) -> dict[str, PolicySlot]:
        """For each policy, its newest scheduled time and how it went.

        One scheduled time of a policy makes one run per target, so this
        counts that slot's runs per state rather than picking one.
        """
        run = models.Run
        newest = (
            sa.select(
                run.policy, sa.func.max(run.scheduled_at).label("newest")
            )
            .group_by(run.policy)
            .subquery()
        )
        query = (
            sa.select(
                run.policy,
                run.scheduled_at,
                run.state,
                sa.func.count(),
                sa.func.max(run.finished_at),
            )
            .join(
                newest,
                sa.and_(
                    run.policy == newest.c.policy,
                    run.scheduled_at == newest.c.newest,
                ),
            )
            .group_by(run.policy, run.scheduled_at, run.state)
        )
        counts: dict[str, dict[RunState, int]] = {}
        newest_at: dict[str, datetime.datetime] = {}
        finished_at: dict[str, datetime.datetime] = {}
        with self._read() as s:
            for policy, when, state, count, finished in s.execute(query):
                counts.setdefault(policy, {})[RunState(state)] = count
                newest_at[policy] = when
                if finished is not None and (
                    policy not in finished_at or finished > finished_at[policy]
                ):
                    finished_at[policy] = finished
        return {
            policy: PolicySlot(
                policy=policy,
                scheduled_at=newest_at[policy],
                states=states,
                last_finished_at=finished_at.get(policy),
            )
            for policy, states in counts.items()
        }

    def last_backup_per_target(
        self, *, policy: str | None = None
    ) -> dict[str, StepRecord]:
        """For each volume, its newest DONE ``backup_create`` step.

        ``resource_id`` is the backup id; ``expected_parent`` the
        incremental parent cinderbak asked for. Only what the journal
        still holds: pruned runs are forgotten, and Cinder remains the
        truth about which backups exist.
        """
        step = models.Step
        newest = sa.select(sa.func.max(step.id)).where(
            step.kind == StepKind.BACKUP_CREATE,
            step.state == StepState.DONE,
        )
        if policy is not None:
            newest = newest.join(models.Run).where(models.Run.policy == policy)
        query = sa.select(step).where(
            step.id.in_(newest.group_by(step.target).scalar_subquery())
        )
        with self._read() as s:
            return {r.target: _step_record(r) for r in s.scalars(query)}

    # -- reports and metrics (read only) ------------------------------

    def slot_runs(
        self,
        policy: str,
        scheduled_at: datetime.datetime,
        *,
        with_steps: bool = True,
    ) -> list[RunRecord]:
        """Every run of one slot (same policy and scheduled time): what a
        run report is made of. An expiry report needs the steps (one per
        deletion); a backup slot's does not, and at 10,000 volumes
        loading its 40,000 steps as objects was the reporting daemon's
        peak memory, so ``with_steps=False`` reads the runs alone."""
        if not with_steps:
            with self._engine.connect() as c:
                rows = c.execute(
                    _SLOT_RUNS,
                    {"policy": policy, "when": to_utc(scheduled_at)},
                )
                return [RunRecord(**_run_fields(r, False)) for r in rows]
        query = (
            sa.select(models.Run)
            .where(
                models.Run.policy == policy,
                models.Run.scheduled_at == to_utc(scheduled_at),
            )
            .options(orm.selectinload(models.Run.steps))
            .order_by(models.Run.created_at, models.Run.id)
        )
        with self._read() as s:
            return [_run_record(r, with_steps=True) for r in s.scalars(query)]

    def backup_marks(
        self,
        *,
        policy: str | None = None,
        before: datetime.datetime | None = None,
    ) -> dict[tuple[str, str], tuple[str | None, Any, Any]]:
        """Per (policy, volume) of the backup runs: (project id, finish
        of the newest succeeded run or None, first scheduled time), from
        runs scheduled before *before*. Verification, expiry and the
        policy-level runs are left out. One grouped query: the RPO
        clocks of every volume at start-up."""
        run = models.Run
        succeeded = sa.case(
            (run.state == RunState.SUCCEEDED, run.finished_at), else_=None
        )
        query = (
            sa.select(
                run.policy,
                run.target,
                sa.func.max(run.project_id),
                sa.func.max(succeeded),
                sa.func.min(run.scheduled_at),
            )
            .where(
                ~run.target.startswith("*"),
                ~run.policy.contains(":"),
                run.state.in_(FINAL_RUN_STATES),
            )
            .group_by(run.policy, run.target)
        )
        if policy is not None:
            query = query.where(run.policy == policy)
        if before is not None:
            query = query.where(run.scheduled_at < to_utc(before))
        decode = models.UTCDateTime().process_result_value
        found: dict[tuple[str, str], tuple[str | None, Any, Any]] = {}
        with self._read() as s:
            for name, target, project, last, first in s.execute(query):
                # Aggregates come back as the database's raw values.
                found[(name, target)] = (
                    project,
                    _as_aware(last, decode),
                    _as_aware(first, decode),
                )
        return found

    def unfinished_counts(self) -> dict[tuple[str, RunState], int]:
        """Runs not yet final, counted per (policy, state), all hosts:
        PENDING ones are queued, RUNNING ones in flight."""
        run = models.Run
        query = (
            sa.select(run.policy, run.state, sa.func.count())
            .where(
                run.state.in_(IN_FLIGHT_RUN_STATES),
                ~run.target.startswith("*"),
            )
            .group_by(run.policy, run.state)
        )
        with self._read() as s:
            return {
                (name, RunState(state)): count
                for name, state, count in s.execute(query)
            }

    def prune(self, older_than: datetime.datetime | None = None) -> int:
        """Delete runs finished before *older_than*, and their steps.

        By default *older_than* is now minus ``retention_days``. Runs that
        are not final, or still have an open step or an unthawed freeze,
        are kept whatever their age: they are evidence of something left
        to clean up. Deletes in small batches, so a large backlog does
        not hold the database lock for long. Return how many runs went.
        """
        cutoff = (
            self._now() - self.retention
            if older_than is None
            else to_utc(older_than)
        )
        step = models.Step
        unsettled = sa.exists().where(
            step.run_id == models.Run.id,
            sa.or_(step.state.in_(OPEN_STEP_STATES), _unthawed_freeze()),
        )
        victims = (
            sa.select(models.Run.id)
            .where(
                models.Run.state.in_(FINAL_RUN_STATES),
                models.Run.finished_at < cutoff,
                ~unsettled,
            )
            .limit(_PRUNE_BATCH)
        )
        total = 0
        while True:
            with self._writing() as s:
                ids = list(s.scalars(victims))
                if not ids:
                    return total
                # Explicit, not only ON DELETE CASCADE: a database opened
                # without foreign keys enforced must not keep orphans.
                s.execute(sa.delete(step).where(step.run_id.in_(ids)))
                s.execute(sa.delete(models.Run).where(models.Run.id.in_(ids)))
            total += len(ids)

    # -- helpers -----------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[orm.Session]:
        """A write transaction: committed on success, rolled back on error."""
        with self._write_lock, self._write.begin() as session:
            yield session

    def _now(self) -> datetime.datetime:
        return to_utc(self._clock())


def _as_aware(
    value: Any, decode: Callable[[Any, Any], datetime.datetime | None]
) -> datetime.datetime | None:
    """An aggregate's raw value as an aware UTC datetime (SQLite hands
    MAX() of a datetime column back as text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return decode(value, None)


def _make_engine(url: str, *, busy_timeout: float) -> sa.Engine:
    """Create the engine; for SQLite, one fit for a crash-safe journal."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a database restarted under a long-lived daemon.
        return sa.create_engine(parsed, pool_pre_ping=True)
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("mode"):
        raise ValueError(
            f"{url}: the journal must outlive the process; give SQLite a file"
        )
    parent = os.path.dirname(os.path.abspath(database))
    os.makedirs(parent, mode=0o750, exist_ok=True)
    engine = sa.create_engine(
        parsed,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
    )
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (see _sqlite_begin):
    # the sqlite3 module's own implicit BEGIN is deferred.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        # WAL: readers never block the writer nor the other way round.
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed intent survives a power cut, not only kill -9.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with
    # SQLITE_BUSY when another writer got in between, whatever the busy
    # timeout. Taking the write lock up front makes writers queue instead.
    if conn.get_execution_options().get(_WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")
