"""Urgency: which piece of model work the caller will hear soonest, and one gate that runs it first.

On a small machine every call's STT, LLM and TTS share the same few cores. Run side by side they
slow each other equally, so the reply the caller is about to hear is as late as a speculative guess
nobody may ever hear. Instead every heavy step (one STT pass, one TTS sentence, one batched LLM
decode step) passes through one `ComputeGate` that shares out the machine's cores, the most urgent
waiter first, and tells each step how many threads to run on:

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
import os
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


CONTENDED_S = 0.25
"""How recently another reply must have used the gate for the cores to count as shared (see
`ComputeGate`): longer than the pauses between one reply's steps (an LLM step's sampling, the gap
between two TTS clauses), shorter than a turn."""


class Held:
    """One holder's share of the gate: `threads` cores, which `shrink` can give back early."""

    def __init__(self, gate: ComputeGate, threads: int) -> None:
        self._gate = gate
        self.threads = threads

    def shrink(self, threads: int) -> None:
        """Keep only `threads` cores (a job whose next part cannot use the rest: Whisper's decode)."""
        if 1 <= threads < self.threads:
            self._gate._give_back(self.threads - threads)
            self.threads = threads


@dataclass
class _Waiter:
    handle: Urgent
    most: int
    event: threading.Event
    short: bool
    granted: int = 0


_held: threading.local = threading.local()


def held() -> Held | None:
    """The share of the gate the calling thread holds now (None outside the gate): engines read it to
    run on as many threads as they were given."""
    return getattr(_held, "share", None)


def granted_threads(default: int) -> int:
    """Threads the calling thread's work may use: what the gate gave it, or `default` outside the gate."""
    share = held()
    return share.threads if share is not None else default


class ComputeGate:
    """Shares `cores` between model work, the waiter with the earliest deadline first (FIFO on ties).

    Deadlines are read when cores free up, not when a waiter arrives, so a speculative reply confirmed
    while it waits moves ahead at once. Thread-based: model work runs in worker threads.

    A job asks for up to `most` threads and gets them all while no other reply competes for the gate
    (see `hold` for what competes). When replies of several calls compete, each job gets one core and
    two jobs run side by side: every engine here gains less than 2x from its second thread (measured
    on 2 cores: a llama.cpp decode step 1.6x, Whisper's encoder 1.5x, a Piper sentence 1.3-1.65x), so
    two one-thread jobs at once finish more work per second than the same two one after the other on
    two threads. One call alone keeps every core for each step.
    """

    def __init__(self, cores: int = 1) -> None:
        if cores < 1:
            raise ValueError("a gate needs at least one core")
        self.cores = cores
        self._lock = threading.Lock()
        self._free = cores
        self._holding: dict[int, Urgent] = {}
        """Who holds cores now, by ticket."""
        self._waiters: dict[int, _Waiter] = {}
        self._order = itertools.count()
        self._recent: dict[int, tuple[Urgent, float]] = {}
        """Replies (by identity) that used the gate lately, and when: is the machine shared?"""
        self.admitted = 0
        self.shared = 0
        """Admissions cut to one core because another reply competed (read by tests and traces)."""

    def resize(self, cores: int) -> None:
        """Set the cores shared out (at start-up, from settings, before any work holds the gate)."""
        if cores < 1:
            raise ValueError("a gate needs at least one core")
        with self._lock:
            self._free += cores - self.cores
            self.cores = cores
            self._grant_locked()

    @property
    def waiting(self) -> int:
        """Work queued behind the gate (the queue depth reported on /health)."""
        return len(self._waiters)

    @property
    def urgent_waiting(self) -> bool:
        """Some waiter has a deadline: speculative work should not start now."""
        with self._lock:
            return any(not is_speculative(w.handle) for w in self._waiters.values())

    @property
    def busy(self) -> bool:
        return bool(self._holding) or bool(self._waiters)

    @property
    def quiet(self) -> bool:
        """No work with a deadline holds or waits for the gate, nor used it within `CONTENDED_S`: the
        cores are idle but for background work, and background work started now delays no reply."""
        with self._lock:
            now = time.monotonic()
            others = [*self._holding.values(), *(w.handle for w in self._waiters.values())]
            return all(is_speculative(h) for h in others) \
                and all(now - at > CONTENDED_S for _, at in self._recent.values())

    @contextlib.contextmanager
    def hold(self, handle: Urgent | None = None, *, most: int = 1, short: bool = False) -> Iterator[Held]:
        """Block until this work is the most urgent and a core is free; hold up to `most` cores.

        `short`: one of many short steps (an LLM decode step), which takes every free core while no
        other reply waits, since its next step chooses again. Longer work (a Whisper pass, a Piper
        sentence) takes one core while another reply used the gate in the last `CONTENDED_S`: that
        reply's next step will want a core, and the long job would otherwise keep it waiting."""
        waiter = _Waiter(handle if handle is not None else current(), max(1, min(most, self.cores)),
                         threading.Event(), short)
        ticket = next(self._order)
        with self._lock:
            self._waiters[ticket] = waiter
            self._grant_locked()
        if not waiter.event.is_set():
            try:
                waiter.event.wait()
            except BaseException:
                self._abandon(ticket, waiter)
                raise
        share = Held(self, waiter.granted)
        previous = held()
        _held.share = share
        try:
            yield share
        finally:
            _held.share = previous
            with self._lock:
                del self._holding[ticket]
                self._note_locked(waiter.handle)
                self._free += share.threads
                self._grant_locked()

    def _give_back(self, threads: int) -> None:
        with self._lock:
            self._free += threads
            self._grant_locked()

    def _abandon(self, ticket: int, waiter: _Waiter) -> None:
        with self._lock:
            if self._waiters.pop(ticket, None) is None and waiter.event.is_set():
                self._holding.pop(ticket, None)  # granted just as we gave up: hand the cores on
                self._free += waiter.granted
                self._grant_locked()

    def _note_locked(self, handle: Urgent) -> None:
        now = time.monotonic()
        for key, (_, at) in list(self._recent.items()):
            if now - at > CONTENDED_S:
                del self._recent[key]
        if not is_speculative(handle):
            self._recent[id(handle)] = (handle, now)  # the entry keeps `handle` alive: its id stays its own

    def _shared_locked(self, waiter: _Waiter) -> bool:
        """Another reply with a deadline waits for or holds the gate now, or, for work that is not
        `short`, used it within `CONTENDED_S` (and will be back before this work is done)."""
        others = [w.handle for w in self._waiters.values()] + list(self._holding.values())
        if any(h is not waiter.handle and not is_speculative(h) for h in others):
            return True
        if waiter.short:
            return False
        now = time.monotonic()
        return any(handle is not waiter.handle and now - at <= CONTENDED_S for handle, at in self._recent.values())

    def _grant_locked(self) -> None:
        while self._free > 0 and self._waiters:
            ranked = [(w.handle.deadline(), ticket) for ticket, w in self._waiters.items()]
            _, ticket = heapq.nsmallest(1, ranked)[0]
            waiter = self._waiters.pop(ticket)
            threads = min(waiter.most, self._free)
            if threads > 1 and self._shared_locked(waiter):
                threads = 1
                self.shared += 1
            waiter.granted = threads
            self._free -= threads
            self._holding[ticket] = waiter.handle
            self.admitted += 1
            self._note_locked(waiter.handle)
            waiter.event.set()

    def run(self, fn: Callable[..., T], *args: object, handle: Urgent | None = None, most: int = 1,
            short: bool = False) -> T:
        """`fn(*args)` inside the gate (call it from a worker thread)."""
        with self.hold(handle, most=most, short=short):
            return fn(*args)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_gate = ComputeGate(machine_cores())


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


async def run_gated(fn: Callable[..., T], *args: object, most: int = 1) -> T:
    """Run blocking model work `fn(*args)` in a thread, admitted by the gate with the current urgency,
    on up to `most` cores (`fn` reads how many it got from `granted_threads`).

    Cancelling the awaiting task skips the work if it has not started (it cannot stop it midway).
    """
    handle = current()
    cancelled = threading.Event()

    def work() -> T:
        with _gate.hold(handle, most=most):
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
