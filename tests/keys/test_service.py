"""KeyService over real mTLS: the RPCs, their status codes, the CLI, and a wrong KEK at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from tests.support.mesh import running, settings_for
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.keys.algorithms import public_key_fingerprint
from ztmesh.keys.app import build_app

CLIENT_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
PLUGINS_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/plugins"


@pytest.fixture(params=["sqlite", "postgres"])
def keys_server(request, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    database_url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else ""
    settings = settings_for(pki, tmp_path, database_url=database_url)
    app = build_app(settings)
    with running(app, settings) as server:
        yield server


def stub(pki, identity, server) -> keys_pb2_grpc.KeyServiceStub:
    return keys_pb2_grpc.KeyServiceStub(pki.channel(identity, server.port))


def test_envelope_and_signatures_over_grpc(pki, keys_server):
    client = stub(pki, "client", keys_server)
    key = client.CreateKey(keys_pb2.CreateKeyRequest(key_id="p1", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT), timeout=10)
    assert key.algorithm == keys_pb2.ALGORITHM_ML_KEM_768 and key.primary_version == 1
    sealed = client.Encrypt(keys_pb2.EncryptRequest(key_id="p1", plaintext=b"laudo", associated_data=b"a"), timeout=10)
    opened = client.Decrypt(keys_pb2.DecryptRequest(envelope=sealed.envelope, associated_data=b"a"), timeout=10)
    assert (opened.plaintext, opened.key_id, opened.key_version) == (b"laudo", "p1", 1)

    client.CreateKey(keys_pb2.CreateKeyRequest(key_id="s1", purpose=keys_pb2.KEY_PURPOSE_SIGN), timeout=10)
    signed = client.Sign(keys_pb2.SignRequest(key_id="s1", message=b"m"), timeout=10)
    assert signed.algorithm == keys_pb2.ALGORITHM_ML_DSA_65
    check = keys_pb2.VerifyRequest(
        key_id="s1", key_version=signed.key_version, message=b"m", signature=signed.signature
    )
    assert client.Verify(check, timeout=10).valid
    public = client.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id="s1"), timeout=10)
    assert len(public.public_key) == 1952  # FIPS 204 ML-DSA-65 public key


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.Decrypt(keys_pb2.DecryptRequest(envelope=b"ZTE1garbage"), timeout=10), "INVALID_ARGUMENT"),
        (lambda c: c.Encrypt(keys_pb2.EncryptRequest(key_id="nope", plaintext=b"x"), timeout=10), "NOT_FOUND"),
        (lambda c: c.CreateKey(keys_pb2.CreateKeyRequest(key_id="Bad Id!", purpose=1), timeout=10), "INVALID_ARGUMENT"),
        (
            lambda c: c.CreateKey(keys_pb2.CreateKeyRequest(key_id="look-alike\n", purpose=1), timeout=10),
            "INVALID_ARGUMENT",
        ),  # fmt: skip
        (lambda c: c.CreateKey(keys_pb2.CreateKeyRequest(key_id="x"), timeout=10), "INVALID_ARGUMENT"),
        (
            lambda c: c.CreateKey(keys_pb2.CreateKeyRequest(key_id="x", purpose=1, algorithm=10), timeout=10),
            "INVALID_ARGUMENT",
        ),
    ],
    ids=["garbage-envelope", "unknown-key", "bad-key-id", "key-id-trailing-newline", "no-purpose",
         "purpose-algorithm-mismatch"],  # fmt: skip
)
def test_bad_requests_get_clear_status_codes(pki, keys_server, call, code):
    with pytest.raises(grpc.RpcError) as err:
        call(stub(pki, "client", keys_server))
    assert err.value.code().name == code and err.value.details()


def test_caller_with_other_grants_gets_permission_denied(pki, keys_server):
    owner = stub(pki, "client", keys_server)
    encrypt_only = keys_pb2.KeyAccessPolicy(
        grants=[
            keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_ENCRYPT, spiffe_ids=[PLUGINS_ID]),
            keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_DECRYPT, spiffe_ids=[CLIENT_ID]),
            keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY, spiffe_ids=[CLIENT_ID]),
        ]
    )
    owner.CreateKey(
        keys_pb2.CreateKeyRequest(key_id="mine", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT, access_policy=encrypt_only),
        timeout=10,
    )
    plugins = stub(pki, "plugins", keys_server)
    sealed = plugins.Encrypt(keys_pb2.EncryptRequest(key_id="mine", plaintext=b"x"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        plugins.Decrypt(keys_pb2.DecryptRequest(envelope=sealed.envelope), timeout=10)
    # A caller that holds some grant knows the key exists: it is told what it may not do.
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sa/plugins may not decrypt with key 'mine'" in err.value.details()
    assert owner.GetKey(keys_pb2.GetKeyRequest(key_id="mine"), timeout=10).owner == CLIENT_ID


def _serve_keys(pki, tmp_path, kek: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTMESH_")}
    env.update(
        ZTMESH_CERT_DIR=str(pki.directory),
        ZTMESH_DATA_DIR=str(tmp_path / "var"),
        ZTMESH_KEK=kek,
        ZTMESH_PORT="0",
        ZTMESH_METRICS_PORT="0",
        ZTMESH_HEALTH_PORT="0",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "ztmesh.cli", "serve", "keys"], env=env, stderr=subprocess.PIPE, text=True
    )


def test_start_up_with_the_wrong_kek_is_refused(pki, tmp_path):
    first = _serve_keys(pki, tmp_path, "A" * 43 + "=")
    try:
        for line in first.stderr:  # wait until it serves, having created its store under this KEK
            if '"msg": "serving keys' in line:
                break
    finally:
        first.terminate()
        assert first.wait(timeout=20) == 0
    ledger = (tmp_path / "var" / "keys").glob("*")
    before = {p.name: p.read_bytes() for p in ledger}
    second = _serve_keys(pki, tmp_path, "B" * 43 + "=")
    assert second.wait(timeout=30) == 2
    lines = second.stderr.read().strip().splitlines()
    assert len(lines) == 1 and "ZTMESH_KEK" in lines[0] and "not the one these keys were wrapped with" in lines[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "var" / "keys").glob("*")} == before


def test_cli_round_trip(pki, keys_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTMESH_")}
    env.update(ZTMESH_CERT_DIR=str(pki.directory), ZTMESH_KEYS_ADDR=f"localhost:{keys_server.port}")

    def ztmesh(*args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "ztmesh.cli", "keys", *args], env=env, input=data, capture_output=True, timeout=60
        )

    assert ztmesh("create", "cli-key").returncode == 0
    sealed = ztmesh("encrypt", "cli-key", "--aad", "ctx", data=b"exame de sangue")
    assert sealed.returncode == 0 and sealed.stdout.startswith(b"ZTE1")
    opened = ztmesh("decrypt", "--aad", "ctx", data=sealed.stdout)
    assert opened.stdout == b"exame de sangue"
    wrong = ztmesh("decrypt", "--aad", "other", data=sealed.stdout)
    assert wrong.returncode == 1 and b"INVALID_ARGUMENT: envelope failed authentication" in wrong.stderr
    assert ztmesh("create", "cli-signer", "--purpose", "sign").returncode == 0
    signed = ztmesh("sign", "cli-signer", data=b"m")
    signature = __import__("json").loads(signed.stdout)["signature"]
    assert ztmesh("verify", "cli-signer", "--version", "1", "--signature", signature, data=b"m").stdout == b"valid\n"
    pin = ztmesh("fingerprint", "cli-signer").stdout.decode().strip()
    public = stub(pki, "client", keys_server).GetPublicKey(
        keys_pb2.GetPublicKeyRequest(key_id="cli-signer"), timeout=10
    )
    assert pin == f"cli-signer@{public_key_fingerprint(public.public_key)}"
    shared = ztmesh(
        "create",
        "cli-shared",
        "--purpose",
        "sign",
        "--grant",
        f"all={CLIENT_ID}",
        "--grant",
        f"get_public_key={PLUGINS_ID}",
    )
    assert shared.returncode == 0, shared.stderr
    key = stub(pki, "client", keys_server).GetKey(keys_pb2.GetKeyRequest(key_id="cli-shared"), timeout=10)
    readers = {g.operation: set(g.spiffe_ids) for g in key.access_policy.grants}
    assert readers[keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY] == {CLIENT_ID, PLUGINS_ID}
    assert readers[keys_pb2.KEY_OPERATION_SIGN] == {CLIENT_ID}
    bad = ztmesh("create", "cli-bad", "--grant", "fly=spiffe://ztmesh.local/x")
    assert bad.returncode != 0 and b"must be OPERATION=SPIFFE_ID" in bad.stderr
    assert ztmesh("destroy", "cli-key", "--version", "1").returncode == 0
    assert ztmesh("decrypt", "--aad", "ctx", data=sealed.stdout).returncode == 1


@pytest.mark.parametrize("value", ["Bad Id=audit", "audit-checkpoints=", "k=spiffe://bad domain/x"])
def test_bad_reservations_stop_start_up_naming_the_setting(pki, tmp_path, monkeypatch, value):
    from ztmesh.mesh.errors import SettingsError

    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    monkeypatch.setenv("ZTMESH_KEY_RESERVED_IDS", value)
    with pytest.raises(SettingsError) as err:
        build_app(settings_for(pki, tmp_path))
    assert err.value.setting == "ZTMESH_KEY_RESERVED_IDS"
