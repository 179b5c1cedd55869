"""The operator console (/console) in a real headless Chromium.

A simulated call on the real models (the virtual phone through the real gateway) ends with its
transcript, a two-channel recording, an analysis and webhook deliveries; the console's call page must
show every line, one latency bar per measured reply with the stored stage timings, and an <audio>
element whose recording (fetched with the API key into a Blob URL) loads and plays.

Set RELAYX_SCREENSHOTS=docs to refresh the README's screenshots (docs/console-*.png).
"""

from __future__ import annotations

import io
import json
import os
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.main import create_app as create_backend
from tests.conftest import make_settings
from tests.support.chromium import DevTools, headless_chromium, wait_for
from tests.support.servers import free_port, serve
from tests.support.webhook_receiver import WebhookReceiver
from voice_gateway.main import create_app as create_gateway

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer test-key"}
SCRIPT = ["Hi, can I move my cleaning to Thursday please?"]
STAGES = ("end_of_turn_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms")

# What the call page shows, read from the DOM in one go.
_CALL_PAGE = """(() => ({
  lines: [...document.querySelectorAll('#transcript li')].map(li => ({
    speaker: li.dataset.speaker, text: li.querySelector('.text').textContent })),
  turns: [...document.querySelectorAll('#latency .turn')].map(turn => ({
    segments: [...turn.querySelectorAll('.segment')].map(s => ({
      stage: s.dataset.stage, ms: Number(s.dataset.ms), width: s.getBoundingClientRect().width })) })),
  analysis: document.getElementById('analysis')?.textContent || '',
  webhooks: [...document.querySelectorAll('#call section:last-child tbody tr')].length,
}))()"""

# The recording, loaded and played for a moment: its duration, and how far the playhead moved.
_PLAY = """(async () => {
  const audio = document.getElementById('recording');
  if (audio.readyState < 1) await new Promise((loaded, failed) => {
    audio.addEventListener('loadedmetadata', loaded, { once: true });
    audio.addEventListener('error', () => failed(new Error('audio error ' + audio.error?.code)), { once: true });
  });
  audio.muted = true;
  await audio.play();
  await new Promise(done => setTimeout(done, 500));
  audio.pause();
  return { src: audio.src, duration: audio.duration, played: audio.currentTime };
})()"""


def _open(page: DevTools, route: str, what: str) -> None:
    """Go to `route` in the console and wait until its view has rendered."""
    page.evaluate(f"location.hash = {route!r}")
    wait_for(
        lambda: page.evaluate(f"location.hash === {route!r} && document.body.dataset.ready === 'true'"),
        20,
        what,
    )


def _screenshot(page: DevTools, tmp_path: Path, name: str) -> None:
    """Into the test's folder, and into $RELAYX_SCREENSHOTS when set (the README's images)."""
    page.screenshot(tmp_path / name)
    if folder := os.environ.get("RELAYX_SCREENSHOTS"):
        page.screenshot(Path(folder) / name)


def _wav_seconds(content: bytes) -> float:
    with wave.open(io.BytesIO(content)) as reader:
        assert reader.getnchannels() == 2
        return reader.getnframes() / reader.getframerate()


def _completed_call(client: httpx.Client, hook_base: str) -> dict[str, Any]:
    """A simulated call that has ended, been analysed and had its webhooks delivered."""
    agent = client.post(
        "/agents",
        json={
            "name": "Ava",
            "greeting": "Hi, this is Ava from Bright Smile Dental, calling about your cleaning.",
            "prompt": "You call patients of Bright Smile Dental to reschedule their teeth cleaning. "
            "Ask which day suits them. Be brief.",
            "settings": {
                "business": "Bright Smile Dental",
                "webhook_url": f"{hook_base}/hook",
                "voicemail": {"detect": False},
                "analysis": {"outcomes": ["rescheduled", "not_interested", "call_back"]},
            },
        },
    ).json()
    response = client.post(
        "/calls/outbound",
        json={"agent_id": agent["id"], "to_number": "+14155550100", "metadata": {"simulate": SCRIPT}},
    )
    assert response.status_code == 201, response.text
    call_id = response.json()["id"]

    def analysed() -> bool:
        call = client.get(f"/calls/{call_id}").json()
        if call["status"] in ("failed", "canceled"):
            raise AssertionError(f"the call ended {call['status']}: {call}")
        analysis = client.get(f"/calls/{call_id}/analysis")
        events = client.get(f"/calls/{call_id}/webhooks").json()
        return (
            analysis.status_code == 200
            and analysis.json()["status"] == "completed"
            and len(events) == 3
            and all(e["status"] == "delivered" for e in events)
        )

    wait_for(analysed, 240, "the call to end, be analysed and have its webhooks delivered", 0.5)
    return dict(client.get(f"/calls/{call_id}").json())


@pytest.mark.models
def test_call_page_shows_transcript_latency_bars_and_plays_the_recording(
    chromium: str, tmp_path: Path
) -> None:
    backend_port, gateway_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        TELEPHONY_PROVIDER="simulator",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{backend_port}",
        PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
        WEBHOOK_SECRET="whsec_console",
        WEBHOOK_ALLOW_PRIVATE="true",
        JOBS_POLL_S="0.2",
    )
    receiver = WebhookReceiver()
    with (
        serve(receiver.app()) as hook_base,
        serve(create_backend(settings), backend_port) as backend,
        serve(create_gateway(settings), gateway_port, timeout_s=300),
    ):
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        call = _completed_call(client, hook_base)
        lines = client.get(f"/calls/{call['id']}/transcripts").json()
        analysis = client.get(f"/calls/{call['id']}/analysis").json()
        recording_s = _wav_seconds(client.get(f"/calls/{call['id']}/recording").content)
        with headless_chromium(chromium, f"{backend}/console", tmp_path / "profile") as page:
            try:
                page.evaluate("localStorage.setItem('relayx.apiKey', 'test-key')")
                _open(page, f"#/calls/{call['id']}", "the call page")
                shown = page.evaluate(_CALL_PAGE)
                played = page.evaluate(_PLAY)
                _screenshot(page, tmp_path, "console-call.png")
                _open(page, "#/calls?status=completed", "the calls list")
                listed = page.evaluate(
                    "[...document.querySelectorAll('#calls tbody tr')].map(r => r.dataset.callId)"
                )
                _screenshot(page, tmp_path, "console-calls.png")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\npage console: {page.console[-20:]}") from None

    # Every stored line, in order, with its speaker.
    assert [(line["speaker"], line["text"]) for line in lines] == [
        (s["speaker"], s["text"]) for s in shown["lines"]
    ]
    # One stacked bar per agent reply with stage timings; each segment is the stored figure, drawn.
    measured = [
        line["metrics"] for line in lines if line["speaker"] == "agent" and set(STAGES) & set(line["metrics"])
    ]
    assert len(measured) >= 2, json.dumps(lines, indent=1)  # the greeting and the reply
    assert len(shown["turns"]) == len(measured)
    for metrics, turn in zip(measured, shown["turns"], strict=True):
        assert [(s["stage"], s["ms"]) for s in turn["segments"]] == [
            (stage, metrics[stage]) for stage in STAGES if metrics.get(stage, 0) > 0
        ]
        assert all(s["width"] > 0 for s in turn["segments"]), turn
    # The greeting's bar is TTS alone; a reply to the caller starts with the end of their turn and STT
    # (its LLM stage is missing only when the model failed and the fallback line was spoken).
    replies = [{s["stage"] for s in turn["segments"]} for turn in shown["turns"] if len(turn["segments"]) > 1]
    assert replies and all({"end_of_turn_ms", "stt_ms", "tts_first_audio_ms"} <= stages for stages in replies)
    # The two-channel recording, fetched with the key into a Blob URL, loads whole and plays.
    assert played["src"].startswith("blob:"), played
    assert abs(played["duration"] - recording_s) < 0.1 and recording_s > 3, (played, recording_s)
    assert played["played"] > 0.1, played
    assert analysis["summary"] in shown["analysis"] and analysis["outcome"] in shown["analysis"]
    assert shown["webhooks"] == 3
    assert listed == [call["id"]]


# --- the campaign page, against a stand-in for the campaigns API --------------------------------------


_MOVES = {"start": ("draft", "running"), "pause": ("running", "paused"), "resume": ("paused", "running")}


class _Campaigns:
    """The campaigns API's contract (GET /campaigns[/{id}[/contacts]], POST /campaigns/{id}/<verb>) over
    one campaign held in memory, so the test can move its progress while the page watches."""

    def __init__(self, agent: dict[str, Any], contacts: int) -> None:
        self.agent = agent
        self.contacts = [
            {
                "id": f"c{row:04d}",
                "phone_number": f"+1415555{row:04d}",
                "timezone": "America/Los_Angeles",
                "variables": {"first_name": f"Patient {row}"},
                "status": "pending",
                "attempts": 0,
                "last_outcome": None,
                "last_call_id": None,
                "next_attempt_at": None,
                "row_number": row,
            }
            for row in range(1, contacts + 1)
        ]
        self.campaign: dict[str, Any] = {
            "id": "0b7e9a52-4c1d-4b7e-9a52-4c1d4b7e9a52",
            "name": "Cleaning reminders",
            "agent_id": agent["id"],
            "from_number": "+14155550199",
            "status": "running",
            "max_concurrency": 2,
            "calls_per_second": 1.0,
            "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"},
            "timezone": "America/Los_Angeles",
            "retry": {"max_attempts": 2, "delay_s": 3600, "on": ["no-answer", "busy"]},
            "created_at": "2026-12-01T09:00:00Z",
            "updated_at": "2026-12-01T09:00:00Z",
            "started_at": "2026-12-01T09:00:05Z",
            "completed_at": None,
        }

    def settle(self, statuses: list[str]) -> None:
        """The next contacts end with `statuses`, as the dispatcher would record them."""
        pending = [c for c in self.contacts if c["status"] in ("pending", "calling")]
        for contact, status in zip(pending, statuses, strict=False):
            contact.update(status=status, attempts=contact["attempts"] + 1, last_outcome=None)
            if status == "completed":
                contact["last_outcome"] = "rescheduled"

    def out(self) -> dict[str, Any]:
        progress = {key: 0 for key in ("pending", "calling", "completed", "failed", "skipped", "cancelled")}
        for contact in self.contacts:
            progress[contact["status"]] += 1
        progress["total"] = len(self.contacts)
        progress["calls_placed"] = sum(c["attempts"] for c in self.contacts)
        return {**self.campaign, "progress": progress}

    def app(self) -> Any:
        from fastapi import FastAPI, HTTPException

        from backend.api import console

        app = FastAPI()
        app.include_router(console.router)
        app.get("/agents")(lambda: [self.agent])
        app.get("/agents/{agent_id}")(lambda agent_id: self.agent)
        app.get("/campaigns")(lambda: [self.out()])
        app.get("/campaigns/{campaign_id}")(lambda campaign_id: self.out())

        @app.get("/campaigns/{campaign_id}/contacts")
        def contacts(campaign_id: str, status: str | None = None, limit: int = 50, offset: int = 0) -> Any:
            rows = [c for c in self.contacts if status is None or c["status"] == status]
            return {
                "data": rows[offset : offset + limit],
                "limit": limit,
                "offset": offset,
                "has_more": len(rows) > offset + limit,
            }

        @app.post("/campaigns/{campaign_id}/{verb}")
        def move(campaign_id: str, verb: str) -> Any:
            before, after = _MOVES.get(verb, (None, "cancelled"))
            if before is not None and self.campaign["status"] != before:
                raise HTTPException(409, f"cannot {verb} a {self.campaign['status']} campaign")
            self.campaign["status"] = after
            return self.out()

        return app


_COUNTS = "Object.fromEntries([...document.querySelectorAll('#progress .count')].map(e => [e.dataset.key, Number(e.textContent)]))"


def test_campaign_page_shows_the_apis_counts_live_and_pauses(chromium: str, tmp_path: Path) -> None:
    agent = {
        "id": "5d7c1a3e-0f6b-4a8e-9c2d-1e3f5a7b9c0d",
        "name": "Ava",
        "greeting": None,
        "voice": None,
        "language": "en",
        "prompt": "Remind patients.",
        "llm": {"model": None, "temperature": 0.6},
        "settings": {},
        "created_at": "2026-12-01T08:00:00Z",
        "updated_at": "2026-12-01T08:00:00Z",
    }
    campaigns = _Campaigns(agent, contacts=12)
    campaigns.settle(["completed", "completed", "failed", "skipped", "calling", "calling"])
    campaign_id = campaigns.campaign["id"]
    with (
        serve(campaigns.app()) as base,
        headless_chromium(chromium, f"{base}/console", tmp_path / "profile") as page,
    ):
        page.evaluate("localStorage.setItem('relayx.apiKey', 'test-key')")
        _open(page, f"#/campaigns/{campaign_id}", "the campaign page")
        api = httpx.get(f"{base}/campaigns/{campaign_id}").json()["progress"]
        shown = page.evaluate(_COUNTS)
        contact_rows = page.evaluate("document.querySelectorAll('#contacts tbody tr').length")
        _screenshot(page, tmp_path, "console-campaign.png")
        # Live: the dispatcher settles two more contacts; the page follows without a reload.
        campaigns.settle(["completed", "completed"])
        moved = httpx.get(f"{base}/campaigns/{campaign_id}").json()["progress"]
        followed = wait_for(lambda: page.evaluate(_COUNTS) == moved, 10, "the page to show the new counts")
        page.evaluate("document.getElementById('campaign-pause').click()", user_gesture=True)
        paused = wait_for(
            lambda: page.evaluate(
                "document.getElementById('campaign').dataset.status === 'paused'"
                " && !document.getElementById('campaign-resume').disabled"
                " && document.getElementById('campaign-pause').disabled"
            ),
            10,
            "the page to show the campaign paused",
        )
        _open(page, "#/campaigns", "the campaigns list")
        listed = page.evaluate(
            "[...document.querySelectorAll('#campaigns tbody tr')].map(r => r.dataset.campaignId)"
        )
    assert shown == api and api["completed"] == 2 and api["total"] == 12, (shown, api)
    assert contact_rows == 12
    assert followed and moved["completed"] == 4
    assert paused and campaigns.campaign["status"] == "paused"
    assert listed == [campaign_id]
