"""Bad input after the call: invalid agent analysis schemas and webhook URLs are refused with a 422
that names the problem; an analysis model answering garbage (a fake OpenAI-compatible server, at the
wire) leaves one failed analysis with its reason, re-run on demand through POST /calls/{id}/analysis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from backend.main import create_app
from tests.conftest import make_settings
from tests.support.servers import serve

AUTH = {"Authorization": "Bearer test-key"}
AGENT = {"name": "Ava", "prompt": "You confirm dental appointments."}


def _garbage_llm() -> tuple[FastAPI, list[dict]]:
    """An OpenAI-compatible server whose every answer is not the requested JSON."""
    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict:
        body = await request.json()
        seen.append(body)
        return {"choices": [{"message": {"role": "assistant", "content": "Sure! The call went {great"}}]}

    return app, seen


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict]]]:
    fake, seen = _garbage_llm()
    with serve(fake) as llm_url:
        settings = make_settings(tmp_path, ANALYSIS_LLM_ENGINE="openai", OPENAI_BASE_URL=f"{llm_url}/v1",
                                 ANALYSIS_LLM_MODEL="fake-model", JOBS_POLL_S="0.1")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://backend", headers=AUTH) as c:
                yield c, seen


@pytest.mark.parametrize(("analysis", "named"), [
    ({"schema": {"has_insurance": "bool"}}, "analysis.schema.properties.has_insurance.type"),
    ({"schema": {"type": "array", "items": {"type": "string"}}}, "analysis.schema.type"),
    ({"schema": {"day": {"type": "string", "pattern": "^[A-Z]"}}}, "unsupported keyword(s) pattern"),
    ({"schema": {"kind": {"enum": []}}}, "analysis.schema.properties.kind.enum"),
    ({"outcomes": ["Booked!"]}, "analysis.outcomes"),
    ({"outcome": ["booked"]}, "unknown key(s) outcome"),
])
async def test_invalid_analysis_settings_are_refused_with_the_reason(
    client: tuple[httpx.AsyncClient, list[dict]], analysis: dict, named: str
) -> None:
    c, _ = client
    response = await c.post("/agents", json={**AGENT, "settings": {"analysis": analysis}})
    assert response.status_code == 422 and named in response.text, response.text
    assert (await c.get("/agents")).json() == []


@pytest.mark.parametrize(("url", "named"), [
    ("ftp://example.com/hook", "http:// or https://"),
    ("example.com/hook", "http:// or https://"),
    ("http://127.0.0.1:9000/hook", "private and loopback"),
    ("http://10.1.2.3/hook", "private and loopback"),
])
async def test_bad_webhook_urls_are_refused(client: tuple[httpx.AsyncClient, list[dict]], url: str, named: str) -> None:
    c, _ = client
    response = await c.post("/agents", json={**AGENT, "settings": {"webhook_url": url}})
    assert response.status_code == 422 and named in response.text, response.text


async def test_garbage_from_the_model_leaves_a_failed_analysis_with_its_reason(
    client: tuple[httpx.AsyncClient, list[dict]],
) -> None:
    c, seen = client
    agent = (await c.post("/agents", json={**AGENT, "settings": {"analysis": {
        "outcomes": ["confirmed", "rescheduled"], "schema": {"confirmed_time": "string"}}}})).json()
    storage = c._transport.app.state.storage  # type: ignore[attr-defined]
    call = await storage.create_call(agent_id=agent["id"], to_number="+14155550100", from_number=None, metadata={})
    assert (await c.post(f"/calls/{call.id}/analysis")).status_code == 409  # not ended yet
    await storage.add_transcript(call.id, "agent", "Hi, calling to confirm your appointment on Monday.")
    await storage.add_transcript(call.id, "caller", "Yes, Monday at 10 works.")
    await storage.apply_call_status(call.id, "completed", duration=12)
    queued = await c.post(f"/calls/{call.id}/analysis")
    assert queued.status_code == 202, queued.text

    deadline = time.monotonic() + 30
    while (response := await c.get(f"/calls/{call.id}/analysis")).status_code == 404:
        assert time.monotonic() < deadline, "no analysis row appeared"
        await asyncio.sleep(0.05)  # polling the API with a deadline
    row = response.json()
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "not valid JSON" in row["error"] and row["outcome"] is None and row["data"] == {}
    assert len(seen) == 2  # the retry happened, once
    schema = seen[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["outcome"]["enum"] == ["confirmed", "rescheduled", "no_conversation"]
    assert schema["properties"]["data"]["required"] == ["confirmed_time"]
    assert (await c.get("/calls", params={"outcome": "confirmed"})).json()["data"] == []
    assert (await c.get(f"/calls/{call.id}/recording")).status_code == 404


async def test_a_call_without_caller_speech_is_no_conversation_without_a_model(
    client: tuple[httpx.AsyncClient, list[dict]],
) -> None:
    c, seen = client
    agent = (await c.post("/agents", json=AGENT)).json()
    storage = c._transport.app.state.storage  # type: ignore[attr-defined]
    call = await storage.create_call(agent_id=agent["id"], to_number="+14155550100", from_number=None, metadata={})
    await storage.add_transcript(call.id, "agent", "Hello? Is anyone there?")
    await storage.apply_call_status(call.id, "no-answer")
    assert (await c.post(f"/calls/{call.id}/analysis")).status_code == 202
    deadline = time.monotonic() + 30
    while (response := await c.get(f"/calls/{call.id}/analysis")).status_code == 404:
        assert time.monotonic() < deadline, "no analysis row appeared"
        await asyncio.sleep(0.05)  # polling the API with a deadline
    assert response.json()["outcome"] == "no_conversation" and seen == []
    listed = (await c.get("/calls", params={"outcome": "no_conversation", "sentiment": "neutral"})).json()
    assert [x["id"] for x in listed["data"]] == [call.id]


async def test_an_answering_machines_call_is_voicemail_and_the_jobs_are_counted_on_metrics(
    client: tuple[httpx.AsyncClient, list[dict]],
) -> None:
    c, seen = client
    agent = (await c.post("/agents", json=AGENT)).json()
    storage = c._transport.app.state.storage  # type: ignore[attr-defined]
    call = await storage.create_call(agent_id=agent["id"], to_number="+14155550100", from_number=None, metadata={})
    await storage.add_transcript(call.id, "caller", "Hi, you've reached Sam. Leave a message after the tone.",
                                 metrics={"screening": True})
    await storage.add_transcript(call.id, "agent", "Hi Sam, please call us back.", metrics={"voicemail": True})
    await storage.update_call(call.id, {"answered_by": "machine_end_beep"})
    await storage.apply_call_status(call.id, "completed", duration=12)
    assert (await c.post(f"/calls/{call.id}/analysis")).status_code == 202
    deadline = time.monotonic() + 30
    while (response := await c.get(f"/calls/{call.id}/analysis")).status_code == 404:
        assert time.monotonic() < deadline, "no analysis row appeared"
        await asyncio.sleep(0.05)  # polling the API with a deadline
    analysis = response.json()
    assert analysis["outcome"] == "voicemail" and "left its message" in analysis["summary"]
    assert seen == [], "decided without the model: it would read the machine's greeting as a conversation"
    metrics = (await c.get("/metrics")).text
    assert 'relayx_jobs_queued_total{task="relayx.analyze"}' in metrics
    assert 'relayx_jobs_run_total{result="succeeded",task="relayx.analyze"}' in metrics
