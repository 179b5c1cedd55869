"""Webhook events: their JSON bodies, Stripe-style signatures, the SSRF guard, and one delivery attempt
to the address it checked (shared/webhook_transport.py).

Retries are not a loop here: each attempt is a job of its own (see shared/jobs/), so a restart or
a crash between attempts loses nothing and every attempt is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.storage.base import Agent, Call, CallAnalysis, TranscriptLine, WebhookEvent
from shared.webhook_transport import PinnedBackend, WebhookTransport

SIGNATURE_HEADER = "RelayX-Signature"
EVENT_TYPES = ("call.started", "call.ended", "call.analyzed")
# Signatures older than this are refused by `verify` (replay guard for receivers).
DEFAULT_TOLERANCE_S = 300
LATENCY_KEYS = ("voice_to_voice_ms", "end_of_turn_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms")


class WebhookURLError(ValueError):
    """A webhook target that must not be called; the message says why."""


# --- signing ---------------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as Stripe signs its webhooks."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance_s: int = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time, check age."""
    if not header:
        return False
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- where to send ---------------------------------------------------------------------------------


def check_url_syntax(url: str) -> str:
    """http(s) with a host, nothing else (no file:, no credentials in the URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError(f"webhook URL must be http:// or https://, got {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise WebhookURLError("webhook URL has no host")
    if parts.username or parts.password:
        raise WebhookURLError("webhook URL must not carry credentials")
    return url


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def literal_host_is_private(url: str) -> bool:
    """True for `localhost` or a literal loopback/private/link-local IP (no DNS look-up)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not _is_public(host)
    except ValueError:
        return False


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses as the system resolver answers them (getaddrinfo order, no repeats)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class CheckedTarget:
    """A webhook host and every address it resolved to, all public: the only addresses to connect to."""

    host: str
    addresses: tuple[str, ...]


def _private(why: str) -> WebhookURLError:
    return WebhookURLError(f"webhook {why} (set WEBHOOK_ALLOW_PRIVATE=true to allow it)")


async def check_target(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> CheckedTarget | None:
    """Refuse a target that resolves to loopback, private or link-local addresses (SSRF guard).

    The host is looked up once, here, at every attempt (DNS can change between attempts); the
    delivery then connects to these addresses only (shared/webhook_transport.py), so a second,
    different DNS answer never reaches a socket. None when private targets are allowed: no check,
    the client resolves and connects as usual.
    """
    check_url_syntax(url)
    if allow_private:
        return None
    if literal_host_is_private(url):
        raise _private(f"target {urlsplit(url).hostname} is a private or loopback address")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookURLError(f"webhook URL is not valid: {exc}") from None
    # The host exactly as httpx will hand it to the connection (IDNA-encoded, lower case, no brackets).
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        ipaddress.ip_address(host)
        addresses: Sequence[str] = [host]
    except ValueError:
        try:
            addresses = await resolver(host, port)
        except socket.gaierror as exc:
            raise WebhookURLError(f"webhook host {host} does not resolve: {exc}") from None
    if not addresses:
        raise WebhookURLError(f"webhook host {host} does not resolve: no addresses")
    for address in addresses:
        if not _is_public(address):
            raise _private(f"host {host} resolves to private address {address}")
    return CheckedTarget(host, tuple(addresses))


def target_url(agent: Agent, default_url: str | None) -> str | None:
    """The agent's own webhook_url, else the global WEBHOOK_URL, else none (no events)."""
    return agent.settings.webhook_url or default_url or None


# --- event bodies ----------------------------------------------------------------------------------


def _call_fields(call: Call) -> dict[str, Any]:
    return json.loads(call.model_dump_json(include={
        "id", "agent_id", "to_number", "from_number", "direction", "status", "duration", "metadata",
        "error", "created_at", "started_at", "ended_at", "answered_by", "transferred_to", "transferred_at",
    }))


def call_started_data(call: Call) -> dict[str, Any]:
    return {"call": _call_fields(call)}


def call_ended_data(call: Call, transcript: list[TranscriptLine]) -> dict[str, Any]:
    """Status, duration, every transcript line, the latency metrics of each agent turn, and the tools the
    agent called (each also a transcript row, in order) with their arguments and results."""
    lines = [json.loads(line.model_dump_json(include={"speaker", "text", "timestamp", "metrics"}))
             for line in transcript]
    latencies = [
        {"turn": index, **{k: line.metrics[k] for k in LATENCY_KEYS if k in line.metrics}}
        for index, line in enumerate((line for line in transcript if line.speaker == "agent"), start=1)
    ]
    tool_calls = [
        {"tool": line.metrics.get("tool"), "arguments": line.metrics.get("arguments"), "ok": line.metrics.get("ok"),
         "result": line.metrics.get("result"), "timestamp": line.timestamp.isoformat()}
        for line in transcript if line.speaker == "tool"
    ]
    return {"call": _call_fields(call), "transcript": lines, "latencies": latencies, "tool_calls": tool_calls}


def call_analyzed_data(call: Call, analysis: CallAnalysis) -> dict[str, Any]:
    fields = {"status", "summary", "key_points", "sentiment", "outcome", "data", "error", "model", "condensed"}
    return {"call": _call_fields(call), "analysis": json.loads(analysis.model_dump_json(include=fields))}


def envelope(type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body's outer shape; storage adds the unique `id` (the event row's id) on insert."""
    return {"type": type, "created": int(time.time()), "data": data}


# --- one attempt -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    """What one POST did; `outcome` says whether to stop (delivered/failed) or try again (pending)."""

    status_code: int | None
    error: str | None
    duration_ms: int
    outcome: Literal["pending", "delivered", "failed"]


def backoff_s(attempt: int, base_s: float) -> float:
    """Delay before attempt `attempt + 1`: base, 2×base, 4×base, … (30 s base: ~64 min over 8 attempts)."""
    return float(base_s * 2 ** (attempt - 1))


async def attempt_delivery(
    event: WebhookEvent,
    *,
    secret: str,
    attempt: int,
    max_attempts: int,
    timeout_s: float,
    allow_private: bool,
    resolver: Resolver = resolve,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> AttemptResult:
    """POST the event once, signed now. 2xx is delivered; a refused target fails at once; a timeout,
    connection error or other answer (a redirect too: it is never followed) is retried until `max_attempts`.

    The connection goes to an address `check_target` checked, not to a second look-up of the name.
    `resolver` and `network_backend` replace DNS and sockets in tests.
    """
    started = time.monotonic()

    def done(code: int | None, error: str | None, outcome: Literal["pending", "delivered", "failed"]) -> AttemptResult:
        if outcome == "pending" and attempt >= max_attempts:
            outcome = "failed"
        return AttemptResult(code, error, round((time.monotonic() - started) * 1000), outcome)

    try:
        target = await check_target(event.url, allow_private=allow_private, resolver=resolver)
    except WebhookURLError as exc:
        return done(None, f"refused: {exc}", "failed")
    transport: httpx.AsyncBaseTransport | None = None
    if target is not None:
        transport = WebhookTransport(PinnedBackend(target.host, target.addresses, network_backend))
    elif network_backend is not None:
        transport = WebhookTransport(network_backend)
    body = json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "RelayX-Webhooks/1",
        SIGNATURE_HEADER: sign(secret, body),
        "RelayX-Event-Id": event.id,
        "RelayX-Event-Type": event.type,
    }
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport, follow_redirects=False) as client:
            response = await client.post(event.url, content=body, headers=headers)
    except httpx.TimeoutException:
        return done(None, f"timed out after {timeout_s} s", "pending")
    except httpx.HTTPError as exc:
        return done(None, f"{type(exc).__name__}: {exc}"[:300], "pending")
    if 200 <= response.status_code < 300:
        return done(response.status_code, None, "delivered")
    return done(response.status_code, f"HTTP {response.status_code}", "pending")
