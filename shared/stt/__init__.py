"""Speech-to-text: faster-whisper by default, openai-whisper as an optional engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.stt.base import STT, Transcription

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["STT", "Transcription", "build_stt"]


def build_stt(settings: Settings) -> STT:
    """The STT engine named by settings (the model itself is loaded once per process, lazily)."""
    if settings.stt_engine == "openai-whisper":
        from shared.stt.openai_whisper import OpenAIWhisperSTT

        return OpenAIWhisperSTT(settings.stt_model or "tiny.en", threads=settings.stt_threads)
    from dataclasses import replace

    from shared.stt.decoding import options_for
    from shared.stt.faster_whisper import FasterWhisperSTT

    options = options_for(settings.stt_model)
    if settings.stt_beam_size is not None:
        options = replace(options, beam_size=settings.stt_beam_size)
    return FasterWhisperSTT(
        settings.stt_model,
        compute_type=settings.stt_compute_type,
        threads=settings.stt_threads,
        decode_threads=settings.stt_decode_threads,
        options=options,
        cache_dir=settings.model_cache_dir,
    )
