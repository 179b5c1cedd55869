"""Rebuild tests/data/phone_set: the phone-band caller lines `relayx bench --set phone` plays.

Run it only to change the set: `.venv/bin/python scripts/make_phone_set.py`. The output (μ-law files
and manifest.json) is committed, because Piper samples its noise afresh on every synthesis: a rebuilt
set sounds a little different, and figures measured on two builds would not compare. Tests and the
benchmark read the committed files and never synthesise.

Four calls of six lines each, one voice per call (two Piper, two espeak-ng), each through the phone
chain of `relayx_cli.caller_lines` (300–3400 Hz, pink line noise and mains hum, μ-law 8 kHz). The
lines cover what splits or trips a turn-taker: a caller who pauses 0.6–1.0 s mid-thought (the pause is
line noise inside the file, so the wire carries it as a real pause), one-word answers, a question asked
again in other words, and lines spoken over the agent: ~0.3 s backchannels and ~1.5 s interruptions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relayx_cli import caller_lines as cl  # after the path tweak: runnable as a plain script
from relayx_cli.phone_set import MANIFEST, SET_DIR
from shared.audio import PHONE_RATE

BED_S = 5.0
"""Line noise stored per voice, looped between lines (5 s keeps the set small)."""

VOICES = {
    "piper-a": cl.Voice("piper-a", "piper", rate=0.9, pitch=1.05, snr_db=24.0),
    "espeak-us-m3": cl.Voice("espeak-us-m3", "espeak", "en-us+m3", rate=165, snr_db=22.0),
    "piper-c": cl.Voice("piper-c", "piper", rate=0.85, pitch=1.15, snr_db=20.0),
    "espeak-gb-f2": cl.Voice("espeak-gb-f2", "espeak", "en-gb+f2", rate=170, snr_db=23.0),
}

# A line: its parts (text, then pause seconds, then text…), its tags, and for a line spoken over the
# agent: ("backchannel" | "interruption", ms after the agent's reply started to be heard).
Line = dict[str, object]


def _line(*parts: str | float, tags: tuple[str, ...] = (), over: tuple[str, int] | None = None,
          repeat_of: str | None = None, speed: float = 1.0) -> Line:
    """`speed` multiplies the voice's rate (a backchannel is said quickly: ~0.3 s)."""
    return {"parts": list(parts), "tags": list(tags), "over": over, "repeat_of": repeat_of, "speed": speed}


CALLS: dict[str, tuple[str, list[Line]]] = {
    "booking": ("piper-a", [
        _line("Hi, I'd like to book a teeth cleaning, please."),
        _line("My name is Sarah Johnson.", 0.8, "I'm a new patient.", tags=("pause",)),
        _line("Do you have anything open on Tuesday afternoon?"),
        _line("Okay.", tags=("backchannel",), over=("backchannel", 1000), speed=1.3),
        _line("Yes.", tags=("short",)),
        _line("I'd like to come in", 0.7, "next Tuesday at two, please.", tags=("pause",)),
    ]),
    "prices": ("espeak-us-m3", [
        _line("How much does a cleaning cost without insurance?"),
        _line("Sorry, do you take Delta Dental?", tags=("interruption",), over=("interruption", 1200)),
        _line("Okay.", 0.9, "And how long does the cleaning take?", tags=("pause",)),
        _line("No.", tags=("short",)),
        _line("Sorry, what did you say a cleaning costs?", tags=("repeat",), repeat_of="prices-1"),
        _line("Yeah, that works.", tags=("short",)),
    ]),
    "hours": ("piper-c", [
        _line("What time do you open on Fridays?"),
        _line("Right.", tags=("backchannel",), over=("backchannel", 1000)),
        _line("I work until five.", 0.7, "Are you open on Saturdays?", tags=("pause",)),
        _line("So what are your hours on a Friday again?", tags=("repeat",), repeat_of="hours-1"),
        _line("Wait, where is your office?", tags=("interruption",), over=("interruption", 1200)),
        _line("Okay, thank you.", tags=("short",)),
    ]),
    "reschedule": ("espeak-gb-f2", [
        _line("Hi, this is Tom Baker.", 0.8, "I need to move my appointment.", tags=("pause",)),
        _line("Can we do Monday morning instead of Thursday?"),
        _line("Yeah.", tags=("backchannel",), over=("backchannel", 1000)),
        _line("Yes, please.", tags=("short",)),
        _line("And could you", 0.6, "send me a text reminder the day before?", tags=("pause",)),
        _line("Sorry, is Monday morning free?", tags=("interruption", "repeat"),
              over=("interruption", 1200), repeat_of="reschedule-2"),
    ]),
}


def _speak_parts(parts: list[str | float], voice: cl.Voice, speed: float) -> tuple[np.ndarray, list[float]]:
    """The parts spoken in turn, with digital silence for each pause (the chain adds line noise over it)."""
    pieces: list[np.ndarray] = []
    pauses: list[float] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(cl._speak(part, voice, voice.rate * speed, None))
        else:
            pauses.append(float(part))
            pieces.append(np.zeros(round(float(part) * PHONE_RATE), np.float32))
    return np.concatenate(pieces).astype(np.float32), pauses


def build(out: Path = SET_DIR) -> dict[str, object]:
    """Synthesise every line and bed into `out` and write the manifest; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    calls = []
    for call_id, (voice_name, lines) in CALLS.items():
        voice = VOICES[voice_name]
        bed_file = f"bed-{voice_name}.ulaw"
        bed = cl.float32_to_ulaw(cl.line_noise(round(BED_S * PHONE_RATE), voice, cl._seed("bed", voice_name)))
        (out / bed_file).write_bytes(bed)
        entries = []
        for j, line in enumerate(lines, 1):
            parts = line["parts"]
            assert isinstance(parts, list)
            speed = line["speed"]
            assert isinstance(speed, float)
            speech, pauses = _speak_parts(parts, voice, speed)
            ulaw = cl.phone_chain(speech, voice, cl._seed("phone_set", call_id, j))
            name = f"{call_id}-{j}.ulaw"
            (out / name).write_bytes(ulaw)
            over = line["over"]
            entries.append({
                "id": f"{call_id}-{j}",
                "file": name,
                "reference": " ".join(p for p in parts if isinstance(p, str)),
                "tags": line["tags"],
                "pauses_s": pauses,
                "overlap": over[0] if isinstance(over, tuple) else None,
                "over_agent_after_ms": over[1] if isinstance(over, tuple) else None,
                "repeat_of": line["repeat_of"],
                "duration_s": round(len(ulaw) / PHONE_RATE, 2),
            })
        calls.append({"id": call_id, "voice": {"name": voice_name, "engine": voice.engine,
                                               "espeak_voice": voice.espeak_voice or None, "rate": voice.rate,
                                               "pitch": voice.pitch, "snr_db": voice.snr_db},
                      "bed": bed_file, "lines": entries})
    manifest: dict[str, object] = {
        "about": "Phone-band caller lines with reference texts; rebuilt by scripts/make_phone_set.py",
        "encoding": "audio/x-mulaw", "sample_rate": PHONE_RATE, "calls": calls,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    result = build()
    total = sum(p.stat().st_size for p in SET_DIR.iterdir())
    for call in result["calls"]:  # type: ignore[attr-defined]
        for entry in call["lines"]:
            print(f"{entry['id']:<14} {entry['duration_s']:>5.2f} s  {entry['reference']}")
    print(f"{SET_DIR}: {total / 1e6:.2f} MB")
