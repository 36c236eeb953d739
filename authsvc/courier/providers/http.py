"""`http`: a generic gateway call, configured per channel (authsvc.config.HttpGateway).

The body is the channel's JSON template with $to, $text, $subject, $channel and $message_id
substituted in its string values, JSON-encoded once (so a text needs no escaping). The request
carries `X-Authsvc-Message-Id` (the same on every attempt: the gateway may deduplicate on it)
and, when a secret is configured, `<signature_header>: sha256=<hex HMAC-SHA-256 of the body>`.
2xx: accepted; 408/425/429, 5xx, timeouts and connection errors: retried; other 4xx: permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from string import Template
from typing import Any

import httpx

from authsvc.config import HttpGateway
from authsvc.courier.providers.base import DeliveryError, Outgoing, classify_http_status

_PLACEHOLDERS = ("to", "text", "subject", "channel", "message_id")


def render_body(template: Any, values: dict[str, str]) -> Any:
    """Substitute placeholders in every string of a JSON template (keys and values)."""
    if isinstance(template, str):
        return Template(template).substitute(values)
    if isinstance(template, dict):
        return {render_body(k, values): render_body(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render_body(item, values) for item in template]
    return template


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _dig(data: Any, path: str) -> str | None:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return None if data is None or isinstance(data, dict | list) else str(data)


class HttpProvider:
    def __init__(self, gateway: HttpGateway, *, name: str = "http") -> None:
        self._gateway = gateway
        self._name = name
        # Refuse a template that names an unknown placeholder now, not at the first message.
        render_body(gateway.body, dict.fromkeys(_PLACEHOLDERS, ""))
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._gateway.timeout_s, follow_redirects=False, trust_env=False
            )
        return self._client

    def request_for(self, message: Outgoing) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers sent for `message`."""
        gateway = self._gateway
        values = {
            "to": message.to,
            "text": message.text,
            "subject": message.subject or "",
            "channel": message.channel,
            "message_id": message.reference,
        }
        body = json.dumps(
            render_body(gateway.body, values), ensure_ascii=False, separators=(",", ":")
        ).encode()
        headers = {name: value.get_secret_value() for name, value in gateway.headers.items()}
        headers["Content-Type"] = "application/json; charset=utf-8"
        headers["X-Authsvc-Message-Id"] = message.reference
        if gateway.hmac_secret is not None:
            headers[gateway.signature_header] = sign(
                gateway.hmac_secret.get_secret_value().encode(), body
            )
        return body, headers

    async def deliver(self, message: Outgoing) -> str:
        body, headers = self.request_for(message)
        gateway = self._gateway
        try:
            response = await self._http().request(
                gateway.method, gateway.url, content=body, headers=headers
            )
        except httpx.TimeoutException:
            raise DeliveryError(f"{self._name}: no answer within {gateway.timeout_s} s") from None
        except httpx.HTTPError as error:
            raise DeliveryError(
                f"{self._name}: {type(error).__name__}", detail=str(error)
            ) from None
        permanent = classify_http_status(response.status_code)
        if permanent is not None:
            # The body often quotes the request: it goes as detail, masked by the dispatcher.
            raise DeliveryError(
                f"{self._name}: HTTP {response.status_code}",
                permanent=permanent,
                detail=response.text,
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return _dig(answer, gateway.message_id_field) or message.reference

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
