"""`ztmesh policy …` and `ztmesh decide …`: check and test a Rego bundle offline, ask the policy
service (or, with --local, this process) for a decision, report a signal, show or reload the policy.

`ztmesh decide` exits 0 for ALLOW, 2 for DENY and 3 for CHALLENGE, so scripts can branch on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.policy.errors import BundleError, ConfigError, InvalidRequest
from ztmesh.policy.model import DecisionRequest, Outcome, request_from_mapping
from ztmesh.policy.settings import PolicySettings

_DEFAULTS = PolicySettings()
_EXIT = {Outcome.ALLOW: 0, Outcome.DENY: 2, Outcome.CHALLENGE: 3}
_PROTO_EXIT = {policy_pb2.DECISION_ALLOW: 0, policy_pb2.DECISION_DENY: 2, policy_pb2.DECISION_CHALLENGE: 3}
_ASSURANCE = {"unspecified": 0, "low": 1, "medium": 2, "high": 3}
_STATUS = {"none": 0, "active": 1, "suspended": 2, "expired": 3}


def _fail(message: str) -> int:
    print(f"ztmesh: {message}", file=sys.stderr)
    return 1


# --- offline: check and test a bundle -------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from ztmesh.policy.bundle import check_bundle, read_bundle
    from ztmesh.policy.inputs import probe_inputs

    try:
        report = check_bundle(read_bundle(args.dir), probe_inputs(), raise_on_failure=not args.test_failures_ok)
    except BundleError as exc:
        return _fail(f"policy check {args.dir}: {exc}")
    bundle = report.bundle
    paths = ", ".join(".".join(p) for p in bundle.input_paths) if bundle.input_paths else "the whole input"
    print(f"{args.dir}: OK, revision {bundle.revision}, packages {', '.join(bundle.packages)}")
    print(f"  {len(bundle.modules)} modules, {len(report.tests)} tests, reads {paths}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from ztmesh.policy.bundle import read_bundle
    from ztmesh.policy.opa_inproc import run_tests

    try:
        bundle = read_bundle(args.dir)
        results = run_tests(bundle.modules, bundle.tests, bundle.data)
    except BundleError as exc:
        return _fail(f"policy test {args.dir}: {exc}")
    failed = [r for r in results if not r.passed]
    for result in results:
        if args.verbose or not result.passed:
            verdict = "SKIP" if result.skipped else "PASS" if result.passed else f"FAIL ({result.error})"
            print(f"{result.file}:{result.line}: {result.name}: {verdict}")
    print(f"PASS: {len(results) - len(failed)}/{len(results)}")
    if failed:
        print(f"FAIL: {len(failed)}/{len(results)}")
    return 1 if failed or not results else 0


class KeysServiceSigner:
    """The keys service over mTLS with the operator's identity, as a bundle signer."""

    def __init__(self) -> None:
        from ztmesh._proto.keys.v1 import keys_pb2_grpc
        from ztmesh.mesh.peers import operator_channel

        self._stub = keys_pb2_grpc.KeyServiceStub(operator_channel("keys"))

    def algorithm(self, key_id: str) -> str:
        from ztmesh._proto.keys.v1 import keys_pb2

        reply = self._stub.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10)
        return str(keys_pb2.Algorithm.Name(reply.algorithm))

    def public_key(self, key_id: str) -> tuple[int, bytes]:
        from ztmesh._proto.keys.v1 import keys_pb2

        reply = self._stub.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10)
        return reply.version, reply.public_key

    def sign(self, key_id: str, message: bytes) -> tuple[bytes, int]:
        from ztmesh._proto.keys.v1 import keys_pb2

        reply = self._stub.Sign(keys_pb2.SignRequest(key_id=key_id, message=message), timeout=10)
        return reply.signature, reply.key_version


def sign_with_keys(directory: Path, key_ids: list[str], signer: KeysServiceSigner, opa_key: Path | None) -> int:
    """Check the bundle, then sign it with one Ed25519 and one ML-DSA-65 key of the keys service."""
    from ztmesh.policy.bundle import check_bundle, read_bundle
    from ztmesh.policy.bundle_signing import SigningKeys, ed25519_pem, fingerprint, sign_bundle
    from ztmesh.policy.inputs import probe_inputs

    roles: dict[str, list[str]] = {}
    for key_id in key_ids:
        roles.setdefault(signer.algorithm(key_id), []).append(key_id)
    classical, post_quantum = roles.get("ALGORITHM_ED25519", []), roles.get("ALGORITHM_ML_DSA_65", [])
    if len(classical) != 1 or len(post_quantum) != 1 or len(key_ids) != 2:
        found = ", ".join(f"{k} ({a.removeprefix('ALGORITHM_')})" for a, ks in roles.items() for k in ks)
        return _fail(f"policy sign: --key an Ed25519 key (OPA checks it) and --key an ML-DSA-65 key; got {found}")
    try:
        bundle = check_bundle(read_bundle(directory), probe_inputs()).bundle
        claims = sign_bundle(directory, bundle.revision, SigningKeys(classical[0], post_quantum[0]), signer)
    except BundleError as exc:
        return _fail(f"policy sign {directory}: {exc}")
    pins = []
    for key_id in (classical[0], post_quantum[0]):
        pins.append(f"{key_id}@{fingerprint(signer.public_key(key_id)[1])}")
    print(f"{directory}: signed revision {bundle.revision} at {claims['ztmesh']['signed_at_ms']} ms, "
          f"{len(claims['files'])} files")  # fmt: skip
    print(f"  trust it: ZTMESH_POLICY_TRUSTED_SIGNERS={','.join(pins)}")
    if opa_key is not None:
        opa_key.write_text(ed25519_pem(signer.public_key(classical[0])[1]))
        print(f"  OPA: opa run --verification-key {opa_key} --verification-key-id {classical[0]} --signing-alg EdDSA")
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:
        return sign_with_keys(args.dir, args.key, KeysServiceSigner(), args.opa_key)
    except grpc.RpcError as exc:
        return _fail(f"policy sign: keys service: {exc.code().name}: {exc.details()}")


# --- decisions ----------------------------------------------------------------------------------


def _request_document(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        document: dict[str, Any] = json.loads(text)
        return document
    subject: dict[str, Any] = {"id": args.subject, "roles": args.role, "auth_method": args.auth_method,
                               "assurance": args.assurance}  # fmt: skip
    if args.council or args.registration:
        subject["registration"] = {"council": args.council, "status": args.registration or "none"}
    document = {
        "subject": subject,
        "resource": {"type": args.type, "classification": args.classification, "id": args.resource_id,
                     "consented_purposes": args.consent},
        "action": args.action,
        "context": {"source_ip": args.source_ip, "user_agent": args.user_agent, "purpose": args.purpose},
    }  # fmt: skip
    if args.device:
        document["device"] = {
            "id": args.device, "managed": args.managed, "compliant": args.compliant, "patch_age_days": args.patch_age,
            "disk_encrypted": args.encrypted, "endpoint_protection": args.protected,
        }  # fmt: skip
    return document


def request_to_proto(request: DecisionRequest) -> policy_pb2.DecideRequest:
    s, r, c, d = request.subject, request.resource, request.context, request.device
    msg = policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id=s.id, roles=s.roles, auth_method=s.auth_method,
                                   assurance=_ASSURANCE[s.assurance.value]),
        resource=policy_pb2.Resource(type=r.type, id=r.id, classification=r.classification, owner=r.owner,
                                     consented_purposes=r.consented_purposes),
        action=request.action,
        context=policy_pb2.RequestContext(source_ip=c.source_ip, user_agent=c.user_agent, purpose=c.purpose,
                                          request_id=c.request_id),
    )  # fmt: skip
    if s.registration is not None:
        reg = s.registration
        msg.subject.registration.CopyFrom(policy_pb2.ProfessionalRegistration(
            council=reg.council, region=reg.region, number=reg.number, status=_STATUS[reg.status.value]))  # fmt: skip
    if d is not None:
        msg.device.CopyFrom(policy_pb2.Device(id=d.id, managed=d.managed, compliant=d.compliant, os=d.os,
                                              disk_encrypted=d.disk_encrypted,
                                              endpoint_protection=d.endpoint_protection))  # fmt: skip
        if d.patch_age_days is not None:
            msg.device.patch_age_days = d.patch_age_days
    if c.time is not None:
        msg.context.time.FromDatetime(c.time)
    if request.attributes:
        msg.attributes.update(dict(request.attributes))
    return msg


def _decide_locally(request: DecisionRequest) -> int:
    from ztmesh.policy.bundle import BundleManager
    from ztmesh.policy.decider import PolicyEngine
    from ztmesh.policy.inputs import probe_inputs
    from ztmesh.policy.opa_inproc import OpaEmbeddedEngine
    from ztmesh.policy.signals import MemorySignalStore
    from ztmesh.policy.trust import TrustScorer

    settings = _DEFAULTS
    try:
        bundles = BundleManager(settings.policy_dir, OpaEmbeddedEngine(), probe_inputs())
        bundles.reload()
        scorer = TrustScorer(settings.trust_files.load())
    except (BundleError, ConfigError) as exc:
        return _fail(str(exc))
    decision = PolicyEngine(bundles, scorer, MemorySignalStore()).decide(request)
    print(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
    return _EXIT[decision.outcome]


def _stub() -> policy_pb2_grpc.PolicyServiceStub:
    from ztmesh.mesh.peers import operator_channel

    return policy_pb2_grpc.PolicyServiceStub(operator_channel("policy"))


def _print(message: Any) -> None:
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2,
                     ensure_ascii=False))  # fmt: skip


def _decide(args: argparse.Namespace) -> int:
    try:
        request = request_from_mapping(_request_document(args))
    except (InvalidRequest, json.JSONDecodeError, OSError) as exc:
        return _fail(f"decide: {exc}")
    if args.local:
        return _decide_locally(request)
    try:
        reply = _stub().Decide(request_to_proto(request), timeout=10)
    except grpc.RpcError as exc:
        return _fail(f"decide: {exc.code().name}: {exc.details()}")
    _print(reply)
    return _PROTO_EXIT.get(reply.decision, 2)


def _service(args: argparse.Namespace) -> int:
    stub = _stub()
    try:
        if args.policy_action == "info":
            _print(stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10))
        elif args.policy_action == "reload":
            _print(stub.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=30))
        else:
            # The service records the caller (the operator certificate) as the source; the note is kept beside it.
            signal = policy_pb2.ReportSignalRequest(subject_id=args.subject, kind=args.kind, severity=args.severity,
                                                    source=args.note)  # fmt: skip
            _print(stub.ReportSignal(signal, timeout=10))
    except grpc.RpcError as exc:
        return _fail(f"policy {args.policy_action}: {exc.code().name}: {exc.details()}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policy = commands.add_parser("policy", help="Rego bundles (check, test) and the policy service (info, reload)")
    actions = policy.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="parse a bundle, run its tests and probe its decision (offline)")
    check.add_argument("--test-failures-ok", action="store_true", help="report failing tests without refusing")
    check.set_defaults(func=_check)
    test = actions.add_parser("test", help="run a bundle's Rego tests in process, like `opa test`")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    test.set_defaults(func=_test)
    sign = actions.add_parser("sign", help="sign a bundle with keys-service keys (OPA's .signatures.json + ML-DSA-65)")
    sign.add_argument("--key", action="append", required=True, metavar="KEY_ID",
                      help="twice: an Ed25519 key (the JWS OPA verifies) and an ML-DSA-65 key")  # fmt: skip
    sign.add_argument("--opa-key", type=Path, help="also write the Ed25519 public key as PEM for OPA")
    sign.set_defaults(func=_sign)
    for parser in (check, test, sign):
        parser.add_argument("dir", nargs="?", type=Path, default=_DEFAULTS.policy_dir, help="bundle folder")
    actions.add_parser("info", help="the serving engine, revision and packages").set_defaults(func=_service)
    actions.add_parser("reload", help="load the bundle again now (operators)").set_defaults(func=_service)
    signal = actions.add_parser("signal", help="report a behaviour signal about a subject (operators, reporters)")
    signal.add_argument("subject")
    signal.add_argument("kind", help="failed_login, anomaly, impossible_travel... (policies/trust/weights.json)")
    signal.add_argument("--severity", type=float, default=1.0)
    signal.add_argument("--note", default="ztmesh cli", help="free text kept with the record (e.g. a ticket id)")
    signal.set_defaults(func=_service)

    decide = commands.add_parser("decide", help="ask for a decision (exit 0 allow, 2 deny, 3 challenge)")
    decide.add_argument("--file", type=Path, help="the request as JSON (- = stdin) instead of the flags")
    decide.add_argument("--local", action="store_true", help="decide in this process with the local pack")
    decide.add_argument("--subject", default="")
    decide.add_argument("--role", action="append", default=[])
    decide.add_argument("--auth-method", default="")
    decide.add_argument("--assurance", choices=list(_ASSURANCE), default="unspecified")
    decide.add_argument("--council", default="", help="professional council, e.g. CRM")
    decide.add_argument("--registration", choices=list(_STATUS), help="registration status")
    decide.add_argument("--classification", default="")
    decide.add_argument("--type", default="", help="resource type")
    decide.add_argument("--resource-id", default="")
    decide.add_argument("--consent", action="append", default=[], help="a purpose the data subject consented to")
    decide.add_argument("--action", default="read")
    decide.add_argument("--purpose", default="", help="LGPD processing purpose")
    decide.add_argument("--source-ip", default="")
    decide.add_argument("--user-agent", default="ztmesh-cli")
    decide.add_argument("--device", default="", help="device id (enables the posture flags below)")
    for flag in ("managed", "compliant", "encrypted", "protected"):
        decide.add_argument(f"--{flag}", action="store_true")
    decide.add_argument("--patch-age", type=int, help="days since the last OS patch")
    decide.set_defaults(func=_decide)
