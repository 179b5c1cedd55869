"""A local fake of Ollama's server, at the wire: POST /api/chat answered as NDJSON, as Ollama streams.

Named a fake: Ollama's server cannot run here. It answers from a script instead of a model, so an
end-to-end test can make the model call a tool, deterministically: a turn whose last message is the
caller's gets the scripted tool call (when the request offers that tool), a turn whose last message is
a tool's result gets the scripted spoken answer (it may quote the result), anything else a plain line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


@dataclass
class FakeOllama:
    tool_call: dict[str, Any] | None = None
    """{"name": …, "arguments": {…}} to call when offered, once per caller line."""
    answer_after_tool: str = "Here is what I found: {result}"
    plain: str = "Sure, I can help with that."
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/chat")
        async def chat(request: Request) -> StreamingResponse:
            body = await request.json()
            self.requests.append(body)
            return StreamingResponse(self._lines(body), media_type="application/x-ndjson")

        return app

    async def _lines(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        messages = body.get("messages") or [{}]
        last = messages[-1]
        offered = {tool["function"]["name"] for tool in body.get("tools") or []}
        model = body.get("model", "fake")
        if last.get("role") == "tool":
            text = self.answer_after_tool.format(result=last.get("content", ""))
        elif self.tool_call is not None and self.tool_call["name"] in offered and last.get("role") == "user" \
                and body.get("options", {}).get("num_predict", 0) > 1:
            call = {"function": {"name": self.tool_call["name"], "arguments": self.tool_call.get("arguments", {})}}
            yield _line({"model": model, "message": {"role": "assistant", "content": "", "tool_calls": [call]},
                         "done": False})
            yield _line({"model": model, "message": {"role": "assistant", "content": ""}, "done": True})
            return
        else:
            text = self.plain
        for word in text.split(" "):
            yield _line({"model": model, "message": {"role": "assistant", "content": word + " "}, "done": False})
        yield _line({"model": model, "message": {"role": "assistant", "content": ""}, "done": True})


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event) + "\n").encode()
