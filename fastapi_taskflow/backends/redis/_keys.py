"""Every key name the Redis backend uses, built from the prefix (layout in ``__init__``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ..._models import TaskRecord, TaskStatus

# status, func_name, queue, tags: what decides which index sets a record is in
Shape = tuple[str, str, str, tuple[tuple[str, str], ...]]


def shape(record: TaskRecord) -> Shape:
    status = TaskStatus(record.status).value
    return (status, record.func_name, record.queue, tuple(record.tags.items()))


@dataclass(frozen=True)
class Keys:
    """Key names for one prefix."""

    prefix: str

    # ---------------------------------------------------------------- history

    @property
    def all(self) -> str:
        return f"{self.prefix}:h:ix:all"

    @property
    def keyed_success(self) -> str:
        return f"{self.prefix}:h:ok"

    def record(self, task_id: str) -> str:
        return f"{self.prefix}:h:rec:{task_id}"

    def status(self, status: str) -> str:
        return f"{self.prefix}:h:ix:st:{status}"

    def func(self, func_name: str) -> str:
        return f"{self.prefix}:h:ix:fn:{func_name}"

    def queue(self, queue: str) -> str:
        return f"{self.prefix}:h:ix:q:{queue}"

    def status_func(self, status: str, func_name: str) -> str:
        return f"{self.prefix}:h:ix:sf:{status}:{func_name}"

    def tag(self, key: str, value: str) -> str:
        return f"{self.prefix}:h:ix:tag:{quote(key, safe='')}={quote(value, safe='')}"

    def indexes(self, record: TaskRecord) -> list[str]:
        """The index sets ``record`` belongs to."""
        return self.shape_indexes(shape(record))

    def shape_indexes(self, shape: Shape) -> list[str]:
        status, func_name, queue, tags = shape
        return [
            self.all,
            self.status(status),
            self.func(func_name),
            self.queue(queue),
            self.status_func(status, func_name),
            *(self.tag(k, v) for k, v in tags),
        ]

    def other_statuses(self, status: str, func_name: str) -> list[str]:
        """The status sets a record of ``status`` and ``func_name`` must not be in."""
        others = [s.value for s in TaskStatus if s.value != status]
        return [self.status(s) for s in others] + [self.status_func(s, func_name) for s in others]

    # ---------------------------------------------------------------- pending store

    @property
    def pending(self) -> str:
        return f"{self.prefix}:p:tasks"

    @property
    def pending_order(self) -> str:
        return f"{self.prefix}:p:order"

    @property
    def pending_free(self) -> str:
        return f"{self.prefix}:p:free"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:p:lease"

    @property
    def owners(self) -> str:
        return f"{self.prefix}:p:owner"

    @property
    def cancels(self) -> str:
        return f"{self.prefix}:p:cancel"

    def pending_store(self) -> list[str]:
        """Every key of the pending store, in the order the Lua scripts expect them."""
        return [
            self.pending,
            self.pending_order,
            self.pending_free,
            self.leases,
            self.owners,
            self.cancels,
        ]

    def claim_state(self) -> list[str]:
        """The keys the claim and release scripts use: the pending store but cancels."""
        return self.pending_store()[:5]
