"""Journal schema revisions, oldest first (alembic ignores this file)."""
