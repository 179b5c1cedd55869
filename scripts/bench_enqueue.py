"""What queueing post-call work costs on PostgreSQL (a benchmark, not a test).

Starts a throwaway PostgreSQL (tests/support/postgres.py) and queues call.started and call.ended for
N calls, `--concurrent` of them ending together, two ways:

- now: through the process's one `Enqueuer` (one procrastinate App, one pool, schema checked once);
- before: what every notify did until this change: a connection to check procrastinate's schema
  under an advisory lock, then a new App with its own one-connection pool, opened and closed.

Counts the server sessions each way opened (pg_stat_database.sessions of its own database, read once
its connections have gone), the psycopg pools created, and the milliseconds per notify.
Usage: .venv/bin/python scripts/bench_enqueue.py [--calls 50] [--concurrent 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg
import psycopg_pool
from procrastinate.schema import SchemaManager

from shared.jobs import enqueue
from shared.storage.postgres import PostgresStorage
from tests.support.postgres import fresh_database, postgres_cluster

Notify = Callable[[str, str, dict[str, Any], str], Awaitable[None]]


@dataclass
class Figures:
    """One way of queueing, measured."""

    notifies: int
    sessions: int
    pools: int
    per_notify_ms: list[float]
    open_ms: float = 0.0

    def line(self) -> str:
        cuts = statistics.quantiles(self.per_notify_ms, n=20)
        opened = f", pool opened once in {self.open_ms:.0f} ms" if self.open_ms else ""
        return (f"{self.sessions} server connections, {self.pools} pool(s), "
                f"{statistics.median(self.per_notify_ms):.1f} ms per notify (p95 {cuts[18]:.1f}){opened}")


class _PoolCounter:
    """Counts psycopg pools as they are made (procrastinate makes one per App it opens)."""

    def __init__(self) -> None:
        self.made = 0
        self._init = psycopg_pool.AsyncConnectionPool.__init__

    def __enter__(self) -> Self:
        original = self._init

        def counting_init(pool: Any, *args: Any, **kwargs: Any) -> None:
            self.made += 1
            original(pool, *args, **kwargs)

        psycopg_pool.AsyncConnectionPool.__init__ = counting_init  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg_pool.AsyncConnectionPool.__init__ = self._init  # type: ignore[method-assign]


async def _sessions(admin: asyncpg.Connection, database: str) -> int:
    """Sessions ever opened on `database`, read once none is open (a session's count is final at its end)."""
    deadline = time.monotonic() + 30
    while await admin.fetchval("select count(*) from pg_stat_activity where datname = $1", database):
        if time.monotonic() > deadline:
            raise RuntimeError(f"connections to {database} stayed open")
        await asyncio.sleep(0.05)  # polling the server's view with a deadline
    await admin.execute("select pg_stat_clear_snapshot()")
    return int(await admin.fetchval("select sessions from pg_stat_database where datname = $1", database))


async def _prepare(admin_url: str, name: str) -> str:
    """A fresh database with procrastinate's tables already there (both ways then only check them)."""
    url = await asyncio.to_thread(fresh_database, admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SchemaManager.get_schema())
    finally:
        await conn.close()
    return url


async def _run(notify: Notify, calls: int, concurrent: int) -> list[float]:
    """call.started then call.ended for each call, `concurrent` calls at a time; each notify's ms."""
    timings: list[float] = []

    async def timed(task: str, call_id: str, key: str) -> None:
        start = time.perf_counter()
        await notify(task, call_id, {"call_id": call_id}, key)
        timings.append((time.perf_counter() - start) * 1000)

    ids = [str(uuid.uuid4()) for _ in range(calls)]
    for first in range(0, calls, concurrent):
        batch = ids[first:first + concurrent]
        await asyncio.gather(*(timed(enqueue.TASK_CALL_STARTED, c, f"call_started:{c}") for c in batch))
        await asyncio.gather(*(timed(enqueue.TASK_CALL_ENDED, c, f"call_ended:{c}") for c in batch))
    return timings


async def measure_now(admin: asyncpg.Connection, url: str, calls: int, concurrent: int) -> Figures:
    database = url.rsplit("/", 1)[1]
    before = await _sessions(admin, database)
    storage = PostgresStorage(url)  # queueing on PostgreSQL reads only its DSN: no need to open it
    enqueuer = enqueue.enqueuer_for(storage)
    with _PoolCounter() as pools:
        start = time.perf_counter()
        await enqueuer.open()  # what the backend's lifespan does (the gateway opens it on its first call)
        open_ms = (time.perf_counter() - start) * 1000

        async def notify(task: str, call_id: str, args: dict[str, Any], key: str) -> None:
            await enqueuer.defer(task, args, key=key)

        try:
            timings = await _run(notify, calls, concurrent)
        finally:
            await enqueuer.aclose()
    return Figures(len(timings), await _sessions(admin, database) - before, pools.made, timings, open_ms)


async def _old_schema_check(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select pg_advisory_lock(hashtext('relayx.procrastinate_schema'))")
        try:
            await conn.fetchval("select to_regclass('public.procrastinate_jobs') is not null")
        finally:
            await conn.execute("select pg_advisory_unlock(hashtext('relayx.procrastinate_schema'))")
    finally:
        await conn.close()


async def measure_before(admin: asyncpg.Connection, url: str, calls: int, concurrent: int) -> Figures:
    database = url.rsplit("/", 1)[1]
    before = await _sessions(admin, database)

    async def notify(task: str, call_id: str, args: dict[str, Any], key: str) -> None:
        await _old_schema_check(url)
        app = enqueue.procrastinate_app(url, min_size=1, max_size=1)
        async with app.open_async():
            await enqueue.ProcrastinateQueue(app).defer(task, args, key=key)

    with _PoolCounter() as pools:
        timings = await _run(notify, calls, concurrent)
    return Figures(len(timings), await _sessions(admin, database) - before, pools.made, timings)


async def main(calls: int, concurrent: int) -> None:
    with postgres_cluster() as admin_url:
        now_url = await _prepare(admin_url, "bench_enqueue_now")
        before_url = await _prepare(admin_url, "bench_enqueue_before")
        admin = await asyncpg.connect(admin_url)
        try:
            now = await measure_now(admin, now_url, calls, concurrent)
            before = await measure_before(admin, before_url, calls, concurrent)
        finally:
            await admin.close()
    print(f"queuing post-call work on PostgreSQL, {calls} calls ({now.notifies} notifies, "
          f"{concurrent} calls at once):")
    print(f"  now:    {now.line()}")
    print(f"  before: {before.line()}")
    print(f"figure: {now.notifies} notifies cost {now.sessions} connection(s) from {now.pools} pool "
          f"({statistics.median(now.per_notify_ms):.1f} ms each) instead of {before.sessions} connections "
          f"and {before.pools} pools ({statistics.median(before.per_notify_ms):.1f} ms each)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=10)
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.concurrent))
