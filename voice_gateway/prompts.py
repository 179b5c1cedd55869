"""What the models are told: the agent's system prompt and Whisper's initial prompt."""

from __future__ import annotations

from shared.storage.base import Agent
from shared.stt.prompt import initial_prompt

SPOKEN_STYLE = (
    "You are on a live phone call with the caller. Reply with one or two short spoken sentences "
    "(under 30 words) that answer what the caller just said, then ask one question if needed. "
    "No lists, no markdown, no emojis. Use only the facts above; if you do not know, say you will "
    "check and call back. Never invent prices, dates or names. Never refuse the caller: if you cannot "
    "do something, say what you can do or ask a question. Do not repeat the caller's words or your own "
    "earlier replies."
)


def system_prompt(agent: Agent) -> str:
    """Name the agent and the business: a small model stays on topic only when told who it is."""
    business = agent.settings.business
    who = f"Your name is {agent.name}" + (f" and you work for {business}." if business else ".")
    return f"{who}\n{agent.prompt.strip()}\n\n{SPOKEN_STYLE}"


def stt_prompt(agent: Agent) -> str | None:
    """Whisper's initial prompt: the business's words, then the greeting the caller answers (measured
    by scripts/measure_stt.py: WER 0.274 against 0.288 for a list of names and 0.338 for none). The
    agent's own name is left out: callers do not say it. None when the agent gives nothing to go on."""
    return initial_prompt(greeting=agent.greeting, business=agent.settings.business,
                          expected_answers=agent.settings.expected_answers)
