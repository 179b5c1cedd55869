"""Text-to-speech: Piper by default (Coqui is a planned optional engine)."""

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
        raise ConfigurationError("TTS_ENGINE=coqui is not implemented yet; use piper")
    from shared.tts.piper import PiperTTS

    return PiperTTS(settings.tts_voice_path, threads=threads)
