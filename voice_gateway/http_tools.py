"""Calling an agent's HTTP tool: the business's own endpoint, signed, bounded, never fatal to the call.

The request is signed exactly like RelayX's webhooks (`RelayX-Signature: t=…,v1=HMAC-SHA256`, keyed
with WEBHOOK_SECRET), so a receiver verifies both the same way, and it goes through the same SSRF
guard (a private or loopback host only with WEBHOOK_ALLOW_PRIVATE). Header values may name secrets as
`${RELAYX_TOOL_…}`: they are read from the environment when the tool is called and never stored with
the agent. Any failure (refused host, timeout, non-2xx, unreadable answer) is a `ToolResult` with
`ok=False`: the agent says the tool's fallback line and the call goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from shared.agent_config import HttpTool
from shared.webhook_transport import PinnedBackend, WebhookTransport
from shared.webhooks import SIGNATURE_HEADER, WebhookURLError, check_target, sign

RESULT_MAX_CHARS = 2000
"""What the model is shown of an answer: a phone reply needs a few facts, not a document."""
_SECRET_REF = re.compile(r"\$\{(RELAYX_TOOL_[A-Z0-9_]+)\}")


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    content: str
    """The answer for the model (JSON text or plain text), or why the tool failed."""
    status: int | None = None
    ms: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "content": self.content, "status": self.status, "ms": self.ms}


def resolve_headers(headers: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Header values with `${RELAYX_TOOL_NAME}` replaced from the environment (only that prefix: an
    agent's settings must not be able to read the gateway's own secrets, such as DATABASE_URL)."""
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(name)
        return env[name]

    return {key: _SECRET_REF.sub(value, raw) for key, raw in headers.items()}


async def call_http_tool(
    tool: HttpTool, name: str, arguments: dict[str, Any], *, call_id: str, secret: str, allow_private: bool,
) -> ToolResult:
    """One signed request: POST {call_id, tool, arguments} as JSON, or GET with the arguments as query."""
    started = time.monotonic()

    def result(ok: bool, content: str, status: int | None = None) -> ToolResult:
        return ToolResult(ok, content[:RESULT_MAX_CHARS], status, round((time.monotonic() - started) * 1000))

    try:
        headers = resolve_headers(tool.headers)
    except KeyError as exc:
        return result(False, f"tool {name}: the environment has no {exc.args[0]}")
    try:
        target = await check_target(tool.url, allow_private=allow_private)
    except WebhookURLError as exc:
        return result(False, f"tool {name} refused: {exc}")
    transport = WebhookTransport(PinnedBackend(target.host, target.addresses)) if target is not None else None
    payload = {"call_id": call_id, "tool": name, "arguments": arguments}
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"User-Agent": "RelayX-Tools/1", **headers, SIGNATURE_HEADER: sign(secret, body if tool.method == "POST" else b"")}
    try:
        async with httpx.AsyncClient(timeout=tool.timeout_s, transport=transport, follow_redirects=False) as client:
            if tool.method == "POST":
                response = await client.post(tool.url, content=body,
                                             headers={**headers, "Content-Type": "application/json"})
            else:
                query = {key: v if isinstance(v, str) else json.dumps(v) for key, v in arguments.items()}
                response = await client.get(tool.url, params=query, headers=headers)
    except httpx.TimeoutException:
        return result(False, f"tool {name} timed out after {tool.timeout_s} s")
    except httpx.HTTPError as exc:
        return result(False, f"tool {name} failed: {type(exc).__name__}: {exc}")
    if not 200 <= response.status_code < 300:
        return result(False, f"tool {name} answered HTTP {response.status_code}", response.status_code)
    return result(True, response.text.strip() or "(done)", response.status_code)
