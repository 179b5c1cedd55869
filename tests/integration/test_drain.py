"""Drain on a real socket: a gateway on instant engines and the energy VAD, its drain started as SIGTERM
would start it. New streams get the 503 "draining" refusal and /ready says so while the running call
goes on to its end; the drain is over once it has ended. Past GATEWAY_DRAIN_TIMEOUT_S a call still
running is ended politely: the agent says its closing line and hangs up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from backend.telephony.virtual_phone import CallerLine, Silence, VirtualPhone
from relayx_cli.instant_engines import instant_engines
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Call, TranscriptLine
from tests.conftest import make_settings, media_url
from tests.support.calls import migrate
from tests.support.servers import serve
from tests.support.speech import tone_ulaw
from voice_gateway.main import create_app as create_gateway

CLOSING = "We are updating our phone system, please call again. Goodbye!"


async def _settings(tmp_path: Path, **overrides: str) -> Settings:
    settings = make_settings(tmp_path, VAD_ENGINE="energy", **overrides)
    await migrate(settings)
    return settings


@contextmanager
def gateway(settings: Settings) -> Iterator[tuple[str, FastAPI, threading.Event]]:
    """A gateway served in a thread; the event is set once its drain is over (where a real process
    would hand SIGTERM on to uvicorn and exit)."""
    app = create_gateway(settings, engines=instant_engines(settings))
    drained = threading.Event()
    app.state.drain.on_drained = drained.set
    with serve(app) as url:
        yield url, app, drained


async def _call(settings: Settings) -> Call:
    storage = build_storage(settings)
    await storage.open()
    try:
        agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": "Hello there.",
                                            "settings": {"voicemail": {"detect": False},
                                                         "limits": {"max_duration_line": CLOSING}}})
        return await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    finally:
        await storage.close()


async def _stored(settings: Settings, call_id: str) -> tuple[Call, list[TranscriptLine]]:
    storage = build_storage(settings)
    await storage.open()
    try:
        return await storage.get_call(call_id), await storage.list_transcripts(call_id)
    finally:
        await storage.close()


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{base}/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _phone(settings: Settings, base: str, call: Call, lines: list[Any], first_turn: asyncio.Event) -> VirtualPhone:
    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "turn":
            first_turn.set()

    port = int(base.rsplit(":", 1)[1])
    return VirtualPhone(media_url(settings, port, call.id), custom_parameters={"call_id": call.id}, lines=lines,
                        reply_timeout_s=20, on_event=on_event)


async def test_a_draining_gateway_refuses_new_streams_and_is_drained_once_its_call_has_ended(tmp_path: Path) -> None:
    settings = await _settings(tmp_path)
    with gateway(settings) as (base, app, drained):
        running, refused_call = await _call(settings), await _call(settings)
        first_turn = asyncio.Event()
        lines = [CallerLine(f"line {i}", tone_ulaw(700)) for i in range(3)]
        phone = asyncio.create_task(_phone(settings, base, running, lines, first_turn).run())
        await asyncio.wait_for(first_turn.wait(), 30)

        app.state.drain.request()  # what SIGTERM does

        async def draining() -> bool:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(f"{base}/ready")).status_code == 503

        await _until(draining, 10, "/ready to answer 503")
        async with httpx.AsyncClient(timeout=5) as client:
            ready = (await client.get(f"{base}/ready")).json()
            health = (await client.get(f"{base}/health")).json()
        with pytest.raises(websockets.InvalidStatus) as refusal:
            async with websockets.connect(media_url(settings, int(base.rsplit(":", 1)[1]), refused_call.id)):
                pass
        during = await _metrics(base)
        assert not drained.is_set()  # the call is still running: the process stays

        report = await asyncio.wait_for(phone, 60)
        assert await asyncio.to_thread(drained.wait, 10), "the drain did not end after the last call"
        call, transcript = await _stored(settings, running.id)

    assert ready["reasons"] == ["draining"] and ready["capacity"]["accepting"] is False
    assert health["draining"] is True and health["status"] == "ok"  # alive, not ready
    response = refusal.value.response
    assert response.status_code == 503 and response.headers["Retry-After"] == str(settings.capacity_retry_after_s)
    assert response.body is not None and response.body.decode() == "gateway draining: not taking new calls"
    assert during[("relayx_gateway_draining", ())] == 1
    assert during[("relayx_gateway_active_calls", ())] == 1
    assert during[("relayx_gateway_streams_refused_total", (("reason", "draining"),))] == 1
    # The running call went on to its end: every line answered, the caller hung up, nothing cut.
    assert len(report.turns) == 3 and all(turn.first_agent_frame is not None for turn in report.turns)
    assert report.hangup_at is None and report.clears == 0
    assert call.status == "completed"
    assert [line.speaker for line in transcript].count("caller") == 3
    assert CLOSING not in [line.text for line in transcript]
    assert (await _stored(settings, refused_call.id))[0].status == "queued"  # refused before any write


async def test_past_the_drain_timeout_the_agent_ends_the_call_politely(tmp_path: Path) -> None:
    settings = await _settings(tmp_path, GATEWAY_DRAIN_TIMEOUT_S="0.5")
    with gateway(settings) as (base, app, drained):
        running = await _call(settings)
        first_turn = asyncio.Event()
        # One line, then a caller who stays on the line (silent) far longer than the drain waits.
        lines = [CallerLine("hello", tone_ulaw(700)), Silence(60)]
        phone = asyncio.create_task(_phone(settings, base, running, lines, first_turn).run())
        await asyncio.wait_for(first_turn.wait(), 30)
        app.state.drain.request()
        report = await asyncio.wait_for(phone, 30)  # the agent hangs up: the phone's run ends
        assert await asyncio.to_thread(drained.wait, 10)
        after = await _metrics(base)
        call, transcript = await _stored(settings, running.id)

    assert report.hangup_at is not None  # the agent closed the stream, the caller did not
    agent_lines = [line.text for line in transcript if line.speaker == "agent"]
    assert agent_lines[-1] == CLOSING, agent_lines  # said whole before the hang-up
    assert call.status == "completed"
    assert after[("relayx_gateway_drain_ended_calls_total", ())] == 1
    assert after[("relayx_gateway_calls_ended_total", ())] == 1
    assert after[("relayx_gateway_active_calls", ())] == 0
