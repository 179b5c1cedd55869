"""voice_gateway.actions and http_tools: the pure parts of acting on a call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.agent_config import LLMConfig
from shared.text import HURRY_CUT_MIN_WORDS
from voice_gateway.actions import (
    asks_for_person,
    dial_twiml,
    is_yes,
    menu_choice,
    menu_options,
    spoken_answer,
)
from voice_gateway.http_tools import resolve_headers

GOAL = "You call the dental office to book an appointment for a patient."


@pytest.mark.parametrize("menu", [
    "Thank you for calling Bright Smile Dental. For billing, press 1. For appointments, press 2.",
    "Thank you for calling Bright Smile Dental for Billing Press 1 for Appointments Press 2.",  # STT, no commas
    "Press 1 for billing, press 2 for appointments.",
    "Press one for billing press two for appointments",
])
def test_a_menus_options_are_read_whichever_way_it_says_them(menu: str) -> None:
    assert {k: v.lower() for k, v in menu_options(menu).items()} == {"1": "billing", "2": "appointments"}
    assert menu_choice(menu, GOAL) == "2"


def test_no_matching_option_leaves_the_choice_to_the_model() -> None:
    assert menu_choice("For sales, press 1. For support, press 2.", GOAL) is None
    assert menu_choice("Hello, who is calling?", GOAL) is None


@pytest.mark.parametrize(("text", "asks"), [
    ("Can I speak to a real person please?", True), ("I want to talk to a human.", True),
    ("Put me through to the manager.", True), ("Is a person available on Monday?", False),
    ("Can someone call me back?", False), ("What are your hours?", False),
])
def test_asks_for_person(text: str, asks: bool) -> None:
    assert asks_for_person(text) is asks


@pytest.mark.parametrize(("text", "yes"), [
    ("Yes, please.", True), ("Sure, go ahead.", True), ("Okay.", True), ("Yes... no, wait.", False),
    ("No thanks.", False), ("What?", False),
])
def test_is_yes(text: str, yes: bool) -> None:
    assert is_yes(text) is yes


def test_dial_twiml_for_a_number_a_sip_uri_and_a_whisper() -> None:
    assert "<Dial><Number>+14155550123</Number></Dial>" in dial_twiml("+14155550123")
    assert '<Sip url="https://x.test/w">sip:desk@example.com</Sip>' in dial_twiml(
        "sip:desk@example.com", whisper_url="https://x.test/w")


def test_tool_headers_read_only_relayx_tool_secrets_from_the_environment() -> None:
    env = {"RELAYX_TOOL_CRM": "s3cret", "DATABASE_URL": "postgres://secret"}
    assert resolve_headers({"Authorization": "Bearer ${RELAYX_TOOL_CRM}"}, env) == {"Authorization": "Bearer s3cret"}
    # Any other variable stays as written: an agent's settings cannot read the gateway's own secrets.
    assert resolve_headers({"X": "${DATABASE_URL}"}, env) == {"X": "${DATABASE_URL}"}
    with pytest.raises(KeyError):
        resolve_headers({"X": "${RELAYX_TOOL_MISSING}"}, env)


def test_a_menu_read_with_punctuation_in_the_wrong_places_still_pairs_keys_right() -> None:
    heard = "Thank you for calling Bright Smile Dental for Billing. Press 1 for appointment. Press 2."  # tiny.en
    assert {k: v.lower() for k, v in menu_options(heard).items()} == {"1": "billing", "2": "appointment"}
    assert menu_choice(heard, GOAL) == "2"


ANSWER = "Your table is booked. We will see you on Friday at seven in the evening."


async def test_a_tools_spoken_answer_is_cut_as_the_replys_own_clauses_are() -> None:
    """After a tool's result the model's words go to TTS through the reply's own cut rule."""

    class Words:
        async def stream(self, messages: object, options: object, **_: object) -> AsyncIterator[str]:
            for word in ANSWER.split():
                yield word + " "

    said = [c async for c in spoken_answer(Words(), [], LLMConfig())]  # type: ignore[arg-type]
    assert said == ["Your table is booked.", "We will see you on Friday at seven in the evening."]
    said = [c async for c in spoken_answer(Words(), [], LLMConfig(), cut_after=lambda: HURRY_CUT_MIN_WORDS)]  # type: ignore[arg-type]
    assert said == ["Your table is booked.", "We will see you", "on Friday at seven", "in the evening."]
