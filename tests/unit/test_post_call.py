"""Pure post-call logic: analysis specs and answers, webhook signatures and the SSRF guard, the recorder."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from shared import analysis, webhooks
from shared.audio import pcm16_to_ulaw
from shared.storage.base import TranscriptLine
from voice_gateway.recorder import CallRecorder

SPEC = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema({"new_day": "string", "has_insurance": "boolean"}))


def _answer(**changes: object) -> str:
    value = {"evidence": "Thursday is perfect", "summary": "The caller moved the cleaning to Thursday.",
             "key_points": ["Thursday"],
             "sentiment": "positive", "outcome": "goal_achieved",
             "data": {"new_day": "Thursday", "has_insurance": True}}
    value.update(changes)
    return json.dumps(value)


def test_shorthand_schema_becomes_a_closed_json_schema() -> None:
    assert SPEC.data_schema == {
        "type": "object", "properties": {"new_day": {"type": "string"}, "has_insurance": {"type": "boolean"}},
        "required": ["new_day", "has_insurance"], "additionalProperties": False,
    }


def test_valid_answer_is_parsed() -> None:
    assert analysis.parse_answer(_answer(), SPEC)["data"] == {"new_day": "Thursday", "has_insurance": True}


@pytest.mark.parametrize(("answer", "reason"), [
    ("not json", "not valid JSON"),
    (_answer(outcome="booked"), "schema violation at outcome"),
    (_answer(sentiment="happy"), "schema violation at sentiment"),
    (_answer(data={"new_day": "Thursday"}), "has_insurance"),
    (_answer(data={"new_day": 3, "has_insurance": True}), "schema violation at data/new_day"),
    (_answer(summary="   "), "summary is empty"),
])
def test_invalid_answers_name_the_problem(answer: str, reason: str) -> None:
    with pytest.raises(analysis.InvalidAnalysis, match=reason):
        analysis.parse_answer(answer, SPEC)


def test_generation_schema_drops_string_lengths_but_keeps_field_names() -> None:
    spec = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema({"maxLength": "string"}))
    schema = analysis.generation_schema(spec)
    assert "maxLength" not in schema["properties"]["summary"]
    assert schema["properties"]["data"]["properties"] == {"maxLength": {"type": "string"}}


def test_long_transcripts_are_split_into_parts_not_cut() -> None:
    lines = [f"CALLER: sentence number {i} " + "word " * 50 for i in range(40)]
    parts = analysis._chunks(lines, budget_tokens=300)
    assert len(parts) > 1 and "\n".join(parts).count("sentence number") == 40


async def test_no_caller_speech_needs_no_model() -> None:
    lines = [TranscriptLine(id="1", call_id="c", speaker="agent", text="Hello?", timestamp=datetime.now(UTC))]
    values = await analysis.analyze(None, lines, SPEC, context_tokens=4096)  # type: ignore[arg-type]
    assert values["outcome"] == "no_conversation" and values["attempts"] == 0


def test_signature_verifies_and_rejects_tampering_and_old_timestamps() -> None:
    body = b'{"id":"e1","type":"call.ended"}'
    header = webhooks.sign("s3cret", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert webhooks.verify("s3cret", body, header, now=1_700_000_010)
    assert not webhooks.verify("s3cret", body + b" ", header, now=1_700_000_010)
    assert not webhooks.verify("other", body, header, now=1_700_000_010)
    assert not webhooks.verify("s3cret", body, header, now=1_700_001_000)


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://localhost:8000/x", "http://[::1]/x",
                                 "http://192.168.1.5/x", "http://169.254.169.254/latest"])
async def test_private_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(webhooks.WebhookURLError, match="private"):
        await webhooks.check_target(url, allow_private=False)
    await webhooks.check_target(url, allow_private=True)


def test_queueing_jobs_loads_no_analysis_or_webhook_code() -> None:
    """The gateway queues jobs through `shared.jobs` but never runs them: it must not load what they need."""
    code = ("import sys; from shared import jobs; import shared.jobs.enqueue; jobs.notify_call_ended; "
            "print(sorted({'shared.analysis', 'shared.webhooks', 'shared.jobs.tasks'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


def test_backoff_doubles_and_spans_about_an_hour() -> None:
    delays = [webhooks.backoff_s(n, 30.0) for n in range(1, 8)]
    assert delays[:3] == [30.0, 60.0, 120.0] and 3000 < sum(delays) < 4500


def _tone(freq: float, samples: int) -> bytes:
    t = np.arange(samples) / 8000
    return pcm16_to_ulaw((np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes())


def test_recording_puts_caller_left_agent_right_and_drops_audio_cut_by_clear(tmp_path: Path) -> None:
    recorder = CallRecorder.open(tmp_path, "0b8e0a8e-6f1e-4c39-9a39-5d0f9c1d7c11")
    silence = b"\xff" * 160
    for _ in range(10):  # agent talks for 200 ms while the caller is silent
        recorder.agent(_tone(440, 160))
        recorder.caller(silence)
    recorder.agent(_tone(440, 1600))  # 200 ms in flight when the caller barges in
    recorder.cut()
    for _ in range(10):
        recorder.caller(_tone(1000, 160))
    recorder.close()
    with wave.open(str(recorder.path)) as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getnframes()) == (2, 8000, 3200)
        frames = np.frombuffer(reader.readframes(3200), dtype="<i2")
    left, right = frames[0::2].astype(float), frames[1::2].astype(float)
    assert np.abs(right[:1600]).mean() > 1000 and np.abs(left[:1600]).mean() < 50
    assert np.abs(left[1600:]).mean() > 1000 and np.abs(right[1600:]).mean() < 50  # the cut audio is gone
