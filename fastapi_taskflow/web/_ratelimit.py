"""Login rate limiting, in memory: failed attempts per client address and per username."""

from __future__ import annotations

import time
from collections import deque

_MAX_KEYS = 10_000


class LoginLimiter:
    """At most ``max_failures`` failed logins per client and ``4 * max_failures`` per
    username within ``window_s`` seconds; further attempts wait until old failures expire.

    Counts live in this process only (several instances each count their own).
    """

    def __init__(self, *, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _limits(self, client: str, username: str) -> list[tuple[str, int]]:
        return [
            (f"client:{client}", self.max_failures),
            (f"user:{username}", 4 * self.max_failures),
        ]

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.get(key)
        if stamps is None:
            return deque()
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
        return stamps

    def retry_after(self, client: str, username: str) -> float:
        """Seconds until another attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic()
        wait = 0.0
        for key, limit in self._limits(client, username):
            stamps = self._recent(key, now)
            if len(stamps) >= limit:
                wait = max(wait, stamps[len(stamps) - limit] + self.window_s - now)
        return wait

    def failed(self, client: str, username: str) -> None:
        now = time.monotonic()
        for key, limit in self._limits(client, username):
            stamps = self._recent(key, now)
            stamps.append(now)
            while len(stamps) > limit:
                stamps.popleft()
            self._failures[key] = stamps
        while len(self._failures) > _MAX_KEYS:  # bounded memory under a spray of names
            del self._failures[next(iter(self._failures))]

    def succeeded(self, username: str) -> None:
        # Only the username's count: a valid login must not reset a client's failures
        # against other accounts.
        self._failures.pop(f"user:{username}", None)
