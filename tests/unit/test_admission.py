"""The adaptive admission limit (Gradient2): sheds past the limit, shrinks when requests queue, grows back."""

from __future__ import annotations

from serving.admission import AdaptiveLimiter, LimitConfig


def _run(limiter: AdaptiveLimiter, rounds: int, seconds: float, concurrency: int) -> None:
    """``rounds`` waves of ``concurrency`` admitted requests that each took ``seconds``."""
    for _ in range(rounds):
        admitted = sum(limiter.try_acquire() for _ in range(concurrency))
        for _ in range(admitted):
            limiter.release(seconds)


def test_past_the_limit_requests_are_refused_at_once_and_counted() -> None:
    limiter = AdaptiveLimiter(LimitConfig(initial=3, min_limit=1, max_limit=10))
    assert [limiter.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert limiter.in_flight == 3 and limiter.shed == 2
    for _ in range(3):
        limiter.release(0.01)
    assert limiter.in_flight == 0
    limiter.release(0.01)  # a stray release never drives the count below zero
    assert limiter.in_flight == 0


def test_queueing_latency_shrinks_the_limit_and_it_grows_back_after() -> None:
    limiter = AdaptiveLimiter(LimitConfig(initial=20, min_limit=4, max_limit=100))
    _run(limiter, 100, 0.010, 200)  # demand above any limit, no queueing: 10 ms a request
    assert limiter.current_limit == 100, "without queueing the limit grows to its ceiling"
    _run(limiter, 5, 0.200, 200)  # requests now wait: 20x the no-load latency
    assert limiter.current_limit == 4, "queueing shrinks the limit to its floor"
    assert limiter.shed > 0
    _run(limiter, 20, 0.010, 200)  # latency back at its old level
    assert limiter.current_limit == 100


def test_a_lasting_latency_rise_becomes_the_new_normal() -> None:
    # A machine that got slower for good (shared cores): the long-term latency follows, the limit recovers.
    limiter = AdaptiveLimiter(LimitConfig(initial=20, min_limit=4, max_limit=100))
    _run(limiter, 100, 0.010, 200)
    _run(limiter, 5, 0.030, 200)
    low = limiter.current_limit
    _run(limiter, 400, 0.030, 200)
    assert limiter.current_limit > 2 * low


def test_an_app_limited_server_keeps_its_limit() -> None:
    # Far below the limit, latency says nothing about capacity: the limit neither grows nor shrinks.
    limiter = AdaptiveLimiter(LimitConfig(initial=50, min_limit=2, max_limit=200))
    _run(limiter, 100, 0.5, 3)
    assert limiter.current_limit == 50


def test_a_cpu_bound_loop_under_lasting_overload_keeps_a_small_limit() -> None:
    # One event loop: a request's latency is its own 5 ms times the requests it shares the CPU with. Demand stays
    # at 4x what the loop can take for a long time: the limit must settle low and stay there (Gradient2's
    # all-sample long-term average drifted up with the queued samples, and the limit with it).
    limiter = AdaptiveLimiter(LimitConfig(initial=20, min_limit=2, max_limit=200))
    service = 0.005
    limits = []
    for _ in range(3000):
        admitted = sum(limiter.try_acquire() for _ in range(400))
        for _ in range(admitted):
            limiter.release(service * limiter.in_flight)
        limits.append(limiter.current_limit)
    assert max(limits[-1000:]) <= 6, limits[-20:]
    # And once more work no longer means more latency (a faster machine, an I/O-bound spell), it grows back.
    _run(limiter, 100, service, 400)
    assert limiter.current_limit >= 20
