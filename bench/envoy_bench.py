"""envoy: HTTP through a real Envoy on the shipped gateway config (deploy/envoy/) with wrk, four set-ups
in one run, same upstream, same request:

  (a) Envoy without ext_authz (the ceiling),
  (b) Envoy -> ztmesh policy service ext_authz (mTLS), decision cache off,
  (c) Envoy -> ztmesh with the decision cache warm (the default),
  (d) Envoy -> the OPA-Envoy plugin design: bench/opa_envoy, a Go ext_authz server evaluating a prepared
      OPA query of an equivalent Rego policy (bench/opa_envoy/policy.rego), built here with `go build`.

The gateway listener does not require client certificates, so wrk speaks HTTPS to the shipped listener
directly; the caller is an end user with a bearer token that the gateway's jwt_authn filter verifies
(the keys of a throwaway identity provider replace the shipped placeholder). The request is Dr. Ana
reading a patient record for treatment, which the default pack allows (trust 91.3): every set-up must
answer 200 from the upstream (a second Envoy with a mesh certificate that answers 200 itself).
The ztmesh policy service runs as `ztmesh serve policy` with ZTMESH_PROCESSES=2 (one per core).

Run: `python -m bench.envoy_bench` (part of `make bench`). Numbers compare within one run only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import audit_service, free_port, record, server_process
from tests.support.gateway import Gateway, http_filters, run_gateway, trust_token_keys
from tests.support.servers import EnvoyServer, find_envoy, start_envoy
from tests.support.tokens import TokenIssuer, clinician
from ztmesh.mesh.certs import CertificateAuthority, init_dev_pki, issue_identity

ROOT = Path(__file__).resolve().parent.parent
OPA_ENVOY_SRC = ROOT / "bench" / "opa_envoy"
OPA_ENVOY_BIN = ROOT / ".tools" / "bin" / "ztmesh-opa-envoy"
POLICY_PATHS = {
    "ZTMESH_POLICY_DIR": str(ROOT / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(ROOT / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(ROOT / "policies" / "threat"),
    "ZTMESH_POLICY_SIGNING_REQUIRED": "false",  # the shipped pack is not signed
}
PATH = "/api/patients/42"
WRK = ["wrk", "-t2", "-c32", "-d10s", "--latency"]
WARMUP = ["wrk", "-t2", "-c32", "-d2s"]


@dataclass(frozen=True)
class WrkResult:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(name: str, output: str) -> WrkResult:
    def find(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output without /{pattern}/:\n{output}")
        return match.group(1)

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        name,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def wrk(name: str, url: str, headers: dict[str, str]) -> WrkResult:
    args = [arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")]
    subprocess.run([*WARMUP, *args, url], check=True, capture_output=True, text=True)  # connections, caches
    run = subprocess.run([*WRK, *args, url], check=True, capture_output=True, text=True)
    return parse_wrk(name, run.stdout)


# --- the pieces --------------------------------------------------------------------------------------------


def upstream_config(certs: Path, port: int) -> Callable[[int], str]:
    """A second Envoy as the protected application: mTLS with a mesh certificate, answers 200 itself
    (echoing the trust score it was sent, so the run can show every set-up saw the same decision)."""

    def config(admin_port: int) -> str:
        tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [
                        {"certificate_chain": {"filename": str(certs / "backend.crt")},
                         "private_key": {"filename": str(certs / "backend.key")}}
                    ],
                    "validation_context": {"trusted_ca": {"filename": str(certs / "ca.crt")}},
                },
            },
        }  # fmt: skip
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": '{"ok": true}'}},
            "response_headers_to_add": [
                {"header": {"key": "x-seen-trust-score", "value": "%REQ(x-ztmesh-trust-score)%"}}
            ],
        }
        hcm = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                ".HttpConnectionManager",
                "stat_prefix": "backend",
                "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [route]}]},
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }
                ],
            },
        }
        return json.dumps(
            {
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
                "static_resources": {
                    "listeners": [
                        {
                            "name": "backend",
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                            "filter_chains": [{"transport_socket": tls, "filters": [hcm]}],
                        }
                    ]
                },
            }
        )

    return config


def without_ext_authz(config: dict[str, Any]) -> None:
    filters = http_filters(config)
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_authz"]


def build_opa_envoy() -> Path:
    """`go build` bench/opa_envoy into .tools/bin (a no-op when the Go build cache is warm)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    OPA_ENVOY_BIN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(OPA_ENVOY_BIN), "."],
        cwd=OPA_ENVOY_SRC, env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return OPA_ENVOY_BIN


@contextlib.contextmanager
def opa_envoy_server(binary: Path, certs: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    args = [
        str(binary), "-addr", f"127.0.0.1:{port}", "-policy", str(OPA_ENVOY_SRC / "policy.rego"),
        "-pack", POLICY_PATHS["ZTMESH_POLICY_DIR"] + "/data.json", "-weights", POLICY_PATHS["ZTMESH_TRUST_WEIGHTS"],
        "-threat", POLICY_PATHS["ZTMESH_THREAT_DIR"],
        "-cert", str(certs / "policy.crt"), "-key", str(certs / "policy.key"), "-ca", str(certs / "ca.crt"),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"opa-envoy exited: {process.stderr.read().decode() if process.stderr else ''}")
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("opa-envoy did not listen within 30 s")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def first_answer(gateway: Gateway, headers: dict[str, str]) -> tuple[int, str]:
    """One request before the load: its status and the trust score the upstream saw."""
    status, response_headers, body = gateway.request("GET", PATH, headers, identity=None)
    if status != 200:
        raise RuntimeError(f"the benchmark request was answered {status}, not 200: {body[:300]!r}")
    return status, response_headers.get("x-seen-trust-score", "")


HEADER = (
    f"{'set-up':<46} {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'/ceiling':>8}  {'/OPA req/s':>10}  "
    f"{'/OPA p99':>8}  {'non-2xx':>7}  {'sock err':>8}"
)


def row(result: WrkResult, ceiling: WrkResult, opa: WrkResult | None) -> str:
    vs_opa = f"{result.rps / opa.rps:9.2f}x" if opa and opa.rps else f"{'-':>10}"
    p99_vs_opa = f"{result.p99_ms / opa.p99_ms:7.2f}x" if opa and opa.p99_ms else f"{'-':>8}"
    return (
        f"{result.name:<46} {result.rps:>8.0f}  {result.p50_ms:>7.2f}  {result.p99_ms:>7.2f}  "
        f"{result.rps / ceiling.rps:>7.2f}x  {vs_opa}  {p99_vs_opa}  {result.non_2xx:>7}  {result.socket_errors:>8}"
    )


def main() -> int:
    if shutil.which("wrk") is None:
        print("envoy bench: wrk is not installed (Debian package `wrk`, `make setup`)", file=sys.stderr)
        return 1
    envoy = str(find_envoy())
    print("== envoy: wrk -t2 -c32 -d10s --latency through the gateway (shipped config), same upstream ==")
    opa_binary: Path | None = None
    try:
        opa_binary = build_opa_envoy()
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(f"   OPA-Envoy server not built, its row is left out: {str(detail).strip()[-400:]}")
    results: list[WrkResult] = []
    scores: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ztmesh-envoy-bench-") as tmp:
        base = Path(tmp)
        certs = base / "pki"
        init_dev_pki(certs, "ztmesh.local", "ztmesh")
        ca = CertificateAuthority.load(certs / "ca.crt", certs / "ca.key")
        issue_identity(ca, certs, "backend", "ztmesh.local", "ztmesh")
        idp = TokenIssuer()
        headers = {
            "authorization": f"Bearer {idp.token(clinician(), ttl_s=3600)}",
            "x-processing-purpose": "treatment",
            "user-agent": "ehr/2.1",
        }
        backend_port = free_port()
        backend: EnvoyServer = start_envoy(upstream_config(certs, backend_port), base_dir=base)
        counter = iter(range(100))

        @contextlib.contextmanager
        def gateway(policy_port: int, *edits: Callable[[dict[str, Any]], None]) -> Iterator[Gateway]:
            root = base / f"gateway-{next(counter)}"
            root.mkdir()

            def edit(config: dict[str, Any]) -> None:
                trust_token_keys(idp.jwks())(config)
                for change in edits:
                    change(config)

            with run_gateway(envoy, root, certs, policy_port=policy_port, upstream_port=backend_port, edit=edit) as gw:
                yield gw

        def measure(name: str, gw: Gateway) -> None:
            _, scores[name] = first_answer(gw, headers)
            result = wrk(name, f"https://127.0.0.1:{gw.https_port}{PATH}", headers)
            results.append(result)
            print(f"   measured {name}: {result.rps:.0f}/s", flush=True)

        try:
            with gateway(free_port(), without_ext_authz) as gw:
                measure("(a) Envoy, no ext_authz (ceiling)", gw)
            # Every decision is stored by the audit service before Envoy gets its answer, as in production.
            ztmesh_env = {**POLICY_PATHS, "ZTMESH_PROCESSES": "2", "ZTMESH_LOG_LEVEL": "ERROR"}
            with audit_service(certs) as audit:
                for name, cache in (
                    ("(b) Envoy -> ztmesh, decision cache off", "false"),
                    ("(c) Envoy -> ztmesh, decision cache warm", "true"),
                ):
                    port = free_port()
                    data = str(base / f"data-{cache}")
                    with server_process(
                        ["ztmesh.cli", "serve", "policy"], certs, port, **ztmesh_env, **audit.env, ZTMESH_DATA_DIR=data,
                        ZTMESH_DECISION_CACHE=cache,
                    ):  # fmt: skip
                        with gateway(port) as gw:
                            measure(name, gw)
            if opa_binary is not None:
                port = free_port()
                with opa_envoy_server(opa_binary, certs, port), gateway(port) as gw:
                    measure("(d) Envoy -> OPA-Envoy design (Go, OPA 1.22.2)", gw)
        finally:
            backend.stop()
    ceiling = results[0]
    opa = next((r for r in results if r.name.startswith("(d)")), None)
    print()
    print(HEADER)
    for result in results:
        print(row(result, ceiling, opa))
    print("   trust score the upstream saw: " + ", ".join(f"{n[:3]} {s or '-'}" for n, s in scores.items()))
    print(f"   {sum(r.requests for r in results)} requests; every set-up must answer 200 from the upstream (non-2xx 0)")
    off = next((r for r in results if r.name.startswith("(b)")), None)
    warm = next((r for r in results if r.name.startswith("(c)")), None)
    if warm is not None:
        record("envoy_warm_ceiling", warm.rps / ceiling.rps)
    if opa is not None:
        for key, result in (("off", off), ("warm", warm)):
            if result is not None:
                record(f"envoy_{key}_opa", result.rps / opa.rps)
                record(f"envoy_{key}_opa_p99", result.p99_ms / opa.p99_ms)
        for result in results[1:3]:
            verdict = "meets" if result.rps >= opa.rps and result.p99_ms <= opa.p99_ms else "does not meet"
            print(f"   target: {result.name[:3]} {verdict} the OPA-Envoy throughput and p99")
    failed = [r.name for r in results if r.non_2xx or r.socket_errors]
    if failed:
        print(f"envoy bench: non-2xx answers or socket errors in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
