"""The model engines one gateway process shares between all its calls (loaded once, warmed once)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.llm import build_llm
from shared.llm.base import LLM
from shared.settings import Settings
from shared.stt import build_stt
from shared.stt.base import STT
from shared.tts import build_tts
from shared.tts.base import TTS
from shared.turn.base import EndOfTurnModel
from shared.vad import build_vad
from shared.vad.base import VAD

log = logging.getLogger(__name__)


@dataclass
class Engines:
    """STT, LLM, TTS and the end-of-turn model are shared; VAD is made per call (recurrent state)."""

    stt: STT
    llm: LLM
    tts: TTS
    vad_factory: Callable[[], VAD]
    turn: EndOfTurnModel | None = None
    """Smart Turn, for agents with `turn_detection: smart`; None: every turn ends on silence alone."""
    prefill: bool = True
    """Evaluate prompts ahead of need (`LLM_PREFILL`): the LLM keeps a prompt's KV cache for the next
    request, so a one-token request now shortens a turn's first token later."""


def build_engines(settings: Settings) -> Engines:
    """Map settings to engines. Some load their model here (Piper, Coqui), others in `warmup`
    (Whisper, llama.cpp): call it off the event loop (`asyncio.to_thread`), as the gateway does."""
    return Engines(
        stt=build_stt(settings),
        llm=build_llm(settings),
        tts=build_tts(settings),
        vad_factory=lambda: build_vad(settings),
        turn=_end_of_turn_model(),
        prefill=prefill_pays(settings),
    )


def prefill_pays(settings: Settings) -> bool:
    """`LLM_PREFILL`, or by default whether the engine is one that keeps a prompt's KV cache and costs
    nothing per request: the embedded engine and Ollama. An OpenAI-compatible URL may be a local
    llama.cpp or vLLM server (set LLM_PREFILL=true there) or a hosted API that bills every request."""
    return settings.llm_prefill if settings.llm_prefill is not None else settings.llm_engine != "openai"


def _end_of_turn_model() -> EndOfTurnModel | None:
    """Smart Turn v3 from its bundled file; without it (a hand-made install) turns end on silence,
    said once in the log rather than refusing to take calls."""
    from shared.errors import ConfigurationError
    from shared.turn.smart_turn import SmartTurn

    try:
        return SmartTurn()
    except ConfigurationError as exc:
        log.warning("end-of-turn model unavailable (%s): every turn ends after silence", exc)
        return None


async def warm(engines: Engines) -> dict[str, float]:
    """Load every model and run it once, off the event loop, so the first caller waits for nothing."""
    timings: dict[str, float] = {}
    work = [("stt", engines.stt.warmup), ("llm", engines.llm.warmup), ("tts", engines.tts.warmup)]
    if engines.turn is not None:
        work.append(("turn", engines.turn.warmup))
    for name, fn in work:
        start = time.perf_counter()
        await asyncio.to_thread(fn)
        timings[name] = round(time.perf_counter() - start, 2)
    engines.vad_factory()  # load the VAD model file once too
    log.info("models warm: %s (seconds)", timings)
    return timings
