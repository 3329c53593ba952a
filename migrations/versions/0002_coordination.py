"""Shared pending store: task status, cancel requests and claim order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Adds what several instances need to share ``taskflow_pending``: the live status of each
task (for one live view across instances), a cancel-request flag (a task running on another
instance is cancelled by its owner) and an index serving "oldest unclaimed first".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("taskflow_pending") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="pending")
        )
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_taskflow_pending_created", "taskflow_pending", ["created_at", "task_id"])


def downgrade() -> None:
    op.drop_index("ix_taskflow_pending_created", table_name="taskflow_pending")
    with op.batch_alter_table("taskflow_pending") as batch:
        batch.drop_column("cancel_requested")
        batch.drop_column("status")
