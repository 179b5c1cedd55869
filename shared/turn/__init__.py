"""Semantic end of turn: Smart Turn v3 scores whether the caller has finished; bands turn the score
into how much silence to wait for. The model is blocking (run it off the event loop); bands are pure."""

from shared.turn.bands import TurnBands, TurnWait, Verdict
from shared.turn.base import EndOfTurnModel
from shared.turn.smart_turn import SmartTurn, log_mel

__all__ = ["EndOfTurnModel", "SmartTurn", "TurnBands", "TurnWait", "Verdict", "log_mel"]
