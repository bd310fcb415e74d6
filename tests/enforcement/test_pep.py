"""The PEP library on a sample gRPC service: PolicyInterceptor (thread-pool server) and
AsyncPolicyInterceptor (grpc.aio), each asking the policy engine in process (LocalPolicyClient around
the production-wired engine) and over the network (PolicyClient to a real policy service over mTLS).

The sample service `clinic.v1.Records` speaks raw bytes; its Protect table maps each RPC to an action
on a classified resource, and the default policy pack decides. Callers reach it over mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.support.mesh import Pki, settings_for
from tests.support.policy_service import PolicyService
from ztmesh.mesh.auditing import LogAuditEmitter
from ztmesh.mesh.tls import TlsFiles, client_credentials
from ztmesh.pep import (
    AsyncLocalPolicyClient,
    AsyncPolicyClient,
    AsyncPolicyInterceptor,
    Caller,
    LocalPolicyClient,
    PolicyClient,
    PolicyInterceptor,
    Protect,
    RetryPolicy,
)
from ztmesh.pep.interceptor import DECISION_ID_KEY, STEP_UP_KEY, default_caller
from ztmesh.policy.app import build_engine
from ztmesh.policy.servicer import PolicyServicer
from ztmesh.policy.settings import PolicySettings

SERVICE = "clinic.v1.Records"
RULES = {
    f"/{SERVICE}/GetStaff": Protect("read", "staff_directory", "internal"),
    f"/{SERVICE}/ListBeds": Protect("read", "staff_directory", "internal"),
    f"/{SERVICE}/GetInvoice": Protect("read", "invoice", "financial_data"),
    f"/{SERVICE}/GetIcuChart": Protect(
        "read", "icu_record", "critical_patient_data", purpose="treatment", consented_purposes=("treatment",)
    ),
}
LAPTOP = {"id": "laptop-7", "managed": True, "compliant": True, "os": "linux", "patch_age_days": 3,
          "disk_encrypted": True, "endpoint_protection": True}  # fmt: skip
# The sample service's own login, standing in for a verified session: a user named in metadata,
# else the calling workload's mTLS identity.
USERS = {
    "dr.ana": Caller("dr.ana", ("physician", "on_call"), "pwd,otp", "medium", LAPTOP),
    "dr.ana/password-only": Caller("dr.ana", ("physician", "on_call"), "pwd", "low", LAPTOP),
}


def session_user(context: Any) -> Caller:
    user = dict(context.invocation_metadata() or ()).get("x-user")
    return USERS[user] if isinstance(user, str) and user in USERS else default_caller(context)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def _handlers(unary: Callable[..., Any], beds: Callable[..., Any]) -> grpc.GenericRpcHandler:
    unary_handler = grpc.unary_unary_rpc_method_handler(unary)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetStaff": unary_handler,
            "GetInvoice": unary_handler,
            "GetIcuChart": unary_handler,
            "Unlisted": unary_handler,
            "ListBeds": grpc.unary_stream_rpc_method_handler(beds),
        },
    )


def sync_handlers() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"ok:" + request

    def beds(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"bed-1", b"bed-2")

    return _handlers(unary, beds)


def aio_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"ok:" + request

    async def beds(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        for bed in (b"bed-1", b"bed-2"):
            yield bed

    return _handlers(unary, beds)


@dataclass
class Sample:
    """The sample service running with one kind of interceptor and decision client."""

    port: int


@contextlib.contextmanager
def sync_sample(files: TlsFiles, client: Any) -> Iterator[Sample]:
    from concurrent import futures

    interceptor = PolicyInterceptor(client, RULES, subject_of=session_user)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((sync_handlers(),))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    server.start()
    try:
        yield Sample(port)
    finally:
        server.stop(0).wait()


@contextlib.contextmanager
def aio_sample(files: TlsFiles, make_client: Callable[[], Any]) -> Iterator[Sample]:
    """A grpc.aio server on an event loop of its own thread; `make_client` runs on that loop (aio
    channels belong to the loop that made them)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        interceptor = AsyncPolicyInterceptor(make_client(), RULES, subject_of=session_user)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((aio_handlers(),))
        port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield Sample(port)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def clinic_identity(pki: Pki) -> TlsFiles:
    """The sample service's mesh identity (it serves with it and asks the policy service with it)."""
    if not (pki.directory / "clinic.crt").exists():
        pki.issue("clinic")
    return pki.files("clinic")


@pytest.fixture(scope="module")
def engine_in_process(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyServicer]:
    """The policy engine wired as the service wires it (default pack, trust data, decision cache)."""
    settings = settings_for(pki, tmp_path_factory.mktemp("local-policy"))
    engine = build_engine(settings, PolicySettings(policy_signing_required=False), LogAuditEmitter())  # unsigned pack
    yield PolicyServicer(engine)
    engine.engine.close()


CLINIC_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/clinic"
MODES = ["sync-in-process", "sync-network", "aio-in-process", "aio-network"]


@pytest.fixture(scope="module", params=MODES)
def sample(
    request: pytest.FixtureRequest,
    clinic_identity: TlsFiles,
    engine_in_process: PolicyServicer,
    policy_service: PolicyService,
) -> Iterator[Sample]:
    mode = request.param
    target = f"localhost:{policy_service.port}"
    if mode == "sync-in-process":
        with sync_sample(clinic_identity, LocalPolicyClient(engine_in_process.decide_proto, CLINIC_ID)) as s:
            yield s
    elif mode == "sync-network":
        with grpc.secure_channel(target, client_credentials(clinic_identity)) as channel:
            with sync_sample(clinic_identity, PolicyClient(channel, RetryPolicy(timeout=5.0))) as s:
                yield s
    elif mode == "aio-in-process":
        with aio_sample(
            clinic_identity, lambda: AsyncLocalPolicyClient(engine_in_process.decide_proto, CLINIC_ID)
        ) as s:
            yield s
    else:
        credentials = client_credentials(clinic_identity)
        with aio_sample(
            clinic_identity,
            lambda: AsyncPolicyClient(grpc.aio.secure_channel(target, credentials), RetryPolicy(timeout=5.0)),
        ) as s:
            yield s


@pytest.fixture(scope="module")
def caller_channel(pki: Pki, sample: Sample) -> Iterator[grpc.Channel]:
    with pki.channel("client", sample.port) as channel:
        yield channel


def invoke(channel: grpc.Channel, method: str, user: str | None = None) -> tuple[bytes, dict[str, str]]:
    metadata = (("x-user", user),) if user else ()
    response, call = channel.unary_unary(f"/{SERVICE}/{method}").with_call(b"x", metadata=metadata, timeout=10)
    return response, dict(call.trailing_metadata() or ())


def refusal(channel: grpc.Channel, method: str, user: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        invoke(channel, method, user)
    return info.value


def trailers(error: grpc.RpcError) -> dict[str, str]:
    return dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]


def test_allowed_call_passes_with_its_decision_id(caller_channel):
    response, metadata = invoke(caller_channel, "GetStaff")  # a mesh workload, internal data
    assert response == b"ok:x"
    assert len(metadata[DECISION_ID_KEY]) == 36
    beds = list(caller_channel.unary_stream(f"/{SERVICE}/ListBeds")(b"", timeout=10))
    assert beds == [b"bed-1", b"bed-2"]
    assert invoke(caller_channel, "GetIcuChart", "dr.ana")[0] == b"ok:x"  # AAL2 + managed laptop: 91.3


def test_denied_call_is_permission_denied_with_the_decision_id(caller_channel):
    error = refusal(caller_channel, "GetInvoice")  # a workload without device posture: below 85
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "below the minimum 85 for financial_data" in error.details()
    decision_id = trailers(error)[DECISION_ID_KEY]
    assert len(decision_id) == 36 and decision_id in error.details()


def test_challenge_is_unauthenticated_with_the_step_up(caller_channel):
    error = refusal(caller_channel, "GetIcuChart", "dr.ana/password-only")  # trust ~80: the step-up band
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(error)[STEP_UP_KEY] == "mfa,supervisor_approval"
    assert len(trailers(error)[DECISION_ID_KEY]) == 36
    assert "step-up required" in error.details()


def test_a_method_without_a_rule_is_refused(caller_channel):
    error = refusal(caller_channel, "Unlisted")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"/{SERVICE}/Unlisted has no enforcement rule" in error.details()


@pytest.fixture
def closed_port() -> int:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_unreachable_policy_service_fails_closed(pki, clinic_identity, closed_port, kind):
    target = f"localhost:{closed_port}"
    retry = RetryPolicy(timeout=1.0, attempts=2, backoff=0.01)
    sample: contextlib.AbstractContextManager[Sample]
    if kind == "sync":
        channel = grpc.secure_channel(target, client_credentials(clinic_identity))
        sample = sync_sample(clinic_identity, PolicyClient(channel, retry))
    else:
        credentials = client_credentials(clinic_identity)
        sample = aio_sample(
            clinic_identity, lambda: AsyncPolicyClient(grpc.aio.secure_channel(target, credentials), retry)
        )
    with sample as s, pki.channel("client", s.port) as caller:
        error = refusal(caller, "GetStaff")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "denied (decision local): policy service error UNAVAILABLE" in error.details()
    assert trailers(error)[DECISION_ID_KEY] == ""


# --- the clients alone: deadlines, what is retried, the fail-closed verdict ---------------------------


class CountingSync(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return continuation(details, request)


class CountingAio(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return await continuation(details, request)


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A listener that accepts connections and never answers: a hung policy service."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()


def decide(kind: str, files: TlsFiles, port: int, request: Any, retry: RetryPolicy) -> tuple[Any, int]:
    """One `decide` with the sync or asyncio client; returns the verdict and the attempts made."""
    target = f"localhost:{port}"
    if kind == "sync":
        counter = CountingSync()
        with grpc.secure_channel(target, client_credentials(files)) as channel:
            verdict = PolicyClient(grpc.intercept_channel(channel, counter), retry).decide(request)
        return verdict, counter.calls

    async def run() -> tuple[Any, int]:
        counter = CountingAio()
        async with grpc.aio.secure_channel(target, client_credentials(files), interceptors=[counter]) as channel:
            return await AsyncPolicyClient(channel, retry).decide(request), counter.calls

    return asyncio.run(run())


def physician(**resource: Any) -> Any:
    from ztmesh.pep import AccessRequest

    fields = {"resource_type": "icu_record", "classification": "critical_patient_data", "resource_id": "bed-3",
              "consented_purposes": ("treatment",), **resource}  # fmt: skip
    return AccessRequest(
        subject_id="dr.ana", roles=("physician", "on_call"), auth_method="pwd,otp", assurance="medium",
        device=LAPTOP, action="read", purpose="treatment", source_ip="10.1.2.3", user_agent="ehr/2.1", **fields,
    )  # fmt: skip


KINDS = ["sync", "aio"]


@pytest.mark.parametrize("kind", KINDS)
def test_client_answers_allow_and_challenge_with_the_details(kind, clinic_identity, policy_service):
    verdict, attempts = decide(kind, clinic_identity, policy_service.port, physician(), RetryPolicy(timeout=5.0))
    assert verdict.allowed and not verdict.local and attempts == 1
    assert verdict.trust_score == pytest.approx(91.3) and len(verdict.decision_id) == 36
    assert verdict.obligations == ("encrypt_transmission", "log_all_access") and verdict.policy_revision
    weak = dataclasses.replace(physician(), auth_method="pwd", assurance="low")  # AAL1: trust ~80
    verdict, _ = decide(kind, clinic_identity, policy_service.port, weak, RetryPolicy(timeout=5.0))
    assert verdict.outcome.name == "CHALLENGE" and verdict.step_up == ("mfa", "supervisor_approval")


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_argument_is_not_retried_and_is_a_deny(kind, clinic_identity, policy_service):
    bad = physician(classification="top_secret")
    verdict, attempts = decide(kind, clinic_identity, policy_service.port, bad, RetryPolicy(timeout=5.0, attempts=3))
    assert attempts == 1
    assert verdict.outcome.name == "DENY" and verdict.local and not verdict.allowed
    assert verdict.reasons[0].startswith("policy service error INVALID_ARGUMENT: ")
    assert "unknown classification 'top_secret'" in verdict.reasons[0]
    assert len(verdict.decision_id) == 36  # the id of the audited refusal, from the trailer


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_is_retried_then_fails_closed(kind, clinic_identity, closed_port):
    retry = RetryPolicy(timeout=1.0, attempts=3, backoff=0.01)
    verdict, attempts = decide(kind, clinic_identity, closed_port, physician(), retry)
    assert attempts == 3
    assert verdict.outcome.name == "DENY" and verdict.local and verdict.decision_id == ""
    assert verdict.reasons[0].startswith("policy service error UNAVAILABLE: ")


@pytest.mark.parametrize("kind", KINDS)
def test_deadline_is_respected_and_not_retried(kind, clinic_identity):
    with blackhole() as port:
        retry = RetryPolicy(timeout=0.3, attempts=3, backoff=0.01)
        verdict, attempts = decide(kind, clinic_identity, port, physician(), retry)
    assert attempts == 1, "a deadline is the answer, not a reason to ask again"
    assert verdict.outcome.name == "DENY" and verdict.local
    assert verdict.reasons[0].startswith("policy service error DEADLINE_EXCEEDED")


def test_local_client_fails_closed_when_the_engine_raises():
    def broken(request: Any, caller: str) -> Any:
        raise RuntimeError("engine exploded")

    verdict = LocalPolicyClient(broken).decide(physician())
    assert not verdict.allowed and verdict.local
    assert verdict.reasons == ("local policy engine error RuntimeError: engine exploded",)
    assert asyncio.run(AsyncLocalPolicyClient(broken).decide(physician())) == verdict
