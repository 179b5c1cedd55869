"""Barge-in versus backchannel, with STT/LLM/TTS replaced by instant engines and the energy VAD
(`relayx_cli.instant_engines`: deterministic audio, so the session's rule is what is tested)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from relayx_cli.instant_engines import instant_engines
from shared.storage import build_storage
from tests.conftest import make_settings
from tests.conftest import media_url as _media_url
from tests.support.servers import free_port, serve
from tests.support.speech import tone_ulaw
from voice_gateway.main import create_app


async def test_short_speech_over_the_agent_is_a_backchannel_long_speech_interrupts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, VAD_ENGINE="energy")
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    agent = await storage.create_agent({
        "name": "Ava", "prompt": "Be brief.", "greeting": "One, two, three. Four, five, six. Seven, eight, nine.",
        "settings": {"barge_in_min_ms": 400, "voicemail": {"detect": False}},
    })
    call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    lines = [
        CallerLine("mm-hm", tone_ulaw(250), barge_in_after_ms=300),  # shorter than barge_in_min_ms
        CallerLine("wait, stop", tone_ulaw(1200), barge_in_after_ms=900),  # longer: interrupts
    ]
    port = free_port()
    with serve(create_app(settings, engines=instant_engines(settings)), port):
        phone = VirtualPhone(_media_url(settings, port, call.id), custom_parameters={"call_id": call.id}, lines=lines,
                             reply_timeout_s=15)
        report = await asyncio.wait_for(phone.run(), 60)
    transcript = await storage.list_transcripts(call.id)
    await storage.close()

    # Each voice over the agent pauses it at once (a clear); the "mm-hm" lets it play on, the long speech
    # takes the turn: the greeting is interrupted once, by the second.
    assert report.clears == 2, "every voice over the agent pauses it, and only once"
    backchannels = [l for l in transcript if l.speaker == "caller" and l.metrics.get("backchannel")]
    assert len(backchannels) == 1, [(l.speaker, l.text, l.metrics) for l in transcript]
    greeting = next(l for l in transcript if l.speaker == "agent")
    assert greeting.metrics.get("interrupted") is True
    assert greeting.text != agent.greeting and agent.greeting.startswith(greeting.text.split("…")[0].rstrip(".,"))
    answered = [l for l in transcript if l.speaker == "agent" and not l.metrics.get("interrupted")]
    assert answered and answered[-1].text == "Sure, this is an instant reply."
