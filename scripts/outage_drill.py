"""Database outage drill (a benchmark, not a test): a whole call over Media Streams with PostgreSQL
stopped (`pg_ctl stop`) for `--outage-s` seconds in its middle, then everything counted.

A throwaway PostgreSQL cluster (tests/support/postgres.py), the gateway in this process on instant
STT/LLM/TTS and the energy VAD (what is measured is where the records go, not the models), the
virtual phone speaking `--lines` caller lines. The database goes down after the second answer and
comes back `--outage-s` later; the call goes on through it. Prints what the phone heard, what the
gateway spooled and replayed, and what PostgreSQL holds afterwards: every line once, in order, the
status, the post-call job.
Usage: .venv/bin/python scripts/outage_drill.py [--outage-s 30] [--lines 14]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg

from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from relayx_cli.instant_engines import instant_engines
from shared.storage import build_storage
from tests.conftest import make_settings, media_url
from tests.support.postgres import PostgresCluster, fresh_database
from tests.support.servers import free_port, serve
from tests.support.speech import tone_ulaw
from voice_gateway.main import create_app


async def drill(outage_s: float, n_lines: int) -> int:
    cluster = PostgresCluster()
    cluster.start()
    try:
        url = fresh_database(cluster.url, "drill")
        settings = make_settings(Path(tempfile.mkdtemp(prefix="relayx-drill-")), DATABASE_URL=url,
                                 VAD_ENGINE="energy")
        storage = build_storage(settings)
        await storage.open()
        await storage.migrate()
        agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": "Hello."})
        call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
        await storage.close()

        app = create_app(settings, engines=instant_engines(settings))
        marks: dict[str, float] = {}
        background: list[asyncio.Task[Any]] = []

        async def outage() -> None:
            marks["down"] = time.monotonic()
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(cluster.start)
            marks["up"] = time.monotonic()

        turns = 0

        def on_event(kind: str, data: dict[str, Any]) -> None:
            nonlocal turns
            if kind == "turn":
                turns += 1
                if turns == 2:
                    background.append(asyncio.ensure_future(outage()))

        port = free_port()
        with serve(app, port):
            phone = VirtualPhone(media_url(settings, port, call.id), custom_parameters={"call_id": call.id},
                                 lines=[CallerLine(f"line {i}", tone_ulaw(900)) for i in range(n_lines)],
                                 reply_timeout_s=30, on_event=on_event)
            report = await phone.run()
            ended = time.monotonic()
            await asyncio.gather(*background)
            spool = app.state.spool
            while spool.depth:
                await asyncio.sleep(0.1)
            drained = time.monotonic()
            replayed = app.state.replayer.replayed

        storage = build_storage(settings)
        await storage.open()
        row, lines = await storage.get_call(call.id), await storage.list_transcripts(call.id)
        await storage.close()
        conn = await asyncpg.connect(url)
        jobs = await conn.fetchval("select count(*) from procrastinate_jobs where queueing_lock = $1",
                                   f"call_ended:{call.id}")
        await conn.close()
        speakers = [line.speaker for line in lines]
        answered = sum(1 for t in report.turns if t.first_agent_frame is not None)
        in_order = speakers == ["agent"] + ["caller", "agent"] * n_lines
        print(f"outage: database down {marks['up'] - marks['down']:.1f} s in the middle of the call "
              f"(after answer 2 of {n_lines}); call ended {ended - marks['up']:.1f} s after it came back")
        print(f"phone: {answered}/{n_lines} turns answered, {report.clears} clear(s)")
        print(f"gateway: {replayed} write(s) went through the spool and were replayed; spool empty "
              f"{drained - ended:.1f} s after the call ended")
        print(f"database: {speakers.count('caller')}/{n_lines} caller lines, {speakers.count('agent')}/{n_lines + 1} "
              f"agent lines, {len(lines) - len({line.id for line in lines})} duplicated, in order: {in_order}; "
              f"call {row.status}, duration {row.duration} s; call_ended jobs queued: {jobs}")
        whole = in_order and row.status == "completed" and row.duration is not None and jobs == 1
        print("figure: " + ("nothing lost" if whole else "SOMETHING WAS LOST"))
        return 0 if whole else 1
    finally:
        cluster.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--lines", type=int, default=14)
    args = parser.parse_args()
    return asyncio.run(drill(args.outage_s, args.lines))


if __name__ == "__main__":
    raise SystemExit(main())
