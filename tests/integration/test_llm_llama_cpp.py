"""The embedded Qwen model answers as the agent, streamed, and can be cancelled mid-reply (barge-in)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.bundled import verified_stamp
from shared.errors import ConfigurationError
from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.llama_cpp import MODEL_FILENAME, MODEL_SHA256, LlamaCppLLM, ensure_model_file, slice_paths
from tests.support.wer import normalize

pytestmark = pytest.mark.models
REPO = Path(__file__).resolve().parents[2]

SYSTEM = (
    "You are Ava, the phone receptionist of Bright Smile Dental in Springfield. "
    "We are open Monday to Friday, 8 am to 5 pm. A cleaning costs 90 dollars. "
    "Answer in one or two short sentences."
)


async def test_llama_cpp_streams_an_answer_in_pieces(llm: LlamaCppLLM) -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "Hi, who am I speaking with?")]
    pieces = [p async for p in llm.stream(messages, GenerationOptions(temperature=0.0, max_tokens=40))]
    assert len(pieces) > 1
    reply = "".join(pieces).strip()
    # The system prompt reached the model: it names the agent or the business. A property, not exact
    # words (llama.cpp's kernels differ by CPU, so even greedy text may); it held on 24 of 24 replies
    # sampled at temperature 1.0, a far larger change than any CPU's rounding. Matched on whole words,
    # so "available" is not "Ava".
    words = normalize(reply)
    assert len(words) >= 3, reply
    assert "ava" in words or "bright smile" in " ".join(words), reply


async def test_cancelling_the_consumer_stops_generation_and_frees_the_model(llm: LlamaCppLLM) -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "Tell me about all your services.")]
    got: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for piece in llm.stream(messages, GenerationOptions(max_tokens=200)):
            got.append(piece)
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < len(got) < 200
    # The worker released the model: a new turn gets its answer.
    again = [
        p
        async for p in llm.stream(messages[:1] + [ChatMessage("user", "Hi")], GenerationOptions(max_tokens=8))
    ]
    assert again


def test_slices_are_found_through_package_metadata() -> None:
    paths = slice_paths()
    assert [p.name for p in paths] == [f"part0{i}.bin" for i in range(1, 7)]
    assert all(p.is_file() for p in paths)
    assert MODEL_FILENAME.endswith(".gguf")


def test_the_bundled_weights_are_requantized_once_and_reused(tmp_path: Path) -> None:
    """LLM_QUANT=q4_0: the shipped Q4_K_M is converted next to it once; a later start reuses the file
    (its stamp matches), and a changed file is made again rather than trusted."""
    pytest.importorskip("llama_cpp")
    source = ensure_model_file(REPO / "data" / "models")
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / MODEL_FILENAME).symlink_to(source)
    (cache / f"{MODEL_FILENAME}.verified").write_text(verified_stamp(cache / MODEL_FILENAME, MODEL_SHA256))
    engine = LlamaCppLLM(cache_dir=cache, quant="q4_0")
    made = engine._path()
    assert made.name == MODEL_FILENAME.removesuffix(".gguf") + ".q4_0.gguf"
    assert made.read_bytes()[:4] == b"GGUF"
    # Q4_0 with a Q5_0 output matrix: 378 MB of the shipped 491 (429 with llama.cpp's Q8_0 output).
    assert 0 < made.stat().st_size < 0.82 * source.stat().st_size
    first = made.stat().st_mtime_ns
    assert engine._path() == made and made.stat().st_mtime_ns == first  # reused, not made again
    with made.open("r+b") as f:  # damaged (or written by another llama.cpp): made again
        f.truncate(1024)
    assert engine._path().stat().st_size > 1024


def test_an_unknown_weight_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown weight type"):
        LlamaCppLLM(quant="q3_k")


async def test_the_requantized_model_answers_as_the_agent(tmp_path: Path) -> None:
    """What live calls run by default (LLM_QUANT=q4_0) loads in the batched server and answers."""
    pytest.importorskip("llama_cpp")
    engine = LlamaCppLLM(cache_dir=REPO / "data" / "models", quant="q4_0", slots=1)
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "Hi, who am I speaking with?")]
    reply = "".join([p async for p in engine.stream(messages, GenerationOptions(temperature=0.0, max_tokens=40))])
    words = normalize(reply)
    assert len(words) >= 3, reply
    assert "ava" in words or "bright smile" in " ".join(words), reply
