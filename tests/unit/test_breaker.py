"""The provider breaker and the failover's choice, against a plain model of their rules, over
any sequence of calls, outcomes and clock moves (Hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from authsvc.courier.failover import Breaker, BreakerState, Failover
from authsvc.courier.providers import Route

START = datetime(2026, 1, 1, tzinfo=UTC)
THRESHOLD = 3
OPEN_S = 30.0

steps = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.just(0.0)),
        st.tuples(st.just("ok"), st.just(0.0)),
        st.tuples(st.just("refused"), st.just(0.0)),  # a permanent refusal: an answer
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=2 * OPEN_S)),
    ),
    max_size=60,
)


@given(steps)
def test_the_breaker_follows_its_rules(script: list[tuple[str, float]]) -> None:
    breaker = Breaker(THRESHOLD, OPEN_S)
    now = START
    consecutive = 0  # the model: consecutive failures since the last answer
    opened_at: datetime | None = None
    for step, seconds in script:
        if step == "wait":
            now += timedelta(seconds=seconds)
            continue
        model_open = opened_at is not None and now < opened_at + timedelta(seconds=OPEN_S)
        # An open breaker lets nothing through; otherwise one call (the probe, if half-open).
        assert breaker.can_take(now) is (not model_open)
        if model_open:
            continue
        was_half_open = opened_at is not None
        breaker.take(now)
        if breaker.state is BreakerState.HALF_OPEN:
            assert not breaker.can_take(now)  # one probe at a time
        if step == "fail":
            consecutive += 1
            breaker.failed(now)
            if was_half_open or consecutive >= THRESHOLD:
                opened_at = now
                assert breaker.state is BreakerState.OPEN
            else:
                assert breaker.state is BreakerState.CLOSED
        else:  # accepted, or refused for good: the provider is up
            breaker.answered()
            consecutive, opened_at = 0, None
            assert breaker.state is BreakerState.CLOSED and breaker.failures == 0


def route(name: str) -> Route:
    return Route(name=name, recorded_as=f"http:{name}", kind="http", provider=object())  # type: ignore[arg-type]


@given(st.sets(st.sampled_from("abcd")), st.sampled_from([None, "http:a", "http:b", "http:d"]))
def test_the_choice_moves_past_the_last_provider_to_one_that_takes_calls(
    opened: set[str], last_tried: str | None
) -> None:
    routes = tuple(route(name) for name in "abcd")
    failover = Failover({"sms": routes}, threshold=1, open_s=OPEN_S)
    for r in routes:
        if r.name in opened:
            failover.failed("sms", r, START)
    chosen = failover.choose("sms", last_tried, START)
    order = [r.name for r in routes]
    start = 0 if last_tried is None else order.index(last_tried.split(":")[1]) + 1
    rotated = [order[(start + i) % 4] for i in range(4)]
    takers = [name for name in rotated if name not in opened]
    # The first one after the last tried that takes calls; all open: the one after it anyway.
    assert chosen.name == (takers[0] if takers else rotated[0])
    assert failover.serving("sms", START) is bool(takers)
