"""TurnBands: a Smart Turn score becomes a verdict and a silence to wait, ordered for any agent setting."""

from __future__ import annotations

import dataclasses

import pytest

from shared.turn.bands import TurnBands, TurnWait, Verdict

BANDS = TurnBands(
    done_threshold=0.9,
    not_done_threshold=0.2,
    done_silence_ms=200,
    not_done_silence_ms=1500,
    max_silence_ms=3000,
)


@pytest.mark.parametrize(
    ("probability", "verdict"),
    [
        (1.0, Verdict.DONE),
        (0.9, Verdict.DONE),
        (0.89, Verdict.UNSURE),
        (0.5, Verdict.UNSURE),
        (0.21, Verdict.UNSURE),
        (0.2, Verdict.NOT_DONE),
        (0.0, Verdict.NOT_DONE),
    ],
)
def test_thresholds_themselves_are_confident(probability: float, verdict: Verdict) -> None:
    assert BANDS.verdict(probability) is verdict


def test_each_band_waits_its_own_silence_with_the_default_agent() -> None:
    assert BANDS.wait(0.95, 500) == TurnWait(Verdict.DONE, 200)
    assert BANDS.wait(0.5, 500) == TurnWait(Verdict.UNSURE, 500)
    assert BANDS.wait(0.1, 500) == TurnWait(Verdict.NOT_DONE, 1500)


@pytest.mark.parametrize("normal_ms", [0, 100, 150, 200, 500, 800, 1500, 2000, 3000, 5000])
def test_done_never_waits_longer_than_unsure_nor_unsure_than_not_done(normal_ms: int) -> None:
    done = BANDS.wait(0.99, normal_ms).silence_ms
    unsure = BANDS.wait(0.5, normal_ms).silence_ms
    not_done = BANDS.wait(0.01, normal_ms).silence_ms
    assert done <= unsure == normal_ms <= not_done
    assert done <= BANDS.done_silence_ms


def test_a_confident_done_never_makes_a_snappy_agent_slower() -> None:
    assert BANDS.wait(0.99, 120).silence_ms == 120


def test_not_done_never_shortens_an_agent_that_already_waits_longer() -> None:
    assert BANDS.wait(0.0, 2000).silence_ms == 2000


def test_the_cap_bounds_every_wait_unless_the_agent_asks_for_more() -> None:
    for normal_ms in (100, 500, 1500, 3000):
        assert all(
            BANDS.wait(p, normal_ms).silence_ms <= BANDS.cap_ms(normal_ms) == 3000 for p in (0.0, 0.5, 1.0)
        )
    assert BANDS.cap_ms(4000) == 4000


def test_equal_thresholds_leave_no_unsure_band() -> None:
    split = TurnBands(done_threshold=0.6, not_done_threshold=0.6)
    assert split.verdict(0.6) is Verdict.DONE
    assert split.verdict(0.59) is Verdict.NOT_DONE


@pytest.mark.parametrize(
    "fields",
    [
        {"done_threshold": 0.3, "not_done_threshold": 0.4},
        {"done_threshold": 1.1},
        {"not_done_threshold": -0.1},
        {"done_silence_ms": 1600},
        {"not_done_silence_ms": 3500},
        {"done_silence_ms": -1},
    ],
)
def test_contradictory_bands_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TurnBands(**fields)  # type: ignore[arg-type]


def test_negative_agent_silence_is_refused() -> None:
    with pytest.raises(ValueError):
        BANDS.wait(0.5, -1)


def test_defaults_are_ordered_and_frozen() -> None:
    bands = TurnBands()
    assert 0.0 < bands.not_done_threshold < bands.done_threshold < 1.0
    assert bands.done_silence_ms < bands.not_done_silence_ms <= bands.max_silence_ms
    with pytest.raises(dataclasses.FrozenInstanceError):
        bands.done_threshold = 0.5  # type: ignore[misc]


def test_the_agent_settings_defaults_are_the_measured_bands() -> None:
    from shared.agent_config import AgentSettings

    assert TurnBands(**AgentSettings().smart_turn.model_dump()) == TurnBands()
    assert AgentSettings().turn_detection == "smart"


@pytest.mark.parametrize("bad", [
    {"done_threshold": 0.2},  # would fall below a not-done threshold: the ranges do not overlap
    {"not_done_threshold": 0.6},
    {"done_silence_ms": 2000},
    {"max_silence_ms": 1000},
    {"done_threshold": 1.5},
])
def test_agent_bands_out_of_their_ranges_are_refused(bad: dict[str, float]) -> None:
    from pydantic import ValidationError

    from shared.agent_config import AgentSettings

    with pytest.raises(ValidationError):
        AgentSettings.model_validate({"smart_turn": bad})


def test_agent_bands_refuse_booleans_and_take_whole_floats() -> None:
    from pydantic import ValidationError

    from shared.agent_config import AgentSettings

    with pytest.raises(ValidationError):  # JSON false is not 0 ms
        AgentSettings.model_validate_json('{"smart_turn": {"done_silence_ms": false}}')
    assert AgentSettings.model_validate_json('{"smart_turn": {"done_threshold": 1}}').smart_turn.done_threshold == 1.0
    assert AgentSettings.model_validate_json('{"smart_turn": {"max_silence_ms": 4253.0}}').smart_turn.max_silence_ms == 4253


def test_any_bands_the_ranges_allow_are_in_order() -> None:
    from shared.agent_config import SmartTurnConfig

    lowest_done = SmartTurnConfig(done_threshold=0.5, not_done_threshold=0.5, done_silence_ms=500,
                                  not_done_silence_ms=500, max_silence_ms=3000)
    highest_not_done = SmartTurnConfig(not_done_silence_ms=3000, max_silence_ms=3000)
    for config in (lowest_done, highest_not_done):
        TurnBands(**config.model_dump())  # its own checks pass
