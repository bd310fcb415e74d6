"""A real Envoy running the shipped gateway configuration (deploy/envoy/), for tests.

The configuration is used as the pods get it, with only paths and ports rewritten: certificates are
laid out like a kubelet-projected Secret (so rotation works the same way), ext_authz goes over mTLS
to whatever policy port the test gives, and the upstream is whatever the test runs.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO_ROOT / "deploy" / "envoy"
CONFIG_NAME = "envoy-gateway.yaml"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def kubelet_secret_volume(volume: Path, version: str, files: dict[str, Path]) -> None:
    """Lay out (or atomically swap) a folder the way kubelet projects a Secret: ..data -> ..<version>."""
    target = volume / f"..{version}"
    target.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, target / name)
    staging = volume / "..data_tmp"
    staging.symlink_to(target.name)
    os.replace(staging, volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(x for x in config["static_resources"]["listeners"] if x["name"] == name)


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def http_filters(config: dict[str, Any], listener_name: str = "gateway") -> list[dict[str, Any]]:
    """The HTTP filter chain of a listener's connection manager (a live list: edit it in place)."""
    hcm = listener(config, listener_name)["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def trust_token_keys(jwks: str) -> Callable[[dict[str, Any]], None]:
    """A config edit that puts an identity provider's keys (JWKS JSON) in place of the shipped placeholder."""

    def edit(config: dict[str, Any]) -> None:
        jwt = next(f for f in http_filters(config) if f["name"] == "envoy.filters.http.jwt_authn")
        for provider in jwt["typed_config"]["providers"].values():
            provider["local_jwks"] = {"inline_string": jwks}

    return edit


def wait_for(condition: Any, what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    https_port: int
    stats_port: int
    admin_port: int
    pki: Path
    tls: Path

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter=^{name}$", timeout=5) as r:
            for line in r.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0

    def served_certificate(self) -> bytes:
        """DER of the certificate the gateway listener presents to a new connection."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def client_context(self, identity: str | None = "client") -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if identity:
            context.load_cert_chain(self.pki / f"{identity}.crt", self.pki / f"{identity}.key")
        context.check_hostname = False
        return context

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, identity: str | None = "client"
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.https_port, context=self.client_context(identity), timeout=10
        )
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@contextlib.contextmanager
def run_gateway(
    envoy_binary: str,
    root: Path,
    pki: Path,
    *,
    policy_port: int,
    upstream_port: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
    concurrency: int = 2,
) -> Iterator[Gateway]:
    """Start Envoy on the shipped config with its `envoy` identity from `pki`; stop it afterwards.

    `edit` changes the parsed config after the paths and ports are rewritten (e.g. the token keys)."""
    etc, tls = root / "etc", root / "tls"
    kubelet_secret_volume(
        tls, "v1", {"tls.crt": pki / "envoy.crt", "tls.key": pki / "envoy.key", "ca.crt": pki / "ca.crt"}
    )
    etc.mkdir()
    https_port, stats_port, admin_port = free_ports(3)
    for source in ENVOY_DIR.glob("*.yaml"):
        if source.name == "kustomization.yaml":
            continue
        text = source.read_text().replace("/etc/envoy", str(etc)).replace("/var/run/ztmesh/tls", str(tls))
        (etc / source.name).write_text(text)
    config = yaml.safe_load((etc / CONFIG_NAME).read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener(config, "gateway")["address"]["socket_address"]["port_value"] = https_port
    listener(config, "stats")["address"]["socket_address"]["port_value"] = stats_port
    for name, port in (("ztmesh_policy", policy_port), ("upstream", upstream_port), ("envoy_admin", admin_port)):
        endpoint = cluster(config, name)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
        cluster(config, name)["type"] = "STATIC"
    if edit is not None:
        edit(config)
    (etc / CONFIG_NAME).write_text(yaml.safe_dump(config))
    validate = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(etc / CONFIG_NAME), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if validate.returncode != 0:
        raise AssertionError(validate.stdout + validate.stderr)
    log = (root / "envoy.log").open("wb")
    process = subprocess.Popen(
        [
            envoy_binary,
            "-c",
            str(etc / CONFIG_NAME),
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--concurrency",
            str(concurrency),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gateway = Gateway(process, https_port, stats_port, admin_port, pki, tls)
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/ready", timeout=2).status == 200,
            "Envoy to become ready on the stats listener",
        )
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
