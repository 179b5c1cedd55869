"""Fixtures shared by every test layer: settings, the real PostgreSQL cluster, storages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared import stream_tokens, twilio_auth
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Storage
from tests.support.postgres import fresh_database, postgres_cluster


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """One real PostgreSQL 15 cluster for the whole run (never skipped: CI installs the server)."""
    with postgres_cluster() as url:
        yield url


def _db_name(request: pytest.FixtureRequest) -> str:
    return "t_" + re.sub(r"\W", "_", request.node.name.lower())[:55]


@pytest.fixture
def postgres_url(postgres_admin_url: str, request: pytest.FixtureRequest) -> str:
    """An empty database of its own for one test."""
    return fresh_database(postgres_admin_url, _db_name(request))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage-backed test runs twice: on the embedded SQLite file and on real PostgreSQL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/relayx.db"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: isolated data dir, fixed API key, no .env file read."""
    values: dict[str, object] = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/relayx.db",
        "RELAYX_DATA_DIR": str(tmp_path),
        "RELAYX_API_KEY": "test-key",
        "MODEL_CACHE_DIR": str(Path("data/models").resolve()),
    }
    values.update({k: v for k, v in overrides.items()})
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def media_url(settings: Settings, port: int, call_id: str) -> str:
    """A local gateway's /media URL carrying a stream token for `call_id` (what the simulated line,
    the browser phone and benchmarks bring; every stream needs a token or Twilio's signature)."""
    return stream_tokens.stream_url(f"ws://127.0.0.1:{port}/media", twilio_auth.signing_token(settings), call_id)


@pytest.fixture
async def storage(database_url: str, tmp_path: Path) -> AsyncIterator[Storage]:
    """The same suite runs against both implementations."""
    settings = make_settings(tmp_path, DATABASE_URL=database_url)
    store = build_storage(settings)
    await store.open()
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
