"""Bundles: a bad bundle (syntax error, failing test, wrong output shape...) is refused with file and
line while the old one keeps answering; a good one swaps in under load with no failed decision;
the watcher picks up file changes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.policy.conftest import physician, with_resource
from ztmesh.policy.bundle import check_bundle, read_bundle
from ztmesh.policy.errors import BundleError
from ztmesh.policy.inputs import probe_inputs
from ztmesh.policy.model import Fault, Outcome
from ztmesh.policy.rego import UNDEFINED
from ztmesh.policy.watch import PolicyWatcher


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new))


def _weak_tests(bundle: Path) -> None:
    """Replace the pack's tests by one that checks nothing of the output, as a careless author might."""
    (bundle / "authz_test.rego").write_text("package ztmesh.authz_test\n\ntest_loads if data.ztmesh.authz\n")


def _shape(change):
    return lambda d: (_weak_tests(d), change(d))


# (what to do to the copied pack, file and line the error must name, words of the message)
BAD_BUNDLES = [
    ("syntax error", lambda d: _edit(d / "authz.rego", "{\n\tnot data.", "{\n\tnot data === data."),
     "authz.rego", "not data === data.", "rego_parse_error"),
    ("failing test", lambda d: _edit(d / "data.json", '"patient_data": 75', '"patient_data": 76'),
     "authz_test.rego", "test_patient_data_boundary", "tests failed, first data.ztmesh.authz_test.test_patient_data"),
    ("wrong output shape", _shape(lambda d: _edit(d / "authz.rego", '"outcome": "allow",', '"outcome": "permit",')),
     "authz.rego", "decision :=", "answers the probe"),
    ("missing reasons", _shape(lambda d: _edit(d / "authz.rego", '"reasons": sort(deny),', '"why": sort(deny),')),
     "authz.rego", "decision :=", "'reasons' is missing"),
    ("runtime error", _shape(lambda d: _edit(d / "authz.rego", "count(deny) > 0", "count(deny) / 0 > 0")),
     "authz.rego", "count(deny) / 0", "divide by zero"),
    ("bad data file", lambda d: (d / "data.json").write_text('{"ztmesh_pack": {"minimum_trust": }'),
     "data.json", "minimum_trust", "not JSON"),
    ("no tests", lambda d: (d / "authz_test.rego").unlink(), "", "", "no Rego tests"),
    ("no entrypoint", _shape(lambda d: _edit(d / "authz.rego", "decision := {", "verdict := {")), "", "", "entrypoint"),
]  # fmt: skip


def _line_of(path: Path, marker: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), start=1) if marker in text)


@pytest.mark.parametrize(("name", "breakage", "file", "marker", "words"), BAD_BUNDLES, ids=[b[0] for b in BAD_BUNDLES])
def test_bad_bundle_is_refused_and_the_old_one_keeps_answering(
    make_engine, bundle_dir, name, breakage, file, marker, words
):
    engine = make_engine(bundle_root=bundle_dir)
    serving = engine.bundles.current.revision
    breakage(bundle_dir)
    with pytest.raises(BundleError) as info:
        engine.reload()
    error = info.value
    assert words in str(error)
    assert error.file == file
    if marker:
        assert error.line == _line_of(bundle_dir / file, marker), str(error)
    assert engine.bundles.current.revision == serving and engine.bundles.last_error == str(error)
    decision = engine.decide(physician())
    assert decision.outcome is Outcome.ALLOW and decision.policy_revision == serving


def test_revision_is_a_content_hash(bundle_dir):
    first = read_bundle(bundle_dir).revision
    # All of SHA-256: a signature binds the content only through it (80 bits admitted 2^40 collisions).
    assert len(first) == 64 and int(first, 16) >= 0
    assert read_bundle(bundle_dir).revision == first
    (bundle_dir / "README.md").write_text("not part of the bundle")
    assert read_bundle(bundle_dir).revision == first
    _edit(bundle_dir / "data.json", '"audit_changes_below": 80', '"audit_changes_below": 81')
    assert read_bundle(bundle_dir).revision != first


def test_nested_data_lands_at_its_folder_path(bundle_dir):
    (bundle_dir / "extra" / "lists").mkdir(parents=True)
    (bundle_dir / "extra" / "lists" / "data.yaml").write_text("wards: [icu, er]\n")
    bundle = read_bundle(bundle_dir)
    assert bundle.data_at(("extra", "lists", "wards")) == ["icu", "er"]
    (bundle_dir / "extra" / "data.json").write_text('{"lists": {"wards": []}}')
    with pytest.raises(BundleError, match="defined twice"):
        read_bundle(bundle_dir)


def test_kubernetes_configmap_layout_is_read_through_its_links(tmp_path, bundle_dir):
    """A ConfigMap volume: real files in ..<timestamp>/, `..data` linking to it, top-level links."""
    mount = tmp_path / "mount"
    stamp = mount / "..2026_03_10_13_00_00.000000001"
    stamp.mkdir(parents=True)
    for f in bundle_dir.iterdir():
        (stamp / f.name).write_bytes(f.read_bytes())
        (mount / f.name).symlink_to(Path("..data") / f.name)
    (mount / "..data").symlink_to(stamp.name)
    bundle = read_bundle(mount)
    assert bundle.revision == read_bundle(bundle_dir).revision
    assert sorted(bundle.modules) == ["authz.rego"]


def test_a_good_bundle_swaps_in_under_load_with_no_failed_decision(make_engine, bundle_dir):
    engine = make_engine(bundle_root=bundle_dir)
    old = engine.bundles.current.revision
    outcomes: list[tuple[str, str]] = []
    failures: list[object] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            d = engine.decide(physician())
            if d.fault is not Fault.NONE or d.outcome is not Outcome.ALLOW:
                failures.append(d)
            outcomes.append((d.policy_revision, d.reasons[0]))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        revisions = []
        for minimum in (74, 73, 72):  # each a real change, each passing the pack's tests
            time.sleep(0.05)
            _edit(bundle_dir / "data.json", f'"patient_data": {minimum + 1}', f'"patient_data": {minimum}')
            _relax_boundary_test(bundle_dir, minimum)
            revisions.append(engine.reload().revision)
        time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    seen = {rev for rev, _ in outcomes}
    assert old in seen and revisions[-1] in seen
    # Every answer is consistent with the revision that gave it.
    minimum_of = {old: 75, revisions[0]: 74, revisions[1]: 73, revisions[2]: 72}
    for rev, reason in outcomes:
        assert reason.endswith(f"meets the minimum {minimum_of[rev]} for patient_data"), (rev, reason)


def _relax_boundary_test(bundle_dir: Path, minimum: int) -> None:
    """Rewrite the pack's boundary test for a patient_data minimum of `minimum`."""
    test = bundle_dir / "authz_test.rego"
    lines = test.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("test_patient_data_boundary"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
    lines[start : end + 1] = [
        "test_patient_data_boundary if {\n",
        f'\toutcome({{"score": {minimum - 1}}}) == "deny"\n',
        f'\toutcome({{"score": {minimum}}}) == "allow"\n',
        "}\n",
    ]
    test.write_text("".join(lines))


def _add_watermark_obligation(bundle_dir: Path) -> None:
    _edit(bundle_dir / "data.json", '"obligations": {', '"obligations": {"confidential": ["watermark"], ')


def test_watcher_reloads_a_changed_bundle_and_ignores_a_broken_one(make_engine, bundle_dir):
    engine = make_engine(bundle_root=bundle_dir)
    watcher = PolicyWatcher(engine, interval_s=0.05)
    first = engine.bundles.current.revision
    _add_watermark_obligation(bundle_dir)
    watcher.check_once()
    second = engine.bundles.current.revision
    assert second != first
    assert engine.decide(with_resource(physician(), classification="confidential")).obligations == ("watermark",)
    _edit(bundle_dir / "authz.rego", "package ztmesh.authz", "package ztmesh.authz oops")
    watcher.check_once()
    assert engine.bundles.current.revision == second and "authz.rego" in engine.bundles.last_error


def test_watcher_thread_picks_up_changes(make_engine, bundle_dir):
    engine = make_engine(bundle_root=bundle_dir)
    first = engine.bundles.current.revision
    watcher = PolicyWatcher(engine, interval_s=0.05)
    watcher.start()
    try:
        _add_watermark_obligation(bundle_dir)
        deadline = time.monotonic() + 10
        while engine.bundles.current.revision == first and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert engine.bundles.current.revision != first


def test_check_reports_every_test(bundle_dir):
    report = check_bundle(read_bundle(bundle_dir), probe_inputs())
    assert report.failures == () and len(report.tests) >= 15
    assert report.bundle.input_paths is not None and ("trust", "score") in report.bundle.input_paths


def test_opa_engine_swaps_bundles_as_opa_bundles(make_engine, bundle_dir, opa_sidecar):
    engine = make_engine(rego=opa_sidecar.engine(), bundle_root=bundle_dir)
    first = engine.bundles.current.revision
    _add_watermark_obligation(bundle_dir)
    (bundle_dir / "extra.rego").write_text("package ztmesh.extra\n\nmarker := true\n")
    assert engine.reload().changed
    assert engine.decide(with_resource(physician(), classification="confidential")).obligations == ("watermark",)
    (bundle_dir / "extra.rego").unlink()  # a module removed from the bundle leaves the server too
    engine.reload()
    import requests

    ids = sorted(p["id"] for p in requests.get(f"{opa_sidecar.url}/v1/policies", timeout=5).json()["result"])
    assert ids == ["ztmesh/authz.rego", "ztmesh/ztmesh_serving.rego"]
    manifest = requests.get(f"{opa_sidecar.url}/v1/data/system/bundles/ztmesh/manifest", timeout=5).json()["result"]
    assert manifest["revision"] == engine.bundles.current.revision != first


# OPA accepts an indented package line (a regex anchored at ^package missed it) and a subpackage.
@pytest.mark.parametrize(
    "header", ["package ztmesh_serving", "  package ztmesh_serving", "\tpackage ztmesh_serving.inner"]
)
def test_opa_engine_refuses_a_bundle_claiming_its_serving_package(make_engine, bundle_dir, opa_sidecar, header):
    engine = make_engine(rego=opa_sidecar.engine(), bundle_root=bundle_dir)
    serving = engine.bundles.current.revision
    (bundle_dir / "spoof.rego").write_text(f'{header}\n\nrevision := "anything"\n')
    with pytest.raises(BundleError, match="spoof.rego: the package and file name ztmesh_serving are reserved"):
        engine.reload()
    assert engine.bundles.current.revision == serving == engine.engine.serving_revision()


def test_a_probe_that_loops_refuses_the_bundle_instead_of_hanging_the_load(tmp_path):
    # 10^8 iterations of the interpreter: minutes of work (under the reload lock) if nothing stopped it.
    (tmp_path / "authz.rego").write_text(
        "package ztmesh.authz\n\nr := numbers.range(1, 10000)\n\ndecision := count([1 | some i in r; some j in r])\n"
    )
    with pytest.raises(BundleError, match=r"answers the probe .* wrongly: rego evaluation took longer than 0.05 s"):
        check_bundle(read_bundle(tmp_path), probe_inputs(), require_tests=False, probe_timeout_s=0.05)


@dataclass(frozen=True)
class _Compiled:
    modules: dict[str, str]
    data: dict[str, Any]
    revision: str
    entrypoint: str


def test_opa_engine_answers_undefined_for_an_undefined_decision(opa_sidecar):
    engine = opa_sidecar.engine()
    bundle = _Compiled({"t.rego": "package t\n\ndecision := 1 if input.yes\n"}, {}, "undefined-1", "data.t.decision")
    try:
        engine.install(bundle)
        assert engine.evaluate(bundle, {}, {}) is UNDEFINED  # was None (null), which is a value
        assert engine.evaluate(bundle, {"yes": True}, {"yes": True}) == 1
    finally:
        engine.close()
