"""Measure who-answered screening on outbound calls (run: .venv/bin/python scripts/measure_screening.py).

Each case is one outbound call through a real gateway on the default models, answered by the virtual
phone as a person ("Hello?" then waiting), an answering machine (a recorded greeting spoken at once,
then a beep at some frequency, or no beep) or a phone menu. The callee audio is the bench's phone chain
(relayx_cli.caller_lines: seven voices, Piper and espeak-ng, 300–3400 Hz, pink noise and hum, μ-law).
Printed per kind: how many were handled right (a person greeted, a machine given the message after
its greeting and hung up on, a menu answered with a key and not greeted), and the times the callee
lives through: a person, from the end of their hello to the greeting's first audio; a machine, from the
end of its beep (or of its greeting) to the message's first audio. Calls run `--concurrent` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.telephony.virtual_phone import Beep, CallerLine, Silence, VirtualPhone
from relayx_cli.caller_lines import VOICES, Voice, _seed, _speak, phone_chain
from shared import stream_tokens, twilio_auth
from shared.settings import Settings
from shared.storage import build_storage
from tests.support.servers import serve
from voice_gateway.main import create_app as create_gateway

HELLOS = ("Hello?", "Hi, this is Sam.", "Yes, hello?", "Hello, who's calling?", "Dana speaking.")
GREETINGS = (
    "Hi, you've reached Sam Taylor. I can't take your call right now. Please leave a message after the tone.",
    "The person you are calling is not available. Please record your message after the beep.",
    "Hello, this is Dana. Sorry I missed you. Leave your name and number and I'll get back to you.",
    "Thanks for calling Mike's Plumbing. We're out on a job at the moment. Leave a message and we'll call back.",
    "Hi, it's Priya. I'm probably driving right now. Talk soon, bye.",  # no voicemail wording: length alone
)
MENUS = ("Thank you for calling Bright Smile Dental. For billing, press 1. For appointments, press 2.",
         "Welcome to City Dental. To book an appointment, press 2. For all other questions, press 0.")
BEEP_HZ = (1000.0, 1400.0, 850.0, 2000.0, None)
MESSAGE = "Hi, this is Ava from Bright Smile Dental. Please call us back to book your cleaning."
GREETING = "Hi, this is Ava from Bright Smile Dental."


@dataclass(frozen=True)
class Case:
    kind: str  # human, machine, menu
    text: str
    voice: Voice
    beep_hz: float | None = None


@dataclass
class Outcome:
    case: Case
    right: bool
    wait_ms: float | None
    detail: str


def _audio(text: str, voice: Voice) -> bytes:
    return phone_chain(_speak(text, voice, voice.rate, None), voice, _seed("screening", text, voice.name))


def cases() -> list[Case]:
    out = []
    for i, voice in enumerate(VOICES):
        out.append(Case("human", HELLOS[i % len(HELLOS)], voice))
        out.append(Case("machine", GREETINGS[i % len(GREETINGS)], voice, BEEP_HZ[i % len(BEEP_HZ)]))
    out.append(Case("menu", MENUS[0], VOICES[0]))
    out.append(Case("menu", MENUS[1], VOICES[3]))
    return out


async def run_case(case: Case, settings: Settings, gateway_ws: str) -> Outcome:
    tools = {"press": {"kind": "send_dtmf"}} if case.kind == "menu" else {}
    storage = build_storage(settings)
    await storage.open()
    agent = await storage.create_agent({
        "name": "Ava", "greeting": GREETING,
        "prompt": "You call patients of Bright Smile Dental to book an appointment for their cleaning.",
        "settings": {"voicemail": {"action": "leave_message", "message": MESSAGE}, "tools": tools},
    })
    call = await storage.create_call(agent_id=agent.id, to_number="+14155550100", from_number=None, metadata={})
    audio = await asyncio.to_thread(_audio, case.text, case.voice)
    lines: list[Any]
    if case.kind == "machine":  # a beep then recording, or (some machines) silence straight away
        after = Beep(hz=case.beep_hz, ms=500, record_s=25) if case.beep_hz is not None else Silence(25)
        lines = [CallerLine(case.text, audio, speak_first=True), after]
    elif case.kind == "menu":
        lines = [CallerLine(case.text, audio, speak_first=True, expect_dtmf="2", dtmf_timeout_s=25)]
    else:
        lines = [CallerLine(case.text, audio, speak_first=True)]
    media = stream_tokens.stream_url(f"{gateway_ws}/media", twilio_auth.signing_token(settings), call.id)
    phone = VirtualPhone(media, custom_parameters={"call_id": call.id}, lines=lines, reply_timeout_s=25)
    report = await asyncio.wait_for(phone.run(), 120)
    deadline = time.monotonic() + 15
    while (await storage.get_call(call.id)).status != "completed" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    transcript = await storage.list_transcripts(call.id)
    row = await storage.get_call(call.id)
    await storage.close()
    agent_lines = [line for line in transcript if line.speaker == "agent"]
    said = [line.text for line in agent_lines]
    if case.kind == "human":
        right = bool(said) and said[0] == GREETING and row.answered_by is None
        timing = report.turns[0] if report.turns else None
        wait = timing.voice_to_voice_ms if timing is not None else None
        return Outcome(case, right, wait, f"agent said {said[:1]}")
    if case.kind == "machine":
        right = said == [MESSAGE] and report.hangup_at is not None
        if report.beeps and report.beeps[0].first_agent_frame is not None:
            wait = (report.beeps[0].first_agent_frame - report.beeps[0].ended_at) * 1000
        else:
            ends = report.turns[0].speech_end if report.turns else None
            first = report.utterances[0].started_at if report.utterances else None
            wait = (first - ends) * 1000 if ends is not None and first is not None else None
        return Outcome(case, right, wait, f"{row.answered_by}; agent said {said}")
    heard = [h.heard for h in report.dtmf_heard]
    right = heard == ["2"] and GREETING not in said
    return Outcome(case, right, None, f"keys heard {heard}; agent said {said}")


async def main(concurrent: int, kinds: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, DATABASE_URL=f"sqlite:///{tmp}/relayx.db",  # type: ignore[call-arg]
                            RELAYX_DATA_DIR=tmp, RELAYX_API_KEY="measure",
                            MODEL_CACHE_DIR=str(REPO / "data/models"))
        storage = build_storage(settings)
        await storage.open()
        await storage.migrate()
        await storage.close()
        with serve(create_gateway(settings), timeout_s=300) as base:
            gateway_ws = base.replace("http", "ws")
            todo = [case for case in cases() if case.kind in kinds]
            outcomes: list[Outcome] = []
            for start in range(0, len(todo), concurrent):
                batch = todo[start : start + concurrent]
                outcomes += await asyncio.gather(*(run_case(c, settings, gateway_ws) for c in batch))
    for kind in kinds:
        mine = [o for o in outcomes if o.case.kind == kind]
        waits = sorted(o.wait_ms for o in mine if o.wait_ms is not None)
        p50 = statistics.median(waits) if waits else None
        print(f"{kind:8} right {sum(o.right for o in mine)}/{len(mine)}"
              + (f"  wait p50 {p50:.0f} ms, max {max(waits):.0f} ms" if waits else ""))
        for o in mine:
            mark = "ok " if o.right else "BAD"
            wait = f"{o.wait_ms:6.0f} ms" if o.wait_ms is not None else "      -  "
            beep = f" beep {o.case.beep_hz:.0f} Hz" if o.case.beep_hz else ""
            print(f"  {mark} {wait} {o.case.voice.name:13} {o.case.text[:48]!r}{beep}: {o.detail[:90]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["human", "machine", "menu"], help="kinds of callee to run")
    args = parser.parse_args()
    asyncio.run(main(args.concurrent, args.only))
