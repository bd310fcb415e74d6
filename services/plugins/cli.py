"""`ztmesh plugins …`: register, list, run and remove WebAssembly plugins (operator certificate).

`register` can sign the module itself with a keys-service key (`--sign-with KEY_ID`): the
signature covers the module and the canonical manifest (docs/plugin-abi.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
import yaml
from google.protobuf.json_format import MessageToDict

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc


def _run(args: argparse.Namespace) -> int:
    from ztmesh.mesh.peers import operator_channel
    from ztmesh.plugins.manifest import Manifest, signing_message
    from ztmesh.plugins.servicer import manifest_to_proto

    stub = plugins_pb2_grpc.PluginServiceStub(operator_channel("plugins"))
    try:
        if args.action == "register":
            module = Path(args.module).read_bytes()
            manifest = Manifest.from_json(yaml.safe_load(Path(args.manifest).read_text()))
            request = plugins_pb2.RegisterPluginRequest(module=module, manifest=manifest_to_proto(manifest))
            if args.sign_with:
                keys = keys_pb2_grpc.KeyServiceStub(operator_channel("keys"))
                signed = keys.Sign(
                    keys_pb2.SignRequest(key_id=args.sign_with, message=signing_message(module, manifest)), timeout=10
                )
                request.signature, request.signing_key_id = signed.signature, args.sign_with
                request.signing_key_version = signed.key_version
            reply = stub.RegisterPlugin(request, timeout=60)
            print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        elif args.action == "list":
            reply = stub.ListPlugins(plugins_pb2.ListPluginsRequest(name=args.name or ""), timeout=10)
            print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        elif args.action == "exec":
            data = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
            result = stub.Execute(
                plugins_pb2.ExecuteRequest(
                    name=args.name, version=args.version or "", function=args.function, input_json=data
                ),
                timeout=30,
            )
            print(result.output_json)
        elif args.action == "remove":
            removed = stub.UnregisterPlugin(
                plugins_pb2.UnregisterPluginRequest(name=args.name, version=args.version or ""), timeout=10
            )
            print(f"removed {removed.removed} version(s)")
    except grpc.RpcError as err:
        print(f"ztmesh plugins {args.action}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    plugins = commands.add_parser("plugins", help="sandboxed WebAssembly plugins")
    actions = plugins.add_subparsers(dest="action", required=True, metavar="ACTION")
    register = actions.add_parser("register", help="register a module with its manifest (YAML or JSON)")
    register.add_argument("module")
    register.add_argument("manifest")
    register.add_argument("--sign-with", metavar="KEY_ID", help="sign with this keys-service key first")
    listing = actions.add_parser("list", help="list registered plugins")
    listing.add_argument("name", nargs="?")
    execute = actions.add_parser("exec", help="run a plugin function on JSON input (file or - for stdin)")
    execute.add_argument("name")
    execute.add_argument("function")
    execute.add_argument("--input", default="-")
    execute.add_argument("--version")
    remove = actions.add_parser("remove", help="unregister a plugin (all versions unless --version)")
    remove.add_argument("name")
    remove.add_argument("--version")
    plugins.set_defaults(func=_run)
