"""Instant engines: STT, LLM and TTS replaced by constant, zero-cost stand-ins.

Only for benchmarking the gateway's media path alone (sockets, parsing, μ-law, resampling, VAD,
turn detection, pacing): `python -m relayx_cli.instant_engines` serves a gateway built with them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence

import numpy as np
import uvicorn

from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.tools import ToolSpec
from shared.settings import Settings
from shared.stt.base import Transcription
from shared.vad import build_vad
from voice_gateway.engines import Engines
from voice_gateway.main import create_app


class InstantSTT:
    """Hears the same words at once, whatever was said."""

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        return Transcription(text="Instant caller words.", no_speech_prob=0.0)

    def warmup(self) -> None:
        return None


class InstantLLM:
    """Answers the same two clauses at once."""

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = (),
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[str]:
        for piece in ("Sure, ", "this is an instant reply."):
            yield piece

    def warmup(self) -> None:
        return None


class InstantTTS:
    """Speaks any clause as one second of a quiet tone, already computed."""

    sample_rate = 22050
    _tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 3000).astype(np.int16)

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        yield self._tone

    def warmup(self) -> None:
        return None


def instant_engines(settings: Settings) -> Engines:
    return Engines(stt=InstantSTT(), llm=InstantLLM(), tts=InstantTTS(), vad_factory=lambda: build_vad(settings))


if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(
        create_app(settings, engines=instant_engines(settings)),
        host="127.0.0.1", port=int(os.environ.get("GATEWAY_PORT", "8001")), log_level="warning",
        ws="websockets-sansio",
    )
