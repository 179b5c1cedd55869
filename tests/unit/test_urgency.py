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
    blocker = threading.Thread(target=lambda: gate.run(release.wait, handle=Fixed(0.0), most=gate.cores))
    blocker.start()
    _poll(lambda: gate.busy and gate.waiting == 0)
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


def test_one_reply_alone_gets_every_core_it_asks_for() -> None:
    gate = ComputeGate(2)
    reply = Fixed(1.0)
    with gate.hold(reply, most=2) as share:
        assert share.threads == 2
        assert urgency.granted_threads(7) == 2
    assert urgency.held() is None and urgency.granted_threads(7) == 7
    with gate.hold(reply, most=2) as share:  # its own earlier steps are no competition
        assert share.threads == 2
    assert gate.shared == 0


def test_competing_replies_get_one_core_each_and_run_side_by_side() -> None:
    gate = ComputeGate(2)
    first, second = Fixed(1.0), Fixed(2.0)
    both_inside = threading.Barrier(2, timeout=WAIT_S)
    threads: dict[str, int] = {}

    def work(name: str, handle: Fixed) -> None:
        with gate.hold(handle, most=2) as share:
            threads[name] = share.threads
            both_inside.wait()  # fails (BrokenBarrierError) unless both hold the gate at once

    with gate.hold(Fixed(0.0), most=2):
        workers = [threading.Thread(target=work, args=(n, h)) for n, h in (("a", first), ("b", second))]
        for worker in workers:
            worker.start()
        _poll(lambda: gate.waiting == 2)
    for worker in workers:
        worker.join(WAIT_S)
    assert threads == {"a": 1, "b": 1}
    assert gate.shared >= 1 and not gate.busy


def test_a_speculative_waiter_does_not_take_a_core_from_a_reply() -> None:
    gate = ComputeGate(2)
    order: list[str] = []
    cores: dict[str, int] = {}

    def work(name: str, handle: Fixed) -> None:
        with gate.hold(handle, most=2) as share:
            order.append(name)
            cores[name] = share.threads

    with gate.hold(Fixed(math.inf), most=2):  # speculative work: no deadline, no competition
        workers = [threading.Thread(target=work, args=("guess", Fixed(math.inf)))]
        workers[0].start()
        _poll(lambda: gate.waiting == 1)
        workers.append(threading.Thread(target=work, args=("reply", Fixed(1.0))))
        workers[1].start()
        _poll(lambda: gate.waiting == 2)
    for worker in workers:
        worker.join(WAIT_S)
    assert order == ["reply", "guess"]
    assert cores["reply"] == 2


def test_shrink_hands_the_cores_a_job_no_longer_needs_to_a_waiter() -> None:
    gate = ComputeGate(2)
    admitted = threading.Event()

    def wait() -> None:
        with gate.hold(Fixed(5.0)):
            admitted.set()

    with gate.hold(Fixed(1.0), most=2) as share:
        assert share.threads == 2
        waiter = threading.Thread(target=wait)
        waiter.start()
        _poll(lambda: gate.waiting == 1)
        assert not admitted.is_set()
        share.shrink(1)
        assert admitted.wait(WAIT_S)
        assert share.threads == 1
    waiter.join(WAIT_S)
    assert not gate.busy


def test_resize_sets_the_cores_shared_out() -> None:
    gate = ComputeGate(1)
    gate.resize(3)
    with gate.hold(Fixed(1.0), most=8) as share:
        assert share.threads == 3
    with pytest.raises(ValueError):
        gate.resize(0)


def test_long_work_leaves_a_core_for_a_reply_that_just_stepped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urgency, "CONTENDED_S", 60.0)  # "lately", however slow this machine is
    gate = ComputeGate(2)
    stepping, other = Fixed(1.0), Fixed(2.0)
    with gate.hold(stepping, most=2, short=True) as share:
        assert share.threads == 2  # alone: an LLM step takes both cores
    with gate.hold(other, most=2) as share:
        assert share.threads == 1  # a Piper sentence would keep that reply's next step waiting
    with gate.hold(stepping, most=2, short=True) as share:
        assert share.threads == 2  # a step chooses again each time: nobody waits now
    with gate.hold(stepping, most=2) as share:
        assert share.threads == 1  # the other reply used the gate lately


def test_the_gate_is_quiet_only_while_no_work_with_a_deadline_holds_waits_or_just_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = ComputeGate(2)
    assert gate.quiet
    with gate.hold(urgency.BACKGROUND):
        assert gate.quiet  # background work alone: more background work delays no reply
    monkeypatch.setattr(urgency, "CONTENDED_S", 60.0)  # "lately", however slow this machine is
    with gate.hold(Fixed(1.0)):
        assert not gate.quiet  # a reply's work runs
    assert not gate.quiet  # it ran just now: its next step is coming
    monkeypatch.setattr(urgency, "CONTENDED_S", 0.0)
    assert gate.quiet
