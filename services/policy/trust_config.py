"""Reads the trust algorithm's data: factor weights and thresholds (policies/trust/weights.json) and
the threat lists it names (policies/threat/). A malformed file is a ConfigError naming the file and
key; the model is immutable, so a reload swaps it whole or not at all."""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztmesh.policy.errors import ConfigError
from ztmesh.policy.model import Assurance
from ztmesh.policy.threat import AddressList, ThreatIntel

FACTOR_NAMES = ("identity", "device", "network", "behaviour", "context")
DEVICE_CHECKS = ("managed", "compliant", "disk_encrypted", "endpoint_protection", "patched")


@dataclass(frozen=True)
class IdentityConfig:
    assurance: Mapping[str, float]  # Assurance value -> 0-1
    methods: Mapping[str, float]  # authentication method -> 0-1 multiplier
    unknown_method: float
    no_method: float


@dataclass(frozen=True)
class DeviceConfig:
    checks: Mapping[str, float]  # posture check -> its share of the device factor
    patch_fresh_days: int
    patch_stale_days: int
    missing: float  # no device posture reported

    @property
    def total(self) -> float:
        return sum(self.checks.values())


@dataclass(frozen=True)
class ListRule:
    file: str
    label: str
    score: float
    flag: str  # "" or a flag the policy can deny on


@dataclass(frozen=True)
class NetworkConfig:
    lists: tuple[ListRule, ...]  # first match wins
    default: float  # an address on no list
    missing: float  # no source address


@dataclass(frozen=True)
class SignalKind:
    weight: float  # risk points of one event of severity 1 (the behaviour factor is 1 - total risk)
    half_life_s: float


@dataclass(frozen=True)
class BehaviourConfig:
    kinds: Mapping[str, SignalKind]
    half_lives: Mapping[str, float]  # kind -> half-life in seconds, what the signal store needs

    @classmethod
    def of(cls, kinds: Mapping[str, SignalKind]) -> BehaviourConfig:
        return cls(kinds, {kind: k.half_life_s for kind, k in kinds.items()})


@dataclass(frozen=True)
class ContextConfig:
    zone: zoneinfo.ZoneInfo
    business_start: int
    business_end: int
    business_days: frozenset[int]
    always_on_roles: frozenset[str]
    off_hours: float
    purpose_missing: float
    user_agent_missing: float


@dataclass(frozen=True)
class TrustConfig:
    weights: Mapping[str, float]
    identity: IdentityConfig
    device: DeviceConfig
    network: NetworkConfig
    behaviour: BehaviourConfig
    context: ContextConfig

    @property
    def total_weight(self) -> float:
        return sum(self.weights.values())


@dataclass(frozen=True)
class TrustModel:
    config: TrustConfig
    intel: ThreatIntel
    revision: str  # content hash of weights.json and the lists it names
    weights_file: str


class _Section:
    """A JSON object being read, with its path for error messages."""

    def __init__(self, file: str, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(file, f"{path or 'top level'}: expected an object")
        self.file, self.value, self.path = file, value, path

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, f"{self.path}.{key}: {problem}" if self.path else f"{key}: {problem}")

    def section(self, key: str) -> _Section:
        if key not in self.value:
            raise self._fail(key, "is missing")
        return _Section(self.file, self.value[key], f"{self.path}.{key}" if self.path else key)

    def unit(self, key: str, default: float | None = None) -> float:
        """A number in 0-1."""
        raw = self.value.get(key, default)
        if raw is None:
            raise self._fail(key, "is missing")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
            raise self._fail(key, f"must be a number in 0-1, got {raw!r}")
        return float(raw)

    def number(self, key: str, low: float, high: float, default: float | None = None) -> float:
        raw = self.value.get(key, default)
        if raw is None:
            raise self._fail(key, "is missing")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
            raise self._fail(key, f"must be a number in {low:g}-{high:g}, got {raw!r}")
        return float(raw)

    def units(self, key: str, required: tuple[str, ...] = ()) -> dict[str, float]:
        table = self.section(key)
        for name in required:
            if name not in table.value:
                raise table._fail(name, "is missing")
        return {name: table.unit(name) for name in table.value}


def parse_config(file: str, raw: Any) -> TrustConfig:
    top = _Section(file, raw, "")
    weights = top.section("weights")
    unknown = sorted(set(weights.value) - set(FACTOR_NAMES))
    if unknown:
        raise ConfigError(file, f"weights.{unknown[0]}: unknown factor; the factors are {', '.join(FACTOR_NAMES)}")
    weight_map = {name: weights.number(name, 0.0, 1000.0) for name in FACTOR_NAMES}
    if sum(weight_map.values()) <= 0:
        raise ConfigError(file, "weights: at least one factor needs a weight above 0")
    ident = top.section("identity")
    identity = IdentityConfig(
        assurance=ident.units("assurance", tuple(a.value for a in Assurance)),
        methods={k.lower(): v for k, v in ident.units("methods").items()},
        unknown_method=ident.unit("unknown_method"),
        no_method=ident.unit("no_method"),
    )
    dev = top.section("device")
    checks = {name: dev.section("checks").number(name, 0.0, 1000.0) for name in DEVICE_CHECKS}
    if sum(checks.values()) <= 0:
        raise ConfigError(file, "device.checks: at least one check needs a weight above 0")
    fresh = int(dev.number("patch_fresh_days", 0, 36500))
    stale = int(dev.number("patch_stale_days", fresh + 1, 36500))
    device = DeviceConfig(checks, fresh, stale, dev.unit("missing"))
    net = top.section("network")
    rules = []
    lists = net.value.get("lists")
    if not isinstance(lists, list):
        raise ConfigError(file, "network.lists: expected a list of {file, label, score, flag}")
    for i, item in enumerate(lists):
        entry = _Section(file, item, f"network.lists[{i}]")
        name = entry.value.get("file")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(file, f"network.lists[{i}].file: a file name in the threat folder, got {name!r}")
        flag = entry.value.get("flag", "")
        if not isinstance(flag, str):
            raise ConfigError(file, f"network.lists[{i}].flag: expected a string")
        rules.append(ListRule(name, str(entry.value.get("label", name)), entry.unit("score"), flag))
    network = NetworkConfig(tuple(rules), net.unit("default"), net.unit("missing"))
    beh = top.section("behaviour").section("kinds")
    kinds = {}
    for kind in beh.value:
        k = beh.section(kind)
        kinds[kind] = SignalKind(k.number("weight", 0.0, 100.0), k.number("half_life_s", 1.0, 10 * 365 * 86400.0))
    ctx = top.section("context")
    zone_name = ctx.value.get("timezone", "UTC")
    try:
        zone = zoneinfo.ZoneInfo(str(zone_name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(file, f"context.timezone: unknown time zone {zone_name!r}") from None
    days = ctx.value.get("business_days", [0, 1, 2, 3, 4])
    if not isinstance(days, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
        raise ConfigError(file, "context.business_days: expected weekday numbers 0 (Monday) to 6")
    roles = ctx.value.get("always_on_roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(file, "context.always_on_roles: expected a list of role names")
    start = int(ctx.number("business_start_hour", 0, 23))
    context = ContextConfig(
        zone=zone,
        business_start=start,
        business_end=int(ctx.number("business_end_hour", start + 1, 24)),
        business_days=frozenset(days),
        always_on_roles=frozenset(roles),
        off_hours=ctx.unit("off_hours"),
        purpose_missing=ctx.unit("purpose_missing"),
        user_agent_missing=ctx.unit("user_agent_missing"),
    )
    return TrustConfig(weight_map, identity, device, network, BehaviourConfig.of(kinds), context)


def load_trust_model(weights_file: Path, threat_dir: Path) -> TrustModel:
    """Read and check weights.json and every threat list it names; raise ConfigError if anything is off."""
    try:
        content = weights_file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(weights_file), f"cannot read: {exc}") from None
    try:
        raw = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(weights_file), f"not JSON: {exc.msg}", line=exc.lineno) from None
    config = parse_config(str(weights_file), raw)
    digest = hashlib.sha256(content)
    lists = []
    for rule in config.network.lists:
        path = threat_dir / rule.file
        address_list = AddressList.load(path, rule.label)
        digest.update(rule.file.encode() + b"\0" + path.read_bytes())
        lists.append(address_list)
    return TrustModel(config, ThreatIntel(lists), digest.hexdigest()[:16], str(weights_file))


@dataclass(frozen=True)
class TrustFiles:
    """Where the trust algorithm's data lives: weights.json and the threat-list folder."""

    weights: Path
    threat_dir: Path

    def load(self) -> TrustModel:
        return load_trust_model(self.weights, self.threat_dir)
