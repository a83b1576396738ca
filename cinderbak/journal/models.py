"""Tables of the journal: one row per run, one row per step of a run.

These classes describe the schema as the code expects it; the schema in a
database is made and changed only by the migrations under
``migrations/versions`` (operators upgrade in place). A functional test
checks that the two agree.

Times are stored as naive UTC (portable across SQLite, PostgreSQL and
MySQL) and handed back as aware UTC datetimes by :class:`UTCDateTime`.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so later migrations can drop them."""

_UTC = datetime.UTC


class UTCDateTime(sa.types.TypeDecorator[datetime.datetime]):
    """An aware UTC datetime, stored naive in UTC.

    Naive datetimes are refused: whether 03:00 meant UTC or local time
    decides whether two calls name the same run.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: sa.Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None)

    def process_result_value(
        self, value: datetime.datetime | None, dialect: sa.Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=_UTC)


def to_utc(value: datetime.datetime) -> datetime.datetime:
    """Given an aware datetime, return it in UTC. Raise on a naive one."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} is ambiguous: pass an "
            "aware datetime (e.g. with tzinfo=datetime.UTC)"
        )
    return value.astimezone(_UTC)


class Base(orm.DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime.datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
    }


class Run(Base):
    """One scheduled run of a policy for one target.

    The unique key (policy, target, scheduled_at) is what makes starting
    the same run twice return the same row instead of a second backup.
    """

    __tablename__ = "runs"
    __table_args__ = (
        sa.UniqueConstraint(
            "policy", "target", "scheduled_at", name="uq_runs_key"
        ),
        sa.Index("ix_runs_policy_scheduled_at", "policy", "scheduled_at"),
        sa.Index("ix_runs_state", "state"),
        sa.Index("ix_runs_finished_at", "finished_at"),
    )

    # A UUID, not a counter: it is written into Cinder metadata
    # (cinderbak:run) and must never be reused after pruning.
    id: orm.Mapped[str] = orm.mapped_column(sa.String(36), primary_key=True)
    policy: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    # A volume id, or "server:<uuid>" for the volumes of one server.
    target: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    scheduled_at: orm.Mapped[datetime.datetime]
    project_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    # Which daemon recorded the run: several daemons may share one
    # database, and each recovers only its own runs.
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    attrs: orm.Mapped[dict[str, Any]]
    summary: orm.Mapped[dict[str, Any] | None]
    created_at: orm.Mapped[datetime.datetime]
    updated_at: orm.Mapped[datetime.datetime]
    started_at: orm.Mapped[datetime.datetime | None]
    finished_at: orm.Mapped[datetime.datetime | None]

    steps: orm.Mapped[list[Step]] = orm.relationship(
        back_populates="run",
        order_by="Step.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Step(Base):
    """One side effect of a run, written before it is attempted."""

    __tablename__ = "steps"
    __table_args__ = (
        sa.Index("ix_steps_run_id", "run_id"),
        sa.Index("ix_steps_kind_state", "kind", "state"),
        sa.Index("ix_steps_state", "state"),
        sa.Index("ix_steps_resource_id", "resource_id"),
        sa.Index("ix_steps_target_kind", "target", "kind"),
        # Never reuse an id on SQLite, even after the newest run is pruned.
        {"sqlite_autoincrement": True},
    )

    id: orm.Mapped[int] = orm.mapped_column(sa.Integer, primary_key=True)
    run_id: orm.Mapped[str] = orm.mapped_column(
        sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE")
    )
    kind: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    # What the step acts on: a volume id, server uuid, snapshot id...
    target: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    # What the action created or touched, as soon as it is known.
    resource_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    details: orm.Mapped[dict[str, Any]]
    reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[datetime.datetime]
    updated_at: orm.Mapped[datetime.datetime]
    finished_at: orm.Mapped[datetime.datetime | None]

    run: orm.Mapped[Run] = orm.relationship(back_populates="steps")


class Beat(Base):
    """A daemon's heartbeat in the journal, per coordination group.

    A second liveness signal next to the coordination backend's: a
    daemon cut off from etcd but still working (it reaches Cinder, its
    guests and this database) keeps beating here, so the others neither
    take its work over nor share it out. ``beats`` only ever grows;
    readers judge liveness by whether it changed lately on their own
    clock, so the hosts' clocks need not agree.
    """

    __tablename__ = "beats"

    group: orm.Mapped[str] = orm.mapped_column(
        sa.String(255), primary_key=True
    )
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
    beats: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    # For operators reading the table; not used to judge liveness.
    beat_at: orm.Mapped[datetime.datetime]


class QuietLook(Base):
    """The last listing of a project's backups, for one policy, that
    found nothing expiry could ever delete without something changing.

    An expiry pass does not list that project again while the
    fingerprint of what could change it (the policy's retention, the
    project's volumes, the journal's backup creations for them) is the
    same and the look is younger than ``[expiry] quiet_project_max_age``
    (see :mod:`cinderbak.quiet`).
    """

    __tablename__ = "quiet_looks"

    policy: orm.Mapped[str] = orm.mapped_column(
        sa.String(255), primary_key=True
    )
    project_id: orm.Mapped[str] = orm.mapped_column(
        sa.String(255), primary_key=True
    )
    fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    # The expiry pass's time (its slot), not a host's clock.
    looked_at: orm.Mapped[datetime.datetime]
