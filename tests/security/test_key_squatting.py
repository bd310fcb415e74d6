"""Attack: squatting and probing key ids at the keys service. A workload with a certificate from the
mesh's own CA tries to create the mesh's reserved ids and ids another workload owns, and to learn
which ids exist. Through a real keys service (SQLite and PostgreSQL) over mTLS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.support.mesh import Pki, running, settings_for
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.keys.app import build_app

MALLORY = "mallory"  # a compromised workload: its certificate comes from the mesh CA
AUDIT_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/audit"
CLIENT_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/client"


@pytest.fixture(params=["sqlite", "postgres"])
def keys_port(request, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    database_url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else ""
    settings = settings_for(pki, tmp_path, database_url=database_url)
    with running(build_app(settings), settings) as server:
        yield server.port


def stub(pki: Pki, identity: str, port: int) -> keys_pb2_grpc.KeyServiceStub:
    if not (pki.directory / f"{identity}.crt").exists():
        pki.issue(identity)
    return keys_pb2_grpc.KeyServiceStub(pki.channel(identity, port))


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def sign_key(key_id: str) -> keys_pb2.CreateKeyRequest:
    return keys_pb2.CreateKeyRequest(key_id=key_id, purpose=keys_pb2.KEY_PURPOSE_SIGN)


def test_a_workload_cannot_create_the_audit_checkpoint_key(pki, keys_port):
    mallory = stub(pki, MALLORY, keys_port)
    for key_id in ("audit-checkpoints", "audit-checkpoints-ed25519"):  # and its per-algorithm siblings
        err = refusal(lambda: mallory.CreateKey(sign_key(key_id), timeout=10))  # noqa: B023 - called at once
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"{key_id!r} is reserved for {AUDIT_ID}" in err.details()
    # The operator is no exception; the audit workload itself creates it, and owns it.
    client = stub(pki, "client", keys_port)
    assert refusal(lambda: client.CreateKey(sign_key("audit-checkpoints"), timeout=10)).code().name == (
        "PERMISSION_DENIED"
    )
    audit = stub(pki, "audit", keys_port)
    assert audit.CreateKey(sign_key("audit-checkpoints"), timeout=10).owner == AUDIT_ID
    assert audit.Sign(keys_pb2.SignRequest(key_id="audit-checkpoints", message=b"head"), timeout=10).signature


def test_a_workload_cannot_take_over_an_id_another_owns(pki, keys_port):
    client = stub(pki, "client", keys_port)
    client.CreateKey(keys_pb2.CreateKeyRequest(key_id="patient-42", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT), timeout=10)
    sealed = client.Encrypt(keys_pb2.EncryptRequest(key_id="patient-42", plaintext=b"laudo"), timeout=10)
    mallory = stub(pki, MALLORY, keys_port)
    grab = keys_pb2.CreateKeyRequest(
        key_id="patient-42",
        purpose=keys_pb2.KEY_PURPOSE_ENCRYPT,
        access_policy=keys_pb2.KeyAccessPolicy(
            grants=[keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_DECRYPT, spiffe_ids=["spiffe://ztmesh.local/*"])]
        ),
    )
    assert refusal(lambda: mallory.CreateKey(grab, timeout=10)).code() == grpc.StatusCode.ALREADY_EXISTS
    # Nothing of the owner's key changed: same owner and policy, and the old envelope still opens.
    key = client.GetKey(keys_pb2.GetKeyRequest(key_id="patient-42"), timeout=10)
    assert key.owner == CLIENT_ID and {g.operation for g in key.access_policy.grants} >= {
        keys_pb2.KEY_OPERATION_DECRYPT
    }
    assert all(list(g.spiffe_ids) == [CLIENT_ID] for g in key.access_policy.grants)
    opened = client.Decrypt(keys_pb2.DecryptRequest(envelope=sealed.envelope), timeout=10)
    assert opened.plaintext == b"laudo"
    assert refusal(lambda: mallory.Decrypt(keys_pb2.DecryptRequest(envelope=sealed.envelope), timeout=10)).code() == (
        grpc.StatusCode.NOT_FOUND
    )


def _probes(envelope: bytes) -> dict[str, Callable[[keys_pb2_grpc.KeyServiceStub, str], Any]]:
    def decrypt(s: keys_pb2_grpc.KeyServiceStub, key_id: str) -> Any:
        # The same envelope, naming the probed id (same length): it parses, so only the lookup decides.
        forged = envelope.replace(b"victim-1", key_id.encode())
        return s.Decrypt(keys_pb2.DecryptRequest(envelope=forged), timeout=10)

    return {
        "GetKey": lambda s, k: s.GetKey(keys_pb2.GetKeyRequest(key_id=k), timeout=10),
        "GetPublicKey": lambda s, k: s.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=k), timeout=10),
        "Encrypt": lambda s, k: s.Encrypt(keys_pb2.EncryptRequest(key_id=k, plaintext=b"x"), timeout=10),
        "Decrypt": decrypt,
        "Sign": lambda s, k: s.Sign(keys_pb2.SignRequest(key_id=k, message=b"x"), timeout=10),
        "Verify": lambda s, k: s.Verify(
            keys_pb2.VerifyRequest(key_id=k, key_version=1, message=b"x", signature=b"s"), timeout=10
        ),
        "RotateKey": lambda s, k: s.RotateKey(keys_pb2.RotateKeyRequest(key_id=k), timeout=10),
        "DisableKeyVersion": lambda s, k: s.DisableKeyVersion(
            keys_pb2.KeyVersionRequest(key_id=k, version=1), timeout=10
        ),
        "EnableKeyVersion": lambda s, k: s.EnableKeyVersion(
            keys_pb2.KeyVersionRequest(key_id=k, version=1), timeout=10
        ),
        "DestroyKeyVersion": lambda s, k: s.DestroyKeyVersion(
            keys_pb2.KeyVersionRequest(key_id=k, version=1), timeout=10
        ),
    }


def test_absent_and_forbidden_keys_give_the_same_answer(pki, keys_port):
    client = stub(pki, "client", keys_port)
    client.CreateKey(keys_pb2.CreateKeyRequest(key_id="victim-1", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT), timeout=10)
    client.CreateKey(sign_key("victim-2"), timeout=10)
    envelope = client.Encrypt(keys_pb2.EncryptRequest(key_id="victim-1", plaintext=b"x"), timeout=10).envelope
    mallory = stub(pki, MALLORY, keys_port)
    for name, probe in _probes(envelope).items():
        answers = set()
        for existing, absent in (("victim-1", "absent-1"), ("victim-2", "absent-2")):
            for key_id in (existing, absent):
                err = refusal(lambda: probe(mallory, key_id))  # noqa: B023 - called at once
                answers.add((err.code(), err.details().replace(key_id, "<id>")))
        assert answers == {(grpc.StatusCode.NOT_FOUND, "key '<id>' not found or not accessible")}, name
    # Listing shows nothing, and its page token names nothing either.
    listed = mallory.ListKeys(keys_pb2.ListKeysRequest(page_size=1), timeout=10)
    assert list(listed.keys) == [] and listed.next_page_token == ""
    # Nothing the probes did changed the victims' keys.
    assert client.GetKey(keys_pb2.GetKeyRequest(key_id="victim-1"), timeout=10).versions[0].state == (
        keys_pb2.KEY_VERSION_STATE_ENABLED
    )
