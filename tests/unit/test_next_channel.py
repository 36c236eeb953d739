"""The channel a Challenge offers after a delivery that did not arrive: the same destination's
other channel, never the app or a passkey (they are the flow's own channels, listed apart)."""

from __future__ import annotations

import pytest

from authsvc.flows.challenge import next_channel


@pytest.mark.parametrize(
    ("channels", "channel", "delivery", "offered"),
    [
        (("sms", "voice", "totp", "passkey"), "sms", "undelivered", "voice"),
        (("sms", "voice", "totp", "passkey"), "voice", "failed", "sms"),
        (("sms", "voice", "totp", "passkey"), "sms", "delivered", None),
        (("sms", "voice"), "sms", "queued", None),
        # A landline's call that failed: no other channel reaches it (before: "totp").
        (("voice", "totp", "passkey"), "voice", "undelivered", None),
        (("voice", "passkey"), "voice", "failed", None),
    ],
)
def test_only_the_same_destination_is_offered(
    channels: tuple[str, ...], channel: str, delivery: str, offered: str | None
) -> None:
    assert next_channel(channels, channel, delivery) == offered
