"""Queueing post-call work: what the backend and the gateway import.

Nothing here imports the job functions or what they need (analysis, webhooks): the gateway queues
jobs, it never runs them. On PostgreSQL a process queues through one procrastinate App, one pool
(`Enqueuer`); elsewhere a job is a row of `relayx_jobs`, written through storage (`SQLQueue`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any, Protocol

from shared.call_status import TERMINAL
from shared.errors import ConfigurationError
from shared.jobs import metrics as job_metrics
from shared.storage.base import Storage, utcnow

log = logging.getLogger(__name__)

TASK_CALL_STARTED = "relayx.call_started"
TASK_CALL_ENDED = "relayx.call_ended"
TASK_ANALYZE = "relayx.analyze"
TASK_DELIVER = "relayx.deliver_webhook"
TASK_CAMPAIGNS_TICK = "relayx.campaigns_tick"
# A status callback can say "completed" before the gateway has flushed the last transcript lines:
# the call-ended job it queues waits this long; the gateway's own (after its flush) runs at once.
STATUS_CALLBACK_DELAY_S = 10.0
# A defer holds a pooled connection for two short queries; four let a burst of hang-ups queue side
# by side without a service taking many of the server's connections (workers have pools of their own).
POOL_SIZE = 4
# How the queueing pool's connections show in pg_stat_activity.
APPLICATION_NAME = "relayx-enqueue"
_SCHEMA_LOCK = "select pg_advisory_xact_lock(hashtext('relayx.procrastinate_schema'))"


class Queue(Protocol):
    """Somewhere to put a job: `key` makes a second defer of the same job a no-op."""

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        ...


class SQLQueue:
    """Jobs as rows of `relayx_jobs`; `wake` lets a runner in the same process start at once."""

    def __init__(self, storage: Storage, wake: asyncio.Event | None = None) -> None:
        self.storage = storage
        self.wake = wake

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        run_at = utcnow() + timedelta(seconds=delay_s) if delay_s else None
        await self.storage.enqueue_job(task, args, dedupe_key=key, run_at=run_at)
        job_metrics.QUEUED.labels(task).inc()
        if self.wake is not None:
            self.wake.set()


# --- procrastinate (PostgreSQL) --------------------------------------------------------------------


def require_procrastinate() -> Any:
    """The procrastinate module, or a ConfigurationError that says how to install it."""
    try:
        import procrastinate
    except ImportError as exc:
        raise ConfigurationError("jobs on PostgreSQL need procrastinate: pip install 'relayx[queue]'") from exc
    return procrastinate


def procrastinate_app(dsn: str, **pool: Any) -> Any:
    """A procrastinate App on `dsn`, not yet open; `pool` is passed to its psycopg pool (sizes, kwargs).

    It defers by task name, so the queueing side needs none of the job functions registered.
    """
    procrastinate = require_procrastinate()
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool))


async def ensure_procrastinate_schema(app: Any) -> None:
    """Create procrastinate's tables if missing, on one of the open `app`'s pooled connections.

    Called once per process, when its App opens; the transaction's advisory lock keeps processes
    starting together from both creating them.
    """
    from procrastinate.schema import SchemaManager

    async with app.connector.pool.connection() as conn, conn.transaction():
        await conn.execute(_SCHEMA_LOCK)
        cursor = await conn.execute("select to_regclass('public.procrastinate_jobs') is not null")
        row = await cursor.fetchone()
        if not (row and row[0]):
            await conn.execute(SchemaManager.get_schema())
            log.info("created procrastinate's job tables")


class ProcrastinateQueue:
    """Defers onto procrastinate; `key` is its queueing lock (one waiting job per key)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        procrastinate = require_procrastinate()
        if key is not None and await self._ever_queued(key):
            # Procrastinate's queueing lock only covers waiting jobs; a job re-run after a crash must not
            # queue a second copy of work that is already running or done (as the SQLite queue's key).
            log.debug("job %s %s was queued before", task, key)
            return
        options: dict[str, Any] = {"queueing_lock": key}
        if task == TASK_ANALYZE:
            options["lock"] = f"analyze:{args['call_id']}"  # one analysis of a call at a time
        if delay_s:
            options["schedule_in"] = {"seconds": delay_s}
        try:
            await self.app.configure_task(name=task, **options).defer_async(**args)
        except procrastinate.exceptions.AlreadyEnqueued:
            log.debug("job %s %s is already queued", task, key)
            return
        job_metrics.QUEUED.labels(task).inc()

    async def _ever_queued(self, key: str) -> bool:
        row = await self.app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE queueing_lock = %(key)s", key=key
        )
        return bool(row and row["n"])


# --- what the services hold ------------------------------------------------------------------------


class Enqueuer:
    """How one process queues post-call work on its storage's database.

    On PostgreSQL it holds one procrastinate App, so one pool of at most `pool_size` connections,
    opened on the first defer (or by `open`) with procrastinate's schema checked then, once. On SQLite
    and Supabase a job is a `relayx_jobs` row written through storage; `wake`, the embedded runner's
    event when it runs in this process, starts the job at once. The service's lifespan closes it.
    """

    def __init__(self, storage: Storage, *, pool_size: int = POOL_SIZE) -> None:
        self.storage = storage
        self.pool_size = pool_size
        self.wake: asyncio.Event | None = None
        self._queue: ProcrastinateQueue | None = None
        self._opening = asyncio.Lock()  # two first defers at once must not open two pools

    @property
    def app(self) -> Any:
        """The procrastinate App this process queues through, once open (None on SQLite and Supabase)."""
        return self._queue.app if self._queue is not None else None

    async def open(self) -> None:
        """On PostgreSQL, open the pool and make sure procrastinate's tables exist; nothing elsewhere."""
        if self.storage.dsn is not None:
            await self._procrastinate(self.storage.dsn)

    async def _procrastinate(self, dsn: str) -> ProcrastinateQueue:
        async with self._opening:
            if self._queue is None:
                app = procrastinate_app(dsn, min_size=1, max_size=self.pool_size,
                                        kwargs={"application_name": APPLICATION_NAME})
                await app.open_async()
                try:
                    await ensure_procrastinate_schema(app)
                except BaseException:
                    await app.close_async()
                    raise
                self._queue = ProcrastinateQueue(app)
            return self._queue

    async def aclose(self) -> None:
        """Close the pool; `enqueuer_for` makes a new Enqueuer for a later defer."""
        if _enqueuers.get(self.storage) is self:
            del _enqueuers[self.storage]
        async with self._opening:
            queue, self._queue = self._queue, None
            if queue is not None:
                await queue.app.close_async()

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        """Queue `task`; a second defer with the same `key` is a no-op."""
        dsn = self.storage.dsn
        queue: Queue = SQLQueue(self.storage, self.wake) if dsn is None else await self._procrastinate(dsn)
        await queue.defer(task, args, key=key, delay_s=delay_s)

    async def notify_call_started(self, call_id: str) -> None:
        """The call is connected: queue call.started."""
        await self.defer(TASK_CALL_STARTED, {"call_id": call_id}, key=f"call_started:{call_id}")

    async def notify_call_ended(self, call_id: str, *, delay_s: float = 0.0) -> None:
        """The call reached a terminal status: queue call.ended and, after it, the analysis."""
        await self.defer(TASK_CALL_ENDED, {"call_id": call_id}, key=f"call_ended:{call_id}", delay_s=delay_s)

    async def request_analysis(self, call_id: str) -> str:
        """Analyse again (replacing the row), whatever was stored before; returns the request's id."""
        call = await self.storage.get_call(call_id)
        if call.status not in TERMINAL:
            raise ValueError(f"call {call_id} has not ended yet ({call.status})")
        request = uuid.uuid4().hex
        await self.defer(TASK_ANALYZE, {"call_id": call_id, "request": request, "force": True},
                         key=f"analyze:{call_id}:{request}")
        return request


# Each storage object's Enqueuer: the call sites pass the storage they already hold, and every notify
# through it shares one pool. An entry leaves when its Enqueuer closes (the service's lifespan).
_enqueuers: dict[Storage, Enqueuer] = {}


def enqueuer_for(storage: Storage) -> Enqueuer:
    """This process's Enqueuer for `storage`: made on first use, the same one until it is closed."""
    enqueuer = _enqueuers.get(storage)
    if enqueuer is None:
        enqueuer = _enqueuers[storage] = Enqueuer(storage)
    return enqueuer


async def notify_call_started(storage: Storage, call_id: str) -> None:
    """The call is connected: queue call.started."""
    await enqueuer_for(storage).notify_call_started(call_id)


async def notify_call_ended(storage: Storage, call_id: str, *, delay_s: float = 0.0) -> None:
    """The call reached a terminal status: queue call.ended and, after it, the analysis."""
    await enqueuer_for(storage).notify_call_ended(call_id, delay_s=delay_s)


async def request_analysis(storage: Storage, call_id: str) -> str:
    """POST /calls/{id}/analysis: analyse again (replacing the row), whatever was stored before."""
    return await enqueuer_for(storage).request_analysis(call_id)
