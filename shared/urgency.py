"""Urgency: which piece of model work the caller will hear soonest, and one gate that runs it first.

On a small machine every call's STT, LLM and TTS share the same few cores. Run side by side they
slow each other equally, so the reply the caller is about to hear is as late as a speculative guess
nobody may ever hear. Instead every heavy step (one STT pass, one TTS sentence, one batched LLM
decode step) passes through one `ComputeGate` that admits the most urgent waiter first:

- a reply already playing whose buffered audio is about to run out (its deadline is that moment),
- then the first clause of a confirmed turn (its deadline is when the caller stopped speaking),
- then a playing reply with plenty of audio still buffered,
- and speculative or background work last (no deadline): when the machine is busy it waits.

Work is tagged through a context variable, so the engines' Protocols stay as they are: a reply's task
sets `working_for(reply)` and every engine call made from that task (and the tasks it creates) is
gated with the reply's deadline, read again each time the gate chooses (deadlines move as audio plays).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


class Urgent(Protocol):
    """Anything whose work can be scheduled: the moment its next output is needed (`time.monotonic`)."""

    def deadline(self) -> float:
        """When the caller would hear a hole without this work; `math.inf` for speculative work."""
        ...


@dataclass(frozen=True)
class Fixed:
    """A constant urgency (warm-ups, a prompt prefill, work outside any call)."""

    at: float = math.inf

    def deadline(self) -> float:
        return self.at


BACKGROUND = Fixed(math.inf)
"""Speculative or background work: runs only when nothing with a deadline waits."""

_current: ContextVar[Urgent | None] = ContextVar("relayx_urgency", default=None)


def current() -> Urgent:
    """The urgency of the work being done now; untagged work counts as due now (never starved)."""
    handle = _current.get()
    return handle if handle is not None else Fixed(time.monotonic())


@contextlib.contextmanager
def working_for(handle: Urgent) -> Iterator[None]:
    """Tag the engine calls made inside (and tasks created inside) with `handle`'s urgency."""
    token = _current.set(handle)
    try:
        yield
    finally:
        _current.reset(token)


def is_speculative(handle: Urgent) -> bool:
    return math.isinf(handle.deadline())


class ComputeGate:
    """Admits `slots` holders at a time, the waiter with the earliest deadline first (FIFO on ties).

    Deadlines are read when a slot frees, not when a waiter arrives, so a speculative reply confirmed
    while it waits moves ahead at once. Thread-based: model work runs in worker threads.
    """

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.slots = slots
        self._lock = threading.Lock()
        self._held = 0
        self._waiters: dict[int, tuple[Urgent, threading.Event]] = {}
        self._order = itertools.count()
        self.admitted = 0

    @property
    def waiting(self) -> int:
        """Work queued behind the gate (the queue depth reported on /health)."""
        return len(self._waiters)

    @property
    def urgent_waiting(self) -> bool:
        """Some waiter has a deadline: speculative work should not start now."""
        with self._lock:
            return any(not is_speculative(h) for h, _ in self._waiters.values())

    @property
    def busy(self) -> bool:
        return self._held > 0 or bool(self._waiters)

    @contextlib.contextmanager
    def hold(self, handle: Urgent | None = None) -> Iterator[None]:
        """Block until this work is the most urgent with a free slot, then hold a slot."""
        who = handle if handle is not None else current()
        ticket = next(self._order)
        event = threading.Event()
        with self._lock:
            if self._held < self.slots and not self._waiters:
                self._take()
                event.set()
            else:
                self._waiters[ticket] = (who, event)
        if not event.is_set():
            try:
                event.wait()
            except BaseException:
                self._abandon(ticket, event)
                raise
        try:
            yield
        finally:
            self._release()

    def _take(self) -> None:
        self._held += 1
        self.admitted += 1

    def _abandon(self, ticket: int, event: threading.Event) -> None:
        with self._lock:
            if self._waiters.pop(ticket, None) is None and event.is_set():
                self._held -= 1  # granted just as we gave up: hand the slot on
                self._grant_locked()

    def _release(self) -> None:
        with self._lock:
            self._held -= 1
            self._grant_locked()

    def _grant_locked(self) -> None:
        while self._held < self.slots and self._waiters:
            ranked = [(who.deadline(), ticket) for ticket, (who, _) in self._waiters.items()]
            _, ticket = heapq.nsmallest(1, ranked)[0]
            _, event = self._waiters.pop(ticket)
            self._take()
            event.set()

    def run(self, fn: Callable[..., T], *args: object, handle: Urgent | None = None) -> T:
        """`fn(*args)` inside the gate (call it from a worker thread)."""
        with self.hold(handle):
            return fn(*args)


_gate = ComputeGate(1)


def gate() -> ComputeGate:
    """The process's one gate for model work: every engine in a gateway shares the same cores."""
    return _gate


class Skipped(Exception):
    """Gated work whose caller went away before its turn came (it is skipped, not run)."""


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    """Threads for gated work. Its own pool, roomy: a thread waiting at the gate must not hold up
    unrelated work queued behind it in asyncio's small default pool (that queue is FIFO, not urgent)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="gated")
        return _pool


async def run_gated(fn: Callable[..., T], *args: object) -> T:
    """Run blocking model work `fn(*args)` in a thread, admitted by the gate with the current urgency.

    Cancelling the awaiting task skips the work if it has not started (it cannot stop it midway).
    """
    handle = current()
    cancelled = threading.Event()

    def work() -> T:
        with _gate.hold(handle):
            if cancelled.is_set():
                raise Skipped
            return fn(*args)

    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_threads(), work)
    try:
        return await future
    except asyncio.CancelledError:
        cancelled.set()
        raise
