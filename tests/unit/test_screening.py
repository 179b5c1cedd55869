"""voice_gateway.screening: a person or a machine answered, decided from when the callee spoke and what."""

from __future__ import annotations

import pytest

from shared.agent_config import VoicemailConfig
from voice_gateway.screening import (
    GREETING_END_SILENCE_S,
    HUMAN_GAP_S,
    LATE_MACHINE_S,
    MENU_GAP_S,
    Action,
    Answered,
    Screening,
    sounds_like_menu,
    sounds_like_voicemail,
)

T0 = 100.0


def _screening(**config: object) -> Screening:
    return Screening(VoicemailConfig.model_validate(config), started=T0)


def test_a_short_hello_then_a_gap_is_a_person_greeted_at_once() -> None:
    screening = _screening()
    screening.speech_started(T0 + 0.8)
    assert screening.tick(T0 + 1.0) is None  # speaking: hold the greeting
    screening.speech_ended(T0 + 1.4)
    assert screening.tick(T0 + 1.4 + HUMAN_GAP_S / 2) is None
    assert screening.tick(T0 + 1.4 + HUMAN_GAP_S) is Action.GREET
    assert screening.answered is Answered.HUMAN and screening.reason == "short_hello"
    assert not screening.holding


def test_nobody_speaks_the_agent_greets_after_its_wait() -> None:
    screening = _screening(wait_for_callee_ms=2500)
    assert screening.tick(T0 + 2.4) is None
    assert screening.tick(T0 + 2.5) is Action.GREET
    assert screening.reason == "silence"


def test_a_long_opening_is_a_machine_and_its_message_waits_for_the_beep() -> None:
    screening = _screening(machine_speech_ms=3500)
    screening.speech_started(T0 + 0.5)
    assert screening.tick(T0 + 3.0) is None
    assert screening.tick(T0 + 4.0) is None  # 3.5 s of speech: a machine, still talking
    assert screening.answered is Answered.MACHINE and screening.reason == "long_greeting"
    screening.speech_ended(T0 + 7.0)
    assert screening.tick(T0 + 7.5) is None  # a pause in the greeting is not its end
    screening.beep(T0 + 8.0)
    assert screening.tick(T0 + 8.02) is Action.VOICEMAIL
    assert screening.answered_by == "machine_end_beep"
    assert screening.tick(T0 + 9.0) is None  # once


def test_a_machine_without_a_beep_gets_its_message_after_a_long_silence() -> None:
    screening = _screening()
    screening.speech_started(T0 + 0.5)
    screening.tick(T0 + 4.5)
    screening.speech_ended(T0 + 6.0)
    assert screening.tick(T0 + 6.0 + GREETING_END_SILENCE_S - 0.1) is None
    assert screening.tick(T0 + 6.0 + GREETING_END_SILENCE_S) is Action.VOICEMAIL
    assert screening.answered_by == "machine_end_silence"


def test_pauses_inside_a_recorded_greeting_add_up_to_a_machine() -> None:
    screening = _screening(machine_speech_ms=3500)
    for start in (0.3, 2.2, 4.1):  # three sentences of 1.6 s, 0.3 s apart: never a 0.7 s gap
        screening.speech_started(T0 + start)
        assert screening.tick(T0 + start + 1.0) is None
        screening.speech_ended(T0 + start + 1.6)
        screening.tick(T0 + start + 1.8)
    assert screening.answered is Answered.MACHINE


def test_voicemail_words_mark_a_machine_even_after_the_agent_greeted() -> None:
    screening = _screening()
    screening.speech_started(T0 + 0.3)
    screening.speech_ended(T0 + 1.2)  # "Hi, this is Sam." then a breath: taken for a person
    assert screening.tick(T0 + 1.2 + HUMAN_GAP_S) is Action.GREET
    assert not screening.holding
    screening.words("Hi, this is Sam. I can't take your call right now, please leave a message.", T0 + 3.0)
    assert screening.holding and screening.machine
    screening.beep(T0 + 6.0)
    assert screening.tick(T0 + 6.02) is Action.VOICEMAIL


def test_after_the_late_window_the_call_is_a_conversation() -> None:
    screening = _screening()
    screening.speech_started(T0 + 0.3)
    screening.speech_ended(T0 + 1.0)
    screening.tick(T0 + 1.0 + HUMAN_GAP_S)
    assert screening.tick(T0 + LATE_MACHINE_S) is None and screening.done
    screening.words("Sorry, she is not available today.", T0 + LATE_MACHINE_S + 5)
    assert not screening.machine  # words of a conversation, not a recording


@pytest.mark.parametrize(("answered_by", "action"), [
    ("machine_end_beep", Action.VOICEMAIL), ("machine_end_silence", Action.VOICEMAIL), ("human", Action.GREET),
])
def test_twilio_answering_machine_detection_decides_too(answered_by: str, action: Action) -> None:
    screening = _screening()
    screening.provider_says(answered_by, T0 + 1.0)
    assert screening.tick(T0 + 1.02) is action


@pytest.mark.parametrize("text", [
    "Hi, you've reached Dana. Please leave a message after the tone.",
    "The person you are calling is not available.",
    "I can't come to the phone right now.",
    "You have reached the voicemail of John Smith.",
])
def test_voicemail_wording(text: str) -> None:
    assert sounds_like_voicemail(text)


@pytest.mark.parametrize("text", ["Hello?", "Yes, this is Sam speaking.", "Who is this?", "Hi, can I help you?"])
def test_ordinary_answers_are_not_voicemail(text: str) -> None:
    assert not sounds_like_voicemail(text)


def test_a_phone_menu_is_answered_not_greeted_nor_left_a_message() -> None:
    screening = _screening(machine_speech_ms=3500)
    screening.speech_started(T0 + 0.2)
    screening.speech_ended(T0 + 2.0)
    screening.words("Thank you for calling. For appointments, press 2.", T0 + 2.3)
    screening.speech_started(T0 + 2.4)
    assert screening.tick(T0 + 5.0) is None  # a long menu is not a machine's greeting
    assert screening.answered is Answered.HUMAN and screening.menu
    screening.speech_ended(T0 + 5.5)
    assert screening.tick(T0 + 5.5 + HUMAN_GAP_S) is None  # all of it first: options may come last
    assert screening.tick(T0 + 5.5 + MENU_GAP_S) is Action.MENU


def test_voicemail_wording_wins_over_a_key_to_press() -> None:
    screening = _screening()
    screening.words("Please leave a message after the tone. When you are done, press pound.", T0 + 3.0)
    assert screening.machine and not screening.menu


def test_a_beep_does_not_wait_for_the_greetings_words() -> None:
    screening = _screening(machine_speech_ms=3500)
    screening.speech_started(T0 + 0.2)
    screening.tick(T0 + 4.0)  # a long greeting: a machine, unless its words say menu
    screening.reading = 1
    screening.speech_ended(T0 + 6.0)
    assert screening.tick(T0 + 6.0 + GREETING_END_SILENCE_S) is None  # still reading: it may be a menu
    screening.beep(T0 + 8.5)
    assert screening.tick(T0 + 8.52) is Action.VOICEMAIL  # menus do not beep


def test_whispers_press_to_is_a_menu() -> None:
    assert sounds_like_menu("Welcome to the event of the appointment, press to follow up.")
    assert not sounds_like_menu("I'll press on with the booking then.")


def test_a_long_opening_then_a_breath_is_not_taken_for_a_hello() -> None:
    screening = _screening()
    screening.speech_started(T0 + 0.2)
    screening.speech_ended(T0 + 2.3)  # "Thank you for calling Bright Smile Dental." (2.1 s)
    assert screening.tick(T0 + 2.3 + HUMAN_GAP_S) is None  # a menu or a machine may go on after a breath
    screening.reading = 1
    assert screening.tick(T0 + 2.3 + MENU_GAP_S) is None  # nor while its words are being read
    screening.reading = 0
    screening.words("Thank you for calling Bright Smile Dental.", T0 + 2.6)
    assert screening.tick(T0 + 2.3 + MENU_GAP_S) is Action.GREET  # a person who announced themselves
