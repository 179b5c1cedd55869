"""The browser phone (/phone) in a real headless Chromium.

Chromium's fake microphone plays the simulator's callee voice (Piper) from a WAV; the test clicks
the page's own buttons through the Chrome DevTools protocol (tests/support/chromium.py) and asserts on
what the gateway stored: the caller's question (its words within a word error bound, since STT decodes
differently on different CPUs), the agent's answer, the greeting played out (its marks echoed), and the
call completed when the page hung up.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soxr

from backend.main import create_app as create_backend
from shared.audio import pcm16_to_ulaw, ulaw_to_float32, ulaw_to_pcm16
from tests.conftest import make_settings
from tests.support.chromium import headless_chromium, wait_for
from tests.support.servers import free_port, serve
from tests.support.speech import caller_ulaw
from tests.support.wer import wer
from voice_gateway.main import create_app as create_gateway

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer test-key"}
QUESTION = "What are your opening hours on Monday?"
WAV_RATE = 48000


def _caller_wav(path: Path) -> Path:
    """The fake microphone: 6 s of silence (the greeting plays), the question, then 20 s of silence.

    The question is the simulated callee's own line (Piper, phone band), at 48 kHz as a sound card
    would deliver it. The long silent tail is the real silence the turn detector needs to end the turn.
    """
    speech = soxr.resample(ulaw_to_float32(caller_ulaw(QUESTION)), 8000, WAV_RATE)
    audio = np.concatenate([np.zeros(6 * WAV_RATE), speech, np.zeros(20 * WAV_RATE)])
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(WAV_RATE)
        writer.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.models
def test_browser_phone_talks_to_agent_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    backend_port, gateway_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{backend_port}",
        PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}",
    )
    wav = _caller_wav(tmp_path / "caller.wav")
    with (
        serve(create_backend(settings), backend_port) as backend,
        serve(create_gateway(settings), gateway_port, timeout_s=300),
    ):
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = client.post(
            "/agents",
            json={
                "name": "Ava",
                "greeting": "Hi, this is Ava from Bright Smile Dental.",
                "prompt": "You book teeth cleanings for Bright Smile Dental. Open Monday to Friday, 9am to 5pm.",
                "settings": {"business": "Bright Smile Dental", "end_of_turn_silence_ms": 500},
            },
        ).json()
        page_url = f"{backend}/phone#key=test-key&agent={agent['id']}"
        with headless_chromium(chromium, page_url, tmp_path / "profile", wav) as page:
            try:
                wait_for(
                    lambda: page.evaluate("document.getElementById('call')?.disabled === false"),
                    30,
                    "the page to list the agents",
                )
                assert page.evaluate("document.getElementById('agent').value") == agent["id"]
                assert page.evaluate("location.hash") == "", "the key must leave the address bar"
                page.evaluate("document.getElementById('call').click()", user_gesture=True)
                call_id = None
                call_id = wait_for(
                    lambda: page.evaluate("document.body.dataset.callId || null"), 30, "POST /phone/calls"
                )

                def answered() -> list[dict[str, Any]] | None:
                    lines = client.get(f"/calls/{call_id}/transcripts").json()
                    asked = [i for i, line in enumerate(lines) if line["speaker"] == "caller"]
                    replied = asked and any(
                        line["speaker"] == "agent" and line["text"].strip() for line in lines[asked[0] + 1 :]
                    )
                    return lines if replied else None

                transcript = wait_for(answered, 180, "the caller's question and the agent's answer", 0.5)
                shown = wait_for(
                    lambda: page.evaluate("document.querySelectorAll('#transcript li').length"),
                    10,
                    "the page's transcript pane",
                )
                page.evaluate("document.getElementById('hangup').click()", user_gesture=True)
                final = wait_for(
                    lambda: (c := client.get(f"/calls/{call_id}").json())["status"] == "completed" and c,
                    30,
                    "the call to be completed",
                )
                status_text = page.evaluate("document.getElementById('status').textContent")
            except AssertionError as exc:
                status = page.evaluate("document.getElementById('status')?.textContent")
                stored = client.get(f"/calls/{call_id}/transcripts").json() if call_id else None
                raise AssertionError(
                    f"{exc}\npage status: {status}\npage console: {page.console[-20:]}\n"
                    f"stored transcript: {stored}"
                ) from None

    assert shown >= 2
    assert status_text == "Call ended"
    assert final["to_number"] == "browser" and final["metadata"] == {"channel": "browser"}
    assert final["twilio_call_sid"].startswith("CA") and final["duration"] is not None
    greeting = transcript[0]
    assert greeting["speaker"] == "agent" and greeting["text"].startswith("Hi, this is Ava")
    # Stored whole, not cut: the page echoed the greeting's marks once it had played it out.
    assert not greeting["metrics"].get("interrupted"), greeting
    # The question, heard through the page's capture, resampler and μ-law: a non-empty caller line and
    # the right words within a bound, not exactly (STT decodes differently on different CPUs).
    # Measured 0.0 over five runs; 0.35 allows two wrong words of seven, while a capture at a wrong
    # rate reads as nothing (1.0) or as a loop ("right, right, right…", 16).
    caller = [line["text"] for line in transcript if line["speaker"] == "caller"]
    assert caller and all(text.strip() for text in caller), transcript
    assert wer(QUESTION, " ".join(caller)) <= 0.35, transcript


# The page's audio module, run in the browser itself: the codec must be bit-exact with the gateway's
# (CPython's audioop), and the resampler must keep the phone band and reject what would alias into it.
_AUDIO_PROBE = """(async () => {
  const audio = await import(new URL("/phone/static/audio.js", location.href).href);
  const encoded = [];
  for (let sample = -32768; sample < 32768; sample++) encoded.push(audio.linearToUlaw(sample));
  const gains = {};
  for (const inRate of [48000, 44100]) {
    for (const hz of [300, 1000, 3000, 4500, 8000]) {
      const resampler = new audio.Resampler(inRate, 8000);
      const out = [];
      for (let block = 0; block < inRate / 128; block++) {  // one second, in worklet-sized blocks
        const input = new Float32Array(128);
        for (let i = 0; i < 128; i++) input[i] = 0.5 * Math.sin(2 * Math.PI * hz * (block * 128 + i) / inRate);
        out.push(...resampler.push(input));
      }
      const tail = out.slice(400);
      const rms = Math.sqrt(tail.reduce((sum, x) => sum + x * x, 0) / tail.length);
      gains[`${inRate}:${hz}`] = [out.length, 20 * Math.log10(rms / (0.5 / Math.SQRT2) + 1e-12)];
    }
  }
  return { encoded, decoded: Array.from(audio.ULAW_TO_LINEAR), gains };
})()"""


def test_phone_audio_module_matches_the_gateways_g711(chromium: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with (
        serve(create_backend(settings)) as backend,
        headless_chromium(chromium, f"{backend}/phone", tmp_path / "profile") as page,
    ):
        result = page.evaluate(_AUDIO_PROBE)
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert bytes(result["encoded"]) == pcm16_to_ulaw(every_sample)
    assert np.array_equal(
        np.array(result["decoded"], dtype="<i2"), np.frombuffer(ulaw_to_pcm16(bytes(range(256))), dtype="<i2")
    )
    for key, (length, gain_db) in result["gains"].items():
        hz = int(key.split(":")[1])
        assert abs(length - 8000) < 40, (key, length)  # 8 kHz out, less the filter's few-ms delay
        if hz <= 3000:
            assert abs(gain_db) < 0.5, (key, gain_db)  # the phone band passes untouched
        else:
            assert gain_db < -60, (key, gain_db)  # would alias below 4 kHz: filtered out first


def test_unreachable_gateway_is_shown_and_the_call_canceled(chromium: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{free_port()}")  # nothing listens
    with serve(create_backend(settings)) as backend:
        client = httpx.Client(base_url=backend, headers=AUTH, timeout=30)
        agent = client.post("/agents", json={"name": "Ava", "prompt": "Answer calls."}).json()
        with headless_chromium(chromium, f"{backend}/phone#key=test-key", tmp_path / "profile") as page:
            wait_for(
                lambda: page.evaluate("document.getElementById('call')?.disabled === false"),
                30,
                "the agent list",
            )
            page.evaluate("document.getElementById('call').click()", user_gesture=True)
            status = wait_for(
                lambda: page.evaluate(
                    "document.getElementById('status').dataset.state === 'error'"
                    " && document.getElementById('status').textContent"
                ),
                30,
                "the page to report the failure",
            )
            call_id = page.evaluate("document.body.dataset.callId")
            final = wait_for(
                lambda: (c := client.get(f"/calls/{call_id}").json())["status"] == "canceled" and c,
                10,
                "the call row to be canceled",
            )
            assert page.evaluate("document.getElementById('call').disabled") is False, "ready to call again"
    assert "cannot reach the voice gateway" in status
    assert final["agent_id"] == agent["id"] and final["metadata"] == {"channel": "browser"}
