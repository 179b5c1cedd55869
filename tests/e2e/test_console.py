"""The operator console (/console) in a real headless Chromium.

A simulated call on the real models (the virtual phone through the real gateway) ends with its
transcript, a two-channel recording, an analysis and webhook deliveries; the console's call page must
show every line, one latency bar per measured reply with the stored stage timings, and an <audio>
element whose recording (fetched with the API key into a Blob URL) loads and plays. A campaign run at
the same time on the simulated line is followed by its page to the end, its counts the API's. Without
the models: the campaign page's verbs, and the agent form.

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


_COUNTS = (
    "Object.fromEntries([...document.querySelectorAll('#progress .count')]"
    ".map(e => [e.dataset.key, Number(e.textContent)]))"
)
_ROWS = "[...document.querySelectorAll('#calls tbody tr')].map(r => r.dataset.callId)"


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


def _agent(client: httpx.Client, hook_base: str) -> dict[str, Any]:
    response = client.post(
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
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _campaign(client: httpx.Client, agent: dict[str, Any]) -> dict[str, Any]:
    """A running campaign whose four contacts end four ways on the simulated line: one talks, one is
    busy, one does not answer (one attempt each), and one is on the do-not-call list."""
    listed = client.post(
        "/do-not-call", json={"numbers": ["+14155550104"], "reason": "asked not to be called"}
    )
    assert listed.status_code == 200, listed.text
    response = client.post(
        "/campaigns",
        json={
            "name": "Cleaning reminders",
            "agent_id": agent["id"],
            "max_concurrency": 2,
            "retry": {"max_attempts": 1},
            "timezone": "America/Los_Angeles",
            "start": True,
            "contacts": [
                {"phone_number": "+14155550101", "variables": {"simulate": "Thursday works, thank you."}},
                {"phone_number": "+14155550102", "variables": {"simulate": "busy"}},
                {"phone_number": "+14155550103", "variables": {"simulate": "no-answer"}},
                {"phone_number": "+14155550104"},
            ],
        },
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _analysed(client: httpx.Client, call_id: str) -> bool:
    """The call has ended, been analysed and had its three webhooks delivered."""
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


@pytest.mark.models
def test_console_shows_a_completed_call_and_a_campaigns_live_counts(chromium: str, tmp_path: Path) -> None:
    backend_port, gateway_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        TELEPHONY_PROVIDER="simulator",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{backend_port}",
        PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
        WEBHOOK_SECRET="whsec_console",
        WEBHOOK_ALLOW_PRIVATE="true",
        JOBS_POLL_S="0.2",
        CAMPAIGN_TICK_S="1",
    )
    receiver = WebhookReceiver()
    with (
        serve(receiver.app()) as hook_base,
        serve(create_backend(settings), backend_port) as backend,
        serve(create_gateway(settings), gateway_port, timeout_s=300),
    ):
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = _agent(client, hook_base)
        placed = client.post(
            "/calls/outbound",
            json={"agent_id": agent["id"], "to_number": "+14155550100", "metadata": {"simulate": SCRIPT}},
        )
        assert placed.status_code == 201, placed.text
        call_id = placed.json()["id"]
        campaign = _campaign(client, agent)
        wait_for(lambda: _analysed(client, call_id), 240, "the call to end and be analysed", 0.5)
        lines = client.get(f"/calls/{call_id}/transcripts").json()
        analysis = client.get(f"/calls/{call_id}/analysis").json()
        recording_s = _wav_seconds(client.get(f"/calls/{call_id}/recording").content)
        with headless_chromium(chromium, f"{backend}/console", tmp_path / "profile") as page:
            try:
                page.evaluate("localStorage.setItem('relayx.apiKey', 'test-key')")
                _open(page, f"#/calls/{call_id}", "the call page")
                shown = page.evaluate(_CALL_PAGE)
                played = page.evaluate(_PLAY)
                _screenshot(page, tmp_path, "console-call.png")
                # The campaign page follows the campaign by itself until it completes.
                _open(page, f"#/campaigns/{campaign['id']}", "the campaign page")
                wait_for(
                    lambda: page.evaluate(
                        "document.getElementById('campaign').dataset.status === 'completed'"
                    ),
                    120,
                    "the campaign page to show the campaign completed",
                    0.5,
                )
                progress = client.get(f"/campaigns/{campaign['id']}").json()["progress"]
                counts = page.evaluate(_COUNTS)
                contacts = page.evaluate(
                    "[...document.querySelectorAll('#contacts tbody tr')].map(r => r.children[2].textContent)"
                )
                _screenshot(page, tmp_path, "console-campaign.png")
                _open(page, "#/calls", "the calls list")
                listed = page.evaluate(_ROWS)
                _screenshot(page, tmp_path, "console-calls.png")
                _open(page, f"#/calls?campaign_id={campaign['id']}", "the campaign's calls")
                by_campaign = page.evaluate(_ROWS)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\npage console: {page.console[-20:]}") from None
        every_call = [c["id"] for c in client.get("/calls").json()["data"]]
        campaign_calls = [
            c["id"] for c in client.get("/calls", params={"campaign_id": campaign["id"]}).json()["data"]
        ]

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
    # The campaign's counts are the API's, and each contact ended its own way.
    assert counts == progress, (counts, progress)
    assert progress["total"] == 4 and progress["completed"] == 1 and progress["skipped"] == 1, progress
    assert sorted(contacts) == sorted(["completed", "failed", "failed", "skipped"]), contacts
    assert listed == every_call and call_id in listed
    assert by_campaign == campaign_calls and call_id not in by_campaign and len(by_campaign) >= 1


def test_campaign_page_moves_the_campaign_and_follows_it_live(chromium: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    # No job runner, so nothing is dialed: the counts move only by the verbs, from the page or the API.
    with serve(create_backend(settings, run_jobs=False)) as backend:
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = client.post("/agents", json={"name": "Ava", "prompt": "Remind patients."}).json()
        numbers = [f"+1415555020{i}" for i in range(3)]
        made = client.post(
            "/campaigns",
            json={
                "name": "Reminders",
                "agent_id": agent["id"],
                "contacts": [{"phone_number": n} for n in numbers],
            },
        )
        assert made.status_code == 201, made.text
        path = f"/campaigns/{made.json()['id']}"
        status = "document.getElementById('campaign').dataset.status"
        with headless_chromium(chromium, f"{backend}/console", tmp_path / "profile") as page:
            page.evaluate("localStorage.setItem('relayx.apiKey', 'test-key')")
            _open(page, f"#{path}", "the campaign page")
            draft = (page.evaluate(_COUNTS), client.get(path).json()["progress"])
            page.evaluate("document.getElementById('campaign-start').click()", user_gesture=True)
            wait_for(lambda: page.evaluate(f"{status} === 'running'"), 10, "the page to start the campaign")
            started = client.get(path).json()["status"]
            client.post(f"{path}/pause").raise_for_status()  # elsewhere: the page must notice by itself
            wait_for(lambda: page.evaluate(f"{status} === 'paused'"), 10, "the page to follow the pause")
            page.evaluate("document.getElementById('campaign-resume').click()", user_gesture=True)
            wait_for(lambda: page.evaluate(f"{status} === 'running'"), 10, "the page to resume the campaign")
            client.post(f"{path}/cancel").raise_for_status()
            wait_for(lambda: page.evaluate(f"{status} === 'cancelled'"), 10, "the page to follow the cancel")
            cancelled = (page.evaluate(_COUNTS), client.get(path).json()["progress"])
            buttons = page.evaluate("[...document.querySelectorAll('.verbs button')].map(b => b.disabled)")
            contacts = page.evaluate("[...document.querySelectorAll('#contacts tbody tr')].length")
    assert draft[0] == draft[1] and draft[1]["total"] == draft[1]["pending"] == 3, draft
    assert started == "running"
    assert cancelled[0] == cancelled[1] and cancelled[1]["cancelled"] == 3, cancelled
    assert buttons == [True, True, True, True]  # nothing moves a cancelled campaign
    assert contacts == 3


def test_agent_form_edits_greeting_and_voice_and_keeps_the_rest(chromium: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with serve(create_backend(settings, run_jobs=False)) as backend:
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = client.post(
            "/agents", json={"name": "Ava", "prompt": "Answer calls.", "voice": "p225"}
        ).json()
        with headless_chromium(chromium, f"{backend}/console", tmp_path / "profile") as page:
            page.evaluate("localStorage.setItem('relayx.apiKey', 'test-key')")
            _open(page, "#/agents", "the agents list")
            listed = page.evaluate(
                "[...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agentId)"
            )
            _open(page, f"#/agents/{agent['id']}", "the agent's form")
            page.evaluate(
                "const form = document.getElementById('agent-form');"
                "form.greeting.value = 'Hi, this is Ava.'; form.voice.value = '';"
                "form.requestSubmit()"
            )
            wait_for(
                lambda: page.evaluate(
                    "document.querySelector('#agent-form .saved').textContent.startsWith('Saved')"
                ),
                10,
                "the form to be saved",
            )
        saved = client.get(f"/agents/{agent['id']}").json()
    assert listed == [agent["id"]]
    assert saved["greeting"] == "Hi, this is Ava." and saved["voice"] is None
    assert saved["name"] == "Ava" and saved["prompt"] == "Answer calls."
