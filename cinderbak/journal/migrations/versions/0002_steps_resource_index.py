"""Index steps by the resource they created or touched.

Verification finds the checksum recorded for a backup by the backup's id,
and recovery finds the scratch volume of a verification by its id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_resource_id", "steps", ["resource_id"])


def downgrade() -> None:
    op.drop_index("ix_steps_resource_id", table_name="steps")
