"""The phone-band test set (tests/data/phone_set) and how `relayx bench --set phone` scores it:
the committed files are complete and plausible, and the scoring (WER, split and merged turns,
repeated replies, refusals, overlaps) counts what it claims to. No models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relayx_cli import phone_set
from relayx_cli.bench import set_figures, set_plan
from relayx_cli.turn_scoring import (
    overlap_figures,
    refusals,
    repeated,
    score_turns,
    set_summary,
    set_table,
)
from relayx_cli.voice_bench import CallReport, CallResult, Overlap, Playout
from shared import audio

SET = phone_set.load()


# --- the committed set ------------------------------------------------------------------------


def test_every_line_has_a_reference_and_an_8khz_ulaw_file_of_its_stated_length() -> None:
    assert (SET.sample_rate, SET.encoding) == (8000, "audio/x-mulaw")
    assert 20 <= len(SET.lines) <= 30
    assert len({line.id for line in SET.lines}) == len(SET.lines)
    for line in SET.lines:
        assert line.reference.strip(), line.id
        ulaw = SET.audio(line.file)
        seconds = len(ulaw) / 8000
        assert seconds == pytest.approx(line.duration_s, abs=0.01), line.id
        assert 0.2 <= seconds <= 6.0, line.id
        # μ-law of speech at the line's level: loud parts near -20 dBFS, never digital silence
        level = audio.rms(audio.ulaw_to_float32(ulaw))
        assert -35 < 20 * np.log10(level) < -10, line.id


def test_the_set_stays_small() -> None:
    total = sum(p.stat().st_size for p in SET.root.iterdir())
    assert total < 2_000_000


def test_the_set_holds_each_kind_of_line_the_issue_asks_for() -> None:
    lines = SET.lines
    pauses = [line for line in lines if "pause" in line.tags]
    assert len(pauses) >= 6
    assert all(len(line.pauses_s) == 1 and 0.6 <= line.pauses_s[0] <= 1.0 for line in pauses)
    assert len([line for line in lines if "short" in line.tags]) >= 3
    by_id = {line.id: line for line in lines}
    repeats = [line for line in lines if line.repeat_of]
    assert len(repeats) >= 2 and all(r.repeat_of in by_id for r in repeats)
    backchannels = [line for line in lines if line.overlap == "backchannel"]
    interruptions = [line for line in lines if line.overlap == "interruption"]
    assert len(backchannels) >= 2 and all(line.duration_s <= 0.6 for line in backchannels)
    assert len(interruptions) >= 2 and all(1.0 <= line.duration_s <= 2.5 for line in interruptions)
    assert {c.voice.split("-")[0] for c in SET.calls} == {"piper", "espeak"}
    assert all(line.over_agent_after_ms for line in backchannels + interruptions)
    assert all(c.lines[0].overlap is None for c in SET.calls)  # an overlap needs a reply before it


def test_a_pause_inside_a_line_is_line_noise_on_the_wire_not_speech_and_not_digital_silence() -> None:
    line = next(line for line in SET.lines if "pause" in line.tags)
    frames = audio.ulaw_to_float32(SET.audio(line.file))
    frames = frames[: frames.size // 160 * 160].reshape(-1, 160)
    db = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-9)
    quiet = np.flatnonzero(db < -38)  # line noise sits 20–25 dB under the -20 dBFS speech
    runs = np.split(quiet, np.flatnonzero(np.diff(quiet) != 1) + 1)
    longest = max(len(r) for r in runs) * 0.02
    assert longest >= line.pauses_s[0] - 0.1
    assert db.min() > -60  # not digital silence


def test_a_set_call_becomes_a_plan_that_marks_its_overlaps() -> None:
    call = SET.calls[0]
    plan = set_plan(SET, call)
    assert [line.text for line in plan.lines] == [line.reference for line in call.lines]
    assert plan.label == call.id and plan.bed
    for i, line in enumerate(call.lines):
        assert plan.overlap(i) == line.overlap


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text((SET.root / "manifest.json").read_text())
    broken = phone_set.load(tmp_path)
    with pytest.raises(phone_set.PhoneSetError, match="missing"):
        broken.audio(broken.calls[0].lines[0].file)


# --- scoring the caller's lines -----------------------------------------------------------------


REFS = ["My name is Sarah. I'm calling about my order.", "Yes.", "Do you open at 9 on Fridays?"]


def test_lines_stored_as_said_score_no_split_and_their_wer() -> None:
    score = score_turns(REFS, ["My name is Sara, I'm calling about my order.", "Yes", "Do you open at nine on Fridays?"])
    assert score.split == [] and score.merged == [] and score.missing == []
    assert score.errors == 1 and score.wer == pytest.approx(1 / 17)


def test_a_mid_thought_pause_taken_for_the_end_of_the_turn_is_a_split() -> None:
    score = score_turns(REFS, ["My name is Sarah.", "I'm calling about my order.", "Yes.", "Do you open at 9 on Fridays?"])
    assert score.split == [0]
    assert score.wrong == [0]
    assert score.errors == 0  # the words are all there: WER does not depend on where the turn was cut


def test_two_lines_stored_as_one_are_merged() -> None:
    score = score_turns(REFS, ["My name is Sarah. I'm calling about my order.", "Yes, do you open at 9 on Fridays?"])
    assert score.merged == [1, 2]
    assert score.split == []


def test_a_misheard_word_does_not_fake_a_split_and_a_dropped_line_is_missing() -> None:
    score = score_turns(REFS, ["My name is Sarah. I'm calling about my order.", "Do you open at nine on Thursdays?"])
    assert score.split == [] and score.merged == []
    assert score.missing == [1]


# --- the agent's lines ----------------------------------------------------------------------------


def test_a_reply_repeated_word_for_word_counts_case_and_punctuation_aside() -> None:
    agent = ["Hi, this is Ava.", "A cleaning costs 80 dollars.", "Sure!", "a cleaning costs eighty dollars", "Sure."]
    assert repeated(agent) == [3, 4]


def test_refusals_are_caught_and_ordinary_apologies_are_not() -> None:
    agent = [
        "I'm sorry, but I can't assist with that.",
        "I cannot help with that request.",
        "As an AI, I don't have a calendar.",
        "I’m sorry, I cannot provide that.",
        "I'm sorry, we're closed on Saturdays.",
        "Sorry, I didn't catch that. Could you repeat it?",
        "I can help you with that!",
    ]
    assert refusals(agent) == [0, 1, 2, 3]


# --- overlaps -----------------------------------------------------------------------------------


def test_an_interruption_is_timed_from_its_first_frame_to_the_clear() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    playout.frame(2.0)
    for i in range(100):
        playout.frame(2.0 + i * 0.001)  # two seconds of reply buffered
    playout.line_started(3.0, turn=1, overlap="interruption")
    playout.clear(3.12)
    playout.line_ended(4.5, turn=1)
    [overlap] = playout.overlaps
    assert overlap.over_agent and overlap.onset_to_clear_ms == pytest.approx(120)
    assert overlap.ended_at == 4.5
    assert len(playout.replies) == 3  # the interruption opens a reply of its own


def test_a_backchannel_opens_no_reply_and_counts_the_reply_resuming_after_a_clear() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    for i in range(100):
        playout.frame(2.0 + i * 0.001)
    playout.line_started(2.5, turn=1, overlap="backchannel")
    playout.clear(2.6)
    playout.backchannel_ended(2.8)
    playout.frame(3.5)
    playout.frame(3.52)
    [overlap] = playout.overlaps
    assert overlap.resumed and overlap.frames_after_clear == 2
    assert len(playout.replies) == 2  # still the reply to line 0
    playout.line_started(6.0, turn=2)
    playout.frame(6.1)  # after the caller's next line began: no longer this overlap's
    assert overlap.frames_after_clear == 2


def test_a_line_said_after_the_reply_ended_did_not_overlap() -> None:
    playout = Playout(0.0)
    playout.line_ended(1.0, turn=0)
    playout.frame(2.0)
    playout.line_started(5.0, turn=1, overlap="backchannel")
    assert not playout.overlaps[0].over_agent


def test_overlap_figures_split_backchannels_from_interruptions() -> None:
    overlaps = [
        Overlap(1, "interruption", onset_at=10.0, over_agent=True, clear_at=10.1),
        Overlap(3, "interruption", onset_at=20.0, over_agent=True, clear_at=20.5),
        Overlap(5, "backchannel", onset_at=30.0, over_agent=True),  # played on
        Overlap(7, "backchannel", onset_at=40.0, over_agent=True, clear_at=40.2, frames_after_clear=40),
        Overlap(9, "backchannel", onset_at=50.0, over_agent=False),
    ]
    figures = overlap_figures(overlaps)
    assert figures["interruption"]["onset_to_clear_ms"]["p50"] == pytest.approx(100)
    assert figures["interruption"]["onset_to_clear_ms"]["max"] == pytest.approx(500)
    bc = figures["backchannel"]
    assert (bc["lines"], bc["over_agent"], bc["cleared"], bc["played_on"], bc["resumed_after_clear"]) == (3, 2, 1, 1, 1)
    assert figures["onset_to_clear_ms"]["p50"] == pytest.approx(200)


def test_the_set_summary_reads_the_stored_rows_of_each_call() -> None:
    call = SET.calls[0]
    rows: list[dict[str, Any]] = [{"speaker": "agent", "text": "Hi, this is Ava.", "metrics": {}}]
    for i, line in enumerate(call.lines):
        metrics = {"backchannel": True} if line.overlap == "backchannel" else {"end_of_turn_ms": 500 + 10 * i}
        rows.append({"speaker": "caller", "text": line.reference, "metrics": metrics})
        rows.append({"speaker": "agent", "text": "Sure, I can help with that.", "metrics": {}})
    report = CallReport(voice=call.voice, lines=[x.reference for x in call.lines], start_delay_s=0.0, label=call.id)
    summary = set_figures(SET, [CallResult(phone=report, rows=rows)])
    assert summary["wer"] == 0.0 and summary["split_wrongly"] == 0 and summary["missing"] == 0
    assert summary["lines"] == len(call.lines)
    assert summary["repeated_replies"] == len(call.lines) - 1
    assert summary["refusals"] == 0
    assert summary["stored_backchannels"] == sum(1 for x in call.lines if x.overlap == "backchannel")
    assert summary["end_of_turn_ms_p50"] is not None
    assert summary["pause_lines"] == sum(1 for x in call.lines if "pause" in x.tags)
    assert "WER 0.0%" in set_table(summary)


def test_the_set_summary_counts_split_pause_lines() -> None:
    refs = [["Okay. And how long does it take?", "No."]]
    rows = [[{"speaker": "caller", "text": "Okay.", "metrics": {}},
             {"speaker": "caller", "text": "And how long does it take?", "metrics": {}},
             {"speaker": "caller", "text": "No.", "metrics": {}}]]
    summary = set_summary(refs, rows, [], tags=[[("pause",), ("short",)]])
    assert (summary["pause_lines"], summary["pause_lines_split"]) == (1, 1)
    assert summary["split_wrongly_share"] == 0.5


def test_a_backchannel_is_not_a_turn_that_waits_for_an_answer() -> None:
    from relayx_cli.voice_bench import Reply, call_summary

    replies = [Reply(turn=None, opened_at=0.0), Reply(turn=0, opened_at=3.0, first_frame_at=4.0),
               Reply(turn=2, opened_at=9.0, first_frame_at=10.2)]
    report = CallReport(voice="v", lines=["Do you open on Fridays?", "Okay.", "Yes."], start_delay_s=0.0,
                        replies=replies, backchannels=1)
    summary = call_summary(CallResult(phone=report), [])
    assert (summary["turns"], summary["answered"]) == (2, 2)


def test_a_short_line_stored_after_the_next_one_is_not_missing() -> None:
    score = score_turns(["Do you open on Fridays?", "Okay.", "Yes."], ["Do you open on Fridays?", "Yes.", "Okay."])
    assert score.missing == [] and score.split == [] and score.merged == []


def test_speech_onset_is_found_after_the_line_noise_before_it() -> None:
    from relayx_cli.voice_bench import speech_onset_s
    from shared.audio import float32_to_ulaw

    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(8000) * 0.003).astype(np.float32)
    t = np.arange(4000) / 8000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    line = float32_to_ulaw(np.concatenate([noise[:1440], speech, noise[:800]]))  # 180 ms of line first
    assert 0.16 <= speech_onset_s(line) <= 0.2
    assert speech_onset_s(b"") == 0.0
