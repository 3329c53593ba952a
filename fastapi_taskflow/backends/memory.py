"""An in-memory backend: persistence semantics without a database, for tests and demos."""

from __future__ import annotations

from collections.abc import Sequence

from .._models import TaskRecord
from .base import SnapshotBackend


class MemoryBackend(SnapshotBackend):
    """Keeps history and pending work in dicts. Survives a manager restart in one process.

    Useful in tests: hand one instance to two successive ``TaskManager`` objects to check
    what your app persists and requeues, with no database.
    """

    def __init__(self) -> None:
        self.history_records: dict[str, TaskRecord] = {}
        self.pending_records: dict[str, TaskRecord] = {}

    async def save(self, records: list[TaskRecord]) -> int:
        for record in records:
            self.history_records[record.task_id] = record.model_copy(deep=True)
        return len(records)

    async def load(self) -> list[TaskRecord]:
        return [r.model_copy(deep=True) for r in self.history_records.values()]

    async def save_pending(self, records: list[TaskRecord]) -> int:
        self.pending_records = {r.task_id: r.model_copy(deep=True) for r in records}
        return len(records)

    async def load_pending(self) -> list[TaskRecord]:
        return [r.model_copy(deep=True) for r in self.pending_records.values()]

    async def clear_pending(self) -> None:
        self.pending_records.clear()

    async def close(self) -> None:
        return None

    async def delete(self, task_ids: Sequence[str]) -> int:
        removed = 0
        for task_id in task_ids:
            removed += self.history_records.pop(task_id, None) is not None
        return removed
