"""What the caller's own words settle about a call's outcome before a model reads the call.

A few outcomes are said in set phrases: a voicemail greeting ("leave a message after the tone"), a
request to stop the calls ("take me off your list"), a wrong number, a request to be called back, or
no words at all. The embedded 0.5B model reads such a call and still labels it `goal_achieved` (it did
so for most calls of tests/data/analysis_transcripts.json), and retries and the do-not-call list act on
the label. So these phrases are matched here, on CALLER lines only (the agent's "I'll make sure we
don't call you again" is not the caller's request), and the match fixes the outcome the model writes.

Pure and conservative: a phrase must be unambiguous on its own ("don't call me before five" is not
a request to stop calling); anything else is left to the model. Only outcomes the agent's spec has
are cued.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from shared.storage.base import TranscriptLine

VOICEMAIL = "voicemail"
NO_CONVERSATION = "no_conversation"
WRONG_PERSON = "wrong_person"
DO_NOT_CALL = "do_not_call"
CALLBACK_REQUESTED = "callback_requested"

_CALL = r"(?:calling|call|phoning|phone|ringing|ring|contacting|contact|bothering|bother)"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # In order of precedence: a machine's greeting says nothing about the person; a stop request
    # outweighs anything else the caller said (it is what the law asks to be honoured).
    (VOICEMAIL, re.compile(
        r"\b(?:leave (?:a|your|me a) (?:brief |short )?message|(?:after|at) the (?:beep|tone)"
        r"|record your message|mailbox (?:is )?full|voice ?mail (?:box|service|of)|(?:can ?not|can't) take your call"
        r"|is not available (?:right now|at the moment|to take)|not available at the tone"
        r"|voice ?mail ?box|the (?:number|person|party) you (?:have )?(?:reached|dialed|are calling)"
        r"|(?:has not|hasn't|has not yet) been set up"
        r"|(?:not here|not available|away from the phone|can't come to the phone)\b.*\bget back to you)\b")),
    (DO_NOT_CALL, re.compile(
        rf"\b(?:(?:stop|quit|cease) {_CALL}"
        rf"|(?:don't|do not|dont|never) {_CALL} (?:me|us|this number|here|my number)(?: \w+)? (?:again|anymore|any more|ever)"
        rf"|(?:don't|do not|dont|never) {_CALL} (?:me|us|this number|here|my number) ?$"
        r"|do not call (?:list|registry)|dnc list"
        r"|(?:take|remove|delete|cross) (?:me|my number|this number|my name|us)(?: \w+){0,3} (?:off|from) (?:your|the|this) (?:\w+ )?list"
        r"|(?:off|from) your (?:\w+ )?(?:calling |call )?list"
        r"|(?:not|never) (?:to )?be (?:called|contacted) again|lose my number"
        # "I'd rather you didn't ring this line anymore", "please don't call this number"
        rf"|(?:didn't|did not|don't|do not|dont|never) {_CALL} (?:this|my) (?:line|number|phone)"
        r"(?: \w+)?(?: anymore| any more| again| ever|$)"
        # STT drops letters: "take me of your list"
        r"|(?:take|remove|delete|cross) (?:me|my number|this number|us)(?: \w+){0,3} of (?:your|the|this) (?:\w+ )?list)")),
    (WRONG_PERSON, re.compile(
        r"\b(?:wrong number|(?:you have|you've got|you got|you have got) the wrong (?:number|person)"
        r"|no (?:one|body) (?:here )?(?:by|with|named|called) that name|there(?:'s| is) no \w+ here"
        r"|(?:doesn't|does not|don't|do not) (?:live|work|stay) here(?: anymore| any more)?"
        r"|(?:moved out|passed away)\b.*\b(?:number|address|here)|i (?:don't|do not) know (?:any|a|who) "
        # "you got her old number", "this has been my number since 2019"
        r"|(?:his|her|their|the|an) old (?:number|phone)|(?:has been|is) my number (?:since|for|now)"
        r"|(?:he|she|they) (?:moved away|moved out|passed away|died)\b)")),
    (CALLBACK_REQUESTED, re.compile(
        r"\b(?:(?:call|ring|phone|try) me (?:back|again|later|tomorrow|tonight|next|after|on|in|this)"
        r"|(?:call|ring|phone) (?:us )?back (?:later|tomorrow|tonight|next|after|on|in|this|at|when|monday|tuesday"
        r"|wednesday|thursday|friday|saturday|sunday|morning|afternoon|evening)"
        r"|(?:can|could|would) you (?:call|ring|phone|try)(?: me)? (?:back|again|later|tomorrow|next|after)"
        r"|call me back|another time)\b")),
)
_FILLERS = frozenset(
    ["hello", "hallo", "hullo", "hi", "hey", "uh", "um", "umm", "mm", "mmm", "hm", "hmm", "huh", "ah", "oh", "er",
     "eh", "what", "who", "is", "this", "that", "there", "anyone", "anybody", "pardon", "can", "you", "hear", "me",
     # what a line says when nobody talks: "I can't hear anything", and Whisper's words for silence
     "i", "can't", "cant", "cannot", "nothing", "anything", "a", "thing", "thank", "thanks", "bye"]
)
"""A caller who said only these said nothing: a "hello?" into a silent line, noise taken for words."""


@dataclass(frozen=True)
class Cue:
    """An outcome the caller's words settle, with the words that settle it."""

    outcome: str
    phrase: str


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


def caller_cue(lines: Sequence[TranscriptLine], outcomes: Collection[str]) -> Cue | None:
    """The outcome the caller's words settle among `outcomes`, or None (then the model decides)."""
    said = [_normalise(line.text) for line in lines if line.speaker == "caller" and line.text.strip()]
    if not said:
        return None
    for outcome, pattern in _PATTERNS:
        if outcome not in outcomes:
            continue
        for text in said:
            match = pattern.search(text)
            if match:
                return Cue(outcome, match.group(0).strip())
    words = [w.strip("'") for text in said for w in text.split()]
    if NO_CONVERSATION in outcomes and all(w in _FILLERS for w in words):
        return Cue(NO_CONVERSATION, " ".join(said))
    return None
