"""Attack: getting a plugin registered or loaded without a trusted signer's signature. A mesh-CA
workload signs a module with a key it created itself (readable by the plugins workload); a trusted
key id signs with a version nobody pinned, or in a classical algorithm; a stored row is rewritten in
the database. Through real keys and plugins services over mTLS."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.plugins import modules
from tests.support.mesh import Pki, running, settings_for
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh.keys.algorithms import public_key_fingerprint
from ztmesh.keys.app import build_app as build_keys_app
from ztmesh.plugins.app import build_app as build_plugins_app
from ztmesh.plugins.manifest import Manifest, signing_message
from ztmesh.plugins.servicer import manifest_to_proto

PLUGINS_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/plugins"
ECHO = Manifest("echo", "1.0.0", ("echo",))
# Exports the same function, answers something else: what an attacker would swap in.
IMPOSTOR = modules.module("""(func (export "echo") (param i32 i32) (result i64) (i64.const 0))""")


def keys_stub(pki: Pki, identity: str, port: int) -> keys_pb2_grpc.KeyServiceStub:
    if not (pki.directory / f"{identity}.crt").exists():
        pki.issue(identity)  # a certificate from the mesh CA: a compromised workload, not a forgery
    return keys_pb2_grpc.KeyServiceStub(pki.channel(identity, port))


def create_signer(keys: keys_pb2_grpc.KeyServiceStub, key_id: str, signer: str, algorithm: int) -> str:
    """A signing key `signer` signs with, whose public key the plugins workload may read (and verify with);
    returns its pin."""
    readers = [signer, PLUGINS_ID]
    grants = [
        keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_SIGN, spiffe_ids=[signer]),
        keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_ROTATE, spiffe_ids=[signer]),
        keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_VERIFY, spiffe_ids=readers),
        keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY, spiffe_ids=readers),
    ]
    request = keys_pb2.CreateKeyRequest(
        key_id=key_id,
        purpose=keys_pb2.KEY_PURPOSE_SIGN,
        algorithm=algorithm,
        access_policy=keys_pb2.KeyAccessPolicy(grants=grants),
    )
    keys.CreateKey(request, timeout=10)
    public = keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10)
    return f"{key_id}@{public_key_fingerprint(public.public_key)}"


def signed(keys: keys_pb2_grpc.KeyServiceStub, key_id: str, module: bytes = modules.ECHO):
    reply = keys.Sign(keys_pb2.SignRequest(key_id=key_id, message=signing_message(module, ECHO)), timeout=10)
    return plugins_pb2.RegisterPluginRequest(
        module=module,
        manifest=manifest_to_proto(ECHO),
        signature=reply.signature,
        signing_key_id=key_id,
        signing_key_version=reply.key_version,
    )


@pytest.fixture
def mesh(pki, tmp_path, monkeypatch):
    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    settings = settings_for(pki, tmp_path / "keys")
    with running(build_keys_app(settings), settings) as server:
        operator = keys_stub(pki, "client", server.port)
        mallory = keys_stub(pki, "mallory", server.port)
        client_id = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
        pins = {
            "trusted": create_signer(operator, "plugin-signing", client_id, keys_pb2.ALGORITHM_ML_DSA_65),
            "classical": create_signer(operator, "plugin-ed25519", client_id, keys_pb2.ALGORITHM_ED25519),
            "mallory": create_signer(
                mallory, "mallory-signing", "spiffe://ztmesh.local/ns/ztmesh/sa/mallory", keys_pb2.ALGORITHM_ML_DSA_65
            ),
        }
        monkeypatch.setenv("ZTMESH_PLUGIN_TRUSTED_SIGNERS", f"{pins['trusted']},{pins['classical']}")
        yield server.port, operator, mallory, pins


def plugins_server(pki: Pki, data_dir: Path, keys_port: int):
    settings = settings_for(pki, data_dir, keys_addr=f"localhost:{keys_port}")
    return running(build_plugins_app(settings), settings)


def test_only_a_pinned_ml_dsa_signer_registers_a_module(pki, tmp_path, mesh):
    keys_port, operator, mallory, _ = mesh
    with plugins_server(pki, tmp_path / "plugins", keys_port) as server:
        plugins = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", server.port))
        unpinned_version = operator.RotateKey(keys_pb2.RotateKeyRequest(key_id="plugin-signing"), timeout=10)
        assert unpinned_version.primary_version == 2
        attempts = {
            "key created by another workload": (signed(mallory, "mallory-signing"), "not a trusted plugin signer"),
            "trusted id, unpinned version": (signed(operator, "plugin-signing"), "is not on the trusted-signer list"),
            "pinned but classical": (signed(operator, "plugin-ed25519"), "plugin signatures must be ML-DSA-65"),
        }
        for name, (request, reason) in attempts.items():
            with pytest.raises(grpc.RpcError) as err:
                plugins.RegisterPlugin(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert reason in err.value.details(), (name, err.value.details())
        assert list(plugins.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=10).plugins) == []

        # A signature by the unpinned version 2 that claims to be by the pinned version 1 does not verify.
        claimed = signed(operator, "plugin-signing")
        claimed.signing_key_version = 1
        with pytest.raises(grpc.RpcError) as err:
            plugins.RegisterPlugin(claimed, timeout=30)
        assert "does not verify" in err.value.details()


def _tamper_signer(row: dict[str, Any], mallory: keys_pb2_grpc.KeyServiceStub) -> None:
    forged = signed(mallory, "mallory-signing")
    public = mallory.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id="mallory-signing"), timeout=10)
    row.update(signing_key_id="mallory-signing", signing_public_key=public.public_key, signature=forged.signature)


def _tamper_signature(row: dict[str, Any], _: keys_pb2_grpc.KeyServiceStub) -> None:
    signature = bytearray(row["signature"])
    signature[100] ^= 1
    row["signature"] = bytes(signature)


def _tamper_module(row: dict[str, Any], _: keys_pb2_grpc.KeyServiceStub) -> None:
    import hashlib

    row.update(module=IMPOSTOR, module_sha256=hashlib.sha256(IMPOSTOR).hexdigest())


def _tamper_public_key(row: dict[str, Any], mallory: keys_pb2_grpc.KeyServiceStub) -> None:
    # Keep the trusted id, but swap in another key and its signature: the pin does not match.
    _tamper_signer(row, mallory)
    row["signing_key_id"] = "plugin-signing"


@pytest.mark.parametrize(
    "tamper",
    [_tamper_signer, _tamper_public_key, _tamper_signature, _tamper_module, None],
    ids=["other-signer", "other-key-same-id", "flipped-signature", "swapped-module", "signer-untrusted-later"],
)
def test_a_tampered_or_no_longer_trusted_row_is_not_loaded(pki, tmp_path, mesh, monkeypatch, caplog, tamper):
    keys_port, operator, mallory, pins = mesh
    with plugins_server(pki, tmp_path / "plugins", keys_port) as server:
        plugins = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", server.port))
        plugins.RegisterPlugin(signed(operator, "plugin-signing"), timeout=30)
    if tamper is None:
        monkeypatch.setenv("ZTMESH_PLUGIN_TRUSTED_SIGNERS", pins["classical"])  # the operator dropped the signer
    else:
        database = sqlite3.connect(tmp_path / "plugins" / "plugins" / "plugins.db")
        database.row_factory = sqlite3.Row
        row = dict(database.execute("SELECT * FROM plugins WHERE name = 'echo'").fetchone())
        tamper(row, mallory)
        assignments = ", ".join(f"{column} = ?" for column in row)
        database.execute(f"UPDATE plugins SET {assignments} WHERE name = 'echo'", list(row.values()))
        database.commit()
        database.close()
    caplog.set_level(logging.ERROR, logger="ztmesh.plugins.registry")
    with plugins_server(pki, tmp_path / "plugins", keys_port) as server:
        plugins = plugins_pb2_grpc.PluginServiceStub(pki.channel("policy", server.port))
        assert list(plugins.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=10).plugins) == []
        with pytest.raises(grpc.RpcError) as err:
            plugins.Execute(plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json="{}"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert any("plugin echo 1.0.0 is NOT loaded" in r.getMessage() for r in caplog.records), caplog.text


def test_an_untampered_row_signed_by_a_trusted_signer_loads_again(pki, tmp_path, mesh):
    keys_port, operator, _, _ = mesh
    with plugins_server(pki, tmp_path / "plugins", keys_port) as server:
        registered = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", server.port)).RegisterPlugin(
            signed(operator, "plugin-signing"), timeout=30
        )
        assert registered.signing_key_id == "plugin-signing"
    with plugins_server(pki, tmp_path / "plugins", keys_port) as server:
        plugins = plugins_pb2_grpc.PluginServiceStub(pki.channel("policy", server.port))
        reply = plugins.Execute(plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json="[7]"), timeout=10)
        assert reply.output_json == "[7]"
