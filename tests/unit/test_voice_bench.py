"""`relayx bench`'s pure parts: the caller's playout and gap accounting, figures, the capacity ramp,
and the realistic caller lines (espeak-ng ones only: fast, and their length is what is checked)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from backend.telephony.caller_voice import espeak_available
from relayx_cli import caller_lines
from relayx_cli.bench import ramp
from relayx_cli.voice_bench import (
    FRAME_S,
    CallReport,
    CallResult,
    Playout,
    Reply,
    failures,
    pct,
    summarise,
)


def _frames(playout: Playout, start: float, count: int, every: float = FRAME_S) -> float:
    """`count` frames arriving `every` seconds apart from `start`; returns the time after the last."""
    for i in range(count):
        playout.frame(start + i * every)
    return start + count * every


# --- playout and gaps ---------------------------------------------------------------------------


def test_frames_arriving_in_real_time_leave_no_gap() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    _frames(playout, 1.8, 100)
    reply = playout.current
    assert reply.gaps_ms == []
    assert reply.voice_to_voice_ms == pytest.approx(800)
    assert playout.play_end == pytest.approx(1.8 + 100 * FRAME_S)


def test_frames_sent_ahead_in_a_burst_leave_no_gap() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    _frames(playout, 1.5, 10, every=0.001)  # the gateway's 200 ms lead arrives at once
    _frames(playout, 1.52, 50)  # then one frame every 20 ms, still ahead of the play clock
    assert playout.current.gaps_ms == []


def test_a_late_frame_inside_a_reply_is_one_gap_of_its_lateness() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    after = _frames(playout, 2.0, 10)  # plays until 2.2
    gap = playout.frame(after + 0.1)  # arrives at 2.3: 100 ms of silence inside the reply
    _frames(playout, after + 0.12, 10)
    playout.settle()
    assert gap == pytest.approx(0.1)
    assert playout.current.gaps_ms == [pytest.approx(100.0)]


def test_silence_between_replies_is_response_time_not_a_gap() -> None:
    playout = Playout(0.0)
    _frames(playout, 0.1, 50)  # the greeting
    playout.line_started(2.0)
    playout.line_ended(5.5, turn=0)
    _frames(playout, 6.5, 50)
    playout.line_started(8.2)
    playout.line_ended(12.0, turn=1)
    _frames(playout, 13.1, 50)
    assert [r.turn for r in playout.replies] == [None, 0, 1]
    assert all(r.gaps_ms == [] for r in playout.replies)
    assert [round(r.voice_to_voice_ms or 0) for r in playout.replies[1:]] == [1000, 1100]
    assert playout.replies[0].voice_to_voice_ms is None  # the greeting answers no line


def test_a_reply_still_streaming_while_the_caller_speaks_counts_its_gap_and_the_overlap() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    after = _frames(playout, 2.0, 10)  # plays until 2.2; the caller waits 0.7 s, then speaks at 2.9
    assert playout.reply_done(2.91)
    playout.line_started(2.9)
    playout.frame(3.0)  # the rest of the reply, 800 ms late, over the caller's next line
    playout.mark("r1:1")  # its mark says it was the same reply
    assert playout.current.turn == 0
    assert playout.current.gaps_ms == [pytest.approx((3.0 - after) * 1000)]
    assert playout.current.frames_over_caller == 1


def test_a_silence_is_a_gap_once_a_mark_of_the_same_reply_follows_it() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    after = _frames(playout, 2.0, 10)
    playout.mark("r1:0")
    _frames(playout, after + 0.3, 10)  # the next clause, 300 ms late
    assert playout.current.gaps_ms == []  # a suspect until a mark says whose audio that was
    playout.mark("r1:1")
    assert playout.current.gaps_ms == [pytest.approx(300.0)]


def test_a_reply_started_in_a_pause_inside_the_callers_line_is_not_a_gap_in_the_reply_before() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    after = _frames(playout, 2.0, 10)  # the reply to line 0, until 2.2
    playout.mark("r1:0")
    playout.line_started(2.9)  # line 1: "My name is Sarah Johnson." … 0.8 s … "I'm a new patient."
    _frames(playout, 4.5, 5)  # the gateway answered the first half in the pause: a new reply
    playout.mark("r2:0")
    playout.clear(4.6)
    assert playout.current.turn == 0
    assert playout.current.gaps_ms == []
    assert playout.current.frames_over_caller == 5
    assert after < 4.5


def test_a_silence_no_mark_settles_counts_as_a_gap_when_the_call_ends() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    after = _frames(playout, 2.0, 10)
    _frames(playout, after + 0.2, 10)
    playout.settle()
    assert playout.current.gaps_ms == [pytest.approx(200.0)]


def test_audio_after_a_clear_is_a_new_utterance() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    _frames(playout, 2.0, 50)
    playout.clear(2.3)
    assert playout.play_end == pytest.approx(2.3)
    _frames(playout, 3.0, 10)
    assert playout.current.gaps_ms == []
    assert playout.current.clears == 1


def test_a_mark_is_due_when_the_audio_before_it_has_played() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    _frames(playout, 2.0, 10, every=0.0)  # 200 ms of audio at once
    assert playout.mark_due(2.0) == pytest.approx(2.2)
    assert playout.mark_due(5.0) == 5.0


def test_the_caller_speaks_again_only_after_the_reply_and_a_pause() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    assert not playout.reply_done(10.0)  # nothing heard yet
    _frames(playout, 2.0, 10)
    assert not playout.reply_done(2.5)
    assert playout.reply_done(2.2 + 0.7)


# --- figures ------------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert pct(values, 50) == 5
    assert pct(values, 95) == 10
    assert pct([float(v) for v in range(1, 21)], 95) == 19  # 0.95 × 20 is rank 19, not the maximum
    assert pct([7.0], 95) == 7
    assert pct([], 50) is None


def _result(v2v_ms: list[float | None], gaps_ms: list[float], late_ms: int = 0) -> CallResult:
    replies = [Reply(turn=None, opened_at=0.0)]
    for i, v in enumerate(v2v_ms):
        opened = 10.0 * (i + 1)
        replies.append(Reply(turn=i, opened_at=opened, first_frame_at=None if v is None else opened + v / 1000))
    replies[-1].gaps_ms = gaps_ms
    report = CallReport(voice="test", lines=[f"line {i}" for i in range(len(v2v_ms))], start_delay_s=0.0,
                        replies=replies)
    metrics: list[dict[str, Any]] = [{"max_frame_late_ms": 0}] + [
        {"stt_ms": 300, "end_of_turn_ms": 500, "held_ms": 20, "max_frame_late_ms": late_ms} for _ in v2v_ms
    ]
    return CallResult(phone=report, metrics=metrics)


def test_summary_counts_answered_turns_gaps_and_stages_per_call_and_overall() -> None:
    summary = summarise([_result([900, 1100, 1300], [12.0, 55.0]), _result([1000, None], [])])
    assert (summary["turns"], summary["answered"]) == (5, 4)
    assert summary["voice_to_voice_ms"]["p50"] == pytest.approx(1000)
    assert summary["gaps_over_40ms"] == 1
    assert summary["worst_gap_ms"] == 55.0
    assert summary["gateway_stage_p50_ms"]["held_ms"] == 20
    assert [c["answered"] for c in summary["per_call"]] == [3, 1]
    assert not summary["realtime"]


def test_a_level_fails_on_an_unanswered_turn_a_gap_a_late_frame_or_a_slow_p95() -> None:
    assert failures(summarise([_result([900, 1000], [30.0])])) == []
    assert "unanswered" in failures(summarise([_result([900, None], [])]))[0]
    assert "gap" in failures(summarise([_result([900, 1000], [41.0])]))[0]
    assert "max_frame_late_ms" in failures(summarise([_result([900, 1000], [], late_ms=60)]))[0]
    assert "p95" in failures(summarise([_result([900, 2600], [])]))[0]


def test_the_capacity_ramp_stops_at_the_first_failing_level() -> None:
    tried: list[int] = []

    async def level(n: int) -> dict[str, Any]:
        tried.append(n)
        return {"failures": [] if n <= 3 else ["too slow"]}

    best, levels = asyncio.run(ramp(level, max_calls=8))
    assert best == 3
    assert tried == [1, 2, 3, 4]
    assert list(levels) == [1, 2, 3, 4]


def test_the_capacity_ramp_reports_zero_when_one_call_fails_and_stops_at_its_ceiling() -> None:
    async def failing(n: int) -> dict[str, Any]:
        return {"failures": ["unanswered"]}

    async def passing(n: int) -> dict[str, Any]:
        return {"failures": []}

    assert asyncio.run(ramp(failing, max_calls=8))[0] == 0
    assert asyncio.run(ramp(passing, max_calls=3))[0] == 3


# --- caller lines -------------------------------------------------------------------------------


def test_call_scripts_are_deterministic_with_a_voice_and_sentences_per_call() -> None:
    scripts = [caller_lines.call_script(c, 5) for c in range(4)]
    assert scripts == [caller_lines.call_script(c, 5) for c in range(4)]
    assert len({s[0].voice.name for s in scripts}) == 4
    assert len({line.text for s in scripts for line in s}) == 20
    assert caller_lines.cache_key(scripts[0][0]) != caller_lines.cache_key(scripts[0][1])


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_espeak_caller_lines_last_3_to_5_s_and_are_cached(tmp_path: Any) -> None:
    voices = [v for v in caller_lines.VOICES if v.engine == "espeak"][:2]
    for i, voice in enumerate(voices):
        spec = caller_lines.LineSpec(caller_lines.SENTENCES[i * 7], voice)
        audio = caller_lines.load_line(spec, tmp_path)
        assert caller_lines.MIN_S <= caller_lines.duration_s(audio) <= caller_lines.MAX_S
        assert (tmp_path / f"{caller_lines.cache_key(spec)}.ulaw").read_bytes() == audio
        assert caller_lines.load_line(spec, tmp_path) == audio


def test_the_noise_bed_is_quiet_line_noise_not_silence() -> None:
    from shared import audio

    bed = audio.ulaw_to_float32(caller_lines.noise_bed(caller_lines.VOICES[0]))
    level_db = 20 * math.log10(audio.rms(bed))
    assert -20 - 25 - 1 < level_db < -20 - 20 + 1  # 20–25 dB under the speech level (-20 dBFS), in band


def test_staggered_calls_dial_one_stagger_apart_and_together_calls_at_once(tmp_path: Any) -> None:
    from backend.telephony.virtual_phone import CallerLine
    from relayx_cli.bench import Scenario, _Plans

    def offsets(scenario: Scenario) -> list[float]:
        plans = _Plans(scenario, tmp_path, None)
        plans._quick = [CallerLine("hello", b"\xff" * 160)]
        return [p.start_delay_s for p in plans.level(3)]

    assert offsets(Scenario(realistic=False, start="staggered", stagger_s=2.3)) == pytest.approx([0.0, 2.3, 4.6])
    assert offsets(Scenario(realistic=False, start="together")) == [0.0, 0.0, 0.0]
