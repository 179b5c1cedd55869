"""The agent hangs up only when both sides have said goodbye."""

import pytest

from voice_gateway.session import is_farewell


@pytest.mark.parametrize("text", ["Great, thank you. Goodbye.", "Bye!", "OK bye then", "Have a great day!",
                                  "Thanks, good bye."])
def test_farewells(text: str) -> None:
    assert is_farewell(text)


@pytest.mark.parametrize("text", [None, "", "What are your hours?", "I'd like to buy a byeline", "Maybe."])
def test_not_farewells(text: str | None) -> None:
    assert not is_farewell(text)
