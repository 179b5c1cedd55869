"""The batched llama.cpp server: several replies at once, slots that keep a call's prefix, urgency first.

Real model (the bundled Qwen GGUF), a private server with two slots; assertions are about order and
bookkeeping, never about exact words or timings (kernels and speed differ between CPUs).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shared.conversation import avoid_for, is_refusal, is_repeat, normalize, trim_history
from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.llama_batch import (
    DRY_PREFILL_CHUNK,
    PREFILL_CHUNK,
    PROMPT_STARVE_S,
    BatchedLlama,
    EngineFailure,
    Request,
    _common_prefix,
)
from shared.llm.llama_cpp import LlamaCppLLM, ensure_model_file
from shared.urgency import ComputeGate, Fixed
from voice_gateway.prompts import SPOKEN_STYLE

pytestmark = pytest.mark.models

SYSTEM = ChatMessage("system", "You are Ava, the receptionist of Bright Smile Dental. Answer in one short sentence.")
WAIT_S = 60


@dataclass
class Collector:
    """Gathers one request's pieces (called from the engine thread)."""

    pieces: list[str] = field(default_factory=list)
    log: list[tuple[str, int]] | None = None
    name: str = ""
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, piece: str | None, error: Exception | None) -> None:
        if piece is not None:
            self.pieces.append(piece)
            if self.log is not None:
                self.log.append((self.name, len(self.pieces)))
        else:
            self.error = error
            self.done.set()


@pytest.fixture(scope="module")
def server(llm: LlamaCppLLM) -> Iterator[BatchedLlama]:
    path = ensure_model_file(llm.cache_dir)
    engine = BatchedLlama(str(path), slots=2, ctx_per_slot=512, threads=2, gate=ComputeGate(1))
    yield engine
    engine.close()


def ask(server: BatchedLlama, text: str, *, deadline: float = 0.0, max_tokens: int = 24,
        log: list[tuple[str, int]] | None = None, name: str = "") -> tuple[Request, Collector]:
    out = Collector(log=log, name=name)
    request = server.submit([SYSTEM, ChatMessage("user", text)], GenerationOptions(max_tokens=max_tokens),
                            Fixed(deadline), out)
    return request, out


def test_two_replies_are_generated_side_by_side(server: BatchedLlama) -> None:
    log: list[tuple[str, int]] = []
    # a is playing with audio to spare (its next words are due later); b is a new turn, already late.
    _, a = ask(server, "What are your opening hours?", deadline=time.monotonic() + 100, max_tokens=20, log=log,
               name="a")
    _, b = ask(server, "How much is a cleaning?", max_tokens=20, log=log, name="b")
    assert a.done.wait(WAIT_S) and b.done.wait(WAIT_S)
    assert a.error is None and b.error is None
    assert a.pieces and b.pieces
    # Interleaved: b produced pieces before a finished (with a lock per reply, b would start after a).
    a_last = max(i for i, (name, _) in enumerate(log) if name == "a")
    b_first = min(i for i, (name, _) in enumerate(log) if name == "b")
    assert b_first < a_last, log


def _dry_then_new(server: BatchedLlama, question: str = "Is there parking?") -> tuple[list[tuple[str, int]], Request]:
    """A reply about to run dry is generating when a new turn's prompt arrives; the order of pieces."""
    log: list[tuple[str, int]] = []
    dry = Collector(log=log, name="dry")
    server.submit([ChatMessage("system", "You are a storyteller. Answer at length."),
                   ChatMessage("user", "Tell me a long story about a dentist and a cat.")],
                  GenerationOptions(max_tokens=24), Fixed(1.0 - 3600), dry)
    end = time.monotonic() + WAIT_S
    while not dry.pieces:  # wait until it is generating
        assert time.monotonic() < end and not dry.done.wait(0.01), "no token"
    request, new = ask(server, question, deadline=2.0, max_tokens=4, log=log, name="new")
    assert dry.done.wait(WAIT_S) and new.done.wait(WAIT_S)
    assert len(dry.pieces) >= 12, dry.pieces  # long enough for the order to mean something (24 asked)
    return log, request


def test_a_reply_about_to_run_dry_gets_decode_only_steps(server: BatchedLlama) -> None:
    server.prompt_starve_s = 3600  # never let the waiting prompt in: the rule alone
    try:
        log, _ = _dry_then_new(server)
    finally:
        server.prompt_starve_s = PROMPT_STARVE_S
    # No prompt is evaluated beside it: the new turn's first token comes after its last.
    assert max(i for i, (name, _) in enumerate(log) if name == "dry") < log.index(("new", 1)), log


def test_a_waiting_prompt_is_not_starved_by_replies_running_dry(server: BatchedLlama) -> None:
    server.prompt_starve_s = 0.0  # a chunk at every step: the bound at its tightest
    try:
        log, new = _dry_then_new(server, "Is there parking near your office on Main Street, and is it free "
                                         "for patients who come on a weekday morning?")
    finally:
        server.prompt_starve_s = PROMPT_STARVE_S
    assert log.index(("new", 1)) < max(i for i, (name, _) in enumerate(log) if name == "dry"), log
    # In small chunks: each step beside the reply running dry stays short.
    assert sum(new.chunks) >= 2 * DRY_PREFILL_CHUNK and max(new.chunks) <= DRY_PREFILL_CHUNK, new.chunks


def test_a_calls_next_turn_reuses_its_prefix(server: BatchedLlama) -> None:
    first, out = ask(server, "Can I book a cleaning for Tuesday?")
    assert out.done.wait(WAIT_S) and out.error is None
    reply = "".join(out.pieces)
    follow = Collector()
    messages = [SYSTEM, ChatMessage("user", "Can I book a cleaning for Tuesday?"),
                ChatMessage("assistant", reply), ChatMessage("user", "Morning, please.")]
    second = server.submit(messages, GenerationOptions(max_tokens=8), Fixed(0.0), follow)
    assert follow.done.wait(WAIT_S) and follow.error is None
    # Everything up to the first question was still in a slot: only the new turn was evaluated.
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert second.prompt_tokens - second.cached_tokens < second.prompt_tokens // 2


def test_speculative_work_waits_while_a_confirmed_reply_is_made(server: BatchedLlama) -> None:
    log: list[tuple[str, int]] = []
    _, firm = ask(server, "Tell me about your dentists.", max_tokens=16, log=log, name="firm")
    _, guess = ask(server, "Tell me about your prices.", deadline=math.inf, max_tokens=16, log=log, name="guess")
    assert firm.done.wait(WAIT_S) and guess.done.wait(WAIT_S)
    assert firm.pieces and guess.pieces
    firm_last = max(i for i, (name, _) in enumerate(log) if name == "firm")
    guess_first = min(i for i, (name, _) in enumerate(log) if name == "guess")
    assert firm_last < guess_first, log


def test_a_cancelled_request_frees_its_slot(server: BatchedLlama) -> None:
    requests = [ask(server, f"Say a long list of {n} things you can do.", max_tokens=200) for n in (3, 4)]
    for request, out in requests:
        request.cancel()
    server.wake()
    for _, out in requests:
        assert out.done.wait(WAIT_S)
    _, after = ask(server, "Hi")
    assert after.done.wait(WAIT_S) and after.error is None and after.pieces


def test_a_long_history_is_trimmed_to_fit_and_a_prompt_too_long_fails_cleanly(server: BatchedLlama) -> None:
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", "word " * 60) for i in range(12)]
    out = Collector()
    request = server.submit([SYSTEM, *history, ChatMessage("user", "Hi")], GenerationOptions(max_tokens=8),
                            Fixed(0.0), out)
    assert out.done.wait(WAIT_S) and out.error is None
    assert request.prompt_tokens <= 512 - 8
    huge = Collector()
    server.submit([ChatMessage("system", "word " * 900), ChatMessage("user", "Hi")],
                  GenerationOptions(max_tokens=8), Fixed(0.0), huge)
    assert huge.done.wait(WAIT_S)
    assert isinstance(huge.error, EngineFailure)


def test_calls_of_one_agent_share_its_system_prompt(server: BatchedLlama) -> None:
    prompt = ChatMessage("system", "You are Max at Sunny Vets, a clinic for pets. Be brief. " * 6)
    first_out, second_out = Collector(), Collector()
    first = server.submit([prompt, ChatMessage("user", "Do you see cats?")], GenerationOptions(max_tokens=30),
                          Fixed(0.0), first_out)
    second = server.submit([prompt, ChatMessage("user", "Are you open today?")], GenerationOptions(max_tokens=12),
                           Fixed(0.0), second_out)
    assert first_out.done.wait(WAIT_S) and second_out.done.wait(WAIT_S)
    assert first_out.error is None and second_out.error is None
    assert first_out.pieces and second_out.pieces
    # Both were admitted at once (two slots): one evaluated the system prompt, the other waited and
    # copied it, up to the last whole chunk the leader had evaluated.
    shared = min(first.prompt_tokens, second.prompt_tokens) - 12 - PREFILL_CHUNK
    assert max(first.cached_tokens, second.cached_tokens) >= shared, (first.cached_tokens, second.cached_tokens)


def test_a_new_call_does_not_take_the_slot_of_another_calls_conversation(llm: LlamaCppLLM) -> None:
    # Call A's conversation sits in a slot; a new call of the same agent arrives while the other
    # slot is empty: it must take that one (copying the system prompt), not throw A's away.
    server = BatchedLlama(str(ensure_model_file(llm.cache_dir)), slots=2, ctx_per_slot=512, threads=2,
                          gate=ComputeGate(1))
    try:
        _, out = ask(server, "Do you open on Saturdays?")
        assert out.done.wait(WAIT_S) and out.error is None
        a_slot = next(s for s in server.slots if s.tokens)
        kept = list(a_slot.tokens)
        second, other = ask(server, "What is your phone number?")
        assert other.done.wait(WAIT_S) and other.error is None
        assert a_slot.tokens[: len(kept)] == kept  # A's next turn still finds its conversation
        assert second.cached_tokens > 0  # the system prompt was copied, not evaluated again
    finally:
        server.close()


GREETING = ChatMessage("assistant", "Hi, this is Ava from Bright Smile Dental. How can I help?")
BOOKING = [GREETING,
           ChatMessage("user", "Hi, I would like to book a cleaning for next week if you have time."),
           ChatMessage("assistant", "Sure, we have openings on Tuesday and Thursday mornings."),
           ChatMessage("user", "Thursday morning would be great, around ten if that works for you."),
           ChatMessage("assistant", "Thursday at ten is free. May I have your name, please?"),
           ChatMessage("user", "It is Eric Johnson.")]
"""A call's first lines; `_answer_trimmed` cuts the first three, as `trim_history` does."""


def _answer_trimmed(server: BatchedLlama, first: Collector) -> Request:
    """The call's next turn with its first three lines cut (`first` answered BOOKING): answered."""
    trimmed = [SYSTEM, *BOOKING[3:], ChatMessage("assistant", "".join(first.pieces).strip()),
               ChatMessage("user", "Thanks, bye.")]
    out = Collector()
    request = server.submit(trimmed, GenerationOptions(max_tokens=8), Fixed(0.0), out)
    assert out.done.wait(WAIT_S) and out.error is None and "".join(out.pieces).strip()
    return request


def test_a_trimmed_history_is_shifted_in_the_cache_not_evaluated_again(server: BatchedLlama) -> None:
    # trim_history cuts the oldest turns after the system prompt: the kept turns are already in the
    # slot's cache, behind the cut ones. They are moved back into place, not evaluated again.
    first = Collector()
    server.submit([SYSTEM, *BOOKING], GenerationOptions(max_tokens=8), Fixed(0.0), first)
    assert first.done.wait(WAIT_S) and first.error is None
    shifted = server.shifted
    request = _answer_trimmed(server, first)
    assert server.shifted == shifted + 1
    # What followed the system prompt was found in the cache: only the newest lines were evaluated.
    assert request.prompt_tokens - request.cached_tokens < 40, (request.prompt_tokens, request.cached_tokens)


def test_cells_another_slot_shares_are_not_shifted(server: BatchedLlama) -> None:
    # Two requests with one conversation: the second copies the first's evaluated prefix, so the two
    # slots share those cells (one position each). Trimming one of them must not shift the cells
    # under the other: the kept turns are evaluated again, and the other slot's conversation goes on.
    turns = [ChatMessage("assistant", "Hi, this is Ava from Bright Smile Dental. How can I help?"),
             ChatMessage("user", "Do you have an opening for a cleaning on Monday or Tuesday morning?"),
             ChatMessage("assistant", "We have Tuesday at nine and Tuesday at eleven, which one suits you?"),
             ChatMessage("user", "Eleven is better for me, I drop my kids at school before that.")]
    first, second = Collector(), Collector()
    for out in (first, second):
        server.submit([SYSTEM, *turns], GenerationOptions(temperature=0.0, max_tokens=8), Fixed(0.0), out)
    assert first.done.wait(WAIT_S) and second.done.wait(WAIT_S) and first.error is None and second.error is None
    a, b = server.slots
    assert _common_prefix(a.tokens, b.tokens) > 60  # the conversation's cells are shared
    shifted = server.shifted
    reply = "".join(first.pieces).strip()
    trimmed = [SYSTEM, *turns[3:], ChatMessage("assistant", reply), ChatMessage("user", "See you then.")]
    out = Collector()
    server.submit(trimmed, GenerationOptions(max_tokens=8), Fixed(0.0), out)
    assert out.done.wait(WAIT_S) and out.error is None and "".join(out.pieces).strip()
    assert server.shifted == shifted
    again = Collector()
    server.submit([SYSTEM, *turns, ChatMessage("assistant", reply), ChatMessage("user", "Thanks.")],
                  GenerationOptions(max_tokens=8), Fixed(0.0), again)
    assert again.done.wait(WAIT_S) and again.error is None and "".join(again.pieces).strip()


def test_a_shared_greeting_cut_from_one_call_is_no_reason_to_evaluate_its_kept_turns_again(
        server: BatchedLlama) -> None:
    # Two calls of one agent share the system prompt and the greeting's cells. Trimming one call's
    # history cuts its greeting: those cells are only untagged from it, its own kept turns (shared with
    # nobody) move back, and the other call still finds its whole conversation in the cache.
    first = Collector()
    server.submit([SYSTEM, *BOOKING], GenerationOptions(temperature=0.0, max_tokens=8), Fixed(0.0), first)
    assert first.done.wait(WAIT_S) and first.error is None
    other_call = [SYSTEM, GREETING, ChatMessage("user", "Do you take Delta Dental insurance?")]
    second = Collector()
    other = server.submit(other_call, GenerationOptions(temperature=0.0, max_tokens=8), Fixed(0.0), second)
    assert second.done.wait(WAIT_S) and second.error is None
    assert other.cached_tokens > len(server._tokenize(server._format([SYSTEM])))  # the greeting was copied
    shifted = server.shifted
    request = _answer_trimmed(server, first)
    assert server.shifted == shifted + 1
    assert request.prompt_tokens - request.cached_tokens < 40, (request.prompt_tokens, request.cached_tokens)
    # The other call's next turn: its conversation is still in place, answered as before.
    again = Collector()
    follow = server.submit([*other_call, ChatMessage("assistant", "".join(second.pieces).strip()),
                            ChatMessage("user", "Great, thank you.")],
                           GenerationOptions(temperature=0.0, max_tokens=8), Fixed(0.0), again)
    assert again.done.wait(WAIT_S) and again.error is None and "".join(again.pieces).strip()
    assert follow.prompt_tokens - follow.cached_tokens < 30, (follow.prompt_tokens, follow.cached_tokens)


PLAIN = ChatMessage("system", f"Your name is Ava.\nYou are a helpful assistant on the phone.\n\n{SPOKEN_STYLE}")
"""A prompt with no business facts: where the 0.5B model parroted one sentence to five caller lines."""


def converse(server: BatchedLlama, lines: list[str]) -> list[tuple[Request, str]]:
    """One call, greedy: each line answered with the trimmed history, the earlier replies in `avoid`."""
    history: list[ChatMessage] = []
    turns = []
    for line in lines:
        out = Collector()
        messages = trim_history([PLAIN, *history, ChatMessage("user", line)])
        request = server.submit(messages, GenerationOptions(temperature=0.0, max_tokens=40), Fixed(0.0), out,
                                avoid=avoid_for(history, line))
        assert out.done.wait(WAIT_S) and out.error is None
        reply = "".join(out.pieces).strip()
        history += [ChatMessage("user", line), ChatMessage("assistant", reply)]
        turns.append((request, reply))
    return turns


def test_the_same_question_asked_three_ways_never_gets_three_identical_replies(server: BatchedLlama) -> None:
    # Greedy decoding: the most repetitive setting there is (no sampling noise to vary a reply).
    turns = converse(server, ["Can I book an appointment for my mother?",
                              "I'd like to make an appointment for my mum.",
                              "Could you book my mother in, please?"])
    replies = [reply for _, reply in turns]
    assert all(len(normalize(r).split()) >= 2 for r in replies), replies
    assert len({normalize(r) for r in replies}) > 1, replies
    # Stronger, and what the masking guarantees: no reply repeats an earlier one word for word.
    assert not any(is_repeat(r, replies[:i]) for i, r in enumerate(replies)), replies


def test_a_reply_does_not_reopen_with_an_earlier_replys_sentence(server: BatchedLlama) -> None:
    [(_, first)] = converse(server, ["Hi, who am I speaking with?"])
    # Asked again with the reply in `avoid`: greedy decoding would say the same; the engine steers away.
    out = Collector()
    request = server.submit([PLAIN, ChatMessage("user", "Hi, who am I speaking with?")],
                            GenerationOptions(temperature=0.0, max_tokens=40), Fixed(0.0), out, avoid=[first])
    assert out.done.wait(WAIT_S) and out.error is None
    again = "".join(out.pieces).strip()
    assert request.masked >= 1, (first, again)
    assert normalize(again) != normalize(first), again


ORDINARY = ["I want to complain about my last visit.", "Can you cancel my husband's appointment too?",
            "I need the doctor's home phone number.",
            "Can you tell me what my test results were?", "Can you give me a discount?",
            "Can you send me my medical records?", "Can you transfer me to a real person?"]
"""Ordinary caller lines; without the guard, the 0.5B model answered the first "I'm sorry, but I can't assist
with that." (greedy, on this prompt) and refused others when sampling."""


def test_ordinary_caller_lines_are_never_refused(server: BatchedLlama) -> None:
    for line in ORDINARY:
        out = Collector()
        server.submit([PLAIN, ChatMessage("user", line)], GenerationOptions(temperature=0.0, max_tokens=40),
                      Fixed(0.0), out)
        assert out.done.wait(WAIT_S) and out.error is None
        reply = "".join(out.pieces).strip()
        assert reply and not is_refusal(reply), (line, reply)


def test_a_request_that_cannot_start_fails_alone_and_the_engine_goes_on(
    server: BatchedLlama, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(avoid: object) -> object:
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(server, "_openings", broken)
    _, failed = ask(server, "What are your opening hours?")
    assert failed.done.wait(WAIT_S) and isinstance(failed.error, EngineFailure)
    monkeypatch.undo()
    _, after = ask(server, "How much is a cleaning?")
    assert after.done.wait(WAIT_S) and after.error is None and after.pieces


def test_a_receiver_that_fails_drops_its_request_and_the_engine_goes_on(server: BatchedLlama) -> None:
    """The receiver of a call whose event loop has closed raises (RuntimeError: Event loop is closed):
    before, that killed the engine thread, and every later call's reply waited for its timeout."""
    calls: list[str | None] = []

    def gone(piece: str | None, error: Exception | None) -> None:
        calls.append(piece)
        raise RuntimeError("Event loop is closed")

    dropped = server.submit([SYSTEM, ChatMessage("user", "What are your opening hours?")],
                            GenerationOptions(max_tokens=24), Fixed(0.0), gone)
    _, after = ask(server, "How much is a cleaning?")
    assert after.done.wait(WAIT_S) and after.error is None and after.pieces
    # Dropped at its first piece: no piece after it (only the end, which fails the same way).
    assert dropped.cancelled and len([piece for piece in calls if piece is not None]) == 1, calls
    assert server.alive
