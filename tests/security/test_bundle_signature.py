"""Attack: a policy bundle that was not signed, as it is, by the operator's trusted signers. Outside
dev mode the policy service refuses it — a tampered, missing or extra file, a signature by another
key (another key id, or a look-alike key under the trusted id), an altered signature file, an
older signed bundle replayed (also across a restart), no signature at all — and the bundle that
was serving keeps serving. The same signature is OPA's: the real `opa` binary accepts a bundle
ztmesh signed and refuses the tampered one."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from tests.policy.conftest import PACK, serve_policy_from
from tests.support.bundle_keys import BundleKeys
from tests.support.mesh import Pki, running, settings_for
from tests.support.servers import MissingComponent, ServerStartError, start_opa
from ztmesh._proto.keys.v1 import keys_pb2
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.mesh.errors import SettingsError
from ztmesh.policy.app import build_app
from ztmesh.policy.bundle import read_bundle
from ztmesh.policy.bundle_signing import SIGNATURES_FILE, SigningKeys, sign_bundle


class PolicyService:
    """The policy service in this process (the environment says which signers it trusts)."""

    def __init__(self, pki: Pki, data_dir: Path) -> None:
        self.pki, self.data_dir = pki, data_dir

    def __enter__(self) -> policy_pb2_grpc.PolicyServiceStub:
        settings = settings_for(self.pki, self.data_dir)
        self._running = running(build_app(settings), settings)
        server = self._running.__enter__()
        self._channel = self.pki.channel("client", server.port)
        return policy_pb2_grpc.PolicyServiceStub(self._channel)

    def __exit__(self, *exc: object) -> None:
        self._channel.close()
        self._running.__exit__(None, None, None)


@pytest.fixture
def signed_dir(tmp_path: Path, bundle_keys: BundleKeys, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the pack signed with the trusted pair, and the service configured to require it."""
    folder = tmp_path / "rego"
    shutil.copytree(PACK, folder)
    assert bundle_keys.sign(folder) == 0
    serve_policy_from(monkeypatch, folder)
    monkeypatch.setenv("ZTMESH_POLICY_SIGNING_REQUIRED", "true")
    monkeypatch.setenv("ZTMESH_POLICY_TRUSTED_SIGNERS", bundle_keys.pins())
    return folder


@pytest.fixture
def service(pki: Pki, tmp_path: Path, signed_dir: Path) -> Iterator[policy_pb2_grpc.PolicyServiceStub]:
    with PolicyService(pki, tmp_path / "policy") as stub:
        yield stub


def _info(stub: policy_pb2_grpc.PolicyServiceStub) -> policy_pb2.PolicyInfo:
    return stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)


def _allowed(stub: policy_pb2_grpc.PolicyServiceStub) -> policy_pb2.DecideResponse:
    request = policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id="dr.ana", roles=["physician"], auth_method="pwd,otp",
                                   assurance=policy_pb2.ASSURANCE_LEVEL_MEDIUM),
        resource=policy_pb2.Resource(type="report", classification="public", id="r-1"),
        action="read",
    )  # fmt: skip
    return stub.Decide(request, timeout=10)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


class ForeignSigner:
    """Keys that are not the keys service's: a look-alike pair under the trusted key ids."""

    def __init__(self) -> None:
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.pq = mldsa.MLDSA65PrivateKey.generate()

    def _key(self, key_id: str) -> ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey:
        return self.ed if key_id.endswith("-ed") else self.pq

    def public_key(self, key_id: str) -> tuple[int, bytes]:
        return 1, self._key(key_id).public_key().public_bytes_raw()

    def sign(self, key_id: str, message: bytes) -> tuple[bytes, int]:
        return self._key(key_id).sign(message), 1


def _resign_by_foreign_keys(folder: Path, keys: BundleKeys) -> None:
    _edit(folder / "data.json", '"public": 30', '"public": 10')
    sign_bundle(folder, read_bundle(folder).revision, SigningKeys(keys.classical, keys.post_quantum), ForeignSigner())


def _resign_by_other_service_keys(folder: Path, keys: BundleKeys) -> None:
    keys.create("intruder-ed", keys_pb2.ALGORITHM_ED25519)
    keys.create("intruder-pq", keys_pb2.ALGORITHM_ML_DSA_65)
    _edit(folder / "data.json", '"public": 30', '"public": 10')
    assert keys.sign(folder, "intruder-ed", "intruder-pq") == 0


def _lower_public_minimum(folder: Path) -> None:
    _edit(folder / "data.json", '"public": 30', '"public": 10')


def _unsign(folder: Path) -> None:
    _lower_public_minimum(folder)
    (folder / SIGNATURES_FILE).unlink()


def _swap_pq_signature(folder: Path, keys: BundleKeys) -> None:
    _lower_public_minimum(folder)
    document = json.loads((folder / SIGNATURES_FILE).read_text())
    other = ForeignSigner().pq.sign(b"something else")
    document["ztmesh_mldsa65"] = base64.urlsafe_b64encode(other).rstrip(b"=").decode()
    (folder / SIGNATURES_FILE).write_text(json.dumps(document))


# (attack, what to do to the signed folder, the file the refusal names, words of the refusal). Each
# changes what the policy says: a signature file altered alone changes nothing that serves.
ATTACKS: list[tuple[str, Callable[[Path, BundleKeys], object], str, str]] = [
    ("tampered file", lambda d, k: _edit(d / "data.json", '"public": 30', '"public": 10'), "data.json",
     "changed since the bundle was signed"),
    ("tampered policy", lambda d, k: _edit(d / "authz.rego", "count(deny) > 0", "count(deny) > 99"), "authz.rego",
     "changed since the bundle was signed"),
    ("missing file", lambda d, k: (d / "authz_test.rego").unlink(), "authz_test.rego", "signed but missing"),
    ("extra file", lambda d, k: (d / "backdoor.rego").write_text("package ztmesh.backdoor\n\nopen := true\n"),
     "backdoor.rego", "not covered by its signature"),
    ("wrong key id", _resign_by_other_service_keys, SIGNATURES_FILE, "intruder-ed"),
    ("look-alike key under the trusted id", _resign_by_foreign_keys, SIGNATURES_FILE, "not a trusted signer"),
    ("altered signature file", _swap_pq_signature, SIGNATURES_FILE, "does not verify"),
    ("no signature", lambda d, k: _unsign(d), SIGNATURES_FILE, "not signed"),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "change", "file", "words"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_an_untrusted_bundle_is_refused_and_the_old_one_keeps_serving(
    service, signed_dir, bundle_keys, attack, change, file, words
):
    serving = _info(service).revision
    assert serving == read_bundle(signed_dir).revision and _allowed(service).policy_revision == serving
    change(signed_dir, bundle_keys)
    with pytest.raises(grpc.RpcError) as refused:
        service.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=30)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"{file}: " in refused.value.details() and words in refused.value.details(), refused.value.details()
    info = _info(service)
    assert info.revision == serving and words in info.last_error
    decision = _allowed(service)
    assert decision.policy_revision == serving and "minimum 30 for public" in decision.reasons[0]


def test_a_replayed_older_signed_bundle_is_refused_also_after_a_restart(pki, tmp_path, signed_dir, bundle_keys):
    older = tmp_path / "older"
    shutil.copytree(signed_dir, older)  # v1, signed, serving first
    with PolicyService(pki, tmp_path / "policy") as stub:
        first = _info(stub).revision
        _edit(signed_dir / "data.json", '"public": 30', '"public": 31')
        assert bundle_keys.sign(signed_dir) == 0  # v2, signed later
        second = stub.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=30).revision
        assert second != first
        shutil.rmtree(signed_dir)
        shutil.copytree(older, signed_dir)  # v1 again, with its valid signature
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=30)
        assert "an older signed bundle is not loaded again" in refused.value.details()
        assert _info(stub).revision == second
    # A restarted service (same data folder) does not take the replay either.
    with pytest.raises(SettingsError, match="an older signed bundle is not loaded again"):
        build_app(settings_for(pki, tmp_path / "policy"))
    # Signed anew, the old content is a legitimate rollback.
    assert bundle_keys.sign(signed_dir) == 0
    with PolicyService(pki, tmp_path / "policy") as stub:
        assert _info(stub).revision == first


def test_outside_dev_mode_an_unsigned_bundle_or_no_signer_list_stops_start_up(pki, tmp_path, signed_dir, monkeypatch):
    (signed_dir / SIGNATURES_FILE).unlink()
    with pytest.raises(SettingsError, match=r"ZTMESH_POLICY_DIR.*not signed"):
        build_app(settings_for(pki, tmp_path / "policy"))
    monkeypatch.delenv("ZTMESH_POLICY_TRUSTED_SIGNERS")
    with pytest.raises(SettingsError, match="ZTMESH_POLICY_TRUSTED_SIGNERS: outside dev mode"):
        build_app(settings_for(pki, tmp_path / "policy"))


def _tarball(folder: Path, target: Path) -> Path:
    """The folder as an OPA bundle tarball (paths relative to the bundle root, as `opa build` writes)."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname="/" + path.relative_to(folder).as_posix())
    return target


def test_the_real_opa_verifies_ztmesh_signature_and_refuses_a_tampered_bundle(opa_bin, tmp_path, bundle_keys):
    folder = tmp_path / "rego"
    shutil.copytree(PACK, folder)
    (folder / "README.md").write_text("Every file is signed, not only the policy.\n")
    pem = tmp_path / "bundles-ed.pem"
    assert bundle_keys.sign(folder, opa_key=pem) == 0
    verify = ["--verification-key", str(pem), "--verification-key-id", bundle_keys.classical, "--signing-alg", "EdDSA"]
    opa = start_opa(opa_bin, tmp_path, extra_args=["--bundle", str(_tarball(folder, tmp_path / "signed.tar.gz")),
                                                   *verify])  # fmt: skip
    try:
        bundles = requests.get(f"{opa.url}/v1/data/system/bundles", timeout=5).json()["result"]
        (manifest,) = [b["manifest"] for b in bundles.values()]
        assert manifest["revision"] == read_bundle(folder).revision
        threshold = requests.get(f"{opa.url}/v1/data/ztmesh_pack/minimum_trust/public", timeout=5).json()
        assert threshold["result"] == 30
    finally:
        opa.stop()
    _edit(folder / "data.json", '"public": 30', '"public": 10')
    tampered = _tarball(folder, tmp_path / "tampered.tar.gz")
    build = [str(opa_bin), "build", "--bundle", str(tampered), *verify, "-o", str(tmp_path / "out.tar.gz")]
    run = subprocess.run(build, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "data.json: digest mismatch" in run.stdout + run.stderr, run.stdout + run.stderr
    with pytest.raises((ServerStartError, MissingComponent)):
        start_opa(opa_bin, tmp_path, extra_args=["--bundle", str(tampered), *verify], timeout=10).stop()


def test_the_watcher_loads_a_bundle_whose_signature_arrives_after_its_files(
    pki, tmp_path, signed_dir, bundle_keys, monkeypatch
):
    """Files copied one by one: the new content first (refused: its signature is the old one's), then
    its signature; the signature's arrival alone is a change the watcher acts on."""
    monkeypatch.setenv("ZTMESH_RELOAD_INTERVAL", "0.1")
    staging = tmp_path / "staging"
    shutil.copytree(signed_dir, staging)
    _edit(staging / "data.json", '"public": 30', '"public": 31')
    assert bundle_keys.sign(staging) == 0
    with PolicyService(pki, tmp_path / "policy") as stub:
        first = _info(stub).revision
        shutil.copy(staging / "data.json", signed_dir / "data.json")
        deadline = time.monotonic() + 10
        while "changed since the bundle was signed" not in _info(stub).last_error:
            assert time.monotonic() < deadline, "the watcher did not look"
            time.sleep(0.05)
        for name in (SIGNATURES_FILE, ".manifest"):
            shutil.copy(staging / name, signed_dir / name)
        while _info(stub).revision == first:
            assert time.monotonic() < deadline, "the signed bundle did not load"
            time.sleep(0.05)
        assert _info(stub).last_error == ""
