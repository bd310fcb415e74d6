"""`ztmesh up` on a fresh folder: a dev PKI is created, all four services come up over mTLS, and a
decision asked with `ztmesh decide` lands in the audit trail (`ztmesh audit query`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.mesh import Pki
from ztmesh.mesh.errors import CertificateError
from ztmesh.mesh.topology import SERVICES


def test_up_starts_all_four_services_over_mtls(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTMESH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ztmesh.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pki = Pki(tmp_path / "certs")
        deadline = time.monotonic() + 60
        for name, info in SERVICES.items():
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    with pki.channel("client", info.port) as channel:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=info.grpc_service), timeout=2
                        )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except (grpc.RpcError, CertificateError):  # certificates may still be being written
                    pass
                assert time.monotonic() < deadline, f"{name} did not report SERVING"
                time.sleep(0.2)
        # Health without a client certificate is refused on the mTLS port.
        with grpc.insecure_channel(f"localhost:{SERVICES['keys'].port}") as plain:
            try:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
                raise AssertionError("plaintext health check on the mTLS port succeeded")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
        decision_id = _decide_and_find_in_audit(tmp_path, env)
        assert decision_id
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ztmesh(cwd, env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ztmesh.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def _decide_and_find_in_audit(cwd, env) -> str:
    decided = _ztmesh(
        cwd, env, "decide", "--subject", "dr.up", "--role", "physician", "--auth-method", "pwd,otp",
        "--assurance", "medium", "--council", "CRM", "--registration", "active", "--device", "laptop-1",
        "--managed", "--compliant", "--encrypted", "--protected", "--patch-age", "2",
        "--classification", "internal", "--type", "schedule", "--purpose", "treatment", "--action", "read",
    )  # fmt: skip
    assert decided.returncode == 0, decided.stdout + decided.stderr  # exit 0 = ALLOW
    decision_id = json.loads(decided.stdout)["decision_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the policy service's spool ships to audit in the background
        found = _ztmesh(cwd, env, "audit", "query", "--decision", decision_id)
        assert found.returncode == 0, found.stderr
        records = [json.loads(line) for line in found.stdout.splitlines()]
        if records:
            assert [r["event"]["subject"] for r in records] == ["dr.up"], records
            return str(decision_id)
        time.sleep(0.3)
    raise AssertionError(f"decision {decision_id} never reached the audit trail")
