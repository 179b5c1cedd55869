"""A fake PostgREST (Supabase's /rest/v1) at the HTTP wire, backed by in-memory tables.

No PostgREST server can run here, so this speaks just enough of its HTTP API for what
`SupabaseStorage` sends through supabase-py: GET/POST/PATCH/DELETE on /rest/v1/<table>, `eq.`/`neq.`/
`lt.`/`lte.`/`gt.`/`gte.`/`in.`/`is.` filters, `select` (with one `!inner` embedding), `order`,
`limit`/`offset`, `Prefer: return=…` and `resolution=…`, `on_conflict`, unique and foreign-key errors
(409) as PostgreSQL codes, and the `apikey` + `Authorization: Bearer` check Supabase's gateway does (401).
Each request is handled without awaiting between its reads and writes, so it is atomic like a statement.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Row = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Table:
    """What the fake knows of a table: columns with defaults, unique keys, foreign keys."""

    columns: dict[str, Any]  # name -> default (a callable is called per row)
    unique: list[tuple[str, ...]]
    foreign: dict[str, str] = field(default_factory=dict)  # column -> referenced table (by id)
    identity: str | None = None
    rows: list[Row] = field(default_factory=list)
    counter: int = 0


def _schema() -> dict[str, Table]:
    """The tables of migrations/, as far as the REST storage uses them."""
    stamps = {"created_at": _now, "updated_at": _now}
    return {
        "agents": Table(
            {"id": _new_id, "name": None, "prompt": None, "greeting": None, "voice": None, "language": "en",
             "llm": dict, "settings": dict, **stamps, "deleted_at": None},
            unique=[("id",)],
        ),
        "calls": Table(
            {"id": _new_id, "agent_id": None, "to_number": None, "from_number": None, "direction": "outbound",
             "status": "queued", "duration": None, "metadata": dict, "twilio_call_sid": None, "error": None,
             **stamps, "started_at": None, "ended_at": None, "answered_by": None, "transferred_to": None,
             "transferred_at": None},
            unique=[("id",), ("twilio_call_sid",)], foreign={"agent_id": "agents"},
        ),
        "phone_numbers": Table(
            {"id": _new_id, "number": None, "agent_id": None, "inbound_enabled": True, **stamps},
            unique=[("id",), ("number",)], foreign={"agent_id": "agents"},
        ),
        "transcripts": Table(
            {"id": _new_id, "seq": None, "call_id": None, "speaker": None, "text": None, "timestamp": _now,
             "metrics": dict},
            unique=[("id",)], foreign={"call_id": "calls"}, identity="seq",
        ),
        "call_analysis": Table(
            {"id": _new_id, "call_id": None, "status": "completed", "summary": None, "key_points": list,
             "sentiment": None, "outcome": None, "data": dict, "error": None, "model": None, "condensed": False,
             "attempts": 0, **stamps},
            unique=[("id",), ("call_id",)], foreign={"call_id": "calls"},
        ),
        "webhook_events": Table(
            {"id": None, "call_id": None, "type": None, "dedupe_key": None, "url": None, "payload": None,
             "status": "pending", "attempts": 0, "last_error": None, **stamps, "delivered_at": None},
            unique=[("id",), ("dedupe_key",)], foreign={"call_id": "calls"},
        ),
        "webhook_attempts": Table(
            {"id": None, "event_id": None, "attempt": None, "status_code": None, "error": None,
             "duration_ms": None, "created_at": _now},
            unique=[("id",), ("event_id", "attempt")], foreign={"event_id": "webhook_events"},
        ),
        "relayx_jobs": Table(
            {"id": None, "task": None, "args": dict, "dedupe_key": None, "status": "pending", "attempts": 0,
             "run_at": None, "last_error": None, **stamps},
            unique=[("id",), ("dedupe_key",)],
        ),
    }


class PostgrestError(Exception):
    """An error answer: HTTP status plus PostgREST's JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _split(value: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside parentheses and double quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == sep:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [p for p in parts if p]


def _comparable(value: Any, column: str) -> Any:
    if isinstance(value, str) and (column.endswith("_at") or column in {"timestamp", "run_at"}):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _literal(current: Any, text: str, column: str) -> Any:
    """Read a filter's text as the column's type."""
    text = text.strip('"')
    if isinstance(current, bool):
        return text == "true"
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (dict, list)):
        return json.loads(text)
    return _comparable(text, column)


def _matches(row: Row, column: str, expr: str) -> bool:
    if column not in row:
        raise PostgrestError(400, "42703", f"column {column} does not exist")
    op, _, arg = expr.partition(".")
    value = row[column]
    if op == "is":
        return {"null": value is None, "true": value is True, "false": value is False}[arg]
    if value is None:
        return False
    have = _comparable(value, column)
    if op == "in":
        return any(have == _literal(value, item, column) for item in _split(arg.strip("()")))
    want = _literal(value, arg, column)
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
    }
    if op not in compare:
        raise PostgrestError(400, "PGRST100", f"unsupported operator {op!r}")
    return compare[op](have, want)


class FakePostgrest:
    """In-memory tables plus the ASGI app that serves them as PostgREST would."""

    reserved = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns"})

    def __init__(self, service_key: str) -> None:
        self.service_key = service_key
        self.tables = _schema()
        self.requests: list[tuple[str, str]] = []  # (method, path?query) for tests that check the wire
        self.app = Starlette(routes=[Route("/rest/v1/{table}", self._handle, methods=["GET", "POST", "PATCH", "DELETE"])])

    # --- the HTTP side ---------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        self.requests.append((request.method, f"{request.url.path}?{request.url.query}"))
        key = request.headers.get("apikey")
        if key != self.service_key or request.headers.get("authorization") != f"Bearer {self.service_key}":
            return JSONResponse(
                {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."},
                status_code=401,
            )
        body = await request.body()  # the only await: everything below runs as one step, like a statement
        try:
            table = self._table(request.path_params["table"])
            prefer = {p.strip() for p in request.headers.get("prefer", "").split(",") if p.strip()}
            params = request.query_params
            filters = [(k, v) for k, v in params.multi_items() if k not in self.reserved]
            if request.method == "GET":
                rows = self._select(table, filters, params)
                return JSONResponse(rows, status_code=200)
            if request.method == "POST":
                rows = self._insert(table, json.loads(body), prefer, params.get("on_conflict"))
                status = 201
            elif request.method == "PATCH":
                rows = self._update(table, json.loads(body), filters)
                status = 200
            else:
                rows = self._delete(table, filters)
                status = 200
        except PostgrestError as exc:
            return JSONResponse(
                {"code": exc.code, "message": exc.message, "details": None, "hint": None}, status_code=exc.status
            )
        if "return=representation" in prefer:
            return JSONResponse([self._shape(table, r, params.get("select", "*")) for r in rows], status_code=status)
        return Response(status_code=204)

    def _table(self, name: str) -> Table:
        if name not in self.tables:
            raise PostgrestError(404, "PGRST205", f"Could not find the table 'public.{name}' in the schema cache")
        return self.tables[name]

    # --- statements ------------------------------------------------------------------------------
    def _where(self, table: Table, filters: list[tuple[str, str]]) -> list[Row]:
        own = [(k, v) for k, v in filters if "." not in k]
        return [r for r in table.rows if all(_matches(r, k, v) for k, v in own)]

    def _select(self, table: Table, filters: list[tuple[str, str]], params: Any) -> list[Row]:
        rows = self._where(table, filters)
        embeds = self._embeds(table, params.get("select", "*"))
        kept = []
        for row in rows:
            shaped = self._shape(table, row, params.get("select", "*"))
            drop = False
            for name, inner, children in embeds:
                wanted = [(k.split(".", 1)[1], v) for k, v in filters if k.startswith(f"{name}.")]
                children = [c for c in children(row) if all(_matches(c, k, v) for k, v in wanted)]
                drop = drop or (inner and not children)
            if not drop:
                kept.append(shaped)
        for item in reversed(_split(params.get("order", ""))):
            column, _, direction = item.partition(".")
            present = [r for r in kept if r.get(column) is not None]
            missing = [r for r in kept if r.get(column) is None]
            present.sort(key=lambda r: _comparable(r[column], column), reverse=direction.startswith("desc"))
            kept = present + missing  # nulls last, PostgreSQL's default for asc
        offset = int(params.get("offset", 0))
        limit = params.get("limit")
        return kept[offset : offset + int(limit)] if limit is not None else kept[offset:]

    def _embeds(self, table: Table, select: str) -> list[tuple[str, bool, Callable[[Row], list[Row]]]]:
        out = []
        for item in _split(select):
            if "(" not in item:
                continue
            name, _, _ = item.partition("(")
            child_name, _, hint = name.partition("!")
            child = self._table(child_name)
            parent = next(n for n, t in self.tables.items() if t is table)
            column = next(c for c, target in child.foreign.items() if target == parent)
            out.append((child_name, hint == "inner", lambda row, c=child, col=column: [
                r for r in c.rows if r[col] == row["id"]
            ]))
        return out

    def _shape(self, table: Table, row: Row, select: str) -> Row:
        items = _split(select)
        plain = [i for i in items if "(" not in i]
        out = dict(row) if "*" in plain else {c: row[c] for c in plain if c in row}
        for name, _, children in self._embeds(table, select):
            child = self._table(name.split("!")[0])
            found = children(row)
            unique = any(len(key) == 1 and child.foreign.get(key[0]) for key in child.unique)
            out[name] = (found[0] if found else None) if unique else found
        return out

    def _check(self, table: Table, row: Row, *, skip: Row | None = None) -> tuple[str, ...] | None:
        """The unique key `row` collides on (with a row other than `skip`), after checking foreign keys."""
        for column, target in table.foreign.items():
            if row.get(column) is not None and not any(r["id"] == row[column] for r in self.tables[target].rows):
                raise PostgrestError(409, "23503", f'insert or update violates foreign key constraint on "{column}"')
        for key in table.unique:
            values = tuple(row.get(c) for c in key)
            if None in values:
                continue
            if any(r is not skip and tuple(r.get(c) for c in key) == values for r in table.rows):
                return key
        return None

    def _insert(self, table: Table, body: Any, prefer: set[str], on_conflict: str | None) -> list[Row]:
        target = tuple(c.strip() for c in on_conflict.split(",")) if on_conflict else ("id",)
        out = []
        for given in body if isinstance(body, list) else [body]:
            unknown = set(given) - set(table.columns)
            if unknown:
                raise PostgrestError(400, "PGRST204", f"Could not find the '{min(unknown)}' column")
            row = {c: (d() if callable(d) else d) for c, d in table.columns.items()}
            row.update(given)
            if table.identity:
                table.counter += 1
                row[table.identity] = table.counter
            clash = self._check(table, row)
            if clash is None:
                table.rows.append(row)
                out.append(row)
                continue
            if clash != target or not prefer & {"resolution=ignore-duplicates", "resolution=merge-duplicates"}:
                raise PostgrestError(409, "23505", f"duplicate key value violates unique constraint on {clash}")
            if "resolution=merge-duplicates" in prefer:
                existing = next(r for r in table.rows if tuple(r[c] for c in clash) == tuple(row[c] for c in clash))
                existing.update(given)
                out.append(existing)
        return out

    def _update(self, table: Table, changes: Row, filters: list[tuple[str, str]]) -> list[Row]:
        unknown = set(changes) - set(table.columns)
        if unknown:
            raise PostgrestError(400, "PGRST204", f"Could not find the '{min(unknown)}' column")
        rows = self._where(table, filters)
        for row in rows:
            clash = self._check(table, {**row, **changes}, skip=row)
            if clash is not None:
                raise PostgrestError(409, "23505", f"duplicate key value violates unique constraint on {clash}")
        for row in rows:
            row.update(changes)
        return rows

    def _delete(self, table: Table, filters: list[tuple[str, str]]) -> list[Row]:
        rows = self._where(table, filters)
        table.rows = [r for r in table.rows if all(r is not d for d in rows)]
        return rows
