"""History queries in SQL: filters, newest first, keyset pages, counts and statistics."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import _cursor
from ..._errors import ConfigurationError
from ..._models import FunctionStats, TaskFilter, TaskPage, TaskRecord, TaskStatus
from .records import from_history_row
from .tables import TAG_KEY_LENGTH, TAG_VALUE_LENGTH, history, history_tags
from .transaction import run_read

if TYPE_CHECKING:
    from .backend import SqlBackend

MAX_LIMIT = 10_000
PERCENTILES = (0.5, 0.95, 0.99)

_h = history.c


class Selection:
    """The rows a :class:`TaskFilter` selects: a FROM clause, conditions, and the
    ``(created_at, task_id)`` columns to order and page by.

    Tag filters join ``taskflow_history_tags`` once per tag; ordering then uses the first
    tag's copy of ``created_at``, so the database reads the newest matches straight off
    the tag index instead of sorting every tagged task.

    Several statuses (with at most a function and a time window besides) are paged as a
    UNION ALL of one ordered, limited branch per status (see :meth:`page`); ``where``
    still holds ``status IN (...)``, for counts and statistics.
    """

    def __init__(self, filter: TaskFilter) -> None:
        self.source: sa.FromClause = history
        self.created_at: sa.ColumnElement[Any] = _h.created_at
        self.task_id: sa.ColumnElement[str] = _h.task_id
        self.where: list[sa.ColumnElement[bool]] = []
        self.statuses: list[str] = []
        self._status_in: sa.ColumnElement[bool] | None = None
        # Every condition but the status is a range of the (status, [func_name,]
        # created_at, task_id) indexes: one branch per status reads just its newest rows.
        self._split = not filter.tags and not filter.text and filter.queue is None
        self._add_tags(filter.tags)
        self._add_fields(filter)

    def _add_tags(self, tags: dict[str, str]) -> None:
        for number, (key, value) in enumerate(tags.items()):
            if len(key) > TAG_KEY_LENGTH or len(value) > TAG_VALUE_LENGTH:
                self.where.append(sa.false())  # longer tags are never indexed
                continue
            tag = history_tags.alias(f"tag_{number}")
            self.source = self.source.join(
                tag, sa.and_(tag.c.task_id == _h.task_id, tag.c.key == key, tag.c.value == value)
            )
            if number == 0:
                self.created_at, self.task_id = tag.c.created_at, tag.c.task_id

    def _add_fields(self, filter: TaskFilter) -> None:
        self.statuses = statuses = list(dict.fromkeys(TaskStatus(s).value for s in filter.statuses))
        if len(statuses) == 1:
            self.where.append(_h.status == statuses[0])
        elif statuses:
            self._status_in = _h.status.in_(statuses)
            self.where.append(self._status_in)
        if filter.func_name is not None:
            self.where.append(_h.func_name == filter.func_name)
        if filter.queue is not None:
            self.where.append(_h.queue == filter.queue)
        if filter.since is not None:
            self.where.append(self.created_at >= filter.since)
        if filter.until is not None:
            self.where.append(self.created_at < filter.until)
        if filter.text:
            self.where.append(
                sa.or_(
                    _h.task_id.icontains(filter.text, autoescape=True),
                    _h.func_name.icontains(filter.text, autoescape=True),
                    _h.error.icontains(filter.text, autoescape=True),
                )
            )

    def after(self, cursor: str) -> sa.ColumnElement[bool]:
        """Rows strictly older than the cursor in (created_at, task_id) order.

        Written so every dialect uses the index range ``created_at <= c`` and filters the
        few rows sharing that timestamp by id.
        """
        created_at, task_id = _cursor.decode(cursor)
        return sa.and_(
            self.created_at <= created_at,
            sa.or_(self.created_at < created_at, self.task_id < task_id),
        )

    def page(self, limit: int, cursor: str | None) -> sa.Select[Any]:
        """Newest first, ``limit`` rows, after ``cursor``.

        With several statuses, ``status IN (...)`` leaves the database two poor plans: read
        the function's (or the whole) index newest first skipping other statuses, which
        walks the entire range when the statuses asked for are rare (80 ms at a million
        rows on SQLite), or read every match and sort. So when nothing but the statuses,
        a function and a time window is filtered, each status gets its own ordered, limited
        branch that reads its newest ``limit`` rows straight off the ``(status, [func_name,]
        created_at, task_id)`` index, and the union (at most ``limit`` rows per status) is
        sorted and cut. Statuses are disjoint, so the rows, their order and the cursors are
        those of the single query. Tag, queue and text filters are checked row by row
        anyway, where one walk for all the statuses reads fewer rows than one per status.
        """
        where = [*self.where, self.after(cursor)] if cursor else self.where
        if len(self.statuses) < 2 or not self._split:
            return self._ordered(sa.select(history), where, limit)
        common = [condition for condition in where if condition is not self._status_in]
        keys = sa.select(self.created_at.label("created_at"), self.task_id.label("task_id"))
        branches = [
            sa.select(self._ordered(keys, [_h.status == status, *common], limit).subquery(f"s{n}"))
            for n, status in enumerate(self.statuses)
        ]
        union = sa.union_all(*branches).subquery("matches")
        newest = (
            sa.select(union)
            .order_by(union.c.created_at.desc(), union.c.task_id.desc())
            .limit(limit)
            .subquery("newest")
        )
        return (
            sa.select(history)
            .join(newest, newest.c.task_id == _h.task_id)
            .order_by(newest.c.created_at.desc(), newest.c.task_id.desc())
        )

    def _ordered(
        self, columns: sa.Select[Any], where: list[sa.ColumnElement[bool]], limit: int
    ) -> sa.Select[Any]:
        return (
            columns.select_from(self.source)
            .where(*where)
            .order_by(self.created_at.desc(), self.task_id.desc())
            .limit(limit)
        )


def _interpolate(ranked: dict[int, float], count: int, fraction: float) -> float:
    """Linear interpolation between order statistics (PostgreSQL's percentile_cont)."""
    position = fraction * (count - 1)
    low, high = math.floor(position), math.ceil(position)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


class SqlHistoryRepository:
    """The :class:`HistoryRepository` of :class:`SqlBackend`, answered by the database."""

    def __init__(self, backend: SqlBackend) -> None:
        self._backend = backend

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record with this id, or ``None``."""

        async def work(conn: AsyncConnection) -> TaskRecord | None:
            row = (await conn.execute(sa.select(history).where(_h.task_id == task_id))).first()
            return None if row is None else from_history_row(row._mapping)

        return await run_read(self._backend.engine, work, f"reading task {task_id!r}")

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Records matching ``filter``, newest first, at most ``limit``; pass the page's
        ``next_cursor`` back as ``cursor`` for the next (older) page."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ConfigurationError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        statement = Selection(filter).page(limit + 1, cursor)

        async def work(conn: AsyncConnection) -> list[TaskRecord]:
            result = await conn.execute(statement)
            return [from_history_row(row) for row in result.mappings()]

        records = await run_read(self._backend.engine, work, "querying task history")
        if len(records) <= limit:
            return TaskPage(items=records, next_cursor=None)
        items = records[:limit]
        return TaskPage(items=items, next_cursor=_cursor.encode(items[-1]))

    async def count(self, filter: TaskFilter) -> int:
        """How many records match ``filter``."""
        selection = Selection(filter)
        statement = sa.select(sa.func.count()).select_from(selection.source).where(*selection.where)

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(statement)).scalar_one())

        return await run_read(self._backend.engine, work, "counting task history")

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        """Per-function totals, success rate and duration percentiles (p50/p95/p99,
        interpolated like ``percentile_cont``) over the records matching ``filter``.

        ``success_rate`` is ``success / (success + failed)``, ``None`` when neither.
        """
        selection = Selection(filter)

        async def work(conn: AsyncConnection) -> list[FunctionStats]:
            totals = (await conn.execute(_totals_statement(selection))).all()
            ranked = await _ranked_durations(conn, selection)
            return [_function_stats(row, ranked.get(row.func_name, {})) for row in totals]

        return await run_read(self._backend.engine, work, "computing task statistics")


def _totals_statement(selection: Selection) -> sa.Select[Any]:
    def status_count(status: TaskStatus) -> sa.ColumnElement[Any]:
        return sa.func.coalesce(sa.func.sum(sa.case((_h.status == status.value, 1), else_=0)), 0)

    return (
        sa.select(
            _h.func_name,
            sa.func.count().label("total"),
            status_count(TaskStatus.SUCCESS).label("success"),
            status_count(TaskStatus.FAILED).label("failed"),
            sa.func.count(_h.duration).label("timed"),
            sa.func.avg(_h.duration).label("duration_avg"),
        )
        .select_from(selection.source)
        .where(*selection.where)
        .group_by(_h.func_name)
        .order_by(_h.func_name)
    )


async def _ranked_durations(
    conn: AsyncConnection, selection: Selection
) -> dict[str, dict[int, float]]:
    """For each function, the durations at the ranks the percentiles need (0-based).

    The database ranks the durations with window functions and returns only the rows around
    each percentile's position, so no function's whole history crosses the wire.
    """
    ranked = (
        sa.select(
            _h.func_name,
            _h.duration,
            (sa.func.row_number().over(partition_by=_h.func_name, order_by=_h.duration) - 1).label(
                "rank"
            ),
            sa.func.count().over(partition_by=_h.func_name).label("n"),
        )
        .select_from(selection.source)
        .where(_h.duration.is_not(None), *selection.where)
        .subquery("ranked")
    )
    near = [
        sa.between(ranked.c.rank, fraction * (ranked.c.n - 1) - 1, fraction * (ranked.c.n - 1) + 1)
        for fraction in PERCENTILES
    ]
    statement = sa.select(ranked.c.func_name, ranked.c.rank, ranked.c.duration).where(sa.or_(*near))
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for func_name, rank, duration in await conn.execute(statement):
        found[func_name][int(rank)] = float(duration)
    return found


def _function_stats(row: Any, ranked: dict[int, float]) -> FunctionStats:
    success, failed, timed = int(row.success), int(row.failed), int(row.timed)
    finished = success + failed
    percentiles: list[float | None] = [
        _interpolate(ranked, timed, fraction) if timed else None for fraction in PERCENTILES
    ]
    return FunctionStats(
        func_name=row.func_name,
        total=int(row.total),
        success=success,
        failed=failed,
        success_rate=success / finished if finished else None,
        duration_p50=percentiles[0],
        duration_p95=percentiles[1],
        duration_p99=percentiles[2],
        duration_avg=None if row.duration_avg is None else float(row.duration_avg),
    )
