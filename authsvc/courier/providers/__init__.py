"""Channel providers, configured per channel (AUTHSVC_SMS_PROVIDER, _VOICE_, _EMAIL_).

- `console`, `file`: development only (codes in clear), refused in production;
- `http`: any gateway with an HTTP API (SMS, voice or email), see providers/http.py;
- `smtp`: email through a relay; `kannel`: SMS through Kannel's sendsms interface.

A provider returns its message id or raises DeliveryError(permanent=...); the dispatcher owns
retries, so a provider makes one attempt per call.
"""

from __future__ import annotations

from authsvc.config import ProviderName, Settings
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
    "SendProvider",
    "SmtpProvider",
    "build_providers",
    "classify_http_status",
]

CHANNELS = ("sms", "voice", "email")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per channel, as configured (one instance per kind, shared by channels)."""
    shared: dict[ProviderName, Provider] = {}
    providers: dict[str, Provider] = {}
    for channel in CHANNELS:
        name: ProviderName = getattr(settings, f"{channel}_provider")
        if name is ProviderName.HTTP:
            gateway = getattr(settings, f"{channel}_http")
            assert gateway is not None  # checked by Settings
            providers[channel] = HttpProvider(gateway, name=f"http {channel}")
            continue
        if name not in shared:
            shared[name] = _build(name, settings)
        providers[channel] = shared[name]
    return providers


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
