"""voice_gateway.backchannel: listener words keep the agent talking; anything else takes the turn."""

from __future__ import annotations

import pytest

from voice_gateway.backchannel import is_backchannel


@pytest.mark.parametrize("text", ["Okay.", "Mm-hm.", "Uh-huh, yeah.", "I see.", "Right, right.", "Yeah, sure.", "OK"])
def test_listener_words_are_a_backchannel(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", [
    "", "Wait, stop.", "No.", "Okay, but what about Saturday?", "Yeah, I need to cancel.",
    "Okay okay okay okay okay.",  # more than a listener says
])
def test_anything_else_takes_the_turn(text: str) -> None:
    assert not is_backchannel(text)
