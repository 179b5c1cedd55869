"""The gateway's durable spool: storage writes the database could not take, kept until it takes them.

A call goes on while its database is down (a restart, a failover, a network blip): every transcript
line, the final status and the post-call job the gateway could not write land here instead, in a
local SQLite file in WAL mode with `synchronous=FULL` (each append is fsynced before it returns), so
neither the outage nor a crash or restart of the gateway loses them. `SpoolReplayer` writes them to
the database in the order they were spooled as soon as it answers again (and at start-up); every
write is idempotent (lines carry their id, status moves only forward, jobs have keys), so replaying
an entry twice after a crash stores it once.

While the spool holds anything for a call, that call's later writes queue behind it (`holds`):
the post-call analysis must not start before the lines it reads are in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from shared.errors import NotFound
from shared.jobs import enqueue
from shared.storage.base import Storage

log = logging.getLogger(__name__)

EntryKind = Literal["line", "status", "call_started", "call_ended"]
# An entry the database keeps refusing while it answers pings is set aside after this many tries,
# so one bad entry cannot hold back every call's writes behind it.
MAX_ATTEMPTS = 10
MAX_RETRY_S = 5.0

_SCHEMA = """
create table if not exists spool (
  seq integer primary key autoincrement,
  call_id text not null,
  kind text not null,
  payload text not null,
  created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  attempts integer not null default 0,
  last_error text,
  dead integer not null default 0
)
"""


@dataclass(frozen=True)
class Entry:
    """One spooled write: what to do (`kind`), for which call, with which values."""

    seq: int
    call_id: str
    kind: EntryKind
    payload: dict[str, Any]
    attempts: int = 0


class Spool:
    """An append-only, fsynced outbox in a SQLite file; one per gateway process (sharing it is safe).

    Every SQLite call runs on one private thread, never on the event loop: an fsync can take
    milliseconds, and a 20 ms audio frame must not wait for it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._pending: Counter[str] = Counter()  # entries waiting, per call
        self._dead = 0
        self.wake = asyncio.Event()
        """Set when something is appended: the replayer tries at once instead of at its next period."""

    # --- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("pragma journal_mode=wal")
        db.execute("pragma synchronous=full")  # the commit is on disk when append returns
        db.execute("pragma busy_timeout=5000")
        db.execute(_SCHEMA)
        self._db = db
        for call_id, count in db.execute("select call_id, count(*) from spool where dead = 0 group by call_id"):
            self._pending[call_id] = count
        self._dead = db.execute("select count(*) from spool where dead = 1").fetchone()[0]
        if self.depth:
            log.warning("spool %s: %d write(s) from before the last stop wait for the database", self.path,
                        self.depth)
            self.wake.set()

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    # --- what the calls use ------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Writes waiting for the database."""
        return sum(self._pending.values())

    @property
    def dead(self) -> int:
        """Writes the database refused for good (kept in the file, logged, for an operator)."""
        return self._dead

    def holds(self, call_id: str) -> bool:
        """Whether writes of this call wait here (its next writes must queue behind them)."""
        return self._pending[call_id] > 0

    async def append(self, call_id: str, kind: EntryKind, payload: dict[str, Any]) -> None:
        """Keep one write durably (on disk when this returns) and wake the replayer."""
        text = json.dumps(payload)
        await self._run(self._insert, call_id, kind, text)
        self._pending[call_id] += 1
        self.wake.set()

    def _insert(self, call_id: str, kind: str, text: str) -> None:
        self._require().execute("insert into spool (call_id, kind, payload) values (?, ?, ?)", (call_id, kind, text))

    # --- what the replayer uses --------------------------------------------------------------------
    async def oldest(self, limit: int = 100) -> list[Entry]:
        rows = await self._run(self._select, limit)
        return [Entry(seq, call_id, kind, json.loads(payload), attempts)
                for seq, call_id, kind, payload, attempts in rows]

    def _select(self, limit: int) -> list[tuple[Any, ...]]:
        return self._require().execute(
            "select seq, call_id, kind, payload, attempts from spool where dead = 0 order by seq limit ?", (limit,)
        ).fetchall()

    async def done(self, entry: Entry) -> None:
        await self._run(self._require().execute, "delete from spool where seq = ?", (entry.seq,))
        self._forget(entry.call_id)

    async def failed(self, entry: Entry, error: str, *, give_up: bool) -> None:
        """Count a failed try; `give_up` sets the entry aside (it stays in the file, marked dead)."""
        await self._run(
            self._require().execute,
            "update spool set attempts = attempts + 1, last_error = ?, dead = ? where seq = ?",
            (error[:500], int(give_up), entry.seq),
        )
        if give_up:
            self._dead += 1
            self._forget(entry.call_id)

    def _forget(self, call_id: str) -> None:
        self._pending[call_id] -= 1
        if self._pending[call_id] <= 0:
            del self._pending[call_id]

    # --- plumbing ----------------------------------------------------------------------------------
    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


async def apply(storage: Storage, entry: Entry) -> None:
    """Write one spooled entry to the database (idempotent: a second apply changes nothing)."""
    p = entry.payload
    if entry.kind == "line":
        await storage.add_transcript(
            entry.call_id, p["speaker"], p["text"], timestamp=datetime.fromisoformat(p["timestamp"]),
            metrics=p["metrics"], line_id=p["line_id"],
        )
    elif entry.kind == "status":
        await storage.apply_call_status(
            entry.call_id, p["status"], duration=p.get("duration"), at=datetime.fromisoformat(p["at"])
        )
    elif entry.kind == "call_started":
        await enqueue.notify_call_started(storage, entry.call_id)
    elif entry.kind == "call_ended":
        await enqueue.notify_call_ended(storage, entry.call_id)
    else:
        raise ValueError(f"unknown spool entry kind {entry.kind!r}")


class SpoolReplayer:
    """Drains the spool into the database, oldest first, whenever it answers; runs for the process."""

    def __init__(self, spool: Spool, storage: Storage, *, retry_s: float) -> None:
        self.spool = spool
        self.storage = storage
        self.retry_s = retry_s
        self.replayed = 0

    async def run(self) -> None:
        """Until cancelled: drain, then wait for an append or, while entries wait, for the next try."""
        delay = self.retry_s
        while True:
            if self.spool.depth:
                drained = await self.drain()
                delay = self.retry_s if drained else min(delay * 2, MAX_RETRY_S)
            self.spool.wake.clear()
            if self.spool.depth:
                # Entries are waiting for the database: try again after a backoff, or at once on news.
                await _wait(self.spool.wake, delay)
            else:
                await self.spool.wake.wait()

    async def drain(self) -> bool:
        """Write what the spool holds, in order; False when the database failed (stop, retry later)."""
        while entries := await self.spool.oldest():
            for entry in entries:
                try:
                    await apply(self.storage, entry)
                except NotFound as exc:  # the call row is gone: nothing will ever take this write
                    log.error("spool: %s of call %s set aside: %s", entry.kind, entry.call_id, exc)
                    await self.spool.failed(entry, str(exc), give_up=True)
                except Exception as exc:  # noqa: BLE001 - the database is (still) down, or refuses this entry
                    await self._failed(entry, exc)
                    return False
                else:
                    await self.spool.done(entry)
                    self.replayed += 1
        log.info("spool: every waiting write is in the database (%d replayed so far)", self.replayed)
        return True

    async def _failed(self, entry: Entry, exc: Exception) -> None:
        reachable = await self._reachable()
        give_up = reachable and entry.attempts + 1 >= MAX_ATTEMPTS
        await self.spool.failed(entry, f"{type(exc).__name__}: {exc}", give_up=give_up)
        if give_up:
            log.error("spool: the database keeps refusing %s of call %s: set aside (%s)", entry.kind,
                      entry.call_id, exc)
        else:
            log.warning("spool: %d write(s) wait for the database (%s: %s)", self.spool.depth,
                        type(exc).__name__, exc)

    async def _reachable(self) -> bool:
        try:
            await self.storage.ping()
        except Exception:  # noqa: BLE001 - any failure means not reachable
            return False
        return True


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass
