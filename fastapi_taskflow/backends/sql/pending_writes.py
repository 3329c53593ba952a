"""The hot writes of the pending store in one driver-level statement per batch.

Write-ahead puts every persisted task through ``taskflow_pending`` before it runs (the
insert and, for a task that waited for a slot, the running mark), so these writes are fixed
SQL strings run straight on the driver: no statement built or compiled per batch, no per-row
SQLAlchemy processing, and the record documents serialised by pydantic-core. PostgreSQL
(asyncpg) takes the new tasks as one JSON parameter (``json_to_recordset``) and the other
batches as one array per column (``unnest``, ``ANY``); SQLite takes the new tasks as an
``executemany`` and their ids as one JSON parameter (``json_each``). Other drivers (and
connections given by the caller, whose driver may differ) use the portable SQLAlchemy
statements of the coordinator instead.

A running mark sets the ``status`` column alone: the row's document keeps the state it was
accepted with (the heartbeat publishes the live state later), and readers take the status
from the column (:func:`~.records.from_pending_row`). Writing the document again cost the
app a serialisation and the database a JSON parse for every task that waited for a slot.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pydantic_core import to_json
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..._models import Accepted, PendingDocument, TaskRecord, quoted
from .records import BulkEncoder
from .tables import PENDING, UTCDateTime
from .transaction import T

_COLUMNS = (
    "task_id, func_name, created_at, record, claimed_by, lease_until, status, cancel_requested"
)

# The batch is one JSON array of rows (json_to_recordset reads it in one pass): one
# parameter serialised by pydantic-core, where arrays of five columns cost asyncpg's encoder
# a few microseconds a task.
_PG_ACCEPT = f"""
INSERT INTO {PENDING} ({_COLUMNS})
SELECT t.i, t.f, t.c, t.r, $2::varchar, $3::timestamptz, t.s, false
FROM json_to_recordset($1::json) AS t(i varchar, f varchar, c timestamptz, r json, s varchar)
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id
"""


def _pg_mark(ids: str) -> str:
    return f"UPDATE {PENDING} SET status = 'running' WHERE task_id = ANY({ids}::varchar[])"


_PG_MARK = _pg_mark("$1")

# Both at once: data-modifying CTEs make one statement, atomic on its own, one round trip.
# The update cannot see rows the insert adds (one snapshot): callers never mark a task in
# the cycle that adds it.
_PG_ACCEPT_AND_MARK = f"""
WITH added AS ({_PG_ACCEPT}), marked AS ({_pg_mark("$4")})
SELECT task_id FROM added
"""

_PG_UPDATE = f"""
UPDATE {PENDING} AS p SET status = t.status, record = t.record::json
FROM unnest($1::varchar[], $2::varchar[], $3::text[]) AS t(task_id, status, record)
WHERE p.task_id = t.task_id
"""

_SQLITE_ACCEPT = f"""
INSERT INTO {PENDING} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0)
ON CONFLICT (task_id) DO NOTHING
"""

# Which of the ids (a JSON array) carry this owner and lease: those this transaction added.
_SQLITE_OURS = f"""
SELECT task_id FROM {PENDING}
WHERE task_id IN (SELECT value FROM json_each(?)) AND claimed_by IS ? AND lease_until IS ?
"""

_SQLITE_PRESENT = f"SELECT task_id FROM {PENDING} WHERE task_id IN (SELECT value FROM json_each(?))"

_SQLITE_UPDATE = f"UPDATE {PENDING} SET status = ?, record = ? WHERE task_id = ?"

# Finished tasks leave the pending store (their ids as one JSON array).
_SQLITE_UNPEND = f"DELETE FROM {PENDING} WHERE task_id IN (SELECT value FROM json_each(?))"


class PlainHistory(NamedTuple):
    """A history write as its upsert, the upsert's parameter rows and the ids to take out
    of the pending store (see ``SqlBackend._plain_history``)."""

    sql: str
    rows: list[tuple[Any, ...]]
    pended: list[str]


_SQLITE_MARK = f"UPDATE {PENDING} SET status = 'running' WHERE task_id = ?"

_FAST = frozenset({("postgresql", "asyncpg"), ("sqlite", "aiosqlite")})


def documents(records: Sequence[Accepted]) -> list[str]:
    """Each record as the JSON document stored in ``taskflow_pending.record``."""
    return [
        r.document if isinstance(r, PendingDocument) else r.model_dump_json(fallback=repr)
        for r in records
    ]


def _pg_rows(records: Sequence[Accepted]) -> str:
    """The rows of :data:`_PG_ACCEPT`: one JSON array (records as JSON objects; a
    :class:`PendingDocument` spliced in as the text it is)."""
    rows = [
        f'{{"i":{quoted(r.task_id)},"f":{quoted(r.func_name)},"c":"{r.created_text}",'
        f'"r":{r.document},"s":"{r.status.value}"}}'
        if isinstance(r, PendingDocument)
        else to_json(
            {"i": r.task_id, "f": r.func_name, "c": r.created_at, "r": r, "s": r.status.value},
            fallback=repr,
        ).decode()
        for r in records
    ]
    return f"[{','.join(rows)}]"


def sqlite_stamp(document: PendingDocument) -> str:
    """``created_at`` as SQLite stores it (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    text = document.created_text
    return f"{text[:10]} {text[11:26]}"


Statement = Callable[[AsyncConnection], Awaitable[Any]]


async def _aiosqlite(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under ``conn``, inside the transaction ``conn`` began.

    Each call on it is one trip to its thread; SQLAlchemy's cursor takes three or four per
    statement (open, execute, fetch, close), which for a few small statements per flush
    cycle costs more than the statements themselves.
    """
    return (await conn.get_raw_connection()).driver_connection


async def _sqlite_accept(
    ids: list[str], rows: list[tuple[Any, ...]], owner: str | None, lease_until: Any, conn: Any
) -> list[str]:
    """Insert ``rows`` (one ``executemany``, run by SQLite's C loop), skipping ids present.

    SQLite's ``executemany`` returns no rows, so which ids were added comes from the count
    of inserted rows: all of them (one round trip), or else those holding this owner and
    lease, whose expiry is unique to this call (a row inserted first by another instance,
    or earlier by this one, has another). Without an owner, the ids present are read first.
    The transaction holds SQLite's write lock throughout, so nothing changes in between.
    """
    driver = await _aiosqlite(conn)
    if owner is None:
        found = await driver.execute_fetchall(_SQLITE_PRESENT, (to_json(ids).decode(),))
        present = {row[0] for row in found}
        await driver.executemany(_SQLITE_ACCEPT, rows)
        return [task_id for task_id in ids if task_id not in present]
    cursor = await driver.executemany(_SQLITE_ACCEPT, rows)
    if cursor.rowcount == len(rows):
        return ids
    params = (to_json(ids).decode(), owner, lease_until)
    return [row[0] for row in await driver.execute_fetchall(_SQLITE_OURS, params)]


def _in_driver_thread(driver: Any) -> Callable[..., Awaitable[Any]] | None:
    """How to call a function in the thread of aiosqlite connection ``driver``: its private
    ``_execute`` (which each of its methods goes through), if it has one."""
    run: Callable[..., Awaitable[Any]] | None = getattr(driver, "_execute", None)
    return run if run is not None and hasattr(driver, "_conn") else None


_SQLITE_LIMIT_VARIABLE_NUMBER = 9  # (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
_SQLITE_MARK_MANY = (
    f"UPDATE {PENDING} SET status = 'running' WHERE task_id IN (SELECT value FROM json_each(?))"
)
_VALUES_ROW = re.compile(r"VALUES\s*(\((?:\?\s*,\s*|\d+\s*,\s*)*(?:\?|\d+)\))", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _multi_row(sql: str, count: int) -> str | None:
    """``sql``, an ``INSERT … VALUES (?, …) …`` of one row, for ``count`` rows; None if it
    does not have that shape."""
    found = _VALUES_ROW.search(sql)
    if found is None or sql.count("?") != found.group(1).count("?"):
        return None
    row = found.group(1)
    return f"{sql[: found.start(1)]}{', '.join([row] * count)}{sql[found.end(1) :]}"


def _many_rows(db: Any, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """Run ``sql`` (an ``INSERT`` of one row) for ``rows`` as few multi-row statements, each
    one step of SQLite (the driver's ``executemany`` takes back the GIL for every row, and
    waits for it while the event loop is busy); returns the rows inserted."""
    width = len(rows[0]) if rows else 0
    limit = db.getlimit(_SQLITE_LIMIT_VARIABLE_NUMBER) if width else 0
    per = max(1, min(limit // max(width, 1), 100))
    if width == 0 or _multi_row(sql, 1) is None:
        return int(db.executemany(sql, rows).rowcount)
    inserted = 0
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        statement = _multi_row(sql, len(part))
        assert statement is not None
        flat = [value for row in part for value in row]
        inserted += db.execute(statement, flat).rowcount
    return inserted


# A history write as the driver takes it: the upsert, its rows, and the ids to take out of
# the pending store as one JSON array (None: none).
_HistoryRows = tuple[str, list[tuple[Any, ...]], str | None]


def _history_rows(history: PlainHistory) -> _HistoryRows:
    pended = to_json(history.pended).decode() if history.pended else None
    return history.sql, history.rows, pended


def _sqlite_history(db: Any, history: _HistoryRows, *, one_step: bool) -> None:
    """Write ``history`` on sqlite3 connection ``db``. ``one_step``: the rows as multi-row
    statements (in a cycle, which the event loop waits for), else one row per step (the
    event loop may be busy meanwhile, and a statement of many rows holds the GIL while its
    parameters are bound: a request would wait for it)."""
    sql, rows, pended = history
    if one_step:
        _many_rows(db, sql, rows)
    else:
        db.executemany(sql, rows)
    if pended is not None:
        db.execute(_SQLITE_UNPEND, (pended,))


def _sqlite_cycle(
    db: Any,
    ids: list[str],
    rows: list[tuple[Any, ...]],
    owner: str,
    lease_until: Any,
    marks: list[tuple[str]],
    history: _HistoryRows | None,
) -> list[str]:
    """:meth:`PendingWrites.accept_and_mark`'s statements on sqlite3 connection ``db``:
    insert ``rows``, mark ``marks`` running, write ``history``; returns the ids added (see
    :func:`_sqlite_accept`)."""
    added = ids
    if rows and _many_rows(db, _SQLITE_ACCEPT, rows) != len(rows):
        params = (to_json(ids).decode(), owner, lease_until)
        added = [row[0] for row in db.execute(_SQLITE_OURS, params).fetchall()]
    if marks:
        db.execute(_SQLITE_MARK_MANY, (to_json([m[0] for m in marks]).decode(),))
    if history is not None:
        _sqlite_history(db, history, one_step=True)
    return added


def _sqlite_unit(driver: Any, steps: Callable[[Any], T]) -> T:
    """``steps(db)`` and the commit, or the rollback, in one call: run in aiosqlite's own
    thread for ``driver`` (as each of its methods is), on its sqlite3 connection ``db``, in
    one trip to that thread instead of one per statement."""
    db = driver._conn  # the sqlite3 connection, used in the thread that owns it
    try:
        result = steps(db)
        db.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            db.rollback()
        raise
    return result


async def _driver_unit(driver: Any, steps: Callable[[], Awaitable[T]]) -> T:
    """:func:`_sqlite_unit` where aiosqlite cannot run it in its thread: ``steps()`` (one trip
    per statement) and the commit, or the rollback. Not left to the pool's reset (an engine
    may be configured without one): a failed unit leaves no transaction open."""
    try:
        result = await steps()
        await driver.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await driver.rollback()
        raise
    return result


async def _driver_history(driver: Any, history: _HistoryRows) -> None:
    sql, rows, pended = history
    await driver.executemany(sql, rows)
    if pended is not None:
        await driver.execute(_SQLITE_UNPEND, (pended,))


def sqlite_history(history: PlainHistory) -> Statement:
    """On SQLite (aiosqlite), ``history`` as a unit of work that is its own transaction (run
    it as :meth:`PendingWrites.accept_and_mark`'s): one trip to the driver's thread where
    aiosqlite has ``_execute``, one row per step."""
    written = _history_rows(history)

    async def run(conn: AsyncConnection) -> None:
        driver = await _aiosqlite(conn)
        in_thread = _in_driver_thread(driver)
        if in_thread is not None:
            steps = functools.partial(_sqlite_history, history=written, one_step=False)
            await in_thread(_sqlite_unit, driver, steps)
        else:
            await _driver_unit(driver, functools.partial(_driver_history, driver, written))

    return run


class PendingWrites:
    """The fast accept and update statements of one dialect and driver.

    Each method reads the records at once and returns the statement, ready to run on a
    connection (possibly later, and again if the transaction is retried). On SQLite the
    statement must run in a transaction the library began (``BEGIN IMMEDIATE``), not on a
    caller's connection.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect.name
        self._stamps: BulkEncoder = UTCDateTime().bulk_processor(dialect)

    @staticmethod
    def supports(dialect: Dialect) -> bool:
        return (dialect.name, dialect.driver) in _FAST

    def accept(
        self, records: Sequence[Accepted], owner: str | None, until: datetime | None
    ) -> Statement:
        """Insert ``records`` (pending, or running for tasks that start as soon as this is
        written) held by ``owner`` until ``until`` unless their task id exists; the
        statement returns the ids it inserted."""
        (lease_until,) = self._stamps([until])
        if self.dialect == "postgresql":
            sql = _PG_ACCEPT
            params: tuple[Any, ...] = (_pg_rows(records), owner, lease_until)
        else:
            rows = self._sqlite_rows(records, owner, lease_until)
            ids = [r.task_id for r in records]
            return functools.partial(_sqlite_accept, ids, rows, owner, lease_until)

        async def run(conn: AsyncConnection) -> list[str]:
            return list((await conn.exec_driver_sql(sql, params)).scalars())

        return run

    def _sqlite_rows(
        self, records: Sequence[Accepted], owner: str | None, lease_until: Any
    ) -> list[tuple[Any, ...]]:
        """The parameters of :data:`_SQLITE_ACCEPT` for ``records``."""
        full = [r for r in records if not isinstance(r, PendingDocument)]
        stamps = iter(self._stamps([r.created_at for r in full]) if full else ())
        return [
            (r.task_id, r.func_name, sqlite_stamp(r), r.document, owner, lease_until,
             r.status.value)
            if isinstance(r, PendingDocument)
            else (r.task_id, r.func_name, next(stamps), r.model_dump_json(fallback=repr),
                  owner, lease_until, r.status.value)
            for r in records
        ]  # fmt: skip

    def accept_and_mark(
        self,
        accepted: Sequence[Accepted],
        owner: str | None,
        until: datetime | None,
        running: Sequence[str],
        history: PlainHistory | None = None,
    ) -> Statement | None:
        """:meth:`accept` and :meth:`mark_running` as a unit of work that is its own
        transaction: run it outside any (``WriteGuard.run_held`` or ``run_here(...,
        own_transaction=True)``); None where there is no such form.

        PostgreSQL: one statement, atomic by itself, so the round trips of ``BEGIN`` and
        ``COMMIT`` are saved. SQLite (``owner`` given): the insert opens the transaction
        itself, pysqlite's implicit ``BEGIN IMMEDIATE`` before a write (see
        :func:`~.dialect.install_sqlite_events`), and the unit commits it. That is one
        trip to the driver's thread fewer than an explicit ``BEGIN IMMEDIATE``; nothing is
        read before the write lock is held (the insert comes first). On aiosqlite the whole
        unit is one trip: :func:`_sqlite_unit`, run in its thread like its own methods
        (through its private ``_execute``; where that is missing, one trip per step).
        ``history`` (SQLite only) is written in the same transaction."""
        if history is not None and (self.dialect != "sqlite" or owner is None):
            return None
        if self.dialect == "sqlite":
            if owner is None:  # (its accept reads first: that needs the explicit BEGIN)
                return None
            (lease_until,) = self._stamps([until])
            rows = self._sqlite_rows(accepted, owner, lease_until)
            ids = [r.task_id for r in accepted]
            marks = [(task_id,) for task_id in running]
            written = _history_rows(history) if history is not None else None

            async def run_sqlite(conn: AsyncConnection) -> list[str]:
                driver = await _aiosqlite(conn)
                in_thread = _in_driver_thread(driver)
                if in_thread is not None:
                    steps = functools.partial(
                        _sqlite_cycle, ids=ids, rows=rows, owner=owner,
                        lease_until=lease_until, marks=marks, history=written,
                    )  # fmt: skip
                    return list(await in_thread(_sqlite_unit, driver, steps))

                async def steps_here() -> list[str]:
                    added = (
                        await _sqlite_accept(ids, rows, owner, lease_until, conn) if rows else []
                    )
                    if marks:
                        await driver.executemany(_SQLITE_MARK, marks)
                    if written is not None:
                        await _driver_history(driver, written)
                    return added

                return list(await _driver_unit(driver, steps_here))

            return run_sqlite
        if self.dialect != "postgresql":
            return None
        # Each part alone when the other is empty: the combined statement costs the server
        # more than either (its UPDATE is planned for a list of any length).
        sql: str
        params: tuple[Any, ...]
        if not running:
            sql, params = _PG_ACCEPT, (_pg_rows(accepted), owner, self._stamps([until])[0])
        elif not accepted:
            sql, params = _PG_MARK, (list(running),)
        else:
            sql = _PG_ACCEPT_AND_MARK
            params = (_pg_rows(accepted), owner, self._stamps([until])[0], list(running))

        async def run(conn: AsyncConnection) -> list[str]:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            try:
                if not accepted:
                    await driver.execute(sql, *params)
                    return []
                rows = await driver.fetch(sql, *params)
            except OSError:
                raise
            except Exception as exc:  # asyncpg's own: in SQLAlchemy's terms for the retry
                raise DBAPIError(sql, None, exc) from exc
            return [row[0] for row in rows]

        return run

    def mark_running(self, task_ids: Sequence[str]) -> Statement:
        """Set the status of these tasks to running (ids not present: ignored)."""
        ids = list(task_ids)
        if self.dialect == "postgresql":

            async def run(conn: AsyncConnection) -> None:
                await conn.exec_driver_sql(_PG_MARK, (ids,))
        else:
            rows = [(task_id,) for task_id in ids]

            async def run(conn: AsyncConnection) -> None:
                await (await _aiosqlite(conn)).executemany(_SQLITE_MARK, rows)

        return run

    def update(self, records: Sequence[TaskRecord]) -> Statement:
        """Store each record as its task's document and status (ids not present: ignored)."""
        ids = [r.task_id for r in records]
        statuses = [r.status.value for r in records]
        docs = documents(records)
        if self.dialect == "postgresql":
            sql, params = _PG_UPDATE, (ids, statuses, docs)

            async def run(conn: AsyncConnection) -> None:
                await conn.exec_driver_sql(sql, params)
        else:
            rows = list(zip(statuses, docs, ids, strict=True))

            async def run(conn: AsyncConnection) -> None:
                await (await _aiosqlite(conn)).executemany(_SQLITE_UPDATE, rows)

        return run
