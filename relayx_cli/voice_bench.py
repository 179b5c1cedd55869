"""Voice-to-voice benchmark: simulated calls through a real gateway on the configured engines.

Each call is a virtual phone speaking Twilio's Media Streams protocol in real time; figures come
from both ends: the phone (last caller audio sent → first agent frame received, as FIELD_NOTES
defines voice-to-voice) and the gateway's per-stage metrics stored with each agent line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.telephony.caller_voice import synthesize_caller
from backend.telephony.virtual_phone import CallerLine, PhoneReport, VirtualPhone
from shared import stream_tokens, twilio_auth
from shared.settings import Settings
from shared.storage import build_storage

BENCH_AGENT = {
    "name": "Ava",
    "prompt": (
        "You answer calls for Bright Smile Dental. Help callers book a teeth cleaning. "
        "Open Monday to Friday, 9am to 5pm. A cleaning costs 80 dollars and takes 45 minutes. "
        "The office is at 12 Main Street."
    ),
    "greeting": "Hi, this is Ava from Bright Smile Dental. How can I help?",
    "settings": {"business": "Bright Smile Dental", "end_of_turn_silence_ms": 500},
}
BENCH_LINES = [
    "Hi, I would like to book a cleaning.",
    "What are your opening hours on Monday?",
    "How much does a cleaning cost?",
    "How long does it take?",
    "Where is your office?",
]
STAGES = ("end_of_turn_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms")


@dataclass
class CallResult:
    phone: PhoneReport
    metrics: list[dict[str, Any]] = field(default_factory=list)
    late_ms: list[int] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with few samples, report a value that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def caller_lines(texts: list[str]) -> list[CallerLine]:
    return [CallerLine(text, await synthesize_caller(text)) for text in texts]


async def run_calls(
    settings: Settings, gateway_ws: str, lines: list[CallerLine], *, concurrent: int,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[CallResult]:
    """Place `concurrent` simultaneous calls against a running gateway; return what each saw."""
    storage = build_storage(settings)
    await storage.open()
    try:
        await storage.migrate()
        agent = await storage.create_agent(BENCH_AGENT)
        calls = [
            await storage.create_call(agent_id=agent.id, to_number="+15550000000", from_number=None,
                                      metadata={"bench": True})
            for _ in range(concurrent)
        ]
        secret = twilio_auth.signing_token(settings)
        phones = [
            VirtualPhone(stream_tokens.stream_url(f"{gateway_ws}/media", secret, c.id),
                         custom_parameters={"call_id": c.id}, lines=lines,
                         reply_timeout_s=30, on_event=on_event)
            for c in calls
        ]
        reports = await asyncio.gather(*(p.run() for p in phones))
        results = []
        for call, report in zip(calls, reports, strict=True):
            lines_ = await storage.list_transcripts(call.id)
            results.append(CallResult(
                phone=report,
                metrics=[l.metrics for l in lines_ if l.speaker == "agent" and "stt_ms" in l.metrics],
                late_ms=[int(l.metrics.get("max_frame_late_ms", 0)) for l in lines_ if l.speaker == "agent"],
                transcript=[(l.speaker, l.text) for l in lines_],
            ))
        return results
    finally:
        await storage.close()


def summarise(results: list[CallResult]) -> dict[str, Any]:
    """p50/p95 of voice-to-voice (phone side) and p50 of every gateway stage."""
    phone_v2v = [t.voice_to_voice_ms for r in results for t in r.phone.turns if t.voice_to_voice_ms is not None]
    stages = {s: [m[s] for r in results for m in r.metrics if s in m] for s in STAGES}
    turns = sum(len(r.phone.turns) for r in results)
    return {
        "calls": len(results),
        "turns": turns,
        "answered": len(phone_v2v),
        "voice_to_voice_ms": {"p50": pct(phone_v2v, 50), "p95": pct(phone_v2v, 95),
                              "min": min(phone_v2v, default=None), "max": max(phone_v2v, default=None)},
        "gateway_stage_p50_ms": {s: pct(v, 50) for s, v in stages.items()},
        "max_gap_between_agent_frames_ms": round(max((r.phone.max_frame_gap_ms for r in results), default=0), 1),
        "max_frame_late_ms": max((ms for r in results for ms in r.late_ms), default=0),
    }




def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))



def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(summary: dict[str, Any]) -> str:
    v2v = summary["voice_to_voice_ms"]
    rows = [
        f"calls {summary['calls']}, caller turns {summary['turns']}, answered {summary['answered']}",
        (f"voice-to-voice (phone side)  p50 {fmt(v2v['p50'])} ms  p95 {fmt(v2v['p95'])} ms  "
        f"min {fmt(v2v['min'])}  max {fmt(v2v['max'])}"),
        "gateway stages (p50, ms):  " + "  ".join(
            f"{k.removesuffix('_ms')} {fmt(v)}" for k, v in summary["gateway_stage_p50_ms"].items()
        ),
        f"latest outgoing frame (gap the caller heard inside a reply): {summary['max_frame_late_ms']} ms",
    ]
    return "\n".join(rows)
