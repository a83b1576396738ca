"""Index steps by target and kind.

Planning and every expiry pass ask, project by project, which backups our
runs created for a set of volumes (``Journal.known_backups``: steps of
kind ``backup_create`` whose target is one of those volumes). With only
the kind indexed, each of those questions read every backup-create step
the journal holds: a plan over 500 projects read the whole history 500
times.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_target_kind", "steps", ["target", "kind"])


def downgrade() -> None:
    op.drop_index("ix_steps_target_kind", table_name="steps")
