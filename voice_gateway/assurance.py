"""When a reply may start playing: only once the rest of it is assured to arrive in time.

A reply is produced clause by clause (LLM tokens, then TTS) while it plays. If production is slower
than speech, a reply that started at its first clause runs dry between clauses and the caller hears a
hole in mid-sentence. Starting a little later costs less than a stutter, so the start is held until
the audio already made covers the time still needed to make the rest:

    made ≥ (1 − r) · D + margin

where r is the production rate (seconds of audio made per second of wall time) and D is the expected
length of the whole reply (what is made so far, or the recent replies' typical length if longer).
A reply whose production is finished starts at once; with r ≥ 1 only the margin is held.

r is measured while a call has the machine to itself: it is what the models can do here (a larger
LLM may make speech slower than it plays). With other calls on the machine their work interleaves
with this reply's, and a rate measured then would mostly measure waiting. There the compute gate
gives a reply about to run dry precedence over all other work (`voice_gateway.reply`), so what
remains to cover is one job already running ahead of it plus its own next clause: the busy margin,
smaller once the words of that clause are known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """How far one reply's production has come."""

    audio_s: float = 0.0
    """Seconds of audio synthesised so far."""
    elapsed_s: float = 0.0
    """Wall seconds since production started (the first LLM request)."""
    done: bool = False
    """Every clause is synthesised: nothing can run dry."""
    text_ready: bool = False
    """The words of the next clause are known (only TTS remains for it)."""


class ProductionRate:
    """Recent production rates and reply lengths, shared by every call of a process (they share the CPU)."""

    def __init__(self, *, rate: float = 1.5, length_s: float = 4.0, weight: float = 0.3) -> None:
        self.rate = rate
        self.length_s = length_s
        self._weight = weight

    def observe(self, audio_s: float, elapsed_s: float) -> None:
        """A reply finished producing: fold its rate and length into the estimates."""
        if audio_s <= 0 or elapsed_s <= 0:
            return
        w = self._weight
        self.rate = (1 - w) * self.rate + w * (audio_s / elapsed_s)
        self.length_s = (1 - w) * self.length_s + w * audio_s


class StartPolicy:
    """Decides when a held reply may start.

    The margin covers what the measured rate cannot see: model work is not preempted, so on a gateway
    with other calls the next clause may wait behind another call's job (an STT pass, a TTS sentence)
    before its own turn comes. `others()` says how many other calls share the machine now.
    """

    def __init__(
        self, rates: ProductionRate, *, margin_s: float = 0.3, writing_margin_s: float = 0.7,
        ready_margin_s: float = 0.6, busy_margin_s: float = 1.4, first_clause_weight: float = 0.5,
        others: Callable[[], int] = lambda: 0, shared_margin_s: tuple[float, float] = (0.6, 0.3),
    ) -> None:
        # others: how many other calls share the machine. While the next clause is still being
        # written, the margin grows with them, up to busy_margin_s: its tokens come one shared decode
        # step at a time, and a step costs more with every reply in it (≈ 30 ms beside one other reply,
        # 60–80 ms beside three). shared_margin_s is (base, per other call): 0.9 s beside one call,
        # 1.2 s beside two, 1.4 s beside three or more. With one margin for all, two calls held starts
        # for 0.2–1.0 s that four calls needed and two did not.
        # writing_margin_s: the next clause's words and its TTS, on a machine to itself. 0.5 s left a
        # 258 ms hole after a one-word "Sure," whose next clause had 20 tokens (≈ 0.6 s, TTS 0.2 s);
        # clauses are now cut short at the reply's opening (`shared.text`), and 0.7 s covers them.
        self.rates = rates
        self.margin_s = margin_s
        self.writing_margin_s = writing_margin_s
        self.ready_margin_s = ready_margin_s
        self.busy_margin_s = busy_margin_s
        self._others = others
        self.shared_margin_s = shared_margin_s
        self._own_weight = first_clause_weight

    def busy(self) -> bool:
        """Other calls share the machine now."""
        return self._others() > 0

    def _writing_margin_busy(self) -> float:
        base, per_call = self.shared_margin_s
        return min(self.busy_margin_s, base + per_call * max(1, self._others()))

    def required_s(self, progress: Progress) -> float:
        """Seconds of audio that must be made before playing can start without a hole.

        The margin depends on what remains for the next clause: only its TTS once its words are known,
        else its words first, one LLM token at a time (≈ 25 ms each alone on 2 cores, ≈ 60–80 ms
        beside three other calls' replies: a clause of 15 tokens takes 0.4 s alone, about a second
        shared), and on a shared machine one job of another call may run before it.
        """
        busy = self.busy()
        rate = self.rates.rate
        if not busy and progress.audio_s > 0 and progress.elapsed_s > 0:
            own = progress.audio_s / progress.elapsed_s
            # This reply's own rate is the freshest figure, but one clause is a small sample.
            rate = self._own_weight * own + (1 - self._own_weight) * rate
        expected = max(progress.audio_s, self.rates.length_s)
        if busy:
            margin = self.ready_margin_s if progress.text_ready else self._writing_margin_busy()
        else:
            margin = self.margin_s if progress.text_ready else self.writing_margin_s
        return max(0.0, 1.0 - rate) * expected + margin

    def may_start(self, progress: Progress) -> bool:
        return progress.done or progress.audio_s >= self.required_s(progress)

    def observe(self, progress: Progress) -> None:
        """A reply finished producing: learn the machine's rate from it, if it had the machine alone."""
        if not self.busy():
            self.rates.observe(progress.audio_s, progress.elapsed_s)
