"""OPA in process (the default engine): every Rego value comes back as OPA's REST API sends it,
a bundle using a builtin the engine does not run is refused at load naming it and its file:line,
many threads share one prepared query, and the bundle's tests mean what `opa test` says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ztmesh.cli import main
from ztmesh.policy import opa_inproc
from ztmesh.policy.answer import parse_answer
from ztmesh.policy.bundle import check_bundle, read_bundle
from ztmesh.policy.errors import BundleError, EngineError, MalformedDecision, StaleBundle
from ztmesh.policy.inputs import probe_inputs
from ztmesh.policy.opa_inproc import (
    OpaEmbeddedEngine,
    PreparedQuery,
    RegoRuntimeError,
    load_library,
    run_tests,
    timeout_ms,
)
from ztmesh.policy.rego import UNDEFINED


@dataclass(frozen=True)
class Modules:
    modules: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    revision: str = "r1"
    entrypoint: str = "data.t.value"


VALUES = """package t

deny contains {"msg": sprintf("%s is not allowed", [r])} if some r in input.roles
nothing := null
sets := {{1, 2}, {"b", "a"}, set()}
mixed := [null, true, 1.5, "x", {"k": [1, {2}]}]
value := {"deny": deny, "nothing": nothing, "sets": sets, "mixed": mixed}
maybe := 1 if input.yes
"""


@pytest.fixture
def engine():
    engine = OpaEmbeddedEngine()
    yield engine
    engine.close()


def test_every_rego_value_round_trips(engine):
    bundle = Modules({"t.rego": VALUES})
    engine.install(bundle)
    value = engine.evaluate(bundle, {}, {"roles": ["intern", "guest"]})
    # As OPA's REST API: a set is an array in OPA's order, objects stay objects, null stays null.
    assert value == {
        "deny": [{"msg": "guest is not allowed"}, {"msg": "intern is not allowed"}],
        "nothing": None,
        "sets": [[], [1, 2], ["a", "b"]],
        "mixed": [None, True, 1.5, "x", {"k": [1, [2]]}],
    }


def test_a_null_rule_is_null_and_an_undefined_rule_is_undefined(engine):
    null = Modules({"t.rego": VALUES}, entrypoint="data.t.nothing")
    engine.install(null)
    assert engine.evaluate(null, {}, {}) is None
    maybe = Modules({"t.rego": VALUES}, revision="r2", entrypoint="data.t.maybe")
    engine.install(maybe)
    assert engine.evaluate(maybe, {}, {}) is UNDEFINED
    assert engine.evaluate(maybe, {}, {"yes": True}) == 1
    with pytest.raises(MalformedDecision, match="undefined"):
        parse_answer(UNDEFINED)
    with pytest.raises(MalformedDecision, match="must be an object, got null"):
        parse_answer(None)


UNTESTED_BRANCH = """package ztmesh.authz

decision := {"outcome": "allow", "reasons": [], "obligations": [], "step_up": []}

fetched if {
	input.action == "never-probed"
	{BUILTIN}
}
"""


@pytest.mark.parametrize(
    ("call", "builtin", "words"),
    [
        ('http.send({"method": "get", "url": "https://example.com"})', "http.send", "refused by ztmesh"),
        ('net.lookup_ip_addr("example.com")', "net.lookup_ip_addr", "refused by ztmesh"),
        ('crypto.nonexistent("x")', "crypto.nonexistent", "undefined function"),
    ],
)
def test_a_builtin_the_engine_does_not_run_is_refused_at_load_with_file_and_line(
    bundle_dir: Path, capsys, call, builtin, words
):
    # In a branch no probe and no test reaches: found by the compiler, not at decision time.
    (bundle_dir / "extra.rego").write_text(UNTESTED_BRANCH.replace("{BUILTIN}", call).replace("authz", "extra"))
    with pytest.raises(BundleError) as info:
        check_bundle(read_bundle(bundle_dir), probe_inputs())
    assert (info.value.file, info.value.line) == ("extra.rego", 7), str(info.value)
    assert builtin in str(info.value) and words in str(info.value)
    assert main(["policy", "check", str(bundle_dir)]) == 1
    assert re.search(rf"extra\.rego:7: .*{re.escape(builtin)}", capsys.readouterr().err)


def test_crypto_jwt_and_net_builtins_regorus_lacked_now_load_and_answer(engine):
    bundle = Modules(
        {
            "t.rego": """package t
value := {
	"sha": crypto.sha256("abc"),
	"merged": net.cidr_merge(["10.0.0.0/25", "10.0.0.128/25"]),
	"jwt": io.jwt.decode("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")[1],
}
"""
        }
    )
    engine.install(bundle)
    value = engine.evaluate(bundle, {}, {})
    assert value["sha"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert value["merged"] == ["10.0.0.0/24"] and value["jwt"] == {"sub": "x"}


def test_threads_share_one_prepared_query_across_bundle_swaps(engine):
    bundles = [Modules({"t.rego": f"package t\nvalue := {{\"n\": {i}, \"r\": input.r}}"}, revision=f"r{i}")
               for i in range(6)]  # fmt: skip
    engine.install(bundles[0])
    current = [bundles[0]]
    problems: list[str] = []

    def worker(seed: int) -> None:
        for i in range(300):
            bundle = current[0]
            try:
                value = engine.evaluate(bundle, {}, {"r": seed * 1000 + i})
            except StaleBundle:
                continue
            if value != {"n": int(bundle.revision[1:]), "r": seed * 1000 + i}:
                problems.append(f"{bundle.revision}: {value}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for bundle in bundles[1:]:
        engine.install(bundle)
        current[0] = bundle
    for t in threads:
        t.join(timeout=60)
    assert not problems and not any(t.is_alive() for t in threads)
    with pytest.raises(StaleBundle):
        engine.evaluate(bundles[0], {}, {})


def test_a_runaway_evaluation_ends_with_an_error_at_the_timeout():
    # 10^8 iterations of the interpreter: minutes of work if nothing stopped it.
    slow = Modules(
        {"t.rego": "package t\nr := numbers.range(1, 10000)\nvalue := count([1 | some i in r; some j in r])"}
    )
    engine = OpaEmbeddedEngine(timeout_s=0.05)
    try:
        engine.install(slow)
        with pytest.raises(EngineError, match=r"took longer than 0.05 s \(ZTMESH_OPA_TIMEOUT\)"):
            engine.evaluate(slow, {}, {})
    finally:
        engine.close()


def test_a_missing_library_says_run_make_setup(tmp_path: Path):
    with pytest.raises(EngineError, match="missing: run make setup"):
        load_library(tmp_path / "libztmesh_opa.so")


def test_a_library_of_another_abi_is_refused_before_any_call_saying_run_make_setup(monkeypatch):
    # A build from older sources (ztm_eval without its timeout argument) crashed on the first
    # evaluation; its ABI number (ztm_version) now differs from the module's, and it is refused.
    assert opa_inproc.library().version_info["abi"] == opa_inproc.ABI_VERSION
    monkeypatch.setattr(opa_inproc, "ABI_VERSION", opa_inproc.ABI_VERSION + 1)
    with pytest.raises(EngineError, match=r"has C ABI \d+, not \d+: it was built from older sources; run make setup"):
        load_library(opa_inproc.library_path())


def _go_heap(env: dict[str, str]) -> dict[str, Any]:
    script = "import json; from ztmesh.policy.opa_inproc import library; print(json.dumps(library().version_info))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    info: dict[str, Any] = json.loads(run.stdout)
    return info


def test_the_go_heap_gets_a_limit_when_one_is_known_and_collects_less_often_only_then():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMEMLIMIT", "GOGC")}
    limited = _go_heap({**env, "GOMEMLIMIT": "300MiB"})
    assert (limited["memory_limit"], limited["gc_percent"]) == (300 * 1024 * 1024, 400)
    files = [Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    limit = next((f.read_text().strip() for f in files if f.is_file()), "max")
    if limit.isdigit() and int(limit) >= 1 << 60:  # cgroup v1's "unlimited"
        limit = "max"
    default = _go_heap(env)
    if limit.isdigit():  # in a container with a memory limit: half of it (Python shares the cgroup)
        assert (default["memory_limit"], default["gc_percent"]) == (int(limit) // 2, 400)
    else:  # no limit known: Go's defaults (no heap limit, GOGC 100)
        assert (default["memory_limit"], default["gc_percent"]) == (2**63 - 1, 100)


@pytest.mark.parametrize("text", ["released", "timed out; deadline exceeded; eval_cancel_error"])
def test_an_error_quoting_the_input_is_classified_by_its_code_not_its_words(text):
    query = PreparedQuery({"t.rego": "package t\nvalue := to_number(input.s)\n"}, {}, "data.t.value",
                          strict_builtin_errors=True)  # fmt: skip
    try:
        with pytest.raises(RegoRuntimeError, match="to_number") as info:
            query.evaluate({"s": text}, timeout_s=5)
        assert not isinstance(info.value, StaleBundle) and "took longer" not in str(info.value)
    finally:
        query.release()


def test_a_sub_millisecond_timeout_still_limits_and_a_huge_one_does_not_overflow():
    assert (timeout_ms(0), timeout_ms(0.0004), timeout_ms(1e12)) == (0, 1, 2**31 - 1)
    slow = Modules(
        {"t.rego": "package t\nr := numbers.range(1, 10000)\nvalue := count([1 | some i in r; some j in r])"}
    )
    engine = OpaEmbeddedEngine(timeout_s=0.0004)  # rounded to 0 ms, it used to mean no limit
    try:
        engine.install(slow)
        with pytest.raises(EngineError, match="took longer than 0.0004 s"):
            engine.evaluate(slow, {}, {})
    finally:
        engine.close()
    fast = PreparedQuery({"t.rego": "package t\nvalue := 1\n"}, {}, "data.t.value")
    try:
        assert fast.evaluate({}, timeout_s=1e12) == 1  # a negative C int would have been "no limit" or worse
    finally:
        fast.release()


def _opa_test_failures(opa_bin: Path, folder: Path) -> set[str]:
    run = subprocess.run([str(opa_bin), "test", "-v", str(folder)], capture_output=True, text=True, timeout=120)
    return {m.group(1) for m in re.finditer(r"^(data\.\S+): FAIL", run.stdout, re.MULTILINE)}


def test_policy_test_means_what_opa_test_means(opa_bin: Path, bundle_dir: Path):
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"patient_data": 75', '"patient_data": 80'))
    (bundle_dir / "more_test.rego").write_text(
        "package ztmesh.more_test\n\ntest_error if 1 / 0\ntest_false if false\n"
        "test_value := 7\ntodo_test_later if false\n"
    )
    bundle = read_bundle(bundle_dir)
    ours = run_tests(bundle.modules, bundle.tests, bundle.data)
    failed = {r.name for r in ours if not r.passed}
    assert failed == _opa_test_failures(opa_bin, bundle_dir)
    assert {"data.ztmesh.more_test.test_error", "data.ztmesh.more_test.test_false"} <= failed
    assert [r.name for r in ours if r.skipped] == ["data.ztmesh.more_test.todo_test_later"]
