"""Nothing a call says is lost: database outages mid-call (with the gateway killed and restarted
during one), and a pacer that died before the call was closed.

The gateway runs on instant STT/LLM/TTS and the energy VAD (deterministic audio; what is tested is
where the records go), against a real PostgreSQL 15 cluster that the tests stop with `pg_ctl stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from relayx_cli.instant_engines import instant_engines
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Call, Storage, TranscriptLine
from tests.conftest import make_settings, media_url
from tests.support.postgres import PostgresCluster, fresh_database
from tests.support.servers import free_port, serve
from tests.support.speech import tone_ulaw
from voice_gateway.main import create_app
from voice_gateway.session import CallSession
from voice_gateway.spool import Spool

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: it is stopped and started in the middle of a call."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


async def _call(settings: Settings) -> Call:
    storage = build_storage(settings)
    await storage.open()
    try:
        await storage.migrate()
        agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": "Hello.",
                                              "settings": {"voicemail": {"detect": False}}})
        return await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    finally:
        await storage.close()


async def _records(settings: Settings, call_id: str) -> tuple[Call, list[TranscriptLine], int]:
    """The call row, its transcript and how many call_ended jobs were queued, read back from PostgreSQL."""
    storage = build_storage(settings)
    await storage.open()
    try:
        call, lines = await storage.get_call(call_id), await storage.list_transcripts(call_id)
    finally:
        await storage.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        jobs = await conn.fetchval("select count(*) from procrastinate_jobs where queueing_lock = $1",
                                   f"call_ended:{call_id}")
    finally:
        await conn.close()
    return call, lines, int(jobs)


async def _until(check: Any, timeout_s: float, what: str) -> None:
    """Poll `check()` until it is true; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _assert_whole_and_once(lines: list[TranscriptLine], callers: int, agents: int) -> None:
    spoken = [(line.speaker, line.text) for line in lines]
    assert len({line.id for line in lines}) == len(lines), spoken
    assert [line.speaker for line in lines].count("caller") == callers, spoken
    assert [line.speaker for line in lines].count("agent") == agents, spoken
    assert [line.timestamp for line in lines] == sorted(line.timestamp for line in lines)
    # Turn-taking order survives the outage: greeting, then caller and agent alternate.
    assert [line.speaker for line in lines][: 1 + 2 * min(callers, agents - 1)] == \
        ["agent"] + ["caller", "agent"] * min(callers, agents - 1), spoken


async def test_database_down_mid_call_loses_no_line_no_status_no_job(tmp_path: Path, cluster: PostgresCluster) -> None:
    url = fresh_database(cluster.url, "outage")
    settings = make_settings(tmp_path, DATABASE_URL=url, VAD_ENGINE="energy", SPOOL_RETRY_S="0.2")
    call = await _call(settings)
    app = create_app(settings, engines=instant_engines(settings))
    outage: list[asyncio.Task[None]] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind != "turn":
            return
        turns = len(outage) + 1
        if turns == 2:  # the database goes down after the second answer...
            outage.append(asyncio.ensure_future(asyncio.to_thread(cluster.stop)))
        elif turns == 5:  # ...and comes back three turns later
            outage.append(asyncio.ensure_future(asyncio.to_thread(cluster.start)))
        else:
            outage.append(asyncio.ensure_future(asyncio.sleep(0)))

    port = free_port()
    lines = [CallerLine(f"line {i}", tone_ulaw(700)) for i in range(7)]
    with serve(app, port):
        phone = VirtualPhone(media_url(settings, port, call.id), custom_parameters={"call_id": call.id},
                             lines=lines, reply_timeout_s=20, on_event=on_event)
        report = await asyncio.wait_for(phone.run(), 120)
        await asyncio.gather(*outage)
        spool: Spool = app.state.spool

        async def drained() -> bool:
            return spool.depth == 0

        await _until(drained, 60, "the spool to drain into PostgreSQL")
        replayed = app.state.replayer.replayed
    assert len(report.turns) == 7 and all(t.first_agent_frame is not None for t in report.turns)
    # 7 caller and 8 agent lines, the status and two jobs: some went straight in, the outage's waited.
    assert 0 < replayed < 18, f"{replayed} writes went through the spool: the outage did not split the call"
    call_row, transcript, ended_jobs = await _records(settings, call.id)
    _assert_whole_and_once(transcript, callers=7, agents=8)
    assert call_row.status == "completed" and call_row.duration is not None and call_row.ended_at is not None
    assert ended_jobs == 1


def _start_gateway(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "RELAYX_DATA_DIR": str(settings.data_dir),
           "RELAYX_API_KEY": settings.api_key, "VAD_ENGINE": "energy", "SPOOL_RETRY_S": "0.2",
           "GATEWAY_PORT": str(port)}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "relayx_cli.instant_engines"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def _health(port: int) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"http://127.0.0.1:{port}/health")
    except httpx.HTTPError:
        return None
    return dict(response.json())


async def test_spool_survives_the_gateway_killed_during_the_outage(tmp_path: Path, cluster: PostgresCluster) -> None:
    url = fresh_database(cluster.url, "killed")
    settings = make_settings(tmp_path, DATABASE_URL=url)
    call = await _call(settings)
    port = free_port()
    gateway = _start_gateway(settings, port, tmp_path / "gateway.log")
    try:
        await _until(lambda: _ok(port), 60, "the gateway to start")
        turns: list[int] = []
        killed = asyncio.Event()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind != "turn":
                return
            turns.append(1)
            if len(turns) == 2:
                cluster.stop()  # blocking on purpose: the next line must reach a database that is down
            elif len(turns) == 4:
                gateway.send_signal(signal.SIGKILL)  # mid-call, with turns 3 and 4 only in the spool
                killed.set()

        lines = [CallerLine(f"line {i}", tone_ulaw(700)) for i in range(6)]
        phone = VirtualPhone(media_url(settings, port, call.id), custom_parameters={"call_id": call.id},
                             lines=lines, reply_timeout_s=20, on_event=on_event)
        with contextlib.suppress(Exception):  # the socket dies with the gateway
            await asyncio.wait_for(phone.run(), 120)
        assert killed.is_set(), "the call ended before the gateway could be killed"
        gateway.wait(30)

        gateway = _start_gateway(settings, port, tmp_path / "gateway.log")  # the database is still down

        async def waiting() -> bool:
            health = await _health(port)
            return health is not None and health["spool"]["pending"] > 0

        await _until(waiting, 60, "the restarted gateway to report its spool")
        await asyncio.to_thread(cluster.start)

        async def drained() -> bool:
            health = await _health(port)
            return health is not None and health["status"] == "ok" and health["spool"]["pending"] == 0

        await _until(drained, 60, "the restarted gateway to replay its spool")
    finally:
        gateway.kill()
        gateway.wait(30)
    _, transcript, _ = await _records(settings, call.id)
    # Four turns were answered and heard in full before the kill (the phone reports a turn once the
    # answer has played); lines 3 and 4 and their answers only ever reached the spool.
    _assert_whole_and_once(transcript, callers=4, agents=5)


async def _ok(port: int) -> bool:
    health = await _health(port)
    return health is not None and health["status"] == "ok"


async def test_a_dead_pacer_does_not_stop_close_from_writing_every_line_and_the_status(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, VAD_ENGINE="energy")
    storage: Storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    spool = Spool(settings.spool_path)
    await spool.open()
    agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.",
                                        "greeting": "One, two, three. Four, five, six.",
                                        "settings": {"voicemail": {"detect": False}}})
    call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    sent: list[str] = []
    session: CallSession | None = None

    async def send(text: str) -> None:
        if len(sent) >= 60:
            raise ConnectionResetError("the caller's socket is gone")  # the pacer dies on this
        sent.append(text)
        if '"mark"' in text and session is not None:  # Twilio echoes marks once played
            session.on_mark(text.split('"name":"')[1].split('"')[0])

    session = CallSession(call=call, agent=agent, stream_sid="MZ1", send=send, storage=storage, spool=spool,
                          engines=instant_engines(settings))
    await session.start()
    pacer = session._pacer
    assert pacer is not None

    async def pacer_died() -> bool:
        return pacer.done()

    await _until(pacer_died, 20, "the pacer to die")
    assert isinstance(pacer.exception(), ConnectionResetError)
    await session.close()

    transcript = await storage.list_transcripts(call.id)
    row = await storage.get_call(call.id)
    jobs = []
    while (job := await storage.claim_job()) is not None:  # the embedded queue's rows, oldest first
        jobs.append((job.task, job.args.get("call_id")))
    await storage.close()
    await spool.close()
    greeting = [line for line in transcript if line.speaker == "agent"]
    assert len(greeting) == 1 and greeting[0].text, transcript
    assert "One, two, three. Four, five, six.".startswith(greeting[0].text.split("…")[0])  # the part played
    assert greeting[0].metrics.get("interrupted") is True  # what was heard, cut where the line died
    assert row.status == "completed" and row.duration is not None
    assert ("relayx.call_ended", call.id) in jobs
