"""Reading a caller's words while they are still talking, so that their turn's prompt is short.

After a turn ends, the LLM must evaluate the prompt's new tokens (the caller's words and the chat
template's markers, ~20 tokens for a 3–5 s line) before its first token. On 2 cores that is ~150 ms
on two threads, ~350 ms on one; with four callers ending together the four prompts run one after
another, and the last caller waits for all of them. While callers speak, though, the cores are often
idle. So after 1.2 s of speech without a pause and every 0.8 s after that (`SpeechGoingOn`,
`TurnConfig.listen_ahead_from_ms` and `listen_ahead_ms`), if no reply is being made anywhere on the
machine (`ComputeGate.quiet`), this transcribes the utterance so far and evaluates the prompt with
those words into the call's KV cache, as background work. The words are
the ones the turn's final transcript usually begins with; the engine keeps the longest common prefix
of its cache and the turn's real prompt (`shared.llm.llama_batch`), so only the words after them are
evaluated when the turn ends. A transcript that differs costs nothing but the idle time it used.

The last word read is dropped: the audio may end inside it, and a word cut short is often misread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import numpy as np

from shared import urgency
from shared.agent_config import LLMConfig
from shared.llm.base import LLM, ChatMessage
from shared.llm.tools import ToolSpec
from voice_gateway.engines import Engines
from voice_gateway.reply import usable_text

log = logging.getLogger(__name__)

MIN_WORDS = 2
"""Fewer words than this (after the last is dropped) are not worth a prompt evaluation."""
AT_ONCE = 1
"""Reading-ahead jobs running at once in the process, whatever the calls. A job's STT pass cannot be
stopped once it runs, and one still running when a turn ends holds a core that turn's own STT needs:
four callers ending together waited 400–530 ms for STT with every call reading ahead at once, against
150–400 ms without reading ahead. One at a time, calls take turns and at most one core is taken."""

_jobs: set[asyncio.Task[None]] = set()


async def evaluate_prompt(llm: LLM, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()) -> None:
    """Put `messages` (with the agent's tools, as its turns have them) into the engine's KV cache: a
    one-token request whose token is dropped. The engine keeps the prompt's cache for the next request
    that shares its prefix."""
    options = LLMConfig(max_tokens=1)
    stream = llm.stream(messages, options, tools=tools) if tools else llm.stream(messages, options)
    async for _ in stream:
        pass


def stable_words(text: str) -> str | None:
    """The words of a transcript of speech still going on that the final one likely starts with: all
    but the last (perhaps cut short), and None when too few remain."""
    words = text.split()[:-1]
    return " ".join(words) if len(words) >= MIN_WORDS else None


class ReadAhead:
    """One call's reading ahead: at most one job at a time, dropped when the turn's reply begins."""

    def __init__(self, call_id: str, engines: Engines, *, stt_prompt: str | None,
                 context: Callable[[], list[ChatMessage]], tools: Sequence[ToolSpec] = (),
                 quiet: Callable[[], bool] | None = None) -> None:
        self._call_id = call_id
        self._engines = engines
        self._stt_prompt = stt_prompt
        self._context = context
        self._tools = tuple(tools)
        self.quiet = quiet if quiet is not None else lambda: urgency.gate().quiet
        """Whether background work may start now (the process's `ComputeGate.quiet`)."""
        self._task: asyncio.Task[None] | None = None
        self.started = 0
        self.evaluated: list[str] = []
        """The words whose prompt was evaluated, in order (for tests and logs)."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def heard(self, audio: np.ndarray) -> bool:
        """The utterance so far, mid-speech: read it and evaluate its prompt if the machine is idle
        and no earlier job of this call still runs. Returns whether a job started."""
        if self.running or len(_jobs) >= AT_ONCE or not self.quiet():
            return False
        self.started += 1
        self._task = task = asyncio.create_task(self._read(audio), name=f"read-ahead-{self._call_id}")
        _jobs.add(task)
        task.add_done_callback(_jobs.discard)
        return True

    def stop(self) -> None:
        """The turn's reply begins (or the call ends): its own request takes over the call's slot.

        The job stops counting against `AT_ONCE` now, not when its cancellation is processed: a call
        whose loop ends first (a test's, a gateway's at shutdown) must not hold the count for good."""
        if self._task is not None:
            _jobs.discard(self._task)
            if not self._task.done():
                self._task.cancel()
        self._task = None

    async def wait(self) -> None:
        """Until the current job (if any) is over (for tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self, audio: np.ndarray) -> None:
        with urgency.working_for(urgency.BACKGROUND):
            try:
                heard = await self._engines.stt.transcribe(audio, prompt=self._stt_prompt)
                words = stable_words(usable_text(heard))
                if words is None:
                    return
                await evaluate_prompt(self._engines.llm, [*self._context(), ChatMessage("user", words)],
                                      self._tools)
                self.evaluated.append(words)
            except Exception:  # background work: the turn itself does it all, as if never read ahead
                log.warning("call %s: reading ahead failed", self._call_id, exc_info=True)
