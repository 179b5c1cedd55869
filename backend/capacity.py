"""Before dialing: will the voice gateway carry one more call?

The gateway reports its capacity on /health (`voice_gateway.capacity`): the streams it holds, its
limit, and whether it takes one more. The backend reads that (at most once a second, with a one-second
timeout) and adds the calls it has placed that have not connected yet: a call rings for up to a minute
before its stream opens, and until then the gateway cannot count it. When the two reach the limit,
POST /calls/outbound answers 503 with Retry-After and writes no row.

A gateway that does not answer refuses nothing: the call is placed, and if the gateway really is down
the call fails visibly (the stream is refused, Twilio's status callback records the end). The capacity
check must never be the reason a working deployment stops dialing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import httpx
from pydantic import BaseModel, Field, ValidationError

from shared.storage.base import Storage, aware, utcnow

log = logging.getLogger(__name__)

PENDING_STATUSES = ("queued", "initiated", "ringing")
PENDING_WINDOW_S = 60.0
"""How long a placed call may count as about to connect: Twilio rings for 60 s by default before it
gives up. A row older than that and still `queued` has lost its callbacks; it is not a coming caller."""
PROBE_TIMEOUT_S = 1.0
"""The gateway answers /health from memory: a second is long, and dialing waits for it."""
PROBE_TTL_S = 1.0
"""One read serves every request in the next second (a campaign posting many calls reads once)."""


class GatewayCapacity(BaseModel):
    """The `capacity` object of the gateway's /health (the fields the backend needs)."""

    max_calls: int | None = Field(ge=1)
    """None: the gateway has no limit (GATEWAY_MAX_CALLS=0)."""
    streams: int = Field(ge=0)
    accepting: bool


class _GatewayHealth(BaseModel):
    capacity: GatewayCapacity


class AtCapacity(Exception):
    """The gateway cannot carry one more call now: answered as 503 with `Retry-After`."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def refusal(capacity: GatewayCapacity | None, pending: int) -> str | None:
    """Why one more call must not be placed, or None to place it.

    `capacity` is what the gateway said (None: it did not answer); `pending` counts the calls this
    backend placed recently that have not connected yet (each will take a stream when answered).
    """
    if capacity is None or capacity.max_calls is None:
        return None
    if not capacity.accepting or capacity.streams >= capacity.max_calls:
        return f"the voice gateway is at capacity: {capacity.streams} of {capacity.max_calls} calls"
    if capacity.streams + pending >= capacity.max_calls:
        return (f"the voice gateway is at capacity: {capacity.streams} calls connected and {pending} "
                f"being dialed, of {capacity.max_calls}")
    return None


class GatewayProbe:
    """Reads the gateway's capacity from its /health; None when it does not answer or says nothing
    of capacity (an older gateway)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = PROBE_TIMEOUT_S,
        ttl_s: float = PROBE_TTL_S,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = base_url.rstrip("/") + "/health"
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._ttl_s = ttl_s
        self._clock = clock
        self._read_at: float | None = None
        self._last: GatewayCapacity | None = None
        self._lock = asyncio.Lock()  # one read in flight; requests arriving meanwhile share its answer

    async def capacity(self) -> GatewayCapacity | None:
        async with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < self._ttl_s:
                return self._last
            self._last = await self._read()
            self._read_at = self._clock()
            return self._last

    async def _read(self) -> GatewayCapacity | None:
        try:
            response = await self._client.get(self.url)
            # Any status: a gateway whose database is down answers 503 and still reports its capacity.
            return _GatewayHealth.model_validate_json(response.content).capacity
        except httpx.HTTPError as exc:
            log.debug("gateway capacity unknown (%s did not answer: %r): placing calls anyway", self.url, exc)
        except ValidationError:
            log.debug("gateway capacity unknown (%s reports none): placing calls anyway", self.url)
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


async def pending_calls(storage: Storage, *, since: datetime, limit: int) -> int:
    """Calls created since `since` that have not connected yet, counted up to `limit` per status
    (no more is needed to decide, and the count stays cheap on a large table)."""
    count = 0
    for status in PENDING_STATUSES:
        rows = await storage.list_calls(status=status, limit=limit)  # newest first
        count += sum(1 for row in rows if aware(row.created_at) >= since)
    return count


class Admission:
    """Lets one outbound call at a time be checked against the gateway and written, so two requests
    racing for the last free stream cannot both be placed: the second sees the first one's row."""

    def __init__(
        self,
        probe: GatewayProbe,
        *,
        retry_after_s: int,
        window_s: float = PENDING_WINDOW_S,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.probe = probe
        self.retry_after_s = retry_after_s
        self.window_s = window_s
        self._now = now
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def admit(self, storage: Storage) -> AsyncIterator[None]:
        """Raises `AtCapacity`, or holds the admission while the block writes the call row."""
        async with self._lock:
            capacity = await self.probe.capacity()
            pending = 0
            if capacity is not None and capacity.max_calls is not None:
                since = self._now() - timedelta(seconds=self.window_s)
                pending = await pending_calls(storage, since=since, limit=capacity.max_calls)
            reason = refusal(capacity, pending)
            if reason is not None:
                log.warning("outbound call refused: %s", reason)
                raise AtCapacity(reason, self.retry_after_s)
            yield

    async def headroom(self, storage: Storage) -> int | None:
        """How many more calls may be placed now (a campaign dispatch claims at most this many);
        None when the gateway does not say (no limit, or no answer: dial, as `admit` would)."""
        async with self._lock:
            capacity = await self.probe.capacity()
            if capacity is None or capacity.max_calls is None:
                return None
            if not capacity.accepting:
                return 0
            since = self._now() - timedelta(seconds=self.window_s)
            pending = await pending_calls(storage, since=since, limit=capacity.max_calls)
            return max(0, capacity.max_calls - capacity.streams - pending)

    async def aclose(self) -> None:
        await self.probe.aclose()
