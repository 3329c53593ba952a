"""Small helpers shared by the Redis modules: conversions, chunking, URL checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from ..._errors import BackendError, ConfigurationError
from ..._models import TaskRecord

SCHEMES = ("redis", "rediss", "unix")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
CHUNK = 5_000  # members or key/value pairs per variadic command
TX_RECORDS = 10_000  # records per save transaction
MGET_CHUNK = 1_000
MAX_SCAN_BATCH = 2_000


def micros(moment: datetime) -> int:
    """Integer microseconds since the epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_US


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def ids(members: Iterable[Any]) -> list[str]:
    return [text(m) for m in members]


def score(value: bytes | str | float) -> int:
    return int(float(value))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse(raw: bytes | str, key: str) -> TaskRecord:
    try:
        return TaskRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise BackendError(f"Redis key {key!r} does not hold a valid task record") from exc


def display_url(url: str) -> str:
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


def check_url(url: str) -> None:
    parts = urlsplit(url)
    shown = display_url(url)
    if parts.scheme.lower() not in SCHEMES:
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
