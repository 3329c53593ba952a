"""Live updates over server-sent events: one small event per changed task.

One :class:`EventHub` per admin holds a single subscription to the task store. Its pump
encodes each changed record once (a table row, a few hundred bytes) and hands the same bytes
to every connected client, so a change costs the same however many tasks exist and each
client adds only a queue append and a socket write. A client that falls too far behind (or
a store subscription that overflowed) gets one ``reset`` event and refetches what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from .._models import TaskRecord
from .._store import Subscription, TaskStore
from ._schemas import TaskRowOut

RESET = b"event: reset\ndata: {}\n\n"
PING = b": keep-alive\n\n"
HELLO = b"retry: 2000\nevent: hello\ndata: {}\n\n"


def encode(record: TaskRecord) -> bytes:
    return b"event: task\ndata: " + TaskRowOut.of(record).model_dump_json().encode() + b"\n\n"


class Client:
    """One open event stream: frames waiting to be written, bounded."""

    def __init__(self, max_backlog: int) -> None:
        self.frames: deque[bytes] = deque()
        self.max_backlog = max_backlog
        self.wakeup = asyncio.Event()
        self.closed = False
        self.bytes_sent = 0

    def push(self, frames: list[bytes]) -> None:
        if len(self.frames) + len(frames) > self.max_backlog:
            self.frames.clear()
            self.frames.append(RESET)
        else:
            self.frames.extend(frames)
        self.wakeup.set()

    def take(self) -> bytes:
        chunk = b"".join(self.frames)
        self.frames.clear()
        self.wakeup.clear()
        self.bytes_sent += len(chunk)
        return chunk


class EventHub:
    """Fans the store's change feed out to the connected dashboards."""

    def __init__(self, store: TaskStore, *, max_backlog: int = 2000) -> None:
        self._store = store
        self._max_backlog = max_backlog
        self._clients: set[Client] = set()
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self.encode_seconds = 0.0  # time spent encoding (shared by all clients)
        self.fanout_seconds = 0.0  # time spent queueing frames for clients

    @property
    def clients(self) -> int:
        return len(self._clients)

    def connect(self) -> Client:
        client = Client(self._max_backlog)
        self._clients.add(client)
        if self._subscription is None:  # subscribe now, so no change slips by
            subscription = self._store.subscribe(maxsize=10_000)
            self._subscription = subscription
            self._pump = asyncio.create_task(
                self._run(subscription), name="fastapi-taskflow-events"
            )
        return client

    def disconnect(self, client: Client) -> None:
        self._clients.discard(client)

    async def close(self) -> None:
        """End every stream and stop the pump (at application shut-down)."""
        for client in list(self._clients):
            client.closed = True
            client.wakeup.set()
        self._clients.clear()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None

    async def _run(self, subscription: Subscription) -> None:
        try:
            while self._clients:
                await self._forward(subscription)
        finally:
            self._store.unsubscribe(subscription)
            self._subscription = None

    async def _forward(self, subscription: Subscription) -> None:
        changed: dict[str, TaskRecord] = {}
        try:
            async with asyncio.timeout(1.0):  # also notices an overflow with no change after
                record = await subscription.queue.get()
                changed[record.task_id] = record
        except TimeoutError:
            pass
        while not subscription.queue.empty():  # a burst: one frame per task, latest state
            record = subscription.queue.get_nowait()
            changed[record.task_id] = record
        started = time.perf_counter()
        if subscription.overflowed:
            subscription.overflowed = False
            frames = [RESET]
        else:
            frames = [encode(r) for r in changed.values()]
        encoded = time.perf_counter()
        if frames:
            for client in self._clients:
                client.push(frames)
        self.encode_seconds += encoded - started
        self.fanout_seconds += time.perf_counter() - encoded

    async def stream(self, *, keepalive_s: float, max_age_s: float) -> AsyncIterator[bytes]:
        """The bytes of one event stream; it ends after ``max_age_s`` (the browser then
        reconnects and refetches), so open streams never hold up a server's shut-down for
        long."""
        deadline = time.monotonic() + max_age_s
        client = self.connect()
        try:
            yield HELLO
            while not client.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(min(keepalive_s, remaining)):
                        await client.wakeup.wait()
                except TimeoutError:
                    yield PING
                    continue
                chunk = client.take()
                if chunk:
                    yield chunk
        finally:
            self.disconnect(client)


def build_events_router(hub: EventHub, *, keepalive_s: float, max_age_s: float) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        summary="Live task changes (server-sent events: hello, task, reset)",
    )
    async def events(
        max_age: Annotated[
            float | None, Query(gt=0, le=3600, description="End the stream after seconds")
        ] = None,
    ) -> StreamingResponse:
        age = min(max_age, max_age_s) if max_age is not None else max_age_s
        return StreamingResponse(
            hub.stream(keepalive_s=keepalive_s, max_age_s=age),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
        )

    return router
