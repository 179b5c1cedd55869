"""Token buckets on a fake clock: bursts pass, floods are held to the rate, Retry-After is honest."""

from __future__ import annotations

import pytest

from shared.rate_limit import RateLimiter, TokenBucket


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_refuses() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3, now=0.0)
    assert [bucket.take(0.0).allowed for _ in range(4)] == [True, True, True, False]


def test_refusal_says_how_long_until_the_next_token() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=1, now=0.0)  # one token every 2 s
    assert bucket.take(0.0).allowed
    refused = bucket.take(0.5)
    assert not refused.allowed and refused.retry_after_s == 2  # 1.5 s left, rounded up: never too early
    assert not bucket.take(1.9).allowed
    assert bucket.take(2.0).allowed


def test_retry_after_is_at_least_one_second() -> None:
    bucket = TokenBucket(rate_per_s=100.0, burst=1, now=0.0)
    bucket.take(0.0)
    assert bucket.take(0.0).retry_after_s == 1


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=2, now=0.0)
    assert [bucket.take(3600.0).allowed for _ in range(3)] == [True, True, False]


def test_a_clock_stepping_back_adds_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1, now=10.0)
    assert bucket.take(10.0).allowed
    assert not bucket.take(5.0).allowed
    assert not bucket.take(10.5).allowed
    assert bucket.take(11.0).allowed


def test_limiter_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("b").allowed  # another caller is not held back by the first
    clock.now += 1.0
    assert limiter.check("a").allowed  # 60 a minute: one more token after a second


def test_sustained_traffic_is_held_to_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=120, burst=10, clock=clock)
    allowed = 0
    for _ in range(241):  # 4 requests a second from t=0 to t=60 (steps exact in binary)
        allowed += limiter.check("k").allowed
        clock.now += 0.25
    assert allowed == 10 + 120  # the burst, then 2 a second


def test_zero_per_minute_disables_the_limiter() -> None:
    limiter = RateLimiter(per_minute=0, burst=1, clock=FakeClock())
    assert not limiter.enabled
    assert all(limiter.check("k").allowed for _ in range(1000))
    assert len(limiter) == 0


def test_the_table_of_keys_stays_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=1, clock=clock, max_keys=3)
    for key in "abcd":
        assert limiter.check(key).allowed
    assert len(limiter) == 3
    assert limiter.check("a").allowed  # the least recently seen was forgotten: a fresh bucket
    assert not limiter.check("d").allowed  # a recent one was kept


@pytest.mark.parametrize(("per_minute", "burst", "max_keys"), [(-1, 1, 10), (60, 0, 10), (60, 1, 0)])
def test_nonsense_limits_are_refused(per_minute: int, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(per_minute=per_minute, burst=burst, max_keys=max_keys)
