"""One storage suite, run against SQLite and a real PostgreSQL cluster."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.agent_config import AgentSettings, LLMConfig
from shared.errors import NotFound, StorageError
from shared.storage.base import Storage

pytestmark = pytest.mark.postgres


async def _agent(storage: Storage) -> str:
    agent = await storage.create_agent(
        {"name": "Ava", "prompt": "You book dentist appointments.", "llm": {"temperature": 0.3}}
    )
    return agent.id


async def test_agent_round_trip_keeps_json_fields(storage: Storage) -> None:
    agent = await storage.create_agent(
        {"name": "Ava", "prompt": "p", "greeting": "Hi!", "llm": {"model": "x", "max_tokens": 80},
         "settings": {"end_of_turn_silence_ms": 400}}
    )
    loaded = await storage.get_agent(agent.id)
    assert loaded.llm == LLMConfig(model="x", max_tokens=80)
    assert loaded.settings == AgentSettings(end_of_turn_silence_ms=400)
    assert loaded.greeting == "Hi!"
    assert [a.id for a in await storage.list_agents()] == [agent.id]


async def test_storage_says_which_database_it_is(storage: Storage, database_url: str) -> None:
    # The job queue picks procrastinate from these: a DSN on PostgreSQL only.
    assert storage.kind == ("sqlite" if database_url.startswith("sqlite") else "postgres")
    assert (storage.dsn is not None) == (storage.kind == "postgres")


async def test_update_agent_changes_only_given_fields(storage: Storage) -> None:
    agent_id = await _agent(storage)
    updated = await storage.update_agent(agent_id, {"greeting": "Hello there", "id": "ignored"})
    assert updated.greeting == "Hello there"
    assert updated.prompt == "You book dentist appointments."
    assert updated.id == agent_id


async def test_deleted_agent_is_gone_but_its_calls_remain(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    await storage.delete_agent(agent_id)
    with pytest.raises(NotFound):
        await storage.get_agent(agent_id)
    with pytest.raises(NotFound):
        await storage.delete_agent(agent_id)
    assert (await storage.get_call(call.id)).agent_id == agent_id


async def test_malformed_and_unknown_ids_are_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        await storage.get_agent("not-a-uuid")
    with pytest.raises(NotFound):
        await storage.get_call(str(uuid.uuid4()))


async def test_call_for_unknown_agent_is_refused(storage: Storage) -> None:
    with pytest.raises(StorageError):
        await storage.create_call(agent_id=str(uuid.uuid4()), to_number="+1555", from_number=None, metadata={})
    assert await storage.list_calls() == []


async def test_list_calls_filters_and_paginates(storage: Storage) -> None:
    a1, a2 = await _agent(storage), await _agent(storage)
    ids = []
    for i in range(5):
        call = await storage.create_call(
            agent_id=a1 if i % 2 == 0 else a2, to_number=f"+1555000000{i}", from_number=None, metadata={"i": i}
        )
        ids.append(call.id)
    await storage.update_call(ids[0], {"status": "completed"})
    assert {c.id for c in await storage.list_calls(agent_id=a1)} == {ids[0], ids[2], ids[4]}
    assert [c.id for c in await storage.list_calls(status="completed")] == [ids[0]]
    page1 = await storage.list_calls(limit=2, offset=0)
    page2 = await storage.list_calls(limit=2, offset=2)
    page3 = await storage.list_calls(limit=2, offset=4)
    assert len(page1) == 2 and len(page2) == 2 and len(page3) == 1
    assert {c.id for c in page1 + page2 + page3} == set(ids)


async def test_late_ringing_does_not_overwrite_completed(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    await storage.apply_call_status(call.id, "initiated", twilio_call_sid="CA123")
    await storage.apply_call_status(call.id, "in-progress")
    done = await storage.apply_call_status(call.id, "completed", duration=42)
    late = await storage.apply_call_status(call.id, "ringing")
    again = await storage.apply_call_status(call.id, "completed", duration=42)
    assert late.status == again.status == done.status == "completed"
    assert late.duration == 42
    assert done.started_at is not None and done.ended_at is not None
    assert done.twilio_call_sid == "CA123"


async def test_concurrent_status_events_end_terminal(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    events = ["initiated", "ringing", "in-progress", "completed", "ringing", "in-progress"]
    await asyncio.gather(*(storage.apply_call_status(call.id, e) for e in events))
    assert (await storage.get_call(call.id)).status == "completed"


async def test_transcripts_are_ordered_and_retries_store_once(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    line_id = str(uuid.uuid4())
    await storage.add_transcript(call.id, "agent", "Hello, this is Ava.")
    await storage.add_transcript(call.id, "caller", "Hi, I need to move my appointment.", line_id=line_id,
                                 metrics={"stt_ms": 310})
    await storage.add_transcript(call.id, "caller", "Hi, I need to move my appointment.", line_id=line_id)
    await storage.add_transcript(call.id, "agent", "Sure, which day?", metrics={"voice_to_voice_ms": 820})
    lines = await storage.list_transcripts(call.id)
    assert [(l.speaker, l.text) for l in lines] == [
        ("agent", "Hello, this is Ava."),
        ("caller", "Hi, I need to move my appointment."),
        ("agent", "Sure, which day?"),
    ]
    assert lines[1].metrics == {"stt_ms": 310}


async def test_tool_rows_are_stored_in_order_and_other_speakers_refused(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    await storage.add_transcript(call.id, "caller", "Anything free on Tuesday?")
    await storage.add_transcript(call.id, "tool", 'check_availability("day": "Tuesday") → {"free": ["10am"]}',
                                 metrics={"tool": "check_availability", "ok": True})
    await storage.add_transcript(call.id, "agent", "Tuesday at ten is free.")
    lines = await storage.list_transcripts(call.id)
    assert [l.speaker for l in lines] == ["caller", "tool", "agent"]
    assert lines[1].metrics == {"tool": "check_availability", "ok": True}
    with pytest.raises(StorageError):  # the database's own check, not only the type
        await storage.add_transcript(call.id, "robot", "beep")  # type: ignore[arg-type]


async def test_analysis_is_one_row_per_call(storage: Storage) -> None:
    agent_id = await _agent(storage)
    call = await storage.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata={})
    await storage.upsert_analysis(call.id, {"summary": "first", "key_points": ["a"], "sentiment": "neutral"})
    second = await storage.upsert_analysis(call.id, {"summary": "second", "key_points": ["b", "c"],
                                                     "sentiment": "positive", "outcome": "goal_achieved"})
    loaded = await storage.get_analysis(call.id)
    assert loaded.id == second.id
    assert loaded.summary == "second" and loaded.key_points == ["b", "c"]


async def test_migrate_is_idempotent(storage: Storage) -> None:
    assert await storage.migrate() == []
    await storage.ping()
