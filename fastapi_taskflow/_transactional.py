"""Transactional enqueue: a task written in the caller's own database transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import ConfigurationError, UnknownTaskError

if TYPE_CHECKING:
    from ._manager import TaskManager


async def enqueue_in_transaction(
    manager: TaskManager,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    connection: Any,
    *,
    idempotency_key: str | None,
    tags: dict[str, str] | None,
    priority: int | None,
    queue: str | None,
) -> str:
    """Write a pending task through ``connection`` (no commit) and start it after commit.

    The row carries no owner, so any instance may claim it once it is visible; the
    committing instance is woken by the commit so it does not wait for its next heartbeat.
    """
    coordinator = manager._coordinator
    if coordinator is None or manager.backend is None or not hasattr(manager.backend, "engine"):
        raise ConfigurationError(
            "enqueue(..., connection=...) needs a SQL backend shared by the instances "
            "(TaskManager(database_url='postgresql://...' | 'mysql://...' | 'sqlite:///...'))"
        )
    config = manager.registry.for_callable(func)
    if manager.registry.get(config.name) is None:
        raise UnknownTaskError(
            f"{config.name} must be registered with @task_manager.task to be enqueued in a "
            f"transaction: whichever instance picks it up looks it up by name"
        )
    job = manager._prepare(
        func, args, kwargs, idempotency_key=idempotency_key, tags=tags, priority=priority,
        queue=queue, source="transaction", task_id=None, created_at=None, context=None,
    )  # fmt: skip
    from ._arguments import check_storable

    check_storable(config.name, args, kwargs)
    conn = connection if isinstance(connection, AsyncConnection) else None
    if conn is None:
        get_connection = getattr(connection, "connection", None)
        if get_connection is None:
            raise ConfigurationError(
                "connection= takes an SQLAlchemy AsyncConnection or AsyncSession, got "
                f"{type(connection).__name__}"
            )
        conn = await get_connection()
    await coordinator.accept(
        [job.record], owner=None, lease_s=manager.lease_s,
        key_ttl_s=manager.idempotency_ttl_s, connection=conn,
    )  # fmt: skip
    leases = manager._leases
    loop = manager.loop
    if leases is not None:
        event.listen(
            conn.sync_connection, "commit", lambda _: loop.call_soon(leases.poke), once=True
        )
    return job.task_id
