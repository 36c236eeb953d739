"""Provider failover: one circuit breaker per provider of a channel, and which provider takes
a message's attempt.

A breaker counts its provider's consecutive timeouts and retryable failures. At
`provider_breaker_failures` it opens for `provider_breaker_open_s`; then it is half-open: one
attempt (the probe) goes through, and its success closes the breaker, its failure opens it again.
A permanent refusal (a bad number) is an answer, not a failure: the provider is up.

The state lives in the dispatcher process. No shared state is needed for correctness: a message
is sent by at most one dispatcher at a time (the outbox lease), every attempt is recorded in the
outbox (attempts, the provider tried last), and each dispatcher learns a provider's health from
its own calls, within `provider_breaker_failures` calls. The state is published where an operator
reads it: the `authsvc_provider_breaker_state` gauge (scraped by `authsvc providers status`), a
log line on each change, and the gRPC health names `authsvc.provider.<channel>` of `serve`.

The choice for an attempt: after a retryable failure on provider P, the next provider after P in
the channel's order whose breaker lets a call through (closed, or half-open with its probe free),
wrapping around; otherwise the first such provider in order. When every breaker is open, the
provider after P all the same (the last resort): breakers choose among providers, they never stop
delivery, so a channel with one provider behaves as without breakers (retries with backoff, five
attempts) and a code is never held back by a breaker while its lifetime runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import structlog

from authsvc import metrics
from authsvc.courier.providers import Route

log = structlog.get_logger("authsvc.failover")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Breaker:
    """One provider's breaker; `now` is passed in (the app's clock: tests move it)."""

    threshold: int
    open_s: float
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    open_until: datetime | None = None
    probing: bool = False

    def refresh(self, now: datetime) -> None:
        """An open breaker whose time ran out is half-open."""
        if (
            self.state is BreakerState.OPEN
            and self.open_until is not None
            and now >= self.open_until
        ):
            self.state = BreakerState.HALF_OPEN
            self.probing = False

    def can_take(self, now: datetime) -> bool:
        self.refresh(now)
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and not self.probing

    def take(self, now: datetime) -> None:
        """A call starts: in half-open, it is the probe (no other call until it ends)."""
        self.refresh(now)
        if self.state is BreakerState.HALF_OPEN:
            self.probing = True

    def answered(self) -> None:
        """The provider answered (accepted, or refused for good): it is up."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = None
        self.probing = False

    def failed(self, now: datetime) -> None:
        """A timeout or retryable failure."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.open_until = now + timedelta(seconds=self.open_s)
            self.probing = False


@dataclass(frozen=True)
class Health:
    """One provider's breaker as published (metrics, logs, `authsvc providers status`)."""

    channel: str
    provider: str
    state: BreakerState
    failures: int
    open_until: datetime | None


@dataclass
class Failover:
    """Every channel's routes and their breakers, for one dispatcher."""

    routes: dict[str, tuple[Route, ...]]
    threshold: int
    open_s: float
    # Called on each change of a breaker's state: (channel, serving) per channel.
    on_channel: Callable[[str, bool], None] | None = None
    _breakers: dict[tuple[str, str], Breaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for channel, routes in self.routes.items():
            for route in routes:
                self._breakers[(channel, route.name)] = Breaker(self.threshold, self.open_s)
                metrics.provider_breaker(channel, route.name, BreakerState.CLOSED.value)

    def breaker(self, channel: str, route: Route) -> Breaker:
        return self._breakers[(channel, route.name)]

    def choose(self, channel: str, last_tried: str | None, now: datetime) -> Route:
        """The route of this attempt (see the module's docstring)."""
        routes = self.routes[channel]
        for route in routes:  # an open breaker whose time ran out turns half-open: published
            self._change(channel, route, lambda breaker: None, now)
        start = 0
        for index, route in enumerate(routes):
            if last_tried is not None and route.recorded_as == last_tried:
                start = index + 1
        for offset in range(len(routes)):
            route = routes[(start + offset) % len(routes)]
            if self.breaker(channel, route).can_take(now):
                return route
        return routes[start % len(routes)]  # every breaker open: the last resort

    def other_available(self, channel: str, route: Route, now: datetime) -> bool:
        """Whether another provider than `route` would take a call now (no backoff needed)."""
        return any(
            other.name != route.name and self.breaker(channel, other).can_take(now)
            for other in self.routes[channel]
        )

    def started(self, channel: str, route: Route, now: datetime) -> None:
        self._change(channel, route, lambda breaker: breaker.take(now), now)

    def answered(self, channel: str, route: Route, now: datetime) -> None:
        self._change(channel, route, lambda breaker: breaker.answered(), now)

    def failed(self, channel: str, route: Route, now: datetime) -> None:
        self._change(channel, route, lambda breaker: breaker.failed(now), now)

    def _change(
        self, channel: str, route: Route, step: Callable[[Breaker], None], now: datetime
    ) -> None:
        breaker = self.breaker(channel, route)
        before = breaker.state
        breaker.refresh(now)
        step(breaker)
        if breaker.state is before:
            return
        # Names and states only: a gateway's URL may carry credentials.
        (log.warning if breaker.state is BreakerState.OPEN else log.info)(
            "provider_breaker",
            channel=channel,
            provider=route.name,
            state=breaker.state.value,
            was=before.value,
            failures=breaker.failures,
            open_s=self.open_s if breaker.state is BreakerState.OPEN else None,
        )
        metrics.provider_breaker(channel, route.name, breaker.state.value)
        if self.on_channel is not None:
            self.on_channel(channel, self.serving(channel, now))

    def serving(self, channel: str, now: datetime) -> bool:
        """False when every provider of the channel is open (nothing would take a message)."""
        return any(
            self.breaker(channel, route).state is not BreakerState.OPEN
            or self.breaker(channel, route).can_take(now)
            for route in self.routes[channel]
        )

    def health(self, now: datetime) -> list[Health]:
        found = []
        for (channel, name), breaker in self._breakers.items():
            breaker.refresh(now)
            found.append(Health(channel, name, breaker.state, breaker.failures, breaker.open_until))
        return found
