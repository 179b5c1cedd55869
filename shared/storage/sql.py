"""The SQL both database implementations share; each supplies only its driver and dialect.

Queries are written once with `?` placeholders; the PostgreSQL driver rewrites them to `$n`.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from shared import call_status
from shared.errors import NotFound
from shared.storage import rows
from shared.storage.base import (
    Agent,
    Call,
    CallAnalysis,
    Direction,
    Job,
    PhoneNumber,
    Speaker,
    TranscriptLine,
    WebhookAttempt,
    WebhookEvent,
    new_id,
    parse_id,
    utcnow,
)

JSON_COLUMNS = frozenset({"llm", "settings", "metadata", "metrics", "key_points", "data", "payload", "args",
                          "variables", "schedule", "retry"})
MIGRATION_NAME = re.compile(r"^(\d{14})_(\w+)\.sql$")


class Executor(Protocol):
    """A connection (or a transaction on one) as the shared SQL sees it."""

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, *args: Any) -> int: ...


def migration_files(directory: Path) -> list[tuple[str, str, Path]]:
    """Supabase-named migrations (`<YYYYMMDDHHMMSS>_name.sql`) in version order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match:
            found.append((match.group(1), match.group(2), path))
    return found


def default_migrations_dir() -> Path:
    """The repository's migrations/ folder (or ./migrations when installed as a package)."""
    here = Path(__file__).resolve().parents[2] / "migrations"
    return here if here.is_dir() else Path.cwd() / "migrations"


class SQLStorage(ABC):
    """Agents, phone numbers, calls, transcripts and analyses over any `Executor`."""

    transcript_order = "timestamp, seq"

    # --- driver seam ------------------------------------------------------------------------------
    @abstractmethod
    def _connection(self) -> AbstractAsyncContextManager[Executor]:
        """A connection for one statement or a few, outside a transaction."""

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Executor]:
        """A connection inside a transaction that holds a write lock on what it reads."""

    @abstractmethod
    def _encode(self, column: str, value: Any) -> Any:
        """Turn a Python value into what the driver stores for `column`."""

    @abstractmethod
    async def _applied_versions(self) -> set[str]: ...

    @abstractmethod
    async def _apply_migration(self, version: str, name: str, sql: str) -> None: ...

    migrations_dir: Path

    lock_clause = ""  # " for update" where the database supports row locks

    # --- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _uuid(value: Any) -> uuid.UUID:
        return parse_id(value)

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for key, value in out.items():
            if key in JSON_COLUMNS and isinstance(value, str):
                out[key] = json.loads(value)
            elif key == "id" or key.endswith("_id"):
                out[key] = None if value is None else str(value)
        return out

    def _insert(self, table: str, values: dict[str, Any], tail: str = "returning *") -> tuple[str, list[Any]]:
        """An `insert` of `values` (encoded for this driver) and its arguments."""
        columns = list(values)
        sql = f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' for _ in columns)}) {tail}"
        return sql, [self._encode(c, values[c]) for c in columns]

    def _update(self, table: str, row_id: str, values: dict[str, Any], where: str = "") -> tuple[str, list[Any]]:
        """An `update … where id = ?` of `values`, returning the row, and its arguments."""
        assignments = ", ".join(f"{column} = ?" for column in values)
        sql = f"update {table} set {assignments} where id = ?{where} returning *"
        return sql, [*(self._encode(c, v) for c, v in values.items()), self._encode("id", row_id)]

    async def _one(self, conn: Executor, sql: str, *args: Any, what: str) -> dict[str, Any]:
        rows = await conn.fetch(sql, *args)
        if not rows:
            raise NotFound(what)
        return self._decode(rows[0])

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded; returns the versions applied now."""
        applied = await self._applied_versions()
        done = []
        for version, name, path in migration_files(self.migrations_dir):
            if version in applied:
                continue
            await self._apply_migration(version, name, path.read_text())
            done.append(version)
        return done

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetch("select 1 as ok")

    # --- agents ------------------------------------------------------------------------------------
    async def create_agent(self, data: dict[str, Any]) -> Agent:
        sql, args = self._insert("agents", rows.new_agent(data))
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what="agent")
        return Agent.model_validate(row)

    async def get_agent(self, agent_id: str) -> Agent:
        async with self._connection() as conn:
            row = await self._one(
                conn,
                "select * from agents where id = ? and deleted_at is null",
                self._encode("id", agent_id),
                what=f"agent {agent_id}",
            )
        return Agent.model_validate(row)

    async def list_agents(self, *, limit: int = 100, offset: int = 0) -> list[Agent]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "select * from agents where deleted_at is null order by created_at desc limit ? offset ?",
                limit,
                offset,
            )
        return [Agent.model_validate(self._decode(r)) for r in rows]

    async def update_agent(self, agent_id: str, changes: dict[str, Any]) -> Agent:
        values = rows.agent_changes(changes)
        sql, args = self._update("agents", agent_id, values, where=" and deleted_at is null")
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what=f"agent {agent_id}")
        return Agent.model_validate(row)

    async def delete_agent(self, agent_id: str) -> None:
        """Soft delete: the agent's calls and transcripts stay readable."""
        now = utcnow()
        async with self._connection() as conn:
            count = await conn.execute(
                "update agents set deleted_at = ?, updated_at = ? where id = ? and deleted_at is null",
                self._encode("deleted_at", now),
                self._encode("updated_at", now),
                self._encode("id", agent_id),
            )
        if not count:
            raise NotFound(f"agent {agent_id}")

    # --- phone numbers -----------------------------------------------------------------------------
    async def create_phone_number(self, data: dict[str, Any]) -> PhoneNumber:
        sql, args = self._insert("phone_numbers", rows.new_phone_number(data))
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what="phone number")
        return PhoneNumber.model_validate(row)

    async def get_phone_number(self, number_id: str) -> PhoneNumber:
        async with self._connection() as conn:
            row = await self._one(
                conn, "select * from phone_numbers where id = ?", self._encode("id", number_id),
                what=f"phone number {number_id}",
            )
        return PhoneNumber.model_validate(row)

    async def find_phone_number(self, number: str) -> PhoneNumber | None:
        async with self._connection() as conn:
            found = await conn.fetch("select * from phone_numbers where number = ?", number)
        return PhoneNumber.model_validate(self._decode(found[0])) if found else None

    async def list_phone_numbers(
        self, *, agent_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[PhoneNumber]:
        where, args = "", []
        if agent_id is not None:
            where = "where agent_id = ?"
            args.append(self._encode("agent_id", agent_id))
        async with self._connection() as conn:
            found = await conn.fetch(
                f"select * from phone_numbers {where} order by number, id limit ? offset ?", *args, limit, offset
            )
        return [PhoneNumber.model_validate(self._decode(r)) for r in found]

    async def update_phone_number(self, number_id: str, changes: dict[str, Any]) -> PhoneNumber:
        sql, args = self._update("phone_numbers", number_id, rows.phone_number_changes(changes))
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what=f"phone number {number_id}")
        return PhoneNumber.model_validate(row)

    async def delete_phone_number(self, number_id: str) -> None:
        """A hard delete: calls keep the number they were made to in `to_number`."""
        async with self._connection() as conn:
            count = await conn.execute("delete from phone_numbers where id = ?", self._encode("id", number_id))
        if not count:
            raise NotFound(f"phone number {number_id}")

    # --- calls -------------------------------------------------------------------------------------
    async def create_call(
        self,
        *,
        agent_id: str,
        to_number: str,
        from_number: str | None,
        metadata: dict[str, Any],
        direction: Direction = "outbound",
        twilio_call_sid: str | None = None,
    ) -> Call:
        values = rows.new_call(agent_id, to_number, from_number, metadata, direction, twilio_call_sid)
        sql, args = self._insert("calls", values)
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what="call")
        return Call.model_validate(row)

    async def get_call(self, call_id: str) -> Call:
        async with self._connection() as conn:
            row = await self._one(
                conn, "select * from calls where id = ?", self._encode("id", call_id), what=f"call {call_id}"
            )
        return Call.model_validate(row)

    async def find_call_by_sid(self, twilio_call_sid: str) -> Call | None:
        async with self._connection() as conn:
            found = await conn.fetch("select * from calls where twilio_call_sid = ?", twilio_call_sid)
        return Call.model_validate(self._decode(found[0])) if found else None

    async def list_calls(
        self,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        outcome: str | None = None,
        sentiment: str | None = None,
        campaign_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Call]:
        where, args = [], []
        for column, value in (("agent_id", agent_id), ("campaign_id", campaign_id)):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(self._encode(column, value))
        if status is not None:
            where.append("c.status = ?")
            args.append(status)
        join = ""
        if outcome is not None or sentiment is not None:
            join = "join call_analysis a on a.call_id = c.id"
            for column, value in (("outcome", outcome), ("sentiment", sentiment)):
                if value is not None:
                    where.append(f"a.{column} = ?")
                    args.append(value)
        clause = f"where {' and '.join(where)}" if where else ""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"select c.* from calls c {join} {clause} order by c.created_at desc, c.id limit ? offset ?",
                *args,
                limit,
                offset,
            )
        return [Call.model_validate(self._decode(r)) for r in rows]

    async def update_call(self, call_id: str, changes: dict[str, Any]) -> Call:
        sql, args = self._update("calls", call_id, rows.call_changes(changes))
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what=f"call {call_id}")
        return Call.model_validate(row)

    async def apply_call_status(
        self,
        call_id: str,
        status: str,
        *,
        duration: int | None = None,
        twilio_call_sid: str | None = None,
        at: datetime | None = None,
    ) -> Call:
        """Move a call forward in its lifecycle, atomically; stale or repeated events change nothing
        but may still fill in a missing duration or call SID."""
        status = call_status.normalize(status)
        at = at or utcnow()
        async with self._transaction() as conn:
            current = await self._one(
                conn,
                f"select * from calls where id = ?{self.lock_clause}",
                self._encode("id", call_id),
                what=f"call {call_id}",
            )
            changes = call_status.transition(
                current, status, at=at, duration=duration, twilio_call_sid=twilio_call_sid
            )
            if not changes:
                return Call.model_validate(current)
            changes["updated_at"] = utcnow()
            sql, args = self._update("calls", call_id, changes)
            row = await self._one(conn, sql, *args, what=f"call {call_id}")
        return Call.model_validate(row)

    # --- transcripts -------------------------------------------------------------------------------
    async def add_transcript(
        self,
        call_id: str,
        speaker: Speaker,
        text: str,
        *,
        timestamp: datetime | None = None,
        metrics: dict[str, Any] | None = None,
        line_id: str | None = None,
    ) -> TranscriptLine:
        """Insert one line; a retried write with the same `line_id` is stored once."""
        values = rows.new_transcript_line(call_id, speaker, text, timestamp, metrics, line_id)
        sql, args = self._insert("transcripts", values, "on conflict (id) do nothing")
        async with self._connection() as conn:
            await conn.execute(sql, *args)
            row = await self._one(
                conn,
                "select * from transcripts where id = ?",
                self._encode("id", values["id"]),
                what="transcript line",
            )
        return TranscriptLine.model_validate(row)

    async def list_transcripts(self, call_id: str) -> list[TranscriptLine]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"select * from transcripts where call_id = ? order by {self.transcript_order}",
                self._encode("call_id", call_id),
            )
        return [TranscriptLine.model_validate(self._decode(r)) for r in rows]

    # --- analysis ----------------------------------------------------------------------------------
    async def upsert_analysis(self, call_id: str, values: dict[str, Any]) -> CallAnalysis:
        """One row per call: a re-run replaces the previous analysis instead of adding a row."""
        now = utcnow()
        fields = rows.analysis_fields(values)
        row_values = {"id": new_id(), "call_id": call_id, **fields, "created_at": now, "updated_at": now}
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*fields, "updated_at"])
        sql, args = self._insert("call_analysis", row_values, f"on conflict (call_id) do update set {updates} returning *")
        async with self._connection() as conn:
            row = await self._one(conn, sql, *args, what="analysis")
        return CallAnalysis.model_validate(row)

    async def get_analysis(self, call_id: str) -> CallAnalysis:
        async with self._connection() as conn:
            row = await self._one(
                conn,
                "select * from call_analysis where call_id = ?",
                self._encode("call_id", call_id),
                what=f"analysis of call {call_id}",
            )
        return CallAnalysis.model_validate(row)

    # --- webhook events ----------------------------------------------------------------------------
    async def create_webhook_event(
        self, *, call_id: str, type: str, url: str, payload: dict[str, Any], dedupe_key: str
    ) -> WebhookEvent:
        """Insert the event once per `dedupe_key`; a re-run (a retried job) gets the existing row back."""
        values = rows.new_webhook_event(call_id, type, url, payload, dedupe_key)
        sql, args = self._insert("webhook_events", values, "on conflict (dedupe_key) do nothing")
        async with self._connection() as conn:
            await conn.execute(sql, *args)
            row = await self._one(
                conn, "select * from webhook_events where dedupe_key = ?", dedupe_key, what="webhook event"
            )
        return WebhookEvent.model_validate(row)

    async def get_webhook_event(self, event_id: str) -> WebhookEvent:
        async with self._connection() as conn:
            row = await self._one(
                conn, "select * from webhook_events where id = ?", self._encode("id", event_id),
                what=f"webhook event {event_id}",
            )
        return WebhookEvent.model_validate(row)

    async def record_webhook_attempt(
        self,
        event_id: str,
        attempt: int,
        *,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
        outcome: str,
    ) -> WebhookEvent:
        """Log one attempt and move the event on, in one transaction (a repeated attempt number is kept once)."""
        now = utcnow()
        log_row = rows.new_webhook_attempt(event_id, attempt, status_code, error, duration_ms, now)
        insert, insert_args = self._insert("webhook_attempts", log_row, "on conflict (event_id, attempt) do nothing")
        changes = rows.attempt_outcome(outcome, attempt, error, now)
        update, update_args = self._update("webhook_events", event_id, changes)
        async with self._transaction() as conn:
            await conn.execute(insert, *insert_args)
            row = await self._one(conn, update, *update_args, what=f"webhook event {event_id}")
        return WebhookEvent.model_validate(row)

    async def list_webhook_events(self, call_id: str) -> list[WebhookEvent]:
        """A call's events, oldest first, each with its attempts in order."""
        async with self._connection() as conn:
            events = await conn.fetch(
                "select * from webhook_events where call_id = ? order by created_at, id",
                self._encode("call_id", call_id),
            )
            attempts = await conn.fetch(
                "select a.* from webhook_attempts a join webhook_events e on e.id = a.event_id "
                "where e.call_id = ? order by a.attempt",
                self._encode("call_id", call_id),
            )
        by_event: dict[str, list[WebhookAttempt]] = {}
        for row in attempts:
            decoded = self._decode(row)
            by_event.setdefault(decoded["event_id"], []).append(WebhookAttempt.model_validate(decoded))
        out = []
        for row in events:
            decoded = self._decode(row)
            out.append(WebhookEvent.model_validate({**decoded, "attempt_log": by_event.get(decoded["id"], [])}))
        return out

    # --- the embedded job queue --------------------------------------------------------------------
    async def enqueue_job(
        self, task: str, args: dict[str, Any], *, dedupe_key: str | None = None, run_at: datetime | None = None
    ) -> bool:
        """Add a pending job; False when a job with the same `dedupe_key` was ever enqueued."""
        values = rows.new_job(task, args, dedupe_key, run_at)
        sql, params = self._insert("relayx_jobs", values, "on conflict do nothing")
        async with self._connection() as conn:
            count = await conn.execute(sql, *params)
        return count > 0

    async def claim_job(self) -> Job | None:
        """Take the oldest due pending job (marking it running), or None."""
        now = utcnow()
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"select id from relayx_jobs where status = 'pending' and run_at <= ? "
                f"order by run_at limit 1{self.lock_clause}{' skip locked' if self.lock_clause else ''}",
                self._encode("run_at", now),
            )
            if not rows:
                return None
            row = await self._one(
                conn,
                "update relayx_jobs set status = 'running', attempts = attempts + 1, updated_at = ? "
                "where id = ? returning *",
                self._encode("updated_at", now), rows[0]["id"], what="job",
            )
        return Job.model_validate(row)

    async def finish_job(self, job_id: str, *, error: str | None = None) -> None:
        now = utcnow()
        async with self._connection() as conn:
            await conn.execute(
                "update relayx_jobs set status = ?, last_error = ?, updated_at = ? where id = ?",
                "failed" if error else "done", error, self._encode("updated_at", now), self._encode("id", job_id),
            )

    async def requeue_running_jobs(self) -> int:
        """At start-up: jobs left running by a crashed process become pending again."""
        async with self._connection() as conn:
            return await conn.execute(
                "update relayx_jobs set status = 'pending', updated_at = ? where status = 'running'",
                self._encode("updated_at", utcnow()),
            )
