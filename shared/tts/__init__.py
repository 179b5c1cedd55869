"""Text-to-speech: Piper by default, Coqui (a local checkpoint, relayx[coqui]) when asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ConfigurationError
from shared.tts.base import TTS

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["TTS", "build_tts"]


def build_tts(settings: Settings, *, threads: int = 2) -> TTS:
    """The engine named by settings; the voice is loaded once per process."""
    if settings.tts_engine == "coqui":
        if settings.coqui_model_path is None:
            raise ConfigurationError(
                "TTS_ENGINE=coqui needs COQUI_MODEL_PATH: a Coqui checkpoint (.pth) or its folder with config.json"
            )
        from shared.tts.coqui import CoquiTTS

        return CoquiTTS(settings.coqui_model_path, threads=threads)
    from shared.tts.piper import PiperTTS

    return PiperTTS(settings.tts_voice_path, threads=threads)
