"""The end-of-turn seam: a model that hears the turn so far and says whether the caller is done."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EndOfTurnModel(Protocol):
    """P(the caller has finished their turn), from the turn's 16 kHz audio up to the first pause.

    Blocking: the session runs it through the compute gate, off the event loop.
    """

    def probability(self, audio_16k: np.ndarray) -> float: ...

    def warmup(self) -> None: ...
