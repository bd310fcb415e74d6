"""Attack: read or forge the stores on the wire. PostgreSQL (audit trail, key material) and Redis
(trust signals, decision cache) are hops like any other, so the services reach them over TLS with
their mesh certificates and verify the store's: PostgreSQL with `sslmode=verify-full`, Redis as
`rediss://`. The stores here speak TLS 1.3 only and require a client certificate of the mesh CA
(tests/support/servers.py `tls_postgres`, `tls_redis`), so a plaintext success is impossible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
import redis

from tests.audit.factory import events
from tests.support.gateway import wait_for
from tests.support.mesh import Pki, foreign_pki, running, settings_for
from tests.support.servers import PostgresServer, RedisServer
from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.audit.app import build_app as build_audit_app
from ztmesh.audit.errors import StoreError
from ztmesh.audit.servicer import event_to_proto
from ztmesh.audit.store_postgres import PostgresAuditStore
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import SettingsError
from ztmesh.mesh.settings import load_settings
from ztmesh.policy.app import build_app as build_policy_app

REPO = Path(__file__).resolve().parents[2]
POLICY_ENV = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
    "ZTMESH_REGO_ENGINE": "embedded",
    "ZTMESH_DECISION_CACHE": "true",
}


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return foreign_pki(tmp_path_factory.mktemp("attacker"))


def audit_dsn(tls_postgres: PostgresServer, pki: Pki, **parameters: str) -> str:
    """A fresh database's DSN as the audit workload presents it: its own certificate, the mesh CA."""
    plain = tls_postgres.new_database().partition("?")[0]
    query = dict(sslmode="verify-full", sslrootcert=str(pki.files("audit").ca), sslcert=str(pki.files("audit").cert),
                 sslkey=str(pki.files("audit").key))  # fmt: skip
    query.update(parameters)
    return f"{plain}?{urlencode(query)}"


# --- ZTMESH_REQUIRE_STORE_TLS (on in the prod overlay) ---------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named", "problem"),
    [
        ({"ZTMESH_DATABASE_URL": "postgresql://audit:pw@db.example/ztmesh"}, "ZTMESH_DATABASE_URL",
         "must say sslmode=verify-full, not nothing"),
        ({"ZTMESH_DATABASE_URL": "postgresql://audit:pw@db.example/ztmesh?sslmode=require"}, "ZTMESH_DATABASE_URL",
         "must say sslmode=verify-full, not require"),
        ({"ZTMESH_DATABASE_URL": "host=db.example user=audit sslmode=verify-ca"}, "ZTMESH_DATABASE_URL",
         "not verify-ca"),
        ({"ZTMESH_DATABASE_URL": "postgresql://audit:s3cret@db.example:notaport/x?sslmode=verify-full x"},
         "ZTMESH_DATABASE_URL", "is not a valid PostgreSQL DSN"),
        ({"ZTMESH_REDIS_URL": "redis://:pw@redis.example:6379/0"}, "ZTMESH_REDIS_URL", "must be a rediss:// URL"),
        ({"ZTMESH_REDIS_URL": "rediss://redis.example:6380/0?ssl_cert_reqs=none"}, "ZTMESH_REDIS_URL",
         "ssl_cert_reqs"),
        ({"ZTMESH_REDIS_URL": "rediss://redis.example:6380/0?ssl_check_hostname=False"}, "ZTMESH_REDIS_URL",
         "ssl_check_hostname"),
    ],
    ids=["pg-no-sslmode", "pg-require", "pg-verify-ca", "pg-garbled", "redis-plaintext", "redis-no-verify",
         "redis-no-hostname"],
)  # fmt: skip
def test_require_store_tls_stops_start_up_on_a_store_reached_without_verified_tls(env, named, problem):
    with pytest.raises(SettingsError) as refused:
        load_settings(MeshSettings, env={"ZTMESH_REQUIRE_STORE_TLS": "true", **env})
    assert refused.value.setting == named
    assert problem in refused.value.problem and "ZTMESH_REQUIRE_STORE_TLS" in refused.value.problem
    assert "pw" not in refused.value.problem.split() and "s3cret" not in refused.value.problem


def test_require_store_tls_accepts_verified_tls_and_the_embedded_stores(pki, tls_postgres, tls_redis):
    for env in (
        {"ZTMESH_DATABASE_URL": audit_dsn(tls_postgres, pki), "ZTMESH_REDIS_URL": tls_redis.url},
        {},  # SQLite and the in-process store: no network hop
    ):
        assert load_settings(MeshSettings, env={"ZTMESH_REQUIRE_STORE_TLS": "true", **env}).require_store_tls


# --- PostgreSQL -------------------------------------------------------------------------------------------


def test_audit_service_keeps_its_trail_in_postgres_over_verified_tls(pki, tls_postgres, tmp_path):
    dsn = audit_dsn(tls_postgres, pki)
    settings = settings_for(pki, tmp_path, database_url=dsn, require_store_tls=True)
    with running(build_audit_app(settings), settings) as audit:
        emitter = audit_pb2_grpc.AuditServiceStub(pki.channel("policy", audit.port))
        emitter.Append(audit_pb2.AppendRequest(events=[event_to_proto(e) for e in events(3)]), timeout=10)
        operator = audit_pb2_grpc.AuditServiceStub(pki.channel("client", audit.port))
        assert operator.Verify(audit_pb2.VerifyRequest(), timeout=10).records_checked == 3
        # Every connection of the service's pool is TLS 1.3 and presented the audit certificate.
        database = dsn.rsplit("/", 1)[1].partition("?")[0]
        with psycopg.connect(tls_postgres.dsn) as conn:
            rows = conn.execute(
                "SELECT s.ssl, s.version, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.datname = %s",
                (database,),
            ).fetchall()
    assert rows and set(rows) == {(True, "TLSv1.3", "/CN=audit")}


@pytest.mark.parametrize(
    ("parameters", "refusal"),
    [
        ({"sslmode": "disable"}, "no encryption"),
        ({"sslmode": "verify-full", "sslrootcert": "ATTACKER_CA"}, "certificate verify failed"),
        ({"host": "db.elsewhere.example", "hostaddr": "127.0.0.1"}, "does not match host name"),
        ({"sslcert": "ATTACKER_CERT", "sslkey": "ATTACKER_KEY"}, "unknown ca"),
        ({"sslcert": "", "sslkey": ""}, "certificate"),
    ],
    ids=["plaintext", "server-from-another-ca", "wrong-host-name", "client-from-another-ca", "no-client-cert"],
)  # fmt: skip
def test_postgres_connection_without_verified_mutual_tls_is_refused(pki, attacker, tls_postgres, parameters, refusal):
    swap = {
        "ATTACKER_CA": str(attacker.files("client").ca),
        "ATTACKER_CERT": str(attacker.files("client").cert),
        "ATTACKER_KEY": str(attacker.files("client").key),
    }
    dsn = audit_dsn(tls_postgres, pki, **{k: swap.get(v, v) for k, v in parameters.items()})
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(dsn, connect_timeout=5).close()
    assert refusal in str(refused.value)


def test_audit_store_refuses_a_postgres_that_is_not_the_one_named(pki, tls_postgres):
    """verify-full through the audit store itself: a server whose certificate is not for the DSN's
    host is never written to."""
    dsn = audit_dsn(tls_postgres, pki, host="db.elsewhere.example", hostaddr="127.0.0.1")
    with pytest.raises(StoreError, match="audit database"):
        PostgresAuditStore(dsn, connect_timeout=1.0)


# --- Redis ------------------------------------------------------------------------------------------------


@pytest.fixture
def policy_on(pki: Pki, tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """Start the real policy service with a given ZTMESH_REDIS_URL (signal store, decision cache), and
    the audit service it restores a Redis that lost its memory from (embedded SQLite)."""
    with contextlib.ExitStack() as stack:
        audit_settings = settings_for(pki, tmp_path / "audit")
        audit = stack.enter_context(running(build_audit_app(audit_settings), audit_settings))

        def start(redis_url: str) -> int:
            with pytest.MonkeyPatch.context() as env:
                for key, value in POLICY_ENV.items():
                    env.setenv(key, value)
                settings = settings_for(
                    pki,
                    tmp_path / "policy",
                    redis_url=redis_url,
                    require_store_tls=True,
                    audit_addr=f"localhost:{audit.port}",
                )
                return stack.enter_context(running(build_policy_app(settings), settings)).port

        yield start


def decide(pki: Pki, port: int) -> policy_pb2.DecideResponse:
    request = policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id="dr.ana", roles=["physician"], auth_method="pwd,otp"),
        resource=policy_pb2.Resource(type="public_content", id="home", classification="public"),
        action="read",
        context=policy_pb2.RequestContext(source_ip="10.1.2.3", user_agent="ehr/2.1", purpose="treatment"),
    )
    return policy_pb2_grpc.PolicyServiceStub(pki.channel("envoy", port)).Decide(request, timeout=10)


def signal_store_refusals(answer: policy_pb2.DecideResponse) -> list[str]:
    return [reason for reason in answer.reasons if "signal store" in reason]


def test_policy_service_keeps_signals_and_decisions_in_redis_over_verified_tls(pki, tls_redis, policy_on):
    port = policy_on(tls_redis.tls_url(pki.files("policy")))
    # A fresh Redis reads as one that lost its memory until the service has restored it (from audit).
    wait_for(lambda: not signal_store_refusals(decide(pki, port)), "the signal store in Redis to be usable")
    operator = policy_pb2_grpc.PolicyServiceStub(pki.channel("client", port))
    operator.ReportSignal(policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="failed_login"), timeout=10)
    stored = redis.Redis.from_url(tls_redis.url)
    keys = {key.decode() for key in stored.keys("ztmesh:*")}
    assert any(key.startswith("ztmesh:decision:") for key in keys), keys
    assert any(key.startswith("ztmesh:signals:") and "dr.ana" in key for key in keys), keys


def test_policy_service_fails_closed_on_a_redis_it_cannot_verify(pki, attacker, tls_redis, policy_on):
    """A Redis whose certificate the policy service cannot verify (here: it trusts another CA) is never
    used; the decision path fails closed with the reason."""
    port = policy_on(tls_redis.tls_url(pki.files("policy"), ca=attacker.files("client").ca))
    answer = decide(pki, port)
    assert answer.decision == policy_pb2.DECISION_DENY
    assert any("signal store unavailable" in reason for reason in signal_store_refusals(answer)), answer.reasons
    assert any("CERTIFICATE_VERIFY_FAILED" in reason for reason in answer.reasons), answer.reasons


@pytest.mark.parametrize(
    "url",
    ["plaintext", "client-from-another-ca", "no-client-cert"],
)
def test_redis_connection_without_verified_mutual_tls_is_refused(pki, attacker, tls_redis: RedisServer, url):
    urls = {
        "plaintext": f"redis://127.0.0.1:{tls_redis.port}/0",
        "client-from-another-ca": tls_redis.tls_url(attacker.files("client"), ca=pki.files("client").ca),
        "no-client-cert": f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={pki.files('client').ca}",
    }
    client = redis.Redis.from_url(urls[url], socket_timeout=5, socket_connect_timeout=5)
    with pytest.raises((redis.ConnectionError, redis.ResponseError, OSError)):
        client.ping()


# --- the production overlay -------------------------------------------------------------------------------


def test_prod_overlay_reaches_the_stores_only_over_verified_tls():
    import shutil

    from tests.k8s.manifests import OVERLAYS_DIR, find_prefixed, kustomize, missing

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl")
    assert kubectl is not None
    objects = kustomize(kubectl, OVERLAYS_DIR / "prod")
    mesh = find_prefixed(objects, "ConfigMap", "ztmesh-mesh")["data"]
    assert mesh["ZTMESH_REQUIRE_STORE_TLS"] == "true" and mesh["ZTMESH_TLS_REQUIRE_PQ"] == "true"
    tls = "/var/run/ztmesh/tls"
    assert (mesh["PGSSLMODE"], mesh["PGSSLROOTCERT"], mesh["PGSSLCERT"], mesh["PGSSLKEY"]) == (
        "verify-full", f"{tls}/ca.crt", f"{tls}/tls.crt", f"{tls}/tls.key"
    )  # fmt: skip
    # Every workload that reaches a store reads those settings and mounts its cert-manager certificate.
    store_users = 0
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            if names & {"ZTMESH_DATABASE_URL", "ZTMESH_REDIS_URL"}:
                store_users += 1
                assert any(s.get("configMapRef", {}).get("name", "").startswith("ztmesh-mesh") for s in c["envFrom"])
                assert any(m["mountPath"] == tls for m in c["volumeMounts"]), deployment["metadata"]["name"]
    assert store_users == 4  # audit, keys, plugins (PostgreSQL) and policy (Redis)
    # The stores' own certificates come from the mesh CA, for server authentication only.
    for name in ("postgres-server", "redis-server"):
        spec = next(o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == name)["spec"]
        assert spec["usages"] == ["digital signature", "server auth"] and spec["issuerRef"]["kind"] == "ClusterIssuer"
