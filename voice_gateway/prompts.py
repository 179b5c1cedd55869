"""What the models are told: the agent's system prompt and Whisper's initial prompt."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def fill_placeholders(text: str, variables: Mapping[str, Any]) -> str:
    """`{first_name}` in `text` replaced by the contact's variable; a placeholder with no variable is
    left as written (a prompt may show braces of its own), and nothing else is interpreted (no format
    specs, no attribute access: a variable's value cannot reach into the process)."""
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text)


def personalized(agent: Agent, variables: Mapping[str, Any] | None) -> Agent:
    """The agent as this call's contact meets it: its prompt, greeting and voicemail message with the
    campaign contact's variables filled in (the stored agent is unchanged)."""
    if not variables:
        return agent
    voicemail = agent.settings.voicemail
    settings = agent.settings
    if voicemail.message:
        settings = settings.model_copy(
            update={"voicemail": voicemail.model_copy(update={"message": fill_placeholders(voicemail.message,
                                                                                            variables)})})
    return agent.model_copy(update={
        "prompt": fill_placeholders(agent.prompt, variables),
        "greeting": fill_placeholders(agent.greeting, variables) if agent.greeting else agent.greeting,
        "settings": settings,
    })
