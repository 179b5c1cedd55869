"""voice_gateway.spool: writes survive a reopen, replay in order once the database answers, and one
write the database refuses for good is set aside instead of holding back the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared.errors import NotFound, StorageError
from voice_gateway.spool import Spool, SpoolReplayer


class FlakyStorage:
    """The two writes the spool replays, recorded; `down` makes every call fail like a stopped server."""

    def __init__(self) -> None:
        self.down = True
        self.lines: list[str] = []
        self.statuses: list[str] = []
        self.missing_calls: set[str] = set()

    async def ping(self) -> None:
        if self.down:
            raise StorageError("database unavailable: connection refused")

    async def add_transcript(self, call_id: str, speaker: str, text: str, **_: Any) -> None:
        await self.ping()
        if call_id in self.missing_calls:
            raise NotFound(f"call {call_id}")
        self.lines.append(text)

    async def apply_call_status(self, call_id: str, status: str, **_: Any) -> None:
        await self.ping()
        self.statuses.append(f"{call_id}:{status}")


def _line(text: str) -> dict[str, Any]:
    return {"speaker": "caller", "text": text, "timestamp": "2026-11-29T10:00:00+00:00", "metrics": {},
            "line_id": text}


async def test_spooled_writes_survive_a_reopen_and_replay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    for text in ("one", "two", "three"):
        await spool.append("call-a", "line", _line(text))
    await spool.append("call-a", "status", {"status": "completed", "duration": 12, "at": "2026-11-29T10:01:00+00:00"})
    assert spool.holds("call-a") and not spool.holds("call-b") and spool.depth == 4
    await spool.close()  # the gateway stops (or dies) during the outage

    reopened = Spool(tmp_path / "spool.db")
    await reopened.open()
    assert reopened.depth == 4 and reopened.holds("call-a") and reopened.wake.is_set()
    storage = FlakyStorage()
    replayer = SpoolReplayer(reopened, storage, retry_s=0.01)  # type: ignore[arg-type]
    assert await replayer.drain() is False and storage.lines == []  # still down: nothing lost, nothing done
    assert reopened.depth == 4
    storage.down = False
    assert await replayer.drain() is True
    assert storage.lines == ["one", "two", "three"] and storage.statuses == ["call-a:completed"]
    assert reopened.depth == 0 and not reopened.holds("call-a")
    await reopened.close()


async def test_a_write_for_a_vanished_call_is_set_aside_and_the_rest_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    await spool.append("gone", "line", _line("orphan"))
    await spool.append("call-a", "line", _line("kept"))
    storage = FlakyStorage()
    storage.down = False
    storage.missing_calls.add("gone")
    assert await SpoolReplayer(spool, storage, retry_s=0.01).drain() is True  # type: ignore[arg-type]
    assert storage.lines == ["kept"] and spool.depth == 0 and spool.dead == 1
    await spool.close()


async def test_the_replayer_wakes_on_an_append_and_drains(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    storage = FlakyStorage()
    storage.down = False
    task = asyncio.create_task(SpoolReplayer(spool, storage, retry_s=0.01).run())  # type: ignore[arg-type]
    await spool.append("call-a", "line", _line("late"))
    async with asyncio.timeout(10):
        while spool.depth:
            await asyncio.sleep(0.01)
    task.cancel()
    assert storage.lines == ["late"]
    await spool.close()
