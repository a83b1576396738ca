"""Configuration options of the journal (``[journal]``, ``[DEFAULT]``).

Laid out like masakari-monitors' ``conf/<group>.py``: the options as data,
:func:`register_opts` to put them on a ``ConfigOpts`` and :func:`list_opts`
for oslo-config-generator.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "journal"

DEFAULT_OPTS = [
    cfg.StrOpt(
        "state_path",
        default="/var/lib/cinderbak",
        help="Directory where the daemon keeps its local state, the "
        "embedded journal database among it. Other options refer to "
        "it as $state_path.",
    ),
]

JOURNAL_OPTS = [
    cfg.StrOpt(
        "connection",
        default="sqlite:///$state_path/cinderbak.sqlite",
        secret=True,
        help="SQLAlchemy URL of the journal database. SQLite (the "
        "default) suits one daemon; several daemons sharing the work "
        "must share one PostgreSQL or MySQL database, e.g. "
        "postgresql+psycopg://cinderbak:SECRET@db/cinderbak.",
    ),
    cfg.IntOpt(
        "retention_days",
        default=90,
        min=1,
        help="Finished runs older than this many days, and their steps, "
        "are deleted by pruning. Runs that are not finished, or that "
        "still have steps whose effect is unknown, are never pruned.",
    ),
    cfg.FloatOpt(
        "sqlite_busy_timeout",
        default=30.0,
        min=0.0,
        help="Seconds a SQLite writer waits for another writer to finish "
        "before giving up. Ignored for other databases.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the journal's options (and ``state_path``) on *conf*.

    Registering an identical ``state_path`` twice is harmless, so another
    module may declare it too.
    """
    conf.register_opts(DEFAULT_OPTS)
    conf.register_opts(JOURNAL_OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Return the options per group, for oslo-config-generator."""
    return [("DEFAULT", list(DEFAULT_OPTS)), (GROUP, list(JOURNAL_OPTS))]
