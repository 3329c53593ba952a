"""The SQL coordinator: the shared pending store with leases, claims and cancel requests.

Claims are atomic: one ``UPDATE … WHERE task_id IN (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING`` on PostgreSQL, the same without row locks on SQLite (one statement holds the
write lock), and ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in one transaction on
MySQL/MariaDB, whose ``UPDATE`` has no ``RETURNING``. Lease times are the instances' UTC
clocks: keep hosts in sync (NTP) and leases well above the expected skew.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic_core import from_json, to_json
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ..._errors import ConfigurationError
from ..._models import Accepted, Finished, TaskFilter, TaskPage, TaskRecord, TaskStatus, utcnow
from ..._query import page_of
from ..base import copies
from .bulk import joined_updates, literal_statements
from .dialect import in_ids, is_mysql
from .pending_writes import PendingWrites
from .records import from_pending_row, pending_rows
from .tables import PENDING, history, pending, utc_text
from .transaction import Work, run_read

if TYPE_CHECKING:
    from .backend import SqlBackend

_LIVE = (TaskStatus.PENDING.value, TaskStatus.RUNNING.value)


def _document(record: TaskRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", fallback=repr)


class SqlCoordinator:
    """:class:`~fastapi_taskflow.backends.base.Coordinator` on ``taskflow_pending``."""

    accepts_running = True  # accept() stores each record's status (see Coordinator)
    _accepts_documents = True  # accept() also takes PendingDocument entries (see Flusher)

    def __init__(self, backend: SqlBackend) -> None:
        self._backend = backend
        self._writes: dict[str, PendingWrites] = {}

    async def _write(self, work: Any, what: str) -> Any:
        backend = self._backend
        return await backend._writes.run(backend.engine, work, what)

    # ------------------------------------------------------------------ accepting

    async def accept(
        self,
        records: Sequence[Accepted],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        connection: Any = None,
    ) -> list[str]:
        if not records:
            return []
        if connection is not None and not isinstance(connection, AsyncConnection):
            raise ConfigurationError(
                f"connection= must be an SQLAlchemy AsyncConnection, got "
                f"{type(connection).__name__}"
            )
        if connection is not None:  # the caller's open transaction (transactional enqueue)
            _, work = self._accept_work(records, owner, lease_s, key_ttl_s, None)
            return await work(connection)
        fast = self._fast(self._backend.engine.dialect)
        count, work = self._accept_work(records, owner, lease_s, key_ttl_s, fast)
        return list(await self._write(work, f"accepting {count} tasks"))

    def _accept_work(
        self,
        records: Sequence[Accepted],
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        fast: PendingWrites | None,
    ) -> tuple[int, Work[list[str]]]:
        """How many tasks :meth:`accept` adds at most, and its unit of work (with ``fast``,
        for a transaction of ours). The records are read now: the caller may change them
        while the write waits."""
        now = utcnow()
        until = now + timedelta(seconds=lease_s) if owner is not None else None
        unique = list({r.task_id: r for r in records}.values())
        keyed = [r.task_id for r in unique if r.idempotency_key is not None]
        fresh_after = now - timedelta(seconds=key_ttl_s)
        insert = None
        if keyed:  # which ones to insert is known only inside the transaction
            unique = [r.model_copy(deep=True) if isinstance(r, TaskRecord) else r for r in unique]
        elif fast is not None:
            insert = fast.accept(unique, owner, until)
        rows = None
        if fast is None:
            rows = [
                {**row, "claimed_by": owner, "lease_until": until, "cancel_requested": False}
                for row in pending_rows(unique)
            ]  # fmt: skip

        async def work(conn: AsyncConnection) -> list[str]:
            if insert is not None:
                return list(await insert(conn))
            skip: set[str] = set()
            for matching in in_ids(history.c.task_id, keyed, conn.dialect.name):
                query = sa.select(history.c.task_id).where(
                    matching,
                    history.c.status == TaskStatus.SUCCESS.value,
                    sa.func.coalesce(history.c.end_time, history.c.created_at) > fresh_after,
                )
                skip.update(await conn.scalars(query))
            if fast is not None:
                candidates = [r for r in unique if r.task_id not in skip]
                return list(await fast.accept(candidates, owner, until)(conn)) if candidates else []
            assert rows is not None
            kept = [row for row in rows if row["task_id"] not in skip]
            return await _insert_new(conn, kept, owner, until) if kept else []

        return len(unique), work

    async def write_cycle(
        self,
        accepted: Sequence[Accepted],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        running: Sequence[str],
        finished: Sequence[Finished],
        finished_pending: Collection[str] | None = None,
    ) -> list[str]:
        """One flush cycle in one transaction: :meth:`accept` ``accepted`` (returning the
        ids added), mark the tasks whose ids are ``running`` as running and save ``finished`` to
        history (which removes them from the pending store), at the cost of one commit
        instead of three. The records are read before this returns control.

        A running mark is the task's status, set in the status column alone (readers take
        the status from there)."""
        later = None
        if finished and not self._backend._own_save():
            # save() is overridden: history goes through it, after this transaction
            # (copied now: the records are read before this returns control).
            later = copies(finished)
            finished, finished_pending = (), None
        fast = self._fast(self._backend.engine.dialect)
        work: Work[list[str]] | None = None
        one_statement = False  # its own transaction, run outside any (accept_and_mark)
        what = f"accepting {len(accepted)} and starting {len(running)} tasks"
        if fast is not None:
            keyed = any(r.idempotency_key is not None for r in accepted)
            marked = set(running)
            if not keyed and not any(r.task_id in marked for r in accepted):
                until = utcnow() + timedelta(seconds=lease_s) if owner is not None else None
                history = None
                if finished and fast.dialect == "sqlite":  # (SQLite: in the same trip)
                    history = self._backend._plain_history(finished, finished_pending)
                if not finished or history is not None:
                    work = fast.accept_and_mark(accepted, owner, until, running, history)
                    one_statement = work is not None
                    if finished:
                        what += f" and saving {len(finished)} finished ones"
        if work is None:
            insert = None
            if accepted:
                insert = self._accept_work(accepted, owner, lease_s, key_ttl_s, fast)[1]
            then: list[Work[None]] = []
            if running:
                ids = list(running)
                then.append(fast.mark_running(ids) if fast is not None else _mark_work(ids))
            if finished:
                then.append(self._backend._save_work(finished, finished_pending)[1])
            if insert is not None or then:

                async def combined(conn: AsyncConnection) -> list[str]:
                    added = await insert(conn) if insert is not None else []
                    for step in then:
                        await step(conn)
                    return added

                work = combined
                what = (
                    f"writing {len(accepted)} accepted, {len(running)} started and "
                    f"{len(finished)} finished tasks"
                )
        added = []
        if work is not None:  # (only the flusher's cycles call this: see run_here)
            backend, guard = self._backend, self._backend._writes
            if not one_statement:
                added = list(await guard.run_here(backend.engine, work, what))
            elif backend.engine.dialect.name == "sqlite":
                added = list(await backend._run_unit(work, what))
            else:
                added = list(await guard.run_held(backend.engine, work, what))
        if finished:
            self._backend._history_written()
        if later is not None:
            await self._backend.save(later)
        return added

    def _fast(self, dialect: Dialect) -> PendingWrites | None:
        """The driver-level pending-store writes for ``dialect``, if its driver has them."""
        if not PendingWrites.supports(dialect):
            return None
        writes = self._writes.get(dialect.name)
        if writes is None:
            writes = self._writes[dialect.name] = PendingWrites(dialect)
        return writes

    # ------------------------------------------------------------------ leases

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int,
        task_ids: Sequence[str] | None = None,
        reclaim_own: bool = False,
    ) -> list[TaskRecord]:
        now = utcnow()
        until = now + timedelta(seconds=lease_s)
        free = sa.or_(pending.c.claimed_by.is_(None), pending.c.lease_until < now)
        if reclaim_own:
            free = sa.or_(free, pending.c.claimed_by == owner)
        pick = sa.select(pending.c.task_id).where(free)
        if task_ids is not None:
            if not task_ids:
                return []
            pick = pick.where(pending.c.task_id.in_(list(task_ids)))
        pick = pick.order_by(pending.c.created_at, pending.c.task_id).limit(limit)
        claimed = {"claimed_by": owner, "lease_until": until, "cancel_requested": False}

        async def work(conn: AsyncConnection) -> list[TaskRecord]:
            if is_mysql(conn.dialect.name):
                locked = pick.with_for_update(skip_locked=True)
                ids = list(await conn.scalars(locked))
                if not ids:
                    return []
                await conn.execute(
                    sa.update(pending).where(pending.c.task_id.in_(ids)).values(claimed)
                )
                query = sa.select(pending.c.record, pending.c.status)
                rows = list(await conn.execute(query.where(pending.c.task_id.in_(ids))))
            else:
                if conn.dialect.name == "postgresql":
                    chosen = pick.with_for_update(skip_locked=True).scalar_subquery()
                else:
                    chosen = pick.scalar_subquery()
                statement = (
                    sa.update(pending)
                    .where(pending.c.task_id.in_(chosen))
                    .values(claimed)
                    .returning(pending.c.record, pending.c.status)
                )
                rows = list(await conn.execute(statement))
            found = [from_pending_row(document, status) for document, status in rows]
            return sorted(found, key=lambda r: (r.created_at, r.task_id))

        return list(await self._write(work, "claiming pending tasks"))

    async def renew(self, owner: str, task_ids: Sequence[str], *, lease_s: float) -> list[str]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return []
        until = utcnow() + timedelta(seconds=lease_s)

        async def work(conn: AsyncConnection) -> list[str]:
            held: set[str] = set()
            for matching in in_ids(pending.c.task_id, ids, conn.dialect.name):
                mine = sa.and_(matching, pending.c.claimed_by == owner)
                await conn.execute(sa.update(pending).where(mine).values(lease_until=until))
                held.update(await conn.scalars(sa.select(pending.c.task_id).where(mine)))
            return [task_id for task_id in ids if task_id not in held]

        return list(await self._write(work, f"renewing {len(ids)} leases"))

    async def release(self, owner: str, records: Sequence[TaskRecord]) -> None:
        if not records:
            return
        params = [
            {"b_id": r.task_id, "b_owner": owner,
             "b_record": _document(r.model_copy(update={"status": TaskStatus.PENDING}))}
            for r in records
        ]  # fmt: skip
        statement = (
            sa.update(pending)
            .where(pending.c.task_id == sa.bindparam("b_id"))
            .where(pending.c.claimed_by == sa.bindparam("b_owner"))
            .values(
                claimed_by=None,
                lease_until=None,
                status=TaskStatus.PENDING.value,
                record=sa.bindparam("b_record", type_=pending.c.record.type),
            )
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement, params)

        await self._write(work, f"releasing {len(params)} tasks")

    # ------------------------------------------------------------------ live view

    async def update(self, records: Sequence[TaskRecord]) -> None:
        if not records:
            return
        await self._write(self._update_work(records), f"updating {len(records)} live tasks")

    def _update_work(self, records: Sequence[TaskRecord]) -> Work[None]:
        """The unit of work of :meth:`update` (the records are read now)."""
        latest = list({r.task_id: r for r in records}.values())
        fast = self._fast(self._backend.engine.dialect)
        if fast is not None:
            return fast.update(latest)
        statement = (
            sa.update(pending)
            .where(pending.c.task_id == sa.bindparam("b_id"))
            .values(
                status=sa.bindparam("b_status"),
                record=sa.bindparam("b_record", type_=pending.c.record.type),
            )
        )

        if is_mysql(self._backend.engine.dialect.name):
            # One statement (per megabyte) rather than the driver's round trip per row.
            rows = [(r.task_id, r.status.value, r.model_dump_json(fallback=repr)) for r in latest]
            joined, oversized = joined_updates(PENDING, "task_id", ("status", "record"), rows)
            params = [
                {"b_id": task_id, "b_status": status, "b_record": from_json(document)}
                for task_id, status, document in oversized
            ]
        else:
            joined = []
            params = [
                {"b_id": r.task_id, "b_status": r.status.value, "b_record": _document(r)}
                for r in latest
            ]

        async def work(conn: AsyncConnection) -> None:
            for sql in joined:
                await conn.exec_driver_sql(sql)
            if params:
                await conn.execute(statement, params)

        return work

    async def live(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        query = sa.select(pending.c.record, pending.c.status)
        statuses = [s.value for s in filter.statuses if s.value in _LIVE]
        if filter.statuses:
            if not statuses:
                return TaskPage(items=[])
            query = query.where(pending.c.status.in_(statuses))
        if filter.func_name is not None:
            query = query.where(pending.c.func_name == filter.func_name)

        async def work(conn: AsyncConnection) -> list[TaskRecord]:
            rows = await conn.execute(query)
            return [from_pending_row(document, status) for document, status in rows]

        records = await run_read(self._backend.engine, work, "reading live tasks")
        return page_of(records, filter, limit, cursor)

    async def get_live(self, task_id: str) -> TaskRecord | None:
        query = sa.select(pending.c.record, pending.c.status).where(pending.c.task_id == task_id)

        async def work(conn: AsyncConnection) -> TaskRecord | None:
            row = (await conn.execute(query)).first()
            return from_pending_row(row[0], row[1]) if row is not None else None

        result: TaskRecord | None = await run_read(self._backend.engine, work, "reading a task")
        return result

    # ------------------------------------------------------------------ cancellation

    async def request_cancel(self, task_id: str) -> bool:
        statement = (
            sa.update(pending).where(pending.c.task_id == task_id).values(cancel_requested=True)
        )

        async def work(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(statement)).rowcount)

        return bool(await self._write(work, f"requesting cancellation of {task_id}"))

    async def cancel_requests(self, owner: str) -> list[str]:
        mine = sa.and_(pending.c.claimed_by == owner, pending.c.cancel_requested.is_(True))

        async def work(conn: AsyncConnection) -> list[str]:
            ids = list(await conn.scalars(sa.select(pending.c.task_id).where(mine)))
            if ids:
                flagged = sa.and_(mine, pending.c.task_id.in_(ids))
                await conn.execute(sa.update(pending).where(flagged).values(cancel_requested=False))
            return ids

        return list(await self._write(work, "reading cancel requests"))


_MYSQL_ACCEPT = (
    f"INSERT IGNORE INTO {PENDING} (task_id, func_name, created_at, record, claimed_by, "
    "lease_until, status, cancel_requested) VALUES "
)


async def _insert_new(
    conn: AsyncConnection, rows: list[dict[str, Any]], owner: str | None, until: datetime | None
) -> list[str]:
    """Insert ``rows`` unless their task id exists; return the ids this call inserted.

    The path of drivers without :class:`PendingWrites` and of callers' connections: one
    cached statement run as an ``executemany``, which SQLAlchemy batches into multi-row
    inserts; on MySQL/MariaDB multi-row ``INSERT IGNORE`` statements of literals (strings
    as hexadecimal literals, which read the same whatever the driver and SQL mode).
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(pending).on_conflict_do_nothing()
        return list((await conn.execute(pg.returning(pending.c.task_id), rows)).scalars())
    if dialect == "sqlite":
        lite = sqlite.insert(pending).on_conflict_do_nothing()
        return list((await conn.execute(lite.returning(pending.c.task_id), rows)).scalars())
    if is_mysql(dialect):
        # One multi-row statement of literals (per megabyte): aiomysql would escape each
        # value in Python, after SQLAlchemy's own per-row processing.
        values = [
            (row["task_id"], row["func_name"], utc_text(row["created_at"]),
             to_json(row["record"]).decode(), row["claimed_by"], utc_text(row["lease_until"]),
             row["status"], row["cancel_requested"])
            for row in rows
        ]  # fmt: skip
        statements, oversized = literal_statements(_MYSQL_ACCEPT, "", values)
        for sql in statements:
            await conn.exec_driver_sql(sql)
        if oversized:
            large = {value[0] for value in oversized}
            await conn.execute(
                mysql.insert(pending).prefix_with("IGNORE"),
                [row for row in rows if row["task_id"] in large],
            )
        ids = [row["task_id"] for row in rows]
        # Rows another instance inserted first carry its owner and lease, not ours.
        ours = sa.select(pending.c.task_id).where(
            pending.c.task_id.in_(ids),
            pending.c.claimed_by == owner if owner is not None else pending.c.claimed_by.is_(None),
        )
        if until is not None:
            ours = ours.where(pending.c.lease_until == until)
        return list(await conn.scalars(ours))
    raise ConfigurationError(f"no pending-store support for the {dialect!r} dialect")


def _mark_work(task_ids: Sequence[str]) -> Work[None]:
    """Running marks through SQLAlchemy (drivers without :class:`PendingWrites`)."""
    ids = list(dict.fromkeys(task_ids))

    async def work(conn: AsyncConnection) -> None:
        for matching in in_ids(pending.c.task_id, ids, conn.dialect.name):
            await conn.execute(
                sa.update(pending).where(matching).values(status=TaskStatus.RUNNING.value)
            )

    return work
