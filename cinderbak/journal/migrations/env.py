"""Alembic environment of the journal.

The journal hands over its own connection (``config.attributes
["connection"]``), so migrations run with the same SQLite pragmas and
locking as the daemon. Given only ``sqlalchemy.url`` (alembic's command
line), a plain engine is made instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cinderbak.journal.migrations import VERSION_TABLE

# Any constant will do; it only has to be the same in every daemon.
_PG_LOCK_KEY = 0x63626B6A  # "cbkj"


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        # SQLite alters tables by copying them; batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        # Daemons starting together each upgrade: one at a time, and the
        # later ones find the schema at head. SQLite gets the same from
        # the journal's BEGIN IMMEDIATE.
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": _PG_LOCK_KEY},
            )
        context.run_migrations()


def main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the journal has no offline (SQL script) mode")
main()
