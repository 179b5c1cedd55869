"""Campaigns on both databases: the API (JSON and CSV, state moves, do-not-call), and the dispatcher
dialing through the real Twilio SDK against a fake of Twilio's cloud at the wire, with Twilio's signed
status callbacks played by the test: limits, retries, the do-not-call list, closed windows, a
dispatcher that died between its claim and its dial."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from backend.dialing import build_dispatcher
from backend.main import create_app
from shared.campaigns.config import DAYS
from shared.campaigns.dispatch import UNDIALED_REASON, Dispatcher, call_metadata
from shared.storage.campaigns import campaign_store
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio, signed_post
from tests.support.servers import free_port, serve

PUBLIC = "https://relayx.example.test"
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
def fake_twilio() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with serve(fake.app()) as url:
        yield fake, url


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    twilio: FakeTwilio
    dispatcher: Dispatcher
    answered: set[str]

    async def campaign(self, contacts: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
        agent = (
            await self.client.post("/agents", json={"name": "Ava", "prompt": "Remind {first_name}."})
        ).json()
        body = {"name": "Reminders", "agent_id": agent["id"], "contacts": contacts, **settings}
        response = await self.client.post("/campaigns", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def placed(self) -> list[dict[str, Any]]:
        """Calls.create requests Twilio received, in order."""
        return [r["form"] for r in self.twilio.requests if r["path"].endswith("/Calls.json")]

    async def twilio_says(self, form: dict[str, Any], status: str, **extra: str) -> None:
        """Twilio's signed status callback for the call placed with `form`."""
        url = str(form["StatusCallback"])
        sid = next(
            sid
            for sid, call in self.twilio.calls.items()
            if call["to"] == form["To"] and sid not in self.answered
        )
        self.answered.add(sid)
        params = {
            "AccountSid": ACCOUNT_SID,
            "CallSid": sid,
            "CallStatus": status,
            "To": str(form["To"]),
            "From": FROM_NUMBER,
            "Direction": "outbound-api",
            "ApiVersion": "2010-04-01",
            **extra,
        }
        response = await signed_post(self.client, url, urlsplit(url).path, params)
        assert response.status_code == 204, response.text

    async def progress(self, campaign_id: str) -> dict[str, Any]:
        return dict((await self.client.get(f"/campaigns/{campaign_id}")).json())


@pytest.fixture
async def env(database_url: str, tmp_path: Path, fake_twilio: tuple[FakeTwilio, str]) -> AsyncIterator[Env]:
    fake, url = fake_twilio
    settings = make_settings(
        tmp_path,
        DATABASE_URL=database_url,
        TELEPHONY_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM_NUMBER=FROM_NUMBER,
        PUBLIC_BASE_URL=PUBLIC,
        PUBLIC_GATEWAY_URL="wss://gateway.example.test",
        TWILIO_API_BASE_URL=url,
        GATEWAY_INTERNAL_URL=f"http://127.0.0.1:{free_port()}",  # no gateway answers: capacity unknown
    )
    app = create_app(settings, run_jobs=False)  # the test ticks the dispatcher itself
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://backend", headers=AUTH) as client,
    ):
        dispatcher = build_dispatcher(settings, app.state.storage, app.state.telephony, app.state.admission)
        yield Env(app, client, fake, dispatcher, set())


def _number(n: int) -> str:
    return f"+1415555{n:04d}"


async def test_a_campaign_keeps_its_limits_retries_by_its_rules_and_never_dials_the_do_not_call_list(
    env: Env,
) -> None:
    # Scripted callees: 1 is always busy, 2 does not answer once then answers, 9 is on the list.
    script = {_number(1): ["busy", "busy", "busy"], _number(2): ["no-answer", "completed"]}
    assert (await env.client.post("/do-not-call", json={"numbers": [_number(9)]})).json()["added"] == 1
    contacts = [{"phone_number": _number(n), "variables": {"first_name": f"P{n}"}} for n in range(1, 10)]
    campaign = await env.campaign(
        contacts,
        max_concurrency=3,
        calls_per_second=20,
        start=True,
        retry={"max_attempts": 2, "delay_s": 0, "on": ["busy", "no-answer"]},
    )
    done = 0
    most_at_once = 0
    for _ in range(40):
        await env.dispatcher.tick()
        placed = env.placed()
        open_calls = placed[done:]
        most_at_once = max(most_at_once, len(open_calls))
        assert len(open_calls) <= 3
        for form in open_calls:
            outcomes = script.get(str(form["To"]), [])
            status = outcomes.pop(0) if outcomes else "completed"
            await env.twilio_says(form, status, **({"CallDuration": "12"} if status == "completed" else {}))
        done = len(placed)
        if (await env.progress(campaign["id"]))["status"] == "completed":
            break
    progress = await env.progress(campaign["id"])
    assert progress["status"] == "completed"
    assert most_at_once == 3
    dialed = Counter(str(form["To"]) for form in env.placed())
    assert dialed[_number(1)] == 2 and dialed[_number(2)] == 2  # retried, up to max_attempts
    assert _number(9) not in dialed
    assert all(dialed[_number(n)] == 1 for n in range(3, 9))
    assert progress["progress"] == {
        "total": 9,
        "pending": 0,
        "calling": 0,
        "completed": 7,
        "failed": 1,
        "skipped": 1,
        "cancelled": 0,
        "calls_placed": 10,
    }
    contacts_out = (await env.client.get(f"/campaigns/{campaign['id']}/contacts")).json()["data"]
    by_number = {c["phone_number"]: c for c in contacts_out}
    assert by_number[_number(1)]["status"] == "failed" and by_number[_number(1)]["last_outcome"] == "busy"
    assert by_number[_number(2)]["status"] == "completed" and by_number[_number(2)]["attempts"] == 2
    assert (
        by_number[_number(9)]["status"] == "skipped"
        and by_number[_number(9)]["last_outcome"] == "do_not_call"
    )
    calls = (await env.client.get("/calls", params={"campaign_id": campaign["id"], "limit": 50})).json()[
        "data"
    ]
    assert len(calls) == 10 and all(c["campaign_id"] == campaign["id"] for c in calls)
    assert {c["metadata"]["variables"]["first_name"] for c in calls} == {f"P{n}" for n in range(1, 9)}


async def test_a_closed_window_defers_contacts_to_its_next_opening_instead_of_dialing(env: Env) -> None:
    today = DAYS[datetime.now(UTC).weekday()]
    other_days = [d for d in DAYS if d != today]
    campaign = await env.campaign(
        [{"phone_number": _number(1)}, {"phone_number": _number(2)}],
        start=True,
        window={"days": other_days, "start": "00:00", "end": "23:59"},
        timezone="UTC",
    )
    assert await env.dispatcher.tick() == 0
    assert env.placed() == []
    contacts = (await env.client.get(f"/campaigns/{campaign['id']}/contacts")).json()["data"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    for contact in contacts:
        assert contact["status"] == "pending" and contact["attempts"] == 0
        assert datetime.fromisoformat(contact["next_attempt_at"]).date() == tomorrow


async def test_a_claim_never_dialed_is_released_without_counting_the_attempt(env: Env) -> None:
    campaign = await env.campaign([{"phone_number": _number(1)}], start=True)
    store = campaign_store(env.app.state.storage)
    now = datetime.now(UTC)
    # A dispatcher claims, then dies before dialing: the claim is committed, no call reached Twilio.
    claims = await store.claim_due(
        campaign["id"],
        now=now,
        headroom=None,
        horizon_s=1,
        metadata_for=lambda c: call_metadata(c, simulate=False),
    )
    assert len(claims) == 1
    assert (
        await store.claim_due(
            campaign["id"],
            now=now,
            headroom=None,
            horizon_s=1,
            metadata_for=lambda c: call_metadata(c, simulate=False),
        )
    ) == []
    assert await env.dispatcher.tick(now + timedelta(seconds=5)) == 0  # too soon to call it dead
    assert env.placed() == []
    released_at = now + timedelta(seconds=env.dispatcher.undialed_after_s + 1)
    await env.dispatcher.tick(released_at)  # the sweep releases it; the same tick dials it again
    lost = (await env.client.get(f"/calls/{claims[0].call.id}")).json()
    assert lost["status"] == "failed" and lost["error"] == UNDIALED_REASON
    assert [str(f["To"]) for f in env.placed()] == [_number(1)]
    contact = (await env.client.get(f"/campaigns/{campaign['id']}/contacts")).json()["data"][0]
    assert contact["status"] == "calling" and contact["attempts"] == 1


async def test_a_caller_who_asks_not_to_be_called_again_joins_the_do_not_call_list(env: Env) -> None:
    campaign = await env.campaign(
        [{"phone_number": _number(1)}, {"phone_number": _number(2)}],
        start=True,
        max_concurrency=1,
        calls_per_second=20,
    )
    await env.dispatcher.tick()
    (form,) = env.placed()
    await env.twilio_says(form, "completed", CallDuration="20")
    call = (await env.client.get("/calls", params={"campaign_id": campaign["id"]})).json()["data"][0]
    storage = env.app.state.storage
    contact = await campaign_store(storage).settle(await storage.get_call(call["id"]), outcome="do_not_call")
    assert contact is not None and contact.last_outcome == "do_not_call"
    listed = (await env.client.get("/do-not-call")).json()
    assert [(e["number"], e["source"], e["call_id"]) for e in listed] == [(form["To"], "call", call["id"])]


async def test_campaign_moves_and_refusals(env: Env) -> None:
    campaign = await env.campaign([{"phone_number": _number(n)} for n in range(1, 4)])
    cid = campaign["id"]
    assert campaign["status"] == "draft" and campaign["progress"]["pending"] == 3
    assert (await env.client.post(f"/campaigns/{cid}/resume")).status_code == 409
    assert (await env.client.post(f"/campaigns/{cid}/start")).json()["status"] == "running"
    assert (await env.client.post(f"/campaigns/{cid}/start")).status_code == 409
    assert (await env.client.post(f"/campaigns/{cid}/pause")).json()["status"] == "paused"
    assert await env.dispatcher.tick() == 0  # a paused campaign dials nothing
    assert (await env.client.post(f"/campaigns/{cid}/resume")).json()["status"] == "running"
    cancelled = (await env.client.post(f"/campaigns/{cid}/cancel")).json()
    assert cancelled["status"] == "cancelled" and cancelled["progress"]["cancelled"] == 3
    assert (await env.client.post(f"/campaigns/{cid}/bogus")).status_code in (404, 405)
    assert (await env.client.get("/campaigns/not-a-uuid")).status_code == 404


async def test_a_csv_upload_makes_contacts_with_variables_and_a_bad_one_is_refused_by_row(env: Env) -> None:
    agent = (await env.client.post("/agents", json={"name": "Ava", "prompt": "Hi {first_name}"})).json()
    config = f'{{"name": "Upload", "agent_id": "{agent["id"]}", "max_concurrency": 2, "timezone": "Europe/Berlin"}}'
    good = "phone_number,first_name,timezone\n+1 (415) 555-0101,Ann,America/New_York\n+14155550102,Bo,\n"
    response = await env.client.post(
        "/campaigns/upload", files={"file": ("c.csv", good, "text/csv")}, data={"config": config}
    )
    assert response.status_code == 201, response.text
    contacts = (await env.client.get(f"/campaigns/{response.json()['id']}/contacts")).json()["data"]
    assert [(c["row_number"], c["phone_number"], c["timezone"], c["variables"]) for c in contacts] == [
        (1, "+14155550101", "America/New_York", {"first_name": "Ann"}),
        (2, "+14155550102", None, {"first_name": "Bo"}),
    ]
    bad = "phone_number,first_name\n+14155550101,Ann\n555-CALL-NOW,Bo\n+14155550101,Cy\n+12345,Di\n"
    before = (await env.client.get("/campaigns")).json()
    refused = await env.client.post(
        "/campaigns/upload", files={"file": ("c.csv", bad, "text/csv")}, data={"config": config}
    )
    assert refused.status_code == 422
    rows = [(e["loc"][2], e["loc"][3]) for e in refused.json()["detail"]]
    assert rows == [(3, "phone_number"), (4, "phone_number"), (5, "phone_number")]
    assert "already in row 2" in refused.json()["detail"][1]["msg"]
    assert (await env.client.get("/campaigns")).json() == before  # nothing half-created
    no_column = await env.client.post(
        "/campaigns/upload", files={"file": ("c.csv", "name\nAnn\n", "text/csv")}, data={"config": config}
    )
    assert no_column.status_code == 422 and "phone_number" in no_column.text
    unknown_agent = config.replace(agent["id"], "00000000-0000-4000-8000-000000000000")
    assert (
        await env.client.post(
            "/campaigns/upload", files={"file": ("c.csv", good, "text/csv")}, data={"config": unknown_agent}
        )
    ).status_code == 404


async def test_do_not_call_import_and_removal(env: Env) -> None:
    csv_text = "number,reason\n+14155550101,asked\n+14155550102,\n"
    added = await env.client.post("/do-not-call/upload", files={"file": ("dnc.csv", csv_text, "text/csv")})
    assert added.status_code == 200 and added.json() == {"added": 2, "total_given": 2}
    bad = await env.client.post(
        "/do-not-call/upload", files={"file": ("dnc.csv", "number\nnope\n", "text/csv")}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][2] == 2
    assert (await env.client.delete("/do-not-call/+14155550101")).status_code == 204
    assert (await env.client.delete("/do-not-call/+14155550101")).status_code == 404
    assert [e["number"] for e in (await env.client.get("/do-not-call")).json()] == ["+14155550102"]


async def test_an_analysis_outcome_named_in_the_rules_reopens_a_completed_campaign(env: Env) -> None:
    campaign = await env.campaign(
        [{"phone_number": _number(1)}], start=True,
        retry={"max_attempts": 2, "delay_s": 0, "on": ["callback_requested"]},
    )
    await env.dispatcher.tick()
    (form,) = env.placed()
    await env.twilio_says(form, "completed", CallDuration="20")
    assert (await env.progress(campaign["id"]))["status"] == "completed"
    storage = env.app.state.storage
    (call,) = (await env.client.get("/calls", params={"campaign_id": campaign["id"]})).json()["data"]
    contact = await campaign_store(storage).settle(await storage.get_call(call["id"]), outcome="callback_requested")
    assert contact is not None and contact.status == "pending"
    assert (await env.progress(campaign["id"]))["status"] == "running"
    await env.dispatcher.tick()
    assert [str(f["To"]) for f in env.placed()] == [_number(1), _number(1)]  # the call back
