"""Token buckets: how many requests a caller may make, and how long a refused one should wait.

Pure logic on an injected clock (no I/O, no sleeps), so limits are tested on a fake clock and shared
by both services: the backend limits its REST API per API key (or per address when the key is
missing or wrong), the voice gateway limits how often one address may open a stream.

A bucket holds up to `burst` tokens and refills at `rate_per_s`; a request takes one token. A caller
that waited long enough is back to a full burst, so short bursts pass and a sustained flood is held
to the rate. The state per key is two floats in a table of at most `max_keys` entries: the least
recently seen key is forgotten first (its bucket has had the longest to refill, so it is most likely
full, and a full bucket is the same as a fresh one), so memory stays bounded however many keys are seen.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
"""Seconds on a monotonic clock (`time.monotonic` in production, a settable value in tests)."""


@dataclass(frozen=True)
class Decision:
    """The answer to one request: allowed or not, and when to retry (whole seconds, for Retry-After)."""

    allowed: bool
    retry_after_s: int = 0
    remaining: int = 0


class TokenBucket:
    """One caller's allowance: at most `burst` at once, `rate_per_s` sustained."""

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> Decision:
        """Spend one token if there is one; otherwise say how long until there is."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return Decision(allowed=True, remaining=int(self._tokens))
        wait = (1.0 - self._tokens) / self.rate_per_s
        # Retry-After is whole seconds; rounding down would send the caller back too early.
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(wait)), remaining=0)

    def _refill(self, now: float) -> None:
        # A clock that steps back (never for time.monotonic; possible for a test's clock) adds nothing.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        self._updated = max(self._updated, now)


class RateLimiter:
    """A token bucket per key (an API key's digest, an address), in a bounded table.

    `per_minute=0` disables the limiter: every request is allowed and nothing is stored. Not
    thread-safe: one event loop calls `check` (each call is atomic there, it never awaits).
    """

    def __init__(
        self, per_minute: int, burst: int, *, clock: Clock = time.monotonic, max_keys: int = 10_000
    ) -> None:
        if per_minute < 0:
            raise ValueError("per_minute cannot be negative (0 disables the limiter)")
        if burst < 1 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1")
        self.per_minute = per_minute
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def check(self, key: str) -> Decision:
        """Take one token from `key`'s bucket (made full on first sight)."""
        if not self.enabled:
            return Decision(allowed=True, remaining=self.burst)
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                # O(1): a caller that needs max_keys other identities to get a fresh burst gains little.
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.per_minute / 60.0, self.burst, now)
        else:
            self._buckets.move_to_end(key)  # the table is ordered least recently seen first
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
