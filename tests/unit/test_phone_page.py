"""The browser phone's HTTP side: the public page and its files, and the two key-protected routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from backend.main import create_app
from shared import stream_tokens
from shared.storage.base import Storage
from tests.conftest import make_settings

AUTH = {"Authorization": "Bearer test-key"}
GATEWAY = "wss://gateway.example.test"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(tmp_path, PUBLIC_GATEWAY_URL=GATEWAY + "/"))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend") as client:
        yield client


async def _agent_id(client: httpx.AsyncClient) -> str:
    response = await client.post("/agents", json={"name": "Ava", "prompt": "Answer calls."}, headers=AUTH)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_page_and_its_scripts_load_without_the_key(client: httpx.AsyncClient) -> None:
    page = await client.get("/phone")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/phone/static/phone.js">' in page.text
    for name in ("phone.js", "audio.js", "capture-worklet.js"):
        script = await client.get(f"/phone/static/{name}")
        assert script.status_code == 200, name
        assert script.headers["content-type"].startswith("text/javascript"), name


async def test_only_the_pages_own_files_are_served(client: httpx.AsyncClient) -> None:
    for name in ("phone.html", "..%2Fmain.py", "missing.js"):
        assert (await client.get(f"/phone/static/{name}")).status_code == 404, name


async def test_starting_a_call_needs_the_key(client: httpx.AsyncClient) -> None:
    agent_id = await _agent_id(client)
    assert (await client.post("/phone/calls", json={"agent_id": agent_id})).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.post("/phone/calls", json={"agent_id": agent_id}, headers=wrong)).status_code == 401


async def test_unknown_agent_is_404_and_writes_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/phone/calls", json={"agent_id": "00000000-0000-0000-0000-000000000000"}, headers=AUTH
    )
    assert response.status_code == 404
    assert (await client.get("/calls", headers=AUTH)).json()["data"] == []


async def test_a_browser_call_is_queued_for_the_gateways_media_socket(client: httpx.AsyncClient) -> None:
    agent_id = await _agent_id(client)
    response = await client.post("/phone/calls", json={"agent_id": agent_id}, headers=AUTH)
    assert response.status_code == 201, response.text
    placed = response.json()
    url, _, token = placed["stream_url"].partition("?token=")
    assert url == GATEWAY + "/media"
    # The token lets the browser open the stream where Twilio's signature is required; it names this call.
    # (signed with the API key, as no TWILIO_AUTH_TOKEN is set here)
    assert stream_tokens.verify("test-key", token) == placed["call_id"]
    call = (await client.get(f"/calls/{placed['call_id']}", headers=AUTH)).json()
    assert call["agent_id"] == agent_id and call["status"] == "queued"
    assert call["to_number"] == "browser" and call["metadata"] == {"channel": "browser"}


async def test_ending_a_call_whose_stream_never_started_cancels_it(client: httpx.AsyncClient) -> None:
    placed = (
        await client.post("/phone/calls", json={"agent_id": await _agent_id(client)}, headers=AUTH)
    ).json()
    path = f"/phone/calls/{placed['call_id']}/end"
    assert (await client.post(path)).status_code == 401
    ended = await client.post(path, headers=AUTH)
    assert ended.status_code == 200 and ended.json()["status"] == "canceled"
    again = await client.post(path, headers=AUTH)  # a retry changes nothing
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert (await client.post("/phone/calls/nope/end", headers=AUTH)).status_code == 404


async def test_ending_is_only_for_browser_calls(app: FastAPI, client: httpx.AsyncClient) -> None:
    storage: Storage = app.state.storage
    call = await storage.create_call(
        agent_id=await _agent_id(client), to_number="+14155550100", from_number=None, metadata={}
    )
    assert (await client.post(f"/phone/calls/{call.id}/end", headers=AUTH)).status_code == 409
    assert (await storage.get_call(call.id)).status == "queued"
