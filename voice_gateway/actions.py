"""What the agent's tools do on a live call, apart from the session's turn policy.

The session decides when (a risky action is confirmed by the caller first); this module does: calls
an HTTP tool (`http_tools`), redirects a call to a person (`<Dial>` through Twilio's REST API, the
`CallRedirect` the backend's Twilio telephony implements), makes keypad tones, asks and reads a yes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from twilio.twiml.voice_response import Dial, VoiceResponse

from shared.agent_config import HttpTool, LLMConfig, Tool, TransferTool
from shared.audio import float32_to_ulaw
from shared.llm.base import LLM, ChatMessage
from shared.llm.tools import ToolCall, ToolSpec
from shared.settings import Settings
from shared.storage.base import Call
from shared.text import split_clauses
from shared.tones import dtmf_tones
from voice_gateway.http_tools import ToolResult, call_http_tool

log = logging.getLogger(__name__)

CANNOT_DO_LINE = "Sorry, I couldn't do that just now."
_YES = re.compile(
    r"^\W*(yes|yeah|yep|yup|sure|please|ok|okay|correct|right|go ahead|do it|that's right|absolutely|"
    r"of course|definitely|please do|yes please)\b",
    re.IGNORECASE,
)
_NO = re.compile(r"\b(no|nope|not|don't|do not|wait|hold on|never ?mind|cancel)\b", re.IGNORECASE)


def is_yes(text: str) -> bool:
    """The caller agreed ("Yes, please.", "Sure, go ahead"), and did not take it back ("yes… no, wait")."""
    return _YES.search(text) is not None and _NO.search(text) is None


_PERSON = re.compile(
    r"\b(speak|talk|transfer|put me through|connect me|get me|let me (speak|talk))\b.{0,40}?"
    r"\b(a |an |the )?(real |actual |live )?(person|human|someone|somebody|agent|representative|manager|"
    r"operator|receptionist|staff)\b"
    r"|\b(real|actual|live) (person|human)\b|\bhuman being\b",
    re.IGNORECASE,
)


def asks_for_person(text: str) -> bool:
    """The caller asks to be put through to a person ("Can I speak to a real person?")."""
    return _PERSON.search(text) is not None


def confirmation_question(tool: Tool) -> str:
    """The question a risky action waits on (answered by the caller's next turn)."""
    if isinstance(tool, TransferTool):
        return "Would you like me to put you through to a person now?"
    if tool.kind == "end_call":
        return "Shall I end the call now?"
    return "Shall I go ahead?"


_NUMBER_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "star": "*", "pound": "#", "hash": "#"}
_KEY = r"([0-9*#]|zero|one|two|three|four|five|six|seven|eight|nine|star|pound|hash)"
# An option's words: no punctuation, and none of the words that open the next option (STT often drops
# the commas: "for billing press 1 for appointments press 2").
_WORDS = r"((?:(?!\b(?:for|to|press|dial|enter)\b)[^.,;:!?])+?)"
_OPTION_AFTER = re.compile(r"\b(?:for|to)\s+" + _WORDS + r",?\s+(?:please\s+)?(?:press|dial|enter)\s+" + _KEY,
                           re.IGNORECASE)
_OPTION_BEFORE = re.compile(r"\b(?:press|dial|enter)\s+" + _KEY + r",?\s+(?:for|to)\s+" + _WORDS
                            + r"(?=[.,;:!?]|\s+(?:press|dial|enter)\b|$)", re.IGNORECASE)
_STOP = frozenset({
    "a", "an", "the", "to", "for", "of", "and", "or", "your", "you", "our", "we", "us", "my", "me", "is", "are",
    "be", "in", "on", "at", "with", "about", "please", "if", "would", "like", "want", "need", "speak", "talk",
    "reach",
})


def _stems(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words if w not in _STOP and len(w) > 2}


def menu_options(text: str) -> dict[str, str]:
    """A phone menu's options as heard ("For appointments, press 2." → {"2": "appointments"}).

    Punctuation is dropped first: Whisper places it where it hears pauses, not where the options
    break ("…for billing. Press 1 for appointments. Press 2.").
    """
    text = re.sub(r"[.,;:!?]", " ", text)
    after = [(key, what) for what, key in _OPTION_AFTER.findall(text)]
    before = _OPTION_BEFORE.findall(text)
    # A menu says its options one way ("for X, press 1" or "press 1 for X"); read as the other way,
    # neighbouring options pair up wrongly, and match fewer times. A tie is read the common way.
    pairs = before if len(before) > len(after) else after
    options: dict[str, str] = {}
    for key, what in pairs:
        options.setdefault(_NUMBER_WORDS.get(key.lower(), key), what.strip())
    return options


def menu_choice(text: str, goal: str) -> str | None:
    """The key of the menu option that best matches the agent's purpose (its prompt), if any does.

    A small model reads a menu unreliably; the options are plain enough to match by their words
    ("appointments" in the menu, "book an appointment" in the prompt). No match: the model decides.
    """
    wanted = _stems(goal)
    scored = [(len(_stems(what) & wanted), key) for key, what in menu_options(text).items()]
    scored = [item for item in scored if item[0] > 0]
    return max(scored)[1] if scored else None


def dtmf_ulaw(digits: str) -> bytes:
    """Standard keypad tones for `digits`, as 8 kHz μ-law, with a short silence after them."""
    return float32_to_ulaw(dtmf_tones(digits))


def dial_twiml(to: str, *, whisper_url: str | None = None) -> str:
    """TwiML that connects the caller to `to` (a number or a SIP URI); a whisper plays to the person first."""
    response = VoiceResponse()
    dial = Dial()
    extra = {"url": whisper_url} if whisper_url else {}
    if to.startswith("sip"):
        dial.sip(to, **extra)
    else:
        dial.number(to, **extra)
    response.append(dial)
    return str(response)


def utcnow() -> str:
    return datetime.now(UTC).isoformat()


def short_json(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return text[1:-1] if text.startswith("{") else text


async def spoken_answer(llm: LLM, messages: list[ChatMessage], options: LLMConfig,
                        tools: Sequence[ToolSpec] = (), *,
                        cut_after: Callable[[], int | None] | None = None) -> AsyncIterator[str]:
    """The model's spoken answer once a tool's result is in the messages. The tools are offered as on
    every turn (the embedded model's prompt, and so its KV cache, stays the same), but one action per
    turn: a further call is dropped, and the engines answer a tool's result in words anyway. Its
    clauses are cut as the reply's own are (`cut_after`: `Reply.cut_after`)."""

    async def words() -> AsyncIterator[str]:
        stream = llm.stream(messages, options, tools=tools) if tools else llm.stream(messages, options)
        async for item in stream:
            if isinstance(item, str):
                yield item

    async for clause in split_clauses(words(), cut_after=cut_after):
        yield clause


class CallRedirect(Protocol):
    """Takes a live call away from its TwiML (`backend.telephony.twilio.TwilioTelephony`)."""

    async def update_twiml(self, call: Call, twiml: str) -> None: ...


class ToolRunner:
    """Runs the actions that reach outside the call: HTTP tools and transfers (one per gateway)."""

    def __init__(self, settings: Settings | None = None, redirect: CallRedirect | None = None) -> None:
        self._settings = settings
        self._redirect = redirect

    async def call_http(self, tool: HttpTool, call: ToolCall, *, call_id: str) -> ToolResult:
        settings = self._settings or Settings()
        return await call_http_tool(tool, call.name, call.arguments, call_id=call_id,
                                    secret=settings.webhook_signing_secret,
                                    allow_private=settings.webhook_allow_private)

    async def transfer(self, call: Call, tool: TransferTool) -> bool:
        """Redirect the call to the person; False where there is no provider call to redirect. The
        whisper (`tool.whisper`) is fetched by Twilio from the backend, which reads the transcript."""
        if self._redirect is None or not call.twilio_call_sid:
            log.info("call %s: transfer to %s (no provider call to redirect: the agent leaves)", call.id, tool.to)
            return False
        whisper = None
        if tool.whisper and self._settings is not None:
            whisper = f"{self._settings.public_base_url}/twilio/whisper/{call.id}"
        await self._redirect.update_twiml(call, dial_twiml(tool.to, whisper_url=whisper))
        log.info("call %s: transferred to %s", call.id, tool.to)
        return True
