"""What every fault scenario needs: real audit and policy processes on fixed ports that can be killed,
frozen and restarted, steady Decide load that records every answer, and the bookkeeping that looks each
acknowledged decision up in the audit trail (lost, stored twice, wrongly allowed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.mesh import Pki
from tests.support.processes import free_port, log_tail
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[str] = []  # one line per scenario, printed at the end of the run (conftest.py)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


# --- processes --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Service:
    """`ztmesh serve <name>` in its own process group (ZTMESH_PROCESSES > 1 forks children), on a port that
    stays the same across restarts so its peers find it again."""

    name: str
    pki: Pki
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, ready: bool = True, **env: str) -> Service:
        self.env.update(env)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ZTMESH_")}
        full = {
            **base, "ZTMESH_CERT_DIR": str(self.pki.directory), "ZTMESH_DATA_DIR": str(self.data_dir),
            "ZTMESH_PORT": str(self.port), "ZTMESH_METRICS_PORT": "0", "ZTMESH_HEALTH_PORT": "0",
            "ZTMESH_GRACE_PERIOD": "3", **self.env,
        }  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            argv = [sys.executable, "-m", "ztmesh.cli", "serve", self.name]
            self.process = subprocess.Popen(
                argv, env=full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if ready:
            self.wait_ready()
        return self

    def serving(self) -> bool:
        try:
            with self.pki.channel("client", self.port) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving():
            assert self.process is not None and self.process.poll() is None, f"{self.name} exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.name} not SERVING within {timeout:.0f} s:\n{self.tail()}"
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up, no flush, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (what kubelet sends), and the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()


def audit_service(pki: Pki, root: Path, database_url: str, **env: str) -> Service:
    return Service("audit", pki, root / "audit", {"ZTMESH_DATABASE_URL": database_url, **env})


def policy_service(pki: Pki, root: Path, audit: Service, **env: str) -> Service:
    files = {
        "ZTMESH_AUDIT_ADDR": audit.address, "ZTMESH_POLICY_DIR": str(ROOT / "policies" / "rego"),
        "ZTMESH_TRUST_WEIGHTS": str(ROOT / "policies" / "trust" / "weights.json"),
        "ZTMESH_THREAT_DIR": str(ROOT / "policies" / "threat"), "ZTMESH_DECISION_CACHE": "false",
        "ZTMESH_DEV_MODE": "true",  # the shipped pack is not signed; signing is not what these tests are about
    }  # fmt: skip
    return Service("policy", pki, root / "policy", {**files, **env})


def spool_frames(policy: Service) -> int:
    """Bytes in the policy service's spool segments (shipped or not): > 0 means something was spooled."""
    return sum(p.stat().st_size for p in (policy.data_dir / "spool").rglob("*.seg"))


# --- load -------------------------------------------------------------------------------------------------


def _request(expect_allow: bool, n: int) -> policy_pb2.DecideRequest:
    """A physician reading an internal schedule (ALLOW), or the same on critical patient data (DENY)."""
    return policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(
            id=f"dr.fault{n % 7}", roles=["physician"], auth_method="pwd,otp",
            assurance=policy_pb2.ASSURANCE_LEVEL_MEDIUM,
            registration=policy_pb2.ProfessionalRegistration(
                council="CRM", status=policy_pb2.REGISTRATION_STATUS_ACTIVE
            ),
        ),
        device=policy_pb2.Device(id="laptop-1", managed=True, compliant=True, patch_age_days=2, disk_encrypted=True,
                                 endpoint_protection=True),
        resource=policy_pb2.Resource(type="schedule", classification="internal" if expect_allow else
                                     "critical_patient_data"),
        action="read",
        context=policy_pb2.RequestContext(purpose="treatment"),
    )  # fmt: skip


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic time the answer arrived
    latency: float
    expect_allow: bool
    decision_id: str = ""
    outcome: str = ""  # ALLOW, DENY, CHALLENGE; "" when the RPC itself failed
    fault: str = ""
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        """Answered, and (unless the answer says it could not be) durable in the audit trail's custody."""
        return bool(self.decision_id) and not self.error and self.fault != "FAULT_AUDIT_ERROR"


class Load:
    """Steady Decide load: `clients` threads, each with its own mTLS channel, each paced to at most
    `rate` decisions a second, alternating requests that must be allowed and ones that must be denied."""

    def __init__(self, pki: Pki, policy: Service, clients: int = 4, rate: float = 40.0, timeout: float = 10.0):
        self.pki, self.policy, self.clients, self.pause, self.timeout = pki, policy, clients, 1.0 / rate, timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def request(self, n: int) -> tuple[policy_pb2.DecideRequest, bool]:
        """The n-th request and whether it must be allowed: alternately allowed and denied."""
        expect_allow = n % 2 == 0
        return _request(expect_allow, n), expect_allow

    def _run(self, client: int) -> None:
        n = client
        channel = self.pki.channel("client", self.policy.port)
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        try:
            while not self._stop.is_set():
                request, expect_allow = self.request(n)
                started = time.monotonic()
                try:
                    reply = stub.Decide(request, timeout=self.timeout)
                    answer = Answer(time.monotonic(), time.monotonic() - started, expect_allow, reply.decision_id,
                                    policy_pb2.Decision.Name(reply.decision).removeprefix("DECISION_"),
                                    policy_pb2.Fault.Name(reply.fault))  # fmt: skip
                except grpc.RpcError as err:
                    answer = Answer(time.monotonic(), time.monotonic() - started, expect_allow,
                                    error=f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]  # fmt: skip
                with self._lock:
                    self.answers.append(answer)
                n += self.clients
                self._stop.wait(self.pause)
        finally:
            channel.close()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_answers(self, more: int, timeout: float = 60) -> None:
        """Until `more` further answers arrived (load keeps flowing through whatever the fault is)."""
        target = self.count() + more
        wait_for(lambda: self.count() >= target, timeout, f"{more} more decisions")

    def acknowledged(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.acknowledged]

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= moment]


# --- the trail --------------------------------------------------------------------------------------------


def trail_decisions(database_url: str) -> Counter[str]:
    """How many records of each decision id the audit trail holds."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT decision_id, count(*) FROM audit_records WHERE action = 'decide' "
                            "GROUP BY decision_id").fetchall()  # fmt: skip
    return Counter({str(decision): int(count) for decision, count in rows})


def wait_in_trail(ids: set[str], database_url: str, timeout: float = 30, every: str = "all") -> float:
    """Seconds until `every` ("all" or "any") of the decision ids is in the trail."""
    started = time.monotonic()
    test = ids.issubset if every == "all" else (lambda trail: bool(ids & trail))
    wait_for(lambda: test(set(trail_decisions(database_url))), timeout, f"{every} of {len(ids)} decisions in the trail")
    return time.monotonic() - started


@dataclass(frozen=True)
class Tally:
    scenario: str
    answered: int
    acknowledged: int
    lost: int
    duplicates: int
    wrong_allow: int
    recovery: str
    set_aside: int = 0  # missing from the trail but quarantined and reported (a damaged spool frame)

    def line(self) -> str:
        aside = f" (+{self.set_aside} set aside and reported)" if self.set_aside else ""
        return (f"{self.scenario}: answered={self.answered} acknowledged={self.acknowledged} lost={self.lost}{aside} "
                f"duplicates={self.duplicates} wrong_allow={self.wrong_allow} recovery={self.recovery}")  # fmt: skip


def tally(
    scenario: str,
    load: Load,
    database_url: str,
    recovery: str,
    settle: float = 30,
    set_aside: frozenset[str] = frozenset(),
) -> Tally:
    """Look every acknowledged decision up in the trail (waiting up to `settle` s for spools to drain),
    count what is missing, stored twice, or allowed where the request must be denied. Decisions in
    `set_aside` (quarantined, reported) are counted apart from the silently lost."""
    acknowledged = load.acknowledged()
    wanted = {a.decision_id for a in acknowledged} - set_aside
    trail = trail_decisions(database_url)
    deadline = time.monotonic() + settle
    while wanted - set(trail) and time.monotonic() < deadline:
        time.sleep(0.2)
        trail = trail_decisions(database_url)
    with load._lock:
        answers = list(load.answers)
    result = Tally(
        scenario=scenario, answered=len(answers), acknowledged=len(wanted), lost=len(wanted - set(trail)),
        duplicates=sum(count - 1 for count in trail.values() if count > 1),
        wrong_allow=sum(1 for a in answers if a.outcome == "ALLOW" and not a.expect_allow), recovery=recovery,
        set_aside=len(set_aside),
    )  # fmt: skip
    RESULTS.append(result.line())
    print(result.line())
    return result


def assert_nothing_lost(result: Tally) -> None:
    assert result.acknowledged > 0, result.line()
    assert (result.lost, result.duplicates, result.wrong_allow) == (0, 0, 0), result.line()


@dataclass
class FaultMesh:
    """A fresh trail database, an audit service on it and a policy service emitting to it."""

    pki: Pki
    audit: Service
    policy: Service
    database_url: str

    def load(self, **kwargs: Any) -> Load:
        return Load(self.pki, self.policy, **kwargs)

    def close(self) -> None:
        for service in (self.policy, self.audit):
            service.close()
