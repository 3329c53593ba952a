"""An in-memory backend: persistence semantics without a database, for tests and demos."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._models import TaskFilter, TaskPage, TaskRecord, TaskStatus, utcnow
from .._query import page_of
from .base import Coordinator, SnapshotBackend


@dataclass
class _Claim:
    owner: str | None
    lease_until: float
    cancel_requested: bool = False


class MemoryBackend(SnapshotBackend):
    """Keeps history and pending work in dicts. Survives a manager restart in one process.

    Useful in tests: hand one instance to two successive ``TaskManager`` objects to check
    what your app persists and requeues, or to two at once to see how instances share work,
    with no database.
    """

    def __init__(self) -> None:
        self.history_records: dict[str, TaskRecord] = {}
        self.pending_records: dict[str, TaskRecord] = {}
        self._claims: dict[str, _Claim] = {}
        self._coordinator = _MemoryCoordinator(self)

    async def save(self, records: list[TaskRecord]) -> int:
        for record in records:
            self.history_records[record.task_id] = record.model_copy(deep=True)
            self.pending_records.pop(record.task_id, None)
            self._claims.pop(record.task_id, None)
        return len(records)

    async def load(self) -> list[TaskRecord]:
        return [r.model_copy(deep=True) for r in self.history_records.values()]

    async def save_pending(self, records: list[TaskRecord]) -> int:
        self.pending_records = {r.task_id: r.model_copy(deep=True) for r in records}
        self._claims = {r.task_id: _Claim(owner=None, lease_until=0.0) for r in records}
        return len(records)

    async def load_pending(self) -> list[TaskRecord]:
        return [r.model_copy(deep=True) for r in self.pending_records.values()]

    async def clear_pending(self) -> None:
        self.pending_records.clear()
        self._claims.clear()

    async def close(self) -> None:
        return None

    async def delete(self, task_ids: Sequence[str]) -> int:
        removed = 0
        for task_id in task_ids:
            removed += self.history_records.pop(task_id, None) is not None
            self.pending_records.pop(task_id, None)
            self._claims.pop(task_id, None)
        return removed

    def coordinator(self) -> Coordinator:
        return self._coordinator


class _MemoryCoordinator:
    """The reference implementation of :class:`Coordinator` (one process, many managers)."""

    accepts_running = True  # accept() stores each record as given, status included

    def __init__(self, backend: MemoryBackend) -> None:
        self._b = backend

    async def accept(
        self,
        records: Sequence[TaskRecord],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        connection: Any = None,
    ) -> list[str]:
        until = time.monotonic() + lease_s
        fresh_after = utcnow() - timedelta(seconds=key_ttl_s)
        added = []
        for record in records:
            if record.task_id in self._b.pending_records:
                continue
            done = self._b.history_records.get(record.task_id)
            if (
                record.idempotency_key is not None
                and done is not None
                and done.status is TaskStatus.SUCCESS
                and (done.end_time or done.created_at) > fresh_after
            ):
                continue
            self._b.pending_records[record.task_id] = record.model_copy(deep=True)
            self._b._claims[record.task_id] = _Claim(owner=owner, lease_until=until)
            added.append(record.task_id)
        return added

    async def update(self, records: Sequence[TaskRecord]) -> None:
        for record in records:
            if record.task_id in self._b.pending_records:
                self._b.pending_records[record.task_id] = record.model_copy(deep=True)

    async def renew(self, owner: str, task_ids: Sequence[str], *, lease_s: float) -> list[str]:
        until = time.monotonic() + lease_s
        lost = []
        for task_id in task_ids:
            claim = self._b._claims.get(task_id)
            if claim is None or claim.owner != owner:
                lost.append(task_id)
            else:
                claim.lease_until = until
        return lost

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int,
        task_ids: Sequence[str] | None = None,
        reclaim_own: bool = False,
    ) -> list[TaskRecord]:
        now = time.monotonic()
        wanted = set(task_ids) if task_ids is not None else None
        taken: list[TaskRecord] = []
        for task_id, record in sorted(
            self._b.pending_records.items(), key=lambda item: item[1].created_at
        ):
            if len(taken) >= limit:
                break
            claim = self._b._claims[task_id]
            if wanted is not None and task_id not in wanted:
                continue
            free = claim.owner is None or claim.lease_until < now
            if free or (reclaim_own and claim.owner == owner):
                claim.owner, claim.lease_until = owner, now + lease_s
                taken.append(record.model_copy(deep=True))
        return taken

    async def release(self, owner: str, records: Sequence[TaskRecord]) -> None:
        for record in records:
            claim = self._b._claims.get(record.task_id)
            if claim is not None and claim.owner == owner:
                claim.owner, claim.lease_until = None, 0.0
                self._b.pending_records[record.task_id] = record.model_copy(
                    deep=True, update={"status": TaskStatus.PENDING}
                )

    async def live(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        return page_of(list(self._b.pending_records.values()), filter, limit, cursor)

    async def get_live(self, task_id: str) -> TaskRecord | None:
        return self._b.pending_records.get(task_id)

    async def request_cancel(self, task_id: str) -> bool:
        claim = self._b._claims.get(task_id)
        if claim is None:
            return False
        claim.cancel_requested = True
        return True

    async def cancel_requests(self, owner: str) -> list[str]:
        found = []
        for task_id, claim in self._b._claims.items():
            if claim.owner == owner and claim.cancel_requested:
                claim.cancel_requested = False
                found.append(task_id)
        return found
