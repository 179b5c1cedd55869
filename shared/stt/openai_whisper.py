"""Optional STT: the reference `openai-whisper` package (PyTorch), for a model name or a .pt checkpoint."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shared.errors import ConfigurationError
from shared.stt.base import Transcription
from shared.stt.segments import Segment, summarise

_models: dict[str, tuple[Any, ThreadPoolExecutor]] = {}
_models_lock = threading.Lock()


def _load(name_or_path: str) -> tuple[Any, ThreadPoolExecutor]:
    """Load once per process; `whisper` is imported here so the extra stays optional."""
    with _models_lock:
        if name_or_path not in _models:
            try:
                import whisper
            except ImportError as exc:
                raise ConfigurationError(
                    "STT_ENGINE=openai-whisper needs `pip install openai-whisper`"
                ) from exc
            model = whisper.load_model(name_or_path, device="cpu")
            _models[name_or_path] = (model, ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt"))
        return _models[name_or_path]


class OpenAIWhisperSTT:
    """Transcribes with openai-whisper; slower than faster-whisper on CPU, kept for custom checkpoints."""

    def __init__(self, model: str = "tiny.en", *, language: str | None = "en", threads: int = 2) -> None:
        self.model_name = model
        self.language = language
        self.threads = threads

    def warmup(self) -> None:
        """Load the checkpoint and decode one second of silence."""
        model, _ = _load(self.model_name)
        self._transcribe_sync(model, np.zeros(16000, dtype=np.float32), None)

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        """Transcribe 16 kHz float32 audio in the model's single worker thread."""
        model, executor = _load(self.model_name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, self._transcribe_sync, model, np.asarray(audio, np.float32), prompt
        )

    def _transcribe_sync(self, model: Any, audio: np.ndarray, prompt: str | None) -> Transcription:
        import torch

        torch.set_num_threads(self.threads)
        result = model.transcribe(
            audio,
            language=self.language,
            temperature=0.0,
            fp16=False,
            condition_on_previous_text=False,
            without_timestamps=True,
            initial_prompt=prompt,
            no_speech_threshold=None,  # filtered by shared.stt.segments, so the signals reach the caller
            verbose=None,
        )
        return summarise(
            [
                Segment(s["text"], float(s["no_speech_prob"]), float(s["avg_logprob"]))
                for s in result.get("segments", [])
            ]
        )
