"""Projects whose last backup listing found nothing expiry could delete.

An expiry pass skips listing such a project again while nothing that
could make a backup due has changed (:mod:`cinderbak.quiet`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quiet_looks",
        sa.Column("policy", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("looked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("policy", "project_id", name="pk_quiet_looks"),
    )


def downgrade() -> None:
    op.drop_table("quiet_looks")
