"""Know your capacity: how many calls this gateway carries, how busy it is, and whether it takes one more.

A stream holds a `Slot` from the moment it is accepted until it closes (even on an error), and a slot
is taken without an `await` between the check and the count, so two streams racing for the last one
cannot both get it. Above `max_calls` a new stream is refused before it is accepted; the calls already
running are never touched. CPU use and the model-work queue are reported beside the count so that an
operator (or a scaler) can see how close the machine is to its limit, but only the count refuses:
a CPU figure jumps with every reply, and refusing on it would turn calls away at random.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.settings import Settings

CALLS_PER_CORE = 2
"""The default limit per core until `relayx bench` has measured this machine (GATEWAY_MAX_CALLS)."""


def cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def max_calls_from(settings: Settings) -> int | None:
    """GATEWAY_MAX_CALLS; unset means `CALLS_PER_CORE` per core, 0 means no limit (None)."""
    if settings.gateway_max_calls is None:
        return CALLS_PER_CORE * cores()
    return settings.gateway_max_calls or None


# --- CPU ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticks:
    """The machine's CPU time so far, in clock ticks, from the first line of /proc/stat."""

    busy: int
    total: int


def process_cpu_s() -> float:
    """CPU seconds this process has used, every thread (model work runs in worker threads)."""
    times = os.times()
    return times.user + times.system


def machine_ticks(stat: Path = Path("/proc/stat")) -> Ticks | None:
    """Busy and total ticks of all cores; None where /proc/stat cannot be read (not Linux)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        values = [int(value) for value in fields[1:9]]
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != "cpu" or len(values) < 5:
        return None
    idle = values[3] + values[4]
    return Ticks(busy=sum(values) - idle, total=sum(values))


@dataclass(frozen=True)
class CpuUse:
    """CPU use between two reads at least `window_s` apart; None before the first window has passed."""

    cores: int
    process_percent: float | None = None
    """This process, in percent of one core (as `top` shows it: 150 is one and a half cores busy)."""
    machine_percent: float | None = None
    """All cores of the machine (every process), in percent of them all; None where not measurable."""
    window_s: float | None = None


class CpuMeter:
    """CPU use over the last seconds, measured between reads: no background task, no dependency."""

    def __init__(
        self,
        *,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        process: Callable[[], float] = process_cpu_s,
        machine: Callable[[], Ticks | None] = machine_ticks,
        core_count: int | None = None,
    ) -> None:
        self.window_s = window_s
        self._clock, self._process, self._machine = clock, process, machine
        self._cores = core_count if core_count is not None else cores()
        self._base = (clock(), process(), machine())
        self._last = CpuUse(cores=self._cores)

    def read(self) -> CpuUse:
        """Use since the previous measurement, taken anew once `window_s` has passed (reads in between
        get the same figures, so a health check polled many times a second costs nothing)."""
        now = self._clock()
        then, process_then, machine_then = self._base
        elapsed = now - then
        if elapsed < self.window_s:
            return self._last
        process_now, machine_now = self._process(), self._machine()
        machine_percent = None
        if machine_then is not None and machine_now is not None and machine_now.total > machine_then.total:
            busy = machine_now.busy - machine_then.busy
            machine_percent = round(100 * busy / (machine_now.total - machine_then.total), 1)
        self._last = CpuUse(
            cores=self._cores,
            process_percent=round(100 * (process_now - process_then) / elapsed, 1),
            machine_percent=machine_percent,
            window_s=round(elapsed, 2),
        )
        self._base = (now, process_now, machine_now)
        return self._last


# --- calls -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headroom:
    """What /health reports: the limit, the streams held, whether one more is taken, and the load."""

    max_calls: int | None
    """None: no limit (GATEWAY_MAX_CALLS=0)."""
    streams: int
    """Streams accepted and not yet closed (a call counts from its handshake, before its `start`)."""
    accepting: bool
    queue_depth: int
    """Model work (STT, LLM, TTS steps) waiting for the compute gate (`shared.urgency`)."""
    cpu: CpuUse

    @property
    def free(self) -> int | None:
        return None if self.max_calls is None else max(0, self.max_calls - self.streams)

    def as_json(self) -> dict[str, Any]:
        return {"max_calls": self.max_calls, "streams": self.streams, "free": self.free,
                "accepting": self.accepting, "queue_depth": self.queue_depth, "cpu": asdict(self.cpu)}


class Slot:
    """One accepted stream's place in the gateway; `release` is idempotent (safe in every `finally`)."""

    def __init__(self, capacity: Capacity) -> None:
        self._capacity: Capacity | None = capacity

    def release(self) -> None:
        if self._capacity is not None:
            capacity, self._capacity = self._capacity, None
            capacity._release()


class Capacity:
    """The gateway's call count against its limit, and the figures that say how loaded it is."""

    def __init__(
        self,
        max_calls: int | None,
        *,
        cpu: CpuMeter | None = None,
        queue_depth: Callable[[], int] = lambda: 0,
    ) -> None:
        if max_calls is not None and max_calls < 1:
            raise ValueError("max_calls is at least 1 (None: no limit)")
        self.max_calls = max_calls
        self._cpu = cpu or CpuMeter()
        self._queue_depth = queue_depth
        self._held = 0

    @property
    def streams(self) -> int:
        return self._held

    @property
    def accepting(self) -> bool:
        return self.max_calls is None or self._held < self.max_calls

    def reserve(self) -> Slot | None:
        """A slot for one more stream, or None at the limit. Synchronous on purpose: nothing can run
        between the check and the count."""
        if not self.accepting:
            return None
        self._held += 1
        return Slot(self)

    def _release(self) -> None:
        self._held -= 1

    def headroom(self) -> Headroom:
        return Headroom(max_calls=self.max_calls, streams=self._held, accepting=self.accepting,
                        queue_depth=self._queue_depth(), cpu=self._cpu.read())

    def refusal(self) -> str:
        """Why a stream is refused, in words (the body of the 503)."""
        return f"gateway at capacity: {self._held} of {self.max_calls} calls"
