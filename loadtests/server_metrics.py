"""The server's own figures of a load-test run, from its Prometheus `/metrics` (issue 14).

The runner scrapes the endpoint before Locust starts and after it stops; the difference of the
two scrapes is what the server did during the run, counted by the server itself: RPC rates by
method and status, latency quantiles from the duration histogram (interpolated inside a bucket
as Prometheus' `histogram_quantile` does), codes issued and deliveries by channel, refusals by
rate limit, lockouts. Beside Locust's client-side figures, they tell where time goes (a p99 far
above the server's is spent in the client or the network, not in the service).
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: One sample: (sample name, its labels sorted) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Every sample of the exposition at `url` (the parent of `serve --workers` sums them)."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        text = answer.read().decode()
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def delta(before: Samples, after: Samples) -> Samples:
    """What the counters and histograms gained between the scrapes (a series first seen in
    `after` counts from zero)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def _sum_by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, pairs), value in samples.items():
        if sample == name and value:
            held = dict(pairs)
            sums[tuple(held.get(label, "") for label in labels)] += value
    return dict(sums)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile of a cumulative histogram [(upper bound, count)], by linear
    interpolation inside its bucket (Prometheus' histogram_quantile); NaN when empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class Method:
    calls: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # (gRPC code, ErrorInfo reason) -> calls, OK excluded.
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerFigures:
    seconds: float
    methods: dict[str, Method]
    codes_issued: dict[str, int]  # channel -> codes queued by Challenge
    deliveries: dict[tuple[str, str], int]  # (channel, outcome) -> attempts
    rate_limited: dict[str, int]  # limit -> refusals
    lockouts: dict[str, int]  # factor -> locks set
    verify: dict[str, int]  # outcome -> calls


def figures(before: Samples, after: Samples, seconds: float) -> ServerFigures:
    gained = delta(before, after)
    seconds = max(seconds, 1e-9)
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (sample, pairs), value in gained.items():
        if sample == "authsvc_rpc_duration_seconds_bucket":
            held = dict(pairs)
            buckets[held["method"]].append((float(held["le"]), value))
    by_status = _sum_by(gained, "authsvc_rpc_requests_total", "method", "code", "reason")
    methods: dict[str, Method] = {}
    for method in sorted({key[0] for key in by_status}):
        calls = sum(v for (m, _, _), v in by_status.items() if m == method)
        refusals = {
            (code, reason): int(v)
            for (m, code, reason), v in by_status.items()
            if m == method and code != "OK"
        }
        histogram = buckets.get(method, [])
        methods[method] = Method(
            calls=int(calls),
            per_second=calls / seconds,
            p50_ms=quantile(0.5, histogram) * 1000,
            p95_ms=quantile(0.95, histogram) * 1000,
            p99_ms=quantile(0.99, histogram) * 1000,
            refusals=refusals,
        )

    def counts(name: str, *labels: str) -> dict[tuple[str, ...], int]:
        return {key: int(value) for key, value in _sum_by(gained, name, *labels).items()}

    return ServerFigures(
        seconds=seconds,
        methods=methods,
        codes_issued={k[0]: v for k, v in counts("authsvc_codes_issued_total", "channel").items()},
        deliveries={
            (k[0], k[1]): v
            for k, v in counts("authsvc_deliveries_total", "channel", "outcome").items()
        },
        rate_limited={
            k[0]: v for k, v in counts("authsvc_rate_limit_refusals_total", "limit").items()
        },
        lockouts={k[0]: v for k, v in counts("authsvc_lockouts_total", "factor").items()},
        verify={k[0]: v for k, v in counts("authsvc_verify_total", "outcome").items()},
    )


def markdown(server: ServerFigures) -> list[str]:
    """The summary's section: one table per RPC, then the business counters."""

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.1f}"

    lines = [
        "## Server side (its /metrics, scraped before and after the run)",
        "",
        "| RPC | calls | calls/s | p50 | p95 | p99 | not OK (code/reason: calls) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, method in server.methods.items():
        refused = ", ".join(
            f"{code}/{reason or '-'}: {calls}"
            for (code, reason), calls in sorted(method.refusals.items())
        )
        lines.append(
            f"| {name} | {method.calls} | {method.per_second:.1f} | {ms(method.p50_ms)} "
            f"| {ms(method.p95_ms)} | {ms(method.p99_ms)} | {refused or 'none'} |"
        )

    def listed(values: dict[str, int] | dict[tuple[str, str], int]) -> str:
        if not values:
            return "none"
        return ", ".join(
            f"{'/'.join(key) if isinstance(key, tuple) else key} {value}"
            for key, value in sorted(values.items())
        )

    lines += [
        "",
        "Latencies in ms, from the server's histogram (bucket-interpolated).",
        "",
        f"- codes issued by channel: {listed(server.codes_issued)}",
        f"- delivery attempts by channel/outcome: {listed(server.deliveries)}",
        f"- Verify outcomes: {listed(server.verify)}",
        f"- rate-limit refusals by limit: {listed(server.rate_limited)}",
        f"- lockouts set by factor: {listed(server.lockouts)}",
    ]
    return lines
