"""voice_gateway.turns: turn events from synthetic audio, driven by the energy VAD."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shared.vad.energy import EnergyVAD
from voice_gateway.turns import (
    PauseBegan,
    PauseDetected,
    SpeechAbandoned,
    SpeechGoingOn,
    SpeechResumed,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
    VoiceOnset,
)

RATE = 16000


def _ms(ms: int) -> int:
    return ms * RATE // 1000


def _speech(ms: int, seed: int = 1) -> np.ndarray:
    """Loud band-limited noise with a syllable-like envelope: the energy VAD calls it speech."""
    rng = np.random.default_rng(seed)
    n = _ms(ms)
    envelope = 0.6 + 0.4 * np.abs(np.sin(np.pi * np.arange(n) / _ms(180)))
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def _silence(ms: int, seed: int = 2) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(_ms(ms)) * 0.0005).astype(np.float32)


def _feed(detector: TurnDetector, audio: np.ndarray, chunk: int, *, onsets: bool = False,
          going_on: bool = False) -> list:
    """Feed `audio` in chunks; the events, without VoiceOnset/SpeechAbandoned and SpeechGoingOn unless
    asked."""
    events = []
    for i in range(0, audio.size, chunk):
        events.extend(detector.feed(audio[i : i + chunk]))
    if not onsets:
        events = [e for e in events if not isinstance(e, VoiceOnset | SpeechAbandoned)]
    return events if going_on else [e for e in events if not isinstance(e, SpeechGoingOn)]


def _kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


@pytest.mark.parametrize("chunk", [160, 320, 1000, 16000])
def test_one_utterance_gives_start_pause_end_whatever_the_chunk_size(chunk: int) -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(min_speech_ms=200, end_of_turn_silence_ms=500, early_pause_ms=200))
    audio = np.concatenate([_silence(1000), _speech(1200), _silence(1000)])
    events = _feed(detector, audio, chunk)
    assert _kinds(events) == ["SpeechStarted", "PauseBegan", "PauseDetected", "TurnEnded"]
    started, _began, pause, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, TurnEnded)
    assert abs(started.onset_sample - _ms(1000)) <= 512
    assert started.at_sample - started.onset_sample >= _ms(200)
    assert abs(ended.speech_end_sample - _ms(2200)) <= 512
    assert pause.speech_end_sample == ended.speech_end_sample
    assert 500 <= ended.end_of_turn_ms < 500 + 32 + 1
    assert 200 <= (pause.at_sample - pause.speech_end_sample) * 1000 / RATE < 233


def test_utterance_audio_includes_pre_roll_and_the_whole_speech() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(pre_roll_ms=300, post_roll_ms=200))
    speech = _speech(1000)
    events = _feed(detector, np.concatenate([_silence(1000), speech, _silence(800)]), 480)
    ended = next(e for e in events if isinstance(e, TurnEnded))
    # pre-roll (~300 ms) + speech (1000 ms) + post-roll (200 ms), to window granularity
    assert abs(ended.audio.size - _ms(1500)) <= 2 * 512
    start = int(np.argmax(np.abs(ended.audio) > 0.01))
    assert _ms(250) <= start <= _ms(350)
    assert ended.audio.dtype == np.float32


def test_clicks_and_bursts_shorter_than_min_speech_are_ignored() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(min_speech_ms=250))
    parts = [_silence(500)]
    for _ in range(5):
        parts += [_speech(60), _silence(400)]
    parts += [_speech(150), _silence(1000)]
    assert _feed(detector, np.concatenate(parts), 320) == []
    assert not detector.speaking


def test_a_pause_then_more_speech_resumes_the_same_turn() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=600, early_pause_ms=200))
    audio = np.concatenate([_silence(300), _speech(700), _silence(350), _speech(600), _silence(800)])
    events = _feed(detector, audio, 320)
    assert _kinds(events) == ["SpeechStarted", "PauseBegan", "PauseDetected", "SpeechResumed", "PauseBegan",
                              "PauseDetected", "TurnEnded"]
    first_pause, resumed, second_pause, ended = events[2], events[3], events[5], events[6]
    assert isinstance(resumed, SpeechResumed)
    assert first_pause.speech_end_sample < resumed.at_sample < second_pause.speech_end_sample
    assert second_pause.speech_end_sample == ended.speech_end_sample
    assert ended.audio.size > first_pause.audio.size + _ms(900)


def test_a_blip_during_a_pause_does_not_resume_or_delay_the_end_of_turn() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=500, resume_ms=96))
    audio = np.concatenate([_speech(800), _silence(300), _speech(32), _silence(600)])
    events = _feed(detector, audio, 512)
    assert _kinds(events) == ["SpeechStarted", "PauseBegan", "PauseDetected", "TurnEnded"]
    assert abs(events[-1].speech_end_sample - _ms(800)) <= 512


def test_end_of_turn_silence_is_configurable_per_agent() -> None:
    for silence_ms in (300, 700):
        detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=silence_ms))
        events = _feed(detector, np.concatenate([_speech(800), _silence(1000)]), 800)
        ended = events[-1]
        assert isinstance(ended, TurnEnded)
        assert silence_ms <= ended.end_of_turn_ms < silence_ms + 33


def test_two_turns_in_a_row_are_reported_separately() -> None:
    detector = TurnDetector(EnergyVAD())
    audio = np.concatenate([_speech(600), _silence(800), _speech(600, seed=5), _silence(800)])
    events = _feed(detector, audio, 320)
    ends = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ends) == 2
    assert ends[1].speech_end_sample - ends[0].speech_end_sample == pytest.approx(_ms(1400), abs=1024)


def test_a_monologue_is_cut_at_max_utterance_length() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(max_utterance_ms=2000))
    events = _feed(detector, _speech(3000), 1600)
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert ended and ended[0].audio.size <= _ms(2000) + 512


def test_pause_longer_than_end_of_turn_is_rejected() -> None:
    with pytest.raises(ValueError):
        TurnConfig(end_of_turn_silence_ms=200, early_pause_ms=300)


def test_speculation_begins_before_the_pause_the_model_hears_and_a_resume_between_cancels_it() -> None:
    config = TurnConfig(end_of_turn_silence_ms=500, early_pause_ms=150, speculate_ms=96)
    detector = TurnDetector(EnergyVAD(), config)
    events = _feed(detector, np.concatenate([_speech(900), _silence(1000)]), 320)
    began, detected = events[1], events[2]
    assert isinstance(began, PauseBegan) and isinstance(detected, PauseDetected)
    assert began.speech_end_sample == detected.speech_end_sample
    assert 96 <= (began.at_sample - began.speech_end_sample) * 1000 / RATE < 96 + 33
    assert 150 <= (detected.at_sample - detected.speech_end_sample) * 1000 / RATE < 150 + 33
    assert np.array_equal(began.audio, detected.audio[: began.audio.size])
    # Speech back 128 ms into the pause: speculation is stale, and the model never hears that pause.
    detector = TurnDetector(EnergyVAD(), config)
    audio = np.concatenate([_speech(900), _silence(128), _speech(600, seed=3), _silence(1000)])
    assert _kinds(_feed(detector, audio, 320)) == ["SpeechStarted", "PauseBegan", "SpeechResumed", "PauseBegan",
                                                   "PauseDetected", "TurnEnded"]
    with pytest.raises(ValueError):
        TurnConfig(early_pause_ms=150, speculate_ms=200)


def test_pause_audio_is_a_prefix_of_the_final_utterance() -> None:
    detector = TurnDetector(EnergyVAD())
    events = _feed(detector, np.concatenate([_silence(200), _speech(900), _silence(700)]), 640)
    pause = next(e for e in events if isinstance(e, PauseDetected))
    ended = events[-1]
    assert np.array_equal(pause.audio, ended.audio[: pause.audio.size])


def test_voice_onset_comes_early_and_a_burst_that_stops_is_abandoned() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(min_speech_ms=250, onset_ms=64))
    events = _feed(detector, np.concatenate([_silence(500), _speech(128), _silence(600)]), 320, onsets=True)
    assert _kinds(events) == ["VoiceOnset", "SpeechAbandoned"]
    onset = events[0]
    assert onset.at_sample - onset.onset_sample <= _ms(64) + 512
    detector = TurnDetector(EnergyVAD(), TurnConfig(min_speech_ms=250, onset_ms=64))
    events = _feed(detector, np.concatenate([_silence(500), _speech(900), _silence(800)]), 320, onsets=True)
    assert _kinds(events) == ["VoiceOnset", "SpeechStarted", "PauseBegan", "PauseDetected", "TurnEnded"]
    assert events[0].at_sample < events[1].at_sample


def _until_pause(detector: TurnDetector, audio: np.ndarray) -> tuple[list, np.ndarray]:
    """Feed 20 ms chunks up to the first PauseDetected; the events and the audio not fed yet."""
    events: list = []
    for i in range(0, audio.size, 320):
        events.extend(detector.feed(audio[i : i + 320]))
        if any(isinstance(e, PauseDetected) for e in events):
            return events, audio[i + 320 :]
    raise AssertionError("no pause")


def test_a_confident_done_ends_the_turn_after_a_shorter_silence() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=500, early_pause_ms=150))
    _, rest = _until_pause(detector, np.concatenate([_speech(900), _silence(1000)]))
    assert detector.set_end_silence(250) == []  # 150-ish ms of silence so far: not yet
    ended = [e for e in _feed(detector, rest, 320) if isinstance(e, TurnEnded)]
    assert len(ended) == 1 and 250 <= ended[0].end_of_turn_ms < 250 + 33


def test_a_verdict_that_comes_late_ends_the_turn_at_once() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=500, early_pause_ms=150))
    _, rest = _until_pause(detector, np.concatenate([_speech(900), _silence(1000)]))
    assert _feed(detector, rest[: _ms(200)], 320) == []  # ~350 ms of silence now
    (ended,) = detector.set_end_silence(200)
    assert isinstance(ended, TurnEnded) and 330 <= ended.end_of_turn_ms < 400


def test_a_confident_not_done_waits_longer_and_speech_restores_the_default() -> None:
    config = TurnConfig(end_of_turn_silence_ms=500, early_pause_ms=150)
    detector = TurnDetector(EnergyVAD(), config)
    _, rest = _until_pause(detector, np.concatenate([_speech(900), _silence(1200), _speech(600, seed=4),
                                                     _silence(1000)]))
    detector.set_end_silence(1500)
    events = _feed(detector, rest, 320)
    assert _kinds(events) == ["SpeechResumed", "PauseBegan", "PauseDetected", "TurnEnded"]  # 1.2 s did not end it
    assert 500 <= events[-1].end_of_turn_ms < 533  # the next pause waits the default again
    assert events[-1].audio.size > _ms(2500)


def test_a_turn_kept_open_is_continued_with_every_sample_since_it_began() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=400, pre_roll_ms=300))
    first = _feed(detector, np.concatenate([_silence(500), _speech(900), _silence(500)]), 320)
    assert isinstance(first[-1], TurnEnded)
    detector.keep_open(True)  # its reply is not heard yet
    events = _feed(detector, np.concatenate([_silence(300), _speech(800, seed=7), _silence(600)]), 320)
    assert _kinds(events) == ["SpeechStarted", "PauseBegan", "PauseDetected", "TurnEnded"]
    assert events[0].continues
    whole = events[-1].audio
    # from the first turn's pre-roll (~300 ms before 500 ms) to the second's end + post-roll
    assert abs(whole.size - _ms(300 + 900 + 500 + 300 + 800 + 200)) <= 2 * 512
    assert np.array_equal(whole[: first[-1].audio.size], first[-1].audio)


def test_a_closed_turn_is_not_continued() -> None:
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=400))
    _feed(detector, np.concatenate([_speech(900), _silence(500)]), 320)
    detector.keep_open(True)
    detector.keep_open(False)  # its reply started playing
    events = _feed(detector, np.concatenate([_speech(800, seed=7), _silence(600)]), 320)
    assert not events[0].continues
    assert events[-1].audio.size < _ms(800 + 300 + 200) + 512


@pytest.mark.parametrize("chunk", [160, 512, 4000])
def test_long_speech_without_a_pause_is_handed_over_from_listen_ahead_from_ms_then_every_listen_ahead_ms(
    chunk: int,
) -> None:
    config = TurnConfig(end_of_turn_silence_ms=500, listen_ahead_from_ms=1000, listen_ahead_ms=1000)
    detector = TurnDetector(EnergyVAD(), config)
    audio = np.concatenate([_silence(500), _speech(3500), _silence(800)])
    events = _feed(detector, audio, chunk, going_on=True)
    assert _kinds(events) == ["SpeechStarted", "SpeechGoingOn", "SpeechGoingOn", "SpeechGoingOn",
                              "PauseBegan", "PauseDetected", "TurnEnded"]
    going = [e for e in events if isinstance(e, SpeechGoingOn)]
    ended = events[-1]
    assert isinstance(ended, TurnEnded)
    # Each hands over the utterance so far (pre-roll included), about a second more each time, and
    # every one is a prefix of the turn's own audio.
    lengths = [e.audio.size for e in going]
    assert all(b - a >= _ms(900) for a, b in itertools.pairwise(lengths))
    assert lengths[-1] < ended.audio.size
    for e in going:
        assert np.array_equal(e.audio[: _ms(900)], ended.audio[: _ms(900)])


def test_speech_shorter_than_listen_ahead_from_ms_or_with_it_off_is_never_handed_over_early() -> None:
    short = np.concatenate([_silence(500), _speech(900), _silence(800)])
    detector = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=500, listen_ahead_from_ms=1000))
    assert "SpeechGoingOn" not in _kinds(_feed(detector, short, 512, going_on=True))
    long = np.concatenate([_silence(500), _speech(3500), _silence(800)])
    off = TurnDetector(EnergyVAD(), TurnConfig(end_of_turn_silence_ms=500, listen_ahead_from_ms=0))
    assert "SpeechGoingOn" not in _kinds(_feed(off, long, 512, going_on=True))


def test_after_the_first_hand_over_the_next_come_every_listen_ahead_ms() -> None:
    config = TurnConfig(end_of_turn_silence_ms=500, listen_ahead_from_ms=1200, listen_ahead_ms=800)
    detector = TurnDetector(EnergyVAD(), config)
    audio = np.concatenate([_silence(500), _speech(3000), _silence(800)])
    events = _feed(detector, audio, 512, going_on=True)
    started = next(e for e in events if isinstance(e, SpeechStarted))
    spoken = [(e.at_sample - started.onset_sample) * 1000 // RATE for e in events if isinstance(e, SpeechGoingOn)]
    assert len(spoken) == 3  # at 1.2, 2.0 and 2.8 s of a 3 s utterance
    assert 1200 <= spoken[0] < 1300 and all(790 <= b - a <= 830 for a, b in itertools.pairwise(spoken))
