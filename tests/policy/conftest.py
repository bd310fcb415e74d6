"""Policy fixtures: the shipped pack and trust data, a controllable clock, a baseline request, and a
factory of PolicyEngines wired to real stores and engines (OPA in process, or an OPA server)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import running, settings_for
from ztmesh.mesh.auditing import AuditEvent
from ztmesh.policy.answer import Answer, parse_answer
from ztmesh.policy.app import build_app
from ztmesh.policy.bundle import Bundle, BundleManager, check_bundle, read_bundle
from ztmesh.policy.cache import DecisionCache
from ztmesh.policy.decider import PluginClient, PolicyEngine
from ztmesh.policy.inputs import probe_inputs, rego_input
from ztmesh.policy.model import (
    Assurance,
    DecisionRequest,
    Device,
    Registration,
    RegistrationStatus,
    RequestContext,
    Resource,
    Subject,
)
from ztmesh.policy.opa_inproc import OpaEmbeddedEngine
from ztmesh.policy.rego import RegoEngine
from ztmesh.policy.signals import MemorySignalStore, SignalStore
from ztmesh.policy.trust import TrustResult, TrustScorer
from ztmesh.policy.trust_config import TrustFiles

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "policies" / "rego"
TRUST_FILES = TrustFiles(REPO / "policies" / "trust" / "weights.json", REPO / "policies" / "threat")
# Tuesday 10:00 in São Paulo (UTC-3): business hours for the default context factor.
TUESDAY_10H = datetime(2026, 3, 10, 13, 0, tzinfo=UTC).timestamp()


class Clock:
    """A clock tests move by hand, so decay and time of day are exact."""

    def __init__(self, now: float = TUESDAY_10H) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class EventLog:
    """An AuditEmitter keeping events in memory (the real audit client is tested with the audit service)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


def physician(**changes: Any) -> DecisionRequest:
    """Dr. Ana (CRM/SP, AAL2 with OTP) on a managed laptop in the hospital network, reading a patient
    record for treatment, to which the patient consented. `changes` replace top-level fields; the
    helpers below change nested ones."""
    base = DecisionRequest(
        subject=Subject(
            "dr.ana", ("physician",), "pwd,otp", Assurance.MEDIUM,
            Registration("CRM", "SP", "123456", RegistrationStatus.ACTIVE),
        ),
        resource=Resource("patient_record", "patient_data", "p-42", "hospital-a", ("treatment",)),
        action="read",
        device=Device("laptop-7", True, True, "linux", 3, True, True),
        context=RequestContext("10.1.2.3", "ehr/2.1", None, "treatment", "req-1"),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def with_subject(request: DecisionRequest, **changes: Any) -> DecisionRequest:
    return dataclasses.replace(request, subject=dataclasses.replace(request.subject, **changes))


def with_resource(request: DecisionRequest, **changes: Any) -> DecisionRequest:
    return dataclasses.replace(request, resource=dataclasses.replace(request.resource, **changes))


def with_context(request: DecisionRequest, **changes: Any) -> DecisionRequest:
    return dataclasses.replace(request, context=dataclasses.replace(request.context, **changes))


def with_device(request: DecisionRequest, **changes: Any) -> DecisionRequest:
    assert request.device is not None
    return dataclasses.replace(request, device=dataclasses.replace(request.device, **changes))


def registration(status: RegistrationStatus, council: str = "CRM") -> Registration:
    return Registration(council, "SP", "123456", status)


@pytest.fixture(scope="session")
def pack() -> Bundle:
    """The shipped bundle, checked (tests run, probes answered)."""
    return check_bundle(read_bundle(PACK), probe_inputs()).bundle


@pytest.fixture(scope="session")
def pack_engine(pack: Bundle) -> OpaEmbeddedEngine:
    engine = OpaEmbeddedEngine()
    engine.install(pack)
    return engine


@pytest.fixture
def answer(pack: Bundle, pack_engine: OpaEmbeddedEngine) -> Callable[..., Answer]:
    """The pack's answer for a request at an exact trust score (and flags), bypassing the trust algorithm."""

    def evaluate(request: DecisionRequest, score: float, flags: Sequence[str] = ()) -> Answer:
        document = rego_input(request, TrustResult(score, (), tuple(flags), 10, 1))
        return parse_answer(pack_engine.evaluate(pack, document, pack.prune(document)))

    return evaluate


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped pack that a test may break or change."""
    target = tmp_path / "rego"
    shutil.copytree(PACK, target)
    return target


@pytest.fixture
def clock() -> Clock:
    return Clock()


EngineFactory = Callable[..., PolicyEngine]


@pytest.fixture
def make_engine(clock: Clock) -> Iterator[EngineFactory]:
    """Build a loaded PolicyEngine; every part can be swapped for the one a test exercises."""
    engines: list[RegoEngine] = []

    def build(
        rego: RegoEngine | None = None,
        bundle_root: Path = PACK,
        signals: SignalStore | None = None,
        cache: DecisionCache | None = None,
        audit: Any = None,
        plugins: Sequence[PluginClient] = (),
        trust_files: TrustFiles = TRUST_FILES,
        engine_clock: Callable[[], float] | None = None,
        probes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> PolicyEngine:
        rego = rego or OpaEmbeddedEngine()
        engines.append(rego)
        bundles = BundleManager(bundle_root, rego, probe_inputs() if probes is None else probes)
        bundles.reload()
        return PolicyEngine(
            bundles,
            TrustScorer(trust_files.load()),
            signals or MemorySignalStore(),
            cache=cache,
            audit=audit,
            plugins=plugins,
            clock=engine_clock or clock,
        )

    yield build
    for rego in engines:
        rego.close()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the pack for a policy service under test."""
    target = tmp_path / "rego"
    shutil.copytree(PACK, target)
    return target


def serve_policy_from(monkeypatch: pytest.MonkeyPatch, policy_dir: Path) -> None:
    """Point a policy service built in this test at `policy_dir` and the shipped trust data."""
    monkeypatch.setenv("ZTMESH_POLICY_DIR", str(policy_dir))
    monkeypatch.setenv("ZTMESH_TRUST_WEIGHTS", str(TRUST_FILES.weights))
    monkeypatch.setenv("ZTMESH_THREAT_DIR", str(TRUST_FILES.threat_dir))


@pytest.fixture
def policy_server(pki, tmp_path, policy_dir, monkeypatch):
    serve_policy_from(monkeypatch, policy_dir)
    settings = settings_for(pki, tmp_path)
    with running(build_app(settings), settings) as server:
        yield server
