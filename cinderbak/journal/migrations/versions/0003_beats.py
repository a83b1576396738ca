"""Daemons' heartbeats, per coordination group.

A daemon cut off from the coordination backend but still working keeps
beating in the journal, so the others do not take it for dead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "beats",
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("beats", sa.BigInteger(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("group", "host", name="pk_beats"),
    )


def downgrade() -> None:
    op.drop_table("beats")
