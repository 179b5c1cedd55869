"""Post-call outcomes: the default labels, the evidence-first answer, the caller's set phrases, the
labelled set and its scoring, and how the analysis model file is found. No model is loaded here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relayx_cli import analysis_bench
from shared import analysis
from shared.errors import ConfigurationError
from shared.llm import llama_cpp
from shared.llm.base import ChatMessage, GenerationOptions
from shared.outcome_cues import caller_cue
from shared.settings import Settings
from shared.storage.base import TranscriptLine

SPEC = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema({"new_day": "string"}))


def _lines(*pairs: tuple[str, str]) -> list[TranscriptLine]:
    return [TranscriptLine(id=str(i), call_id="c", speaker=speaker, text=text, timestamp=datetime.now(UTC))
            for i, (speaker, text) in enumerate(pairs)]


def test_do_not_call_is_a_default_outcome_apart_from_not_interested() -> None:
    assert analysis.DO_NOT_CALL == "do_not_call"
    assert "not to be called again" in analysis.DEFAULT_OUTCOMES["do_not_call"]
    assert "without asking to stop" in analysis.DEFAULT_OUTCOMES["not_interested"]
    assert {"voicemail", "no_conversation"} <= set(analysis.DEFAULT_OUTCOMES)
    assert analysis.normalize_outcomes(["do_not_call"])["do_not_call"] == analysis.DEFAULT_OUTCOMES["do_not_call"]


def test_the_evidence_is_generated_before_the_verdict_and_the_summary() -> None:
    keys = list(analysis.generation_schema(SPEC)["properties"])
    assert keys.index("evidence") < keys.index("outcome") < keys.index("summary")


def test_the_model_chooses_between_descriptions_and_the_label_is_stored() -> None:
    enum = analysis.generation_schema(SPEC)["properties"]["outcome"]["enum"]
    assert enum == list(analysis.DEFAULT_OUTCOMES.values())
    answer = {"evidence": "stop calling me", "outcome": analysis.DEFAULT_OUTCOMES["do_not_call"], "data": {"new_day": ""},
              "sentiment": "negative", "summary": "The caller asked not to be called.", "key_points": []}
    assert analysis.parse_answer(json.dumps(answer), SPEC)["outcome"] == "do_not_call"
    answer["outcome"] = "do_not_call"  # a remote server that answers with the label is understood too
    assert analysis.parse_answer(json.dumps(answer), SPEC)["outcome"] == "do_not_call"


@pytest.mark.parametrize("outcomes", [
    {"booked": "", "declined": ""},  # no descriptions
    {"booked": "the caller booked", "declined": ""},  # one missing (no_conversation has its own)
    {"booked": "agreed", "declined": "agreed"},  # shared descriptions
    {"booked": "declined", "declined": "said no"},  # a description that is another label
])
def test_outcomes_without_distinct_descriptions_are_chosen_by_label(outcomes: dict[str, str]) -> None:
    spec = analysis.AnalysisSpec(outcomes=outcomes)
    assert analysis.outcome_choices(spec) == {label: label for label in outcomes}


@pytest.mark.parametrize(("said", "outcome"), [
    ("Please take my number off your list.", "do_not_call"),
    ("stop calling me", "do_not_call"),
    ("Don't call this number again!", "do_not_call"),
    ("put me on your do not call list", "do_not_call"),
    ("You've reached Dana, please leave a message after the tone.", "voicemail"),
    ("The mailbox is full.", "voicemail"),
    ("Sorry, wrong number.", "wrong_person"),
    ("He doesn't live here anymore.", "wrong_person"),
    ("Can you call me back tomorrow?", "callback_requested"),
    ("hello? hello?", "no_conversation"),
    ("I'd rather you folks didn't ring this line anymore.", "do_not_call"),
    ("can you take me of your list", "do_not_call"),  # STT dropped a letter
    ("the number you have reached has a voice mailbox that has not been set up", "voicemail"),
    ("It's Dee, not here right now, I'll get back to you.", "voicemail"),
    ("you got her old number i think", "wrong_person"),
    ("This has been my number since 2019.", "wrong_person"),
    ("Thank you. you", "no_conversation"),  # Whisper's words for a silent line
    ("hello is anybody there i cant hear nothing", "no_conversation"),
])
def test_set_phrases_of_the_caller_settle_the_outcome(said: str, outcome: str) -> None:
    cue = caller_cue(_lines(("agent", "Hi, this is Ava."), ("caller", said)), analysis.DEFAULT_OUTCOMES)
    assert cue is not None and cue.outcome == outcome and cue.phrase


@pytest.mark.parametrize("said", [
    "Don't call me before five, I work nights.",
    "No thanks, I'm not interested.",
    "Thursday works, see you then.",
    "I'm not available Tuesday, how about Wednesday?",
    "I'll call you when I'm ready.",
    "Yes.",
    "Please don't call my phone during work hours, call the office.",
    "She moved it to Friday, thanks.",
    "She's not here, I'll have her call you back.",
])
def test_other_words_are_left_to_the_model(said: str) -> None:
    assert caller_cue(_lines(("caller", said)), analysis.DEFAULT_OUTCOMES) is None


def test_only_the_caller_and_only_the_agents_outcomes_count() -> None:
    agent_says = _lines(("agent", "I'll make sure we don't call you again."), ("caller", "Thanks, bye now."))
    assert caller_cue(agent_says, analysis.DEFAULT_OUTCOMES) is None
    asked = _lines(("caller", "stop calling me"))
    assert caller_cue(asked, {"booked": "", "declined": ""}) is None


class _Answers:
    """A StructuredLLM that records what it was asked and answers from a list."""

    model_name = "fake"

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.schemas: list[dict[str, Any]] = []
        self.prompts: list[str] = []

    async def complete_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                            options: GenerationOptions) -> str:
        self.schemas.append(schema)
        self.prompts.append(messages[-1].content)
        return json.dumps(self.answers.pop(0))

    def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> Any:
        raise AssertionError("not used")


async def test_a_settled_outcome_is_the_only_one_the_model_may_write() -> None:
    dnc = analysis.DEFAULT_OUTCOMES["do_not_call"]
    llm = _Answers({"evidence": "quit calling", "outcome": dnc, "data": {"new_day": ""}, "sentiment": "negative",
                    "summary": "The caller asked not to be called.", "key_points": []})
    lines = _lines(("agent", "Hi, this is Ava from Bright Smile Dental."), ("caller", "Quit calling me, okay?"))
    values = await analysis.analyze(llm, lines, SPEC, context_tokens=4096)  # type: ignore[arg-type]
    assert values["status"] == "completed" and values["outcome"] == "do_not_call"
    assert llm.schemas[0]["properties"]["outcome"]["enum"] == [dnc]
    assert "quit calling" in llm.prompts[0]


def test_labelled_set_covers_every_default_outcome_and_the_fields() -> None:
    spec, prompt, cases = analysis_bench.load_cases()
    assert len(cases) >= 24 and prompt
    assert {c["outcome"] for c in cases} == set(analysis.DEFAULT_OUTCOMES)
    assert len({c["name"] for c in cases}) == len(cases)
    fields = set(spec.data_schema["properties"])
    for case in cases:
        assert set(case["data"]) == fields, case["name"]
        assert all(speaker in ("agent", "caller") and text for speaker, text in case["lines"]), case["name"]
    for name in fields:  # every field is said by some caller
        assert any(c["data"][name] not in ("", None) for c in cases), name


@pytest.mark.parametrize(("want", "got", "right"), [
    ("Thursday", "Thursday at 10", True),
    ("Thursday", "thursday", True),
    ("Thursday", "", False),
    ("tomorrow afternoon", "Tomorrow, in the afternoon", True),
    ("", "", True),
    ("", "Monday", False),
    (True, True, True),
    (True, False, False),
    (None, False, None),
])
def test_fields_are_scored_where_the_label_says_something(want: Any, got: Any, right: bool | None) -> None:
    assert analysis_bench.field_right(want, got) is right


def test_bench_model_choice_sets_the_analysis_model_only() -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    chosen = analysis_bench.settings_for_model(base, "1.5b")
    assert chosen.analysis_llm_engine == "llama-cpp" and chosen.analysis_llm_model == "qwen2.5-coder-1.5b"
    assert chosen.llm_model == base.llm_model
    assert analysis_bench.settings_for_model(base, "/m/x.gguf").analysis_llm_model_path == Path("/m/x.gguf")
    assert analysis_bench.settings_for_model(base, "") is base


def test_the_1_5b_model_is_named_and_found_in_the_model_cache(tmp_path: Path) -> None:
    assert llama_cpp.named_model_path("1.5b", tmp_path) == tmp_path / llama_cpp.CODER_1_5B.filename
    assert llama_cpp.named_model_path("Qwen2.5-Coder-1.5B", tmp_path) == tmp_path / llama_cpp.CODER_1_5B.filename
    assert llama_cpp.named_model_path("llama3:8b", tmp_path) is None
    assert len(llama_cpp.CODER_1_5B.distributions) == 22


def test_a_missing_extra_names_what_to_install(tmp_path: Path) -> None:
    model = llama_cpp.SlicedModel("x.gguf", "0" * 64, ("relayx-no-such-slice-part1",), "install the extra")
    with pytest.raises(ConfigurationError, match="relayx-no-such-slice-part1 is not installed: install the extra"):
        llama_cpp.ensure_model_file(tmp_path, model)


def test_slices_join_only_to_the_known_hash(tmp_path: Path) -> None:
    import hashlib

    parts = []
    for i, data in enumerate((b"first-", b"second")):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(data)
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ConfigurationError, match="SHA-256"):
        llama_cpp.join_verified(parts, target, "0" * 64, "reinstall")
    assert not target.exists() and not list(target.parent.glob(".gguf-*"))
    llama_cpp.join_verified(parts, target, hashlib.sha256(b"first-second").hexdigest(), "reinstall")
    assert target.read_bytes() == b"first-second"
    # A file already in the cache with the known hash is used as it is (no slices needed).
    model = llama_cpp.SlicedModel("m.gguf", hashlib.sha256(b"first-second").hexdigest(), ("absent",), "")
    assert llama_cpp.ensure_model_file(target.parent, model) == target


def test_placeholder_text_in_fields_is_stored_as_empty() -> None:
    spec = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema(
        {"callback_time": "string", "day": "string", "notes": {"type": "array", "items": "string"}}))
    answer = {"evidence": "yes", "outcome": "goal_achieved", "summary": "Booked.", "key_points": [],
              "data": {"callback_time": "Not specified.", "day": "Thursday", "notes": ["N/A", "gate code 12"]},
              "sentiment": "neutral"}
    data = analysis.parse_answer(json.dumps(answer), spec)["data"]
    assert data == {"callback_time": "", "day": "Thursday", "notes": ["gate code 12"]}
