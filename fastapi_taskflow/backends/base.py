"""The storage interface: :class:`SnapshotBackend` and :class:`HistoryRepository`.

A custom backend implements the six abstract methods of :class:`SnapshotBackend` and nothing
else. Everything past those six (native history queries, deletes, start-up hooks) is an
optional method with a safe default; the built-in SQL and Redis backends override them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._models import FunctionStats, TaskFilter, TaskPage, TaskRecord


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


class SnapshotBackend(abc.ABC):
    """Where task history and unfinished work are stored.

    History (``save``/``load``) and requeue (``save_pending``/``load_pending``/
    ``clear_pending``) are kept apart: separate tables or key namespaces.
    """

    @abc.abstractmethod
    async def save(self, records: list[TaskRecord]) -> int:
        """Upsert completed records into history; return how many were written."""

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

    def history(self) -> HistoryRepository | None:
        """A native history repository, or ``None`` to let the manager query ``load()``."""
        return None

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Remove records from history; return how many were removed.

        The default cannot delete selectively and reports 0.
        """
        return 0
