"""A 50-contact campaign on the simulated line, through the real backend and gateway on the real models.

The callees are scripted as a campaign meets them: people who answer (and say they cannot talk),
answering machines (a greeting, a beep), lines that are busy or ring out, numbers on the do-not-call
list. With `max_concurrency` 3 the campaign must never have more than 3 calls at once, never call one
contact twice at the same time, retry busy and no-answer contacts exactly as its rules say, never
dial a listed number, and end every contact in a final state. A second campaign whose calling window
is closed today must place nothing and defer its contacts to the window's next opening.

Prints the run's figures (wall time, calls placed, the most calls at once) for the closing note.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.main import create_app as create_backend
from shared.campaigns.config import DAYS
from tests.conftest import make_settings
from tests.support.servers import free_port, serve
from voice_gateway.main import create_app as create_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.models]
AUTH = {"Authorization": "Bearer test-key"}
MAX_CONCURRENCY = 3
MAX_ATTEMPTS = 2
PERSON = [{"text": "Hello?", "speak_first": True}, "Sorry, this is not a good time. Goodbye."]
MACHINE = [
    {"text": "Hi, you have reached Dana. Please leave a message after the tone.", "speak_first": True},
    {"beep": True, "beep_hz": 1000, "beep_ms": 500, "record_s": 30},
]
# 50 contacts: who answers how (as the `simulate` variable: the callee's script on the simulated line).
KINDS = ["person"] * 8 + ["machine"] * 6 + ["busy"] * 14 + ["no-answer"] * 14 + ["listed"] * 8
SCRIPTS: dict[str, Any] = {"person": PERSON, "machine": MACHINE, "busy": "busy", "no-answer": "no-answer"}


def _number(n: int) -> str:
    return f"+1415555{n:04d}"


def _contacts() -> list[dict[str, Any]]:
    out = []
    for n, kind in enumerate(KINDS):
        variables: dict[str, Any] = {"first_name": f"Contact{n}", "kind": kind}
        if kind in SCRIPTS:
            script = SCRIPTS[kind]
            variables["simulate"] = script if isinstance(script, str) else json.dumps(script)
        out.append({"phone_number": _number(n), "variables": variables})
    return out


def _most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_campaign_of_50_contacts_keeps_every_limit_and_ends_every_contact(tmp_path: Path) -> None:
    backend_port, gateway_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        TELEPHONY_PROVIDER="simulator",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{backend_port}",
        PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
        JOBS_POLL_S="0.2",
        CAMPAIGN_TICK_S="1",
    )
    with (
        serve(create_backend(settings), backend_port) as backend,
        serve(create_gateway(settings), gateway_port, timeout_s=300),
    ):
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = client.post("/agents", json={
            "name": "Ava",
            "greeting": "Hi {first_name}, this is Ava from Bright Smile Dental about your cleaning.",
            "prompt": "You remind patients of Bright Smile Dental of their cleaning. Be brief.",
            "settings": {"business": "Bright Smile Dental", "voicemail": {
                "detect": True, "action": "leave_message",
                "message": "Hi {first_name}, this is Bright Smile Dental. Please call us back. Goodbye."}},
        }).json()
        listed = [_number(n) for n, kind in enumerate(KINDS) if kind == "listed"]
        assert client.post("/do-not-call", json={"numbers": listed}).json()["added"] == len(listed)
        today = DAYS[datetime.now(UTC).weekday()]
        closed = client.post("/campaigns", json={
            "name": "Not today", "agent_id": agent["id"], "start": True, "timezone": "UTC",
            "window": {"days": [d for d in DAYS if d != today], "start": "00:00", "end": "23:59"},
            "contacts": [{"phone_number": _number(900)}, {"phone_number": _number(901)}],
        }).json()
        started = time.monotonic()
        made = client.post("/campaigns", json={
            "name": "Cleaning reminders", "agent_id": agent["id"], "max_concurrency": MAX_CONCURRENCY,
            "calls_per_second": 5, "start": True,
            "retry": {"max_attempts": MAX_ATTEMPTS, "delay_s": 1, "on": ["busy", "no-answer"]},
            "contacts": _contacts(),
        })
        assert made.status_code == 201, made.text
        campaign = made.json()
        most_calling = 0
        deadline = time.monotonic() + 600
        while True:
            state = client.get(f"/campaigns/{campaign['id']}").json()
            most_calling = max(most_calling, state["progress"]["calling"])
            if state["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        assert state["status"] == "completed", state
        contacts = client.get(f"/campaigns/{campaign['id']}/contacts", params={"limit": 100}).json()["data"]
        calls: list[dict[str, Any]] = []
        while len(calls) % 200 == 0:
            page = client.get("/calls", params={"campaign_id": campaign["id"], "limit": 200,
                                                "offset": len(calls)}).json()
            calls += page["data"]
            if not page["has_more"]:
                break
        closed_contacts = client.get(f"/campaigns/{closed['id']}/contacts").json()["data"]
        closed_calls = client.get("/calls", params={"campaign_id": closed["id"]}).json()["data"]

    kind_of = {c["id"]: c["variables"]["kind"] for c in contacts}
    per_contact = Counter(call["contact_id"] for call in calls)
    intervals = [(datetime.fromisoformat(c["created_at"]), datetime.fromisoformat(c["ended_at"] or c["updated_at"]))
                 for c in calls]
    print(f"\ncampaign of {len(contacts)} contacts: {elapsed:.0f} s, {len(calls)} calls placed, "
          f"at most {most_calling} contacts calling at once (polled), {_most_at_once(intervals)} calls open at once "
          f"(call rows), outcomes {dict(Counter(c['last_outcome'] for c in contacts))}")

    assert state["progress"]["pending"] == 0 and state["progress"]["calling"] == 0
    assert all(c["status"] in ("completed", "failed", "skipped") for c in contacts)
    assert most_calling <= MAX_CONCURRENCY and _most_at_once(intervals) <= MAX_CONCURRENCY
    assert all(call["status"] in ("completed", "busy", "no-answer") for call in calls), \
        Counter(call["status"] for call in calls)
    by_contact: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for call, interval in zip(calls, intervals, strict=True):
        by_contact[call["contact_id"]].append(interval)
    assert all(_most_at_once(spans) == 1 for spans in by_contact.values()), "a contact was called twice at once"
    assert not {call["to_number"] for call in calls} & set(listed), "a do-not-call number was dialed"
    for contact in contacts:
        kind, attempts = kind_of[contact["id"]], per_contact[contact["id"]]
        assert contact["attempts"] == attempts, contact
        if kind in ("busy", "no-answer"):
            assert (contact["status"], contact["last_outcome"], attempts) == ("failed", kind, MAX_ATTEMPTS), contact
        elif kind == "listed":
            assert (contact["status"], contact["last_outcome"], attempts) == ("skipped", "do_not_call", 0), contact
        else:
            assert contact["status"] == "completed" and attempts == 1, contact
            if kind == "machine":
                assert contact["last_outcome"] == "voicemail", contact
    assert state["progress"]["calls_placed"] == len(calls)
    # The closed window: nothing placed, both contacts due at its next opening (tomorrow or later).
    assert closed_calls == []
    assert all(c["status"] == "pending" and c["attempts"] == 0 and
               datetime.fromisoformat(c["next_attempt_at"]).date() > datetime.now(UTC).date()
               for c in closed_contacts), closed_contacts
