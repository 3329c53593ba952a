"""Retry policy as a pure value: (exception, attempt) -> wait this long, or give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigurationError


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a failing task is retried.

    ``retries`` extra attempts after the first; before retry *n* (1-based) the executor waits
    ``delay * backoff ** (n - 1)`` seconds, capped at ``max_delay`` and spread by up to
    ``jitter`` (a fraction, 0.1 = plus or minus 10 %). Only exceptions that are instances of
    ``retry_on`` are retried; others fail the task at once.
    """

    retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        if self.delay < 0:
            raise ConfigurationError(f"delay must be >= 0 seconds, got {self.delay}")
        if self.backoff < 1:
            raise ConfigurationError(f"backoff must be >= 1.0, got {self.backoff}")
        if self.max_delay is not None and self.max_delay < 0:
            raise ConfigurationError(f"max_delay must be >= 0 seconds, got {self.max_delay}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be between 0 and 1, got {self.jitter}")
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"retry_on must hold exception classes, got {exc_type!r}")

    def next_delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds to wait before the next attempt after ``attempt`` failed with ``exc``.

        ``None`` means do not retry.
        """
        if attempt > self.retries or not isinstance(exc, self.retry_on):
            return None
        wait = self.delay * self.backoff ** (attempt - 1)
        if self.max_delay is not None:
            wait = min(wait, self.max_delay)
        if self.jitter and wait:
            wait *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(wait, 0.0)
