"""The audit witness in every overlay: the audit pod writes checkpoints to its own claim at the path it
is told (ZTMESH_AUDIT_WITNESS_DIR), and audit-verify reads the same claim, read-only, on the node that
holds it (the claim is ReadWriteOnce)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.k8s.manifests import OVERLAYS, Objects, container, find, pod_spec
from ztmesh.audit.settings import AuditSettings


def _witness(objects: Objects, kind: str, name: str) -> tuple[str, dict, dict]:
    """(the env var's value, its volume mount, the volume) of a workload's witness."""
    workload = find(objects, kind, name)
    main = container(workload, name)
    env = {e["name"]: e.get("value") for e in main.get("env") or []}
    path = env["ZTMESH_AUDIT_WITNESS_DIR"]
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    return path, mount, volume


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_audit_and_its_verifier_share_the_witness_claim(render: Callable[[str], Objects], overlay: str) -> None:
    assert "audit_witness_dir" in AuditSettings.__dataclass_fields__  # the setting the env var feeds
    objects = render(overlay)
    path, mount, volume = _witness(objects, "Deployment", "audit")
    claim = find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert not mount.get("readOnly") and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    verify_path, verify_mount, verify_volume = _witness(objects, "CronJob", "audit-verify")
    assert verify_path == path
    assert verify_volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert verify_mount["readOnly"] is True
    (term,) = pod_spec(find(objects, "CronJob", "audit-verify"))["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    audit_labels = find(objects, "Deployment", "audit")["spec"]["template"]["metadata"]["labels"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= audit_labels.items()
