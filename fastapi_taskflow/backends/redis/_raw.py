"""MULTI/EXEC transactions of commands packed here, for history writes.

redis-py packs every argument of a command in Python, a few calls each; a history record
is a dozen arguments (its key and document, and a score and member per index set), so
packing cost more than the rest of a save. :func:`command` packs a whole argument list
with one bytes format per argument, and :class:`RawTransactions` sends a transaction of
such commands on a connection of the client's own pool kind (same server, credentials and
database), read back in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported lazily: the package imports without redis installed)
    from redis import asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def command(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP), its arguments already bytes."""
    return b"*%d\r\n" % len(args) + packed(args)


def packed(args: Sequence[bytes]) -> bytes:
    """Arguments in the Redis protocol, without the count that starts a command: a part
    packed once for several commands (see :func:`command_of`)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


def command_of(count: int, *parts: bytes) -> bytes:
    """A command of ``count`` arguments from parts made by :func:`packed`."""
    return b"*%d\r\n" % count + b"".join(parts)


class RawTransactions:
    """Runs packed transactions one at a time on a connection of its own."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def run(self, commands: list[bytes]) -> list[Any]:
        """``MULTI``, ``commands``, ``EXEC``; the replies of the commands. A command that
        the server refuses aborts the whole transaction, and one that fails when run
        raises too, after the others ran (Redis transactions do not roll back); both
        as ``ResponseError``, as redis-py's pipelines do."""
        from redis.exceptions import ConnectionError

        async with self._lock:
            for attempt in (1, 2):
                reused = self._connection is not None
                try:
                    return await self._run(commands)
                except (ConnectionError, OSError):
                    # A connection that sat idle may have been closed by the server (or a
                    # proxy): one more try on a new one. A save is an upsert, so running a
                    # transaction whose reply was lost once more does no harm.
                    if attempt == 2 or not reused:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, commands: list[bytes]) -> list[Any]:
        from redis.exceptions import ResponseError

        connection = self._connection
        if connection is None:
            made: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            connection = self._connection = made
        try:
            await connection.send_packed_command([_MULTI, *commands, _EXEC])
            await connection.read_response()  # OK
            for _ in commands:
                # QUEUED, or the error of a refused command: EXEC then raises EXECABORT.
                with contextlib.suppress(ResponseError):
                    await connection.read_response()
            replies = await connection.read_response()
        except BaseException:
            # Unread replies (cancelled, timed out, lost): start over on a new connection.
            self._connection = None
            await connection.disconnect()
            raise
        for reply in replies:  # a command that failed when run (WRONGTYPE, say)
            if isinstance(reply, ResponseError):
                raise reply
        return list(replies)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()
