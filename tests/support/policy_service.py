"""A real policy service (PolicyService + ext_authz on one mTLS port) in the test process, on the shipped
pack, and a reader of the audit events it made durable in its local spool (no audit service runs, so
every decision record stays there, written by the real emitter)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import Pki, settings_for
from ztmesh.mesh.server import MeshServer
from ztmesh.policy.app import build_app

REPO = Path(__file__).resolve().parents[2]
_FRAME = struct.Struct(">II")  # the spool's frame header (services/audit/spoolfile.py): length, CRC-32
POLICY_ENV = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
    "ZTMESH_REGO_ENGINE": "embedded",
    "ZTMESH_DECISION_CACHE": "true",
}


@dataclasses.dataclass
class PolicyService:
    """The policy service in this process. `stop()` and `start()` again keep the port, as a restarted
    pod behind the same address would."""

    pki: Pki
    data_dir: Path
    port: int = 0
    server: MeshServer | None = None

    def start(self) -> None:
        assert self.server is None, "already running"
        settings = settings_for(self.pki, self.data_dir, port=self.port)
        server = MeshServer(build_app(settings), settings)
        server.start()
        self.server, self.port = server, server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.5)
            self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None

    def audited(self) -> list[dict[str, Any]]:
        """Every event the service made durable in its spool (JSON objects as spooled), oldest first."""
        events = []
        for segment in sorted((self.data_dir / "spool" / "policy").glob("*/*.seg")):
            data, offset = segment.read_bytes(), 0
            while offset + _FRAME.size <= len(data):
                length, crc = _FRAME.unpack_from(data, offset)
                payload = data[offset + _FRAME.size : offset + _FRAME.size + length]
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break  # a frame being written
                events.append(json.loads(payload))
                offset += _FRAME.size + length
        return events

    def decision_record(self, decision_id: str) -> dict[str, Any]:
        """The audit record of one decision (durable before the decision is answered), details parsed."""
        found = [e for e in self.audited() if e.get("decision_id") == decision_id]
        assert len(found) == 1, f"{len(found)} audit records for decision {decision_id!r}"
        return {**found[0], "details": json.loads(found[0]["details"])}


@contextlib.contextmanager
def running_policy_service(pki: Pki, data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[PolicyService]:
    """The policy service on the shipped pack, with `env` (ZTMESH_* settings) on top; stopped afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**POLICY_ENV, **(env or {})}.items():
            patch.setenv(key, value)
        patch.delenv("ZTMESH_REDIS_URL", raising=False)
        service = PolicyService(pki, data_dir)
        service.start()
        try:
            yield service
        finally:
            service.stop()
