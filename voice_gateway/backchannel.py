"""Words a listener says to keep the speaker going ("okay", "mm-hm", "yeah, right"), not to take the turn,
and the few that stop a speaker however briefly they are said ("wait", "sorry?").

The gateway pauses the agent at the first voice over it; speech longer than `barge_in_min_ms` takes the
turn unless its words are only these (LiveKit Agents resumes the same way after a "false interruption").
Kept short and conservative: "yes" after a question is an answer, but said over the agent's sentence it
is agreement, and the agent is paused, not talking to it, when the words are read.
"""

from __future__ import annotations

import re

BACKCHANNEL_WORDS = frozenset({
    "ok", "okay", "kay", "mm", "mhm", "mmhm", "hm", "hmm", "uh", "huh", "uhhuh", "um", "yeah", "yep", "yes",
    "yup", "right", "sure", "alright", "i", "see", "got", "it", "gotcha", "cool", "great", "good", "fine",
    "oh", "ah", "aha", "wow", "nice", "true", "exactly", "totally", "absolutely", "indeed",
})  # fmt: skip
MAX_WORDS = 4
"""Longer than this is a sentence, whatever its words."""


def is_backchannel(text: str) -> bool:
    """True for a short run of listener words ("Okay.", "Mm-hm, yeah.", "I see."); never for ""."""
    words = re.findall(r"[a-z]+", text.lower().replace("-", "").replace("'", ""))
    return 0 < len(words) <= MAX_WORDS and all(word in BACKCHANNEL_WORDS for word in words)


STOP_WORDS = frozenset({
    "wait", "stop", "hold", "hang", "sorry", "excuse", "pardon", "what", "no", "nope", "hey", "hello",
    "actually", "but",
})  # fmt: skip
"""Words that ask the speaker to stop: said over the agent, even shorter than `barge_in_min_ms`, they take
the turn ("Wait, where is your office?" lost its "Wait," to the backchannel rule, and the rest became a
second turn). Short speech with any other words, or none (a cough, a click), is a backchannel."""


def stops_speaker(text: str) -> bool:
    """True when short speech over the agent holds a word that asks it to stop ("Wait.", "Sorry?", "No.")."""
    words = re.findall(r"[a-z]+", text.lower().replace("'", ""))
    return any(word in STOP_WORDS for word in words)
