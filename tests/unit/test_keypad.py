"""voice_gateway.keypad: keys collected into one entry, ended by # or a pause."""

from __future__ import annotations

from voice_gateway.keypad import Keypad, caller_line


def test_an_entry_ends_at_hash_without_it() -> None:
    keypad = Keypad(timeout_s=1.5)
    assert [keypad.press(d, 10.0 + i * 0.2) for i, d in enumerate("1234")] == [None] * 4
    assert keypad.typing
    assert keypad.press("#", 11.0) == "1234"
    assert not keypad.typing and keypad.due(20.0) is None


def test_an_entry_ends_after_a_pause() -> None:
    keypad = Keypad(timeout_s=1.5)
    keypad.press("2", 10.0)
    assert keypad.due(11.4) is None
    assert keypad.due(11.5) == "2"
    assert keypad.due(13.0) is None


def test_a_lone_hash_and_unknown_keys_are_nothing() -> None:
    keypad = Keypad(timeout_s=1.5)
    assert keypad.press("#", 10.0) is None
    assert keypad.press("x", 10.1) is None and not keypad.typing
    assert caller_line("12") == "[keypad: 12]"
