"""The API's guards on both databases: rate limits, input the database could not hold, a database that
is down, and an OpenAPI that lists what each route can answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI

from backend.api.twilio_webhooks import TWILIO_CALL_STATUSES
from backend.main import create_app
from backend.schemas import CallStatusName
from shared import call_status, twilio_auth
from shared.errors import StorageUnavailable
from shared.rate_limit import RateLimiter
from shared.storage.postgres import PostgresStorage
from tests.conftest import make_settings
from tests.support.servers import free_port

PUBLIC = "https://relayx.example.test"
AUTH = {"Authorization": "Bearer test-key"}
AGENT = {"name": "Ava", "prompt": "You are Ava from Bright Smile Dental."}


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        tmp_path, DATABASE_URL=database_url, PUBLIC_BASE_URL=PUBLIC, BACKEND_INTERNAL_URL=f"http://127.0.0.1:{free_port()}"
    )
    application = create_app(settings, run_jobs=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend") as http:
        yield http


async def _agent(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/agents", json={**AGENT, **fields}, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


# --- rate limits ------------------------------------------------------------------------------------


async def test_a_burst_beyond_the_limit_gets_429_then_passes_later(app: FastAPI, client: httpx.AsyncClient) -> None:
    clock = FakeClock()
    app.state.rate_limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    answers = [(await client.get("/agents", headers=AUTH)).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    refused = await client.get("/agents", headers=AUTH)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "rate limit" in refused.json()["detail"]
    clock.now += 1.0  # 60 a minute: one token a second
    assert (await client.get("/agents", headers=AUTH)).status_code == 200
    assert (await client.get("/agents", headers=AUTH)).status_code == 429


async def test_wrong_keys_are_limited_per_address_not_per_key(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.rate_limiter = RateLimiter(per_minute=60, burst=2, clock=FakeClock())
    guesses = [
        (await client.get("/agents", headers={"Authorization": f"Bearer guess-{n}"})).status_code for n in range(3)
    ]
    assert guesses == [401, 401, 429]  # a new wrong key each time does not buy a fresh bucket
    assert (await client.get("/agents")).status_code == 429  # no key at all: the same address
    assert (await client.get("/agents", headers=AUTH)).status_code == 200  # the right key has its own


async def test_health_and_twilio_webhooks_are_not_limited(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.rate_limiter = RateLimiter(per_minute=60, burst=1, clock=FakeClock())
    assert [(await client.get("/health")).status_code for _ in range(3)] == [200, 200, 200]
    assert [(await client.post("/twilio/status/x")).status_code for _ in range(3)] == [403, 403, 403]


def test_limits_come_from_settings_and_zero_disables(tmp_path: Path) -> None:
    limited = create_app(make_settings(tmp_path, API_RATE_LIMIT_PER_MINUTE="30", API_RATE_LIMIT_BURST="5"))
    assert (limited.state.rate_limiter.per_minute, limited.state.rate_limiter.burst) == (30, 5)
    assert not create_app(make_settings(tmp_path, API_RATE_LIMIT_PER_MINUTE="0")).state.rate_limiter.enabled


# --- input the database could not hold ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/agents", "/calls"])
@pytest.mark.parametrize("offset", [2**31, 2**63, 10**30])
async def test_huge_offset_is_a_422_not_a_500(client: httpx.AsyncClient, path: str, offset: int) -> None:
    response = await client.get(path, params={"offset": offset}, headers=AUTH)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "offset"]


async def test_largest_offset_is_an_empty_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/calls", params={"offset": 2**31 - 1}, headers=AUTH)
    assert response.status_code == 200 and response.json()["data"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Ava\x00"},
        {"prompt": "\x00"},
        {"greeting": "Hi\x00"},
        {"llm": {"model": "qwen\x00"}},
        {"settings": {"business": "Bright\x00Smile"}},
        {"settings": {"expected_answers": ["ok", "n\x00"]}},
        {"settings": {"analysis": {"outcomes": {"booked": "x\x00"}}}},
    ],
)
async def test_nul_in_stored_text_is_a_422(client: httpx.AsyncClient, fields: dict[str, Any]) -> None:
    response = await client.post("/agents", json={**AGENT, **fields}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert (await client.get("/agents", headers=AUTH)).json() == []  # nothing written


async def test_nul_in_call_metadata_is_a_422(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    for metadata in ({"crm": "a\x00b"}, {"k\x00": 1}, {"deep": [{"x": ["\x00"]}]}):
        response = await client.post(
            "/calls/outbound", json={"agent_id": agent["id"], "to_number": "+14155550100", "metadata": metadata},
            headers=AUTH,
        )
        assert response.status_code == 422, response.text
    assert (await client.get("/calls", headers=AUTH)).json()["data"] == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "Ava", "prompt": "p", "llm": {"temperature": NaN}}',  # Python's parser takes NaN
        b'{"name": "\\ud800", "prompt": "p"}',  # a lone surrogate: not text any database stores
        b'{"name": "Ava", "prompt": "p", "settings": {"analysis": {"outcomes": {"a": "\\udfff"}}}}',
        b'{"name": "Ava", "prompt": "p", "settings": {"recording": 1}}',  # JSON types, as published
        b'{"name": "Ava", "prompt": "p", "settings": {"min_speech_ms": "150"}}',
    ],
)
async def test_unstorable_or_mistyped_json_is_a_422(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/agents", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]  # the echo of the input renders too


async def test_patch_refuses_null_for_a_required_field(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    response = await client.patch(f"/agents/{agent['id']}", json={"prompt": None}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]  # one shape for every 422
    cleared = await client.patch(f"/agents/{agent['id']}", json={"greeting": None}, headers=AUTH)
    assert cleared.status_code == 200 and cleared.json()["greeting"] is None


async def test_agent_with_outcomes_only_reads_back(client: httpx.AsyncClient) -> None:
    """Found by the fuzz test: the stored form of a spec without a data schema (or with 30 outcomes plus
    `no_conversation`) was refused when read back, so the agent was written but every read was a 500."""
    agent = await _agent(client, settings={"analysis": {"outcomes": [f"o{n}" for n in range(30)]}})
    fetched = await client.get(f"/agents/{agent['id']}", headers=AUTH)
    assert fetched.status_code == 200
    assert len(fetched.json()["settings"]["analysis"]["outcomes"]) == 31


async def test_a_number_with_other_scripts_digits_is_refused(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    for number in ("+1415555\u0661\u0662\u0663\u0664", "+14155550100\n"):
        response = await client.post(
            "/calls/outbound", json={"agent_id": agent["id"], "to_number": number}, headers=AUTH
        )
        assert response.status_code == 422 and "E.164" in response.text


# --- webhooks: a signed form Twilio would not send -----------------------------------------------------


async def _signed(client: httpx.AsyncClient, path: str, form: dict[str, str]) -> httpx.Response:
    signature = twilio_auth.sign("test-key", PUBLIC + path, form)  # the simulator signs with the API key
    return await client.post(path, data=form, headers={"X-Twilio-Signature": signature})


async def _browser_call(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/phone/calls", json={"agent_id": (await _agent(client))["id"]}, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.mark.parametrize("duration", ["\u00b2", "99999999999999999999", "-1", "1.5"])
async def test_status_callback_with_a_bad_duration_is_a_400(client: httpx.AsyncClient, duration: str) -> None:
    call = await _browser_call(client)
    path = f"/twilio/status/{call['call_id']}"
    response = await _signed(client, path, {"CallStatus": "completed", "CallDuration": duration})
    assert response.status_code == 400 and "CallDuration" in response.text


async def test_a_call_sid_is_one_call_s(client: httpx.AsyncClient) -> None:
    first, second = await _browser_call(client), await _browser_call(client)
    sid = "CA" + "ab" * 16
    ok = await _signed(client, f"/twilio/status/{first['call_id']}", {"CallStatus": "ringing", "CallSid": sid})
    assert ok.status_code == 204
    taken = await _signed(client, f"/twilio/status/{second['call_id']}", {"CallStatus": "ringing", "CallSid": sid})
    assert taken.status_code == 409
    other = "CA" + "cd" * 16
    changed = await _signed(client, f"/twilio/status/{first['call_id']}", {"CallStatus": "ringing", "CallSid": other})
    assert changed.status_code == 409


async def test_hanging_up_a_call_without_a_sid_is_a_409(client: httpx.AsyncClient) -> None:
    call = await _browser_call(client)
    response = await client.post(f"/calls/{call['call_id']}/hangup", headers=AUTH)
    assert response.status_code == 409 and "no call SID" in response.text


# --- a database that is down ------------------------------------------------------------------------


async def test_database_down_is_a_503(app: FastAPI, client: httpx.AsyncClient, database_url: str) -> None:
    agent = await _agent(client)
    if database_url.startswith("sqlite"):
        await app.state.storage.close()
    else:  # a PostgreSQL nobody listens on: connections are refused
        dead = PostgresStorage(f"postgresql://relayx@127.0.0.1:{free_port()}/relayx")
        await dead.open()
        with pytest.raises(StorageUnavailable):  # named as an outage, not as a refused write
            await dead.get_agent(agent["id"])
        live, app.state.storage = app.state.storage, dead
    try:
        for method, path in (("GET", "/agents"), ("GET", f"/agents/{agent['id']}"), ("POST", "/agents")):
            response = await client.request(method, path, json=AGENT if method == "POST" else None, headers=AUTH)
            assert response.status_code == 503, response.text
            assert response.json() == {"detail": "the database is unavailable: try again shortly"}
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
    finally:
        if not database_url.startswith("sqlite"):
            await dead.close()
            app.state.storage = live


# --- what the OpenAPI promises ----------------------------------------------------------------------


def test_every_api_key_route_documents_401_429_503_and_lookups_404(tmp_path: Path) -> None:
    paths = create_app(make_settings(tmp_path)).openapi()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if any("HTTPBearer" in requirement for requirement in operation.get("security", [])):
                assert {"401", "429", "503"} <= codes, (method, path)
                assert operation["responses"]["429"]["headers"]["Retry-After"]
            if "{" in path:
                assert "404" in codes, (method, path)
            if path.startswith("/twilio/"):
                assert {"400", "403", "404", "503"} <= codes, (method, path)


def test_published_statuses_match_the_lifecycle() -> None:
    assert set(get_args(CallStatusName)) == set(call_status.ALL_STATUSES)
    assert {call_status.normalize(s) for s in TWILIO_CALL_STATUSES} == set(call_status.ALL_STATUSES)


async def test_a_simulated_line_may_only_play_an_existing_wav_file(client: httpx.AsyncClient, tmp_path: Path) -> None:
    agent = await _agent(client)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for callers")
    for wav in (str(secret), "/etc/passwd", str(tmp_path / "missing.wav")):
        response = await client.post("/calls/outbound", headers=AUTH, json={
            "agent_id": agent["id"], "to_number": "+14155550100", "metadata": {"simulate": [{"wav": wav}]}})
        assert response.status_code == 422 and "existing .wav" in response.text, response.text
    assert (await client.get("/calls", headers=AUTH)).json()["data"] == []
