"""Supabase over its REST API (PostgREST, through supabase-py) when no database connection string is at hand.

Every write is one HTTP request, so there are no transactions. What the SQL implementation does in a
transaction is done here as a conditional PATCH (its filters repeat what was read, so a concurrent
change makes it match no row) that is re-read and retried a bounded number of times: a late `ringing`
never overwrites a terminal status, and two job runners never claim the same job.

The schema cannot be created over REST: `migrate()` changes nothing and returns [] (the backend calls it
at every start); apply migrations with `relayx migrate` and DATABASE_URL set to the project's
PostgreSQL connection string, or with the Supabase CLI (`supabase db push`), which reads migrations/ too.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal, Protocol

import httpx
from postgrest import APIError, APIResponse, AsyncRequestBuilder
from postgrest.types import ReturnMethod
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from supabase._async.client import SupabaseException

from shared import call_status
from shared.errors import ConfigurationError, NotFound, StorageError, StorageUnavailable
from shared.storage import rows
from shared.storage.base import (
    Agent,
    Call,
    CallAnalysis,
    Direction,
    Job,
    PhoneNumber,
    Speaker,
    StorageKind,
    TranscriptLine,
    WebhookAttempt,
    WebhookEvent,
    parse_id,
    utcnow,
)

log = logging.getLogger(__name__)
# A conditional PATCH loses only to a concurrent write of the same row; a handful of re-reads is plenty
# (each loss means another writer made progress).
_MAX_RACES = 8


class _Query(Protocol):
    async def execute(self) -> APIResponse: ...


def _uuid(value: str) -> str:
    """An id as PostgREST filters on it; a malformed one is NotFound, as on SQL."""
    return str(parse_id(value))


def _error(exc: APIError, what: str) -> StorageError:
    message = exc.message or "request failed"
    code = exc.code or ""
    if "api key" in message.lower() or code in {"401", "403"} or code.startswith("PGRST3"):
        return StorageError(
            f"Supabase refused the service role key while {what} ({code or 'unauthorized'}: {message}); "
            "check SUPABASE_SERVICE_ROLE_KEY (the service_role secret, not the anon key)"
        )
    return StorageError(f"Supabase REST error while {what}: {code} {message}".strip())


class SupabaseStorage:
    """The `Storage` Protocol over Supabase's PostgREST API with the service role key (which bypasses RLS)."""

    kind: StorageKind = "supabase"
    dsn: str | None = None  # no PostgreSQL connection: jobs use the `relayx_jobs` table, as on SQLite

    def __init__(self, url: str, service_role_key: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self._key = service_role_key
        self._timeout_s = timeout_s
        self._client: AsyncClient | None = None
        self._http: httpx.AsyncClient | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._client is not None:
            return
        http = httpx.AsyncClient(timeout=self._timeout_s)
        try:
            self._client = await acreate_client(self.url, self._key, options=AsyncClientOptions(httpx_client=http))
        except SupabaseException as exc:
            await http.aclose()
            raise ConfigurationError(f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY: {exc.message}") from exc
        self._http = http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None
        self._client = None

    async def ping(self) -> None:
        await self._rows(self._table("agents").select("id").limit(1), what="checking the connection")

    async def migrate(self) -> list[str]:
        """Nothing can be applied over REST: say how, and report nothing applied."""
        log.info(
            "Supabase REST storage does not apply migrations; run `relayx migrate` with DATABASE_URL set to the "
            "project's PostgreSQL connection string (or `supabase db push`)"
        )
        return []

    # --- helpers -----------------------------------------------------------------------------------
    def _table(self, name: str) -> AsyncRequestBuilder:
        if self._client is None:
            raise StorageError("storage is not open")
        return self._client.table(name)

    async def _rows(self, query: _Query, *, what: str) -> list[dict[str, Any]]:
        try:
            response = await query.execute()
        except APIError as exc:
            raise _error(exc, what) from exc
        except httpx.HTTPError as exc:  # no answer from the gateway: the write may succeed later
            raise StorageUnavailable(f"Supabase REST request failed while {what}: {exc!r}") from exc
        return [dict(row) for row in response.data if isinstance(row, dict)]

    async def _one(self, query: _Query, *, what: str) -> dict[str, Any]:
        rows = await self._rows(query, what=what)
        if not rows:
            raise NotFound(what)
        return rows[0]

    # --- agents ------------------------------------------------------------------------------------
    async def create_agent(self, data: dict[str, Any]) -> Agent:
        row = await self._one(self._table("agents").insert(rows.new_agent(data)), what="creating an agent")
        return Agent.model_validate(row)

    async def get_agent(self, agent_id: str) -> Agent:
        query = self._table("agents").select("*").eq("id", _uuid(agent_id)).is_("deleted_at", "null")
        return Agent.model_validate(await self._one(query, what=f"agent {agent_id}"))

    async def list_agents(self, *, limit: int = 100, offset: int = 0) -> list[Agent]:
        query = (
            self._table("agents").select("*").is_("deleted_at", "null")
            .order("created_at", desc=True).order("id").limit(limit).offset(offset)
        )
        return [Agent.model_validate(r) for r in await self._rows(query, what="listing agents")]

    async def update_agent(self, agent_id: str, changes: dict[str, Any]) -> Agent:
        values = rows.agent_changes(changes)
        query = self._table("agents").update(values).eq("id", _uuid(agent_id)).is_("deleted_at", "null")
        return Agent.model_validate(await self._one(query, what=f"agent {agent_id}"))

    async def delete_agent(self, agent_id: str) -> None:
        """Soft delete: the agent's calls and transcripts stay readable."""
        now = utcnow()
        query = (
            self._table("agents").update({"deleted_at": now, "updated_at": now})
            .eq("id", _uuid(agent_id)).is_("deleted_at", "null")
        )
        await self._one(query, what=f"agent {agent_id}")

    # --- phone numbers -----------------------------------------------------------------------------
    async def create_phone_number(self, data: dict[str, Any]) -> PhoneNumber:
        values = rows.new_phone_number({**data, "agent_id": _uuid(data["agent_id"])})
        row = await self._one(self._table("phone_numbers").insert(values), what="creating a phone number")
        return PhoneNumber.model_validate(row)

    async def get_phone_number(self, number_id: str) -> PhoneNumber:
        query = self._table("phone_numbers").select("*").eq("id", _uuid(number_id))
        return PhoneNumber.model_validate(await self._one(query, what=f"phone number {number_id}"))

    async def find_phone_number(self, number: str) -> PhoneNumber | None:
        found = await self._rows(
            self._table("phone_numbers").select("*").eq("number", number), what=f"looking up number {number}"
        )
        return PhoneNumber.model_validate(found[0]) if found else None

    async def list_phone_numbers(
        self, *, agent_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[PhoneNumber]:
        query = self._table("phone_numbers").select("*")
        if agent_id is not None:
            query = query.eq("agent_id", _uuid(agent_id))
        query = query.order("number").order("id").limit(limit).offset(offset)
        return [PhoneNumber.model_validate(r) for r in await self._rows(query, what="listing phone numbers")]

    async def update_phone_number(self, number_id: str, changes: dict[str, Any]) -> PhoneNumber:
        values = rows.phone_number_changes(changes)
        if "agent_id" in values:
            values["agent_id"] = _uuid(values["agent_id"])
        query = self._table("phone_numbers").update(values).eq("id", _uuid(number_id))
        return PhoneNumber.model_validate(await self._one(query, what=f"phone number {number_id}"))

    async def delete_phone_number(self, number_id: str) -> None:
        """A hard delete: calls keep the number they were made to in `to_number`."""
        await self._one(
            self._table("phone_numbers").delete().eq("id", _uuid(number_id)), what=f"phone number {number_id}"
        )

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
        values = rows.new_call(_uuid(agent_id), to_number, from_number, metadata, direction, twilio_call_sid)
        return Call.model_validate(await self._one(self._table("calls").insert(values), what="creating a call"))

    async def get_call(self, call_id: str) -> Call:
        query = self._table("calls").select("*").eq("id", _uuid(call_id))
        return Call.model_validate(await self._one(query, what=f"call {call_id}"))

    async def find_call_by_sid(self, twilio_call_sid: str) -> Call | None:
        query = self._table("calls").select("*").eq("twilio_call_sid", twilio_call_sid)
        found = await self._rows(query, what=f"looking up call SID {twilio_call_sid}")
        return Call.model_validate(found[0]) if found else None

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
        # Filtering on the analysis is an inner join, done by PostgREST's resource embedding.
        joined = outcome is not None or sentiment is not None
        columns = ("*", "call_analysis!inner(outcome,sentiment)") if joined else ("*",)
        query = self._table("calls").select(*columns)
        if agent_id is not None:
            query = query.eq("agent_id", _uuid(agent_id))
        if campaign_id is not None:
            query = query.eq("campaign_id", _uuid(campaign_id))
        if status is not None:
            query = query.eq("status", status)
        if outcome is not None:
            query = query.eq("call_analysis.outcome", outcome)
        if sentiment is not None:
            query = query.eq("call_analysis.sentiment", sentiment)
        query = query.order("created_at", desc=True).order("id").limit(limit).offset(offset)
        rows = await self._rows(query, what="listing calls")
        return [Call.model_validate({k: v for k, v in r.items() if k != "call_analysis"}) for r in rows]

    async def update_call(self, call_id: str, changes: dict[str, Any]) -> Call:
        query = self._table("calls").update(rows.call_changes(changes)).eq("id", _uuid(call_id))
        return Call.model_validate(await self._one(query, what=f"call {call_id}"))

    async def apply_call_status(
        self,
        call_id: str,
        status: str,
        *,
        duration: int | None = None,
        twilio_call_sid: str | None = None,
        at: datetime | None = None,
    ) -> Call:
        """Move a call forward in its lifecycle; stale or repeated events change nothing but may still
        fill in a missing duration or call SID.

        Read, decide with `call_status.should_apply`, then PATCH only if every column the decision read
        still holds the value read (status included); a lost race re-reads and decides again.
        """
        status = call_status.normalize(status)
        at = at or utcnow()
        key = _uuid(call_id)
        for _ in range(_MAX_RACES):
            current = await self._one(
                self._table("calls").select("*").eq("id", key), what=f"call {call_id}"
            )
            changes = call_status.transition(
                current, status, at=at, duration=duration, twilio_call_sid=twilio_call_sid
            )
            if not changes:
                return Call.model_validate(current)
            query = self._table("calls").update({**changes, "updated_at": utcnow()}).eq("id", key)
            for column in {"status", *changes}:
                value = current[column]
                query = query.is_(column, "null") if value is None else query.eq(column, value)
            rows = await self._rows(query, what=f"updating the status of call {call_id}")
            if rows:
                return Call.model_validate(rows[0])
        raise StorageError(f"call {call_id}: status update lost {_MAX_RACES} races in a row")

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
        values = rows.new_transcript_line(
            _uuid(call_id), speaker, text, timestamp, metrics, _uuid(line_id) if line_id else None
        )
        inserted = await self._rows(
            self._table("transcripts").upsert(values, on_conflict="id", ignore_duplicates=True),
            what=f"adding a transcript line to call {call_id}",
        )
        if inserted:
            return TranscriptLine.model_validate(inserted[0])
        row = await self._one(  # a retry: the line was stored by the first try
            self._table("transcripts").select("*").eq("id", values["id"]), what="transcript line"
        )
        return TranscriptLine.model_validate(row)

    async def list_transcripts(self, call_id: str) -> list[TranscriptLine]:
        query = self._table("transcripts").select("*").eq("call_id", _uuid(call_id)).order("timestamp").order("seq")
        return [TranscriptLine.model_validate(r) for r in await self._rows(query, what=f"transcript of {call_id}")]

    # --- analysis ----------------------------------------------------------------------------------
    async def upsert_analysis(self, call_id: str, values: dict[str, Any]) -> CallAnalysis:
        """One row per call: a re-run replaces the previous analysis instead of adding a row.

        `id` and `created_at` are left to the column defaults: a merge sets every column it is sent,
        and the first row's id and creation time must survive a re-run.
        """
        row_values = {"call_id": _uuid(call_id), **rows.analysis_fields(values), "updated_at": utcnow()}
        query = self._table("call_analysis").upsert(row_values, on_conflict="call_id")
        return CallAnalysis.model_validate(await self._one(query, what=f"analysis of call {call_id}"))

    async def get_analysis(self, call_id: str) -> CallAnalysis:
        query = self._table("call_analysis").select("*").eq("call_id", _uuid(call_id))
        return CallAnalysis.model_validate(await self._one(query, what=f"analysis of call {call_id}"))

    # --- webhook events ----------------------------------------------------------------------------
    async def create_webhook_event(
        self, *, call_id: str, type: str, url: str, payload: dict[str, Any], dedupe_key: str
    ) -> WebhookEvent:
        """Insert the event once per `dedupe_key`; a re-run (a retried job) gets the existing row back."""
        values = rows.new_webhook_event(_uuid(call_id), type, url, payload, dedupe_key)
        inserted = await self._rows(
            self._table("webhook_events").upsert(values, on_conflict="dedupe_key", ignore_duplicates=True),
            what="creating a webhook event",
        )
        if inserted:
            return WebhookEvent.model_validate(inserted[0])
        query = self._table("webhook_events").select("*").eq("dedupe_key", dedupe_key)
        return WebhookEvent.model_validate(await self._one(query, what="webhook event"))

    async def get_webhook_event(self, event_id: str) -> WebhookEvent:
        query = self._table("webhook_events").select("*").eq("id", _uuid(event_id))
        return WebhookEvent.model_validate(await self._one(query, what=f"webhook event {event_id}"))

    async def record_webhook_attempt(
        self,
        event_id: str,
        attempt: int,
        *,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
        outcome: Literal["pending", "delivered", "failed"],
    ) -> WebhookEvent:
        """Log one attempt, then move the event on (a repeated attempt number is logged once).

        Two requests, not one transaction: the log is written first, so a crash between them leaves
        the event where it was and the retried job repeats the attempt, which converges.
        """
        now = utcnow()
        key = _uuid(event_id)
        attempt_row = rows.new_webhook_attempt(key, attempt, status_code, error, duration_ms, now)
        await self._rows(
            self._table("webhook_attempts").upsert(
                attempt_row, on_conflict="event_id,attempt", ignore_duplicates=True, returning=ReturnMethod.minimal
            ),
            what=f"logging attempt {attempt} of webhook event {event_id}",
        )
        changes = rows.attempt_outcome(outcome, attempt, error, now)
        query = self._table("webhook_events").update(changes).eq("id", key)
        return WebhookEvent.model_validate(await self._one(query, what=f"webhook event {event_id}"))

    async def list_webhook_events(self, call_id: str) -> list[WebhookEvent]:
        """A call's events, oldest first, each with its attempts in order."""
        events = await self._rows(
            self._table("webhook_events").select("*").eq("call_id", _uuid(call_id)).order("created_at").order("id"),
            what=f"listing webhook events of call {call_id}",
        )
        by_event: dict[str, list[WebhookAttempt]] = {}
        if events:
            attempts = await self._rows(
                self._table("webhook_attempts").select("*").in_("event_id", [e["id"] for e in events])
                .order("attempt"),
                what=f"listing webhook attempts of call {call_id}",
            )
            for row in attempts:
                by_event.setdefault(str(row["event_id"]), []).append(WebhookAttempt.model_validate(row))
        return [WebhookEvent.model_validate({**e, "attempt_log": by_event.get(str(e["id"]), [])}) for e in events]

    # --- the embedded job queue (the backend runs it when storage is not PostgreSQL) ----------------
    async def enqueue_job(
        self, task: str, args: dict[str, Any], *, dedupe_key: str | None = None, run_at: datetime | None = None
    ) -> bool:
        """Add a pending job; False when a job with the same `dedupe_key` was ever enqueued."""
        values = rows.new_job(task, args, dedupe_key, run_at)
        table = self._table("relayx_jobs")
        query = (
            table.upsert(values, on_conflict="dedupe_key", ignore_duplicates=True) if dedupe_key else table.insert(values)
        )
        return bool(await self._rows(query, what=f"enqueueing job {task}"))

    async def claim_job(self) -> Job | None:
        """Take the oldest due pending job (marking it running), or None.

        The PATCH repeats `status = pending` and the attempts read, so of two runners claiming the
        same job one gets no row and looks again.
        """
        for _ in range(_MAX_RACES):
            now = utcnow()
            due = await self._rows(
                self._table("relayx_jobs").select("id", "attempts").eq("status", "pending").lte("run_at", now.isoformat())
                .order("run_at").order("id").limit(1),
                what="looking for a due job",
            )
            if not due:
                return None
            claimed = await self._rows(
                self._table("relayx_jobs")
                .update({"status": "running", "attempts": due[0]["attempts"] + 1, "updated_at": now})
                .eq("id", due[0]["id"]).eq("status", "pending").eq("attempts", due[0]["attempts"]),
                what="claiming a job",
            )
            if claimed:
                return Job.model_validate(claimed[0])
        return None  # others are claiming faster than us: the runner polls again

    async def finish_job(self, job_id: str, *, error: str | None = None) -> None:
        changes = {"status": "failed" if error else "done", "last_error": error, "updated_at": utcnow()}
        await self._rows(
            self._table("relayx_jobs").update(changes, returning=ReturnMethod.minimal).eq("id", _uuid(job_id)),
            what=f"finishing job {job_id}",
        )

    async def requeue_running_jobs(self) -> int:
        """At start-up: jobs left running by a crashed process become pending again."""
        rows = await self._rows(
            self._table("relayx_jobs").update({"status": "pending", "updated_at": utcnow()}).eq("status", "running"),
            what="requeueing interrupted jobs",
        )
        return len(rows)
