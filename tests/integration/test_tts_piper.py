"""Piper produces audible int16 speech at its own rate, ready for the 8 kHz phone resampler."""

from __future__ import annotations

import numpy as np
import pytest

from shared import audio
from shared.tts.piper import PiperTTS
from tests.support.wer import wer

pytestmark = pytest.mark.models


async def test_piper_yields_non_silent_int16_at_its_rate(tts: PiperTTS) -> None:
    chunks = [c async for c in tts.synthesize("Sure, I can book that for you.")]
    assert tts.sample_rate == 22050
    assert chunks and all(c.dtype == np.int16 for c in chunks)
    pcm = np.concatenate(chunks)
    assert 0.8 < pcm.size / tts.sample_rate < 4.0
    assert audio.rms(audio.int16_to_float32(pcm)) > 0.02


async def test_piper_audio_frames_to_phone_ulaw(tts: PiperTTS) -> None:
    down = audio.StreamResampler(tts.sample_rate, audio.PHONE_RATE)
    framer = audio.Framer()
    frames: list[bytes] = []
    async for chunk in tts.synthesize("Goodbye."):
        frames += framer.push(audio.float32_to_ulaw(down.process(chunk)))
    frames += framer.push(audio.float32_to_ulaw(down.flush())) + framer.flush()
    assert frames and all(len(f) == audio.FRAME_BYTES for f in frames)


async def test_piper_output_is_understood_by_whisper(tts: PiperTTS, stt) -> None:
    said = "Your appointment is on Friday."
    pcm = np.concatenate([c async for c in tts.synthesize(said)])
    heard = await stt.transcribe(audio.resample(pcm, tts.sample_rate, audio.STT_RATE))
    # A word error rate, not exact words (Whisper's int8 kernels differ by CPU). Measured 0.0 on every
    # take; 0.35 allows one wrong word of five, while silence or noise from a broken voice scores 1.0.
    assert wer(said, heard.text) <= 0.35, heard.text


async def test_each_sentence_runs_on_the_session_with_the_cores_the_gate_gave(tts: PiperTTS) -> None:
    # onnxruntime fixes a session's threads when it is made: the voice keeps one per thread count and
    # each sentence runs on the one that matches its share of the gate (shared.urgency).
    from shared import urgency
    from shared.urgency import ComputeGate, Fixed

    sessions = tts._voice.session
    used: list[int] = []

    class Spy:
        def __init__(self, threads: int, session: object) -> None:
            self.threads, self.session = threads, session

        def run(self, *args: object, **kwargs: object) -> object:
            used.append(self.threads)
            return self.session.run(*args, **kwargs)  # type: ignore[attr-defined]

    original = dict(sessions._sessions)
    assert sorted(original) == [1, tts.threads]
    sessions._sessions = {n: Spy(n, s) for n, s in original.items()}
    try:
        gate, me = ComputeGate(tts.threads), Fixed(0.0)  # one reply: its own work is no competition
        for most in (1, tts.threads):
            with gate.hold(me, most=most):
                chunks = list(tts._voice.synthesize("One sentence."))
            assert chunks and chunks[0].audio_int16_array.size > 0
        assert urgency.held() is None
    finally:
        sessions._sessions = original
    assert used == [1, tts.threads]
