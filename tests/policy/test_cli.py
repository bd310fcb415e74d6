"""`ztmesh policy check|test` offline and `ztmesh decide` (in process and against the service)."""

from __future__ import annotations

import json

import pytest

from ztmesh.cli import main

PHYSICIAN = ["--subject", "dr.ana", "--role", "physician", "--auth-method", "pwd,otp", "--assurance", "medium",
             "--council", "CRM", "--registration", "active", "--type", "chart", "--consent", "treatment",
             "--purpose", "treatment", "--source-ip", "10.1.2.3", "--device", "d1", "--managed", "--compliant",
             "--encrypted", "--protected", "--patch-age", "3"]  # fmt: skip


def test_policy_test_and_check_on_the_pack(bundle_dir, capsys):
    assert main(["policy", "test", str(bundle_dir), "-v"]) == 0
    out = capsys.readouterr().out
    assert "authz_test.rego:" in out and out.strip().endswith("PASS: 16/16")
    assert main(["policy", "check", str(bundle_dir)]) == 0
    assert "OK, revision" in capsys.readouterr().out


def test_policy_test_names_the_failing_test(bundle_dir, capsys):
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"patient_data": 75', '"patient_data": 80'))
    assert main(["policy", "test", str(bundle_dir)]) == 1
    out = capsys.readouterr().out
    assert "authz_test.rego:46: data.ztmesh.authz_test.test_patient_data_boundary: FAIL (false or undefined)" in out
    assert "FAIL: 2/16" in out
    assert main(["policy", "check", str(bundle_dir)]) == 1
    assert "authz_test.rego:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("classification", "code", "outcome"),
    [("patient_data", 0, "allow"), ("research_data", 0, "allow"), ("top_secret", 2, "deny")],
)
def test_decide_locally(capsys, classification, code, outcome):
    assert main(["decide", "--local", "--classification", classification, *PHYSICIAN]) == code
    assert json.loads(capsys.readouterr().out)["outcome"] == outcome


def test_decide_from_a_file_against_the_service(pki, policy_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZTMESH_CERT_DIR", str(pki.directory))
    monkeypatch.setenv("ZTMESH_POLICY_ADDR", f"localhost:{policy_server.port}")
    request = {
        "subject": {"id": "dr.ana", "roles": ["physician", "on_call"], "auth_method": "pwd", "assurance": "low",
                    "registration": {"council": "CRM", "status": "active"}},
        "device": {"id": "d1", "managed": True, "compliant": True, "patch_age_days": 3, "disk_encrypted": True,
                   "endpoint_protection": True},
        "resource": {"type": "chart", "classification": "critical_patient_data", "consented_purposes": ["treatment"]},
        "action": "read",
        "context": {"source_ip": "10.1.2.3", "user_agent": "cli", "purpose": "treatment"},
    }  # fmt: skip
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    assert main(["decide", "--file", str(path)]) == 3
    reply = json.loads(capsys.readouterr().out)
    assert reply["decision"] == "DECISION_CHALLENGE" and reply["step_up"] == ["mfa", "supervisor_approval"]
    assert main(["policy", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "opa-embedded"
    assert main(["policy", "signal", "dr.ana", "impossible_travel"]) == 0
    assert json.loads(capsys.readouterr().out)["behaviour_score"] == pytest.approx(0.4)


def test_policy_sign_writes_opa_and_ml_dsa_signatures_and_prints_the_pins(bundle_dir, bundle_keys, tmp_path, capsys):
    from ztmesh.policy.bundle import read_bundle
    from ztmesh.policy.bundle_signing import parse_trusted_signers, verify_bundle

    pem = tmp_path / "opa.pem"
    assert bundle_keys.sign(bundle_dir, opa_key=pem) == 0
    out = capsys.readouterr().out
    revision = read_bundle(bundle_dir).revision
    assert f"signed revision {revision}" in out and pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    (pins,) = [line.split("ZTMESH_POLICY_TRUSTED_SIGNERS=", 1)[1] for line in out.splitlines() if "TRUSTED" in line]
    assert pins == bundle_keys.pins()
    assert json.loads((bundle_dir / ".manifest").read_text())["revision"] == revision
    signature = verify_bundle(bundle_dir, parse_trusted_signers(pins.split(",")))
    assert (signature.revision, signature.signers) == (revision, (bundle_keys.classical, bundle_keys.post_quantum))


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        (("bundle-signer-ed",), "--key an Ed25519 key (OPA checks it) and --key an ML-DSA-65 key"),
        (("bundle-signer-pq", "bundle-signer-pq"), "got bundle-signer-pq (ML_DSA_65), bundle-signer-pq (ML_DSA_65)"),
        (("bundle-signer-ed", "no-such-key"), "keys service: NOT_FOUND"),
    ],
)
def test_policy_sign_needs_one_ed25519_and_one_ml_dsa_key(bundle_dir, bundle_keys, capsys, keys, words):
    assert bundle_keys.sign(bundle_dir, *keys) == 1
    assert words in capsys.readouterr().err
    assert not (bundle_dir / ".signatures.json").exists()


def test_policy_sign_refuses_a_bundle_that_fails_its_checks(bundle_dir, bundle_keys, capsys):
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"patient_data": 75', '"patient_data": 80'))
    assert bundle_keys.sign(bundle_dir) == 1
    assert "tests failed" in capsys.readouterr().err and not (bundle_dir / ".signatures.json").exists()
