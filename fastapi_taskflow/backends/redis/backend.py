"""The Redis backend: history writes and reads, the pending store, lifecycle."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from ... import _cursor
from ..._errors import BackendError, ConfigurationError, MissingDriverError, NotStartedError
from ..._models import Finished, TaskRecord, TaskStatus, finished_id, seal_document, stamp
from ..base import SnapshotBackend
from ._common import (
    CHUNK,
    MGET_CHUNK,
    TX_RECORDS,
    check_url,
    chunks,
    display_url,
    ids,
    micros,
    parse,
)
from ._keys import Keys, Shape, shape
from ._raw import RawTransactions, command, command_of, packed
from .coordinator import RedisCoordinator
from .repository import RedisHistoryRepository
from .scripts import UNINDEX, UNPEND, Scripts

_UNINDEX, _UNPEND = UNINDEX.encode(), UNPEND.encode()
_RECORD: TypeAdapter[TaskRecord] = TypeAdapter(TaskRecord)

try:
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    _driver_missing: ImportError | None = exc
else:
    _driver_missing = None

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["RedisBackend"]


_SUCCESS = TaskStatus.SUCCESS.value


class RedisBackend(SnapshotBackend):
    """History and pending work in Redis, with native history queries and a coordinator
    for several instances sharing one server.

    ``RedisBackend("redis://localhost:6379/0")`` (also ``rediss://`` and ``unix://``).
    Nothing connects until :meth:`open`, which the TaskManager calls at start-up; an
    unreachable server fails there with :class:`BackendError`.

    Every key lives under ``prefix:``, so several applications can share one database.
    Pass ``client=`` to reuse a ``redis.asyncio.Redis`` you own: the backend then never
    closes it, and ``url`` only names the server in messages.

    A task's ``func_name``, ``queue``, ``tags`` and ``created_at`` are fixed when it is
    added; its status changes. Re-saving a task moves it between the status indexes.

    ``history_ttl_s`` keeps history for that many seconds after a task's ``created_at``.
    Older records disappear from every read at once and are deleted, with their index
    entries, during the next :meth:`save`. ``None`` (the default) keeps history forever.

    Records are only as durable as the server: without AOF or RDB persistence configured
    on Redis, history and pending work do not survive a Redis restart.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "taskflow",
        client: aioredis.Redis | None = None,
        history_ttl_s: float | None = None,
    ) -> None:
        if _driver_missing is not None:
            raise MissingDriverError(
                'RedisBackend needs the redis package: pip install "fastapi-taskflow[redis]"'
            ) from _driver_missing
        check_url(url)
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigurationError(
                f"RedisBackend prefix must be a non-empty string without spaces, got {prefix!r}"
            )
        if history_ttl_s is not None and not history_ttl_s > 0:
            raise ConfigurationError(
                f"RedisBackend history_ttl_s must be a positive number of seconds or None, "
                f"got {history_ttl_s!r}"
            )
        self._url = url
        self.display_url = display_url(url)
        self.prefix = prefix
        self.history_ttl_s = history_ttl_s
        self._keys = Keys(prefix)
        self._given_client = client
        self._client: aioredis.Redis | None = None
        self._scripts: Scripts | None = None
        self._raw_writes: RawTransactions | None = None
        self._repository = RedisHistoryRepository(self)
        self._coordinator = RedisCoordinator(self)

    def __repr__(self) -> str:
        return f"RedisBackend({self.display_url!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the client and check the server answers PING."""
        if self._client is not None:
            return
        client = self._given_client or aioredis.Redis.from_url(self._url)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            if self._given_client is None:
                await client.aclose()
            raise BackendError(
                f"cannot reach Redis at {self.display_url}: {exc}. Check that the server is "
                "running and the URL, password and database number are right."
            ) from exc
        self._client = client
        self._scripts = Scripts.register(client)
        self._raw_writes = RawTransactions(client)

    async def close(self) -> None:
        """Close the client this backend created (a client passed in stays open)."""
        client, self._client, self._scripts = self._client, None, None
        raw, self._raw_writes = self._raw_writes, None
        if raw is not None:
            with self._errors("close"):
                await raw.close()
        if client is not None and self._given_client is None:
            with self._errors("close"):
                await client.aclose()

    def coordinator(self) -> RedisCoordinator:
        """Leases, claims, idempotency keys, the shared live view and cancel requests,
        kept in the pending store with Lua scripts (see :class:`RedisCoordinator`)."""
        return self._coordinator

    def history(self) -> RedisHistoryRepository:
        """The native history repository (indexed queries, counts, statistics)."""
        return self._repository

    # ------------------------------------------------------------------ history writes

    async def save(self, records: list[TaskRecord]) -> int:
        """Upsert records and their index entries, in MULTI/EXEC transactions; the same
        transactions take the saved tasks out of the pending store (that completes them).

        A transaction means no reader sees a record half-indexed or a status change
        half-applied (out of the old status sets but not yet in the new one), and no
        instance sees a task neither pending nor in history. Up to 10,000 records go in one
        transaction, so a huge flush blocks the server for tens of milliseconds at a time
        rather than for the whole batch. Writes are variadic (one MSET or ZADD per index
        set, not per record) and encoded once, which keeps the client, where a pipeline
        spends its time, cheap.
        """
        return await self._save_records(records, None)

    def _history_beside_write_ahead(self) -> bool:
        # History goes through a connection of its own (see _raw), write-ahead through the pool.
        return True

    async def _save_history(self, records: list[Finished], pending_ids: Collection[str]) -> int:
        if not self._save_is_native(RedisBackend):
            return await super()._save_history(records, pending_ids)
        return await self._save_records(records, pending_ids)

    async def _save_records(
        self, records: Sequence[Finished], pending_ids: Collection[str] | None
    ) -> int:
        """:meth:`save`; only ``pending_ids`` (all when ``None``) may be in the pending store.
        Every record is read before the first await (the flusher passes live records, and
        a light task's seal, written as it is)."""
        latest = list({finished_id(r): r for r in records}.values())
        writes = [self._transaction(part, pending_ids) for part in chunks(latest, TX_RECORDS)]
        for write in writes:
            await write()
        if records and self.history_ttl_s is not None:
            await self._prune()
        return len(records)

    def _transaction(
        self, entries: Sequence[Finished], pending_ids: Collection[str] | None
    ) -> Callable[[], Awaitable[None]]:
        """The MULTI/EXEC transaction that saves ``entries`` (read now, written when
        awaited)."""
        keys = self._keys
        payloads: list[bytes] = []
        shapes: dict[Shape, list[bytes]] = defaultdict(list)  # flat score, member pairs
        # Ids of re-saved records by (status, function): an index may hold them under
        # another status.
        stale: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        succeeded: list[bytes] = []  # keyed tasks that succeeded: end_time, id pairs
        dump = _RECORD.dump_json
        records: list[TaskRecord] = []
        pended: list[bytes] = []  # ids to take out of the pending store
        record_key = keys.record("")
        for seal in entries:
            if not isinstance(seal, tuple):
                records.append(seal)
                continue
            # A light task's seal: a success, with no tags or key, saved once (its id is new:
            # no index holds it under another status), in the pending store if written ahead.
            sealed_id = seal[0]
            if pending_ids is None or sealed_id in pending_ids:
                pended.append(sealed_id.encode())
            payloads += (f"{record_key}{sealed_id}".encode(), seal_document(seal).encode())
            pair = (b"%d" % micros(stamp(seal[2])), sealed_id.encode())
            shapes[(_SUCCESS, seal[1], seal[8], ())] += pair
        for record in records:
            task_id = record.task_id.encode()
            payloads += (keys.record(record.task_id).encode(), dump(record))
            pair = (str(micros(record.created_at)).encode(), task_id)
            found = shape(record)
            shapes[found] += pair
            stale[found[:2]].append(task_id)
            if record.idempotency_key is not None and record.status == TaskStatus.SUCCESS:
                finished = micros(record.end_time or record.created_at)
                succeeded += (str(finished).encode(), task_id)
        # Each index set gets the score-member pairs of every shape it covers, packed once
        # per shape (a record is in five or more sets).
        adds: dict[str, list[bytes]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for found, pairs in shapes.items():
            part = packed(pairs)
            for key in keys.shape_indexes(found):
                adds[key].append(part)
                counts[key] += len(pairs)
        commands: list[bytes] = []
        for (status, func_name), members in stale.items():
            # A re-saved task may have changed status: drop it from the others.
            others = [key.encode() for key in keys.other_statuses(status, func_name)]
            commands.append(command(b"EVAL", _UNINDEX, b"%d" % len(others), *others, *members))
        commands.append(command(b"MSET", *payloads))
        commands += [
            command_of(2 + counts[key], packed((b"ZADD", key.encode())), *parts)
            for key, parts in adds.items()
        ]
        # The pending-store cleanup (which also clears the keyed-success entry a re-saved
        # task may hold) for the tasks that may need it: written ahead, adopted or keyed.
        pended += [
            r.task_id.encode()
            for r in records
            if pending_ids is None or r.task_id in pending_ids or r.idempotency_key is not None
        ]
        if pended:
            touched = [key.encode() for key in (*keys.pending_store(), keys.keyed_success)]
            commands.append(command(b"EVAL", _UNPEND, b"%d" % len(touched), *touched, *pended))
        if succeeded:
            commands.append(command(b"ZADD", keys.keyed_success.encode(), *succeeded))

        async def write() -> None:
            with self._errors("save"):
                await self._raw().run(commands)

        return write

    def _unpend(self, pipe: Pipeline, task_ids: Sequence[str]) -> None:
        """Queue the removal of ``task_ids`` from the pending store (with their leases and
        cancel requests) and from the keyed-success set."""
        if task_ids:
            touched = [*self._keys.pending_store(), self._keys.keyed_success]
            pipe.eval(UNPEND, len(touched), *touched, *task_ids)

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Remove records and their index entries, and the tasks from the pending store (a
        deleted task is not brought back by the instance running it); return how many
        history records existed."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return 0
        keys = self._keys
        found = await self._fetch(unique)
        removals: dict[str, list[str]] = defaultdict(list)
        for task_id, record in zip(unique, found, strict=True):
            if record is not None:
                for key in keys.indexes(record):
                    removals[key].append(task_id)
            else:  # no record: clear whatever index entries might point at it
                removals[keys.all].append(task_id)
                for status in TaskStatus:
                    removals[keys.status(status.value)].append(task_id)
        client = self._require()
        with self._errors("delete"):
            async with client.pipeline(transaction=True) as pipe:
                for part in chunks(unique, CHUNK):
                    pipe.delete(*(keys.record(i) for i in part))
                for key, members in removals.items():
                    for part in chunks(members, CHUNK):
                        pipe.zrem(key, *part)
                self._unpend(pipe, unique)
                results = await pipe.execute()
        return sum(results[: math.ceil(len(unique) / CHUNK)])

    async def _prune(self) -> None:
        """Delete history older than ``history_ttl_s``, in batches."""
        cutoff = self._cutoff()
        while True:
            with self._errors("prune expired history"):
                expired = await self._require().zrange(
                    self._keys.all,
                    f"({cutoff}",
                    "-inf",
                    desc=True,
                    byscore=True,
                    offset=0,
                    num=1_000,
                )
            if not expired:
                return
            await self.delete(ids(expired))

    # ------------------------------------------------------------------ history reads

    async def load(self) -> list[TaskRecord]:
        """Every history record, oldest first."""
        with self._errors("load"):
            found = await self._require().zrange(
                self._keys.all, "+inf", self._lower(None), desc=True, byscore=True
            )
        records = await self._fetch(ids(reversed(found)))
        return [r for r in records if r is not None]

    async def _fetch(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records for ``task_ids`` in the same order, ``None`` where one is missing."""
        if not task_ids:
            return []
        keys = [self._keys.record(i) for i in task_ids]
        with self._errors("read history"):
            async with self._require().pipeline(transaction=False) as pipe:
                for part in chunks(keys, MGET_CHUNK):
                    pipe.mget(part)
                replies = await pipe.execute()
        raws = [raw for reply in replies for raw in reply]
        return [
            None if raw is None else parse(raw, key) for key, raw in zip(keys, raws, strict=True)
        ]

    # ------------------------------------------------------------------ pending work

    async def save_pending(self, records: list[TaskRecord]) -> int:
        """Replace the pending store with ``records``, atomically; nobody holds them, so
        with several instances any of them may claim them."""
        keys = self._keys
        items = [(r.task_id, r.model_dump_json()) for r in records]
        order = [(str(micros(r.created_at)), r.task_id) for r in records]
        with self._errors("save pending"):
            async with self._require().pipeline(transaction=True) as pipe:
                pipe.delete(*keys.pending_store())
                for part in chunks(items, CHUNK):
                    pipe.hset(keys.pending, mapping=dict(part))
                for part in chunks(order, CHUNK):
                    flat = [value for pair in part for value in pair]
                    pipe.execute_command("ZADD", keys.pending_order, *flat)
                    pipe.execute_command("ZADD", keys.pending_free, *flat)
                await pipe.execute()
        return len(records)

    async def load_pending(self) -> list[TaskRecord]:
        """Every task of the pending store, oldest first."""
        key = self._keys.pending
        with self._errors("load pending"):
            stored = await self._require().hgetall(key)
        records = [parse(raw, key) for raw in stored.values()]
        records.sort(key=_cursor.sort_key)
        return records

    async def clear_pending(self) -> None:
        """Delete every task of the pending store, with its lease and cancel request."""
        with self._errors("clear pending"):
            await self._require().delete(*self._keys.pending_store())

    # ------------------------------------------------------------------ helpers

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise NotStartedError(
                f"{self!r} is not open: await backend.open() first "
                "(TaskManager.startup() does this)"
            )
        return self._client

    def _raw(self) -> RawTransactions:
        self._require()
        assert self._raw_writes is not None
        return self._raw_writes

    def _require_scripts(self) -> Scripts:
        self._require()
        assert self._scripts is not None
        return self._scripts

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise BackendError(f"Redis {action} failed at {self.display_url}: {exc}") from exc

    def _cutoff(self) -> int:
        """Microsecond score below which history has expired."""
        assert self.history_ttl_s is not None
        return micros(datetime.now(UTC)) - int(self.history_ttl_s * 1_000_000)

    def _lower(self, since: datetime | None) -> str:
        """Inclusive lower score bound for reads: ``since`` and the TTL, whichever is later."""
        bounds = [] if since is None else [micros(since)]
        if self.history_ttl_s is not None:
            bounds.append(self._cutoff())
        return str(max(bounds)) if bounds else "-inf"
