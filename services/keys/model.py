"""Plain types of the keys core: keys, versions, states, operations and access policies."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from ztmesh.keys.algorithms import Algorithm, Purpose
from ztmesh.keys.errors import InvalidArgument
from ztmesh.mesh.errors import SpiffeIdError
from ztmesh.mesh.spiffe import SpiffeId

KEY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class VersionState(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DESTROYED = "destroyed"


class Operation(enum.Enum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    VERIFY = "verify"
    GET_PUBLIC_KEY = "get_public_key"
    ROTATE = "rotate"
    MANAGE_VERSIONS = "manage_versions"


@dataclass(frozen=True)
class AccessPolicy:
    """Operation -> SPIFFE IDs allowed; an ID ending in `/*` matches every ID below that path."""

    grants: dict[Operation, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for operation, patterns in self.grants.items():
            for pattern in patterns:
                body = pattern[:-2] if pattern.endswith("/*") else pattern
                if not body.startswith("spiffe://") or "*" in body:
                    raise InvalidArgument(
                        f"access_policy {operation.value}: {pattern!r} must be a SPIFFE ID, optionally ending in /*"
                    )

    def allows(self, operation: Operation, caller: str) -> bool:
        if not caller:  # a caller without an identity is never granted anything
            return False
        for pattern in self.grants.get(operation, ()):
            if pattern == caller or (pattern.endswith("/*") and caller.startswith(pattern[:-1])):
                return True
        return False

    def grants_anything(self, caller: str) -> bool:
        """Whether `caller` holds at least one grant, i.e. may know that the key exists."""
        return any(self.allows(operation, caller) for operation in self.grants)

    @classmethod
    def owner_only(cls, owner: str) -> AccessPolicy:
        return cls({op: (owner,) for op in Operation})

    def to_json(self) -> dict[str, list[str]]:
        return {op.value: list(ids) for op, ids in self.grants.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> AccessPolicy:
        return cls({Operation(op): tuple(ids) for op, ids in data.items()})


@dataclass
class KeyVersion:
    version: int
    state: VersionState
    public_key: bytes
    wrapped_private: bytes | None
    created_at: datetime
    destroyed_at: datetime | None = None


@dataclass
class Key:
    key_id: str
    purpose: Purpose
    algorithm: Algorithm
    primary_version: int
    access_policy: AccessPolicy
    labels: dict[str, str]
    created_at: datetime
    versions: list[KeyVersion] = field(default_factory=list)
    owner: str = ""  # the creating caller's SPIFFE ID; empty for keys created before owners were recorded

    def version(self, number: int) -> KeyVersion | None:
        return next((v for v in self.versions if v.version == number), None)


def parse_reservations(entries: tuple[str, ...], trust_domain: str, namespace: str) -> dict[str, str]:
    """`ID=SERVICE_ACCOUNT` or `ID=spiffe://…` entries as key id -> the one SPIFFE ID that may create it.
    An id ending in `*` reserves every id it begins (e.g. `audit-checkpoints*` for each checkpoint key)."""
    reserved: dict[str, str] = {}
    for entry in entries:
        key_id, _, owner = entry.partition("=")
        key_id, owner = key_id.strip(), owner.strip()
        if not KEY_ID.fullmatch(key_id.removesuffix("*")) or not owner:
            raise InvalidArgument(f"{entry!r} must be KEY_ID=SERVICE_ACCOUNT or KEY_ID=spiffe://…")
        try:
            spiffe_id = (
                SpiffeId.parse(owner)
                if owner.startswith("spiffe://")
                else SpiffeId.for_workload(trust_domain, namespace, owner)
            )
        except SpiffeIdError as exc:
            raise InvalidArgument(f"{entry!r}: {exc}") from None
        reserved[key_id] = str(spiffe_id)
    return reserved


def reserved_for(reservations: dict[str, str], key_id: str) -> str | None:
    """The SPIFFE ID `key_id` is reserved for: an exact reservation first, else the longest prefix."""
    if key_id in reservations:
        return reservations[key_id]
    prefixes = [p for p in reservations if p.endswith("*") and key_id.startswith(p[:-1])]
    return reservations[max(prefixes, key=len)] if prefixes else None


def check_key_id(key_id: str) -> str:
    if not KEY_ID.fullmatch(key_id or ""):
        raise InvalidArgument(f"key_id {key_id!r} must match {KEY_ID.pattern}")
    return key_id
