"""Transcript lines are written in order, retried on failure, and never silently dropped."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.errors import StorageError
from shared.storage.base import Speaker, Storage, new_id, utcnow

log = logging.getLogger(__name__)

# Bounded retry: 6 attempts over ~6 s rides out a database restart or a lock timeout; past that the
# line is logged in full (so an operator can recover it) and the call goes on.
RETRY_DELAYS_S = (0.1, 0.3, 0.6, 1.2, 2.0, 2.0)


@dataclass
class _Line:
    speaker: Speaker
    text: str
    timestamp: datetime
    metrics: dict[str, Any]
    line_id: str = field(default_factory=new_id)


class TranscriptWriter:
    """One writer task per call: lines land in the order they were spoken."""

    def __init__(self, storage: Storage, call_id: str) -> None:
        self._storage = storage
        self._call_id = call_id
        self._queue: asyncio.Queue[_Line | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"transcripts-{self._call_id}")

    def add(self, speaker: Speaker, text: str, *, metrics: dict[str, Any] | None = None,
            timestamp: datetime | None = None) -> None:
        """Queue a line; it is stamped now (or at `timestamp`) so order survives retries."""
        self._queue.put_nowait(_Line(speaker, text, timestamp or utcnow(), metrics or {}))

    async def close(self) -> None:
        """Wait until every queued line is written (or has exhausted its retries)."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task

    async def _run(self) -> None:
        while (line := await self._queue.get()) is not None:
            await self._write(line)

    async def _write(self, line: _Line) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
            try:
                await self._storage.add_transcript(
                    self._call_id, line.speaker, line.text,
                    timestamp=line.timestamp, metrics=line.metrics, line_id=line.line_id,
                )
                return
            except (StorageError, OSError) as exc:
                if delay is None:
                    log.error("call %s: transcript line LOST after %d attempts (%s): %s: %r",
                              self._call_id, attempt, exc, line.speaker, line.text)
                    return
                log.warning("call %s: transcript write failed (attempt %d, retrying): %s",
                            self._call_id, attempt, exc)
                await asyncio.sleep(delay)
