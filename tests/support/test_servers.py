"""Each real-server fixture gives a working server (or fails under CI)."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import psycopg
import pytest
import redis


def test_postgres_runs_queries_and_restricted_roles_work(postgres):
    dsn = postgres.new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        conn.execute("CREATE TABLE t (x int)")
    postgres.create_role("reader_role", "reader-pw")
    dbname = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("GRANT SELECT ON t TO reader_role")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with psycopg.connect(postgres.dsn_for(dbname, "reader_role", "reader-pw"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE u (x int)")


def test_redis_round_trip(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.set("ztmesh:test", "v")
    assert client.get("ztmesh:test") == b"v"


def test_opa_server_evaluates_a_pushed_policy(opa_server):
    policy = b"package t\nimport rego.v1\nallow if input.x == 1\n"
    request = urllib.request.Request(f"{opa_server}/v1/policies/t", data=policy, method="PUT")
    assert urllib.request.urlopen(request, timeout=5).status == 200
    query = urllib.request.Request(f"{opa_server}/v1/data/t/allow", data=json.dumps({"input": {"x": 1}}).encode(),
                                   method="POST", headers={"Content-Type": "application/json"})
    assert json.load(urllib.request.urlopen(query, timeout=5))["result"] is True


def test_envoy_binary_runs(envoy_bin):
    out = subprocess.run([str(envoy_bin), "--version"], capture_output=True, text=True, timeout=60)
    assert "1.40.0" in out.stdout
