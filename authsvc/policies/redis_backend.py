"""The shared backend: GCRA in Redis, one atomic Lua script per decision, for many replicas.

The script checks the decision's limits in order and stops at the first refusal, exactly like
the memory backend (same integer arithmetic, in microseconds: Lua numbers are doubles, exact for
integers below 2**53, i.e. until the year 2255). Each key holds its TAT and expires when it is
idle, so Redis holds only the keys that matter.

Time comes from the replica's clock (`now_us`), as with the memory backend, so that both give
the same answers for the same inputs; replicas keep their clocks in sync (NTP), and a skew of
a few milliseconds changes a retry delay by as much, nothing more.

Redis Cluster (`AUTHSVC_RATE_LIMIT_BACKEND=redis-cluster`, `AUTHSVC_REDIS_URL` naming any node):
a script may only touch keys of one hash slot, so every key carries the hash tag of its limit's
family, the first part of the limit's name (`{send}`, `{login}`, `{verify}`, ...): every decision
checks limits of one family (the RPC's), whatever its keys. A family cannot be spread further
without giving up the decision's atomicity: its global budget is one key that every decision of
the family spends. So a cluster spreads the families over its primaries and, above all, fails
over: while a primary is down (until its replica is promoted) its families behave exactly as
with one unreachable Redis, below; the others keep deciding in Redis. Replication is
asynchronous: a failover may forget the last milliseconds of spends (a limit briefly looser by
those few units), never lets a refused request through later. The same key layout serves one
Redis, so one conformance suite covers both.

When Redis cannot be reached: sends fail closed (LimiterUnavailable: the API answers
UNAVAILABLE), everything else falls back to the in-process limiter, the health service
"authsvc.sends" turns NOT_SERVING, and one log line says so (one more when it is back).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from authsvc import metrics
from authsvc.errors import LimiterUnavailable
from authsvc.policies.memory import MemoryBackend
from authsvc.policies.ratelimit import ALLOWED, Limit, Verdict

log = structlog.get_logger("authsvc.ratelimit")

# KEYS: the limits' keys, in order. ARGV: now_us, then burst and interval_us of each key.
# Returns {0, "0"} when every limit allowed (and spent one unit of each), else {i, retry_us}
# for the first limit i (1-based) that refused (nothing spent from it or any after it).
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local burst = tonumber(ARGV[2 * i])
  local interval = tonumber(ARGV[2 * i + 1])
  local tat = now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    tat = math.max(tonumber(stored), now)
  end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return {i, string.format('%.0f', allow_at - now)}
  end
  redis.call('SET', KEYS[i], string.format('%.0f', new_tat),
             'PX', math.floor((new_tat - now) / 1000) + 1)
end
return {0, '0'}
"""

_ERRORS = (redis_errors.RedisError, OSError, TimeoutError)
# connect() tries this many times: one try is bounded by the socket timeouts, and a busy
# machine can make one slot-map load (CLUSTER SLOTS, COMMAND, a connection to every primary)
# outlast a decision's timeout once; a Redis that is down costs no more than these tries.
CONNECT_ATTEMPTS = 3


def family(limit: Limit) -> str:
    """The hash tag of a limit's keys: the first part of its name ("send" of "send.ip")."""
    return limit.name.split(".", 1)[0]


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        fallback: MemoryBackend,
        cluster: bool = False,
    ) -> None:
        # A decision never waits on retries: it falls back or fails. The cluster client still
        # refreshes its slot map on the next call after a connection error, which is how it
        # finds a promoted replica.
        no_retry = Retry(NoBackoff(), 0)
        self._redis: Redis | RedisCluster = (
            RedisCluster.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=no_retry
            )
            if cluster
            else Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=no_retry
            )
        )
        if cluster:
            self.name = "redis-cluster"
        self._prefix = prefix
        self._fallback = fallback
        self._gcra = self._redis.register_script(GCRA_SCRIPT)
        self.available = True
        # Decisions the in-process limiter made because Redis did not answer (tests count
        # them; the authsvc_redis_errors metric counts the same events for operators).
        self.fallbacks = 0

    def _mark(self, available: bool, error: BaseException | None = None) -> None:
        if available == self.available:
            return
        self.available = available
        metrics.redis_fallback(self.name, not available)
        if available:
            log.warning("ratelimit_backend_recovered", backend=self.name)
        else:
            log.error(
                "ratelimit_backend_unavailable",
                backend=self.name,
                error=type(error).__name__ if error else "",
                sends="refused (fail closed)",
                other_limits="in-process fallback",
            )

    def _key(self, limit: Limit, key: str) -> str:
        return f"{self._prefix}{{{family(limit)}}}{key}"

    async def consume(
        self, checks: Sequence[tuple[Limit, str]], now_us: int, *, fail_closed: bool = False
    ) -> Verdict:
        if not checks:
            return ALLOWED
        if len({family(limit) for limit, _ in checks}) != 1:
            raise ValueError("one decision checks limits of one family (one hash slot)")
        args: list[int] = [now_us]
        for limit, _ in checks:
            args += [limit.burst, limit.interval_us]
        try:
            index, retry_us = await self._gcra(
                keys=[self._key(limit, key) for limit, key in checks], args=args
            )
        except _ERRORS as error:
            metrics.redis_error(self.name, "consume")
            self._mark(False, error)
            if fail_closed:
                raise LimiterUnavailable("the shared rate limiter is unreachable") from error
            self.fallbacks += 1
            return self._fallback.consume_now(checks, now_us)
        self._mark(True)
        if int(index) == 0:
            return ALLOWED
        return Verdict(False, int(retry_us) / 1e6, checks[int(index) - 1][0])

    async def reset(self, limit: Limit, key: str) -> None:
        await self._redis.delete(self._key(limit, key))

    async def healthy(self) -> bool:
        """Whether every decision can be made in Redis: on a cluster, every primary answers
        (a slot whose primary is down, until its replica is promoted, fails closed)."""
        try:
            if isinstance(self._redis, RedisCluster):
                await self._redis.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._redis.ping()
        except _ERRORS as error:
            metrics.redis_error(self.name, "health")
            self._mark(False, error)
            metrics.redis_fallback(self.name, True)
            return False
        self._mark(True)
        # Every probe (the server's, every 2 s) sets the state: a scrape reads 0 from the start.
        metrics.redis_fallback(self.name, False)
        return True

    async def connect(self) -> bool:
        """What the first decision would otherwise pay inside its timeout, done before the
        server reports SERVING: the cluster client's slot map (CLUSTER SLOTS, COMMAND, one
        connection per primary: ~0.1-0.2 s here, close to a 0.3 s decision timeout), and the
        GCRA script loaded on every primary (else the first EVALSHA of each slot answers
        NOSCRIPT and costs a SCRIPT LOAD round trip more). A Redis that does not answer is no
        reason not to start: decisions then fall back or fail closed as at any other time, and
        readiness tells."""
        for _ in range(CONNECT_ATTEMPTS):
            try:
                if isinstance(self._redis, RedisCluster):
                    await self._redis.initialize()
                # On a cluster SCRIPT LOAD goes to every primary.
                await self._redis.script_load(GCRA_SCRIPT)
            except _ERRORS as error:
                metrics.redis_error(self.name, "connect")
                last: BaseException = error
                continue
            self._mark(True)
            return True
        self._mark(False, last)
        return False

    async def close(self) -> None:
        await self._redis.aclose()
