"""One llama.cpp model serving every call at once: continuous batching, one KV-cache sequence per slot.

Why this and not a lock around one `Llama` (what the gateway did): behind a lock, call B's reply
waits for all of call A's reply, so two overlapping turns cost twice one and the second waits for the
whole first. A decode step over several sequences costs less than one step each (on 2 cores: 25 ms
for one sequence, 42 for two, 60 for four), so here every generating reply gets its next token in
the same step, and a new turn's prompt is evaluated in chunks between them. This is the scheme of
llama.cpp's own server (`--parallel`, continuous batching), done in-process through llama-cpp-python's
C API so the embedded default stays one process with nothing to download or build beyond the wheel
it already uses.

Scheduling follows `shared.urgency`: each request carries its reply's deadline. One prompt chunk per
step, the earliest deadline's; speculative requests (no deadline) make progress only while no
confirmed request is active; a reply about to run dry gets decode-only steps (a waiting prompt still
gets a small chunk every `PROMPT_STARVE_S`); every step passes through the process's `ComputeGate`, so
that reply gets the CPU ahead of STT or TTS work that can wait.

A slot keeps its sequence's tokens in the unified KV cache after a reply. A new request takes an
empty slot or its own call's before another call's conversation (`_slot_fit`), copies the longest
prefix any slot holds (the call's conversation, or the agent's system prompt), and evaluates only
the tokens after it.

With tools, a reply that answers the caller is routed (`shared.llm.tool_route`): its prompt ends with
`<tool_call>\n{"name": "`, and a grammar lets the model write a tool's name or `reply`. A tool's call
goes on under that grammar to `</tool_call>`, where the reply ends (what the model would say after a
call comes before the tool's result); `reply` is taken back from the KV cache, and words are sampled
from the plain prompt with call markup masked. A reply to a tool's result is words only.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.conversation import REFUSAL_PHRASES
from shared.llm import tool_route
from shared.llm.avoid import AvoidMatcher, TokenTrie, ends_sentence, opening, sentences
from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.hermes import render
from shared.llm.tools import ToolSpec
from shared.urgency import ComputeGate, Urgent, is_speculative

log = logging.getLogger(__name__)

PREFILL_CHUNK = 32
"""Prompt tokens evaluated per step: long prompts are cut so that one step holds the CPU for a
fraction of a second (≈ 0.25 s on 2 cores) and a reply about to run dry is never stalled longer."""
PROMPT_STARVE_S = 0.4
"""The longest a waiting prompt goes without a chunk while replies about to run dry are generating."""
DRY_PREFILL_CHUNK = 8
"""The chunk such a starved prompt gets: a step with 32 prompt tokens took 200–300 ms on a busy 2-core
machine, and a reply about to run dry waited on it for its next token (4 calls together: holes of
300–400 ms after a first clause of 1.5 s, whose next clause was still being written). With 8 tokens
the step takes ≈ 60 ms more than a decode-only one, and the prompt still moves."""
RUNNING_DRY_S = 60.0
"""A generating request overdue by more than this is a reply about to run dry (its precedence)."""
SHARE_MIN_TOKENS = 16
"""A prefix is copied from another slot only when it saves at least this much evaluation."""
PENALTY_LAST_N = 64
"""Tokens the repeat penalties look back over (this reply's own: a phone reply is shorter)."""
REPEAT_PENALTY = 1.1
"""llama.cpp's repeat penalty (1.0 = off): mild, as a phone reply repeats the caller's words on purpose
("Tuesday at ten, then")."""
PRESENCE_PENALTY = 0.0
"""Subtracted once from a token already seen (OpenAI's presence penalty; 0 = off)."""
_MARKUP_BYTES = (b"{", b"}", b"[", b"]", b"<", b">", b"`")
"""What no spoken line holds and JSON, code fences and tags do: masked where a reply must be speech.
Measured after a tool's result: the 0.5B model answered "```json [\"check_availability\", …" once in
nine, and with braces alone masked it moved on to brackets and backticks."""
TOOL_CALL_TOKENS = 96
"""Tokens a tool call may take beyond the reply's `max_tokens`: a call begun near the end of a phone
reply's budget is finished, not cut into invalid JSON."""


class EngineFailure(Exception):
    """The engine could not serve a request (context full, decode error)."""


Emit = Callable[[str | None, Exception | None], None]
"""Called from the engine thread: (piece, None) per text piece, (None, None) at the end, (None, exc) on failure."""


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)
    """Exactly the tokens held in this sequence's KV cache, from position 0."""
    busy: bool = False
    last_used: float = 0.0


@dataclass
class _Route:
    """A reply started as a call (`shared.llm.tool_route`) whose model has not yet named its choice."""

    at: int
    """Where the written `<tool_call>` prefix begins in the prompt: a spoken reply starts there."""
    words: Any
    """The sampler a spoken reply uses, and its masks: parked while the name is chosen."""
    matcher: AvoidMatcher
    text: str = ""
    """What the model wrote of the name so far."""


@dataclass(eq=False)
class Request:
    """One streamed completion; `cancel()` is safe from any thread."""

    messages: list[ChatMessage]
    options: GenerationOptions
    handle: Urgent
    emit: Emit
    order: int = 0
    cancelled: bool = False
    slot: _Slot | None = None
    pending: list[int] = field(default_factory=list)
    """Prompt tokens not yet in the KV cache."""
    generated: int = 0
    next_token: int | None = None
    """Sampled but not yet evaluated (it enters the KV cache in the next step)."""
    sampler: Any = None
    decoder: Any = None
    prompt: list[int] = field(default_factory=list)
    started_own: bool = False
    """Some of its own prompt tokens went into a step (it no longer waits to copy a shared prefix)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens found already in the slot's KV cache (not evaluated again)."""
    avoid: Sequence[str] = ()
    """Earlier replies of the call whose sentences this one must not reopen (see `shared.llm.avoid`); the
    caller's line it answers is added to them."""
    matcher: AvoidMatcher | None = None
    tools: tuple[ToolSpec, ...] = ()
    """Tools the model may call (shown in the system prompt, Hermes-style: `shared.llm.hermes`)."""
    in_call: bool = False
    """The reply has begun a `<tool_call>`: no masking from here, and room for the call to finish."""
    speech_only: bool = False
    """A routed reply that chose to speak: it cannot write a call after all (`_markup` is masked)."""
    route_at: int | None = None
    """Set when the prompt ends in the routing prefix (`shared.llm.tool_route`): where it begins."""
    route: _Route | None = None
    masked: int = 0
    """Sampling steps at which a banned continuation had to be masked (for tests and logs)."""
    chunks: list[int] = field(default_factory=list)
    """How many of its own prompt tokens each step evaluated (for tests and logs)."""

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, piece: str | None, error: Exception | None) -> None:
        """Hand a piece (or the end) to whoever asked; a receiver that fails (its event loop closed
        with it still waiting) is one request gone, never the engine thread that serves every call."""
        try:
            self.emit(piece, error)
        except Exception:  # any receiver failure stays with that receiver
            log.warning("llama.cpp: a request's receiver failed: dropping the request", exc_info=True)
            self.cancelled = True

    @property
    def speculative(self) -> bool:
        return is_speculative(self.handle)


class BatchedLlama:
    """A model, a context with `slots` sequences, and the one thread that drives them."""

    def __init__(
        self,
        model_path: str,
        *,
        slots: int = 4,
        ctx_per_slot: int = 2048,
        threads: int = 2,
        gate: ComputeGate,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        prompt_starve_s: float = PROMPT_STARVE_S,
        penalty_last_n: int = PENALTY_LAST_N,
        repeat_penalty: float = REPEAT_PENALTY,
        presence_penalty: float = PRESENCE_PENALTY,
    ) -> None:
        import llama_cpp as lc

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter
        self._lc = lc
        self._gate = gate
        self._top = (top_k, top_p, min_p)
        self._penalties = (penalty_last_n, repeat_penalty, presence_penalty)
        self.prompt_starve_s = prompt_starve_s
        self.slots = [_Slot(seq=i) for i in range(slots)]
        self.ctx_per_slot = ctx_per_slot
        lc.llama_backend_init()
        model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
        if not model:
            raise EngineFailure(f"llama.cpp could not load {model_path}")
        self._model = model
        params = lc.llama_context_default_params()
        params.n_ctx = ctx_per_slot * slots
        params.n_seq_max = slots
        params.n_batch = max(512, PREFILL_CHUNK * slots)
        params.n_ubatch = params.n_batch
        params.n_threads = threads
        params.n_threads_batch = threads
        self._threads = threads
        self._running_threads = threads
        """What the context runs on now: each step runs on the cores the gate gave it (`_decode`)."""
        # One cache for all sequences: a prefix shared by several (the agent's system prompt) is held
        # once, and copying it to another slot costs nothing (`_share_prefix`).
        params.kv_unified = True
        ctx = lc.llama_init_from_model(model, params)
        if not ctx:
            lc.llama_model_free(model)
            raise EngineFailure("llama.cpp could not create a context")
        self._ctx = ctx
        self._vocab = lc.llama_model_get_vocab(model)
        self._n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self._memory = lc.llama_get_memory(ctx)
        self._can_shift = bool(lc.llama_memory_can_shift(self._memory))
        self.shifted = 0
        """Trimmed histories taken from the cache by a shift (`_drop_trimmed`), not evaluated again."""
        template = lc.llama_model_chat_template(model, None)
        self._call_open = self._special_token("<tool_call>")
        self._call_close = self._special_token("</tool_call>")
        self._route_prefix = self._marked_tokens(tool_route.PREFIX)
        self._markup: Any = None
        """Tokens a spoken reply never needs and a call or code is written with (`_MARKUP_BYTES`)."""
        self._grammars: dict[str, str | None] = {}
        """Routing grammars by tool set (`_tools_key`): compiled on the first turn that offers them."""
        if not template:
            raise EngineFailure("the model has no chat template")
        self._template: bytes = template
        self._batch = lc.llama_batch_init(params.n_batch, 0, 1)
        self._refusals = TokenTrie(self._text_tokens(variant) for phrase in REFUSAL_PHRASES
                                   for variant in (phrase, " " + phrase))
        self._n_batch = params.n_batch
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._active: list[Request] = []
        self._order = itertools.count()
        self._closed = False
        self._freed = False
        self._last_prompt_step = 0.0
        self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
        self._thread.start()

    # --- the calling side -------------------------------------------------------------------------
    def submit(self, messages: list[ChatMessage], options: GenerationOptions, handle: Urgent, emit: Emit,
               *, avoid: Sequence[str] = (), tools: Sequence[ToolSpec] = ()) -> Request:
        """Queue one reply; it must not open the way any text in `avoid` opens, nor refuse. With `tools`,
        it may call them: the raw `<tool_call>` text is emitted like any other (the caller parses it)."""
        request = Request(messages, options, handle, emit, order=next(self._order), avoid=tuple(avoid),
                          tools=tuple(tools))
        with self._cond:
            if self._closed:
                raise EngineFailure("the engine is closed")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def wake(self) -> None:
        """A request was cancelled or its urgency changed: let the engine thread look again."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread and free the model; once (a replaced engine is closed early, then at exit)."""
        with self._cond:
            if self._freed:
                return
            self._closed = self._freed = True
            self._cond.notify()
        self._thread.join(timeout=10)
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    # --- the engine thread ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """The engine thread runs (a closed or crashed engine serves nothing: build another)."""
        return self._thread.is_alive() and not self._closed

    def _run(self) -> None:
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception:  # a bug here must not leave every call waiting on a dead thread
                log.exception("llama.cpp engine thread: unexpected error (it goes on)")
                for request in list(self._active):
                    self._finish(request, EngineFailure("the engine failed"))

    def _serve_once(self) -> bool:
        """Wait for work, admit, take one step; False once the engine is closed."""
        with self._cond:
            while not self._closed and not self._has_work():
                self._cond.wait(timeout=0.5)
            if self._closed:
                for request in self._waiting + self._active:
                    request.send(None, EngineFailure("the engine is closed"))
                return False
            self._admit()
        try:
            self._step()
        except Exception as exc:
            log.exception("llama.cpp batch step failed")
            for request in list(self._active):
                self._finish(request, EngineFailure(f"llama.cpp failed: {exc}"))
        return True

    def _has_work(self) -> bool:
        self._active = [r for r in self._active if not self._drop_if_cancelled(r)]
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.send(None, None)
        return bool(self._active) or (bool(self._waiting) and any(not s.busy for s in self.slots))

    def _drop_if_cancelled(self, request: Request) -> bool:
        if request.cancelled:
            self._release(request)
            request.send(None, None)
            return True
        return False

    def _admit(self) -> None:
        """Give free slots to waiting requests, earliest deadline first."""
        self._waiting.sort(key=lambda r: (r.handle.deadline(), r.order))
        while self._waiting and any(not s.busy for s in self.slots):
            request = self._waiting.pop(0)
            try:
                prompt = self._prompt_tokens(request)
            except EngineFailure as exc:
                request.send(None, exc)
                continue
            try:
                self._start(request, prompt)
            except Exception as exc:
                # One request that cannot start fails alone; the engine thread (every call's replies)
                # must not die with it, or every later request would wait for its timeout.
                log.exception("llama.cpp: a request could not start")
                self._finish(request, EngineFailure(f"llama.cpp could not start the request: {exc}"))

    def _start(self, request: Request, prompt: list[int]) -> None:
        """Put an admitted request in the best slot and make its sampler: it generates from the next step."""
        slot = max((s for s in self.slots if not s.busy), key=lambda s: _slot_fit(s, prompt))
        slot.busy = True
        request.slot = slot
        request.prompt = prompt
        request.prompt_tokens = len(prompt)
        self._catch_up(request)
        # The caller's own line is not echoed back either (the 0.5B model's other habit: "Is there
        # parking nearby?" answered "Is there parking nearby?"); it is not a penalty, though, as
        # a reply names the caller's day or name on purpose.
        said = [m.content for m in request.messages[-1:] if m.role == "user"]
        request.matcher = AvoidMatcher(self._openings([*request.avoid, *said]), self._refusals)
        request.sampler = self._sampler(request.options)
        request.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if request.route_at is not None:
            # The model first writes a name (speech or a tool) under the tools' grammar, greedily: the
            # likeliest name is the choice. Speech's own sampler and masks wait for that choice.
            request.route = _Route(request.route_at, request.sampler, request.matcher)
            request.sampler = self._grammar_sampler(self._grammars[_tools_key(request.tools)] or "")
            request.matcher = None
        self._active.append(request)

    def _catch_up(self, request: Request) -> None:
        """Before a request evaluates its own prompt tokens: take what any slot already holds of it."""
        slot = request.slot
        assert slot is not None
        prompt = request.prompt
        self._share_prefix(slot, prompt)
        self._drop_trimmed(slot, prompt)
        keep = min(_common_prefix(slot.tokens, prompt), len(prompt) - 1)  # re-evaluate ≥ 1 token: its logits
        if keep < len(slot.tokens):
            self._lc.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
            del slot.tokens[keep:]
        request.cached_tokens = keep
        request.pending = prompt[keep:]

    def _drop_trimmed(self, slot: _Slot, prompt: list[int]) -> None:
        """The prompt is the slot's conversation with a block of old turns cut out after the system
        prompt (`shared.conversation.trim_history`): remove that block from the KV cache and shift what
        follows back into place, as llama.cpp's server does when its context is full, instead of
        evaluating the kept turns again (≈ 150 tokens: over a second on a busy 2-core machine, for
        every call, every other exchange). The kept turns' cache was computed with the cut ones in
        view; the model reads them as fine, as a context shift does.
        """
        match = _cut_block(slot.tokens, prompt) if self._can_shift else None
        if match is None:
            return
        cut_at, resume, end = match
        # A cell shared with another sequence (a prefix `_share_prefix` copied) has one position for
        # both: shifting it would move the other's too. Then the kept turns are evaluated again. Only
        # the kept cells move: calls of one agent share its system prompt and greeting, and the cut
        # block (the greeting, the first exchange) is only untagged from this sequence, so a shared
        # greeting does not stop the shift (it did: ~120 tokens evaluated again every other exchange
        # of every call, 0.6 s of both cores each on a 4-call run).
        if any(other is not slot and _common_prefix(other.tokens, slot.tokens) > resume for other in self.slots):
            return
        lc, memory, seq = self._lc, self._memory, slot.seq
        lc.llama_memory_seq_rm(memory, seq, end, -1)  # what differs after the kept turns goes anyway
        lc.llama_memory_seq_rm(memory, seq, cut_at, resume)
        lc.llama_memory_seq_add(memory, seq, resume, end, cut_at - resume)
        slot.tokens = slot.tokens[:cut_at] + slot.tokens[resume:end]
        self.shifted += 1

    def _follows(self, request: Request, others: list[Request]) -> bool:
        """Another request is evaluating a prefix this one shares: wait for it, then copy it.

        The leader is the one further along (then the older), so two equal prompts never wait on each
        other; a follower only waits while it has evaluated nothing of its own.
        """
        slot = request.slot
        assert slot is not None
        if request.started_own:
            return False
        here = (len(slot.tokens), -request.order)
        for other in others:
            if other is request or other.slot is None or other.next_token is not None:
                continue
            common = _common_prefix(other.prompt, request.prompt)
            if common >= len(slot.tokens) + SHARE_MIN_TOKENS and len(other.slot.tokens) < common \
                    and (len(other.slot.tokens), -other.order) > here:
                return True
        return False

    def _share_prefix(self, slot: _Slot, prompt: list[int]) -> None:
        """Start `slot` from another slot's cache when that one shares more of the prompt.

        Calls of one agent share its system prompt: in the unified cache a copied prefix is the same
        cells tagged with one more sequence, so four calls starting together evaluate it once, not
        four times (the first turn's cost on a busy machine). The donor may be generating: the
        positions copied are already evaluated and never change.
        """
        own = _common_prefix(slot.tokens, prompt)
        donor = max(self.slots, key=lambda s: _common_prefix(s.tokens, prompt))
        shared = _common_prefix(donor.tokens, prompt)
        if donor is slot or shared < own + SHARE_MIN_TOKENS:
            return
        self._lc.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        self._lc.llama_memory_seq_cp(self._memory, donor.seq, slot.seq, 0, shared)
        slot.tokens = prompt[:shared]

    def _step(self) -> None:
        """One llama_decode over the chosen tokens of every active sequence, then sampling."""
        live = [r for r in self._active if not r.cancelled]
        if not live:
            return
        firm = [r for r in live if not r.speculative]
        chosen = firm if firm else live  # speculation waits while a confirmed reply is being made
        chosen.sort(key=lambda r: (r.handle.deadline(), r.order))
        batch = self._batch
        n = 0
        outputs: list[tuple[Request, int]] = []
        prefilled: dict[int, int] = {}  # id(request) → prompt tokens put in this step
        budget = self._n_batch
        for request in chosen:  # generating sequences: one token each
            slot = request.slot
            assert slot is not None
            if request.next_token is not None and n < budget:
                self._put(n, request.next_token, len(slot.tokens), slot.seq, True)
                outputs.append((request, n))
                n += 1
        # One prompt chunk per step, the most urgent prompt's (the earliest turn is heard first instead
        # of every turn late together), and none while a reply about to run dry is generating (its
        # deadline is pushed far back, see voice_gateway.reply): its tokens then come from short
        # decode-only steps, as a chunk in the same step would slow them tenfold.
        now = time.monotonic()
        late_generating = min((r.handle.deadline() for r in chosen if r.next_token is not None), default=math.inf)
        late_generating = late_generating if late_generating < now - RUNNING_DRY_S else math.inf
        chunk = PREFILL_CHUNK
        if math.isfinite(late_generating) and now - self._last_prompt_step >= self.prompt_starve_s:
            # With several calls some reply is nearly always running dry; a new turn's prompt still
            # gets a chunk this often, or its caller would wait for seconds behind them: a small one.
            late_generating = math.inf
            chunk = DRY_PREFILL_CHUNK
        for request in chosen:
            slot = request.slot
            assert slot is not None
            if request.next_token is not None or not request.pending:
                continue
            if not request.started_own:
                self._catch_up(request)  # a prefix another request has just evaluated: copied, not redone
                if self._follows(request, chosen):
                    continue
            if late_generating <= now and late_generating <= request.handle.deadline():
                break
            request.started_own = True
            take = request.pending[: min(chunk, budget - n)]
            for i, token in enumerate(take):
                last = i == len(take) - 1 and len(take) == len(request.pending)
                self._put(n, token, len(slot.tokens) + i, slot.seq, last)
                if last:
                    outputs.append((request, n))
                n += 1
            prefilled[id(request)] = len(take)
            request.chunks.append(len(take))
            self._last_prompt_step = now
            break
        if n == 0:
            return
        batch.n_tokens = n
        most_urgent = min(chosen, key=lambda r: r.handle.deadline()).handle
        status = self._decode(batch, most_urgent)
        if status != 0:
            failed = EngineFailure("the context is full" if status == 1 else f"llama_decode returned {status}")
            for request in chosen:
                self._finish(request, failed)
            return
        # The tokens of this step are now in the KV cache.
        for request in chosen:
            slot = request.slot
            assert slot is not None
            if request.next_token is not None:
                slot.tokens.append(request.next_token)
                request.next_token = None
            elif id(request) in prefilled:
                count = prefilled[id(request)]
                slot.tokens.extend(request.pending[:count])
                del request.pending[:count]
        for request, index in outputs:
            self._sample(request, index)

    def _decode(self, batch: Any, handle: Urgent) -> int:
        """One step, on as many threads as the gate gives it: all of ours unless another reply's work
        waits or runs (then it gets the other core meanwhile); the next step chooses again."""
        lc = self._lc
        with self._gate.hold(handle, most=self._threads, short=True) as share:
            if share.threads != self._running_threads:
                lc.llama_set_n_threads(self._ctx, share.threads, share.threads)
                self._running_threads = share.threads
            return int(lc.llama_decode(self._ctx, batch))

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0

    def _sample(self, request: Request, index: int) -> None:
        lc = self._lc
        matcher = request.matcher
        banned = matcher.banned() if matcher is not None else set()
        if request.tools:
            banned.discard(self._call_open)  # a sentence opening or refusal never hides a tool call
        if banned:
            # The sampler reads the context's logits for this output: masking them there is all it takes.
            logits = lc.llama_get_logits_ith(self._ctx, index)
            for token in banned:
                logits[token] = -math.inf
            request.masked += 1
        if request.speech_only:
            row = lc.llama_get_logits_ith(self._ctx, index)
            np.ctypeslib.as_array(row, shape=(self._n_vocab,))[self._markup_tokens()] = -math.inf
        token = int(lc.llama_sampler_sample(request.sampler, self._ctx, index))
        piece_bytes = self._piece(token)
        if request.route is not None and not request.cancelled:
            self._route_step(request, token, piece_bytes)
            return
        if request.tools and token == self._call_open:
            # JSON follows: the masks are for speech, and one masked token would break the call.
            request.in_call = True
            request.matcher = matcher = None
        if matcher is not None:
            matcher.advance(token, ends_sentence=ends_sentence(piece_bytes.decode(errors="ignore")))
        if request.cancelled:
            self._finish(request, None)
            return
        if lc.llama_vocab_is_eog(self._vocab, token):
            tail = request.decoder.decode(b"", final=True)
            if tail:
                request.send(tail, None)
            self._finish(request, None)
            return
        request.generated += 1
        piece = request.decoder.decode(piece_bytes)
        if piece:
            request.send(piece, None)
        slot = request.slot
        assert slot is not None
        budget = request.options.max_tokens + (TOOL_CALL_TOKENS if request.in_call else 0)
        # One call per reply: what the model would say after it comes before the tool's result,
        # a guess at that result ("Tuesday is free!"), so the reply ends with the call.
        called = bool(request.tools) and token == self._call_close
        if called or request.generated >= budget or len(slot.tokens) + 1 >= self.ctx_per_slot:
            tail = request.decoder.decode(b"", final=True)
            if tail:
                request.send(tail, None)
            self._finish(request, None)
            return
        request.next_token = token

    def _route_step(self, request: Request, token: int, piece: bytes) -> None:
        """One token of the name a routed reply opens with; once the name is whole, act on the choice."""
        route = request.route
        assert route is not None
        route.text += piece.decode(errors="ignore")  # names are ASCII (agent_config.TOOL_NAME)
        request.generated += 1
        name = tool_route.choice(route.text)
        if name is None:
            if request.generated >= request.options.max_tokens:
                self._finish(request, None)  # a prompt prefill (one token): its prompt is in the cache
                return
            request.next_token = token
            return
        request.route = None
        if name == tool_route.REPLY.name:
            self._speak(request, route)
            return
        # A tool: the call goes on under the grammar, and the caller sees it whole, from `<tool_call>`.
        self._lc.llama_sampler_free(route.words)
        request.in_call = True
        request.send(tool_route.PREFIX + route.text, None)
        request.next_token = token

    def _speak(self, request: Request, route: _Route) -> None:
        """The model chose to speak: forget the written prefix and the name, and sample words from where
        the assistant's turn opens (its last prompt token is evaluated again, for its logits)."""
        slot = request.slot
        assert slot is not None
        keep = route.at - 1
        self._lc.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        del slot.tokens[keep:]
        request.prompt = request.prompt[: route.at]
        request.pending = request.prompt[keep:]
        request.next_token = None
        request.generated = 0
        self._lc.llama_sampler_free(request.sampler)
        request.sampler = route.words
        request.matcher = route.matcher
        # Measured: with `reply` listed, a spoken reply sometimes went on into `{"name": "reply", …}`.
        request.speech_only = True

    def _finish(self, request: Request, error: Exception | None) -> None:
        if request in self._active:
            self._active.remove(request)
        self._release(request)
        request.send(None, error)

    def _release(self, request: Request) -> None:
        if request.sampler is not None:
            self._lc.llama_sampler_free(request.sampler)
            request.sampler = None
        if request.route is not None:
            self._lc.llama_sampler_free(request.route.words)
            request.route = None
        slot = request.slot
        if slot is not None:
            slot.busy = False
            slot.last_used = time.monotonic()
            request.slot = None

    # --- tokens -----------------------------------------------------------------------------------
    def _prompt_tokens(self, request: Request) -> list[int]:
        """The chat template applied, tokenized; the oldest turns are dropped if it would not fit."""
        messages = list(request.messages)
        tools: Sequence[ToolSpec] = request.tools
        suffix: list[int] = []
        if tool_route.routable(tools):
            # `reply` is listed on every turn with tools, routed or not, so that a call's turns share
            # the system prompt's KV cache; a turn that answers a tool's result is spoken, not routed.
            tools = tool_route.listed(tools)
            if messages[-1].role == "tool":
                request.speech_only = True  # measured: after its own call, the 0.5B model wrote JSON again
            elif self._grammar_for(request.tools) is not None:
                suffix = self._route_prefix
        room = self.ctx_per_slot - request.options.max_tokens - 1 - len(suffix)
        while True:
            tokens = self._tokenize(self._format(messages, tools))
            if len(tokens) <= room:
                request.route_at = len(tokens) if suffix else None
                return tokens + suffix
            droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
            if not droppable:
                raise EngineFailure(f"the prompt ({len(tokens)} tokens) does not fit the context ({room})")
            first = droppable[0]
            end = first + 1  # a call goes with its results: a result without its call reads as nonsense
            while messages[first].tool_calls and end < len(messages) - 1 and messages[end].role == "tool":
                end += 1
            del messages[first:end]

    def _format(self, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()) -> bytes:
        """The prompt text through the model's chat template; tool sections, calls and results are
        written Hermes-style first (`shared.llm.hermes`), as the C API's template knows plain roles only."""
        lc = self._lc
        keep = [(role.encode(), content.encode()) for role, content in render(messages, tools)]
        chat = (lc.llama_chat_message * len(keep))()
        for i, (role, content) in enumerate(keep):
            chat[i].role = role
            chat[i].content = content
        size = sum(len(c) + len(r) for r, c in keep) * 2 + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_chat_apply_template(self._template, chat, len(keep), True, buf, size)
            if n < 0:
                raise EngineFailure("the model's chat template could not be applied")
            if n <= size:
                return buf.raw[:n]
            size = n + 1
        raise EngineFailure("the chat template kept growing")

    def _tokenize(self, text: bytes) -> list[int]:
        lc = self._lc
        size = len(text) + 16
        tokens = (lc.llama_token * size)()
        n = lc.llama_tokenize(self._vocab, text, len(text), tokens, size, True, True)
        if n < 0:
            size = -n
            tokens = (lc.llama_token * size)()
            n = lc.llama_tokenize(self._vocab, text, len(text), tokens, size, True, True)
        return list(tokens[:n])

    def _markup_tokens(self) -> Any:
        """The ids of `_markup`, found once (a pass over the vocabulary, a fraction of a second)."""
        if self._markup is None:
            ids = [t for t in range(self._n_vocab) if any(c in self._piece(t) for c in _MARKUP_BYTES)]
            self._markup = np.array(sorted({*ids, *([self._call_open] if self._call_open is not None else [])}))
        return self._markup

    def _grammar_for(self, tools: Sequence[ToolSpec]) -> str | None:
        """The routing grammar of these tools (compiled once per set), None where it does not compile."""
        key = _tools_key(tools)
        if key not in self._grammars:
            self._markup_tokens()  # on the first turn with tools, not in the middle of a reply
            text = tool_route.grammar(tools)
            if text is not None:  # llama.cpp's own parser may still refuse what the converter wrote
                sampler = self._lc.llama_sampler_init_grammar(self._vocab, text.encode(), b"root")
                if sampler:
                    self._lc.llama_sampler_free(sampler)
                else:
                    log.warning("llama.cpp refused the tools' grammar: their turns are not routed")
                    text = None
            self._grammars[key] = text
        return self._grammars[key]

    def _grammar_sampler(self, grammar: str) -> Any:
        """A call's sampler: only what the grammar allows, the likeliest of it (a call wants no variety)."""
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root"))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain

    def _special_token(self, text: str) -> int | None:
        """The id of a token the vocabulary holds whole (`<tool_call>`), or None where it has none."""
        tokens = self._marked_tokens(text)
        return tokens[0] if len(tokens) == 1 else None

    def _marked_tokens(self, text: str) -> list[int]:
        """Text with markup tokens parsed (`<tool_call>` as one token), nothing added before it."""
        raw = text.encode()
        size = len(raw) + 16
        tokens = (self._lc.llama_token * size)()
        n = self._lc.llama_tokenize(self._vocab, raw, len(raw), tokens, size, False, True)
        return [int(t) for t in tokens[: max(n, 0)]]

    def _text_tokens(self, text: str) -> list[int]:
        """Plain text as the model would generate it: no special tokens added or parsed."""
        raw = text.encode()
        size = len(raw) + 16
        tokens = (self._lc.llama_token * size)()
        n = self._lc.llama_tokenize(self._vocab, raw, len(raw), tokens, size, False, False)
        return list(tokens[: max(n, 0)])

    def _openings(self, avoid: Sequence[str]) -> TokenTrie:
        """The sentence openings of the replies in `avoid`, as generated at a reply's start (no leading
        space) and after an earlier sentence of it (one)."""
        trie = TokenTrie()
        for text in avoid:
            for sentence in sentences(text):
                for variant in (sentence, " " + sentence):
                    trie.add(opening(self._text_tokens(variant), self._piece_text))
        return trie

    def _piece_text(self, token: int) -> str:
        return self._piece(token).decode(errors="ignore")

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def _sampler(self, options: GenerationOptions) -> Any:
        """The chain for one reply: repeat penalties over the reply itself, then greedy, or
        top-k/top-p/min-p/temperature.

        The penalties are not primed with the earlier replies: measured, that pushed the 0.5B model to
        the same words in other tokens ("Avala", then "Avalа" with a Cyrillic а). Those are masked by
        opening instead (`shared.llm.avoid`)."""
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        last_n, repeat, presence = self._penalties
        if last_n and (repeat != 1.0 or presence):
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(
                lc.llama_vocab_n_tokens(self._vocab), last_n, repeat, 0.0, presence))
        if options.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        top_k, top_p, min_p = self._top
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(options.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(lc.LLAMA_DEFAULT_SEED))
        return chain


def _slot_fit(slot: _Slot, prompt: list[int]) -> tuple[int, int, float]:
    """How well a free slot suits a prompt: first the fewest tokens it would lose, then the most it
    already holds, then the one used longest ago.

    Taking a slot that holds another call's conversation throws that conversation away, and that
    call's next turn evaluates it all again (seconds on a busy machine); what this prompt shares with
    any slot (the agent's system prompt, or this call's own conversation) is copied for free anyway
    (`_share_prefix`). So an empty slot, or this call's own, comes before anyone else's.
    """
    common = _common_prefix(slot.tokens, prompt)
    cut = _cut_block(slot.tokens, prompt)
    if cut is not None:  # its own conversation, trimmed: the kept turns stay (`_drop_trimmed`)
        cut_at, resume, end = cut
        common = cut_at + end - resume
        return -(len(slot.tokens) - common - (resume - cut_at)), common, -slot.last_used
    return -(len(slot.tokens) - common), common, -slot.last_used


def _cut_block(tokens: list[int], prompt: list[int]) -> tuple[int, int, int] | None:
    """Whether `prompt` is `tokens` with one block cut out after their common prefix and at least
    `SHARE_MIN_TOKENS` of what followed it kept: (where the cut starts, where the kept part starts,
    where it ends) in `tokens`, else None."""
    cut_at = _common_prefix(tokens, prompt)
    if cut_at >= len(prompt) or cut_at >= len(tokens):
        return None
    first = prompt[cut_at]
    for resume in range(cut_at + 1, len(tokens)):
        if tokens[resume] == first:
            kept = _common_prefix(tokens[resume:], prompt[cut_at:])
            if kept >= SHARE_MIN_TOKENS:
                return cut_at, resume, resume + kept
    return None


def _tools_key(tools: Sequence[ToolSpec]) -> str:
    return json.dumps([spec.function() for spec in tools], sort_keys=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

