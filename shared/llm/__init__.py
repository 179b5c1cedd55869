"""Language models: embedded llama.cpp by default, Ollama or any OpenAI-compatible server instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.llm.base import LLM, ChatMessage, GenerationOptions, LLMError

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["LLM", "ChatMessage", "GenerationOptions", "LLMError", "build_llm"]


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
