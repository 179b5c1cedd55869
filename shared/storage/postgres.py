"""PostgreSQL through asyncpg: self-hosted, or Supabase's direct / session-pooler connection."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from shared.errors import StorageError, StorageUnavailable
from shared.storage.base import StorageKind
from shared.storage.sql import SQLStorage, default_migrations_dir

_PLACEHOLDER = re.compile(r"\?")
# What a database that is down, restarting or unreachable raises: a refused or dropped connection
# (OSError, asyncpg's InterfaceError, SQLSTATE class 08), a server starting or shutting down, a timeout.
_UNREACHABLE = (
    asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, OSError, TimeoutError,
)
_MIGRATIONS_TABLE = """
create table if not exists public.relayx_schema_migrations (
  version text primary key, name text not null, applied_at timestamptz not null default now()
)
"""


def to_dollar_params(sql: str) -> str:
    """Rewrite the shared `?` placeholders as asyncpg's `$1, $2, …`."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def asyncpg_dsn(database_url: str) -> str:
    """Accept SQLAlchemy-style schemes too (`postgresql+asyncpg://`)."""
    scheme, rest = database_url.split("://", 1)
    return f"postgresql://{rest}" if scheme.startswith("postgres") else database_url


def uses_transaction_pooler(database_url: str) -> bool:
    """Supabase's transaction pooler (port 6543) cannot keep prepared statements between queries."""
    return urlsplit(asyncpg_dsn(database_url)).port == 6543


class _Conn:
    """Adapts an asyncpg connection to the shared `Executor` shape."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        try:
            rows = await self._conn.fetch(to_dollar_params(sql), *args)
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"database unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(str(exc)) from exc
        return [dict(row) for row in rows]

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._conn.execute(to_dollar_params(sql), *args)
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"database unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(str(exc)) from exc
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresStorage(SQLStorage):
    """A pool of asyncpg connections; row locks make status updates safe across processes."""

    kind: StorageKind = "postgres"
    lock_clause = " for update"

    def __init__(self, database_url: str, migrations_dir: Path | None = None, *, max_size: int = 10) -> None:
        self.dsn: str = asyncpg_dsn(database_url)  # procrastinate's job queue connects with it too
        self.migrations_dir = migrations_dir or default_migrations_dir()
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        extra: dict[str, Any] = {}
        if uses_transaction_pooler(self.dsn):
            extra["statement_cache_size"] = 0
        # No connection is opened here (min_size=0): a gateway started while its database is down
        # must still come up, refuse new calls cleanly and replay its spool once the database answers.
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=0, max_size=self._max_size, init=_init_connection, **extra
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("storage is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        try:
            async with self._require().acquire() as conn:
                yield _Conn(conn)
        except _UNREACHABLE as exc:  # getting a connection (or committing) failed: one named error
            raise StorageUnavailable(f"database unavailable: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Conn]:
        try:
            async with self._require().acquire() as conn, conn.transaction():
                yield _Conn(conn)
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"database unavailable: {exc}") from exc

    def _encode(self, column: str, value: Any) -> Any:
        if (column == "id" or column.endswith("_id")) and value is not None:
            return self._uuid(value)
        return value

    async def _applied_versions(self) -> set[str]:
        async with self._connection() as conn:
            await conn.execute(_MIGRATIONS_TABLE)
            rows = await conn.fetch("select version from public.relayx_schema_migrations")
        return {row["version"] for row in rows}

    async def _apply_migration(self, version: str, name: str, sql: str) -> None:
        async with self._require().acquire() as conn, conn.transaction():
            try:
                await conn.execute(sql)
                await conn.execute(
                    "insert into public.relayx_schema_migrations (version, name) values ($1, $2)",
                    version,
                    name,
                )
            except asyncpg.PostgresError as exc:
                raise StorageError(f"migration {version}_{name} failed: {exc}") from exc
