"""Post-call jobs on PostgreSQL with procrastinate, the worker in its own process (the real
embedded model does the analysis): a worker killed mid-analysis and a second one started leave
exactly one analysis row; a receiver answering 500 twice gets the event on the third attempt.
Queueing them costs a pooled connection per notify, not a new pool."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from backend.main import create_app
from shared import jobs, webhooks
from shared.jobs import enqueue
from shared.storage import build_storage
from tests.conftest import make_settings
from tests.support.servers import serve
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_worker_test"


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    code = ("import asyncio; from shared.settings import Settings; from shared.jobs.runners import run_worker;"
            " asyncio.run(run_worker(Settings(_env_file=None)))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _until(predicate, deadline_s: float, what: str):  # type: ignore[no-untyped-def]
    """Poll `predicate` (async) with a deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.models
async def test_killed_worker_resumes_with_one_row_and_webhook_retries(postgres_url: str, tmp_path: Path) -> None:
    receiver = WebhookReceiver(fail_first=2)
    env = {
        "DATABASE_URL": postgres_url, "RELAYX_DATA_DIR": str(tmp_path), "RELAYX_API_KEY": "test-key",
        "MODEL_CACHE_DIR": str(REPO / "data" / "models"), "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_S": "0.2", "JOBS_POLL_S": "0.1",
        "WORKER_HEARTBEAT_S": "0.5", "WORKER_STALLED_AFTER_S": "2", "LOG_LEVEL": "INFO",
    }
    settings = make_settings(tmp_path, **{k: v for k, v in env.items() if k != "LOG_LEVEL"})
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    db = await asyncpg.connect(postgres_url)
    workers: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "workers.log"
    try:
        with serve(receiver.app()) as hook:
            agent = await storage.create_agent({
                "name": "Ava", "prompt": "You call patients of Bright Smile Dental to move their cleaning.",
                "settings": {"webhook_url": f"{hook}/hook",
                             "analysis": {"schema": {"type": "object", "properties": {
                                 "new_day": {"type": "string"}, "has_insurance": {"type": "boolean"}}}}},
            })
            call = await storage.create_call(agent_id=agent.id, to_number="+14155550100", from_number=None,
                                             metadata={})
            for speaker, text in [("agent", "Hi, this is Ava from Bright Smile Dental about your cleaning."),
                                  ("caller", "Can we move it to Thursday? And yes, I have insurance."),
                                  ("agent", "Done, Thursday it is. Goodbye!")]:
                await storage.add_transcript(call.id, speaker, text)  # type: ignore[arg-type]
            await storage.apply_call_status(call.id, "completed", duration=20)
            await jobs.notify_call_ended(storage, call.id)

            workers.append(_start_worker(env, log))

            async def analyzing() -> bool:
                return bool(await db.fetchval(
                    "select count(*) from procrastinate_jobs where task_name = $1 and status = 'doing'",
                    jobs.TASK_ANALYZE))

            await _until(analyzing, 60, "the analysis job to start")
            workers[0].send_signal(signal.SIGKILL)  # a crash in the middle of the job
            workers[0].wait(10)
            assert await db.fetchval("select count(*) from call_analysis where call_id = $1", call.id) == 0

            workers.append(_start_worker(env, log))

            async def analyzed_delivered() -> list[webhooks.WebhookEvent] | None:
                events = await storage.list_webhook_events(call.id)
                done = [e for e in events if e.type == "call.analyzed" and e.status == "delivered"]
                return events if done else None

            events = await _until(analyzed_delivered, 300, "call.analyzed to be delivered")
            app = create_app(settings)
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://backend") as client:
                listed = (await client.get(f"/calls/{call.id}/webhooks",
                                           headers={"Authorization": "Bearer test-key"})).json()
        rows = await db.fetch("select status, outcome, data from call_analysis where call_id = $1", call.id)
        analyze_jobs = await db.fetch("select status from procrastinate_jobs where task_name = $1",
                                      jobs.TASK_ANALYZE)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    worker.kill()
        await db.close()
        await jobs.enqueuer_for(storage).aclose()
        await storage.close()

    assert len(rows) == 1, rows
    assert rows[0]["status"] in ("completed", "failed")
    assert [j["status"] for j in analyze_jobs] == ["succeeded"], log.read_text()[-3000:]
    analyzed = next(e for e in events if e.type == "call.analyzed")
    assert [a.status_code for a in analyzed.attempt_log] == [500, 500, 200]
    listed_analyzed = next(e for e in listed if e["type"] == "call.analyzed")
    assert [a["attempt"] for a in listed_analyzed["attempt_log"]] == [1, 2, 3]
    assert listed_analyzed["status"] == "delivered" and listed_analyzed["attempts"] == 3
    got = [r for r in receiver.received if r.headers["relayx-event-id"] == analyzed.id]
    assert [r.status for r in got] == [500, 500, 200]
    assert all(webhooks.verify(SECRET, r.body, r.headers["relayx-signature"]) for r in receiver.received)
    assert {e.type for e in events} == {"call.ended", "call.analyzed"}
    assert all(e.status == "delivered" for e in events)


async def test_notifies_share_one_app_and_pool(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    checks: list[Any] = []
    make_app, check_schema = enqueue.procrastinate_app, enqueue.ensure_procrastinate_schema

    def counting_app(dsn: str, **pool: Any) -> Any:
        made.append(make_app(dsn, **pool))
        return made[-1]

    async def counting_check(app: Any) -> None:
        checks.append(app)
        await check_schema(app)

    monkeypatch.setattr(enqueue, "procrastinate_app", counting_app)
    monkeypatch.setattr(enqueue, "ensure_procrastinate_schema", counting_check)
    storage = build_storage(make_settings(tmp_path, DATABASE_URL=postgres_url))
    await storage.open()
    db = await asyncpg.connect(postgres_url)
    enqueuer = jobs.enqueuer_for(storage)
    calls = [str(uuid.uuid4()) for _ in range(20)]
    try:
        # Twenty calls end at once before anything is open: their defers race to open the pool.
        await asyncio.gather(*(jobs.notify_call_ended(storage, call_id) for call_id in calls))
        app = enqueuer.app
        for call_id in calls:
            await jobs.notify_call_started(storage, call_id)
        still_one = jobs.enqueuer_for(storage) is enqueuer and enqueuer.app is app
        connections = await db.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database() and application_name = $1",
            enqueue.APPLICATION_NAME,
        )
        queued = await db.fetch("select task_name, count(*) as n from procrastinate_jobs group by task_name")
    finally:
        await enqueuer.aclose()
        await db.close()
        await storage.close()

    assert app is not None and made == [app] and still_one
    assert checks == [app]  # procrastinate's schema checked once, on that App's pool
    assert enqueuer.app is None  # closed with the service
    assert 1 <= connections <= enqueue.POOL_SIZE
    assert {r["task_name"]: r["n"] for r in queued} == {jobs.TASK_CALL_ENDED: 20, jobs.TASK_CALL_STARTED: 20}
