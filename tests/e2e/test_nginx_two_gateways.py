"""Two gateway processes behind nginx (deploy/nginx/relayx.conf), on the real default models and one
PostgreSQL: calls placed through the backend land on both; a full gateway (GATEWAY_MAX_CALLS=1) is not
ready and the next stream goes to the other; SIGTERM to a gateway in the middle of a call lets that call
finish with every line while new calls go to the other one, and the drained process exits by itself;
/metrics shows the calls while they run and their stage histograms after.

Gateway A carries one call and is weighted 3 in nginx (least_conn divides each gateway's streams by
its weight), so nginx picks A first whenever both hold a call: that makes the refusal path certain
(A answers 503, nginx hands the same upgrade to B) instead of leaving it to a tie.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from backend.main import create_app as create_backend
from shared import stream_tokens, twilio_auth
from tests.conftest import make_settings
from tests.support import nginx
from tests.support.servers import free_port, serve
from tests.support.wer import wer

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.postgres]

AUTH = {"Authorization": "Bearer test-key"}
AGENT = {
    "name": "Ava", "greeting": "Hi, this is Ava from Bright Smile Dental. How can I help?",
    "prompt": "You book teeth cleanings for Bright Smile Dental. Open Monday to Friday, 9am to 5pm. Be brief.",
    "settings": {"business": "Bright Smile Dental", "voicemail": {"detect": False}},
}
LONG = ["Hi, I would like to book a teeth cleaning, please.", "What are your opening hours on Monday?",
        "Thank you, goodbye."]
SHORT = ["Thank you, goodbye."]
STAGES = ("end_of_turn", "stt", "llm_first_token", "tts_first_audio", "voice_to_voice")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Gateway:
    """One gateway process, as production runs it: uvicorn on the app factory."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start_gateway(name: str, root: Path, env: dict[str, str], max_calls: int) -> Gateway:
    port = free_port()
    data = root / name
    data.mkdir()
    log = data / "gateway.log"
    proc_env = env | {"RELAYX_DATA_DIR": str(data), "GATEWAY_MAX_CALLS": str(max_calls)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "voice_gateway.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--ws", "websockets-sansio", "--log-level", "info"],
            env=proc_env, stdout=out, stderr=subprocess.STDOUT,
        )
    return Gateway(name, port, proc, log)


async def _until(check: Any, timeout_s: float, what: str, *gateways: Gateway) -> Any:
    """Poll `check()` (async) until it returns something true; fail after the deadline or if a gateway died."""
    deadline = time.monotonic() + timeout_s
    while True:
        for gw in gateways:
            assert gw.proc.poll() is None, f"gateway {gw.name} exited: {gw.log.read_text()[-3000:]}"
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def _scrape(gw: Gateway) -> Samples:
    text = (await _get(f"{gw.base}/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _accepted(gateways: list[Gateway]) -> dict[str, float]:
    return {gw.name: (await _scrape(gw))[("relayx_gateway_streams_accepted_total", ())] for gw in gateways}


async def _landed(gateways: list[Gateway], before: dict[str, float]) -> Gateway:
    """The gateway that accepted one more stream than `before` (exactly one may have)."""

    async def which() -> Gateway | None:
        now = await _accepted(gateways)
        grown = [gw for gw in gateways if now[gw.name] > before[gw.name]]
        assert len(grown) <= 1, (before, now)
        return grown[0] if grown else None

    return await _until(which, 60, "a stream to be accepted", *gateways)


async def _place(client: httpx.AsyncClient, agent_id: str, script: list[str]) -> str:
    response = await client.post("/calls/outbound", json={"agent_id": agent_id, "to_number": "+14155550100",
                                                         "metadata": {"simulate": script}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _stage_count(samples: Samples, stage: str) -> float:
    return samples.get(("relayx_gateway_stage_seconds_count", (("stage", stage),)), 0.0)


async def test_two_gateways_behind_nginx_spread_refuse_when_full_and_drain_on_sigterm(
    postgres_url: str, tmp_path: Path,
) -> None:
    started = time.monotonic()
    backend_port, proxy_port = free_port(), free_port()
    proxy = f"127.0.0.1:{proxy_port}"
    settings = make_settings(
        tmp_path, DATABASE_URL=postgres_url, TELEPHONY_PROVIDER="simulator",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{backend_port}", PUBLIC_GATEWAY_URL=f"ws://{proxy}",
        GATEWAY_INTERNAL_URL=f"http://{proxy}/gateway",  # each gateway's /ready, the first with room
    )
    env = dict(os.environ) | {
        "DATABASE_URL": postgres_url, "RELAYX_API_KEY": "test-key", "TELEPHONY_PROVIDER": "simulator",
        "PUBLIC_BASE_URL": settings.public_base_url, "PUBLIC_GATEWAY_URL": settings.public_gateway_url,
        "MODEL_CACHE_DIR": str(settings.model_cache_dir), "LOG_LEVEL": "INFO",
        # Two gateways share this machine's two cores: one model thread each, as each would have one
        # machine's threads to itself in production.
        "STT_THREADS": "1", "LLM_THREADS": "1",
    }
    gateways: list[Gateway] = []
    with serve(create_backend(settings), backend_port):  # migrates the database before the gateways start
        try:
            a = _start_gateway("a", tmp_path, env, max_calls=1)
            gateways.append(a)
            b = _start_gateway("b", tmp_path, env, max_calls=3)
            gateways.append(b)
            proxy_root = tmp_path / "nginx"
            access_log = proxy_root / "access.log"
            site = nginx.render(listen=proxy_port, gateways=[nginx.Server(a.port, weight=3), nginx.Server(b.port)],
                                backend_port=backend_port, access_log=access_log)
            main = nginx.write_config(proxy_root, site)
            for gw in gateways:
                await _until(lambda gw=gw: _healthy(gw), 300, f"gateway {gw.name} to warm up", *gateways)
            warm_s = time.monotonic() - started
            with nginx.running(proxy_root, main, proxy_port):
                await _scenario(settings, a, b, access_log, backend_port, warm_s)
        finally:
            for gw in gateways:
                if gw.proc.poll() is None:
                    gw.proc.send_signal(signal.SIGINT)
            for gw in gateways:
                try:
                    gw.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    gw.proc.kill()
                    gw.proc.wait()
    print(f"\n[nginx+2 gateways] total {time.monotonic() - started:.0f} s")


async def _healthy(gw: Gateway) -> bool:
    try:
        return (await _get(f"{gw.base}/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def _scenario(settings: Any, a: Gateway, b: Gateway, access_log: Path, backend_port: int,
                    warm_s: float) -> None:
    both = [a, b]
    figures: dict[str, float] = {"warm-up (both gateways, s)": warm_s}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend_port}", headers=AUTH, timeout=30) as client:
        agent = (await client.post("/agents", json=AGENT)).json()

        # 1. Calls land on both gateways: the second goes where fewer streams are held. The call on A
        #    is the long one (it is drained below); B's is short, to keep the two cores for A's.
        before = await _accepted(both)
        first_call = await _place(client, agent["id"], LONG)
        first_gw = await _landed(both, before)
        before = await _accepted(both)
        second_call = await _place(client, agent["id"], SHORT if first_gw is a else LONG)
        second_gw = await _landed(both, before)
        assert {first_gw.name, second_gw.name} == {"a", "b"}
        call_on = {first_gw.name: first_call, second_gw.name: second_call}

        # 2. A is full (1 of 1): not ready; the next stream through nginx is tried on A first (weight),
        #    refused with 503, and handed to B, which takes it.
        ready_a, ready_b = await _get(f"{a.base}/ready"), await _get(f"{b.base}/ready")
        assert ready_a.status_code == 503 and ready_a.json()["reasons"] == ["gateway at capacity: 1 of 1 calls"]
        assert ready_b.status_code == 200, ready_b.text
        refused_before = (await _scrape(a))[("relayx_gateway_streams_refused_total", (("reason", "capacity"),))]
        before = await _accepted(both)
        probe = stream_tokens.stream_url(f"ws://127.0.0.1:{_port(settings.public_gateway_url)}/media",
                                         twilio_auth.signing_token(settings), "capacity-probe")
        async with websockets.connect(probe):
            pass  # accepted (101): closed again before any `start`
        assert (await _landed(both, before)) is b
        refused_after = (await _scrape(a))[("relayx_gateway_streams_refused_total", (("reason", "capacity"),))]
        assert refused_after == refused_before + 1
        await _until(lambda: _logged(access_log, "upstream_status=503, 101"), 10, "nginx's access log line")

        # 3. /metrics during the call: A's call is active (and A is full).
        during = await _scrape(a)
        assert during[("relayx_gateway_active_calls", ())] == 1
        assert during[("relayx_gateway_streams", ())] == 1 and during[("relayx_gateway_max_calls", ())] == 1
        assert during[("relayx_gateway_accepting", ())] == 0

        # 4. SIGTERM to A in the middle of its call: it drains.
        drained_call = call_on["a"]
        sigterm_at, sigterm_wall = time.monotonic(), datetime.now(UTC)
        a.proc.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            ready = await _get(f"{a.base}/ready")
            return ready.status_code == 503 and "draining" in ready.json()["reasons"]

        await _until(draining, 10, "A to report draining")
        assert (await _scrape(a))[("relayx_gateway_draining", ())] == 1
        with pytest.raises(websockets.InvalidStatus) as refused:  # straight to A, not through nginx
            async with websockets.connect(stream_tokens.stream_url(
                    f"ws://127.0.0.1:{a.port}/media", twilio_auth.signing_token(settings), "drain-probe")):
                pass
        assert refused.value.response.status_code == 503

        # New calls go to B (nginx tries A while it is not marked down: A refuses with 503 "draining").
        before = await _accepted(both)
        third_call = await _place(client, agent["id"], SHORT)
        assert (await _landed(both, before)) is b

        # 5. Every call finishes normally; A exits by itself once its call has ended.
        calls = {"drained (A)": drained_call, "on B": call_on["b"], "after SIGTERM (B)": third_call}
        ended: dict[str, float] = {}

        async def all_ended() -> bool:
            for name, call_id in calls.items():
                if name not in ended and (await client.get(f"/calls/{call_id}")).json()["status"] in (
                        "completed", "failed"):
                    ended[name] = time.monotonic()
            return len(ended) == len(calls)

        await _until(all_ended, 180, "every call to end")
        exit_code = await asyncio.to_thread(a.proc.wait, 60)
        exited_at = time.monotonic()
        assert exit_code in (0, -signal.SIGTERM), exit_code  # uvicorn re-raises the SIGTERM it was handed
        log = a.log.read_text()
        assert "draining: every call has ended" in log, log[-3000:]

        for name, call_id in calls.items():
            call = (await client.get(f"/calls/{call_id}")).json()
            assert call["status"] == "completed", (name, call)
        # Every line of the drained call is stored: each scripted caller line is heard (words right
        # within a bound: a busy machine may answer late, and the caller's next line then joins the one
        # before it in one turn), the agent greeted and answered, and the call was not cut by the drain.
        transcript = (await client.get(f"/calls/{drained_call}/transcripts")).json()
        callers = [line for line in transcript if line["speaker"] == "caller"]
        agents = [line for line in transcript if line["speaker"] == "agent"]
        assert callers and all(line["text"].strip() for line in callers), transcript
        assert wer(" ".join(LONG), " ".join(line["text"] for line in callers)) <= 0.5, transcript
        assert len(agents) >= 2 and agents[0]["text"].startswith("Hi, this is Ava"), transcript
        after_sigterm = [line for line in callers if datetime.fromisoformat(line["timestamp"]) > sigterm_wall]
        assert after_sigterm, "the call had ended before SIGTERM: nothing was drained"
        assert "passed: ending" not in log  # the drain waited for the call: nothing was ended by the timeout
        assert not any("time limit" in line["text"] for line in agents), transcript

        # 6. After the calls, B's histograms hold every stage of its turns (an LLM that timed out on a
        #    busy machine has no first token: it is counted as an LLM error instead).
        after = await _scrape(b)
        for stage in STAGES:
            if stage != "llm_first_token":
                assert _stage_count(after, stage) > 0, stage
        assert _stage_count(after, "llm_first_token") + after[("relayx_gateway_llm_errors_total", ())] > 0
        assert after[("relayx_gateway_calls_ended_total", ())] == 2  # its first call and the one after SIGTERM
        assert after[("relayx_gateway_active_calls", ())] == 0
        backend = await client.get("/metrics")
        placed = [line for line in backend.text.splitlines()
                  if line.startswith('relayx_backend_calls_placed_total{result="placed",via="api"}')]
        assert placed and float(placed[0].split()[-1]) == 3, backend.text[:2000]

    figures["drain: SIGTERM -> exit (s)"] = exited_at - sigterm_at
    figures["drained call ended after SIGTERM (s)"] = ended["drained (A)"] - sigterm_at
    figures["caller lines after SIGTERM"] = len(after_sigterm)
    for stage in STAGES:
        total = after.get(("relayx_gateway_stage_seconds_sum", (("stage", stage),)), 0.0)
        figures[f"B mean {stage} (ms)"] = 1000 * total / max(1.0, _stage_count(after, stage))
    figures["B turns with a gap > 40 ms"] = after[("relayx_gateway_turns_with_gap_total", ())]
    figures["B turns"] = after[("relayx_gateway_turns_total", ())]
    figures["B LLM errors"] = after[("relayx_gateway_llm_errors_total", ())]
    print("\n" + "\n".join(f"  {name}: {value:.0f}" for name, value in figures.items()))


async def _logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
