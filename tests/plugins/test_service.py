"""PluginService over mTLS with a real keys service supplying the trusted signer's public key."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.plugins import modules
from tests.support.mesh import running, settings_for
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh.keys.algorithms import public_key_fingerprint
from ztmesh.keys.app import build_app as build_keys_app
from ztmesh.plugins.app import build_app as build_plugins_app
from ztmesh.plugins.manifest import Manifest, signing_message
from ztmesh.plugins.sandbox import Limits
from ztmesh.plugins.servicer import manifest_to_proto

PLUGINS_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/plugins"
CLIENT_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/client"


def create_signing_key(keys, key_id: str, algorithm: int = keys_pb2.ALGORITHM_ML_DSA_65) -> str:
    """Create a signing key the client signs with and the plugins workload reads; return its pin."""
    policy = keys_pb2.KeyAccessPolicy(
        grants=[
            keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_SIGN, spiffe_ids=[CLIENT_ID]),
            keys_pb2.KeyGrant(operation=keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY, spiffe_ids=[CLIENT_ID, PLUGINS_ID]),
        ]
    )
    keys.CreateKey(
        keys_pb2.CreateKeyRequest(
            key_id=key_id, purpose=keys_pb2.KEY_PURPOSE_SIGN, algorithm=algorithm, access_policy=policy
        ),
        timeout=10,
    )
    public = keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10)
    return f"{key_id}@{public_key_fingerprint(public.public_key)}"


@pytest.fixture
def keys_server(pki, tmp_path, monkeypatch):
    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    settings = settings_for(pki, tmp_path / "keys")
    with running(build_keys_app(settings), settings) as server:
        keys = keys_pb2_grpc.KeyServiceStub(pki.channel("client", server.port))
        trusted = create_signing_key(keys, "plugin-signing")
        create_signing_key(keys, "other-key")
        monkeypatch.setenv("ZTMESH_PLUGIN_TRUSTED_SIGNERS", trusted)
        yield server, keys


def start_plugins(pki, data_dir, keys_port, database_url=""):
    settings = settings_for(pki, data_dir, keys_addr=f"localhost:{keys_port}", database_url=database_url)
    return running(build_plugins_app(settings), settings)


def signed_request(
    keys, module: bytes, manifest: Manifest, key_id="plugin-signing"
) -> plugins_pb2.RegisterPluginRequest:
    signed = keys.Sign(keys_pb2.SignRequest(key_id=key_id, message=signing_message(module, manifest)), timeout=10)
    return plugins_pb2.RegisterPluginRequest(
        module=module,
        manifest=manifest_to_proto(manifest),
        signature=signed.signature,
        signing_key_id=key_id,
        signing_key_version=signed.key_version,
    )


ECHO = Manifest("echo", "1.0.0", ("echo",))
HOSTILE = Manifest("loop", "1.0.0", ("run",))


def test_signatures_are_required_and_checked(pki, tmp_path, keys_server):
    server, keys = keys_server
    with start_plugins(pki, tmp_path / "p", server.port) as plugins_server:
        plugins = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", plugins_server.port))
        good = signed_request(keys, modules.ECHO, ECHO)
        tampered_module = plugins_pb2.RegisterPluginRequest()
        tampered_module.CopyFrom(good)
        tampered_module.module = modules.ECHO + b"\x00"
        tampered_manifest = plugins_pb2.RegisterPluginRequest()
        tampered_manifest.CopyFrom(good)
        tampered_manifest.manifest.limits.fuel = 10**12
        wrong_key = signed_request(keys, modules.ECHO, ECHO, key_id="other-key")
        wrong_key.signing_key_id = "plugin-signing"
        unsigned = plugins_pb2.RegisterPluginRequest(module=modules.ECHO, manifest=manifest_to_proto(ECHO))
        for name, request in [
            ("unsigned", unsigned),
            ("tampered module", tampered_module),
            ("tampered manifest", tampered_manifest),
            ("wrongly signed", wrong_key),
            ("signed by a key not on the trusted-signer list", signed_request(keys, modules.ECHO, ECHO, "other-key")),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                plugins.RegisterPlugin(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert plugins.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=10).plugins == []
        registered = plugins.RegisterPlugin(good, timeout=30)
        assert registered.signing_key_id == "plugin-signing" and registered.registered_by == CLIENT_ID


def test_only_operators_register_and_policy_may_execute(pki, tmp_path, keys_server):
    server, keys = keys_server
    with start_plugins(pki, tmp_path / "p", server.port) as plugins_server:
        with pytest.raises(grpc.RpcError) as err:
            plugins_pb2_grpc.PluginServiceStub(pki.channel("audit", plugins_server.port)).RegisterPlugin(
                signed_request(keys, modules.ECHO, ECHO), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        plugins_pb2_grpc.PluginServiceStub(pki.channel("client", plugins_server.port)).RegisterPlugin(
            signed_request(keys, modules.ECHO, ECHO), timeout=30
        )
        reply = plugins_pb2_grpc.PluginServiceStub(pki.channel("policy", plugins_server.port)).Execute(
            plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json='{"a":1}'), timeout=10
        )
        assert json.loads(reply.output_json) == {"a": 1} and reply.version == "1.0.0" and reply.fuel_consumed > 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_registered_plugins_survive_a_restart(pki, tmp_path, keys_server, request, backend):
    server, keys = keys_server
    database_url = request.getfixturevalue("postgres").new_database() if backend == "postgres" else ""
    with start_plugins(pki, tmp_path / "p", server.port, database_url) as first:
        plugins_pb2_grpc.PluginServiceStub(pki.channel("client", first.port)).RegisterPlugin(
            signed_request(keys, modules.ECHO, ECHO), timeout=30
        )
    with start_plugins(pki, tmp_path / "p", server.port, database_url) as second:
        stub = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", second.port))
        assert [p.manifest.name for p in stub.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=10).plugins] == [
            "echo"
        ]
        reply = stub.Execute(plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json="[2]"), timeout=10)
        assert reply.output_json == "[2]"


def test_200_concurrent_calls_mixing_good_and_hostile_plugins(pki, tmp_path, keys_server):
    server, keys = keys_server
    with start_plugins(pki, tmp_path / "p", server.port) as plugins_server:
        stub = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", plugins_server.port))
        stub.RegisterPlugin(signed_request(keys, modules.ECHO, ECHO), timeout=30)
        loop = Manifest("loop", "1.0.0", ("run",), limits=Limits(fuel=20_000_000, timeout_ms=500))
        stub.RegisterPlugin(signed_request(keys, modules.INFINITE_LOOP, loop), timeout=30)
        stub.RegisterPlugin(signed_request(keys, modules.MEMORY_HOG, Manifest("hog", "1.0.0", ("run",))), timeout=30)

        def call(i: int) -> tuple[int, object]:
            kind = i % 4
            try:
                if kind in (0, 1):
                    reply = stub.Execute(
                        plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json=json.dumps({"i": i})),
                        timeout=30,
                    )
                    return i, json.loads(reply.output_json)
                name = "loop" if kind == 2 else "hog"
                stub.Execute(plugins_pb2.ExecuteRequest(name=name, function="run", input_json="{}"), timeout=30)
                return i, "hostile call succeeded"
            except grpc.RpcError as err:
                return i, err.code()

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = dict(pool.map(call, range(200)))
        for i, outcome in results.items():
            if i % 4 in (0, 1):
                assert outcome == {"i": i}
            else:
                assert outcome == grpc.StatusCode.RESOURCE_EXHAUSTED, (i, outcome)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("ZTMESH_PLUGIN_TRUSTED_SIGNERS", "plugin-signing", "must be KEY_ID@sha256:<64 hex digits>"),
        ("ZTMESH_PLUGIN_TRUSTED_SIGNERS", "plugin-signing@sha256:abc", "must be KEY_ID@sha256:<64 hex digits>"),
        ("ZTMESH_PLUGIN_SIGNER_ALGORITHMS", "ML-DSA-65,RSA", "'RSA' is not a signature algorithm"),
    ],
    ids=["unpinned", "short-pin", "unknown-algorithm"],
)
def test_bad_signer_settings_stop_start_up_naming_the_setting(pki, tmp_path, monkeypatch, name, value, problem):
    from ztmesh.mesh.errors import SettingsError

    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        build_plugins_app(settings_for(pki, tmp_path))
    assert err.value.setting == name and problem in err.value.problem


def test_stored_signatures_are_checked_offline_and_registration_fails_closed(pki, tmp_path, keys_server):
    server, keys = keys_server
    request = signed_request(keys, modules.ECHO, ECHO)
    with start_plugins(pki, tmp_path / "p", server.port) as first:
        plugins_pb2_grpc.PluginServiceStub(pki.channel("client", first.port)).RegisterPlugin(request, timeout=30)
    server.stop(grace=1.0)  # the keys service is gone
    with start_plugins(pki, tmp_path / "p", server.port) as second:
        stub = plugins_pb2_grpc.PluginServiceStub(pki.channel("client", second.port))
        # The kept signature and public key suffice to load the module again...
        reply = stub.Execute(plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json="[3]"), timeout=10)
        assert reply.output_json == "[3]"
        # ...but a new registration cannot be checked without the signer's public key: refused, with why.
        again = plugins_pb2.RegisterPluginRequest()
        again.CopyFrom(request)
        again.manifest.version = "1.0.1"
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterPlugin(again, timeout=30)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot fetch the public key of 'plugin-signing'" in err.value.details()
