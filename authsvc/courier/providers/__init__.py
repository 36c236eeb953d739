"""Channel providers, configured per channel: an ordered list (AUTHSVC_SMS_PROVIDERS, _VOICE_,
_EMAIL_) or its one-provider form (AUTHSVC_SMS_PROVIDER and AUTHSVC_SMS_HTTP, ...).

- `console`, `file`: development only (codes in clear), refused in production;
- `http`: any gateway with an HTTP API (SMS, voice or email), see providers/http.py;
- `smtp`: email through a relay; `kannel`: SMS through Kannel's sendsms interface.

A provider returns its message id or raises DeliveryError(permanent=...); the dispatcher owns
retries, so a provider makes one attempt per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.config import ProviderEntry, ProviderName, Settings
from authsvc.courier.providers.base import (
    DeliveryError,
    MessageProvider,
    Outgoing,
    Provider,
    SendProvider,
    classify_http_status,
)
from authsvc.courier.providers.dev import ConsoleProvider, FileProvider
from authsvc.courier.providers.http import HttpProvider
from authsvc.courier.providers.kannel import KannelProvider
from authsvc.courier.providers.smtp import SmtpProvider

__all__ = [
    "ConsoleProvider",
    "DeliveryError",
    "FileProvider",
    "HttpProvider",
    "KannelProvider",
    "MessageProvider",
    "Outgoing",
    "Provider",
    "Route",
    "SendProvider",
    "SmtpProvider",
    "build_providers",
    "build_routes",
    "classify_http_status",
]

CHANNELS = ("sms", "voice", "email")


@dataclass(frozen=True)
class Route:
    """One provider of a channel's ordered list, with the names it goes by.

    `name`: the configured label (logs, metrics, breaker); `recorded_as`: outbox.provider of the
    messages it accepts (receipts match on it); `kind`: the metrics' provider family."""

    name: str
    recorded_as: str
    kind: str
    provider: Provider


def build_routes(settings: Settings) -> dict[str, tuple[Route, ...]]:
    """Every channel's providers in order (one instance per non-http kind, shared by channels;
    one per http entry, with its own gateway)."""
    shared: dict[ProviderName, Provider] = {}
    routes: dict[str, tuple[Route, ...]] = {}
    for channel in CHANNELS:
        routes[channel] = tuple(
            Route(
                name=entry.name,
                recorded_as=entry.recorded_as,
                kind=entry.kind.value,
                provider=_provider(entry, channel, settings, shared),
            )
            for entry in settings.channel_providers(channel)
        )
    return routes


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The first provider of each channel (what a one-provider test or tool needs)."""
    return {channel: routes[0].provider for channel, routes in build_routes(settings).items()}


def _provider(
    entry: ProviderEntry, channel: str, settings: Settings, shared: dict[ProviderName, Provider]
) -> Provider:
    if entry.kind is ProviderName.HTTP:
        assert entry.http is not None  # checked by ProviderEntry
        label = f"http {channel}" if entry.name == "http" else f"http {channel} {entry.name}"
        return HttpProvider(entry.http, name=label)
    if entry.kind not in shared:
        shared[entry.kind] = _build(entry.kind, settings)
    return shared[entry.kind]


def _build(name: ProviderName, settings: Settings) -> Provider:
    if name is ProviderName.CONSOLE:
        return ConsoleProvider()
    if name is ProviderName.FILE:
        return FileProvider(settings.outbox_file)
    if name is ProviderName.SMTP:
        return SmtpProvider(settings)
    if name is ProviderName.KANNEL:
        return KannelProvider(settings)
    raise ValueError(f"unknown provider {name}")
