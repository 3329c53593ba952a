"""Bulk writes that skip per-row SQLAlchemy processing.

SQLAlchemy's ``executemany`` converts every parameter of every row in Python, which costs
more than the database's own work for large batches. A :class:`BulkStatement` compiles a
Core statement once for the connected dialect, checks its parameter order, and is then run
with parameter tuples that are already what the driver expects (see ``records.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ..._errors import BackendError

ROWS_PER_EXECUTE = 20_000


class BulkStatement:
    """``statement`` compiled for ``dialect``, taking positional ``columns`` in order."""

    def __init__(self, statement: sa.Insert, dialect: Dialect, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        order = list(compiled.positiontup or ())
        if order != list(columns):
            raise BackendError(
                f"bulk statement parameters {order} do not match the columns {list(columns)}"
            )
        self.sql = compiled.string

    async def executemany(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run the statement once per row on ``conn``, in batches of bounded size."""
        for start in range(0, len(rows), ROWS_PER_EXECUTE):
            await conn.exec_driver_sql(self.sql, list(rows[start : start + ROWS_PER_EXECUTE]))
