"""SMS length: the GSM 03.38 7-bit alphabet and how many segments a text takes.

A text made only of GSM-7 characters fits 160 characters in one SMS (153 per segment when split);
one character outside it turns the whole message into UCS-2: 70 characters, 67 per segment. The
extension table's characters (€, [, ], {, }, ...) cost two septets each. Operators bill per
segment, so the templates are written to stay within one GSM-7 segment.
"""

from __future__ import annotations

# The basic character set, in code order (0x00-0x7F); \x1b (escape to the extension) excluded.
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENSION = "\f^{}\\[~]|€"

BASIC = frozenset(_BASIC)
EXTENSION = frozenset(_EXTENSION)


def is_gsm7(text: str) -> bool:
    """Whether the text can travel in the 7-bit alphabet (basic set plus extension)."""
    return all(char in BASIC or char in EXTENSION for char in text)


def septets(text: str) -> int:
    return sum(2 if char in EXTENSION else 1 for char in text)


def segments(text: str) -> int:
    """How many SMS the text takes (concatenated SMS carry a 6-byte header in each part)."""
    if is_gsm7(text):
        length, single, part = septets(text), 160, 153
    else:
        # UTF-16 code units: characters outside the BMP take two.
        length, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    if length <= single:
        return 1
    return -(-length // part)
