"""The storage interface: :class:`SnapshotBackend` and :class:`HistoryRepository`.

A custom backend implements the six abstract methods of :class:`SnapshotBackend` and nothing
else. Everything past those six (native history queries, deletes, start-up hooks) is an
optional method with a safe default; the built-in SQL and Redis backends override them.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from typing import Any, Protocol, runtime_checkable

from .._models import Finished, FunctionStats, TaskFilter, TaskPage, TaskRecord, unseal


@runtime_checkable
class HistoryRepository(Protocol):
    """Read access to task history, newest first, with keyset pagination."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record with this id, or ``None``."""
        ...

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Records matching ``filter``, newest first, at most ``limit`` of them."""
        ...

    async def count(self, filter: TaskFilter) -> int:
        """How many records match ``filter``."""
        ...

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        """Per-function aggregates over the records matching ``filter``."""
        ...


@runtime_checkable
class Coordinator(Protocol):
    """Shared state that lets several instances act as one: a write-ahead pending store
    with leases, idempotency keys, a shared live view and cross-instance cancellation.

    A backend that offers a coordinator must also make :meth:`SnapshotBackend.save` remove
    the saved task ids from its pending store in the same transaction: a task's terminal
    record landing in history is what completes it.

    Records are passed as they are, not copied: read (serialise) them before the first
    ``await``, as the built-in coordinators do; the caller may change them afterwards.

    A coordinator with a class attribute ``accepts_running = True`` promises that
    :meth:`accept` stores each record's ``status`` as given: the manager then writes a task
    that starts as soon as it is durable ahead as ``running`` in that one write. Without
    it, every task is written ahead as pending and marked running by :meth:`update` before
    it starts.
    """

    async def accept(
        self,
        records: Sequence[TaskRecord],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        connection: Any = None,
    ) -> list[str]:
        """Durably add newly accepted tasks to the pending store, held by ``owner`` for
        ``lease_s`` seconds (``owner=None``: any instance may claim them); return the ids
        actually added.

        A record is skipped when its ``task_id`` is already in the pending store, or (for a
        record with an ``idempotency_key``) when history holds that id with status success
        and ``end_time`` within the last ``key_ttl_s`` seconds. Task ids of keyed tasks are
        derived from the key, so this makes idempotency atomic across instances. With
        ``connection`` (an SQLAlchemy ``AsyncConnection``), write inside the caller's open
        transaction instead of a transaction of its own.
        """
        ...

    async def update(self, records: Sequence[TaskRecord]) -> None:
        """Store the current state of live tasks (status, attempts, logs) for the shared
        live view; tasks no longer in the pending store are ignored."""
        ...

    async def renew(self, owner: str, task_ids: Sequence[str], *, lease_s: float) -> list[str]:
        """Extend ``owner``'s leases; return the ids among ``task_ids`` it no longer holds."""
        ...

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int,
        task_ids: Sequence[str] | None = None,
        reclaim_own: bool = False,
    ) -> list[TaskRecord]:
        """Atomically take up to ``limit`` pending tasks that nobody holds or whose lease
        expired (optionally only ``task_ids``; with ``reclaim_own``, also those ``owner``
        held in a previous life). Each task is claimed by exactly one caller."""
        ...

    async def release(self, owner: str, records: Sequence[TaskRecord]) -> None:
        """Give tasks back (status pending, no owner) so that any instance may run them."""
        ...

    async def live(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Tasks in the pending store (pending or running on any instance), newest first."""
        ...

    async def get_live(self, task_id: str) -> TaskRecord | None:
        """One task of the pending store, or ``None``."""
        ...

    async def request_cancel(self, task_id: str) -> bool:
        """Ask the instance running ``task_id`` to cancel it; False if it is not pending."""
        ...

    async def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s tasks whose cancellation was requested (and not yet seen)."""
        ...


def copies(records: Sequence[Finished]) -> list[TaskRecord]:
    """Records of their own for what the flusher buffered (for a ``save`` that may await
    before it reads them)."""
    return [unseal(r) if isinstance(r, tuple) else r.model_copy() for r in records]


class SnapshotBackend(abc.ABC):
    """Where task history and unfinished work are stored.

    History (``save``/``load``) and requeue (``save_pending``/``load_pending``/
    ``clear_pending``) are kept apart: separate tables or key namespaces.
    """

    @abc.abstractmethod
    async def save(self, records: list[TaskRecord]) -> int:
        """Upsert completed records into history; return how many were written."""

    async def _save_history(self, records: list[Finished], pending_ids: Collection[str]) -> int:
        """How the flusher saves: :meth:`save`, told which records may have a row in the
        pending store (the others were never written ahead or adopted).

        ``records`` are the live ones, and a light task's seal stands for its record. This
        default gives :meth:`save` copies (records built from the seals), since it may
        await before reading them and a task retried meanwhile would change what is
        written; the built-in backends, whose ``save`` reads at once, skip the copy, write
        seals as they are and use the hint (unless their ``save`` is overridden, which then
        sees every write)."""
        return await self.save(copies(records))

    def _history_beside_write_ahead(self) -> bool:
        """Whether history writes may run while a write-ahead transaction is in flight (on
        another connection). The flusher then writes history beside its write-ahead
        cycles instead of inside them, so accepted tasks never wait behind a large history
        batch. False here: a custom backend gets one write at a time."""
        return False

    def _save_is_native(self, cls: type[SnapshotBackend]) -> bool:
        """Whether :meth:`save` is ``cls.save`` itself: not overridden in a subclass, nor
        wrapped on this instance."""
        return getattr(self.save, "__func__", None) is cls.save

    @abc.abstractmethod
    async def load(self) -> list[TaskRecord]:
        """Return every completed record in history."""

    @abc.abstractmethod
    async def save_pending(self, records: list[TaskRecord]) -> int:
        """Replace the stored unfinished tasks with ``records``; return how many."""

    @abc.abstractmethod
    async def load_pending(self) -> list[TaskRecord]:
        """Return the unfinished tasks stored by :meth:`save_pending`."""

    @abc.abstractmethod
    async def clear_pending(self) -> None:
        """Delete every stored unfinished task."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and buffers."""

    # Optional capabilities. Defaults keep a six-method backend fully working.

    async def open(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Connect and prepare storage (tables, migrations). Called once at start-up."""

    def coordinator(self) -> Coordinator | None:
        """Multi-instance coordination, or ``None`` (the default): then unfinished tasks are
        saved with :meth:`save_pending` at shutdown and requeued at the next start-up."""
        return None

    def history(self) -> HistoryRepository | None:
        """A native history repository, or ``None`` to let the manager query ``load()``."""
        return None

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Remove records from history; return how many were removed.

        The default cannot delete selectively and reports 0.
        """
        return 0
