"""SupabaseStorage at the HTTP wire, against a FAKE PostgREST (tests/support/fake_postgrest.py).

No PostgREST server can run here: these tests check what supabase-py sends and how the storage reads
the answers, not PostgreSQL's behaviour behind a real Supabase project. Every name says so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.agent_config import AgentSettings, LLMConfig
from shared.errors import NotFound, StorageError
from shared.storage import build_storage
from shared.storage.supabase import SupabaseStorage
from tests.conftest import make_settings
from tests.support.fake_postgrest import FakePostgrest
from tests.support.servers import serve

SERVICE_KEY = "service-role-key-for-tests"


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakePostgrest, str]]:
    """One fake PostgREST server for the module; each test empties its tables."""
    server = FakePostgrest(SERVICE_KEY)
    with serve(server.app) as url:
        yield server, url


@pytest.fixture
async def store(fake: tuple[FakePostgrest, str], tmp_path: Path) -> AsyncIterator[SupabaseStorage]:
    server, url = fake
    for table in server.tables.values():
        table.rows.clear()
    server.requests.clear()
    built = build_storage(make_settings(tmp_path, SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY))
    assert isinstance(built, SupabaseStorage)
    await built.open()
    try:
        yield built
    finally:
        await built.close()


async def _agent(store: SupabaseStorage) -> str:
    agent = await store.create_agent({"name": "Ava", "prompt": "You book dentist appointments.",
                                      "llm": {"temperature": 0.3}})
    return agent.id


async def _call(store: SupabaseStorage, agent_id: str, **metadata: object) -> str:
    call = await store.create_call(agent_id=agent_id, to_number="+15551234567", from_number=None, metadata=metadata)
    return call.id


def test_supabase_rest_settings_take_precedence_over_database_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DATABASE_URL="postgresql://u@localhost/db",
                             SUPABASE_URL="https://x.supabase.co", SUPABASE_SERVICE_ROLE_KEY="k")
    assert isinstance(build_storage(settings), SupabaseStorage)
    assert not isinstance(build_storage(make_settings(tmp_path, SUPABASE_URL="https://x.supabase.co")),
                          SupabaseStorage)


async def test_supabase_rest_fake_postgrest_agent_crud_and_soft_delete(store: SupabaseStorage) -> None:
    agent = await store.create_agent({"name": "Ava", "prompt": "p", "greeting": "Hi!",
                                      "llm": {"model": "x", "max_tokens": 80},
                                      "settings": {"end_of_turn_silence_ms": 400}})
    loaded = await store.get_agent(agent.id)
    assert loaded.llm == LLMConfig(model="x", max_tokens=80)
    assert loaded.settings == AgentSettings(end_of_turn_silence_ms=400) and loaded.language == "en"
    updated = await store.update_agent(agent.id, {"greeting": "Hello there", "id": "ignored"})
    assert updated.greeting == "Hello there" and updated.prompt == "p" and updated.id == agent.id
    call_id = await _call(store, agent.id)
    assert [a.id for a in await store.list_agents()] == [agent.id]
    await store.delete_agent(agent.id)
    with pytest.raises(NotFound):
        await store.get_agent(agent.id)
    with pytest.raises(NotFound):
        await store.delete_agent(agent.id)
    with pytest.raises(NotFound):
        await store.update_agent(agent.id, {"name": "Zed"})
    assert await store.list_agents() == []
    assert (await store.get_call(call_id)).agent_id == agent.id


async def test_supabase_rest_fake_postgrest_unknown_and_malformed_ids_are_not_found(store: SupabaseStorage) -> None:
    for lookup in (store.get_agent, store.get_call, store.get_analysis, store.get_webhook_event):
        with pytest.raises(NotFound):
            await lookup("not-a-uuid")
        with pytest.raises(NotFound):
            await lookup(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await store.update_call(str(uuid.uuid4()), {"status": "completed"})
    with pytest.raises(NotFound):
        await store.apply_call_status(str(uuid.uuid4()), "ringing")


async def test_supabase_rest_fake_postgrest_call_for_unknown_agent_is_a_storage_error(
    store: SupabaseStorage,
) -> None:
    with pytest.raises(StorageError, match="23503"):
        await store.create_call(agent_id=str(uuid.uuid4()), to_number="+1555", from_number=None, metadata={})
    assert await store.list_calls() == []


async def test_supabase_rest_fake_postgrest_list_calls_filters_and_paginates(store: SupabaseStorage) -> None:
    a1, a2 = await _agent(store), await _agent(store)
    ids = [await _call(store, a1 if i % 2 == 0 else a2, i=i) for i in range(5)]
    await store.update_call(ids[0], {"status": "completed"})
    assert {c.id for c in await store.list_calls(agent_id=a1)} == {ids[0], ids[2], ids[4]}
    assert [c.id for c in await store.list_calls(status="completed")] == [ids[0]]
    pages = [await store.list_calls(limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {c.id for p in pages for c in p} == set(ids)
    newest_first = [c.id for p in pages for c in p]
    assert newest_first == [c.id for c in await store.list_calls()]
    await store.upsert_analysis(ids[1], {"outcome": "goal_achieved", "sentiment": "positive"})
    await store.upsert_analysis(ids[2], {"outcome": "goal_achieved", "sentiment": "negative"})
    assert {c.id for c in await store.list_calls(outcome="goal_achieved")} == {ids[1], ids[2]}
    assert [c.id for c in await store.list_calls(outcome="goal_achieved", sentiment="negative")] == [ids[2]]
    assert [c.id for c in await store.list_calls(agent_id=a2, outcome="goal_achieved")] == [ids[1]]


async def test_supabase_rest_fake_postgrest_late_ringing_does_not_overwrite_completed(
    store: SupabaseStorage,
) -> None:
    call_id = await _call(store, await _agent(store))
    await store.apply_call_status(call_id, "initiated", twilio_call_sid="CA123")
    await store.apply_call_status(call_id, "in-progress")
    done = await store.apply_call_status(call_id, "completed", duration=42)
    late = await store.apply_call_status(call_id, "ringing")
    again = await store.apply_call_status(call_id, "completed", duration=7)
    assert late.status == again.status == done.status == "completed"
    assert late.duration == again.duration == 42
    assert done.started_at is not None and done.ended_at is not None
    assert done.twilio_call_sid == "CA123"
    assert (await store.get_call(call_id)).status == "completed"


async def test_supabase_rest_fake_postgrest_status_patch_is_conditional_on_the_status_read(
    store: SupabaseStorage, fake: tuple[FakePostgrest, str]
) -> None:
    call_id = await _call(store, await _agent(store))
    fake[0].requests.clear()
    await store.apply_call_status(call_id, "ringing")
    patches = [q for method, q in fake[0].requests if method == "PATCH"]
    assert len(patches) == 1 and f"id=eq.{call_id}" in patches[0] and "status=eq.queued" in patches[0]


async def test_supabase_rest_fake_postgrest_concurrent_status_events_end_terminal(store: SupabaseStorage) -> None:
    call_id = await _call(store, await _agent(store))
    events = ["initiated", "ringing", "in-progress", "completed", "ringing", "in-progress"]
    results = await asyncio.gather(*(store.apply_call_status(call_id, e) for e in events))
    final = await store.get_call(call_id)
    assert final.status == "completed" and final.ended_at is not None
    assert results[3].status == "completed"


async def test_supabase_rest_fake_postgrest_transcripts_ordered_and_retries_stored_once(
    store: SupabaseStorage,
) -> None:
    call_id = await _call(store, await _agent(store))
    line_id = str(uuid.uuid4())
    await store.add_transcript(call_id, "agent", "Hello, this is Ava.")
    first = await store.add_transcript(call_id, "caller", "Hi, I need to move my appointment.", line_id=line_id,
                                       metrics={"stt_ms": 310})
    retry = await store.add_transcript(call_id, "caller", "Hi, I need to move my appointment.", line_id=line_id)
    await store.add_transcript(call_id, "agent", "Sure, which day?", metrics={"voice_to_voice_ms": 820})
    assert retry.id == first.id == line_id and retry.metrics == {"stt_ms": 310}
    lines = await store.list_transcripts(call_id)
    assert [(line.speaker, line.text) for line in lines] == [
        ("agent", "Hello, this is Ava."),
        ("caller", "Hi, I need to move my appointment."),
        ("agent", "Sure, which day?"),
    ]
    assert lines[1].metrics == {"stt_ms": 310}
    with pytest.raises(StorageError):
        await store.add_transcript(str(uuid.uuid4()), "agent", "to no call")


async def test_supabase_rest_fake_postgrest_analysis_is_one_row_per_call(
    store: SupabaseStorage, fake: tuple[FakePostgrest, str]
) -> None:
    call_id = await _call(store, await _agent(store))
    first = await store.upsert_analysis(call_id, {"summary": "first", "key_points": ["a"], "sentiment": "neutral",
                                                  "error": "kept"})
    second = await store.upsert_analysis(call_id, {"summary": "second", "key_points": ["b", "c"],
                                                   "sentiment": "positive", "outcome": "goal_achieved"})
    loaded = await store.get_analysis(call_id)
    assert loaded.id == second.id == first.id and loaded.created_at == first.created_at
    assert loaded.summary == "second" and loaded.key_points == ["b", "c"] and loaded.outcome == "goal_achieved"
    assert loaded.error == "kept"  # a field the re-run did not send is left as it was, as on SQL
    assert len(fake[0].tables["call_analysis"].rows) == 1


async def test_supabase_rest_fake_postgrest_webhook_events_and_attempts(store: SupabaseStorage) -> None:
    call_id = await _call(store, await _agent(store))
    event = await store.create_webhook_event(call_id=call_id, type="call.ended", url="https://example.com/hook",
                                             payload={"type": "call.ended"}, dedupe_key=f"call.ended:{call_id}")
    same = await store.create_webhook_event(call_id=call_id, type="call.ended", url="https://example.com/hook",
                                            payload={"type": "call.ended"}, dedupe_key=f"call.ended:{call_id}")
    assert same.id == event.id and event.payload["id"] == event.id
    await store.record_webhook_attempt(event.id, 1, status_code=500, error="HTTP 500", duration_ms=12,
                                       outcome="pending")
    await store.record_webhook_attempt(event.id, 1, status_code=500, error="HTTP 500", duration_ms=12,
                                       outcome="pending")
    done = await store.record_webhook_attempt(event.id, 2, status_code=200, error=None, duration_ms=9,
                                              outcome="delivered")
    assert done.status == "delivered" and done.attempts == 2 and done.delivered_at is not None
    [listed] = await store.list_webhook_events(call_id)
    assert [(a.attempt, a.status_code) for a in listed.attempt_log] == [(1, 500), (2, 200)]


async def test_supabase_rest_fake_postgrest_job_queue_claims_each_job_once(store: SupabaseStorage) -> None:
    assert await store.enqueue_job("analyze", {"call_id": "x"}, dedupe_key="analyze:x")
    assert not await store.enqueue_job("analyze", {"call_id": "x"}, dedupe_key="analyze:x")
    assert await store.enqueue_job("deliver", {"event_id": "y"})
    claimed = await asyncio.gather(*(store.claim_job() for _ in range(4)))
    jobs = [j for j in claimed if j is not None]
    assert sorted(j.task for j in jobs) == ["analyze", "deliver"] and all(j.attempts == 1 for j in jobs)
    await store.finish_job(jobs[0].id)
    assert await store.requeue_running_jobs() == 1
    again = await store.claim_job()
    assert again is not None and again.id == jobs[1].id and again.attempts == 2


async def test_supabase_rest_fake_postgrest_migrate_applies_nothing_and_ping_works(store: SupabaseStorage) -> None:
    assert await store.migrate() == []
    assert store.kind == "supabase" and store.dsn is None  # jobs go to relayx_jobs, as on SQLite
    await store.ping()


async def test_supabase_rest_fake_postgrest_wrong_key_is_a_clear_storage_error(
    fake: tuple[FakePostgrest, str],
) -> None:
    wrong = SupabaseStorage(fake[1], "not-the-service-key")
    await wrong.open()
    try:
        with pytest.raises(StorageError, match="SUPABASE_SERVICE_ROLE_KEY"):
            await wrong.ping()
        with pytest.raises(StorageError, match="Invalid API key"):
            await wrong.create_agent({"name": "Ava", "prompt": "p"})
    finally:
        await wrong.close()
