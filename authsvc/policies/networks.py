"""What a per-IP limit keys: the network one client controls, not the exact address.

One IPv4 address is about what one client (or one NAT) holds; an IPv6 client usually holds a
whole /64 (often a /56 or /48), so keying the full address would give it 2**64 buckets. IPv6 is
therefore keyed by its /64, with a wider tier on the /48 around it; an IPv4-mapped IPv6 address
(`::ffff:198.51.100.9`) is the IPv4 address it maps, with the same bucket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClientNetworks:
    narrow: str  # the IPv4 address, or the IPv6 /64 ("unknown" when the caller gave none)
    wide: str | None  # the IPv6 /48; None for IPv4 (one address is already one bucket)


def of_address(ip: str) -> ClientNetworks:
    """The networks of an end user's address (validated upstream: authsvc/validation.py)."""
    if not ip:
        # A caller that omits the end user's IP shares one bucket with every such call,
        # rather than escaping the per-IP limits.
        return ClientNetworks(UNKNOWN, None)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ClientNetworks(ip, None)  # not reachable through the API: its own bucket
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return ClientNetworks(str(mapped), None)
        narrow = ipaddress.IPv6Network((address, 64), strict=False)
        wide = ipaddress.IPv6Network((address, 48), strict=False)
        return ClientNetworks(str(narrow), str(wide))
    return ClientNetworks(str(address), None)


def canonical(ip: str) -> str:
    """The address as stored and audited: an IPv4-mapped IPv6 address in its IPv4 form."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
