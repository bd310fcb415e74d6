"""Fault: OPA refuses a bundle that passed ztmesh's own checks (here OPA's bundle size limit, as a
sidecar configured stricter than the policy service would). The previous bundle keeps serving
untouched on OPA, data included, through a retry and a rollback; the Redis decision cache never
answers from a revision that is not the one serving, and a swap moves every replica to a new
cache generation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.policy.conftest import bundle_dir, clock, make_engine, physician, with_resource
from tests.support.opa_bundles import OpaSidecar
from tests.support.servers import _start, find_opa
from ztmesh.policy.answer import Answer
from ztmesh.policy.bundle import check_bundle, read_bundle
from ztmesh.policy.cache import RedisDecisionCache
from ztmesh.policy.errors import BundleError
from ztmesh.policy.inputs import probe_inputs
from ztmesh.policy.model import Fault, Outcome
from ztmesh.policy.opa_server import bundle_tarball

FIXTURES = (bundle_dir, clock, make_engine)  # the policy fixtures, used by name below
SIZE_LIMIT = 200_000  # bytes per bundle file; the pack's data is a few KiB


@pytest.fixture
def strict_opa(tmp_path: Path) -> Iterator[OpaSidecar]:
    def limit(config: dict[str, Any]) -> None:
        config["bundles"]["ztmesh"]["size_limit_bytes"] = SIZE_LIMIT

    sidecar = OpaSidecar(_start("OPA", find_opa), tmp_path, limit)
    _start("OPA sidecar", sidecar.start)
    yield sidecar
    sidecar.close()


@pytest.fixture
def redis_cache(redis_url: str) -> Iterator[RedisDecisionCache]:
    cache = RedisDecisionCache(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    yield cache
    cache.close()


def _opa_data(sidecar: OpaSidecar, path: str) -> Any:
    return requests.get(f"{sidecar.url}/v1/data/{path}", timeout=5).json().get("result")


def _add_watermark_obligation(bundle_dir: Path) -> None:
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"obligations": {', '"obligations": {"confidential": ["watermark"], '))


def test_a_bundle_opa_refuses_leaves_the_old_one_serving_untouched(make_engine, bundle_dir, strict_opa, redis_cache):
    engine = make_engine(rego=strict_opa.engine(activation_timeout_s=5.0), bundle_root=bundle_dir, cache=redis_cache)
    confidential = with_resource(physician(), classification="confidential")
    old = engine.bundles.current.revision
    old_obligations = _opa_data(strict_opa, "ztmesh_pack/obligations")
    first = engine.decide(confidential)
    assert (first.outcome, first.obligations, first.cached) == (Outcome.ALLOW, (), False)
    assert engine.decide(confidential).cached

    # New data (a watermark for confidential records) plus a data file over OPA's limit.
    original = (bundle_dir / "data.json").read_text()
    _add_watermark_obligation(bundle_dir)
    (bundle_dir / "padding").mkdir()
    (bundle_dir / "padding" / "data.json").write_text('{"filler": "%s"}' % ("x" * (SIZE_LIMIT + 1000)))
    for _attempt in ("file change", "ReloadPolicy again"):
        with pytest.raises(BundleError, match="OPA refused the bundle: .*size_limit_bytes"):
            engine.reload()
        assert engine.bundles.current.revision == old and "OPA refused" in engine.info().last_error
        assert _opa_data(strict_opa, "system/bundles/ztmesh/manifest")["revision"] == old
        assert _opa_data(strict_opa, "ztmesh_pack/obligations") == old_obligations  # no new data went live
        assert _opa_data(strict_opa, "padding") is None
        decision = engine.decide(confidential)
        assert (decision.outcome, decision.obligations, decision.policy_revision) == (Outcome.ALLOW, (), old)

    # Rolled back: the same revision as serving, nothing to swap; OPA still has the old bundle.
    (bundle_dir / "data.json").write_text(original)
    (bundle_dir / "padding" / "data.json").unlink()
    (bundle_dir / "padding").rmdir()
    assert not engine.reload().changed
    assert _opa_data(strict_opa, "ztmesh_pack/obligations") == old_obligations

    # A good change swaps in; no cached answer of the old revision is served for it.
    _add_watermark_obligation(bundle_dir)
    new = engine.reload().revision
    decision = engine.decide(confidential)
    assert (decision.obligations, decision.policy_revision, decision.cached) == (("watermark",), new, False)
    assert engine.decide(confidential).cached


def test_a_swap_on_one_replica_hides_every_cached_answer_from_all(redis_url, redis_cache):
    """Entries are keyed on the revision and the generation: a replica that swaps bundles (and clears)
    makes every entry written before unreachable for every replica sharing the Redis."""
    other_replica = RedisDecisionCache(redis_url, prefix=redis_cache._prefix)
    try:
        answer = Answer(Outcome.ALLOW, ("ok",), (), ())
        redis_cache.put("rev-a:1:digest", answer)
        assert other_replica.get("rev-a:1:digest") == answer
        other_replica.clear()
        assert redis_cache.get("rev-a:1:digest") is None and other_replica.get("rev-a:1:digest") is None
        redis_cache.put("rev-a:1:digest", answer)
        assert other_replica.get("rev-a:1:digest") == answer
    finally:
        other_replica.close()


def test_an_answer_is_only_taken_from_the_revision_the_service_serves(make_engine, bundle_dir, opa_sidecar):
    """OPA answers each query with the revision it evaluated, read in the same snapshot: an OPA that
    serves another bundle than the one the service confirmed (activated behind its back) gives
    no answer at all, only a DENY naming both revisions."""
    engine = make_engine(rego=opa_sidecar.engine(), bundle_root=bundle_dir)
    serving = engine.bundles.current
    assert engine.decide(physician()).outcome is Outcome.ALLOW
    _add_watermark_obligation(bundle_dir)
    other = check_bundle(read_bundle(bundle_dir), probe_inputs()).bundle
    opa_sidecar.bundles.publish(bundle_tarball(other), other.revision)
    deadline = time.monotonic() + 10
    while _opa_data(opa_sidecar, "system/bundles/ztmesh/manifest")["revision"] != other.revision:
        assert time.monotonic() < deadline, "OPA did not take the other bundle"
        time.sleep(0.02)
    decision = engine.decide(physician())
    assert (decision.outcome, decision.fault, decision.policy_revision) == (
        Outcome.DENY, Fault.ENGINE_UNAVAILABLE, serving.revision,
    )  # fmt: skip
    assert f"serves revision {other.revision}, not {serving.revision}" in decision.reasons[0]
