"""One typed agent configuration: the API refuses unknown keys by name, and an agent saved without
settings runs in the gateway with the one documented set of defaults (`shared.agent_config`).

The gateway half drives a real /media socket with the energy VAD and instant STT/TTS (deterministic
audio and timing); the LLM stand-in records the options the session hands it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from backend.main import create_app as create_backend
from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from relayx_cli.instant_engines import InstantSTT, InstantTTS
from shared.agent_config import AgentSettings, LLMConfig
from shared.llm.base import ChatMessage
from shared.storage import build_storage
from shared.vad import build_vad
from tests.conftest import make_settings
from tests.conftest import media_url as _media_url
from tests.support.servers import free_port, serve
from tests.support.speech import tone_ulaw
from voice_gateway.engines import Engines
from voice_gateway.main import create_app as create_gateway
from voice_gateway.turns import TurnConfig

AUTH = {"Authorization": "Bearer test-key"}
AGENT = {"name": "Ava", "prompt": "Answer calls for Bright Smile Dental."}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_backend(make_settings(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend", headers=AUTH) as client:
            yield client


@pytest.mark.parametrize(("body", "named"), [
    ({**AGENT, "settings": {"end_of_turn_ms": 300}}, "end_of_turn_ms"),
    ({**AGENT, "settings": {"recording": False, "voicemail_action": "hangup"}}, "voicemail_action"),
    ({**AGENT, "llm": {"max_token": 50}}, "max_token"),
    ({**AGENT, "colour": "blue"}, "colour"),
])
async def test_unknown_agent_keys_are_refused_with_their_name(
    api: httpx.AsyncClient, body: dict[str, object], named: str
) -> None:
    response = await api.post("/agents", json=body)
    assert response.status_code == 422, response.text
    assert any(named in [str(part) for part in error["loc"]] for error in response.json()["detail"]), response.text
    assert (await api.get("/agents")).json() == []


async def test_unknown_key_in_a_patch_is_refused_and_changes_nothing(api: httpx.AsyncClient) -> None:
    agent = (await api.post("/agents", json={**AGENT, "settings": {"end_of_turn_silence_ms": 700}})).json()
    response = await api.patch(f"/agents/{agent['id']}", json={"settings": {"end_of_turn_silence": 300}})
    assert response.status_code == 422 and "end_of_turn_silence" in response.text
    assert (await api.get(f"/agents/{agent['id']}")).json()["settings"]["end_of_turn_silence_ms"] == 700


async def test_an_agent_without_settings_reads_back_the_documented_defaults(api: httpx.AsyncClient) -> None:
    created = (await api.post("/agents", json=AGENT)).json()
    assert created["settings"] == AgentSettings().model_dump()
    assert created["llm"] == {"model": None, "temperature": 0.6, "max_tokens": 80, "max_words": 40}
    assert created["settings"]["end_of_turn_silence_ms"] == 280 and created["settings"]["min_speech_ms"] == 150
    assert created["settings"]["turn_detection"] == "smart" and created["settings"]["smart_turn"]["done_threshold"] == 0.98


def test_turn_config_defaults_are_the_agent_defaults() -> None:
    defaults = AgentSettings()
    assert TurnConfig() == TurnConfig.for_agent(defaults)
    assert (TurnConfig().min_speech_ms, TurnConfig().end_of_turn_silence_ms) == (150, 280)
    # The speculative pause never outlasts a short end-of-turn silence.
    assert TurnConfig.for_agent(AgentSettings(end_of_turn_silence_ms=120)).early_pause_ms == 120


class RecordingLLM:
    """Answers at once and keeps the options each request carried."""

    def __init__(self) -> None:
        self.options: list[LLMConfig] = []

    async def stream(
        self, messages: list[ChatMessage], options: LLMConfig, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]:
        self.options.append(options)
        yield "Sure, this is an instant reply."

    def warmup(self) -> None:
        return None




async def test_gateway_runs_an_agent_without_settings_on_the_documented_defaults(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, VAD_ENGINE="energy")
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief."})  # no llm, no settings
    call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    llm = RecordingLLM()
    engines = Engines(stt=InstantSTT(), llm=llm, tts=InstantTTS(), vad_factory=lambda: build_vad(settings))
    port = free_port()
    with serve(create_gateway(settings, engines=engines), port):
        phone = VirtualPhone(_media_url(settings, port, call.id), custom_parameters={"call_id": call.id},
                             lines=[CallerLine("hello", tone_ulaw(800)), CallerLine("and again", tone_ulaw(600))],
                             reply_timeout_s=15)
        await asyncio.wait_for(phone.run(), 60)
    transcript = await storage.list_transcripts(call.id)
    await storage.close()

    window_ms = build_vad(settings).window_samples * 1000 / 16000
    defaults = AgentSettings()
    answers = [line for line in transcript if line.speaker == "agent"]
    assert len(answers) == 2, [(line.speaker, line.text) for line in transcript]
    for answer in answers:
        # The turn ended on the default silence (to within one VAD window), not on another default.
        waited = answer.metrics["end_of_turn_ms"]
        assert defaults.end_of_turn_silence_ms <= waited <= defaults.end_of_turn_silence_ms + window_ms, waited
    replies = [o for o in llm.options if o.max_tokens > 1]  # the prompt prefill asks for one token
    assert replies and all(o == LLMConfig() for o in replies), replies
    assert replies[0].max_tokens == 80 and replies[0].temperature == 0.6
