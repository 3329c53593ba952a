"""Initial schema: task history, its tag index, and pending tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Self-contained on purpose (no imports from fastapi_taskflow): this revision must create the
same tables forever, whatever tables.py becomes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _timestamp() -> sa.types.TypeEngine[Any]:
    """UTC timestamps: TIMESTAMPTZ on PostgreSQL, DATETIME(6) on MySQL, text on SQLite."""
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _long_text() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "taskflow_history",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("func_name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("start_time", _timestamp(), nullable=True),
        sa.Column("end_time", _timestamp(), nullable=True),
        sa.Column("duration", sa.Double(), nullable=True),
        sa.Column("retries_used", sa.Integer(), nullable=False),
        sa.Column("error", _long_text(), nullable=True),
        sa.Column("stacktrace", _long_text(), nullable=True),
        sa.Column("logs", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("retry_of", sa.String(length=64), nullable=True),
        sa.Column("instance_id", sa.String(length=255), nullable=True),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_taskflow_history")),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_taskflow_history_created", "taskflow_history", ["created_at", "task_id"])
    op.create_index(
        "ix_taskflow_history_status_created",
        "taskflow_history",
        ["status", "created_at", "task_id"],
    )
    op.create_index(
        "ix_taskflow_history_func_created",
        "taskflow_history",
        ["func_name", "created_at", "task_id"],
    )
    op.create_index(
        "ix_taskflow_history_status_func_created",
        "taskflow_history",
        ["status", "func_name", "created_at", "task_id"],
    )
    op.create_index(
        "ix_taskflow_history_queue_created",
        "taskflow_history",
        ["queue", "created_at", "task_id"],
    )

    op.create_table(
        "taskflow_history_tags",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "key", name=op.f("pk_taskflow_history_tags")),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index(
        "ix_taskflow_history_tags_lookup",
        "taskflow_history_tags",
        ["key", "value", "created_at", "task_id"],
    )

    op.create_table(
        "taskflow_pending",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("func_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_taskflow_pending")),
        **MYSQL_TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("taskflow_pending")
    op.drop_index("ix_taskflow_history_tags_lookup", table_name="taskflow_history_tags")
    op.drop_table("taskflow_history_tags")
    for name in (
        "ix_taskflow_history_queue_created",
        "ix_taskflow_history_status_func_created",
        "ix_taskflow_history_func_created",
        "ix_taskflow_history_status_created",
        "ix_taskflow_history_created",
    ):
        op.drop_index(name, table_name="taskflow_history")
    op.drop_table("taskflow_history")
