"""The gateway's `/metrics`: what a scraper (Prometheus, an autoscaler) needs to see of its calls.

Each app has its own `CollectorRegistry`, so several gateways built in one process (tests) never
share a count. Two kinds of figure:

- read at scrape time from the live objects (`Live`): calls carried, capacity, draining, the spool,
  the model-work queue. Nothing to keep in step, and always true when scraped.
- observed from each call's own records: the session already keeps per-turn metrics
  (`CallSession.turns`), its barge-ins and its writer's spooled writes. `CallFigures.sync` reads what
  is new since the last look, at every scrape (so a long call's turns show while it runs) and once
  more when the call closes; nothing is added to the conversation's hot path.

Latencies are in seconds (Prometheus' base unit), from the session's milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "relayx_gateway"
"""Prometheus' text format; every scraper reads it."""

STAGES: dict[str, str] = {
    "end_of_turn_ms": "end_of_turn",
    "stt_ms": "stt",
    "llm_first_token_ms": "llm_first_token",
    "tts_first_audio_ms": "tts_first_audio",
    "voice_to_voice_ms": "voice_to_voice",
}
"""Per-turn metric (as the session writes it) -> the `stage` label of the latency histogram."""

STAGE_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
"""Fine around the 0.5–2.5 s where a phone conversation feels quick or slow."""
GAP_BUCKETS_S = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
"""A frame late by a few ms is inaudible; 40 ms and more is a hole the caller hears."""
AUDIBLE_GAP_MS = 40
"""A reply whose worst frame was later than this has a gap the caller hears (two 20 ms frames)."""

RefusalReason = Literal["rate_limited", "unauthorized", "capacity", "draining"]


class _Writer(Protocol):
    spooled: int


class CallRecord(Protocol):
    """What a call session exposes that metrics read (`voice_gateway.session.CallSession` has it)."""

    turns: list[dict[str, Any]]
    barge_ins: int

    @property
    def writer(self) -> _Writer: ...


@dataclass(frozen=True)
class Live:
    """Figures read at scrape time; callables so that the metrics hold no state of their own."""

    active_calls: Callable[[], int]
    """Calls started (a `start` received) and not yet closed."""
    streams: Callable[[], int]
    """Streams holding a capacity slot (a call counts from its handshake)."""
    max_calls: Callable[[], int | None]
    accepting: Callable[[], bool]
    draining: Callable[[], bool]
    queue_depth: Callable[[], int]
    spool_pending: Callable[[], int]
    spool_set_aside: Callable[[], int]
    spool_replayed: Callable[[], int]


class _LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live
        max_calls = live.max_calls()
        yield _gauge("active_calls", "Calls in progress on this gateway.", live.active_calls())
        yield _gauge("streams", "Media streams holding a capacity slot (a call counts from its handshake).",
                     live.streams())
        yield _gauge("max_calls", "Calls this gateway carries at once (GATEWAY_MAX_CALLS); 0: no limit.",
                     max_calls or 0)
        yield _gauge("accepting", "1 while a new stream would be taken (capacity left, not draining).",
                     int(live.accepting() and not live.draining()))
        yield _gauge("draining", "1 once SIGTERM was received: no new streams, exiting when calls end.",
                     int(live.draining()))
        yield _gauge("compute_queue_depth", "Model work (STT, LLM, TTS steps) waiting for the compute gate.",
                     live.queue_depth())
        yield _gauge("spool_pending", "Writes waiting in the spool for the database.", live.spool_pending())
        yield _gauge("spool_set_aside", "Writes the database refused for good (kept in the spool file).",
                     live.spool_set_aside())
        replayed = CounterMetricFamily(f"{PREFIX}_spool_replayed",
                                       "Spooled writes replayed into the database since start.")
        replayed.add_metric([], live.spool_replayed())
        yield replayed


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


@dataclass
class _Seen:
    """How much of one call's records has been counted already."""

    turns: int = 0
    barge_ins: int = 0
    spooled: int = 0


class GatewayMetrics:
    """The gateway's registry: live figures plus what the calls' records add up to."""

    def __init__(self, live: Live) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LiveCollector(live))
        r = self.registry
        self.refused = Counter(f"{PREFIX}_streams_refused", "Media streams refused at the handshake, by reason.",
                               ["reason"], registry=r)
        for reason in ("rate_limited", "unauthorized", "capacity", "draining"):
            self.refused.labels(reason)  # every reason shows, at 0, from the first scrape
        self.accepted = Counter(f"{PREFIX}_streams_accepted", "Media streams accepted.", registry=r)
        self.calls_ended = Counter(f"{PREFIX}_calls_ended", "Calls whose stream has closed.", registry=r)
        self.drain_ended = Counter(f"{PREFIX}_drain_ended_calls",
                                   "Calls ended by the gateway because the drain timeout passed.", registry=r)
        self.stage = Histogram(f"{PREFIX}_stage_seconds",
                               "Per-turn latency of each stage: end of turn, STT, LLM first token, TTS first "
                               "audio, and voice to voice (the caller stops speaking -> the agent's first audio).",
                               ["stage"], buckets=STAGE_BUCKETS_S, registry=r)
        self.gap = Histogram(f"{PREFIX}_reply_max_gap_seconds",
                             "The latest frame of each agent reply, behind its 20 ms schedule (a gap the caller "
                             "hears when above 40 ms).", buckets=GAP_BUCKETS_S, registry=r)
        self.turns = Counter(f"{PREFIX}_turns", "Agent replies heard (greetings included).", registry=r)
        self.gapped = Counter(f"{PREFIX}_turns_with_gap",
                              f"Agent replies with a gap above {AUDIBLE_GAP_MS} ms inside them.", registry=r)
        self.llm_errors = Counter(f"{PREFIX}_llm_errors",
                                  "Agent replies whose LLM request failed (an error, or no token within "
                                  "LLM_TIMEOUT_S): no llm_first_token for them.", registry=r)
        self.interrupted = Counter(f"{PREFIX}_turns_interrupted", "Agent replies the caller talked over.",
                                   registry=r)
        self.barge_ins = Counter(f"{PREFIX}_barge_ins", "Times a caller interrupted the agent.", registry=r)
        self.spooled = Counter(f"{PREFIX}_transcript_writes_spooled",
                               "Call writes the database did not take in time, kept in the spool to be retried.",
                               registry=r)
        self._seen: dict[int, _Seen] = {}

    # --- what the socket handler reports ---------------------------------------------------------
    def refuse(self, reason: RefusalReason) -> None:
        self.refused.labels(reason).inc()

    def call_ended(self, call: CallRecord) -> None:
        """A call closed: count the rest of its records and forget it."""
        self._sync_one(call)
        self._seen.pop(id(call), None)
        self.calls_ended.inc()

    # --- reading the calls' records --------------------------------------------------------------
    def sync(self, calls: Iterable[CallRecord]) -> None:
        """Count what the live calls recorded since the last look (before each scrape)."""
        for call in calls:
            self._sync_one(call)

    def _sync_one(self, call: CallRecord) -> None:
        seen = self._seen.setdefault(id(call), _Seen())
        for turn in call.turns[seen.turns:]:
            self.observe_turn(turn)
        seen.turns = len(call.turns)
        self.barge_ins.inc(max(0, call.barge_ins - seen.barge_ins))
        seen.barge_ins = max(seen.barge_ins, call.barge_ins)
        spooled = call.writer.spooled
        self.spooled.inc(max(0, spooled - seen.spooled))
        seen.spooled = max(seen.spooled, spooled)

    def observe_turn(self, turn: dict[str, Any]) -> None:
        """One agent reply's metrics, as the session stores them with its transcript line."""
        self.turns.inc()
        for key, stage in STAGES.items():
            value = turn.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                self.stage.labels(stage).observe(value / 1000)
        late = turn.get("max_frame_late_ms")
        if isinstance(late, (int, float)) and not isinstance(late, bool):
            self.gap.observe(max(0.0, late) / 1000)
            if late > AUDIBLE_GAP_MS:
                self.gapped.inc()
        if turn.get("llm_error"):
            self.llm_errors.inc()
        if turn.get("interrupted"):
            self.interrupted.inc()

    # --- the endpoint ----------------------------------------------------------------------------
    def render(self, calls: Iterable[CallRecord]) -> bytes:
        self.sync(calls)
        return generate_latest(self.registry)




def live_from(state: Any) -> Live:
    """The live figures of a gateway app, read from its `app.state` at each scrape (the spool and
    the sessions exist once the lifespan has started; before that they read as zero)."""

    def attr(name: str) -> Any:
        return getattr(state, name, None)

    def count(name: str, field: str) -> Callable[[], int]:
        return lambda: int(getattr(attr(name), field, 0) or 0)

    return Live(
        active_calls=lambda: len(attr("sessions") or ()),
        streams=lambda: state.capacity.streams,
        max_calls=lambda: state.capacity.max_calls,
        accepting=lambda: state.capacity.accepting,
        draining=lambda: bool(getattr(attr("drain"), "draining", False)),
        queue_depth=lambda: state.capacity.headroom().queue_depth,
        spool_pending=count("spool", "depth"),
        spool_set_aside=count("spool", "dead"),
        spool_replayed=count("replayer", "replayed"),
    )
