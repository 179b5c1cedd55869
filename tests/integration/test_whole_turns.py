"""A caller who pauses between two sentences is one turn: real Silero, Smart Turn and Whisper.

The session runs on the real listening models; only the LLM and TTS are instant and scripted, and the
TTS is held until the caller has finished, so the agent's reply to the first half is never heard
before the caller goes on whatever this CPU's speed (the race the test would otherwise depend on).
Words are checked with a tolerant WER, never exactly: int8 Whisper decodes differently across CPUs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from shared import audio
from shared.llm.base import ChatMessage, GenerationOptions
from shared.storage import build_storage
from shared.stt.faster_whisper import FasterWhisperSTT
from shared.turn import SmartTurn
from shared.vad import build_vad
from tests.conftest import make_settings
from tests.support.speech import caller_ulaw
from tests.support.wer import wer
from voice_gateway.engines import Engines
from voice_gateway.reply import ReplyState
from voice_gateway.session import CallSession
from voice_gateway.spool import Spool

FIRST = "My name is Sarah Johnson."
SECOND = "I am calling about my dentist appointment on Friday."


class ScriptedLLM:
    """Answers at once; counts the replies it was asked for (speculative ones included)."""

    def __init__(self) -> None:
        self.requests: list[list[ChatMessage]] = []

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]:
        if options.max_tokens == 1:
            return  # the prompt prefill
        self.requests.append(messages)
        for piece in ("Thanks, ", "Sarah."):
            yield piece

    def warmup(self) -> None:
        return None


class HeldTTS:
    """A short tone per clause, once `release` is set: nothing is heard before the caller finishes."""

    sample_rate = audio.PHONE_RATE

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        await self.release.wait()
        yield np.full(audio.PHONE_RATE // 5, 800, dtype=np.int16)

    def warmup(self) -> None:
        return None


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    model.warmup()
    return model


async def test_two_sentences_with_a_pause_are_one_caller_line_and_get_one_reply(
    tmp_path: Path, stt: FasterWhisperSTT, smart_turn: SmartTurn
) -> None:
    settings = make_settings(tmp_path)
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    spool = Spool(settings.spool_path)
    await spool.open()
    agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "settings": {"turn_detection": "smart",
                                                                                         "voicemail": {"detect": False}}})
    call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    sent: list[str] = []
    session: CallSession | None = None

    async def send(text: str) -> None:
        message = json.loads(text)
        sent.append(message["event"])
        if message["event"] == "mark" and session is not None:
            session.on_mark(message["mark"]["name"])  # the far end plays at once

    llm, tts = ScriptedLLM(), HeldTTS()
    engines = Engines(stt=stt, llm=llm, tts=tts, vad_factory=lambda: build_vad(settings), turn=smart_turn)
    session = CallSession(call=call, agent=agent, stream_sid="MZ1", send=send, storage=storage, spool=spool,
                          engines=engines)
    await session.start()

    silence = bytes([audio.MULAW_SILENCE])
    line = (silence * (audio.PHONE_RATE // 2) + caller_ulaw(FIRST) + silence * (audio.PHONE_RATE * 8 // 10)
            + caller_ulaw(SECOND) + silence * (audio.PHONE_RATE * 4))
    for i in range(0, len(line), audio.FRAME_BYTES):
        await session.on_media(line[i : i + audio.FRAME_BYTES])
        judging = session._judging
        if judging is not None and not judging.done():
            await judging  # the model's verdict lands at the pause it judged, whatever this CPU's speed
    assert session.reply is not None and session.reply.confirmed, "the turn never ended"
    tts.release.set()
    reply = session.reply
    for _ in range(500):
        if reply.state is ReplyState.PLAYED:
            break
        await asyncio.sleep(0.01)
    await session.close()
    transcript = await storage.list_transcripts(call.id)
    await spool.close()
    await storage.close()

    caller = [line.text for line in transcript if line.speaker == "caller"]
    agent_lines = [line.text for line in transcript if line.speaker == "agent"]
    assert len(caller) == 1, caller  # one turn, not two halves
    assert wer(f"{FIRST} {SECOND}", caller[0]) <= 0.35, caller
    assert agent_lines == ["Thanks, Sarah."]  # one reply, heard once
    assert reply.metrics["end_of_turn_ms"] >= 200 and "turn_verdict" in reply.metrics
