"""Opaque keyset cursors over ``(created_at, task_id)``, newest first."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from ._errors import ConfigurationError
from ._models import SealedRecord, TaskRecord

Key = tuple[datetime, str]


def sort_key(record: TaskRecord | SealedRecord) -> Key:
    """The key history is ordered by (descending)."""
    return (record.created_at, record.task_id)


def encode(record: TaskRecord | SealedRecord) -> str:
    """A cursor that continues after ``record``."""
    raw = f"{record.created_at.isoformat()}|{record.task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> Key:
    """Turn a cursor back into its key; a bad cursor raises ``ConfigurationError``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, task_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"invalid cursor {cursor!r}: pass the next_cursor value of a previous page"
        ) from exc
    if created_at.tzinfo is None:
        raise ConfigurationError(f"invalid cursor {cursor!r}: it carries no timezone")
    return (created_at, task_id)
