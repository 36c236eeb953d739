"""The load test's server-side figures: scrape deltas and histogram quantiles (as Prometheus'
histogram_quantile computes them), checked against a real prometheus-client registry."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtests import server_metrics

BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


def _registry() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    requests = Counter("authsvc_rpc_requests", "", ("method", "code", "reason"), registry=registry)
    latency = Histogram(
        "authsvc_rpc_duration_seconds", "", ("method",), buckets=BOUNDS, registry=registry
    )
    return registry, requests, latency


def _scrape(registry: CollectorRegistry) -> server_metrics.Samples:
    return server_metrics.parse(generate_latest(registry).decode())


@given(
    before=st.lists(st.floats(min_value=0, max_value=2), max_size=30),
    during=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200),
    q=st.sampled_from([0.5, 0.95, 0.99]),
)
def test_quantiles_of_the_run_fall_in_the_bucket_of_the_runs_own_observations(
    before: list[float], during: list[float], q: float
) -> None:
    registry, requests, latency = _registry()
    for value in before:
        latency.labels("Verify").observe(value)
        requests.labels("Verify", "OK", "").inc()
    first = _scrape(registry)
    for value in during:
        latency.labels("Verify").observe(value)
        requests.labels("Verify", "OK", "").inc()
    figures = server_metrics.figures(first, _scrape(registry), seconds=2.0)
    method = figures.methods["Verify"]
    assert method.calls == len(during)
    assert method.per_second == len(during) / 2.0
    # The observation of rank ceil(q * n) lies in a bucket; the interpolated quantile lies in
    # the same bucket (Prometheus' answer for +Inf is the highest finite bound).
    ranked = sorted(during)[max(math.ceil(q * len(during)) - 1, 0)]
    upper = next((bound for bound in BOUNDS if ranked <= bound), math.inf)
    lower = max((bound for bound in BOUNDS if bound < ranked), default=0.0)
    got = {0.5: method.p50_ms, 0.95: method.p95_ms, 0.99: method.p99_ms}[q] / 1000
    if math.isinf(upper):
        assert got == BOUNDS[-1]
    else:
        assert lower - 1e-12 <= got <= upper + 1e-12


def test_refusals_are_counted_by_code_and_reason_and_series_new_in_the_run_count_from_zero() -> (
    None
):
    registry, requests, latency = _registry()
    requests.labels("Login", "OK", "").inc(3)
    first = _scrape(registry)
    requests.labels("Login", "OK", "").inc(2)
    requests.labels("Login", "UNAUTHENTICATED", "INVALID_CREDENTIALS").inc(4)
    latency.labels("Login").observe(0.02)
    figures = server_metrics.figures(first, _scrape(registry), seconds=1.0)
    login = figures.methods["Login"]
    assert login.calls == 6
    assert login.refusals == {("UNAUTHENTICATED", "INVALID_CREDENTIALS"): 4}
    assert "| Login | 6 |" in "\n".join(server_metrics.markdown(figures))


def test_an_empty_histogram_has_no_quantile() -> None:
    assert math.isnan(server_metrics.quantile(0.5, []))
    assert math.isnan(server_metrics.quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
