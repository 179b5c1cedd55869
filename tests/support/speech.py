"""Caller speech for tests that need words: the simulator's own callee (Piper, pitched up), phone band.

espeak-ng is a formant synthesiser: tiny.en (int8) reads its robotic vowels right on one CPU and as
other words on the next (AVX2 vs AVX-512 kernels). Piper is a neural voice Whisper hears clearly, so a
word error bound with a real margin holds on any CPU while garbage still fails it. Piper samples its
noise afresh on every call, so each synthesis differs a little too; the bounds are set over many.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from backend.telephony.caller_voice import synthesize_caller
from shared import audio


@lru_cache(maxsize=64)
def caller_ulaw(text: str) -> bytes:
    """`text` as the simulated callee says it: Piper pitched up, 300–3400 Hz, 8 kHz μ-law.

    Callable from sync and async tests alike: the synthesis runs on its own loop in a worker thread.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, synthesize_caller(text)).result()


def gateway_hears(ulaw: bytes) -> np.ndarray:
    """What the gateway hands its VAD and STT: μ-law decoded 20 ms frame by frame, streamed to 16 kHz."""
    up = audio.PhoneUpsampler()
    frames = [ulaw[i : i + audio.FRAME_BYTES] for i in range(0, len(ulaw), audio.FRAME_BYTES)]
    return np.concatenate([*(up.process(audio.ulaw_to_float32(f)) for f in frames), up.flush()])


def tone_ulaw(ms: int) -> bytes:
    """Caller 'speech' the energy VAD cannot miss: a 300 Hz tone, 8 kHz μ-law (for tests of the
    gateway's rules, run on instant engines, where the words do not matter)."""
    t = np.arange(8 * ms) / 8000
    return audio.float32_to_ulaw((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
