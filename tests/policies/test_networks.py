"""What a per-IP limit keys (policies/networks.py): IPv4 alone, IPv6 by /64 and /48."""

from __future__ import annotations

import pytest

from authsvc import validation
from authsvc.policies import networks


@pytest.mark.parametrize(
    ("ip", "narrow", "wide"),
    [
        ("198.51.100.9", "198.51.100.9", None),
        ("::ffff:198.51.100.9", "198.51.100.9", None),  # IPv4-mapped: the IPv4 bucket
        ("::ffff:c633:6409", "198.51.100.9", None),  # the same, written in hex
        ("2001:db8:1:2::7", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("2001:DB8:1:3::1", "2001:db8:1:3::/64", "2001:db8:1::/48"),
        ("::1", "::/64", "::/48"),
        ("", "unknown", None),  # no address given: one shared bucket
    ],
)
def test_networks_of_an_address(ip: str, narrow: str, wide: str | None) -> None:
    assert networks.of_address(ip) == networks.ClientNetworks(narrow, wide)


def test_the_api_stores_an_ipv4_mapped_address_as_ipv4() -> None:
    assert validation.ip_address("::ffff:198.51.100.9") == "198.51.100.9"
    assert validation.ip_address("2001:DB8::1") == "2001:db8::1"
