"""Capacity arithmetic: the gateway's slots and CPU figures, and the backend's decision to dial, without
a network (the gateway's /health is answered by an httpx MockTransport)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from backend.capacity import GatewayCapacity, GatewayProbe, refusal
from tests.conftest import make_settings
from voice_gateway.capacity import (
    CALLS_PER_CORE,
    Capacity,
    CpuMeter,
    Ticks,
    cores,
    machine_ticks,
    max_calls_from,
)

# --- the gateway's slots --------------------------------------------------------------------------


def _capacity(max_calls: int | None, queue: int = 0) -> Capacity:
    meter = CpuMeter(clock=lambda: 0.0, process=lambda: 0.0, machine=lambda: None, core_count=2)
    return Capacity(max_calls, cpu=meter, queue_depth=lambda: queue)


def test_the_last_slot_goes_to_one_stream_only() -> None:
    capacity = _capacity(2)
    first, second = capacity.reserve(), capacity.reserve()
    assert first is not None and second is not None
    assert capacity.reserve() is None
    assert not capacity.accepting and capacity.streams == 2
    assert capacity.refusal() == "gateway at capacity: 2 of 2 calls"


def test_a_released_slot_is_taken_again_and_release_is_idempotent() -> None:
    capacity = _capacity(1)
    slot = capacity.reserve()
    assert slot is not None and capacity.reserve() is None
    slot.release()
    slot.release()  # a second release (two `finally` blocks) must not free a slot some other call holds
    assert capacity.streams == 0 and capacity.accepting
    again = capacity.reserve()
    assert again is not None and capacity.reserve() is None and capacity.streams == 1


def test_no_limit_always_accepts() -> None:
    capacity = _capacity(None)
    slots = [capacity.reserve() for _ in range(500)]
    assert all(slot is not None for slot in slots) and capacity.accepting
    assert capacity.headroom().free is None


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Capacity(0)


def test_headroom_reports_the_figures(tmp_path: Path) -> None:
    capacity = _capacity(3, queue=4)
    capacity.reserve()
    body = capacity.headroom().as_json()
    assert body == {"max_calls": 3, "streams": 1, "free": 2, "accepting": True, "queue_depth": 4,
                    "cpu": {"cores": 2, "process_percent": None, "machine_percent": None, "window_s": None}}


def test_max_calls_defaults_to_a_figure_per_core_and_zero_means_no_limit(tmp_path: Path) -> None:
    assert max_calls_from(make_settings(tmp_path)) == CALLS_PER_CORE * cores()
    assert max_calls_from(make_settings(tmp_path, GATEWAY_MAX_CALLS="3")) == 3
    assert max_calls_from(make_settings(tmp_path, GATEWAY_MAX_CALLS="0")) is None


# --- CPU ------------------------------------------------------------------------------------------


def test_cpu_is_measured_over_a_window_of_at_least_the_configured_seconds() -> None:
    now, process = [100.0], [5.0]
    machine = [Ticks(busy=1000, total=4000)]
    meter = CpuMeter(window_s=1.0, clock=lambda: now[0], process=lambda: process[0],
                     machine=lambda: machine[0], core_count=4)
    now[0], process[0] = 100.5, 5.4
    early = meter.read()
    assert early.process_percent is None and early.window_s is None  # half a second says nothing yet
    now[0], process[0], machine[0] = 102.0, 8.0, Ticks(busy=1600, total=4800)
    use = meter.read()
    assert use.process_percent == 150.0  # 3 CPU seconds in 2 s: one and a half cores
    assert use.machine_percent == 75.0  # 600 busy ticks of 800
    assert use.window_s == 2.0 and use.cores == 4
    now[0], process[0] = 102.3, 9.0
    assert meter.read() == use  # read again within the window: the same figures, nothing re-read
    now[0], process[0], machine[0] = 103.0, 8.5, Ticks(busy=1600, total=5200)
    idle = meter.read()
    assert idle.process_percent == 50.0 and idle.machine_percent == 0.0


def test_machine_cpu_is_unknown_where_proc_stat_is_not_readable() -> None:
    now = [0.0]
    meter = CpuMeter(clock=lambda: now[0], process=lambda: now[0] / 10, machine=lambda: None, core_count=1)
    now[0] = 5.0
    use = meter.read()
    assert use.machine_percent is None and use.process_percent == 10.0


def test_proc_stat_is_parsed_and_garbage_is_unknown(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n")
    assert machine_ticks(stat) == Ticks(busy=160, total=980)  # idle and iowait are not busy
    stat.write_text("intr 1 2 3\n")
    assert machine_ticks(stat) is None
    stat.write_text("cpu  not numbers\n")
    assert machine_ticks(stat) is None
    assert machine_ticks(tmp_path / "missing") is None


def test_the_real_meter_reads_this_process() -> None:
    meter = CpuMeter(window_s=0.0)
    sum(i * i for i in range(200_000))  # some CPU to measure
    use = meter.read()
    assert use.process_percent is not None and use.process_percent >= 0
    assert use.cores >= 1


# --- the backend's decision -------------------------------------------------------------------------


def _gateway(streams: int, max_calls: int | None, accepting: bool | None = None) -> GatewayCapacity:
    if accepting is None:
        accepting = max_calls is None or streams < max_calls
    return GatewayCapacity(streams=streams, max_calls=max_calls, accepting=accepting)


def test_an_unreachable_or_unlimited_gateway_refuses_nothing() -> None:
    assert refusal(None, pending=1000) is None
    assert refusal(_gateway(900, None), pending=1000) is None


def test_a_full_gateway_refuses_with_its_figures() -> None:
    assert refusal(_gateway(4, 4), pending=0) == "the voice gateway is at capacity: 4 of 4 calls"
    # The gateway's own word wins even when the figures would leave room (a stream being accepted).
    assert refusal(_gateway(3, 4, accepting=False), pending=0) == "the voice gateway is at capacity: 3 of 4 calls"


def test_calls_being_dialed_count_against_the_free_streams() -> None:
    assert refusal(_gateway(2, 4), pending=1) is None
    assert refusal(_gateway(2, 4), pending=2) == (
        "the voice gateway is at capacity: 2 calls connected and 2 being dialed, of 4")
    assert refusal(_gateway(0, 1), pending=1) is not None
    assert refusal(_gateway(0, 1), pending=0) is None


def test_gateway_url_is_the_public_socket_url_as_http(tmp_path: Path) -> None:
    assert make_settings(tmp_path).gateway_http_url == "http://127.0.0.1:8001"
    assert make_settings(tmp_path, PUBLIC_GATEWAY_URL="wss://gw.example.test/").gateway_http_url == \
        "https://gw.example.test"
    assert make_settings(tmp_path, PUBLIC_GATEWAY_URL="wss://gw.example.test",
                         GATEWAY_INTERNAL_URL="http://gateway:8001/").gateway_http_url == "http://gateway:8001"


# --- reading the gateway's /health --------------------------------------------------------------------


class _Gateway:
    """The gateway's /health on an httpx MockTransport: answers `body` with `status`, or fails."""

    def __init__(self) -> None:
        self.body: dict[str, object] = {"status": "ok", "accepting": True,
                                        "capacity": {"max_calls": 2, "streams": 1, "accepting": True}}
        self.status = 200
        self.error: Exception | None = None
        self.requests: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, json=self.body)


def _probe(gateway: _Gateway, now: list[float]) -> GatewayProbe:
    return GatewayProbe("http://gateway:8001/", transport=httpx.MockTransport(gateway.handle),
                        clock=lambda: now[0], ttl_s=1.0)


async def test_the_probe_reads_capacity_once_a_second() -> None:
    gateway, now = _Gateway(), [0.0]
    probe = _probe(gateway, now)
    try:
        first = await probe.capacity()
        assert first == GatewayCapacity(max_calls=2, streams=1, accepting=True)
        gateway.body = {"capacity": {"max_calls": 2, "streams": 2, "accepting": False}}
        now[0] = 0.5
        assert await probe.capacity() == first  # cached
        now[0] = 1.0
        assert await probe.capacity() == GatewayCapacity(max_calls=2, streams=2, accepting=False)
        assert gateway.requests == ["http://gateway:8001/health"] * 2
    finally:
        await probe.aclose()


async def test_a_degraded_gateway_still_reports_its_capacity() -> None:
    gateway, now = _Gateway(), [0.0]
    gateway.status = 503  # its database is down: it still knows how many streams it holds
    probe = _probe(gateway, now)
    try:
        assert await probe.capacity() == GatewayCapacity(max_calls=2, streams=1, accepting=True)
    finally:
        await probe.aclose()


@pytest.mark.parametrize("failure", ["unreachable", "timeout", "no capacity", "not json", "bad figures"])
async def test_a_gateway_that_does_not_say_is_unknown_and_the_answer_is_cached(failure: str) -> None:
    gateway, now = _Gateway(), [0.0]
    if failure == "unreachable":
        gateway.error = httpx.ConnectError("connection refused")
    elif failure == "timeout":
        gateway.error = httpx.ReadTimeout("no answer in 1 s")
    elif failure == "no capacity":
        gateway.body = {"status": "ok", "active_calls": 3}  # a gateway from before capacity was reported
    elif failure == "not json":
        gateway.body = {"capacity": "full"}
    else:
        gateway.body = {"capacity": {"max_calls": 2, "streams": -1, "accepting": True}}
    probe = _probe(gateway, now)
    try:
        assert await probe.capacity() is None
        assert await probe.capacity() is None
        assert len(gateway.requests) == 1  # an absent gateway is not asked again within the second
    finally:
        await probe.aclose()
