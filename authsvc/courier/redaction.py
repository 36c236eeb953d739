"""What a provider's error may keep: masked with the message's own payload, then bounded.

Gateways quote what they were sent: the destination (in whatever format they normalise it to),
the text, the code read aloud. Guessing the shape of a secret misses a rendering nobody thought
of ("1, 2, 3, 4, 5, 6" slipped past a mask of digits joined by spaces), so the error is masked
with what the dispatcher knows the message holds:

- the whole text and subject;
- every form of every secret the template wrote (templates.Secret.forms), matched with any run of
  up to three non-alphanumeric characters between their characters ("123456" also masks
  "1, 2, 3, 4, 5, 6", "123 456", "1-2-3-4-5-6");
- the destination: an address (and its local part), case-insensitively; a phone number as its
  international, national and significant digits, with separators allowed between digits.

Percent-encoding is undone first (a gateway echoing its query string). A gateway's own words
(`DeliveryError.detail`) are never kept verbatim: after that masking, any run of four digits or
more and any long token-like word is masked too, control characters are dropped and only a
bounded excerpt remains.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

import phonenumbers

from authsvc.courier.outbox import MASK, Payload

NUMBER_MASK = "[number]"
ADDRESS_MASK = "[address]"
TEXT_MASK = "[text]"
EXCERPT_CHARS = 160
_READ_AT_MOST = 64 * 1024  # what a gateway body can cost us to mask
_SEPARATORS = r"[\W_]{0,3}"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# Defence in depth for a gateway's words only: numbers and token-like words, whatever they are.
_DIGIT_RUN = re.compile(r"\d(?:[\W_]{0,3}\d){3,}")
_TOKEN_WORD = re.compile(r"[A-Za-z0-9_-]{16,}")


def _spread(value: str) -> str:
    """A pattern for the alphanumeric characters of `value`, separators allowed between them."""
    return _SEPARATORS.join(re.escape(char) for char in value if char.isalnum())


def _phone_digits(to: str) -> list[str]:
    """International, national and significant digits of a phone number, longest first."""
    digits = re.sub(r"\D", "", to)
    forms = {digits}
    try:
        number = phonenumbers.parse(to, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None:
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        forms |= {re.sub(r"\D", "", national), str(number.national_number)}
    return sorted((form for form in forms if len(form) >= 6), key=len, reverse=True)


class Redactor:
    """Masks one message's payload out of whatever a provider said about it."""

    def __init__(self, payload: Payload) -> None:
        self._texts = sorted(
            (t for t in (payload.text, payload.subject) if t and len(t) >= 8), key=len, reverse=True
        )
        secrets = sorted({s for s in payload.secrets if s}, key=len, reverse=True)
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for secret in secrets:
            self._add(re.escape(secret), MASK)
            if sum(char.isalnum() for char in secret) >= 4:
                self._add(_spread(secret), MASK)
        to = payload.to
        if "@" in to:
            self._add(re.escape(to), ADDRESS_MASK)
            local = to.rpartition("@")[0]
            if len(local) >= 5:  # "user alice.martin unknown"
                self._add(rf"\b{re.escape(local)}\b", ADDRESS_MASK)
        for digits in _phone_digits(to) if "@" not in to else []:
            self._add(r"\+?" + _spread(digits), NUMBER_MASK)

    def _add(self, pattern: str, replacement: str) -> None:
        self._patterns.append((re.compile(pattern, re.IGNORECASE), replacement))

    def mask(self, said: str) -> str:
        """`said` with every known part of the payload masked (the result may still be long)."""
        text = said[:_READ_AT_MOST]
        if "%" in text:  # a gateway echoing its query string: mask what it decodes to
            text = unquote_plus(text)
        for whole in self._texts:
            text = text.replace(whole, TEXT_MASK)
        for pattern, replacement in self._patterns:
            text = pattern.sub(replacement, text)
        return text

    def excerpt(self, said: str) -> str:
        """A gateway's own words as they may be kept: masked, then stripped of anything that
        looks like a number or a token, on one line, bounded."""
        masked = self.mask(said)
        masked = _TOKEN_WORD.sub(MASK, _DIGIT_RUN.sub(MASK, masked))
        masked = " ".join(_CONTROL.sub(" ", masked).split())
        return masked if len(masked) <= EXCERPT_CHARS else masked[: EXCERPT_CHARS - 1] + "…"
