"""Each real-server fixture and start helper gives a working server (and fails, not skips, under CI)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support import servers
from tests.support.processes import MissingComponent, ServerStartError, spawn
from tests.support.servers import PostgresServer, free_port, start_envoy


def _http(
    method: str, url: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_postgres_superuser_dsn_runs_queries(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT current_database(), current_user, 41 + 1").fetchone() == (
            "ztmesh_test",
            "postgres",
            42,
        )


def test_new_database_is_fresh_and_empty_even_when_the_name_was_used(postgres: PostgresServer) -> None:
    dsn = postgres.new_database("support_fresh")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE leftover (x int)")
    again = postgres.new_database("support_fresh")
    with psycopg.connect(again) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert again == dsn
    assert tables == (0,)


def test_restricted_role_can_insert_and_select_but_not_create_or_delete(postgres: PostgresServer) -> None:
    dsn = postgres.new_database("support_roles")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, body text)")
    # A password that needs URL-quoting proves dsn_for escapes it.
    postgres.create_role("support_writer", "p@ss:w/rd %1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("GRANT SELECT, INSERT ON events TO support_writer")
    restricted = postgres.dsn_for("support_roles", "support_writer", "p@ss:w/rd %1")
    with psycopg.connect(restricted, autocommit=True) as conn:
        conn.execute("INSERT INTO events VALUES (1, 'a')")
        assert conn.execute("SELECT body FROM events").fetchall() == [("a",)]
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM events")


def test_create_role_twice_changes_the_password(postgres: PostgresServer) -> None:
    postgres.create_role("support_rotating", "first")
    postgres.create_role("support_rotating", "second")
    with psycopg.connect(postgres.dsn_for("ztmesh_test", "support_rotating", "second")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("support_rotating",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn_for("ztmesh_test", "support_rotating", "first"))


def test_redis_ping_set_get(redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("ztmesh:support", "value")
        assert client.get("ztmesh:support") == b"value"
    finally:
        client.close()


def test_opa_binary_is_the_pinned_version(opa_bin: Path) -> None:
    out = subprocess.run([str(opa_bin), "version"], capture_output=True, text=True, timeout=30, check=True)
    version = next(line for line in out.stdout.splitlines() if line.startswith("Version:"))
    pinned = next(
        line.split('"')[1].lstrip("v")
        for line in (Path(__file__).parents[2] / "scripts" / "install-deps.sh").read_text().splitlines()
        if line.startswith("OPA_VERSION=")
    )
    assert version.startswith("Version: 1.")
    if opa_bin.parent.parent.name == ".tools":  # ours, not some other `opa` found on PATH
        assert version == f"Version: {pinned}"


def test_opa_server_is_healthy_and_evaluates_a_pushed_policy(opa_server: str) -> None:
    assert _http("GET", f"{opa_server}/health")[0] == 200
    policy = b'package ztmesh.support\n\nallow if input.role == "clinician"\n'
    status, body = _http("PUT", f"{opa_server}/v1/policies/support", policy, "text/plain")
    assert status == 200, body
    query = f"{opa_server}/v1/data/ztmesh/support/allow"
    for role, expected in (("clinician", True), ("visitor", None)):
        status, body = _http("POST", query, json.dumps({"input": {"role": role}}).encode())
        assert status == 200
        assert json.loads(body).get("result") is expected


def test_opa_server_rejects_a_bad_policy_with_a_clear_error(opa_server: str) -> None:
    status, body = _http("PUT", f"{opa_server}/v1/policies/bad", b"package bad\nallow if {", "text/plain")
    assert status == 400
    assert json.loads(body)["code"] == "invalid_parameter"


def test_envoy_binary_runs(envoy_bin: Path) -> None:
    out = subprocess.run([str(envoy_bin), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert "/1.40.0/" in out.stdout


ENVOY_DIRECT_RESPONSE = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 418, body: {{inline_string: "served by envoy"}}}}
"""


def test_start_envoy_serves_a_listener(envoy_bin: Path, tmp_path: Path) -> None:
    listener = free_port()
    server = start_envoy(
        lambda admin: ENVOY_DIRECT_RESPONSE.format(admin=admin, listener=listener), envoy_bin, tmp_path
    )
    try:
        assert _http("GET", f"http://127.0.0.1:{listener}/anything") == (418, b"served by envoy")
        assert _http("GET", f"{server.admin_url}/ready")[0] == 200
    finally:
        server.stop()
    assert server.handle.process.returncode is not None


def _missing_component() -> None:
    raise MissingComponent("frobnicator is not installed")


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("true", pytest.fail.Exception), ("1", pytest.fail.Exception), ("", pytest.skip.Exception)],
)
def test_missing_component_fails_under_ci_and_skips_otherwise(
    ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Frobnicator unavailable: frobnicator is not installed"):
        servers._start("Frobnicator", _missing_component)


def test_a_server_that_cannot_start_names_itself_and_shows_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match=r"(?s)false-server exited while starting.*boom"):
        spawn("false-server", tmp_path, lambda port: ["sh", "-c", "echo boom; exit 3"], lambda port: False)
