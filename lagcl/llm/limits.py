"""Requests-per-minute and tokens-per-minute limits as async token buckets.

A bucket refills continuously at `per_minute / 60` units per second and holds at most `burst`
units, so a run starts with a short burst and then settles at the configured rate (providers
enforce their per-minute limits the same way, continuously, not per calendar minute). A request larger
than the bucket waits for a full bucket and then runs, leaving the bucket in debt, so it is never
starved.
"""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    def __init__(self, per_minute: float | None, burst: float | None = None) -> None:
        self.rate = None if not per_minute else per_minute / 60.0
        # default burst: ten seconds' worth (at least one unit)
        self.capacity = 0.0 if self.rate is None else max(1.0, burst if burst is not None else self.rate * 10)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None

    async def acquire(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        if self._lock is None:  # created lazily: the limiter may outlive one event loop
            self._lock = asyncio.Lock()
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= need:
                    self._tokens -= amount
                    return
                await asyncio.sleep((need - self._tokens) / self.rate)

    def reset_loop(self) -> None:
        self._lock = None
