"""/metrics on both services: what each figure counts, the text format a scraper reads, the token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client.parser import text_string_to_metric_families

from backend.metrics import BackendMetrics, MetricsMiddleware, route_of
from shared.metrics_http import bearer_matches, metrics_response
from voice_gateway.metrics import AUDIBLE_GAP_MS, GatewayMetrics, Live


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels (parsed as a scraper parses it)."""
    text = text.decode() if isinstance(text, bytes) else text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@dataclass
class FakeWriter:
    spooled: int = 0


@dataclass
class FakeCall:
    turns: list[dict[str, Any]] = field(default_factory=list)
    barge_ins: int = 0
    writer: FakeWriter = field(default_factory=FakeWriter)


def live(**overrides: Any) -> Live:
    values: dict[str, Any] = {"active_calls": 0, "streams": 0, "max_calls": 4, "accepting": True, "draining": False,
                              "queue_depth": 0, "spool_pending": 0, "spool_set_aside": 0, "spool_replayed": 0}
    values.update(overrides)
    return Live(**{name: (lambda v=value: v) for name, value in values.items()})


TURN = {"end_of_turn_ms": 520, "stt_ms": 180, "llm_first_token_ms": 240, "tts_first_audio_ms": 90,
        "voice_to_voice_ms": 1150, "max_frame_late_ms": 3}


# --- the gateway ------------------------------------------------------------------------------------


def test_live_figures_are_read_at_scrape_time() -> None:
    state = {"calls": 1, "draining": False}
    metrics = GatewayMetrics(Live(
        active_calls=lambda: state["calls"], streams=lambda: state["calls"], max_calls=lambda: 2,
        accepting=lambda: True, draining=lambda: bool(state["draining"]), queue_depth=lambda: 3,
        spool_pending=lambda: 5, spool_set_aside=lambda: 1, spool_replayed=lambda: 7))
    first = samples(metrics.render([]))
    assert first[("relayx_gateway_active_calls", ())] == 1
    assert first[("relayx_gateway_max_calls", ())] == 2
    assert first[("relayx_gateway_accepting", ())] == 1 and first[("relayx_gateway_draining", ())] == 0
    assert first[("relayx_gateway_compute_queue_depth", ())] == 3
    assert first[("relayx_gateway_spool_pending", ())] == 5
    assert first[("relayx_gateway_spool_set_aside", ())] == 1
    assert first[("relayx_gateway_spool_replayed_total", ())] == 7
    state.update(calls=0, draining=True)
    second = samples(metrics.render([]))
    assert second[("relayx_gateway_active_calls", ())] == 0
    assert second[("relayx_gateway_draining", ())] == 1
    assert second[("relayx_gateway_accepting", ())] == 0  # a draining gateway takes nothing


def test_no_limit_reads_as_zero_max_calls() -> None:
    assert samples(GatewayMetrics(live(max_calls=None)).render([]))[("relayx_gateway_max_calls", ())] == 0


def test_every_refusal_reason_shows_from_the_first_scrape_and_counts() -> None:
    metrics = GatewayMetrics(live())
    metrics.refuse("draining")
    metrics.refuse("draining")
    metrics.refuse("capacity")
    scraped = samples(metrics.render([]))
    refused = {dict(labels)["reason"]: value for (name, labels), value in scraped.items()
               if name == "relayx_gateway_streams_refused_total"}
    assert refused == {"rate_limited": 0, "unauthorized": 0, "capacity": 1, "draining": 2}


def test_a_turn_feeds_each_stage_histogram_in_seconds() -> None:
    metrics = GatewayMetrics(live())
    metrics.observe_turn(TURN)
    scraped = samples(metrics.render([]))
    for stage, ms in (("end_of_turn", 520), ("stt", 180), ("llm_first_token", 240), ("tts_first_audio", 90),
                      ("voice_to_voice", 1150)):
        assert scraped[("relayx_gateway_stage_seconds_count", (("stage", stage),))] == 1, stage
        assert scraped[("relayx_gateway_stage_seconds_sum", (("stage", stage),))] == ms / 1000, stage
    # 1.15 s is above the 1.0 bucket and inside the 1.5 one
    assert scraped[("relayx_gateway_stage_seconds_bucket", (("le", "1.0"), ("stage", "voice_to_voice")))] == 0
    assert scraped[("relayx_gateway_stage_seconds_bucket", (("le", "1.5"), ("stage", "voice_to_voice")))] == 1
    assert scraped[("relayx_gateway_turns_total", ())] == 1


def test_a_greeting_without_caller_stages_observes_only_what_it_has() -> None:
    metrics = GatewayMetrics(live())
    metrics.observe_turn({"tts_first_audio_ms": 120, "max_frame_late_ms": 0, "llm_error": "x"})
    scraped = samples(metrics.render([]))
    assert scraped[("relayx_gateway_stage_seconds_count", (("stage", "tts_first_audio"),))] == 1
    assert ("relayx_gateway_stage_seconds_count", (("stage", "stt"),)) not in scraped
    assert scraped[("relayx_gateway_llm_errors_total", ())] == 1


def test_a_gap_above_40_ms_is_counted_and_every_gap_lands_in_the_histogram() -> None:
    metrics = GatewayMetrics(live())
    for late in (0, AUDIBLE_GAP_MS, AUDIBLE_GAP_MS + 1, 300):
        metrics.observe_turn({"max_frame_late_ms": late})
    scraped = samples(metrics.render([]))
    assert scraped[("relayx_gateway_turns_with_gap_total", ())] == 2  # 40 ms itself is not a gap
    assert scraped[("relayx_gateway_reply_max_gap_seconds_count", ())] == 4
    assert scraped[("relayx_gateway_reply_max_gap_seconds_bucket", (("le", "0.04"),))] == 2
    assert scraped[("relayx_gateway_reply_max_gap_seconds_bucket", (("le", "0.32"),))] == 4


def test_a_live_call_is_counted_once_across_scrapes_and_its_close() -> None:
    metrics = GatewayMetrics(live())
    call = FakeCall()
    call.turns.append(TURN)
    call.barge_ins = 1
    assert samples(metrics.render([call]))[("relayx_gateway_turns_total", ())] == 1
    assert samples(metrics.render([call]))[("relayx_gateway_turns_total", ())] == 1  # seen already
    call.turns.append(TURN | {"interrupted": True})
    call.barge_ins = 2
    call.writer.spooled = 3
    metrics.call_ended(call)  # the rest is counted when the call closes, and the call forgotten
    scraped = samples(metrics.render([]))
    assert scraped[("relayx_gateway_turns_total", ())] == 2
    assert scraped[("relayx_gateway_turns_interrupted_total", ())] == 1
    assert scraped[("relayx_gateway_barge_ins_total", ())] == 2
    assert scraped[("relayx_gateway_transcript_writes_spooled_total", ())] == 3
    assert scraped[("relayx_gateway_calls_ended_total", ())] == 1
    assert scraped[("relayx_gateway_stage_seconds_count", (("stage", "stt"),))] == 2


def test_two_apps_in_one_process_keep_their_own_counts() -> None:
    one, two = GatewayMetrics(live()), GatewayMetrics(live())
    one.refuse("capacity")
    assert samples(two.render([]))[("relayx_gateway_streams_refused_total", (("reason", "capacity"),))] == 0
    assert BackendMetrics().registry is not BackendMetrics().registry


def test_the_token_is_needed_only_when_set() -> None:
    assert metrics_response(lambda: b"x 1\n", None, None).status_code == 200
    refused = metrics_response(lambda: b"x 1\n", "s3cret", "Bearer wrong")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert metrics_response(lambda: b"x 1\n", "s3cret", "Bearer s3cret").status_code == 200
    assert metrics_response(lambda: b"x 1\n", "s3cret", None).status_code == 401
    assert bearer_matches("t", "bearer t") and not bearer_matches("t", "Basic t") and not bearer_matches("t", None)


# --- the backend ------------------------------------------------------------------------------------


def _backend_like() -> tuple[FastAPI, BackendMetrics]:
    """Routes shaped like the backend's: what the middleware sees is the route template and status."""
    app = FastAPI()
    metrics = BackendMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.post("/calls/outbound", status_code=201)
    async def outbound(request: Request) -> dict[str, str]:
        outcome = (await request.json())["outcome"]
        if outcome != "placed":
            raise HTTPException(int(outcome), "no")
        return {"id": "c1"}

    @app.get("/calls/{call_id}")
    async def call(call_id: str) -> dict[str, str]:
        return {"id": call_id}

    @app.post("/twilio/status/{call_id}")
    async def status(call_id: str) -> Response:
        return Response(status_code=204)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app, metrics


async def test_backend_counts_requests_by_route_template_calls_by_result_and_twilio_webhooks() -> None:
    app, metrics = _backend_like()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
        for outcome in ("placed", "placed", "503", "502"):
            await client.post("/calls/outbound", json={"outcome": outcome})
        await client.get("/calls/a")
        await client.get("/calls/b")
        await client.post("/twilio/status/a")
        await client.get("/nowhere")
        assert (await client.get("/boom")).status_code == 500
    scraped = samples(metrics.render())
    assert scraped[("relayx_backend_calls_placed_total", (("result", "placed"), ("via", "api")))] == 2
    assert scraped[("relayx_backend_calls_placed_total", (("result", "at_capacity"), ("via", "api")))] == 1
    assert scraped[("relayx_backend_calls_placed_total", (("result", "provider_refused"), ("via", "api")))] == 1
    requests = {(dict(labels)["route"], dict(labels)["status"]): value for (name, labels), value in scraped.items()
                if name == "relayx_backend_http_requests_total"}
    assert requests[("/calls/{call_id}", "200")] == 2  # one series per route, not per id
    assert requests[("unmatched", "404")] == 1
    assert requests[("/boom", "500")] == 1
    assert scraped[("relayx_backend_twilio_webhooks_total", (("route", "/twilio/status/{call_id}"),
                                                              ("status", "204")))] == 1
    assert scraped[("relayx_backend_http_request_seconds_count", (("method", "GET"),
                                                                   ("route", "/calls/{call_id}")))] == 2


def test_a_request_no_route_answered_has_no_raw_path_label() -> None:
    assert route_of({"type": "http", "path": "/calls/123"}) == "unmatched"
