"""`ztmesh keys …`: manage keys and use them from the command line (with the operator certificate).

Input data is read from a file or `-` (stdin) and written raw to stdout, so commands compose:
`ztmesh keys encrypt patient-1 --in note.txt > note.zte && ztmesh keys decrypt --in note.zte`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc

_PURPOSES = {"encrypt": keys_pb2.KEY_PURPOSE_ENCRYPT, "sign": keys_pb2.KEY_PURPOSE_SIGN}
_ALGORITHMS = {
    "ml-kem-768": keys_pb2.ALGORITHM_ML_KEM_768,
    "ml-kem-1024": keys_pb2.ALGORITHM_ML_KEM_1024,
    "x25519-ml-kem-768": keys_pb2.ALGORITHM_X25519_ML_KEM_768,
    "ml-dsa-65": keys_pb2.ALGORITHM_ML_DSA_65,
    "ml-dsa-87": keys_pb2.ALGORITHM_ML_DSA_87,
    "ed25519": keys_pb2.ALGORITHM_ED25519,
}


_OPERATIONS = {
    name.removeprefix("KEY_OPERATION_").lower(): code
    for name, code in keys_pb2.KeyOperation.items()
    if code != keys_pb2.KEY_OPERATION_UNSPECIFIED
}


def _grants(entries: list[str]) -> keys_pb2.KeyAccessPolicy:
    """`OPERATION=SPIFFE_ID` entries (OPERATION may be `all`) as an access policy; none = the creator only."""
    policy = keys_pb2.KeyAccessPolicy()
    for entry in entries:
        operation, _, spiffe_id = entry.partition("=")
        names = list(_OPERATIONS) if operation == "all" else [operation]
        if not spiffe_id or any(name not in _OPERATIONS for name in names):
            raise SystemExit(f"ztmesh keys create: --grant {entry!r} must be OPERATION=SPIFFE_ID, OPERATION one of "
                             f"all, {', '.join(_OPERATIONS)}")  # fmt: skip
        for name in names:
            policy.grants.add(operation=_OPERATIONS[name], spiffe_ids=[spiffe_id])
    return policy


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _print(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _stub() -> keys_pb2_grpc.KeyServiceStub:
    from ztmesh.mesh.peers import operator_channel

    return keys_pb2_grpc.KeyServiceStub(operator_channel("keys"))


def _run(args: argparse.Namespace) -> int:
    stub = _stub()
    try:
        if args.action == "create":
            _print(
                stub.CreateKey(
                    keys_pb2.CreateKeyRequest(
                        key_id=args.key_id,
                        purpose=_PURPOSES[args.purpose],
                        algorithm=_ALGORITHMS.get(args.algorithm or "", keys_pb2.ALGORITHM_UNSPECIFIED),
                        access_policy=_grants(args.grant),
                    ),
                    timeout=10,
                )
            )
        elif args.action == "list":
            _print(stub.ListKeys(keys_pb2.ListKeysRequest(), timeout=10))
        elif args.action == "rotate":
            _print(stub.RotateKey(keys_pb2.RotateKeyRequest(key_id=args.key_id), timeout=10))
        elif args.action == "encrypt":
            reply = stub.Encrypt(
                keys_pb2.EncryptRequest(
                    key_id=args.key_id, plaintext=_read(args.input), associated_data=args.aad.encode()
                ),
                timeout=10,
            )
            sys.stdout.buffer.write(reply.envelope)
        elif args.action == "decrypt":
            reply = stub.Decrypt(
                keys_pb2.DecryptRequest(envelope=_read(args.input), associated_data=args.aad.encode()), timeout=10
            )
            sys.stdout.buffer.write(reply.plaintext)
        elif args.action == "sign":
            reply = stub.Sign(keys_pb2.SignRequest(key_id=args.key_id, message=_read(args.input)), timeout=10)
            print(json.dumps({"key_version": reply.key_version, "signature": reply.signature.hex()}))
        elif args.action == "verify":
            reply = stub.Verify(
                keys_pb2.VerifyRequest(
                    key_id=args.key_id,
                    key_version=args.version,
                    message=_read(args.input),
                    signature=bytes.fromhex(args.signature),
                ),
                timeout=10,
            )
            print("valid" if reply.valid else "INVALID")
            return 0 if reply.valid else 1
        elif args.action == "fingerprint":
            from ztmesh.keys.algorithms import public_key_fingerprint

            public = stub.GetPublicKey(
                keys_pb2.GetPublicKeyRequest(key_id=args.key_id, version=args.version), timeout=10
            )
            # The form ZTMESH_PLUGIN_TRUSTED_SIGNERS takes: trust exactly this public key under this id.
            print(f"{public.key_id}@{public_key_fingerprint(public.public_key)}")
        elif args.action == "destroy":
            _print(
                stub.DestroyKeyVersion(keys_pb2.KeyVersionRequest(key_id=args.key_id, version=args.version), timeout=10)
            )
    except grpc.RpcError as err:
        print(f"ztmesh keys {args.action}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


def _rewrap(args: argparse.Namespace) -> int:
    """Offline: re-wrap every private key under a new KEK (stop the keys service first)."""
    from ztmesh.keys.app import build_manager, load_kek
    from ztmesh.keys.kek import Kek
    from ztmesh.keys.settings import KeysSettings
    from ztmesh.mesh.auditing import LogAuditEmitter
    from ztmesh.mesh.launch import load_mesh_settings
    from ztmesh.mesh.settings import load_settings

    settings = load_mesh_settings()
    keys_settings = load_settings(KeysSettings, section="keys")
    load_kek(settings, keys_settings)
    new_kek = Kek.from_base64(Path(args.new_kek_file).read_text(), f"--new-kek-file {args.new_kek_file}")
    manager = build_manager(settings, keys_settings, LogAuditEmitter())
    count = manager.rewrap(new_kek)
    manager.close()
    print(f"re-wrapped {count} key versions; start the keys service with the new KEK now")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = commands.add_parser("keys", help="post-quantum key management")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key")
    create.add_argument("key_id")
    create.add_argument("--purpose", choices=list(_PURPOSES), default="encrypt")
    create.add_argument("--algorithm", choices=list(_ALGORITHMS))
    create.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="OPERATION=SPIFFE_ID",
        help="who may do what (repeatable; OPERATION may be `all`); without it only you may use the key",
    )
    actions.add_parser("list", help="list the keys you may see")
    for name, helptext in (("rotate", "add a new primary version"),):
        parser = actions.add_parser(name, help=helptext)
        parser.add_argument("key_id")
    encrypt = actions.add_parser("encrypt", help="encrypt a file (- = stdin) into an envelope on stdout")
    encrypt.add_argument("key_id")
    decrypt = actions.add_parser("decrypt", help="decrypt an envelope (file or -) to stdout")
    sign = actions.add_parser("sign", help="sign a file (- = stdin)")
    sign.add_argument("key_id")
    verify = actions.add_parser("verify", help="verify a signature (hex) over a file")
    verify.add_argument("key_id")
    verify.add_argument("--version", type=int, required=True)
    verify.add_argument("--signature", required=True)
    for parser in (encrypt, decrypt, sign, verify):
        parser.add_argument("--in", dest="input", default="-", help="input file (default stdin)")
    for parser in (encrypt, decrypt):
        parser.add_argument("--aad", default="", help="associated data bound to the envelope")
    fingerprint = actions.add_parser("fingerprint", help="print KEY_ID@sha256:… of a version's public key (pinning)")
    fingerprint.add_argument("key_id")
    fingerprint.add_argument("--version", type=int, default=0, help="default: the primary version")
    destroy = actions.add_parser("destroy", help="erase a key version for good (crypto-shredding)")
    destroy.add_argument("key_id")
    destroy.add_argument("--version", type=int, required=True)
    keys.set_defaults(func=_run)
    rewrap = actions.add_parser("rewrap", help="offline: re-wrap all private keys under a new KEK")
    rewrap.add_argument("--new-kek-file", required=True)
    rewrap.set_defaults(func=_rewrap)
