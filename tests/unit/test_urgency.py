"""The compute gate admits the earliest deadline first, reads deadlines when it chooses, skips the abandoned."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass

import pytest

from shared import urgency
from shared.urgency import ComputeGate, Fixed

WAIT_S = 10


@dataclass
class Movable:
    at: float

    def deadline(self) -> float:
        return self.at


def _queue_behind(gate: ComputeGate, handles: dict[str, urgency.Urgent]) -> tuple[list[str], list[threading.Thread]]:
    """Hold the gate, start one waiter per handle, return the admission order once released."""
    order: list[str] = []
    threads = []
    for name, handle in handles.items():
        def wait(name: str = name, handle: urgency.Urgent = handle) -> None:
            with gate.hold(handle):
                order.append(name)
        threads.append(threading.Thread(target=wait))
    return order, threads


def _poll(predicate: object, timeout: float = WAIT_S) -> None:
    import time

    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_earliest_deadline_first_and_speculative_last() -> None:
    gate = ComputeGate(1)
    handles = {"speculative": Fixed(math.inf), "playing-later": Fixed(50.0), "confirmed": Fixed(10.0)}
    order, threads = _queue_behind(gate, handles)
    with gate.hold(Fixed(0.0)):
        for thread in threads:
            thread.start()
        _poll(lambda: gate.waiting == 3)
        assert gate.urgent_waiting
    for thread in threads:
        thread.join(WAIT_S)
    assert order == ["confirmed", "playing-later", "speculative"]


def test_deadlines_are_read_when_the_gate_chooses() -> None:
    gate = ComputeGate(1)
    guess = Movable(math.inf)
    order, threads = _queue_behind(gate, {"other": Fixed(5.0), "guess": guess})
    with gate.hold(Fixed(0.0)):
        for thread in threads:
            thread.start()
        _poll(lambda: gate.waiting == 2)
        guess.at = 1.0  # the speculative reply was confirmed while it waited
    for thread in threads:
        thread.join(WAIT_S)
    assert order == ["guess", "other"]


def test_ties_keep_arrival_order_and_slots_are_respected() -> None:
    gate = ComputeGate(2)
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with gate.hold(Fixed(1.0)):
            with lock:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert most == 2
    assert gate.admitted == 6 and gate.waiting == 0 and not gate.busy


async def test_cancelled_gated_work_is_skipped_not_run() -> None:
    ran: list[str] = []
    gate = urgency.gate()
    release = threading.Event()
    blocker = threading.Thread(target=lambda: gate.run(release.wait, handle=Fixed(0.0)))
    blocker.start()
    _poll(lambda: gate.busy)
    with urgency.working_for(Fixed(math.inf)):
        task = asyncio.create_task(urgency.run_gated(ran.append, "late"))
    await asyncio.sleep(0)  # let it queue at the gate
    _poll(lambda: gate.waiting == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    blocker.join(WAIT_S)
    _poll(lambda: not gate.busy)
    assert ran == []
    assert await urgency.run_gated(lambda: 42) == 42


def test_untagged_work_is_due_now() -> None:
    assert urgency.current().deadline() < math.inf
    with urgency.working_for(urgency.BACKGROUND):
        assert urgency.is_speculative(urgency.current())
