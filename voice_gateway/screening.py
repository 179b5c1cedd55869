"""Who answered an outbound call: a person or an answering machine, decided before the agent greets.

A person picks up and says "Hello?" (about a second) and waits; a machine plays a recorded greeting
(several seconds, "…leave a message after the tone") and then a beep. So on an outbound call the agent
listens first (`VoicemailConfig.wait_for_callee_ms`) instead of talking over either:

- a short first utterance followed by a gap → a person: the agent greets at once;
- an opening that runs past `machine_speech_ms`, voicemail wording in what was heard, a beep, or
  Twilio's answering-machine detection (`AnsweredBy=machine_*`) → a machine;
- nobody speaks within the wait → the agent greets (a person who waits for the caller to talk).

At a machine the agent waits for the greeting's end (the beep, or a long silence after it), then
leaves its message or hangs up. The decisions are pure functions of what was heard and when: the
session feeds events and asks `tick(now)` on every media chunk (Twilio streams one every 20 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from shared.agent_config import VoicemailConfig

HUMAN_GAP_S = 0.7
"""Silence after a short first utterance that says a person is waiting for an answer ("Hello?" …)."""
GREETING_END_SILENCE_S = 2.0
"""At a machine without a beep: this much silence after its last words ends its greeting."""
LONG_HELLO_S = 1.6
"""An opening longer than this is not a plain hello: the agent waits longer before taking it for one."""
MENU_GAP_S = 1.5
"""Silence after a phone menu's last words that says it has read all its options."""
LATE_MACHINE_S = 20.0
"""After greeting a supposed person, a machine still shows itself this long after the answer."""
MACHINE_WAIT_MAX_S = 30.0
"""At a machine: leave the message after this long even if its greeting never seems to end."""

_VOICEMAIL = re.compile(
    r"\b(leave (me |us )?(a |your )?(brief |short )?(message|name|number)|after the (tone|beep)"
    r"|(not|isn't|is not|aren't|are not) available|can't (take|come to) (your call|the phone)"
    r"|unable to (take|answer)|at the tone|voice ?mail|mailbox|record your message"
    r"|reached the (voicemail|mailbox|desk)|you have reached|please leave|get back to you"
    r"|away from (the|my) (phone|desk))\b",
    re.IGNORECASE,
)


# "press to" is how Whisper often writes "press two" on a phone line.
_MENU = re.compile(
    r"\b(press|dial|enter)\s+([0-9*#]|zero|one|two|to|too|three|four|five|six|seven|eight|nine|star|pound)\b",
    re.IGNORECASE,
)


def sounds_like_menu(text: str) -> bool:
    """An automated phone menu ("For appointments, press 2."): not a person, not a machine to leave a
    message on: the agent answers it (with keys) instead of greeting it."""
    return _MENU.search(text) is not None


def sounds_like_voicemail(text: str) -> bool:
    """Typical recorded-greeting wording, as Whisper writes it."""
    return _VOICEMAIL.search(text) is not None


class Answered(Enum):
    UNKNOWN = "unknown"
    HUMAN = "human"
    MACHINE = "machine"


class Action(Enum):
    GREET = "greet"
    """A person (or nobody yet): the agent speaks its greeting now."""
    VOICEMAIL = "voicemail"
    """The machine's greeting is over: leave the message (or hang up) now."""
    MENU = "menu"
    """An automated menu answered: no greeting, its options are answered (a key pressed) as a turn."""


@dataclass
class Screening:
    """The state of one outbound call's answer, from the stream's start to the verdict's action."""

    config: VoicemailConfig
    started: float
    answered: Answered = Answered.UNKNOWN
    reason: str = ""
    """Why it decided: silence, short_hello, long_greeting, voicemail_words, beep, twilio:<AnsweredBy>."""
    greeted: bool = False
    """The agent greeted (a person, or nobody yet). A machine can still show itself afterwards (its
    wording or beep within `LATE_MACHINE_S`): the agent then stops and leaves its message after all."""
    done: bool = False
    """The voicemail action was taken, or the machine window closed: screening is over."""
    _speech_s: float = 0.0  # callee speech so far (whole utterances, as they end)
    _speaking_since: float | None = None
    _last_speech_end: float | None = None
    _beep_at: float | None = None
    _machine_at: float | None = None
    _voicemail_words = False
    reading = 0
    """Utterances whose words are being read (STT): the verdict may still turn on them (a menu)."""
    menu = False
    """The callee is an automated phone menu (its words said "press 2 for …")."""

    @property
    def holding(self) -> bool:
        """The agent must not speak or answer: it listens for who answered, or for a machine's beep."""
        return not self.done and (not self.greeted or self.answered is Answered.MACHINE)

    @property
    def machine(self) -> bool:
        return self.answered is Answered.MACHINE

    # --- what the session feeds ------------------------------------------------------------------
    def speech_started(self, now: float) -> None:
        if self._speaking_since is None:
            self._speaking_since = now

    def speech_ended(self, now: float) -> None:
        """An utterance of the callee ended (its turn, as the turn detector saw it)."""
        if self._speaking_since is not None:
            self._speech_s += now - self._speaking_since
        self._speaking_since = None
        self._last_speech_end = now

    def words(self, text: str, now: float) -> None:
        """What STT heard the callee say (all of it so far, or a later turn's) while screening goes on."""
        if self.done:
            return
        if sounds_like_voicemail(text):
            self._voicemail_words = True
            if self.answered is not Answered.MACHINE:
                self._machine(now, "voicemail_words")
        elif sounds_like_menu(text) and not self._voicemail_words and not self.greeted:
            # A menu talks at length too: it is not a machine to leave a message on.
            self.answered, self.reason, self._machine_at, self.menu = Answered.HUMAN, "menu", None, True

    def beep(self, now: float) -> None:
        """A beep ended: a machine is recording from now."""
        self._beep_at = now
        if not self.done and self.answered is not Answered.MACHINE:
            self._machine(now, "beep")

    def provider_says(self, answered_by: str, now: float) -> None:
        """Twilio's answering-machine detection (`AnsweredBy`)."""
        if self.done:
            return
        if answered_by.startswith("machine") or answered_by == "fax":
            if self.answered is not Answered.MACHINE:
                self._machine(now, f"twilio:{answered_by}")
            if answered_by in ("machine_end_beep", "machine_end_silence", "machine_end_other"):
                self._beep_at = self._beep_at or now  # the greeting is over: Twilio waited for its end
        elif answered_by == "human" and self.answered is Answered.UNKNOWN:
            self.answered, self.reason = Answered.HUMAN, f"twilio:{answered_by}"

    # --- what the session asks -------------------------------------------------------------------
    def tick(self, now: float) -> Action | None:
        """The action due now, once; None while the agent should keep listening."""
        if self.done:
            return None
        speaking = self._speaking_since is not None
        spoken = self._speech_s + (now - self._speaking_since if self._speaking_since is not None else 0.0)
        if self.greeted and self.answered is not Answered.MACHINE:
            if now - self.started >= LATE_MACHINE_S:
                self.done = True  # a conversation: no more screening
            return None
        if self.answered is Answered.UNKNOWN and spoken >= self.config.machine_speech_ms / 1000 and not self.menu:
            self._machine(now, "long_greeting")
        if self.answered is Answered.MACHINE:
            assert self._machine_at is not None
            if self.reading and self._beep_at is None and now - self._machine_at < MACHINE_WAIT_MAX_S:
                return None  # its words may still say it is a menu (a long one is not a machine; nor beeps)
            if self._beep_at is not None and not speaking:
                return self._act(Action.VOICEMAIL)
            quiet_since = self._last_speech_end if self._last_speech_end is not None else self._machine_at
            if not speaking and now - max(quiet_since, self._machine_at) >= GREETING_END_SILENCE_S:
                return self._act(Action.VOICEMAIL)
            if now - self._machine_at >= MACHINE_WAIT_MAX_S:
                return self._act(Action.VOICEMAIL)
            return None
        if self.menu:
            if speaking or self.reading or \
                    (self._last_speech_end is not None and now - self._last_speech_end < MENU_GAP_S):
                return None  # all of the menu first: the option wanted may come last
            self.greeted = True  # the conversation is on: no greeting for a menu
            return self._act(Action.MENU)
        if self.answered is Answered.HUMAN and not speaking:
            return self._greet()
        if speaking:
            return None
        if self._last_speech_end is None:
            if now - self.started >= self.config.wait_for_callee_ms / 1000:
                self.reason = "silence"
                return self._greet()
            return None
        # A hello lasts about a second; a longer opening ("Thank you for calling Bright Smile Dental.")
        # may be a menu or a machine taking a breath: it needs a longer silence, or its words, first.
        gap = HUMAN_GAP_S if self._speech_s <= LONG_HELLO_S else MENU_GAP_S
        if now - self._last_speech_end >= gap and not (self.reading and self._speech_s > LONG_HELLO_S):
            self.answered, self.reason = Answered.HUMAN, "short_hello"
            return self._greet()
        return None

    def _machine(self, now: float, reason: str) -> None:
        self.answered, self.reason, self._machine_at = Answered.MACHINE, reason, now

    def _greet(self) -> Action:
        self.greeted = True
        return Action.GREET

    def _act(self, action: Action) -> Action:
        self.done = True
        return action

    @property
    def answered_by(self) -> str:
        """The verdict in Twilio's words (stored on the call)."""
        if self.answered is Answered.HUMAN:
            return "human"
        if self.answered is Answered.MACHINE:
            return "machine_end_beep" if self._beep_at is not None else "machine_end_silence"
        return "unknown"
