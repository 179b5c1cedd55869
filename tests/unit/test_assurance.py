"""A reply starts only when the audio already made covers the time needed to make the rest."""

from __future__ import annotations

from voice_gateway.assurance import ProductionRate, Progress, StartPolicy


def test_a_finished_reply_starts_at_once() -> None:
    policy = StartPolicy(ProductionRate(rate=0.2))
    assert policy.may_start(Progress(audio_s=0.4, elapsed_s=2.0, done=True))


def test_fast_production_holds_only_the_margin() -> None:
    policy = StartPolicy(ProductionRate(rate=3.0), margin_s=0.3, writing_margin_s=0.8)
    assert not policy.may_start(Progress(audio_s=0.2, elapsed_s=0.05, text_ready=True))
    assert policy.may_start(Progress(audio_s=0.35, elapsed_s=0.1, text_ready=True))
    # The next clause still being written: its words come first, a token at a time.
    assert not policy.may_start(Progress(audio_s=0.35, elapsed_s=0.1))
    assert policy.may_start(Progress(audio_s=0.85, elapsed_s=0.2))


def test_slow_production_holds_longer_and_a_loaded_machine_holds_longer_still() -> None:
    idle = StartPolicy(ProductionRate(rate=1.0, length_s=4.0))
    busy = StartPolicy(ProductionRate(rate=0.5, length_s=4.0))
    progress = Progress(audio_s=1.0, elapsed_s=1.0)  # this reply: real time so far
    assert idle.required_s(progress) < busy.required_s(progress)
    assert not busy.may_start(progress)
    # A long enough head start covers the rest even at half speed.
    assert busy.may_start(Progress(audio_s=2.5, elapsed_s=2.5))


def test_rates_follow_what_replies_measured() -> None:
    rates = ProductionRate(rate=2.0, length_s=3.0)
    for _ in range(10):
        rates.observe(audio_s=6.0, elapsed_s=12.0)
    assert abs(rates.rate - 0.5) < 0.05
    assert abs(rates.length_s - 6.0) < 0.2
    rates.observe(audio_s=0.0, elapsed_s=1.0)  # nothing made: ignored
    assert abs(rates.rate - 0.5) < 0.05


def test_other_calls_on_the_machine_raise_the_margin_until_the_next_words_are_known() -> None:
    others = [0]
    policy = StartPolicy(ProductionRate(rate=3.0), margin_s=0.3, busy_margin_s=1.4, ready_margin_s=0.6,
                         others=lambda: others[0])
    progress = Progress(audio_s=0.8, elapsed_s=0.2)
    assert policy.may_start(progress)
    others[0] = 3
    assert not policy.may_start(progress)
    assert policy.may_start(Progress(audio_s=0.8, elapsed_s=0.2, text_ready=True))  # only TTS remains
    assert policy.may_start(Progress(audio_s=1.5, elapsed_s=0.3))


def test_rates_are_learnt_only_from_replies_made_alone() -> None:
    others = [1]
    rates = ProductionRate(rate=2.0)
    policy = StartPolicy(rates, others=lambda: others[0])
    policy.observe(Progress(audio_s=1.0, elapsed_s=10.0, done=True))  # mostly waiting for other calls
    assert rates.rate == 2.0
    others[0] = 0
    policy.observe(Progress(audio_s=1.0, elapsed_s=10.0, done=True))
    assert rates.rate < 2.0


def test_the_margin_while_writing_grows_with_the_calls_sharing_the_machine() -> None:
    others = [1]
    policy = StartPolicy(ProductionRate(rate=3.0), others=lambda: others[0])
    writing = Progress(audio_s=1.0, elapsed_s=0.5, text_ready=False)
    margins = []
    for n in (1, 2, 3, 5):
        others[0] = n
        assert policy.busy()
        margins.append(policy.required_s(writing))
    assert margins == sorted(margins) and margins[0] < margins[-1] == policy.busy_margin_s
    assert policy.may_start(Progress(audio_s=1.0, elapsed_s=0.5, text_ready=False)) is False  # 5 others
    others[0] = 1
    assert policy.may_start(Progress(audio_s=1.0, elapsed_s=0.5, text_ready=False))  # 0.9 s beside one call
    others[0] = 0
    assert not policy.busy()
