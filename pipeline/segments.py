"""Network segments: a CIDR table from config, compiled to integer ranges.

``ipaddress.ip_network`` costs microseconds per call, so networks are parsed once and addresses
are looked up against integer ranges, with a bounded cache in front (a fleet reuses addresses).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

UNKNOWN = "unknown"


class SegmentTable:
    """Maps an address to the name of the most specific segment containing it, else ``unknown``."""

    def __init__(self, segments: Iterable[tuple[str, str]], cache_size: int = 65_536) -> None:
        ranges: list[tuple[int, int, int, int, str]] = []
        for name, cidr in segments:
            net = ipaddress.ip_network(cidr, strict=False)
            first, last = int(net.network_address), int(net.broadcast_address)
            ranges.append((net.version, net.prefixlen, first, last, name))
        # Most specific first, so overlapping tables resolve to the narrowest network.
        ranges.sort(key=lambda r: -r[1])
        self._v4 = [(a, b, n) for v, _, a, b, n in ranges if v == 4]
        self._v6 = [(a, b, n) for v, _, a, b, n in ranges if v == 6]
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size
        self.names = tuple(dict.fromkeys([r[4] for r in ranges] + [UNKNOWN]))

    def lookup(self, address: str) -> str:
        segment = self._cache.get(address)
        if segment is None:
            segment = self._resolve(address)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[address] = segment
        return segment

    def _resolve(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return UNKNOWN
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        for first, last, name in self._v4 if ip.version == 4 else self._v6:
            if first <= value <= last:
                return name
        return UNKNOWN
