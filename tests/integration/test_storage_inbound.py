"""Phone numbers, inbound calls, AMD results and transfers in storage: SQLite, real PostgreSQL, and the
Supabase REST storage against the FAKE PostgREST (tests/support/fake_postgrest.py; those names say so)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import NotFound, StorageError
from shared.storage import build_storage
from shared.storage.base import Storage
from tests.conftest import make_settings
from tests.support.fake_postgrest import FakePostgrest
from tests.support.servers import serve

SERVICE_KEY = "service-role-key-for-tests"
NUMBER = "+14155550100"


@pytest.fixture(scope="module")
def fake_postgrest() -> Iterator[tuple[FakePostgrest, str]]:
    server = FakePostgrest(SERVICE_KEY)
    with serve(server.app) as url:
        yield server, url


@pytest.fixture(params=["sqlite", "postgres", "supabase_rest_fake_postgrest"])
async def store(
    request: pytest.FixtureRequest, fake_postgrest: tuple[FakePostgrest, str], tmp_path: Path
) -> AsyncIterator[Storage]:
    """The same tests on SQLite, real PostgreSQL, and the Supabase REST storage on the fake PostgREST."""
    if request.param == "supabase_rest_fake_postgrest":
        server, url = fake_postgrest
        for table in server.tables.values():
            table.rows.clear()
        settings = make_settings(tmp_path, SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY)
    elif request.param == "postgres":
        settings = make_settings(tmp_path, DATABASE_URL=request.getfixturevalue("postgres_url"))
    else:
        settings = make_settings(tmp_path)
    built = build_storage(settings)
    await built.open()
    await built.migrate()
    try:
        yield built
    finally:
        await built.close()


async def _agent(store: Storage) -> str:
    return (await store.create_agent({"name": "Ava", "prompt": "Answer the phone."})).id


async def test_phone_number_round_trip_and_lookup_by_number(store: Storage) -> None:
    agent_id = await _agent(store)
    created = await store.create_phone_number({"number": NUMBER, "agent_id": agent_id})
    assert created.inbound_enabled is True and created.agent_id == agent_id
    assert await store.get_phone_number(created.id) == created
    assert await store.find_phone_number(NUMBER) == created
    assert await store.find_phone_number("+14155550199") is None
    assert [n.id for n in await store.list_phone_numbers()] == [created.id]


async def test_phone_numbers_list_by_number_and_filter_by_agent(store: Storage) -> None:
    first, second = await _agent(store), await _agent(store)
    late = await store.create_phone_number({"number": "+14155550300", "agent_id": first})
    early = await store.create_phone_number({"number": "+14155550200", "agent_id": first, "inbound_enabled": False})
    other = await store.create_phone_number({"number": "+442071838750", "agent_id": second})
    assert [n.id for n in await store.list_phone_numbers()] == [early.id, late.id, other.id]
    assert [n.id for n in await store.list_phone_numbers(agent_id=first)] == [early.id, late.id]
    assert [n.id for n in await store.list_phone_numbers(limit=1, offset=1)] == [late.id]
    assert early.inbound_enabled is False


async def test_phone_number_update_changes_only_given_fields(store: Storage) -> None:
    first, second = await _agent(store), await _agent(store)
    number = await store.create_phone_number({"number": NUMBER, "agent_id": first})
    updated = await store.update_phone_number(number.id, {"inbound_enabled": False, "id": "ignored"})
    assert updated.inbound_enabled is False and updated.number == NUMBER and updated.id == number.id
    moved = await store.update_phone_number(number.id, {"agent_id": second, "number": "+14155550111"})
    assert moved.agent_id == second and moved.number == "+14155550111" and moved.inbound_enabled is False
    assert moved.updated_at >= number.updated_at


async def test_a_number_is_configured_once(store: Storage) -> None:
    agent_id = await _agent(store)
    kept = await store.create_phone_number({"number": NUMBER, "agent_id": agent_id})
    with pytest.raises(StorageError):
        await store.create_phone_number({"number": NUMBER, "agent_id": agent_id})
    other = await store.create_phone_number({"number": "+14155550111", "agent_id": agent_id})
    with pytest.raises(StorageError):
        await store.update_phone_number(other.id, {"number": NUMBER})
    assert [n.id for n in await store.list_phone_numbers()] == [kept.id, other.id]


async def test_a_number_needs_an_existing_agent(store: Storage) -> None:
    with pytest.raises(StorageError):
        await store.create_phone_number({"number": NUMBER, "agent_id": str(uuid.uuid4())})
    assert await store.list_phone_numbers() == []


async def test_deleted_numbers_and_unknown_ids_are_not_found(store: Storage) -> None:
    number = await store.create_phone_number({"number": NUMBER, "agent_id": await _agent(store)})
    await store.delete_phone_number(number.id)
    for unknown in (number.id, "not-a-uuid"):
        with pytest.raises(NotFound):
            await store.get_phone_number(unknown)
        with pytest.raises(NotFound):
            await store.delete_phone_number(unknown)
        with pytest.raises(NotFound):
            await store.update_phone_number(unknown, {"inbound_enabled": False})
    assert await store.find_phone_number(NUMBER) is None


async def test_an_inbound_call_starts_ringing_with_its_sid(store: Storage) -> None:
    agent_id = await _agent(store)
    sid = "CA" + "1f" * 16
    call = await store.create_call(
        agent_id=agent_id, to_number=NUMBER, from_number="+15551230000", metadata={}, direction="inbound",
        twilio_call_sid=sid,
    )
    assert (call.direction, call.status, call.twilio_call_sid) == ("inbound", "ringing", sid)
    assert await store.find_call_by_sid(sid) == call
    assert await store.find_call_by_sid("CA" + "2e" * 16) is None
    outbound = await store.create_call(agent_id=agent_id, to_number=NUMBER, from_number=None, metadata={})
    assert (outbound.direction, outbound.status, outbound.answered_by) == ("outbound", "queued", None)
    with pytest.raises(StorageError):  # one call per SID
        await store.create_call(agent_id=agent_id, to_number=NUMBER, from_number=None, metadata={},
                                direction="inbound", twilio_call_sid=sid)


async def test_amd_result_and_transfer_are_stored_on_the_call(store: Storage) -> None:
    call = await store.create_call(agent_id=await _agent(store), to_number=NUMBER, from_number=None, metadata={})
    at = datetime(2026, 12, 15, 9, 30, tzinfo=UTC)
    await store.update_call(call.id, {"answered_by": "machine_end_beep"})
    updated = await store.update_call(call.id, {"transferred_to": "+14155550123", "transferred_at": at})
    loaded = await store.get_call(call.id)
    assert loaded == updated
    assert (loaded.answered_by, loaded.transferred_to) == ("machine_end_beep", "+14155550123")
    assert loaded.transferred_at == at
    assert [c.answered_by for c in await store.list_calls()] == ["machine_end_beep"]
