"""voice_gateway.backchannel: listener words keep the agent talking; anything else takes the turn."""

from __future__ import annotations

import pytest

from voice_gateway.backchannel import is_backchannel, stops_speaker


@pytest.mark.parametrize("text", ["Okay.", "Mm-hm.", "Uh-huh, yeah.", "I see.", "Right, right.", "Yeah, sure.", "OK"])
def test_listener_words_are_a_backchannel(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", [
    "", "Wait, stop.", "No.", "Okay, but what about Saturday?", "Yeah, I need to cancel.",
    "Okay okay okay okay okay.",  # more than a listener says
])
def test_anything_else_takes_the_turn(text: str) -> None:
    assert not is_backchannel(text)


@pytest.mark.parametrize("text", ["Wait.", "Stop!", "Sorry?", "No.", "Hold on.", "Hello?", "What?"])
def test_words_that_stop_a_speaker_take_the_turn_however_short(text: str) -> None:
    assert stops_speaker(text) and not is_backchannel(text)


@pytest.mark.parametrize("text", ["", "Mm-hm.", "Okay.", "You", "Thank you."])
def test_other_short_words_let_the_agent_go_on(text: str) -> None:
    """A cough Whisper reads as "you", or a "mm-hm" misheard: no word that asks the agent to stop."""
    assert not stops_speaker(text)
