"""Drain: on SIGTERM a gateway stops taking streams and exits once its calls have ended.

A deploy (docker compose, Kubernetes, systemd) stops a process with SIGTERM and kills it a while
later. Uvicorn's own answer to SIGTERM closes every open WebSocket at once: each call would be cut
mid-word. Here SIGTERM starts a drain instead:

1. the gateway refuses new streams with the 503 it uses at capacity (reason "draining") and `/ready`
   answers 503, so a load balancer or Kubernetes sends new calls to another gateway;
2. the calls in progress go on until they end, each by itself;
3. past GATEWAY_DRAIN_TIMEOUT_S each call still running is ended politely: the agent says its
   agent's time-limit line and hangs up (the call is never cut mid-word by the deploy);
4. once no stream is left (or `POLITE_END_GRACE_S` after the polite ends), the signal is handed on
   to the server, which then shuts down as it would have at once.

Works with a plain `uvicorn voice_gateway.main:create_app --factory` (the Dockerfile's command):
uvicorn installs its handler with `signal.signal` before the app starts, and the app's lifespan
chains in front of it (`attach`). Keep the orchestrator's kill delay longer than the drain
timeout (Kubernetes: terminationGracePeriodSeconds >= GATEWAY_DRAIN_TIMEOUT_S + 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)

POLL_S = 0.25
"""How often the drain looks at the stream count (a cheap read; a call lasts minutes)."""
POLITE_END_GRACE_S = 30.0
"""After the polite line: how long the calls get to say it and hang up before the process exits anyway."""
REFUSAL = "gateway draining: not taking new calls"


class Endable(Protocol):
    """A call the drain can end politely (`voice_gateway.session.CallSession`)."""

    async def _end_call(self, line: str, *, cut_short_ok: bool) -> None: ...


def closing_line(call: Any) -> str:
    """What the agent says when the drain timeout ends its call: its own time-limit line (the
    agent's words and language, chosen by whoever configured the agent)."""
    return str(call.agent.settings.limits.max_duration_line)


async def end_politely(call: Endable, line: str) -> None:
    """Say `line`, then hang up, even if the caller talks over it.

    `_end_call` is the session's own way to close a call (the time limit and idle hang-ups use it);
    the drain needs exactly that and nothing new from the session, so it calls it directly.
    """
    await call._end_call(line, cut_short_ok=True)


class Drain:
    """The drain of one gateway process: a flag the handshake reads, and the task that ends it."""

    def __init__(
        self,
        *,
        streams: Callable[[], int],
        calls: Callable[[], Iterable[Endable]],
        timeout_s: float,
        on_drained: Callable[[], None] = lambda: log.warning("drained: nothing told to exit"),
        on_polite_end: Callable[[], None] = lambda: None,
        line_for: Callable[[Any], str] = closing_line,
        grace_s: float = POLITE_END_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._streams = streams
        self._calls = calls
        self.timeout_s = timeout_s
        self.on_drained = on_drained
        """Called once the drain is over (`install_sigterm` makes it hand SIGTERM on to the server)."""
        self._on_polite_end = on_polite_end
        self._line_for = line_for
        self.grace_s = grace_s
        self._clock = clock
        self._sleep = sleep
        self.draining = False
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop, once `attach` has run (the drain's task runs there)."""
        self.ended_politely = 0
        """Calls the drain ended because the timeout passed."""

    def refusal(self) -> str:
        """Why a new stream is refused while draining (the body of the 503)."""
        return REFUSAL

    def request(self) -> None:
        """Start the drain from any thread (a signal handler, a test serving the app in a thread)."""
        if self.loop is None:
            raise RuntimeError("the drain is not attached to a running server (attach)")
        self.loop.call_soon_threadsafe(self.begin)

    def begin(self) -> asyncio.Task[None]:
        """On the server's loop: stop taking streams and start waiting for the calls to end (a second
        call changes nothing)."""
        if self.task is not None:
            log.info("draining already: still waiting for %d stream(s) to end", self._streams())
            return self.task
        self.draining = True
        log.warning("draining: no new streams; %d stream(s) open, exiting once they end (at most %.0f s, "
                    "then each call is ended politely)", self._streams(), self.timeout_s)
        self.task = asyncio.create_task(self._run(), name="gateway-drain")
        return self.task

    async def _run(self) -> None:
        try:
            if await self._until_idle(self.timeout_s):
                log.warning("draining: every call has ended")
            else:
                await self._end_remaining()
                if not await self._until_idle(self.grace_s):
                    log.error("draining: %d stream(s) still open %.0f s after the polite end: exiting anyway",
                              self._streams(), self.grace_s)
        except asyncio.CancelledError:
            raise  # the server is shutting down for another reason (SIGINT): it exits without us
        except Exception:  # a drain that fails must not keep the process up
            log.exception("draining failed: exiting now")
        self.on_drained()

    async def aclose(self) -> None:
        """At shutdown: stop a drain still waiting (the server is exiting anyway)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _until_idle(self, timeout_s: float) -> bool:
        """Poll the stream count with a deadline; True once none is left."""
        deadline = self._clock() + timeout_s
        while self._streams() > 0:
            if self._clock() >= deadline:
                return False
            await self._sleep(POLL_S)
        return True

    async def _end_remaining(self) -> None:
        calls = list(self._calls())
        log.warning("draining: timeout (%.0f s) passed: ending %d call(s) politely", self.timeout_s, len(calls))
        for call in calls:
            try:
                await end_politely(call, self._line_for(call))
            except Exception:  # one call that cannot be ended must not keep the others from it
                log.exception("draining: a call could not be ended politely")
                continue
            self.ended_politely += 1
            self._on_polite_end()


def attach(drain: Drain) -> Callable[[], None]:
    """At the server's start (its lifespan): bind `drain` to the running loop and make SIGTERM start
    it; once drained, the signal goes on to the handler it replaced (uvicorn's, which then shuts the
    server down). Returns what undoes it, for the lifespan's end.

    Outside the main thread (a test serving the app in a thread) no signal reaches the app: the
    drain is only bound, and such a test calls `drain.request()` itself.
    """
    drain.loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # a handler installed outside Python: deliver to the default action
        previous = signal.SIG_DFL

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        drain.request()  # only hands the work to the loop: a signal handler must not block or log

    def hand_on() -> None:
        """The drain is over: give SIGTERM back to its previous handler and deliver it."""
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)

    drain.on_drained = hand_on
    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore
