"""SPIFFE IDs and the composable authorizers that decide which callers may invoke which RPC.

An authorizer is any callable taking the caller's SPIFFE ID (or None for an unidentified peer)
and returning True to allow. Build them from the small functions below, in the manner of
py-spiffe's `authorize_id` / `authorize_one_of` / `authorize_member_of`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ztmesh.mesh.errors import SpiffeIdError

Authorizer = Callable[["SpiffeId | None"], bool]

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A parsed `spiffe://<trust-domain>/<path>` identity."""

    trust_domain: str
    path: str

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        if not value.startswith("spiffe://"):
            raise SpiffeIdError(f"not a SPIFFE ID (must start with spiffe://): {value!r}")
        rest = value[len("spiffe://") :]
        trust_domain, _, path = rest.partition("/")
        if not trust_domain or not _TRUST_DOMAIN.fullmatch(trust_domain):
            raise SpiffeIdError(f"invalid trust domain in SPIFFE ID {value!r}")
        segments = path.split("/") if path else []
        if any(not _PATH_SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
            raise SpiffeIdError(f"invalid path in SPIFFE ID {value!r}")
        return cls(trust_domain, "/" + path if path else "")

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The ID a Kubernetes workload carries: spiffe://<td>/ns/<namespace>/sa/<service account>."""
        return cls.parse(f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")

    @property
    def service_account(self) -> str | None:
        parts = self.path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa":
            return parts[3]
        return None

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def authorize_any() -> Authorizer:
    """Any peer that presented a valid certificate with a SPIFFE ID."""
    return lambda caller: caller is not None


def authorize_member_of(trust_domain: str) -> Authorizer:
    """Any workload of the given trust domain."""
    return lambda caller: caller is not None and caller.trust_domain == trust_domain


def authorize_one_of(ids: Iterable[SpiffeId | str]) -> Authorizer:
    """Exactly the listed identities."""
    allowed = frozenset(SpiffeId.parse(i) if isinstance(i, str) else i for i in ids)
    return lambda caller: caller is not None and caller in allowed


def authorize_service_accounts(trust_domain: str, namespace: str, names: Iterable[str]) -> Authorizer:
    """The named mesh workloads (`spiffe://<td>/ns/<ns>/sa/<name>`)."""
    return authorize_one_of(SpiffeId.for_workload(trust_domain, namespace, n) for n in names)


def authorize_nobody() -> Authorizer:
    return lambda caller: False


def authorize_either(*authorizers: Authorizer) -> Authorizer:
    """Allowed when any of the authorizers allows."""
    return lambda caller: any(a(caller) for a in authorizers)
