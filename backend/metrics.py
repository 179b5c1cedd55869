"""The backend's `/metrics`: requests by route and status, calls placed, Twilio's webhooks.

Everything is counted by one ASGI middleware from the route that answered and its status, so no
route changes to be counted: a call placed is a POST to /calls/outbound (or the browser phone's
/phone/calls) and its result is its status (201 placed, 503 the gateway is full, 502 the provider
refused…); a Twilio webhook is any route under /twilio. Each app has its own registry, so several
backends built in one process (tests) never share a count.

Post-call jobs and webhook deliveries are counted where they run (`shared.jobs.metrics`): in this
process on SQLite, shown here too; in `relayx worker` on PostgreSQL, served on WORKER_METRICS_PORT.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.jobs import metrics as job_metrics

PREFIX = "relayx_backend"
"""Prometheus' text format; every scraper reads it."""
UNMATCHED = "unmatched"
"""The route label of a request no route answered (a 404): raw paths would make a label per URL."""

PLACING_ROUTES = {("POST", "/calls/outbound"): "api", ("POST", "/phone/calls"): "browser_phone"}
"""The routes that place an outbound call, and the `via` label of each."""
CALL_RESULTS = {201: "placed", 200: "placed", 503: "at_capacity", 502: "provider_refused",
                404: "unknown_agent", 422: "invalid"}
"""A placing route's status -> the call's result; any other status is `rejected` (key, rate limit)."""
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BackendMetrics:
    """The backend's registry and the few things it counts."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_http_request_seconds", "Time to answer an HTTP request, by route.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.calls = Counter(f"{PREFIX}_calls_placed", "Outbound calls asked for, by result and by where from.",
                             ["result", "via"], registry=r)
        for result in ("placed", "at_capacity", "provider_refused"):
            self.calls.labels(result, "api")  # the results that matter show, at 0, from the first scrape
        self.webhooks = Counter(f"{PREFIX}_twilio_webhooks", "Twilio webhooks received, by route and status.",
                                ["route", "status"], registry=r)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        via = PLACING_ROUTES.get((method, route))
        if via is not None:
            self.calls.labels(CALL_RESULTS.get(status, "rejected"), via).inc()
        if route.startswith("/twilio/"):
            self.webhooks.labels(route, str(status)).inc()

    def render(self) -> bytes:
        """This app's counts, then the process's post-call work (`shared.jobs.metrics`: run here on
        SQLite; on PostgreSQL by `relayx worker`, so they stay at 0 in a backend there)."""
        return generate_latest(self.registry) + generate_latest(job_metrics.REGISTRY)


def route_of(scope: Scope) -> str:
    """The template of the route that answered (`/calls/{call_id}`), never the raw path."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts every HTTP request once it is answered (pure ASGI: streamed bodies pass untouched)."""

    def __init__(self, app: ASGIApp, metrics: BackendMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(scope["method"], route_of(scope), status, self.clock() - started)
