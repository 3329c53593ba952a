"""One SQLAlchemy backend for SQLite, PostgreSQL and MySQL/MariaDB, chosen by the URL."""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..._errors import ConfigurationError, NotStartedError
from ..._models import Finished, Seal, TaskRecord, finished_id
from ..base import SnapshotBackend
from .bulk import BulkStatement, JsonInsert, JsonTableInsert, has_json_table
from .coordinator import SqlCoordinator
from .dialect import WalCheckpoints, create_engine, in_ids, upsert
from .migrate import ensure_schema
from .pending_writes import PendingWrites, PlainHistory, sqlite_history
from .records import (
    HISTORY_COLUMNS,
    BulkEncoder,
    from_history_row,
    from_pending_row,
    history_documents,
    history_values,
    latest_by_id,
    pending_rows,
    sealed_documents,
    sealed_values,
    tag_values,
)
from .repository import SqlHistoryRepository
from .tables import UTCDateTime, history, history_tags, pending
from .transaction import T, Work, WriteGuard, run_read
from .urls import is_memory_sqlite, make_async_url, require_driver


class SqlBackend(SnapshotBackend):
    """Task history and pending work in SQLite, PostgreSQL or MySQL/MariaDB.

    ``url`` may be plain (``sqlite:///tasks.db``, ``postgresql://user:pass@host/db``,
    ``mysql://…``, ``mariadb://…``) or name the async driver (``sqlite+aiosqlite://``,
    ``postgresql+asyncpg://``, ``mysql+aiomysql://``). Nothing connects until
    :meth:`open`, which creates the engine and brings the tables to the current schema
    (``auto_migrate=True``, under a database lock) or checks that they are current
    (``auto_migrate=False``, raising :class:`SchemaOutdatedError` when behind).

    Pass ``engine=`` to use an engine you own (it is not disposed by :meth:`close`);
    ``engine_kwargs`` go to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """

    #: Backend names (``URL.get_backend_name()``) this class accepts; empty means all.
    dialects: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        engine: AsyncEngine | None = None,
        auto_migrate: bool = True,
        echo: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        if engine is not None:
            self._url = engine.url
        elif url is not None:
            self._url = make_async_url(url)
            require_driver(self._url)
        else:
            raise ConfigurationError(
                f"{type(self).__name__} needs a database URL (or engine=AsyncEngine)"
            )
        backend = self._url.get_backend_name()
        if self.dialects and backend not in self.dialects:
            raise ConfigurationError(
                f"{type(self).__name__} takes a {' or '.join(self.dialects)} URL, got "
                f"{self._url.render_as_string(hide_password=True)!r}; use SqlBackend(url) "
                "to choose the database by URL"
            )
        self._given_engine = engine
        self._engine: AsyncEngine | None = None
        self._auto_migrate = auto_migrate
        self._echo = echo
        self._engine_kwargs = engine_kwargs
        self._writes = WriteGuard()
        self._history = SqlHistoryRepository(self)
        self._coordinator = SqlCoordinator(self)
        self._bulk: _BulkWriters | None = None
        self._checkpoints: WalCheckpoints | None = None
        self._one_connection = False  # an in-memory SQLite database (set by open())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url.render_as_string(hide_password=True)!r})"

    @property
    def url(self) -> URL:
        """The async database URL in use."""
        return self._url

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine; available between :meth:`open` and :meth:`close`."""
        if self._engine is None:
            raise NotStartedError(
                f"{self!r} is not open: call `await backend.open()` first "
                "(TaskManager.startup() does it)"
            )
        return self._engine

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the engine and make sure the tables are at the current schema."""
        if self._engine is not None:
            return
        engine = self._given_engine or create_engine(
            self._url, echo=self._echo, **self._engine_kwargs
        )
        try:
            await ensure_schema(engine, auto_migrate=self._auto_migrate)
        except BaseException:
            if self._given_engine is None:
                await engine.dispose()
            raise
        self._bulk = _BulkWriters(engine)
        self._engine = engine
        self._one_connection = is_memory_sqlite(engine.url)
        # (Our own engines only: they are the ones whose connections raise the threshold.)
        ours = self._given_engine is None
        driver = (engine.dialect.name, engine.dialect.driver)
        if ours and driver == ("sqlite", "aiosqlite") and not self._one_connection:
            self._checkpoints = WalCheckpoints(engine)

    async def close(self) -> None:
        """Wait for writes in flight, then dispose of the engine (unless it was given)."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        await self._writes.drain()
        checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            await checkpoints.close()
        if self._given_engine is None:
            await engine.dispose()

    def coordinator(self) -> SqlCoordinator:
        """The shared pending store: write-ahead, leases, claims (usable once open)."""
        return self._coordinator

    def history(self) -> SqlHistoryRepository:
        """Native history queries in SQL (usable once the backend is open)."""
        return self._history

    # ------------------------------------------------------------------ history

    async def save(self, records: list[TaskRecord]) -> int:
        """Upsert ``records`` into history in one transaction; return how many."""
        return await self._write_history(records, None)

    async def _write_history(
        self, records: Sequence[Finished], pending_ids: Collection[str] | None
    ) -> int:
        if not records:
            return 0
        count, work = self._save_work(records, pending_ids)
        await self._writes.run(self.engine, work, f"saving {count} task records")
        self._history_written()
        return count

    def _history_written(self) -> None:
        """After a history write has committed (the bulk of what grows SQLite's log)."""
        if self._checkpoints is not None:
            self._checkpoints.request()

    def _history_beside_write_ahead(self) -> bool:
        # SQLite has one writer at a time: a second write would wait for the lock.
        return self.engine.dialect.name != "sqlite"

    def _own_save(self) -> bool:
        return self._save_is_native(SqlBackend)

    async def _save_history(self, records: list[Finished], pending_ids: Collection[str]) -> int:
        if not self._own_save():
            return await super()._save_history(records, pending_ids)
        dialect = self.engine.dialect
        if records and dialect.name == "sqlite" and PendingWrites.supports(dialect):
            # The flusher's history writes on SQLite: one trip to the driver's thread on the
            # connection the write-ahead cycles keep, no SQLAlchemy statement on the way.
            plain = self._plain_history(records, pending_ids)
            if plain is not None:
                what = f"saving {len(plain.rows)} task records"
                await self._run_unit(sqlite_history(plain), what)
                self._history_written()
                return len(plain.rows)
        return await self._write_history(records, pending_ids)

    async def _run_unit(self, work: Work[T], what: str) -> T:
        """Run ``work``, a SQLite unit that begins and commits its own transaction, on a
        connection the write guard keeps between calls (an in-memory database has a single
        connection: it goes back to the pool each time)."""
        run = self._writes.run_here if self._one_connection else self._writes.run_held
        return await run(self.engine, work, what, own_transaction=True)

    def _plain_history(
        self, records: Sequence[Finished], pending_ids: Collection[str] | None
    ) -> PlainHistory | None:
        """:meth:`_save_work` as one statement, its rows and the ids to take out of the
        pending store, for a driver-level write (see ``_BulkWriters.plain_history``); None
        where that does not fit."""
        bulk = self._bulk
        assert bulk is not None
        full, seals, _, pended = _split(records, pending_ids)
        plain = bulk.plain_history(full, seals)
        return None if plain is None else PlainHistory(plain[0], plain[1], pended)

    def _save_work(
        self, records: Sequence[Finished], pending_ids: Collection[str] | None = None
    ) -> tuple[int, Work[None]]:
        """How many records :meth:`save` writes, and its unit of work (records read now).

        A terminal record completes its task in the pending store; ``pending_ids`` (all of
        them when ``None``) are the records that may have a row there to delete. A light
        task's seal is written as it is, without building its record (it has no tags)."""
        engine = self.engine
        bulk = self._bulk
        assert bulk is not None
        full, seals, ids, pended = _split(records, pending_ids)
        dialect = engine.dialect.name

        write_history = bulk.history_writer(full, seals)
        write_tags = bulk.tags_writer(full)

        # A task's tags are fixed when it is added (a retry keeps them), so only the tag
        # rows of tagged records can need replacing; an untagged record never had any.
        tagged = [r.task_id for r in full if r.tags]

        async def work(conn: AsyncConnection) -> None:
            await write_history(conn)
            for matching in in_ids(history_tags.c.task_id, tagged, dialect) if tagged else ():
                await conn.execute(sa.delete(history_tags).where(matching))
            if write_tags is not None:
                await write_tags(conn)
            # A terminal record in history completes the task: it leaves the pending store.
            for matching in in_ids(pending.c.task_id, pended, dialect) if pended else ():
                await conn.execute(sa.delete(pending).where(matching))

        return len(ids), work

    async def load(self) -> list[TaskRecord]:
        """Every record in history, oldest first."""

        async def work(conn: AsyncConnection) -> list[TaskRecord]:
            query = sa.select(history).order_by(history.c.created_at, history.c.task_id)
            result = await conn.execute(query)
            return [from_history_row(row) for row in result.mappings()]

        return await run_read(self.engine, work, "loading task history")

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Remove records (and their tags) from history, and the tasks from the pending
        store (a deleted task is not adopted and written back by another instance); return
        how many history records were removed."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return 0
        engine = self.engine
        dialect = engine.dialect.name

        async def work(conn: AsyncConnection) -> int:
            removed = 0
            for matching in in_ids(history_tags.c.task_id, ids, dialect):
                await conn.execute(sa.delete(history_tags).where(matching))
            for matching in in_ids(history.c.task_id, ids, dialect):
                removed += (await conn.execute(sa.delete(history).where(matching))).rowcount
            for matching in in_ids(pending.c.task_id, ids, dialect):
                await conn.execute(sa.delete(pending).where(matching))
            return removed

        return await self._writes.run(engine, work, f"deleting {len(ids)} task records")

    # ------------------------------------------------------------------ pending

    async def save_pending(self, records: list[TaskRecord]) -> int:
        """Replace the stored unfinished tasks with ``records`` in one transaction."""
        batch = latest_by_id(records)
        rows = pending_rows(batch)

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(pending))
            if rows:
                await conn.execute(sa.insert(pending), rows)

        await self._writes.run(self.engine, work, f"saving {len(batch)} pending tasks")
        return len(batch)

    async def load_pending(self) -> list[TaskRecord]:
        """The unfinished tasks stored by :meth:`save_pending`, oldest first."""

        async def work(conn: AsyncConnection) -> list[TaskRecord]:
            query = sa.select(pending.c.record, pending.c.status)
            query = query.order_by(pending.c.created_at, pending.c.task_id)
            rows = await conn.execute(query)
            return [from_pending_row(document, status) for document, status in rows]

        return await run_read(self.engine, work, "loading pending tasks")

    async def clear_pending(self) -> None:
        """Delete every stored unfinished task."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(pending))

        await self._writes.run(self.engine, work, "clearing pending tasks")


def _split(
    records: Sequence[Finished], pending_ids: Collection[str] | None
) -> tuple[list[TaskRecord], list[Seal], list[str], list[str]]:
    """One record per task id (the last given), as full records and seals, with all their
    ids and those that may have a row in the pending store (``pending_ids``; all when
    ``None``)."""
    batch = latest_by_id(records)
    full = [r for r in batch if not isinstance(r, tuple)]
    seals = [r for r in batch if isinstance(r, tuple)]
    ids = [finished_id(r) for r in batch]
    pended = ids if pending_ids is None else [i for i in ids if i in pending_ids]
    return full, seals, ids, pended


TAG_COLUMNS = ("task_id", "key", "value", "created_at")


class _BulkWriters:
    """The bulk writes of history and its tag index for one engine's dialect."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self.timestamps: BulkEncoder = UTCDateTime().bulk_processor(dialect)
        self._json_history: JsonInsert | None = None
        self._json_tags: JsonInsert | None = None
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            self._json_history = JsonInsert(history, dialect, HISTORY_COLUMNS, update=True)
            self._json_tags = JsonInsert(history_tags, dialect, TAG_COLUMNS, update=False)
        self._history: BulkStatement | JsonTableInsert
        self._tags: BulkStatement | JsonTableInsert
        self._history = BulkStatement(upsert(history, dialect.name), dialect, HISTORY_COLUMNS)
        self._tags = BulkStatement(sa.insert(history_tags), dialect, TAG_COLUMNS)
        if has_json_table(dialect):
            self._history = JsonTableInsert(history, HISTORY_COLUMNS, self._history, update=True)
            self._tags = JsonTableInsert(history_tags, TAG_COLUMNS, self._tags, update=False)

    def history_writer(self, batch: Sequence[TaskRecord], seals: Sequence[Seal] = ()) -> Work[None]:
        """The write of ``batch`` and ``seals`` (one per id) into history; read now."""
        if self._json_history is not None:
            documents = history_documents(batch) + sealed_documents(seals)
            return functools.partial(self._json_history.execute, documents=documents)
        values = history_values(batch, self.timestamps) + sealed_values(seals, self.timestamps)
        return self._history.writer(values)

    def plain_history(
        self, batch: Sequence[TaskRecord], seals: Sequence[Seal]
    ) -> tuple[str, list[tuple[Any, ...]]] | None:
        """The history upsert and its parameter rows for ``batch`` and ``seals`` (read now),
        for a driver-level write; None where that does not fit: tagged records (their tag
        rows are another statement) or a dialect written otherwise."""
        history_insert = self._history
        if self._json_history is not None or not isinstance(history_insert, BulkStatement):
            return None
        if any(r.tags for r in batch):
            return None
        values = history_values(batch, self.timestamps) + sealed_values(seals, self.timestamps)
        return history_insert.sql, values

    def tags_writer(self, batch: Sequence[TaskRecord]) -> Work[None] | None:
        """The insert of the tag rows of ``batch`` (None without tags); records read now."""
        rows = tag_values(batch, self.timestamps)
        if not rows:
            return None
        if self._json_tags is not None:
            return functools.partial(
                self._json_tags.execute, documents=self._json_tags.documents(rows)
            )
        return self._tags.writer(rows)


class SqliteBackend(SqlBackend):
    """:class:`SqlBackend` on a SQLite file (WAL mode). ``":memory:"`` keeps one private
    in-memory database for the life of the backend (one connection, this process only)."""

    dialects = ("sqlite",)

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        location = os.fspath(path)
        if "://" in location:
            url: str | URL = location
        else:
            url = URL.create("sqlite+aiosqlite", database=location)
        super().__init__(url, **kwargs)


class PostgresBackend(SqlBackend):
    """:class:`SqlBackend` on PostgreSQL (asyncpg): ``PostgresBackend("postgresql://…")``."""

    dialects = ("postgresql",)


class MySQLBackend(SqlBackend):
    """:class:`SqlBackend` on MySQL or MariaDB (aiomysql): ``MySQLBackend("mysql://…")``."""

    dialects = ("mysql", "mariadb")
