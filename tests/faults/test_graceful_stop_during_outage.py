"""A policy pod deleted (SIGTERM) during an audit outage exits on time with decisions still spooled, and
loses none of them: the spool lives on a claim that outlives the pod (k8s/base: `<service>-spool`), where
the replacement pod takes the slot back, or a replica that kept running adopts it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.support import FaultMesh, Service, assert_nothing_lost, spool_frames, tally, wait_for, wait_in_trail
from tests.k8s.manifests import REPO_ROOT, container, find, kustomize, missing, pod_spec


@pytest.mark.parametrize("after", ["replacement pod", "surviving replica"])
def test_a_pod_deleted_during_an_audit_outage_loses_no_decision(
    fault_mesh: Callable[..., FaultMesh], tmp_path: Path, after: str
) -> None:
    claim = tmp_path / "policy-spool"  # the shared claim; each pod's data folder is its own emptyDir
    mesh = fault_mesh(policy_env={"ZTMESH_AUDIT_SPOOL_DIR": str(claim)})
    other = Service("policy", mesh.pki, tmp_path / "other-pod", dict(mesh.policy.env))
    try:
        if after == "surviving replica":
            other.start()  # holds slot 1 from now on
        with mesh.load(clients=2, rate=25) as load:
            load.wait_answers(10)
            mesh.audit.kill()
            wait_for(lambda: len(load.acknowledged()) > 100, 60, "decisions spooled during the outage")
            asked = time.monotonic()
            code = mesh.policy.stop()  # kubelet's SIGTERM: the pod is being deleted
            stopped = time.monotonic() - asked
        assert code == 0, mesh.policy.tail()
        assert spool_frames(mesh.policy) == 0 and (claim / "0").is_dir()  # nothing on the pod's own disk
        shutil.rmtree(mesh.policy.data_dir)  # the emptyDir goes with the pod
        if after == "replacement pod":
            other.start()  # a new pod, another name, the same claim: it takes slot 0 back
        mesh.audit.start()
        waiting = {a.decision_id for a in load.acknowledged()}
        drained = wait_in_trail(waiting, mesh.database_url)
    finally:
        other.close()
    recovery = f"stopped in {stopped:.1f}s; spool drained {drained:.2f}s after audit was back"
    result = tally(f"policy SIGTERMed in an audit outage, then a {after}", load, mesh.database_url, recovery=recovery)
    assert_nothing_lost(result)
    assert stopped < 10, result.line()  # within the grace period: a stop does not wait on the outage


@pytest.mark.parametrize("overlay", ["prod", "dev"])
def test_the_manifests_keep_the_spool_on_a_claim_that_outlives_the_pod(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl")
    assert kubectl is not None
    objects = kustomize(kubectl, REPO_ROOT / "k8s" / "overlays" / overlay)
    for service in ("policy", "plugins", "keys"):
        deployment = find(objects, "Deployment", service)
        main = container(deployment, service)
        spool_dir = next(e["value"] for e in main["env"] if e["name"] == "ZTMESH_AUDIT_SPOOL_DIR")
        mount = next(m for m in main["volumeMounts"] if m["mountPath"] == spool_dir)
        volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
        claim = find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if claim["spec"]["accessModes"] != ["ReadWriteMany"]:  # one pod, or one node (dev)
            single = deployment["spec"].get("strategy", {}).get("type") == "Recreate"
            assert single or overlay == "dev", f"{service}: several pods on several nodes need ReadWriteMany"
