"""The Redis :class:`~fastapi_taskflow.backends.base.Coordinator`: Lua scripts over the
pending store (layout in :mod:`.scripts`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ... import _cursor
from ..._errors import ConfigurationError
from ..._models import (
    Accepted,
    PendingDocument,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
    utcnow,
)
from ._common import MAX_SCAN_BATCH, MGET_CHUNK, chunks, ids, micros, parse
from .repository import scan

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["RedisCoordinator"]

_ACCEPT_CHUNK = 1_000  # records per accept script: each call holds the server briefly
_MAX_KEY_TTL_S = 1e11  # a key retention beyond this (about 3,000 years) means forever


def _lease_ms(lease_s: float) -> int:
    """A lease in whole milliseconds, rounded up (fractional seconds are fine)."""
    return max(0, math.ceil(lease_s * 1000))


class RedisCoordinator:
    """Several instances acting as one through a shared Redis.

    Every read-modify-write is one Lua script, which Redis runs atomically: concurrent
    accepts of one task id admit exactly one, and each claimable task goes to exactly one
    claimer. Leases expire by the Redis server's clock. Idempotency keys are checked against
    a set of keyed tasks that succeeded (``prefix:h:ok``, written by ``save`` in the same
    transaction as their history record).
    """

    accepts_running = True  # accept() stores each record as given, status included
    _accepts_documents = True  # accept() also takes PendingDocument entries (see Flusher)

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    async def accept(
        self,
        records: Sequence[Accepted],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        connection: Any = None,
    ) -> list[str]:
        """Add new tasks to the pending store, held by ``owner``; return the ids added."""
        if connection is not None:
            raise ConfigurationError(
                "transactional enqueue (connection=...) needs a SQL backend: RedisBackend "
                "cannot write inside the caller's database transaction; enqueue without "
                "connection= after your transaction commits"
            )
        if not records:
            return []
        backend = self._backend
        keys = backend._keys
        scripts = backend._require_scripts()
        ttl_us = round(min(key_ttl_s, _MAX_KEY_TTL_S) * 1_000_000)
        head: list[str | int] = [
            "0" if owner is None else "1",
            owner or "",
            _lease_ms(lease_s),
            micros(utcnow()) - ttl_us,
        ]
        touched = [*keys.pending_store(), keys.keyed_success]
        # Every record is read before the first await: the caller may change them later.
        entries = [
            (r.task_id, micros(r.created_at), "0", r.document)
            if isinstance(r, PendingDocument)
            else (r.task_id, micros(r.created_at), "0" if r.idempotency_key is None else "1",
                  r.model_dump_json())
            for r in records
        ]  # fmt: skip
        added: list[str] = []
        for part in chunks(entries, _ACCEPT_CHUNK):
            args = list(head)
            for entry in part:
                args += entry
            with backend._errors("accept tasks"):
                added += ids(await scripts.accept(keys=touched, args=args))
        return added

    async def update(self, records: Sequence[TaskRecord]) -> None:
        """Store the current state of tasks still in the pending store."""
        if not records:
            return
        backend = self._backend
        args = [value for r in records for value in (r.task_id, r.model_dump_json())]
        with backend._errors("update live tasks"):
            await backend._require_scripts().update(keys=[backend._keys.pending], args=args)

    async def renew(self, owner: str, task_ids: Sequence[str], *, lease_s: float) -> list[str]:
        """Extend ``owner``'s leases; return the ids it no longer holds."""
        if not task_ids:
            return []
        backend = self._backend
        keys = backend._keys
        with backend._errors("renew leases"):
            lost = await backend._require_scripts().renew(
                keys=[keys.leases, keys.owners], args=[owner, _lease_ms(lease_s), *task_ids]
            )
        return ids(lost)

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int,
        task_ids: Sequence[str] | None = None,
        reclaim_own: bool = False,
    ) -> list[TaskRecord]:
        """Take up to ``limit`` claimable tasks, oldest first, atomically."""
        if limit < 1 or (task_ids is not None and not task_ids):
            return []
        backend = self._backend
        keys = backend._keys
        args: list[str | int] = [
            owner,
            _lease_ms(lease_s),
            limit,
            "1" if reclaim_own else "0",
            "0" if task_ids is None else "1",
            *(task_ids or ()),
        ]
        with backend._errors("claim tasks"):
            raws = await backend._require_scripts().claim(keys=keys.claim_state(), args=args)
        return [parse(raw, keys.pending) for raw in raws if raw is not None]

    async def release(self, owner: str, records: Sequence[TaskRecord]) -> None:
        """Give ``owner``'s tasks back as pending, for any instance to claim."""
        if not records:
            return
        backend = self._backend
        keys = backend._keys
        args: list[str | int] = [owner]
        for record in records:
            pending = record.model_copy(update={"status": TaskStatus.PENDING})
            args += (record.task_id, micros(record.created_at), pending.model_dump_json())
        with backend._errors("release tasks"):
            await backend._require_scripts().release(keys=keys.claim_state(), args=args)

    async def live(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Pending and running tasks of every instance, newest first, keyset-paginated."""
        after = None
        if cursor is not None:
            created_at, task_id = _cursor.decode(cursor)
            after = (micros(created_at), task_id)
        if limit < 1:
            return TaskPage(items=[], next_cursor=None)
        backend = self._backend
        lower = "-inf" if filter.since is None else str(micros(filter.since))
        upper = None if filter.until is None else micros(filter.until)
        walk = scan(backend._require(), [backend._keys.pending_order], lower, upper, after)
        found: list[TaskRecord] = []
        size = limit + 1
        while len(found) <= limit:
            with backend._errors("read live tasks"):
                batch = await walk.next(size)
            if not batch:
                break
            records = await self._fetch(batch)
            found.extend(r for r in records if r is not None and filter.matches(r))
            size = min(size * 4, MAX_SCAN_BATCH)
        items = found[:limit]
        next_cursor = _cursor.encode(items[-1]) if len(found) > limit else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def get_live(self, task_id: str) -> TaskRecord | None:
        """One task of the pending store, or ``None``."""
        (record,) = await self._fetch([task_id])
        return record

    async def request_cancel(self, task_id: str) -> bool:
        """Flag ``task_id`` for its owner to cancel; False if it is not pending."""
        backend = self._backend
        keys = backend._keys
        with backend._errors("request cancellation"):
            flagged = await backend._require_scripts().request_cancel(
                keys=[keys.pending, keys.cancels], args=[task_id]
            )
        return bool(flagged)

    async def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s tasks flagged for cancellation since the last call."""
        backend = self._backend
        keys = backend._keys
        with backend._errors("read cancel requests"):
            found = await backend._require_scripts().cancel_requests(
                keys=[keys.cancels, keys.owners, keys.pending_order], args=[owner]
            )
        return ids(found)

    async def _fetch(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Pending records for ``task_ids`` in the same order, ``None`` where one is gone."""
        backend = self._backend
        key = backend._keys.pending
        with backend._errors("read live tasks"):
            async with backend._require().pipeline(transaction=False) as pipe:
                for part in chunks(task_ids, MGET_CHUNK):
                    pipe.hmget(key, part)
                replies = await pipe.execute()
        raws = [raw for reply in replies for raw in reply]
        return [None if raw is None else parse(raw, key) for raw in raws]
