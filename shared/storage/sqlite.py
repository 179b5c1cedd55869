"""SQLite through aiosqlite: the embedded default, one file under ./data, no server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from shared.errors import StorageError
from shared.storage.base import StorageKind
from shared.storage.sql import JSON_COLUMNS, SQLStorage, default_migrations_dir

_MIGRATIONS_TABLE = """
create table if not exists relayx_schema_migrations (
  version text primary key, name text not null, applied_at text not null default (datetime('now'))
)
"""


def sqlite_path(database_url: str) -> str:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db` or `sqlite://:memory:` to a path."""
    rest = database_url.split("://", 1)[1]
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    return rest.removeprefix("/")


class _Conn:
    """Adapts one aiosqlite connection to the shared `Executor` shape."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._db.execute(sql, args) as cursor:
            rows = await cursor.fetchall()
        return [dict(row) for row in rows]

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._db.execute(sql, args)
        count = cursor.rowcount
        await cursor.close()
        return count


class SQLiteStorage(SQLStorage):
    """One connection per process, WAL mode so the backend and the gateway share the file."""

    kind: StorageKind = "sqlite"
    dsn: str | None = None  # no PostgreSQL: jobs are rows of `relayx_jobs`, run by the backend itself
    transcript_order = "timestamp, seq"

    def __init__(self, database_url: str, migrations_dir: Path | None = None) -> None:
        self.path = sqlite_path(database_url)
        self.migrations_dir = (migrations_dir or default_migrations_dir()) / "sqlite"
        self._db: aiosqlite.Connection | None = None
        # One connection, many coroutines: statements and transactions must not interleave.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "busy_timeout=10000", "foreign_keys=ON", "synchronous=NORMAL"):
            await self._db.execute(f"pragma {pragma}")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError("storage is not open")
        return self._db

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        async with self._lock:
            try:
                yield _Conn(self._require())
            except (sqlite3.IntegrityError, sqlite3.OperationalError) as exc:
                raise StorageError(str(exc)) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Conn]:
        async with self._lock:
            db = self._require()
            # IMMEDIATE takes the write lock up front, so a read-then-write can't race another process.
            await db.execute("begin immediate")
            try:
                yield _Conn(db)
            except BaseException as exc:
                await db.execute("rollback")
                if isinstance(exc, (sqlite3.IntegrityError, sqlite3.OperationalError)):
                    raise StorageError(str(exc)) from exc  # named as `_connection` names it
                raise
            else:
                await db.execute("commit")

    def _encode(self, column: str, value: Any) -> Any:
        if column == "id" or column.endswith("_id"):
            return None if value is None else str(self._uuid(value))
        if column in JSON_COLUMNS:
            return json.dumps(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    async def _applied_versions(self) -> set[str]:
        async with self._connection() as conn:
            await conn.execute(_MIGRATIONS_TABLE)
            rows = await conn.fetch("select version from relayx_schema_migrations")
        return {row["version"] for row in rows}

    async def _apply_migration(self, version: str, name: str, sql: str) -> None:
        async with self._lock:
            db = self._require()
            script = (
                f"begin;\n{sql}\n;insert into relayx_schema_migrations (version, name) "
                f"values ('{version}', '{name}');\ncommit;"
            )
            try:
                await db.executescript(script)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    await db.execute("rollback")
                raise StorageError(f"migration {version}_{name} failed: {exc}") from exc
