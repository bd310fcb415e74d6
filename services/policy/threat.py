"""Threat-intelligence address lists (policies/threat/*.txt): IPs and CIDRs, one per line, `#`
comments. Lookups are a few dictionary probes (one per prefix length in a list) and remembered
per address, so the network factor costs next to nothing per decision.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ztmesh.policy.errors import ConfigError

MAX_LIST_LINES = 1_000_000
_CACHE_SIZE = 65536


@dataclass(frozen=True)
class AddressList:
    """One list: per IP version, the networks grouped by prefix length as integers."""

    name: str
    path: str
    v4: dict[int, frozenset[int]]
    v6: dict[int, frozenset[int]]
    entries: int

    @classmethod
    def load(cls, path: Path, name: str = "") -> AddressList:
        groups: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        entries = 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read the address list: {exc}") from None
        if len(lines) > MAX_LIST_LINES:
            raise ConfigError(str(path), f"{len(lines)} lines; the maximum is {MAX_LIST_LINES}")
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ConfigError(str(path), f"not an IP address or CIDR: {text!r} ({exc})", line=number) from None
            by_length = groups[network.version].setdefault(network.prefixlen, set())
            by_length.add(int(network.network_address) >> (network.max_prefixlen - network.prefixlen))
            entries += 1
        return cls(
            name or path.stem,
            str(path),
            {length: frozenset(nets) for length, nets in groups[4].items()},
            {length: frozenset(nets) for length, nets in groups[6].items()},
            entries,
        )

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        value = int(address)
        if address.version == 4:
            return any(value >> (32 - length) in nets for length, nets in self.v4.items())
        return any(value >> (128 - length) in nets for length, nets in self.v6.items())


class ThreatIntel:
    """Ordered address lists: the first list containing an address classifies it."""

    def __init__(self, lists: Sequence[AddressList]) -> None:
        self.lists = tuple(lists)
        self._cache: dict[str, int] = {}

    def classify(self, source_ip: str) -> int:
        """Index of the first list containing the address, or -1 (also for a malformed address)."""
        hit = self._cache.get(source_ip)
        if hit is not None:
            return hit
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return -1
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 client behind a dual-stack socket
        index = next((i for i, lst in enumerate(self.lists) if lst.contains(address)), -1)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[source_ip] = index
        return index
