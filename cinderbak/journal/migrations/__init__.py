"""Alembic migrations of the journal schema.

Run by :meth:`cinderbak.journal.Journal.upgrade` with no ``alembic.ini``:
the script location is this package (``cinderbak.journal:migrations``),
so it works the same from a source tree and an installed package.

A new revision is a new file under ``versions/``: copy the newest one,
give it a new ``revision``, set ``down_revision`` to the newest's, and
set ``HEAD`` below to the new revision (a unit test fails until then).
Migrations describe the schema explicitly and never import
:mod:`cinderbak.journal.models`, which follows the newest schema and
would change old migrations under our feet. SQLite cannot alter most
constraints in place: use ``op.batch_alter_table`` (env.py turns batch
mode on).
"""

VERSION_TABLE = "cinderbak_journal_version"
"""Alembic's version table, named so a database shared with other
applications (or with Cinder itself) never mixes up their revisions."""

HEAD = "0005"
"""The newest revision: a journal whose version table holds exactly this
is current, and start-up need not import alembic to find that out."""
