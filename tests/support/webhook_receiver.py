"""A local webhook receiver: records each POST's raw body and headers; can answer 500 a few times first."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class WebhookReceiver:
    """Answers 500 to the first `fail_first` deliveries of each event id, then 200."""

    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            event_id = request.headers.get("relayx-event-id", "")
            with self._lock:
                count = self._seen.get(event_id, 0) + 1
                self._seen[event_id] = count
                status = 500 if count <= self.fail_first else 200
                self.received.append(Received(body, dict(request.headers), status))
            self.arrived.set()
            return Response(status_code=status)

        return app

    def accepted(self, type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.status == 200 and r.event["type"] == type]
