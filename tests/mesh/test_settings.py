"""Settings: environment over YAML over defaults, and one clear line for each kind of mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import SettingsError
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.topology import SERVICES


def load(env: dict[str, str]) -> MeshSettings:
    return load_settings(MeshSettings, env=env, ignore_keys=frozenset(SERVICES))


def test_defaults():
    s = load({})
    assert (s.trust_domain, s.service_port("keys"), s.service_metrics_port("audit")) == ("ztmesh.local", 50053, 9104)
    assert s.tls_files("keys") == (Path("certs/keys.crt"), Path("certs/keys.key"), Path("certs/ca.crt"))


def test_environment_overrides_yaml(tmp_path):
    config = tmp_path / "ztmesh.yaml"
    config.write_text("trust_domain: hospital.example\nport: 6000\nkeys:\n  kek_file: /x\n")
    s = load({"ZTMESH_CONFIG": str(config), "ZTMESH_PORT": "7000", "ZTMESH_DEV_MODE": "yes"})
    assert (s.trust_domain, s.port, s.dev_mode) == ("hospital.example", 7000, True)


@pytest.mark.parametrize(
    ("env", "yaml_text", "expected"),
    [
        ({"ZTMESH_PORT": "fifty"}, None, "ZTMESH_PORT: expected an integer, got 'fifty'"),
        ({"ZTMESH_PORT": "70000"}, None, "ZTMESH_PORT: port 70000 is outside 0-65535"),
        ({"ZTMESH_DEV_MODE": "maybe"}, None, "ZTMESH_DEV_MODE: expected true or false, got 'maybe'"),
        (
            {"ZTMESH_LOG_LEVEL": "LOUD"},
            None,
            "ZTMESH_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR; got 'LOUD'",
        ),
        ({"ZTMESH_GRACE_PERIOD": "-1"}, None, "ZTMESH_GRACE_PERIOD: must be greater than 0, got -1.0"),
        ({}, "prot: 5\n", "ztmesh.yaml: prot: unknown setting"),
        ({}, "port: [1, 2]\n", "ztmesh.yaml: port: expected an integer, got [1, 2]"),
        ({}, "port: : :\n", "ZTMESH_CONFIG: "),
        ({}, "- a list\n", "ZTMESH_CONFIG: "),
    ],
    ids=[
        "not-a-number",
        "out-of-range",
        "bad-bool",
        "bad-choice",
        "negative",
        "unknown-yaml-key",
        "yaml-wrong-type",
        "yaml-syntax",
        "yaml-not-mapping",
    ],
)
def test_bad_settings_name_the_setting(tmp_path, env, yaml_text, expected):
    if yaml_text is not None:
        (tmp_path / "ztmesh.yaml").write_text(yaml_text)
        env = {**env, "ZTMESH_CONFIG": str(tmp_path / "ztmesh.yaml")}
    with pytest.raises(SettingsError) as err:
        load(env)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def run_ztmesh(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZTMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "ztmesh.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ZTMESH_PORT": "http"}, "ztmesh: ZTMESH_PORT: expected an integer, got 'http'"),
        (
            {"ZTMESH_CERT_DIR": "/nonexistent"},
            "ztmesh: ZTMESH_CERT_DIR (ZTMESH_TLS_CERT not set): file /nonexistent/keys.crt does not exist",
        ),
        (
            {"ZTMESH_TLS_KEY": "/nonexistent/keys.key"},
            "ztmesh: ZTMESH_TLS_KEY: file /nonexistent/keys.key does not exist",
        ),
    ],
    ids=["bad-port", "missing-cert-dir", "missing-key-file"],
)
def test_serve_with_bad_setting_exits_with_one_line(pki, tmp_path, env, expected):
    result = run_ztmesh("serve", "keys", env={"ZTMESH_CERT_DIR": str(pki.directory), **env}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_serve_with_a_corrupt_certificate_exits_with_one_line(pki, tmp_path):
    bad = tmp_path / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = run_ztmesh(
        "serve", "keys", env={"ZTMESH_CERT_DIR": str(pki.directory), "ZTMESH_TLS_CERT": str(bad)}, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad} is not a PEM certificate" in lines[0]


def test_certs_init_writes_a_pki_with_spiffe_ids(tmp_path):
    from cryptography import x509

    result = run_ztmesh("certs", "init", "--dir", "out", "--trust-domain", "hospital.example", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("policy", "plugins", "keys", "audit", "envoy", "client"):
        cert = x509.load_pem_x509_certificate((tmp_path / "out" / f"{name}.crt").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://hospital.example/ns/ztmesh/sa/{name}"
        ]
        assert {"localhost", f"{name}.ztmesh.svc", f"{name}.ztmesh.svc.cluster.local"} <= set(
            sans.get_values_for_type(x509.DNSName)
        )
        assert oct((tmp_path / "out" / f"{name}.key").stat().st_mode & 0o777) == "0o600"
    again = run_ztmesh("certs", "init", "--dir", "out", env={}, cwd=tmp_path)
    assert again.returncode == 1 and "pass --force" in again.stderr


def test_readme_settings_tables_are_current() -> None:
    from scripts import settings_tables

    assert settings_tables.main(["--check"]) == 0, "run `python scripts/settings_tables.py`"
