"""Every rate limit, decided in one place: which limits apply to which RPC, keyed by what.

A limit is GCRA (generic cell rate algorithm): a burst of `burst` requests, then one more every
`interval_us`. Two backends give it the same semantics: `memory` (the Rust `RateLimiter` of
authsvc.otp, per process) and `redis` (one Lua script per decision, shared by every replica).

A decision checks a list of (limit, key) in order, from the most specific (the client's IP) to
the global budget, and stops at the first limit that refuses: a flood from one address is
refused by its own limit and never spends the budget the other users share. Checks run before
any expensive work (argon2, a send).

Nothing a stranger can spend may lock out other people, so each budget is spent only by those
who can be held to it:
- before a credential is verified (a password, an assertion's signature), only the client's own
  network (policies/networks.py: an IPv4 address, an IPv6 /64 and its /48); unverified
  assertions have per-network budgets of their own. Password guesses per login are bounded by
  the lockout (policies/lockout.py), which runs before argon2;
- the subject (organisation + login, or federated identity), organisation and global login
  budgets are spent after the credential is verified: they bound the flows and sessions
  opened, and a stranger guessing passwords or forging assertions never reaches them;
- a code to a destination not yet verified for the account (a contact being changed) is
  charged to the requester (per requester and destination, and per requester), never to the
  destination's per-number caps nor to the prefix's pumping breaker, which protect the logins
  of whoever holds that number.

Keys never hold a personal value in clear: each is a keyed digest (HMAC with a subkey of the
master secret) of the value, so neither Redis nor a memory dump shows a number, login or IP.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from authsvc import metrics, tracing
from authsvc.config import Rate, Settings
from authsvc.errors import rate_limited
from authsvc.policies import networks

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact)."""
    return (moment - _EPOCH) // _US


@dataclass(frozen=True)
class Limit:
    """One GCRA limit. `subject` is what QuotaFailure names ("ip", "phone_number", ...)."""

    name: str
    subject: str
    burst: int
    interval_us: int

    @classmethod
    def rate(cls, name: str, subject: str, rate: Rate) -> Limit:
        """`count` per `period_s` on average, bursts of `count` (a throttle)."""
        return cls(name, subject, rate.count, max(1, math.ceil(rate.period_s * 1e6 / rate.count)))

    @classmethod
    def cap(cls, name: str, subject: str, count: int, period_s: int) -> Limit:
        """Never more than `count` in any window of `period_s` (closed interval).

        GCRA lets through at most `burst + window / interval` requests in a window, so the
        burst is half the cap and the other half refills over the period.
        """
        burst = max(1, count // 2)
        refill = count - burst
        if refill == 0:  # a cap of 1: one request, then one per period and a microsecond
            return cls(name, subject, 1, period_s * 1_000_000 + 1)
        return cls(name, subject, burst, math.ceil(period_s * 1_000_000 / refill))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds; math.inf when the cost can never fit
    limit: Limit | None = None  # the limit that refused


ALLOWED = Verdict(True)


class Backend(Protocol):
    """Where GCRA state lives. Implementations: memory.MemoryBackend, redis_backend.RedisBackend."""

    name: str

    async def consume(
        self, checks: Sequence[tuple[Limit, str]], now_us: int, *, fail_closed: bool = False
    ) -> Verdict:
        """Spend one unit of each limit in order; stop at (and report) the first refusal.

        `fail_closed`: if the store is unreachable, raise LimiterUnavailable instead of falling
        back to a local limiter.
        """
        ...

    async def reset(self, limit: Limit, key: str) -> None: ...

    async def healthy(self) -> bool: ...

    async def connect(self) -> bool:
        """Before the first decision (Server.start, before SERVING): whatever the store's
        first call would otherwise do inside a decision's timeout. Whether it answered."""
        ...

    async def close(self) -> None: ...


def lock_durations(settings: Settings) -> list[int]:
    """Password lock lengths: the base, doubling at each lock, never above the maximum."""
    durations, length = [], settings.password_lock_s
    while length < settings.password_lock_max_s:
        durations.append(length)
        length *= 2
    durations.append(settings.password_lock_max_s)
    return durations


class RateLimitPolicy:
    """The limits of each RPC. Raises a RATE_LIMITED Failure (RetryInfo + QuotaFailure)."""

    def __init__(self, settings: Settings, backend: Backend, digest_key: bytes) -> None:
        self.backend = backend
        self._key = digest_key
        limits = settings.rate_limits
        rate = Limit.rate
        self._wide_factor = settings.ipv6_48_multiplier
        self.login_ip = rate("login.ip", "ip", limits.login_ip)
        self.login_account = rate("login.account", "account", limits.login_account)
        self.login_federated_ip = rate("login.federated.ip", "ip", limits.login_federated_ip)
        self.login_organization = rate(
            "login.organization", "organization", limits.login_organization
        )
        self.login_global = rate("login.global", "global", limits.login_global)
        self.verify_ip = rate("verify.ip", "ip", limits.verify_ip)
        self.verify_account = rate("verify.account", "account", limits.verify_account)
        self.verify_global = rate("verify.global", "global", limits.verify_global)
        self.step_up_ip = rate("step_up.ip", "ip", limits.step_up_ip)
        self.step_up_account = rate("step_up.account", "account", limits.step_up_account)
        self.change_password_ip = rate("change_password.ip", "ip", limits.change_password_ip)
        self.change_password_account = rate(
            "change_password.account", "account", limits.change_password_account
        )
        self.send_ip = rate("send.ip", "ip", limits.send_ip)
        self.send_hour = Limit.cap(
            "send.number.hour", "phone_number", settings.phone_sends_per_hour, 3600
        )
        self.send_day = Limit.cap(
            "send.number.day", "phone_number", settings.phone_sends_per_day, 86400
        )
        self.send_prefix = rate("send.prefix", "phone_prefix", limits.send_prefix)
        self.send_organization = rate("send.organization", "organization", limits.send_organization)
        self.send_global = rate("send.global", "global", limits.send_global)
        self.send_unverified_destination = rate(
            "send.unverified.destination", "requester", limits.send_unverified_destination
        )
        self.send_unverified_requester = rate(
            "send.unverified.requester", "requester", limits.send_unverified_requester
        )
        self.factor_window_flow = rate("factor_window.flow", "flow", limits.factor_window_flow)
        self.factor_window_ip = rate("factor_window.ip", "ip", limits.factor_window_ip)
        # The /48 tier of each per-IP limit: the same name with ".48", `factor` times the budget.
        self._wide = {
            limit.name: Limit(
                f"{limit.name}.48",
                limit.subject,
                limit.burst * self._wide_factor,
                max(1, limit.interval_us // self._wide_factor),
            )
            for limit in (
                self.login_ip,
                self.login_federated_ip,
                self.verify_ip,
                self.step_up_ip,
                self.send_ip,
                self.change_password_ip,
                self.factor_window_ip,
            )
        }

    def ip_checks(self, limit: Limit, ip: str) -> list[tuple[Limit, str]]:
        """A per-IP limit on the client's network: its IPv4 address or IPv6 /64, then the /48."""
        where = networks.of_address(ip)
        checks: list[tuple[Limit, str]] = [(limit, self.key("ip", where.narrow))]
        if where.wide is not None:
            checks.append((self._wide[limit.name], self.key("ip", where.wide)))
        return checks

    def key(self, *parts: str) -> str:
        """A keyed digest of the parts: what the backend stores instead of the values."""
        message = "\x1f".join(parts).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    async def _decide(
        self, now: datetime, checks: list[tuple[Limit, str]], *, fail_closed: bool = False
    ) -> Verdict:
        keyed = [(limit, f"{limit.name}:{key}") for limit, key in checks]
        if not tracing.enabled():
            return await self.backend.consume(keyed, micros(now), fail_closed=fail_closed)
        # Limit names only: the keys are digests of IPs, accounts and phone numbers.
        with tracing.span(
            "ratelimit.decide",
            **{
                "authsvc.limits": ",".join(limit.name for limit, _ in checks),
                "authsvc.ratelimit.backend": self.backend.name,
            },
        ):
            verdict = await self.backend.consume(keyed, micros(now), fail_closed=fail_closed)
            tracing.set_attributes(
                {
                    "authsvc.ratelimit.allowed": verdict.allowed,
                    "authsvc.ratelimit.refused_by": verdict.limit.name if verdict.limit else "",
                }
            )
            return verdict

    @staticmethod
    def _refuse(verdict: Verdict) -> None:
        if not verdict.allowed:
            assert verdict.limit is not None
            # A cost that can never fit has no finite retry: say "a day" rather than infinity.
            retry = verdict.retry_after if math.isfinite(verdict.retry_after) else 86400.0
            metrics.rate_limited(verdict.limit.name)
            raise rate_limited(verdict.limit.subject, retry)

    async def login(self, now: datetime, *, ip: str) -> None:
        """Before the password is checked (known and unknown logins alike): only the client's
        network. What the request names (login, organisation) waits for the right password:
        a stranger's guesses are bounded by their network and by the password lockout."""
        self._refuse(await self._decide(now, self.ip_checks(self.login_ip, ip)))

    async def federated_attempt(self, now: datetime, *, ip: str) -> None:
        """Before an assertion is verified: its claims are the forger's choice, so only the
        client's network is spent, in budgets of their own (not the password logins')."""
        self._refuse(await self._decide(now, self.ip_checks(self.login_federated_ip, ip)))

    async def login_verified(
        self,
        now: datetime,
        *,
        siret: str,
        login: str | None = None,
        federated: tuple[str, str] | None = None,
    ) -> None:
        """After the first factor is verified: the subject's budget (the organisation's login,
        or the federated issuer and subject), the organisation's and the global one."""
        subject = (
            self.key("login", siret, login.casefold())
            if login is not None
            else self.key("federated", *(federated or ("", "")))
        )
        self._refuse(
            await self._decide(
                now,
                [
                    (self.login_account, subject),
                    (self.login_organization, self.key("org", siret)),
                    (self.login_global, "all"),
                ],
            )
        )

    async def verify(self, now: datetime, *, ip: str, account_id: str) -> None:
        self._refuse(
            await self._decide(
                now,
                [
                    *self.ip_checks(self.verify_ip, ip),
                    (self.verify_account, self.key("account", account_id)),
                    (self.verify_global, "all"),
                ],
            )
        )

    async def factor_window(self, now: datetime, *, flow_id: str, ip: str | None) -> None:
        """Before a window for the app's code or a passkey opens: the flow's budget (only its
        id's holder spends it), and the client network's when the caller gave it."""
        checks = [(self.factor_window_flow, self.key("flow", flow_id))]
        if ip is not None:
            checks += self.ip_checks(self.factor_window_ip, ip)
        self._refuse(await self._decide(now, checks))

    async def step_up(self, now: datetime, *, ip: str, account_id: str) -> None:
        self._refuse(
            await self._decide(
                now,
                [
                    *self.ip_checks(self.step_up_ip, ip),
                    (self.step_up_account, self.key("account", account_id)),
                ],
            )
        )

    async def change_password(self, now: datetime, *, ip: str, account_id: str) -> None:
        """Before the current password is checked (the caller holds a session)."""
        self._refuse(
            await self._decide(
                now,
                [
                    *self.ip_checks(self.change_password_ip, ip),
                    (self.change_password_account, self.key("account", account_id)),
                ],
            )
        )

    async def send(
        self,
        now: datetime,
        *,
        ip: str,
        destination: str,
        prefix: str | None,
        organization_id: str,
        requester: str | None = None,
    ) -> Verdict:
        """Before a code is queued. Fails closed when the shared store is unreachable. The
        caller handles a refusal by the prefix limit (it trips the breaker), so it gets the
        Verdict; `refuse(verdict)` turns it into the Failure.

        `requester`: the account that asked for a code to a destination not yet verified for
        it; that account pays instead of the destination's caps and the prefix's breaker."""
        checks = self.ip_checks(self.send_ip, ip)
        if requester is not None:
            checks += [
                (self.send_unverified_destination, self.key("asks", requester, destination)),
                (self.send_unverified_requester, self.key("asks", requester)),
            ]
        else:
            checks += [
                (self.send_hour, self.key("to", destination)),
                (self.send_day, self.key("to", destination)),
            ]
            if prefix is not None:
                checks.append((self.send_prefix, self.key("prefix", prefix)))
        checks += [
            (self.send_organization, self.key("org", organization_id)),
            (self.send_global, "all"),
        ]
        return await self._decide(now, checks, fail_closed=True)

    async def malformed(self, now: datetime, rpc: str, *, backend: str) -> None:
        """An undecodable request: charged to the RPC's per-IP throttle under a key of the
        calling backend's own (it names no end user), so garbage is no way around that
        throttle and one backend's garbage never spends another's budget."""
        limit = {
            "Login": self.login_ip,
            "Verify": self.verify_ip,
            "AuthorizeSensitiveAction": self.step_up_ip,
        }.get(rpc)
        if limit is not None:
            self._refuse(await self._decide(now, [(limit, self.key("malformed", backend))]))

    refuse = _refuse


def build_backend(settings: Settings) -> Backend:
    from authsvc.policies.memory import MemoryBackend

    if settings.rate_limit_backend.value in ("redis", "redis-cluster"):
        from authsvc.policies.redis_backend import RedisBackend

        return RedisBackend(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            timeout_s=settings.redis_timeout_s,
            fallback=MemoryBackend(),
            cluster=settings.rate_limit_backend.value == "redis-cluster",
        )
    return MemoryBackend()


def limit_names(policy: RateLimitPolicy) -> frozenset[str]:
    """Every limit name `policy` may refuse under (its /48 tiers included)."""
    names = {value.name for value in vars(policy).values() if isinstance(value, Limit)}
    return frozenset(names | {limit.name for limit in policy._wide.values()})
