"""Liveness and readiness, as grpc.health.v1 service names (README "Health").

- "" and "authsvc.liveness": the process answers. SERVING from start to the drain that SIGTERM
  begins (NOT_SERVING then); a lost database does not change it, since restarting the process
  would not bring the database back.
- "authsvc.readiness": this replica can serve every RPC: the database answers, its schema is at
  the migrations' head, and Redis answers when a Redis rate-limit backend is configured.
- "authsvc.provider.<channel>" (sms, voice, email): NOT_SERVING while every provider of the
  channel has its circuit breaker open (the in-process dispatcher's view, courier/failover.py).
- The API services' own names ("authsvc.v1.AuthService", "authsvc.v1.AccountService",
  "authsvc.v1.ReadinessService"): the database answers and its schema is at head. Redis is not
  part of them: without it logins and verifications go on (per-process limits) while code sends
  fail closed, which "authsvc.sends" tells. A balancer probing these keeps a Redis outage from
  emptying every replica at once (they all share that Redis).

The probes run every `readiness_probe_interval_s`, off every call's path: one `SELECT` of the
schema's revision (which is also the "database answers" probe) and a Redis PING.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from authsvc.app import App
from authsvc.db.migrate import alembic_config

log = structlog.get_logger("authsvc.health")

LIVENESS = "authsvc.liveness"
READINESS = "authsvc.readiness"
# NOT_SERVING while the shared rate limiter (Redis) is unreachable, since sends then fail closed.
SENDS = "authsvc.sends"
# Per channel, "authsvc.provider.sms" and so on: NOT_SERVING while every provider of the channel
# has its breaker open (courier/failover.py); set by the dispatcher that `serve` runs.
PROVIDER_PREFIX = "authsvc.provider."
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def migrations_head() -> frozenset[str]:
    """The revisions the code expects (read once: the migration scripts do not change)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


@dataclass(frozen=True)
class Probe:
    database: bool
    schema_at_head: bool
    redis: bool

    @property
    def api_ready(self) -> bool:
        return self.database and self.schema_at_head

    @property
    def ready(self) -> bool:
        return self.api_ready and self.redis

    def reasons(self) -> list[str]:
        return [
            name
            for name, ok in (
                ("database_unreachable", self.database),
                ("schema_not_at_head", not self.database or self.schema_at_head),
                ("redis_unreachable", self.redis),
            )
            if not ok
        ]


class Readiness:
    """Probes what a replica needs and keeps the health statuses in step."""

    def __init__(self, app: App, health: object, api_services: tuple[str, ...]) -> None:
        self._app = app
        # grpc_health's asyncio HealthServicer (untyped: grpc-stubs predates it).
        self._health = health
        self._api_services = api_services
        self._head = migrations_head()
        self.last: Probe | None = None

    async def _schema(self) -> tuple[bool, bool]:
        """(the database answers, its schema is at head), in one statement."""
        try:
            async with asyncio.timeout(self._app.settings.readiness_probe_timeout_s):
                async with self._app.engine.connect() as connection:
                    rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
                    found = frozenset(str(row[0]) for row in rows)
        except DBAPIError as error:
            # No alembic_version table (never migrated): the database answers, no schema.
            message = str(error.orig).lower()
            missing = not error.connection_invalidated and (
                "no such table" in message or "does not exist" in message
            )
            return (missing, False)
        except Exception:  # any other failure to answer is "not ready"; the next probe tells
            return (False, False)
        return (True, found == self._head)

    async def _redis(self) -> bool:
        backend = self._app.limits.backend
        if backend.name == "memory":
            return True
        return await backend.healthy()

    async def probe(self) -> Probe:
        (database, at_head), redis = await asyncio.gather(self._schema(), self._redis())
        return Probe(database=database, schema_at_head=at_head, redis=redis)

    async def _set(self, service: str, serving: bool) -> None:
        await self._health.set(service, SERVING if serving else NOT_SERVING)  # type: ignore[attr-defined]

    async def update(self) -> Probe:
        """One probe, and the statuses it implies."""
        probe = await self.probe()
        if probe != self.last:
            if self.last is not None:
                log.warning(
                    "readiness",
                    ready=probe.ready,
                    api_ready=probe.api_ready,
                    reasons=probe.reasons(),
                )
            for service in self._api_services:
                await self._set(service, probe.api_ready)
            await self._set(READINESS, probe.ready)
            await self._set(SENDS, probe.redis)
            self.last = probe
        return probe

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every interval until `stop` is set (the first probe is start()'s own)."""
        interval = self._app.settings.readiness_probe_interval_s
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                await self.update()
