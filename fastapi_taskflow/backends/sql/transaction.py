"""Running units of work: transient errors retried, writes shielded, driver errors translated.

A unit of work is an async function of one :class:`AsyncConnection`. Writes run in one
transaction that a cancelled caller cannot cut short: the transaction runs in its own task
and the caller awaits it through :func:`asyncio.shield`, so it commits or rolls back whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..._errors import BackendError
from .dialect import SQLITE_ERRORS, begin_write, is_transient

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]

RETRY_DELAYS_S = (0.05, 0.25, 1.0)
HELD_MAX = 2  # connections kept checked out for run_held (the flusher's cycles in flight)
# What a unit of work may raise from the database: through SQLAlchemy, from the network, or
# from the SQLite driver called directly.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, *SQLITE_ERRORS)


def describe(engine: AsyncEngine) -> str:
    """``dialect database`` for messages, password hidden."""
    return f"{engine.dialect.name} {engine.url.render_as_string(hide_password=True)}"


def translate(exc: BaseException, what: str, engine: AsyncEngine) -> BackendError:
    """The :class:`BackendError` to raise ``from exc`` at the storage boundary."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendError(f"{what} failed on {describe(engine)}: {detail}")


async def _attempts(
    engine: AsyncEngine, work: Work[T], what: str, *, write: bool, begin: bool = True
) -> T:
    for delay in (*RETRY_DELAYS_S, None):
        try:
            async with engine.connect() as conn:
                if not (write and begin):
                    # A read needs no explicit transaction (fewer round trips); a write
                    # without ``begin`` is its own (see run_here).
                    return await work(conn)
                # SQLite takes its write lock here, so work that reads before it writes
                # (check, then insert) is atomic across processes; an error rolls back.
                commit = await begin_write(conn)
                result = await work(conn)
                await commit()
                return result
        except _DRIVER_ERRORS as exc:
            if delay is None or not is_transient(exc):
                raise translate(exc, what, engine) from exc
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def run_read(engine: AsyncEngine, work: Work[T], what: str) -> T:
    """Run ``work`` in a transaction; retry transient failures a few times."""
    return await _attempts(engine, work, what, write=False)


class WriteGuard:
    """Runs write transactions shielded from cancellation and remembers those in flight."""

    def __init__(self) -> None:
        self._inflight: set[asyncio.Future[Any]] = set()
        self._held: list[AsyncConnection] = []  # idle, kept for run_held

    async def run(self, engine: AsyncEngine, work: Work[T], what: str) -> T:
        """Run ``work`` in one write transaction that commits or rolls back whole."""
        task: asyncio.Task[T] = asyncio.ensure_future(_attempts(engine, work, what, write=True))
        self._inflight.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Count a write run in the calling task as in flight, for :meth:`drain`."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight.add(done)
        try:
            yield
        finally:
            self._inflight.discard(done)
            done.set_result(None)

    async def run_here(
        self, engine: AsyncEngine, work: Work[T], what: str, *, own_transaction: bool = False
    ) -> T:
        """:meth:`run` in the calling task, for a caller that is never cancelled mid-write
        (the flusher's cycles: stopping waits for them): a task and a shield fewer a write.

        ``own_transaction``: ``work`` begins and commits (or, failing, rolls back) its
        transaction itself (see ``PendingWrites.accept_and_mark``); it is run on a
        connection without one."""
        with self._tracked():
            return await _attempts(engine, work, what, write=True, begin=not own_transaction)

    async def run_held(
        self, engine: AsyncEngine, work: Work[T], what: str, *, own_transaction: bool = False
    ) -> T:
        """:meth:`run_here` for ``work`` that is one statement outside any transaction
        (atomic on its own), or that begins and commits its own (``own_transaction``, as
        for :meth:`run_here`), on a connection kept checked out between calls: the pool's
        checkout, begin, commit and return (several hundred microseconds of the app's time
        on asyncpg) are saved on a stream of small writes. Each caller in flight has its
        own; up to ``HELD_MAX`` are kept between calls.

        If the statement fails there, the connection is dropped and the write goes the
        usual way (retried when transient, else translated), which also takes a new one.
        """
        with self._tracked():
            held = self._held
            if held:
                conn = held.pop()
                try:
                    result = await work(conn)
                except _DRIVER_ERRORS:
                    await _drop(conn)
                else:
                    held.append(conn)
                    return result
            result = await _attempts(engine, work, what, write=True, begin=not own_transaction)
            if len(held) < HELD_MAX:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    held.append(await engine.connect())
            return result

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled no longer awaits it

    async def drain(self) -> None:
        """Wait for every write still in flight (before the engine is disposed)."""
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await conn.close()


async def _drop(conn: AsyncConnection) -> None:
    """Close a connection whose statement failed, without returning it to the pool."""
    with contextlib.suppress(*_DRIVER_ERRORS):
        await conn.invalidate()
        await conn.close()
