"""How long to wait for more speech, given Smart Turn's verdict: pure logic, no model, no clock.

The model turns one fixed end-of-turn silence into three: when it is sure the caller has finished,
answer almost at once; when it is sure they are mid-thought ("my name is…"), wait long enough for them
to go on; when it is unsure, keep the agent's own `end_of_turn_silence_ms`. Every wait is silence
counted from the end of the caller's last word, on the gateway's sample clock.

The thresholds are not Pipecat's 0.5: they were set by measurement on phone-band speech through the
gateway's own turn detector (`scripts/measure_smart_turn.py`). There, complete and incomplete turns
overlap widely: half of the incomplete ones score above 0.8, and the phone line pushes fragments up
(a side check, Piper fragments said alone: median 0.44 on wideband 16 kHz, 0.89 on the phone line),
so only the top of the range (≥ 0.98) means "done", and only the very bottom (≤ 0.10) means
"not done". Score the turn once, at the first pause: the scores climb with every 100 ms of silence
after it (medians 0.87 → 0.98 over +500 ms, complete and incomplete turns alike), so a later
re-score no longer means what these thresholds mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    """What the model's probability means for this turn."""

    DONE = "done"
    UNSURE = "unsure"
    NOT_DONE = "not_done"


@dataclass(frozen=True)
class TurnWait:
    """The decision for one score: the band it fell in and the total silence to wait for."""

    verdict: Verdict
    silence_ms: int
    """Silence after the caller's last word before the turn ends (not the time still left to wait)."""


@dataclass(frozen=True)
class TurnBands:
    """Thresholds and waits for Smart Turn v3 on phone-band audio; defaults measured (see below).

    `scripts/measure_smart_turn.py`, three runs (Piper samples afresh each time): 24 sentences and
    questions; 21 fragments said alone, with a comma, and cut from their sentence; pauses inside
    sentences; voices Piper joe (caller pitch and low) and espeak-ng m3/f3; clean and quiet+noisy lines
    (300-3400 Hz, 8 kHz μ-law, streamed back to 16 kHz); each scored on the audio of the gateway's own
    PauseDetected. ~192 complete and ~610 incomplete turns per run.
    - done_threshold 0.98: the 90th percentile of incomplete scores was 0.980-0.981 in every run. It
      ends 22-24 % of complete turns fast (Piper caller voice 46-56 %, espeak 4-5 %) and 10-11 % of
      incomplete ones (cut off after 200 ms of silence instead of 500 ms). Pipecat's 0.5 would cut
      off 75 % of the incomplete turns here.
    - not_done_threshold 0.10: the 5th percentile of complete scores was 0.066, 0.119 and 0.126. It
      holds 11-12 % of incomplete turns for 1.5 s, and 4-6 % of complete ones.
    - Mean silence waited with the default 500 ms agent: complete turns 473-484 ms, incomplete 579-587 ms.
    The model separates these synthetic voices weakly (espeak-ng hardly at all): re-measure on
    recorded calls before trusting the done band with more turns.
    """

    done_threshold: float = 0.98
    """At or above: the caller has finished; answer after `done_silence_ms`."""
    not_done_threshold: float = 0.10
    """At or below: the caller is mid-thought; wait `not_done_silence_ms` for them to go on."""
    done_silence_ms: int = 200
    """Short, not zero: a breath between two words must not end the turn on a wrong "done"."""
    not_done_silence_ms: int = 1500
    """Long enough to recall a date or a name; an "incomplete" caller who really finished waits this."""
    max_silence_ms: int = 3000
    """The hard cap: however often the session asks the model again (after a blip of speech, say), it
    ends the turn at this much silence, since a wrong "not done" leaves a finished caller waiting
    (Pipecat's fallback is the same 3 s). An agent whose own end_of_turn_silence_ms is longer keeps it."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.not_done_threshold <= self.done_threshold <= 1.0:
            raise ValueError("need 0 <= not_done_threshold <= done_threshold <= 1")
        if not 0 <= self.done_silence_ms <= self.not_done_silence_ms <= self.max_silence_ms:
            raise ValueError("need 0 <= done_silence_ms <= not_done_silence_ms <= max_silence_ms")

    def cap_ms(self, normal_silence_ms: int) -> int:
        """The most silence any turn may wait for this agent, whatever the model said."""
        return max(self.max_silence_ms, normal_silence_ms)

    def verdict(self, probability: float) -> Verdict:
        """The band a probability falls in (the thresholds themselves are confident)."""
        if probability >= self.done_threshold:
            return Verdict.DONE
        if probability <= self.not_done_threshold:
            return Verdict.NOT_DONE
        return Verdict.UNSURE

    def wait(self, probability: float, normal_silence_ms: int) -> TurnWait:
        """How much silence ends this turn, given P(complete) and the agent's end_of_turn_silence_ms.

        Ordered whatever the agent's setting: a confident "done" never waits longer than the agent's
        normal silence, a confident "not done" never shorter, and "unsure" waits exactly that.
        """
        if normal_silence_ms < 0:
            raise ValueError("normal_silence_ms must not be negative")
        verdict = self.verdict(probability)
        if verdict is Verdict.DONE:
            silence = min(self.done_silence_ms, normal_silence_ms)
        elif verdict is Verdict.NOT_DONE:
            silence = max(normal_silence_ms, self.not_done_silence_ms)
        else:
            silence = normal_silence_ms
        return TurnWait(verdict, silence)
