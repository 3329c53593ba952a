"""Redis storage: task history with secondary indexes, and pending work, under one prefix.

Key layout, ``P`` being the prefix (``"taskflow"`` by default)::

    P:h:rec:<task_id>            string  one history record, as JSON
    P:h:ix:all                   zset    every history task id, scored by created_at (µs)
    P:h:ix:st:<status>           zset    the same, per status
    P:h:ix:fn:<func_name>        zset    per function
    P:h:ix:q:<queue>             zset    per queue
    P:h:ix:sf:<status>:<func>    zset    per status and function
    P:h:ix:tag:<key>=<value>     zset    per tag (key and value percent-encoded)
    P:p:tasks                    hash    unfinished work: task_id -> record JSON

Index members are task ids and scores are ``created_at`` in integer microseconds since the
epoch (exact in a double until the year 2255). Redis orders members of equal score by their
bytes, which for UTF-8 is the order of Python strings, so a reverse range walks history by
``(created_at, task_id)`` descending: exactly the keyset of :mod:`fastapi_taskflow._cursor`.
Needs Redis 6.2 or newer (``ZRANGE … BYSCORE REV``, ``ZMSCORE``).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import ValidationError

from .. import _cursor
from .._errors import BackendError, ConfigurationError, MissingDriverError, NotStartedError
from .._models import FunctionStats, TaskFilter, TaskPage, TaskRecord, TaskStatus
from .._query import stats_of
from .base import SnapshotBackend

try:
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    _driver_missing: ImportError | None = exc
else:
    _driver_missing = None

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["RedisBackend", "RedisHistoryRepository"]

_SCHEMES = ("redis", "rediss", "unix")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_CHUNK = 5_000  # members or key/value pairs per variadic command
_TX_RECORDS = 10_000  # records per save transaction
_MGET_CHUNK = 1_000
_MAX_SCAN_BATCH = 2_000


def _micros(moment: datetime) -> int:
    """Integer microseconds since the epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_US


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(members: Iterable[Any]) -> list[str]:
    return [_text(m) for m in members]


def _score(value: bytes | str | float) -> int:
    return int(float(value))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parse(raw: bytes | str, key: str) -> TaskRecord:
    try:
        return TaskRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise BackendError(f"Redis key {key!r} does not hold a valid task record") from exc


def _display_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}"
    query = "&".join(
        "password=***" if pair.lower().startswith("password=") else pair
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    shown = _display_url(url)
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigurationError(
            f"RedisBackend cannot use {shown!r}: the URL must start with redis://, rediss:// "
            "or unix://, e.g. 'redis://localhost:6379/0'"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"RedisBackend URL {shown!r} has an invalid port") from exc
    db = parts.path.strip("/")
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise ConfigurationError(
                f"RedisBackend URL {shown!r} names no socket: use 'unix:///path/to/redis.sock'"
            )
    elif not parts.hostname and port is None:
        raise ConfigurationError(
            f"RedisBackend URL {shown!r} names no host: use e.g. 'redis://localhost:6379/0'"
        )
    elif db and not db.isdigit():
        raise ConfigurationError(
            f"RedisBackend URL {shown!r}: the path must be a database number such as /0"
        )


@dataclass(frozen=True)
class _Keys:
    """Every key name the backend uses, built from the prefix."""

    prefix: str

    @property
    def all(self) -> str:
        return f"{self.prefix}:h:ix:all"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:p:tasks"

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
        return self.shape_indexes(_shape(record))

    def shape_indexes(self, shape: _Shape) -> list[str]:
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


# status, func_name, queue, tags: what decides which index sets a record is in
_Shape = tuple[str, str, str, tuple[tuple[str, str], ...]]


def _shape(record: TaskRecord) -> _Shape:
    status = TaskStatus(record.status).value
    return (status, record.func_name, record.queue, tuple(record.tags.items()))


# Removes the task ids in ARGV from every sorted set in KEYS (unpack is capped by Lua's
# stack, hence the slices). One call replaces a ZREM per set with a copy of every id. Sent
# with EVAL, which Redis caches by digest: no SCRIPT LOAD round trip, no NOSCRIPT case.
_UNINDEX_LUA = """
for _, key in ipairs(KEYS) do
  for i = 1, #ARGV, 4000 do
    redis.call('ZREM', key, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
end
return 0
"""


class RedisBackend(SnapshotBackend):
    """History and pending work in Redis, with native history queries.

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
    on Redis, history does not survive a Redis restart.
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
        _check_url(url)
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
        self.display_url = _display_url(url)
        self.prefix = prefix
        self.history_ttl_s = history_ttl_s
        self._keys = _Keys(prefix)
        self._given_client = client
        self._client: aioredis.Redis | None = None
        self._repository = RedisHistoryRepository(self)

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

    async def close(self) -> None:
        """Close the client this backend created (a client passed in stays open)."""
        client, self._client = self._client, None
        if client is not None and self._given_client is None:
            with self._errors("close"):
                await client.aclose()

    # ------------------------------------------------------------------ history writes

    async def save(self, records: list[TaskRecord]) -> int:
        """Upsert records and their index entries, in MULTI/EXEC transactions.

        A transaction means no reader sees a record half-indexed or a status change
        half-applied (out of the old status sets but not yet in the new one); it costs two
        extra commands. Up to 10,000 records go in one transaction, so a huge flush blocks
        the server for tens of milliseconds at a time rather than for the whole batch.
        Writes are variadic (one MSET or ZADD per index set, not per record) and encoded
        once, which keeps the client, where a pipeline spends its time, cheap.
        """
        latest = list({r.task_id: r for r in records}.values())
        for part in _chunks(latest, _TX_RECORDS):
            await self._save_transaction(part)
        if records and self.history_ttl_s is not None:
            await self._prune()
        return len(records)

    async def _save_transaction(self, records: Sequence[TaskRecord]) -> None:
        keys = self._keys
        payloads: list[str] = []
        shapes: dict[_Shape, list[bytes]] = defaultdict(list)  # flat score, member pairs
        for record in records:
            payloads += (keys.record(record.task_id), record.model_dump_json())
            pair = (str(_micros(record.created_at)).encode(), record.task_id.encode())
            shapes[_shape(record)] += pair
        adds: dict[str, list[bytes]] = defaultdict(list)
        stale: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for shape, pairs in shapes.items():
            for key in keys.shape_indexes(shape):
                adds[key] += pairs
            stale[shape[:2]] += pairs[1::2]
        client = self._require()
        with self._errors("save"):
            async with client.pipeline(transaction=True) as pipe:
                # A re-saved task may have changed status: drop it from the other statuses.
                for (status, func_name), ids in stale.items():
                    others = keys.other_statuses(status, func_name)
                    pipe.eval(_UNINDEX_LUA, len(others), *others, *ids)
                pipe.execute_command("MSET", *payloads)
                for key, pairs in adds.items():
                    pipe.execute_command("ZADD", key, *pairs)
                await pipe.execute()

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Remove records and their index entries; return how many records existed."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return 0
        keys = self._keys
        found = await self._fetch(ids)
        removals: dict[str, list[str]] = defaultdict(list)
        for task_id, record in zip(ids, found, strict=True):
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
                for part in _chunks(ids, _CHUNK):
                    pipe.delete(*(keys.record(i) for i in part))
                for key, members in removals.items():
                    for part in _chunks(members, _CHUNK):
                        pipe.zrem(key, *part)
                results = await pipe.execute()
        return sum(results[: math.ceil(len(ids) / _CHUNK)])

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
            await self.delete(_ids(expired))

    # ------------------------------------------------------------------ history reads

    async def load(self) -> list[TaskRecord]:
        """Every history record, oldest first."""
        with self._errors("load"):
            ids = await self._require().zrange(
                self._keys.all, "+inf", self._lower(None), desc=True, byscore=True
            )
        records = await self._fetch(_ids(reversed(ids)))
        return [r for r in records if r is not None]

    def history(self) -> RedisHistoryRepository:
        """The native history repository (indexed queries, counts, statistics)."""
        return self._repository

    async def _fetch(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records for ``task_ids`` in the same order, ``None`` where one is missing."""
        if not task_ids:
            return []
        keys = [self._keys.record(i) for i in task_ids]
        with self._errors("read history"):
            async with self._require().pipeline(transaction=False) as pipe:
                for part in _chunks(keys, _MGET_CHUNK):
                    pipe.mget(part)
                replies = await pipe.execute()
        raws = [raw for reply in replies for raw in reply]
        return [
            None if raw is None else _parse(raw, key) for key, raw in zip(keys, raws, strict=True)
        ]

    # ------------------------------------------------------------------ pending work

    async def save_pending(self, records: list[TaskRecord]) -> int:
        """Replace the stored unfinished tasks with ``records``, atomically."""
        key = self._keys.pending
        items = [(r.task_id, r.model_dump_json()) for r in records]
        with self._errors("save pending"):
            async with self._require().pipeline(transaction=True) as pipe:
                pipe.delete(key)
                for part in _chunks(items, _CHUNK):
                    pipe.hset(key, mapping=dict(part))
                await pipe.execute()
        return len(records)

    async def load_pending(self) -> list[TaskRecord]:
        """The unfinished tasks stored by :meth:`save_pending`, oldest first."""
        key = self._keys.pending
        with self._errors("load pending"):
            stored = await self._require().hgetall(key)
        records = [_parse(raw, key) for raw in stored.values()]
        records.sort(key=_cursor.sort_key)
        return records

    async def clear_pending(self) -> None:
        """Delete every stored unfinished task."""
        with self._errors("clear pending"):
            await self._require().delete(self._keys.pending)

    # ------------------------------------------------------------------ helpers

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise NotStartedError(
                f"{self!r} is not open: await backend.open() first "
                "(TaskManager.startup() does this)"
            )
        return self._client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise BackendError(f"Redis {action} failed at {self.display_url}: {exc}") from exc

    def _cutoff(self) -> int:
        """Microsecond score below which history has expired."""
        assert self.history_ttl_s is not None
        return _micros(datetime.now(UTC)) - int(self.history_ttl_s * 1_000_000)

    def _lower(self, since: datetime | None) -> str:
        """Inclusive lower score bound for reads: ``since`` and the TTL, whichever is later."""
        bounds = [] if since is None else [_micros(since)]
        if self.history_ttl_s is not None:
            bounds.append(self._cutoff())
        return str(max(bounds)) if bounds else "-inf"


# ---------------------------------------------------------------------- history queries


@dataclass
class _Stream:
    """Walks one index set newest first, from an upper bound down to ``lower``.

    ``offset`` counts the entries already taken at score ``upper``, so a batch that ends
    in the middle of a run of equal scores resumes exactly where it stopped.
    """

    key: str
    lower: str
    upper: int | None  # None: no upper bound yet, or the exclusive ``until`` below
    upper_exclusive: int | None
    after: tuple[int, str] | None  # keyset position to continue after (from a cursor)
    offset: int = 0
    done: bool = False
    buffer: deque[tuple[int, str]] = field(default_factory=deque)

    def request(self, pipe: Pipeline, size: int) -> None:
        if self.upper is not None:
            top = str(self.upper)
        elif self.upper_exclusive is not None:
            top = f"({self.upper_exclusive}"
        else:
            top = "+inf"
        pipe.zrange(
            self.key,
            top,
            self.lower,
            desc=True,
            byscore=True,
            withscores=True,
            offset=self.offset,
            num=size,
            score_cast_func=_score,
        )

    def absorb(self, rows: list[tuple[bytes | str, int]], size: int) -> None:
        self.done = len(rows) < size
        if not rows:
            return
        after = self.after
        for member, score in rows:
            task_id = _text(member)
            if after is None or (score, task_id) < after:
                self.buffer.append((score, task_id))
        last = rows[-1][1]
        if last == self.upper:
            self.offset += len(rows)
        else:
            self.upper = last
            self.offset = sum(1 for _, score in rows if score == last)


class _Scan:
    """Task ids of the union of some index sets, newest first, in batches.

    Each set is walked by its own :class:`_Stream`; a batch holds only entries newer than
    every entry not fetched yet, so merging the streams keeps the global order.
    """

    def __init__(self, client: aioredis.Redis, streams: list[_Stream]) -> None:
        self._client = client
        self._streams = streams

    async def next(self, size: int) -> list[str]:
        streams = self._streams
        # Refill until every live stream holds something: one whose batch was all skipped
        # (ties at the cursor's microsecond) could still hold the newest entry.
        while hungry := [s for s in streams if not s.buffer and not s.done]:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream in hungry:
                    stream.request(pipe, size)
                replies = await pipe.execute()
            for stream, rows in zip(hungry, replies, strict=True):
                stream.absorb(rows, size)
        # Entries at or above this key are newer than anything still unfetched.
        frontier = max((s.buffer[-1] for s in streams if not s.done), default=None)
        taken: list[tuple[int, str]] = []
        for stream in streams:
            buffer = stream.buffer
            while buffer and (frontier is None or buffer[0] >= frontier):
                taken.append(buffer.popleft())
        taken.sort(reverse=True)
        return [task_id for _, task_id in taken]


@dataclass(frozen=True)
class _Plan:
    """How to serve a filter: walk ``source`` (a union of sets), check ``others`` by
    membership (each a union too), and the score window for ``since``/``until``/TTL."""

    source: list[str]
    others: list[list[str]]
    lower: str
    upper_exclusive: int | None
    exact: bool  # the walk alone answers the filter: no membership or text checks


class RedisHistoryRepository:
    """History queries served from the Redis indexes of a :class:`RedisBackend`.

    A query walks the smallest index set that the filter implies (per status and function
    when both are given), keeps the ids that are members of the other implied sets, then
    fetches the records in batches and applies the full filter until a page is full.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    async def get(self, task_id: str) -> TaskRecord | None:
        """The history record with this id, or ``None``."""
        backend = self._backend
        (record,) = await backend._fetch([task_id])
        if record is None or backend.history_ttl_s is None:
            return record
        return record if _micros(record.created_at) >= backend._cutoff() else None

    async def query(
        self, filter: TaskFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Records matching ``filter``, newest first; ``cursor`` continues a previous page."""
        if limit < 1:
            raise ConfigurationError(f"query limit must be at least 1, got {limit}")
        after = None
        if cursor is not None:
            created_at, task_id = _cursor.decode(cursor)
            after = (_micros(created_at), task_id)
        plan = await self._plan(filter)
        scan = self._scan(plan, after)
        found: list[TaskRecord] = []
        size = limit + 1
        while len(found) <= limit:
            ids = await scan.next(size)
            if not ids:
                break
            ids = await self._narrow(ids, plan.others)
            records = await self._backend._fetch(ids)
            found.extend(r for r in records if r is not None and filter.matches(r))
            if not plan.exact:
                size = min(size * 4, _MAX_SCAN_BATCH)
        items = found[:limit]
        next_cursor = _cursor.encode(items[-1]) if len(found) > limit else None
        return TaskPage(items=items, next_cursor=next_cursor)

    async def count(self, filter: TaskFilter) -> int:
        """How many records match: ZCOUNT when one index answers, otherwise a scan."""
        plan = await self._plan(filter)
        if plan.exact:
            return sum(await self._zcounts(plan.source, plan))
        total = 0
        async for batch in self._matching_ids(plan):
            if filter.text:
                records = await self._backend._fetch(batch)
                total += sum(1 for r in records if r is not None and filter.matches(r))
            else:
                total += len(batch)
        return total

    async def stats(self, filter: TaskFilter) -> list[FunctionStats]:
        """Per-function totals, success rate and duration percentiles over the matches,
        computed exactly as for in-memory history (:func:`fastapi_taskflow._history.stats_of`).
        """
        matching: list[TaskRecord] = []
        async for batch in self._matching_ids(await self._plan(filter)):
            records = await self._backend._fetch(batch)
            matching += (r for r in records if r is not None and filter.matches(r))
        return stats_of(matching)

    # ------------------------------------------------------------------ planning

    async def _plan(self, filter: TaskFilter) -> _Plan:
        keys = self._backend._keys
        groups: list[list[str]] = []
        statuses = [TaskStatus(s).value for s in dict.fromkeys(filter.statuses)]
        if statuses and filter.func_name is not None:
            groups.append([keys.status_func(s, filter.func_name) for s in statuses])
        elif statuses:
            groups.append([keys.status(s) for s in statuses])
        elif filter.func_name is not None:
            groups.append([keys.func(filter.func_name)])
        if filter.queue is not None:
            groups.append([keys.queue(filter.queue)])
        groups.extend([keys.tag(k, v)] for k, v in filter.tags.items())
        if not groups:
            groups.append([keys.all])
        plan = _Plan(
            source=groups[0],
            others=groups[1:],
            lower=self._backend._lower(filter.since),
            upper_exclusive=None if filter.until is None else _micros(filter.until),
            exact=len(groups) == 1 and not filter.text,
        )
        if len(groups) == 1:
            return plan
        counts = await self._zcounts([k for group in groups for k in group], plan)
        sizes: list[int] = []
        for group in groups:
            sizes.append(sum(counts[: len(group)]))
            counts = counts[len(group) :]
        best = sizes.index(min(sizes))
        others = groups[:best] + groups[best + 1 :]
        return _Plan(groups[best], others, plan.lower, plan.upper_exclusive, exact=False)

    async def _zcounts(self, keys: list[str], plan: _Plan) -> list[int]:
        upper = "+inf" if plan.upper_exclusive is None else f"({plan.upper_exclusive}"
        with self._backend._errors("count history"):
            async with self._backend._require().pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zcount(key, plan.lower, upper)
                return [int(n) for n in await pipe.execute()]

    def _scan(self, plan: _Plan, after: tuple[int, str] | None) -> _Scan:
        upper = plan.upper_exclusive
        start: int | None = None
        if after is not None and (upper is None or after[0] < upper):
            start = after[0]
        streams = [
            _Stream(key, plan.lower, upper=start, upper_exclusive=upper, after=after)
            for key in plan.source
        ]
        return _Scan(self._backend._require(), streams)

    async def _matching_ids(self, plan: _Plan) -> AsyncIterator[list[str]]:
        """Async iterator of id batches from the source that pass the membership checks."""
        scan = self._scan(plan, None)
        while ids := await scan.next(_MAX_SCAN_BATCH):
            narrowed = await self._narrow(ids, plan.others)
            if narrowed:
                yield narrowed

    async def _narrow(self, ids: list[str], groups: list[list[str]]) -> list[str]:
        """Keep the ids that belong to at least one set of every group."""
        if not groups or not ids:
            return ids
        with self._backend._errors("query history"):
            async with self._backend._require().pipeline(transaction=False) as pipe:
                for group in groups:
                    for key in group:
                        pipe.zmscore(key, ids)
                replies: list[list[float | None]] = await pipe.execute()
        keep = [True] * len(ids)
        for group in groups:
            member = [False] * len(ids)
            for scores in replies[: len(group)]:
                member = [m or s is not None for m, s in zip(member, scores, strict=True)]
            replies = replies[len(group) :]
            keep = [k and m for k, m in zip(keep, member, strict=True)]
        return [i for i, k in zip(ids, keep, strict=True) if k]
