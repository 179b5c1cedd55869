"""The optional TTS: a Coqui model (VITS and kin) loaded from a local checkpoint, never downloaded."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shared import audio
from shared.errors import ConfigurationError

_INSTALL_HINT = "TTS_ENGINE=coqui needs the Coqui package: pip install '.[coqui]'"
# What Coqui's trainer names a checkpoint, most final first; speakers.pth and the like are not models.
_CHECKPOINT_NAMES = ("model.pth", "model_file.pth", "best_model.pth", "checkpoint.pth")

_models: dict[tuple[str, str], tuple[Any, ThreadPoolExecutor]] = {}
_models_lock = threading.Lock()


def resolve_model(model_path: Path, config_path: Path | None = None) -> tuple[Path, Path]:
    """(checkpoint, config.json) for a checkpoint file or the folder it was trained into."""
    if model_path.is_dir():
        checkpoint = _find_checkpoint(model_path)
    elif model_path.is_file():
        checkpoint = model_path
    else:
        raise ConfigurationError(f"Coqui model not found: {model_path} (set COQUI_MODEL_PATH)")
    config = config_path or checkpoint.parent / "config.json"
    if not config.is_file():
        raise ConfigurationError(f"Coqui model config missing: {config}")
    return checkpoint.resolve(), config.resolve()


def _find_checkpoint(folder: Path) -> Path:
    """The final model in a training folder: a conventional name, else the best, else the latest step."""
    for name in _CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("best_model_*.pth", "checkpoint_*.pth"):
        steps = sorted(folder.glob(pattern), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if steps:
            return steps[-1]
    raise ConfigurationError(
        f"no Coqui checkpoint (model.pth, best_model*.pth, checkpoint_*.pth) in {folder}"
    )


def _load(checkpoint: Path, config: Path, threads: int) -> tuple[Any, ThreadPoolExecutor]:
    """One model per process; one worker thread so concurrent calls queue instead of thrashing the cores."""
    key = (str(checkpoint), str(config))
    with _models_lock:
        if key not in _models:
            try:
                import torch
                from TTS.utils.synthesizer import Synthesizer
            except ImportError as exc:
                raise ConfigurationError(_INSTALL_HINT) from exc
            except OSError as exc:  # a torchaudio built for CUDA fails to load its extension on CPU torch
                raise ConfigurationError(f"the Coqui package is installed but cannot load: {exc}") from exc

            # torch's intra-op pool is process-wide: the first Coqui model to load sizes it.
            torch.set_num_threads(threads)
            # Synthesizer reads only these two local files; the model manager (which downloads) is never used.
            synthesizer = Synthesizer(tts_checkpoint=checkpoint, tts_config_path=config, use_cuda=False)
            _models[key] = (synthesizer, ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts"))
        return _models[key]


class CoquiTTS:
    """Synthesises clauses with a Coqui model; yields int16 audio at the model's output rate."""

    def __init__(self, model_path: Path, *, config_path: Path | None = None, threads: int = 2) -> None:
        self.checkpoint, self.config_path = resolve_model(Path(model_path), config_path)
        self.threads = threads
        self._synth, self._executor = _load(self.checkpoint, self.config_path, threads)
        self.sample_rate: int = int(self._synth.output_sample_rate)

    def warmup(self) -> None:
        """Run one short synthesis so torch has allocated its buffers."""
        self._speak("Hello.", None)

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        """Yield one int16 chunk per sentence as soon as it is synthesised (cancellable between them)."""
        loop = asyncio.get_running_loop()
        sentences: list[str] = await loop.run_in_executor(self._executor, self._split, text)
        for sentence in sentences:
            pcm = await loop.run_in_executor(self._executor, self._speak, sentence, voice)
            if pcm.size:
                yield pcm

    def _split(self, text: str) -> list[str]:
        """Coqui's own sentence segmenter (pysbd) for the model's language."""
        return [s for s in self._synth.split_into_sentences(text) if s.strip()] if text.strip() else []

    def _speak(self, sentence: str, voice: str | None) -> np.ndarray:
        """One sentence to int16; `voice` names a speaker of a multi-speaker model, others ignore it."""
        from TTS.utils.synthesizer import PAD_SILENCE_SAMPLES

        wav = self._synth.tts(sentence, speaker_name=voice, split_sentences=False)
        # Synthesizer.tts appends a fixed pause after every sentence; the caller's pacing decides pauses.
        samples = np.asarray(wav[: max(len(wav) - PAD_SILENCE_SAMPLES, 0)], dtype=np.float32)
        return audio.float32_to_int16(samples)
