"""A task in flight: its record plus what is needed to run it."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from dataclasses import dataclass, field
from typing import Any

from ._models import TaskRecord
from ._registry import TaskConfig


class Stage(enum.Enum):
    HELD = "held"  # added during a request, waits for the response to be sent
    WAITING = "waiting"  # accepted by a queue, waits for a free slot
    STARTING = "starting"  # has its running slot, waits for the starter to call it
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False, slots=True, kw_only=True)
class Job:
    task_id: str  # the record's id (read often: kept here to skip a pydantic lookup)
    record: TaskRecord
    config: TaskConfig
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: contextvars.Context | None = None
    stage: Stage = Stage.HELD
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    interrupted: bool = False
    in_thread: bool = False
    args_stored: bool = True
    done: asyncio.Event | None = field(default=None)
    durable: asyncio.Future[bool] | None = None  # write-ahead outcome, for persisted tasks
    dispatched: bool = False  # handed to dispatch() (may still wait for durability)
    leased: bool = False  # held in the shared pending store under this instance's lease
    # Holds a running slot taken as its write-ahead was prepared (Dispatcher.reserve): it
    # starts the moment that write is durable, which recorded it as running (``marked``).
    reserved: bool = False
    marked: bool = False
