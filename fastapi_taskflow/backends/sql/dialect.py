"""Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB, in one place.

Engine options and SQLite pragmas, upsert statements, the migration lock, and which
driver errors are worth retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic_core import from_json, to_json
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolResetState

from ..._errors import BackendError
from .urls import is_memory_sqlite

logger = logging.getLogger("fastapi_taskflow")

try:
    from sqlite3 import Error as _SqliteError

    # Errors of the SQLite driver called directly (not through SQLAlchemy).
    SQLITE_ERRORS: tuple[type[BaseException], ...] = (_SqliteError,)
except ImportError:  # pragma: no cover - a Python built without sqlite3
    SQLITE_ERRORS = ()

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_AUTOCHECKPOINT_PAGES = 10_000  # SQLite's default: 1,000
CHECKPOINT_INTERVAL_S = 0.25  # background checkpoints at most this often (WalCheckpoints)
MIGRATION_LOCK_NAME = "fastapi_taskflow_migrate"
MIGRATION_LOCK_ID = 0x7A5C_F10E  # pg_advisory_lock key: arbitrary, fixed, ours
MIGRATION_LOCK_TIMEOUT_S = 300


def is_mysql(name: str) -> bool:
    return name in ("mysql", "mariadb")


# --------------------------------------------------------------------------- engines


def create_engine(url: URL, *, echo: bool = False, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine with this library's per-dialect defaults; ``engine_kwargs`` win."""
    name = url.get_backend_name()
    # pydantic-core parses JSON columns about three times faster than the json module.
    options: dict[str, Any] = {"echo": echo, "json_deserializer": from_json}
    if name == "sqlite":
        if is_memory_sqlite(url):
            # One connection is the whole database; the pool hands it out one at a time.
            options.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
        else:
            _make_parent_dir(url)
        # A connection goes back to the pool without the driver's ROLLBACK (one trip to
        # aiosqlite's thread) when it holds no transaction: see _rollback_if_open.
        options["pool_reset_on_return"] = None
    else:
        # No pre-ping on PostgreSQL: on asyncpg it costs three round trips per transaction,
        # and a connection found dead is retried anyway (transaction.py, is_transient).
        # MySQL keeps it: its server closes idle connections (wait_timeout).
        options["pool_pre_ping"] = is_mysql(name)
        if is_mysql(name):
            options["pool_recycle"] = 3600
            # Fewer gap locks than REPEATABLE READ, so concurrent upserts rarely deadlock.
            options["isolation_level"] = "READ COMMITTED"
    options.update(engine_kwargs)
    engine = create_async_engine(url, **options)
    if name == "sqlite":
        install_sqlite_events(engine)
        if "pool_reset_on_return" not in engine_kwargs:
            event.listen(engine.sync_engine, "reset", _rollback_if_open)
    return engine


def _rollback_if_open(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry, reset_state: PoolResetState
) -> None:
    """The pool's reset on return for SQLite: roll back only a transaction left open.

    SQLite says whether one is open without a query, so the usual case (committed, or a
    read) costs nothing, where the default reset takes a trip to the driver's thread.
    """
    if reset_state.terminate_only or not reset_state.asyncio_safe:
        return
    driver = connection_record.driver_connection
    if driver is None or getattr(driver, "in_transaction", True):
        dbapi_connection.rollback()


def _make_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database.startswith("file:") or url.query.get("uri"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def install_sqlite_events(engine: AsyncEngine) -> None:
    """On every new SQLite connection: busy timeout, WAL, and ``BEGIN IMMEDIATE`` for writes.

    Write transactions start with :func:`begin_immediate`, taking the write lock up front so
    they never fail half-way on a lock upgrade. Should a write start without it, pysqlite's
    own implicit ``"BEGIN " + isolation_level`` is made IMMEDIATE too. Reads run without a
    transaction of their own (each SELECT sees one consistent snapshot).
    """
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine, "connect", _sqlite_on_connect):
        event.listen(sync_engine, "connect", _sqlite_on_connect)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        # The log is copied into the database by WalCheckpoints, in the background; a
        # commit does it itself only as a safety net, once the log is this many pages long.
        cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT_PAGES}")
    finally:
        cursor.close()
    dbapi_connection.isolation_level = "IMMEDIATE"


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode, which the file keeps: a later connection finds it set.

    Switching needs an exclusive lock that SQLite does not wait for (no busy handler), so of
    connections switching a new file at once all but one fail with "database is locked".
    Reading the mode does wait (``busy_timeout``), and then finds the switch done.
    """
    if _journal_mode(cursor) == "wal":
        return
    try:
        cursor.execute("PRAGMA journal_mode = WAL")
    except Exception as exc:  # the driver's OperationalError, as the adapter raises it
        if "locked" not in str(exc).lower() or _journal_mode(cursor) != "wal":
            raise


def _journal_mode(cursor: Any) -> str:
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    return str(row[0]).lower() if row else ""


async def begin_immediate(conn: AsyncConnection) -> None:
    """Start a transaction holding SQLite's write lock now (not at the first write).

    Other databases lock rows as they go: there it simply begins.
    """
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        await conn.begin()


async def begin_write(conn: AsyncConnection) -> Callable[[], Awaitable[None]]:
    """Begin a write transaction on ``conn`` (as :func:`begin_immediate`); returns its commit.

    On aiosqlite, ``BEGIN IMMEDIATE`` goes straight to the driver: one trip to its thread,
    where SQLAlchemy's cursor takes three (open, execute, close). SQLAlchemy does not see
    that transaction, so the commit goes to the driver too, unless the work's own
    statements went through SQLAlchemy, which then commits it.
    """
    if conn.dialect.name != "sqlite" or conn.dialect.driver != "aiosqlite":
        await begin_immediate(conn)
        return conn.commit
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.execute("BEGIN IMMEDIATE")

    async def commit() -> None:
        if conn.in_transaction():
            await conn.commit()
        else:
            await driver.commit()

    return commit


class WalCheckpoints:
    """Checkpoints of SQLite's write-ahead log, run in the background after history writes.

    By default the commit that grows the log past 1,000 pages copies it into the database
    itself, which made every other history write several milliseconds longer, while
    accepted tasks waited for the next write. Here a ``PRAGMA wal_checkpoint(PASSIVE)``
    runs on a pooled connection of its own (so in the driver's thread for that connection,
    beside the writer): it takes no lock that a writer waits for. One runs at a time, at
    most every ``CHECKPOINT_INTERVAL_S``: a request made meanwhile runs one more when that
    time has passed. (A checkpoint copies the latest version of each page the log holds:
    the pages written over and over, such as the pending store's, are copied once per
    checkpoint, so one after every write copied them hundreds of times a second.)
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._sleeping = False
        self._last = -CHECKPOINT_INTERVAL_S  # loop time of the last checkpoint

    def request(self) -> None:
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="taskflow-sqlite-checkpoint"
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._again = False
                wait = self._last + CHECKPOINT_INTERVAL_S - loop.time()
                if wait > 0:
                    self._sleeping = True
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        self._sleeping = False
                async with self._engine.connect() as conn:
                    driver = (await conn.get_raw_connection()).driver_connection
                    assert driver is not None
                    await driver.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                self._last = loop.time()
                if not self._again:
                    return
        except Exception as exc:  # the next request tries again; wal_autocheckpoint remains
            logger.debug("fastapi-taskflow: SQLite checkpoint failed: %s", exc)
        finally:
            self._task = None

    async def close(self) -> None:
        """Wait for a checkpoint in flight (before the engine is disposed); one that waits
        for its turn is dropped (SQLite checkpoints the log when its last connection
        closes)."""
        self._again = False
        task = self._task
        if task is None:
            return
        if self._sleeping:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        await asyncio.shield(task)


# --------------------------------------------------------------------------- upserts


def upsert(table: sa.Table, dialect_name: str) -> sa.Insert:
    """``INSERT`` that updates every non-key column when the primary key exists."""
    keys = [c.name for c in table.primary_key.columns]
    if is_mysql(dialect_name):
        my_stmt = mysql.insert(table)
        return my_stmt.on_duplicate_key_update(
            {c.name: my_stmt.inserted[c.name] for c in table.columns if c.name not in keys}
        )
    if dialect_name == "postgresql":
        pg_stmt = postgresql.insert(table)
        return pg_stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: pg_stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
    if dialect_name == "sqlite":
        lite_stmt = sqlite.insert(table)
        return lite_stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: lite_stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
    raise BackendError(f"no upsert for the {dialect_name!r} dialect")


def in_ids(
    column: sa.ColumnElement[str], ids: Sequence[str], dialect_name: str
) -> Iterator[sa.ColumnElement[bool]]:
    """Conditions ``column IN ids``, split to respect each database's parameter limits.

    PostgreSQL takes the whole list as one array parameter (``= ANY($1)``), SQLite as one
    JSON array (``IN (SELECT value FROM json_each(?))``: no placeholder per id to render);
    MySQL gets ``IN (...)`` lists of bounded length.
    """
    if dialect_name == "postgresql":
        yield column == sa.any_(sa.bindparam("ids", list(ids), type_=postgresql.ARRAY(sa.String)))
        return
    if dialect_name == "sqlite":
        listed = sa.func.json_each(sa.bindparam("ids", to_json(list(ids)).decode()))
        yield column.in_(sa.select(listed.table_valued("value").c.value))
        return
    size = 5_000 if is_mysql(dialect_name) else 900
    for start in range(0, len(ids), size):
        yield column.in_(ids[start : start + size])


# --------------------------------------------------------------------------- migration lock


@asynccontextmanager
async def migration_lock(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Hold the database-wide migration lock on ``conn`` for the body.

    PostgreSQL: a session advisory lock. MySQL/MariaDB: ``GET_LOCK``. SQLite: the body runs
    in one ``BEGIN IMMEDIATE`` transaction, which is the lock. The body must commit its work;
    the lock is released (or the transaction rolled back) on the way out.
    """
    name = conn.dialect.name
    if name == "sqlite":
        await begin_immediate(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction():
                await conn.rollback()
        return
    if name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_ID)))
        await conn.commit()
        release: sa.Executable = sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_ID))
    elif is_mysql(name):
        # GET_LOCK names are server-wide: qualify ours with the database (names <= 64 chars).
        lock_name = sa.func.concat(MIGRATION_LOCK_NAME, ".", sa.func.md5(sa.func.database()))
        got = await conn.scalar(sa.select(sa.func.get_lock(lock_name, MIGRATION_LOCK_TIMEOUT_S)))
        await conn.commit()
        if got != 1:
            raise BackendError(
                f"could not take the migration lock {MIGRATION_LOCK_NAME!r} within "
                f"{MIGRATION_LOCK_TIMEOUT_S} s: another instance may be stuck migrating"
            )
        release = sa.select(sa.func.release_lock(lock_name))
    else:
        yield conn
        return
    try:
        yield conn
    finally:
        await _release(conn, release)


async def _release(conn: AsyncConnection, release: sa.Executable) -> None:
    try:
        if conn.in_transaction():
            await conn.rollback()
        await conn.execute(release)
        await conn.commit()
    except (sa.exc.SQLAlchemyError, OSError):
        # A session lock dies with its connection: make sure this one is not pooled.
        await conn.invalidate()


# --------------------------------------------------------------------------- errors

_PG_TRANSIENT = ("40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")
_MYSQL_TRANSIENT = {1205, 1213, 1040, 2003, 2006, 2013, 2055}
_SQLITE_TRANSIENT = ("database is locked", "database table is locked")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same transaction could succeed (lost connection, deadlock…)."""
    if isinstance(exc, OSError):  # refused, reset, timed out
        return True
    orig: BaseException | None
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
    elif isinstance(exc, SQLITE_ERRORS):  # from the driver itself (see begin_write)
        orig = exc
    else:
        return False
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and (code.startswith("08") or code in _PG_TRANSIENT):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT:
        return True
    message = str(orig).lower()
    return any(fragment in message for fragment in _SQLITE_TRANSIENT)
