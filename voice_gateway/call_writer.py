"""Everything a call writes to the database, in the order it happened, and never lost.

One writer task per call takes the call's transcript lines, then its final status and its post-call
job, and writes each to the database; when the database does not take a write (down, restarting,
too slow), the write goes to the gateway's durable spool instead and the replayer applies it when the
database is back. While the spool holds any write of the call, the call's later writes queue
behind it there, so the order holds (the analysis never starts before the last line is in).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from shared.storage.base import Speaker, Storage, new_id, utcnow
from voice_gateway.spool import Entry, EntryKind, Spool, apply

log = logging.getLogger(__name__)

# A write the database has not acknowledged by then is spooled instead (and replayed: idempotent).
# Short, so a hung connection never holds a call's lines in memory for long.
WRITE_TIMEOUT_S = 2.0
# Appending to the spool is a local fsync; it fails only on a full or broken disk. Retried with a
# bound; past it the write is logged in full (for an operator) and the call goes on.
SPOOL_RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0)


class CallWriter:
    """Writes one call's records in order: to the database, else to the spool."""

    def __init__(self, storage: Storage, call_id: str, spool: Spool) -> None:
        self._storage = storage
        self._call_id = call_id
        self._spool = spool
        self._queue: asyncio.Queue[tuple[EntryKind, dict[str, Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.spooled = 0
        """Writes of this call that went to the spool (the database did not take them in time)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer-{self._call_id}")

    def add(self, speaker: Speaker, text: str, *, metrics: dict[str, Any] | None = None,
            timestamp: datetime | None = None) -> None:
        """Queue a transcript line; stamped now (or at `timestamp`) and given its id, so order and
        identity survive retries and replays."""
        self._put("line", {"speaker": speaker, "text": text, "timestamp": (timestamp or utcnow()).isoformat(),
                           "metrics": metrics or {}, "line_id": new_id()})

    def status(self, status: str, *, duration: int | None = None) -> None:
        """Queue a status move (after the lines queued so far), stamped now."""
        self._put("status", {"status": status, "duration": duration, "at": utcnow().isoformat()})

    def job(self, kind: EntryKind) -> None:
        """Queue post-call work (`call_started`, `call_ended`) after what is queued so far."""
        self._put(kind, {})

    async def close(self) -> None:
        """Wait until everything queued is in the database or in the spool."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task

    def _put(self, kind: EntryKind, payload: dict[str, Any]) -> None:
        """Payloads are JSON values already: written directly or spooled and replayed, one shape."""
        self._queue.put_nowait((kind, payload))

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, payload = item
            try:
                await self._write(kind, payload)
            except Exception:  # never ends the writer: the next records still get their chance
                log.exception("call %s: %s could not be written or spooled: %r", self._call_id, kind, payload)

    async def _write(self, kind: EntryKind, payload: dict[str, Any]) -> None:
        if not self._spool.holds(self._call_id):
            try:
                await asyncio.wait_for(apply(self._storage, Entry(0, self._call_id, kind, payload)), WRITE_TIMEOUT_S)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: the spool keeps it, the replayer retries it
                log.warning("call %s: %s not written (%s: %s): spooled", self._call_id, kind,
                            type(exc).__name__, exc)
        await self._spool_it(kind, payload)

    async def _spool_it(self, kind: EntryKind, payload: dict[str, Any]) -> None:
        for delay in (*SPOOL_RETRY_DELAYS_S, None):
            try:
                await self._spool.append(self._call_id, kind, payload)
                self.spooled += 1
                return
            except Exception as exc:  # noqa: BLE001 - retried with a bound, then logged in full
                if delay is None:
                    log.error("call %s: %s LOST (database and spool both failed: %s): %r", self._call_id, kind,
                              exc, payload)
                    return
                log.warning("call %s: spooling %s failed (%s), retrying", self._call_id, kind, exc)
                await asyncio.sleep(delay)
