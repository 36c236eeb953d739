"""`kannel`: SMS through Kannel's smsbox sendsms HTTP interface.

Kannel is the open-source SMS gateway that operators and aggregators run in front of their SMSCs
(SMPP, EMI/UCP, ...). One GET per message: `username`, `password`, `to`, `text` (UTF-8), `coding`
0 (GSM 7-bit) or 2 (UCS-2, when the text has a character outside GSM-7), optional `from` (sender
id) and `smsc` (route). Kannel answers 202 "0: Accepted for delivery" or "3: Queued for later
delivery"; 4xx (bad credentials, missing or refused number) are permanent; 5xx and timeouts are
retried. Kannel gives no message id on this interface: ours is used as the reference. With
AUTHSVC_RECEIPTS_PUBLIC_URL set, each message asks for delivery reports (`dlr-mask`, `dlr-url`
carrying our id and its receipt token).
"""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

from authsvc.config import Settings
from authsvc.courier.gsm import is_gsm7
from authsvc.courier.providers.base import DeliveryError, Outgoing, classify_http_status


def dlr_url(base: str, reference: str, token: str) -> str:
    """The receipt URL handed to Kannel for one message (served by courier/receipts.py)."""
    query = urlencode({"id": reference, "token": token})
    return f"{base.rstrip('/')}/receipts/kannel?{query}&status=%d"


class KannelProvider:
    def __init__(self, settings: Settings) -> None:
        self._url = settings.kannel_url
        self._username = settings.kannel_username
        self._password = settings.kannel_password
        self._sender = settings.kannel_from
        self._smsc = settings.kannel_smsc
        self._timeout_s = settings.kannel_timeout_s
        self._receipts_url = settings.receipts_public_url
        self._dlr_mask = settings.kannel_dlr_mask
        self._client: httpx.AsyncClient | None = None

    def params_for(self, message: Outgoing) -> dict[str, str]:
        params = {
            "username": self._username,
            "password": self._password.get_secret_value() if self._password else "",
            "to": message.to,
            "text": message.text,
            "charset": "UTF-8",
            "coding": "0" if is_gsm7(message.text) else "2",
        }
        if self._sender:
            params["from"] = self._sender
        if self._smsc:
            params["smsc"] = self._smsc
        if self._receipts_url and message.receipt_token:
            # Kannel calls this back for each status in the mask, `%d` replaced by the status.
            params["dlr-mask"] = str(self._dlr_mask)
            params["dlr-url"] = dlr_url(
                self._receipts_url, message.reference, message.receipt_token
            )
        return params

    async def deliver(self, message: Outgoing) -> str:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, trust_env=False)
        try:
            response = await self._client.get(self._url, params=self.params_for(message))
        except httpx.TimeoutException:
            raise DeliveryError(f"kannel: no answer within {self._timeout_s} s") from None
        except httpx.HTTPError as error:
            # The URL holds the password in its query: never quote the request.
            raise DeliveryError(f"kannel: {type(error).__name__}") from None
        permanent = classify_http_status(response.status_code)
        answer = response.text.strip()
        # Kannel's answer may quote the number or the text: detail, masked by the dispatcher.
        if permanent is not None:
            raise DeliveryError(
                f"kannel: HTTP {response.status_code}", permanent=permanent, detail=answer
            )
        if not answer.startswith(("0:", "3:")):
            raise DeliveryError("kannel: unexpected answer", detail=answer)
        return f"kannel-{message.reference}"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
