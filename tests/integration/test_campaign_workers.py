"""Two `relayx worker` processes dispatch one campaign on PostgreSQL and one is killed mid-run.

The workers dial through the real Twilio SDK against a fake of Twilio's cloud at the wire; the test
plays Twilio's side: every call it receives rings briefly, then its signed status callback (busy for
the numbers scripted busy, completed for the others) reaches the real backend. Each contact must be
called exactly as many times as its rules allow — a busy one `max_attempts` times, an answered one
once — whatever the kill interrupted: a claim, a dial, a tick.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from backend.main import create_app
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio, signed_post
from tests.support.servers import free_port, serve

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-key"}
CONTACTS = 30
BUSY = set(range(0, CONTACTS, 3))  # every third number is always busy
MAX_ATTEMPTS = 3


def _number(n: int) -> str:
    return f"+1415555{n:04d}"


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio; from shared.settings import Settings; from backend.dialing import run_dispatching_worker;"
        " asyncio.run(run_dispatching_worker(Settings(_env_file=None)))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def _play_twilio(fake: FakeTwilio, backend: httpx.AsyncClient, public: str, stop: asyncio.Event) -> None:
    """Answer every call Twilio received: a short ring, then its final status callback."""
    seen = 0

    async def finish(form: dict[str, object], sid: str) -> None:
        await asyncio.sleep(0.3)  # ringing
        to = str(form["To"])
        status = "busy" if int(to[-4:]) in BUSY else "completed"
        url = str(form["StatusCallback"])
        params = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "CallStatus": status, "To": to, "From": FROM_NUMBER,
                  "Direction": "outbound-api", "ApiVersion": "2010-04-01"}
        if status == "completed":
            params["CallDuration"] = "3"
        response = await signed_post(backend, url, urlsplit(url).path, params)
        assert response.status_code == 204, response.text

    pending: list[asyncio.Task[None]] = []
    while not stop.is_set():
        creates = [r for r in fake.requests if r["path"].endswith("/Calls.json")]
        sids = list(fake.calls)
        for request, sid in zip(creates[seen:], sids[seen:], strict=False):
            pending.append(asyncio.create_task(finish(request["form"], sid)))
            seen += 1
        await asyncio.sleep(0.05)
    await asyncio.gather(*pending)


async def test_two_workers_one_killed_call_each_contact_exactly_as_its_rules_allow(
    postgres_url: str, tmp_path: Path
) -> None:
    fake = FakeTwilio()
    backend_port = free_port()
    public = f"http://127.0.0.1:{backend_port}"
    env = {
        "DATABASE_URL": postgres_url, "RELAYX_DATA_DIR": str(tmp_path), "RELAYX_API_KEY": "test-key",
        "TELEPHONY_PROVIDER": "twilio", "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": FROM_NUMBER, "PUBLIC_BASE_URL": public, "PUBLIC_GATEWAY_URL": "wss://gw.example.test",
        "GATEWAY_INTERNAL_URL": f"http://127.0.0.1:{free_port()}", "CAMPAIGN_TICK_S": "1",
        "CAMPAIGN_UNDIALED_AFTER_S": "5", "JOBS_POLL_S": "0.2", "WORKER_HEARTBEAT_S": "0.5",
        "WORKER_STALLED_AFTER_S": "2", "LOG_LEVEL": "INFO",
    }
    log = tmp_path / "workers.log"
    workers: list[subprocess.Popen[bytes]] = []
    with serve(fake.app()) as twilio_url:
        env["TWILIO_API_BASE_URL"] = twilio_url
        settings = make_settings(tmp_path, **{k: v for k, v in env.items() if k != "LOG_LEVEL"})
        with serve(create_app(settings), backend_port) as backend_url:
            async with httpx.AsyncClient(base_url=backend_url, headers=AUTH, timeout=30) as client:
                agent = (await client.post("/agents", json={"name": "Ava", "prompt": "Remind."})).json()
                stop = asyncio.Event()
                twilio = asyncio.create_task(_play_twilio(fake, client, public, stop))
                try:
                    workers = [_start_worker(env, log), _start_worker(env, log)]
                    made = await client.post("/campaigns", json={
                        "name": "Two workers", "agent_id": agent["id"], "max_concurrency": 4,
                        "calls_per_second": 10, "start": True,
                        "retry": {"max_attempts": MAX_ATTEMPTS, "delay_s": 0, "on": ["busy"]},
                        "contacts": [{"phone_number": _number(n)} for n in range(CONTACTS)],
                    })
                    assert made.status_code == 201, made.text
                    campaign_id = made.json()["id"]
                    deadline = time.monotonic() + 90
                    while len(fake.calls) < 8:  # mid-run: some calls placed, most still to come
                        assert time.monotonic() < deadline, log.read_text()[-3000:]
                        await asyncio.sleep(0.02)
                    workers[0].send_signal(signal.SIGKILL)
                    workers[0].wait(10)
                    killed_at = len(fake.calls)
                    while (state := (await client.get(f"/campaigns/{campaign_id}")).json())["status"] != "completed":
                        assert time.monotonic() < deadline + 60, (state, log.read_text()[-3000:])
                        await asyncio.sleep(0.2)
                    contacts = (await client.get(f"/campaigns/{campaign_id}/contacts")).json()["data"]
                finally:
                    stop.set()
                    await twilio
                    for worker in workers:
                        if worker.poll() is None:
                            worker.send_signal(signal.SIGTERM)
                            try:
                                worker.wait(20)
                            except subprocess.TimeoutExpired:
                                worker.kill()

    dialed = Counter(call["to"] for call in fake.calls.values())
    expected = {_number(n): MAX_ATTEMPTS if n in BUSY else 1 for n in range(CONTACTS)}
    print(f"\n{len(fake.calls)} calls placed by two workers, one killed after {killed_at}")
    assert dict(dialed) == expected
    assert all(c["attempts"] == expected[c["phone_number"]] for c in contacts), contacts
    assert state["progress"]["completed"] == CONTACTS - len(BUSY) and state["progress"]["failed"] == len(BUSY)
    assert state["progress"]["calls_placed"] == sum(expected.values())
