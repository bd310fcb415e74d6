"""Plugin manifests: what a plugin claims to be and needs, validated field by field, the exact bytes
its signature covers, and the signature as it is kept with the module."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ztmesh.plugins.errors import InvalidPlugin
from ztmesh.plugins.sandbox import Limits

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
SIGNING_DOMAIN = b"ztmesh-plugin-v1\n"


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    functions: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    capabilities: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise InvalidPlugin(f"manifest.name {self.name!r} must match {NAME.pattern}")
        if not SEMVER.fullmatch(self.version):
            raise InvalidPlugin(f"manifest.version {self.version!r} is not a semantic version")
        if not self.functions:
            raise InvalidPlugin("manifest.functions must name at least one exported function")
        for function in self.functions:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", function):
                raise InvalidPlugin(f"manifest.functions: {function!r} is not a function name")
        for name in Limits.__dataclass_fields__:
            if getattr(self.limits, name) < 0:
                raise InvalidPlugin(f"manifest.limits.{name} must not be negative")
        if len(self.description) > 1000:
            raise InvalidPlugin("manifest.description is longer than 1000 characters")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["functions"] = list(self.functions)
        body["capabilities"] = list(self.capabilities)
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        limits = Limits(**{k: int(v) for k, v in data.get("limits", {}).items() if k in Limits.__dataclass_fields__})
        return cls(
            data["name"],
            data["version"],
            tuple(data["functions"]),
            limits,
            tuple(data.get("capabilities", ())),
            data.get("description", ""),
        )


@dataclass(frozen=True)
class ModuleSignature:
    """A module's signature and its signer, kept with the module so that every load checks it again
    without trusting anything but the trusted-signer list."""

    key_id: str
    key_version: int
    algorithm: str  # e.g. "ML-DSA-65" (ztmesh.keys.algorithms.Algorithm values)
    public_key: bytes
    signature: bytes


def signing_message(module: bytes, manifest: Manifest) -> bytes:
    """What the plugin signature covers: a domain tag, the module's SHA-256 and the canonical manifest
    (JSON, sorted keys, no whitespace). Changing one byte of either invalidates the signature."""
    canonical = json.dumps(manifest.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SIGNING_DOMAIN + hashlib.sha256(module).hexdigest().encode() + b"\n" + canonical.encode()
