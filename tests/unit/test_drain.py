"""The drain on a fake clock: waits for the calls, ends the rest politely past the timeout, then exits;
and SIGTERM is chained in front of the server's own handler, which gets it once the drain is over."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any

from voice_gateway.drain import POLL_S, Drain, attach, closing_line


class Clock:
    """Time moves only when the drain sleeps; `at` runs a step of the scenario at a given time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps: list[tuple[float, Any]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, step: Any) -> None:
        self.steps.append((when, step))
        self.steps.sort(key=lambda item: item[0])

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.steps and self.steps[0][0] <= self.now:
            self.steps.pop(0)[1]()
        await asyncio.sleep(0)


class FakeCall:
    def __init__(self, calls: list[FakeCall], line: str = "Sorry, we have to stop here. Goodbye!") -> None:
        self.calls = calls
        self.ended_with: tuple[str, bool] | None = None
        self.agent = _Agent(line)

    async def _end_call(self, line: str, *, cut_short_ok: bool) -> None:
        self.ended_with = (line, cut_short_ok)


class _Agent:
    def __init__(self, line: str) -> None:
        self.settings = type("S", (), {"limits": type("L", (), {"max_duration_line": line})()})()


def _drain(clock: Clock, calls: list[FakeCall], *, timeout_s: float = 600, grace_s: float = 30,
           ended: list[int] | None = None) -> tuple[Drain, list[float]]:
    exited: list[float] = []
    drain = Drain(streams=lambda: len(calls), calls=lambda: list(calls), timeout_s=timeout_s,
                  on_drained=lambda: exited.append(clock.now), grace_s=grace_s, clock=clock, sleep=clock.sleep,
                  on_polite_end=lambda: (ended if ended is not None else []).append(1))
    return drain, exited


async def test_a_gateway_with_no_call_exits_at_once() -> None:
    clock = Clock()
    drain, exited = _drain(clock, [])
    await drain.begin()
    assert drain.draining and exited == [0.0]


async def test_the_drain_waits_for_the_calls_to_end_by_themselves() -> None:
    clock = Clock()
    calls: list[FakeCall] = []
    calls.extend([FakeCall(calls), FakeCall(calls)])
    drain, exited = _drain(clock, calls)
    clock.at(42.0, lambda: calls.pop())
    clock.at(95.0, lambda: calls.pop())
    await drain.begin()
    assert exited and 95.0 <= exited[0] < 95.0 + 2 * POLL_S
    assert drain.ended_politely == 0


async def test_a_second_begin_is_the_same_drain() -> None:
    clock = Clock()
    drain, exited = _drain(clock, [])
    assert drain.begin() is drain.begin()
    await drain.task  # type: ignore[misc]
    assert exited == [0.0]


async def test_past_the_timeout_each_call_is_ended_politely_then_the_process_exits_when_they_hang_up() -> None:
    clock = Clock()
    calls: list[FakeCall] = []
    first, second = FakeCall(calls, "We're updating our system: goodbye!"), FakeCall(calls)
    calls.extend([first, second])
    ended: list[int] = []
    drain, exited = _drain(clock, calls, timeout_s=60, ended=ended)

    def hang_up() -> None:
        calls.clear()  # each said its line and hung up

    clock.at(66.0, hang_up)
    await drain.begin()
    assert first.ended_with == ("We're updating our system: goodbye!", True)  # the agent's own line, cut or not
    assert second.ended_with is not None and second.ended_with[0] == closing_line(second)
    assert drain.ended_politely == 2 and len(ended) == 2
    assert exited and 66.0 <= exited[0] < 66.0 + 2 * POLL_S


async def test_a_call_that_does_not_hang_up_keeps_the_process_only_for_the_grace() -> None:
    clock = Clock()
    calls: list[FakeCall] = []
    calls.append(FakeCall(calls))
    drain, exited = _drain(clock, calls, timeout_s=10, grace_s=30)
    await drain.begin()
    assert exited and 40.0 <= exited[0] < 40.0 + 2 * POLL_S


async def test_a_call_that_cannot_be_ended_does_not_stop_the_others() -> None:
    clock = Clock()
    calls: list[FakeCall] = []

    class Broken(FakeCall):
        async def _end_call(self, line: str, *, cut_short_ok: bool) -> None:
            raise RuntimeError("socket gone")

    broken, fine = Broken(calls), FakeCall(calls)
    calls.extend([broken, fine])
    clock.at(5.0, calls.clear)
    drain, exited = _drain(clock, calls, timeout_s=0)
    await drain.begin()
    assert fine.ended_with is not None and drain.ended_politely == 1 and exited


async def test_a_cancelled_drain_does_not_exit() -> None:
    calls: list[FakeCall] = []
    calls.append(FakeCall(calls))
    exited: list[float] = []
    drain = Drain(streams=lambda: len(calls), calls=lambda: list(calls), timeout_s=600,
                  on_drained=lambda: exited.append(0))  # the real clock: it waits
    drain.begin()
    await asyncio.sleep(0)
    await drain.aclose()
    assert exited == [] and drain.draining


async def test_sigterm_starts_the_drain_and_reaches_the_previous_handler_once_drained() -> None:
    """Uvicorn installs its handler before the app starts; the app's chains in front of it."""
    received: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        calls: list[FakeCall] = []
        calls.append(FakeCall(calls))
        drain = Drain(streams=lambda: len(calls), calls=lambda: list(calls), timeout_s=600)
        restore = attach(drain)
        signal.raise_signal(signal.SIGTERM)
        await _until(lambda: drain.draining)
        assert received == []  # the server has not heard of it: it keeps serving the call
        signal.raise_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
        calls.clear()  # the call ends
        await _until(lambda: received == [signal.SIGTERM])
        assert signal.getsignal(signal.SIGTERM) is server_handler  # handed back
        restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_restore_puts_the_server_handler_back_when_no_drain_happened() -> None:
    def server_handler(signum: int, frame: FrameType | None) -> None:
        pass

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        restore = attach(Drain(streams=lambda: 0, calls=list, timeout_s=1))
        assert signal.getsignal(signal.SIGTERM) is not server_handler
        restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def in_thread() -> None:
        attach(Drain(streams=lambda: 0, calls=list, timeout_s=1))()

    await asyncio.to_thread(asyncio.run, in_thread())
    assert signal.getsignal(signal.SIGTERM) is before


async def _until(check: Any, timeout_s: float = 5.0) -> None:
    """Poll with a deadline (the signal handler runs between bytecodes, the drain on the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)
