"""Language models: embedded llama.cpp by default, Ollama or any OpenAI-compatible server instead."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.llm.base import LLM, ChatMessage, GenerationOptions, LLMError, StructuredLLM

if TYPE_CHECKING:
    from shared.llm.llama_cpp import LlamaCppLLM
    from shared.llm.ollama import OllamaLLM
    from shared.llm.openai_compat import OpenAICompatLLM
    from shared.settings import Settings

__all__ = [
    "LLM",
    "ChatMessage",
    "GenerationOptions",
    "LLMError",
    "StructuredLLM",
    "build_analysis_llm",
    "build_llm",
]


def build_llm(settings: Settings) -> LLM:
    """The engine that answers on calls; the embedded model is loaded once per process, lazily.

    Its timeout is a first-token budget (LLM_TIMEOUT_S): the caller is waiting on the line.
    """
    return _build(
        settings,
        engine=settings.llm_engine,
        model=settings.llm_model,
        model_path=settings.llm_model_path,
        n_ctx=settings.llm_context_tokens,
        timeout_s=settings.llm_timeout_s,
        quant=None if settings.llm_quant == "none" else settings.llm_quant,
    )


def build_analysis_llm(settings: Settings) -> StructuredLLM:
    """The post-call analysis model: ANALYSIS_LLM_* where set, else the same engine as the calls.

    Its timeout is the whole answer's (ANALYSIS_LLM_TIMEOUT_S), not a first-token budget: nobody waits
    on the line, and a larger model may take a while.
    """
    return _build(
        settings,
        engine=settings.analysis_llm_engine or settings.llm_engine,
        model=settings.analysis_llm_model or settings.llm_model,
        model_path=settings.analysis_llm_model_path or settings.llm_model_path,
        n_ctx=settings.analysis_llm_context_tokens,
        timeout_s=settings.analysis_llm_timeout_s,
    )


def _build(
    settings: Settings, *, engine: str, model: str, model_path: Path | None, n_ctx: int, timeout_s: float,
    quant: str | None = None,
) -> OllamaLLM | OpenAICompatLLM | LlamaCppLLM:
    """The one rule from an engine name to an engine; calls and analysis differ only in what they pass.

    Server URLs, the API key, the model cache and the thread count are the same for both. Engines are
    imported here, not above, so a process loads only the one it uses.
    """
    if engine == "ollama":
        from shared.llm.ollama import OllamaLLM

        return OllamaLLM(settings.ollama_base_url, model, timeout_s=timeout_s)
    if engine == "openai":
        from shared.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM(
            settings.openai_base_url, model, api_key=settings.openai_api_key, timeout_s=timeout_s
        )
    from shared.llm.llama_cpp import LlamaCppLLM, named_model_path

    return LlamaCppLLM(
        model_path or named_model_path(model, settings.model_cache_dir),
        cache_dir=settings.model_cache_dir,
        n_ctx=n_ctx,
        threads=settings.llm_threads,
        slots=settings.llm_slots,
        first_token_timeout_s=timeout_s,
        quant=quant,
    )
