"""An issuer's public keys (JWKS), from a file or a URL, cached and refreshed on an unknown kid.

A refresh forced by an unknown kid happens at most once every few seconds per issuer, so that a
flood of assertions with random kids cannot turn the service into a JWKS-fetching loop.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

from authsvc.config import TrustedIssuer
from authsvc.errors import Failure
from authsvc.federation.failures import refused

_MAX_JWKS_BYTES = 256 * 1024
_FETCH_TIMEOUT_S = 5.0
_MIN_REFRESH_S = 5.0
_MAX_AGE_S = 3600.0


class KeySet:
    def __init__(self, trusted: TrustedIssuer, min_refresh_s: float = _MIN_REFRESH_S) -> None:
        self._trusted = trusted
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str | None, PyJWK] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> PyJWK:
        if time.monotonic() - self._loaded_at > _MAX_AGE_S:
            await self._refresh()
        key = self._find(kid)
        if key is None and time.monotonic() - self._loaded_at >= self._min_refresh_s:
            await self._refresh()  # a rotated key set: look again once
            key = self._find(kid)
        if key is None:
            raise refused("ASSERTION_KEY_UNKNOWN", "the issuer has no key with this kid")
        return key

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        started = time.monotonic()
        async with self._lock:
            if self._loaded_at >= started:
                return  # another request refreshed while this one waited
            # Any attempt, good or bad, starts the throttle: a failing endpoint is not hammered.
            self._loaded_at = time.monotonic()
            try:
                raw = await asyncio.to_thread(self._read)
                key_set = PyJWKSet.from_dict(raw)
            except (OSError, ValueError, PyJWKSetError, PyJWKError, KeyError, TypeError):
                # Keep the keys we had: a published key set that cannot be read now does not
                # revoke the keys it published before.
                if self._keys:
                    return
                raise Failure(
                    "UNAVAILABLE", "ASSERTION_KEY_UNKNOWN", "the issuer's keys cannot be read now"
                ) from None
            self._keys = {key.key_id: key for key in key_set.keys}

    def _read(self) -> dict[str, Any]:
        if self._trusted.jwks_file is not None:
            data = self._trusted.jwks_file.read_bytes()[:_MAX_JWKS_BYTES]
        else:
            assert self._trusted.jwks_url is not None
            request = urllib.request.Request(  # noqa: S310 (https/http only: validated in config)
                self._trusted.jwks_url, headers={"Accept": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response:  # noqa: S310
                data = response.read(_MAX_JWKS_BYTES)
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError("a JWKS is a JSON object")
        return parsed
