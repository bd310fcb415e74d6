"""Attack: a client certificate the mesh CA vouches for, carrying a malformed SPIFFE ID (or several).

Every service answers UNAUTHENTICATED (never UNKNOWN with a traceback), logs one warning per
certificate however often it is presented, and keeps serving well-formed callers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.support.service_mesh import ServiceMesh, service_mesh, status_of
from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh._proto.keys.v1 import keys_pb2
from ztmesh._proto.plugins.v1 import plugins_pb2
from ztmesh._proto.policy.v1 import policy_pb2

MALFORMED = {
    "upper-case-trust-domain": ["spiffe://ZTMESH.LOCAL/ns/ztmesh/sa/client"],
    "dot-dot-segment": ["spiffe://ztmesh.local/ns/../sa/client"],
    "empty-trust-domain": ["spiffe:///ns/ztmesh/sa/client"],
    "trailing-slash": ["spiffe://ztmesh.local/ns/ztmesh/sa/client/"],
    "query": ["spiffe://ztmesh.local/ns/ztmesh/sa/client?as=operator"],
    "percent-encoded": ["spiffe://ztmesh.local/ns/ztmesh/sa/cl%69ent"],
    "upper-case-scheme": ["SPIFFE://ztmesh.local/ns/ztmesh/sa/client"],
    "trailing-newline": ["spiffe://ztmesh.local/ns/ztmesh/sa/client\n"],  # `$` alone would let it pass
    "two-spiffe-ids": ["spiffe://ztmesh.local/ns/ztmesh/sa/client", "spiffe://ztmesh.local/ns/ztmesh/sa/policy"],
}

# One RPC per service, each of which a well-formed member identity may call.
CALLS: dict[str, Callable[[Any], Any]] = {
    "audit": lambda stub: list(stub.Query(audit_pb2.QueryRequest(page_size=1), timeout=10)),
    "keys": lambda stub: stub.ListKeys(keys_pb2.ListKeysRequest(), timeout=10),
    "plugins": lambda stub: stub.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=10),
    "policy": lambda stub: stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10),
}


@pytest.fixture(scope="module")
def mesh(pki, tmp_path_factory) -> Iterator[ServiceMesh]:
    for name, uris in MALFORMED.items():
        pki.issue_presenting(f"malformed-{name}", uris)
    with service_mesh(pki, tmp_path_factory.mktemp("mesh")) as running:
        yield running


@pytest.mark.parametrize("service", sorted(CALLS))
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_spiffe_id_is_unauthenticated(mesh, service, name, caplog) -> None:
    caplog.set_level(logging.INFO)
    stub = mesh.stub(service, f"malformed-{name}")
    for _ in range(3):
        code, details = status_of(lambda: CALLS[service](stub))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
        assert "SPIFFE ID" in details
    assert not [r for r in caplog.records if r.exc_info or "Exception calling application" in r.getMessage()]
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "client certificate refused" in r.getMessage()
    ]
    assert len(warnings) <= 1  # once per certificate, not once per call (the first service to see it logs it)

    assert status_of(lambda: CALLS[service](mesh.stub(service, "client")))[0] == grpc.StatusCode.OK


def test_a_certificate_without_a_spiffe_id_is_refused_too(mesh, pki) -> None:
    pki.issue_presenting("no-spiffe-id", ["https://ztmesh.local/ns/ztmesh/sa/client"])
    for service, call in CALLS.items():
        code, _ = status_of(lambda: call(mesh.stub(service, "no-spiffe-id")))  # noqa: B023 - called at once
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), service
