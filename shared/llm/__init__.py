"""Language models: embedded llama.cpp by default, Ollama or any OpenAI-compatible server instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.llm.base import LLM, ChatMessage, GenerationOptions, LLMError, StructuredLLM

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "LLM", "ChatMessage", "GenerationOptions", "LLMError", "StructuredLLM", "build_analysis_llm", "build_llm"
]


def build_llm(settings: Settings) -> LLM:
    """The engine named by settings; the embedded model is loaded once per process, lazily."""
    if settings.llm_engine == "ollama":
        from shared.llm.ollama import OllamaLLM

        return OllamaLLM(settings.ollama_base_url, settings.llm_model, timeout_s=settings.llm_timeout_s)
    if settings.llm_engine == "openai":
        from shared.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM(
            settings.openai_base_url,
            settings.llm_model,
            api_key=settings.openai_api_key,
            timeout_s=settings.llm_timeout_s,
        )
    from shared.llm.llama_cpp import LlamaCppLLM

    return LlamaCppLLM(
        settings.llm_model_path,
        cache_dir=settings.model_cache_dir,
        n_ctx=settings.llm_context_tokens,
        threads=settings.llm_threads,
        first_token_timeout_s=settings.llm_timeout_s,
    )


def build_analysis_llm(settings: Settings) -> StructuredLLM:
    """The post-call analysis model: ANALYSIS_LLM_* where set, else the same engine as the calls.

    Its timeout is the whole answer's (ANALYSIS_LLM_TIMEOUT_S), not a first-token budget: nobody waits
    on the line, and a larger model may take a while.
    """
    engine = settings.analysis_llm_engine or settings.llm_engine
    model = settings.analysis_llm_model or settings.llm_model
    timeout = settings.analysis_llm_timeout_s
    if engine == "ollama":
        from shared.llm.ollama import OllamaLLM

        return OllamaLLM(settings.ollama_base_url, model, timeout_s=timeout)
    if engine == "openai":
        from shared.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM(settings.openai_base_url, model, api_key=settings.openai_api_key, timeout_s=timeout)
    from shared.llm.llama_cpp import LlamaCppLLM

    return LlamaCppLLM(
        settings.analysis_llm_model_path or settings.llm_model_path,
        cache_dir=settings.model_cache_dir,
        n_ctx=settings.analysis_llm_context_tokens,
        threads=settings.llm_threads,
        first_token_timeout_s=timeout,
    )
