"""The policy ConfigMap ships exactly policies/rego/ (no drift), under a stable name, so that a policy
rollout is an in-place ConfigMap update that never restarts the policy pods."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts import sync_policy_configmap as sync
from tests.k8s.manifests import OVERLAYS, REPO_ROOT, Objects, find, kustomize
from tests.support.bundle_keys import BundleKeys


def test_policies_kustomization_lists_the_bundle_files() -> None:
    assert sync.main(["--check"]) == 0, "run `python scripts/sync_policy_configmap.py`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_policy_configmap_equals_policies_rego(render: Callable[[str], Objects], overlay: str) -> None:
    shipped = sync.bundle_from_manifests(render(overlay))
    on_disk = sync.bundle_from_directory(REPO_ROOT / "policies" / "rego")
    assert sorted(shipped) == sorted(on_disk), "files differ between the ConfigMap and policies/rego/"
    for path, content in on_disk.items():
        assert shipped[path] == content, f"{path} differs between the ConfigMap and policies/rego/"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trust_data_is_mounted_where_the_policy_service_reads_it(
    render: Callable[[str], Objects], overlay: str
) -> None:
    objects = render(overlay)
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ztmesh-trust"]
    on_disk = {p.name: p.read_text() for folder in sync.TRUST_DIRS for p in folder.iterdir() if p.is_file()}
    assert configmap["data"] == on_disk, "ztmesh-trust differs from policies/trust/ + policies/threat/"
    (policy,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "policy"]
    pod = policy["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "policy"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "ztmesh-trust"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert env["ZTMESH_THREAT_DIR"] == mount["mountPath"]
    assert env["ZTMESH_TRUST_WEIGHTS"] == f"{mount['mountPath']}/weights.json"


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    """The kustomize tree (k8s/, deploy/envoy/, policies/) in a scratch folder with its own bundle."""
    for folder in ("k8s", "deploy"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    bundle = tmp_path / "policies" / "rego"
    (bundle / "lib").mkdir(parents=True)
    (bundle / "ztmesh" / "authz").mkdir(parents=True)
    (bundle / "main.rego").write_text("package ztmesh.main\n\nimport rego.v1\n\ndefault allow := false\n")
    (bundle / "main_test.rego").write_text(
        "package ztmesh.main_test\n\nimport rego.v1\n\ntest_deny if not data.ztmesh.main.allow\n"
    )
    (bundle / ".manifest").write_text('{"revision": "1", "roots": ["ztmesh"]}\n')
    (bundle / "lib" / "classification.rego").write_text('package ztmesh.lib\n\nminimum := {"public": 30}\n')
    (bundle / "ztmesh" / "authz" / "data.json").write_text('{"thresholds": {"public": 30, "internal": 50}}\n')
    (bundle / "lib" / "weights.bin").write_bytes(bytes(range(256)))  # not UTF-8: goes to binaryData
    return tmp_path


def _sync(repo: Path, *extra: str) -> int:
    bundle = repo / "policies" / "rego"
    return sync.main(["--bundle", str(bundle), "--output", str(repo / "policies" / "kustomization.yaml"), *extra])


def test_nested_bundle_round_trips_through_kustomize(kubectl: str, repo_copy: Path) -> None:
    assert _sync(repo_copy) == 0
    objects = kustomize(kubectl, repo_copy / "k8s" / "overlays" / "dev")
    expected = sync.bundle_from_directory(repo_copy / "policies" / "rego")
    assert "ztmesh/authz/data.json" in expected and "lib/weights.bin" in expected
    assert sync.bundle_from_manifests(objects) == expected
    configmap = find(objects, "ConfigMap", "ztmesh-policies")
    assert "lib__weights.bin" in configmap["binaryData"]


def test_content_change_keeps_the_pods_and_the_name(kubectl: str, repo_copy: Path) -> None:
    assert _sync(repo_copy) == 0
    overlay = repo_copy / "k8s" / "overlays" / "prod"
    before = kustomize(kubectl, overlay)
    (repo_copy / "policies" / "rego" / "main.rego").write_text("package ztmesh.main\n\ndefault allow := true\n")
    assert _sync(repo_copy, "--check") == 0, "a content edit must not need a re-sync"
    after = kustomize(kubectl, overlay)
    assert find(after, "Deployment", "policy") == find(before, "Deployment", "policy"), "policy pods would restart"
    assert sync.bundle_from_manifests(after)["main.rego"] == b"package ztmesh.main\n\ndefault allow := true\n"


def test_added_file_is_caught_until_synced(kubectl: str, repo_copy: Path) -> None:
    assert _sync(repo_copy) == 0
    (repo_copy / "policies" / "rego" / "consent.rego").write_text("package ztmesh.consent\n")
    assert _sync(repo_copy, "--check") == 1
    assert "consent.rego" not in sync.bundle_from_manifests(kustomize(kubectl, repo_copy / "k8s" / "overlays" / "dev"))
    assert _sync(repo_copy) == 0 and _sync(repo_copy, "--check") == 0
    assert "consent.rego" in sync.bundle_from_manifests(kustomize(kubectl, repo_copy / "k8s" / "overlays" / "dev"))


def test_flat_bundle_needs_no_volume_items(kubectl: str, tmp_path: Path) -> None:
    for folder in ("k8s", "deploy"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    bundle = tmp_path / "policies" / "rego"
    bundle.mkdir(parents=True)
    (bundle / "main.rego").write_text("package ztmesh.main\n")
    (bundle / "data.json").write_text("{}\n")
    assert _sync(tmp_path) == 0
    objects = kustomize(kubectl, tmp_path / "k8s" / "overlays" / "dev")
    volume = next(
        v
        for v in find(objects, "Deployment", "policy")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "policies"
    )
    assert "items" not in volume["configMap"], "adding a file to a flat bundle must not roll the pods"
    assert sync.bundle_from_manifests(objects) == {"main.rego": b"package ztmesh.main\n", "data.json": b"{}\n"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"bad name.rego": "x"}, "'bad name.rego' is not a valid ConfigMap key"),
        ({"a/b.rego": "x", "a__b.rego": "y"}, "both map to ConfigMap key 'a__b.rego'"),
        ({"..hidden.rego": "x"}, "not starting with '..'"),
        ({"big.json": "x" * (sync.MAX_BUNDLE_BYTES + 1)}, "a ConfigMap takes at most"),
    ],
    ids=["space in name", "key collision", "kubelet-reserved name", "too big"],
)
def test_unshippable_bundles_are_refused_with_the_file_named(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    with pytest.raises(sync.PolicyBundleError, match=message.replace("(", r"\(").replace(".", r"\.")):
        sync.bundle_files(tmp_path)


def test_symlinks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real.rego").write_text("package x\n")
    (tmp_path / "link.rego").symlink_to(tmp_path / "real.rego")
    with pytest.raises(sync.PolicyBundleError, match="link.rego is a symlink"):
        sync.bundle_files(tmp_path)


def test_the_opa_sidecar_flags_make_opa_pull_and_activate_the_bundle(
    render: Callable[[str], Objects], tmp_path: Path
) -> None:
    """The dev-opa overlay's OPA arguments, run by the real OPA against the policy service's bundle
    endpoint (the port moved to a free one): OPA activates the pack and answers with its revision."""
    from tests.policy.conftest import PACK
    from tests.support.servers import _start, find_opa, start_opa
    from ztmesh.policy.bundle import check_bundle, read_bundle
    from ztmesh.policy.inputs import probe_inputs
    from ztmesh.policy.opa_server import OpaBundleServer, OpaServerEngine

    deployment = find(render("dev-opa"), "Deployment", "policy")
    (policy,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "policy"]
    (opa_container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "opa"]
    listen = {e["name"]: e.get("value") for e in policy["env"]}["ZTMESH_OPA_BUNDLE_LISTEN"]
    flags = [a for a in opa_container["args"] if a.startswith("--set=")]
    assert f"--set=services.ztmesh.url=http://{listen}" in flags
    bundles = OpaBundleServer()
    moved = [a.replace(f"http://{listen}", bundles.url) for a in flags]
    opa = _start("OPA", lambda: start_opa(find_opa(), tmp_path, extra_args=moved))
    try:
        engine = OpaServerEngine(opa.url, bundles, activation_timeout_s=10)
        pack = check_bundle(read_bundle(PACK), probe_inputs()).bundle
        engine.install(pack)
        assert engine.serving_revision() == pack.revision
    finally:
        opa.stop()
        bundles.close()


def test_a_signed_bundle_ships_through_the_configmap_and_still_verifies(
    kubectl: str, repo_copy: Path, bundle_keys: BundleKeys
) -> None:
    """`.manifest` and `.signatures.json` are ConfigMap keys like any file: the bundle a pod mounts
    verifies against the same trusted signers as the folder that was signed."""
    from ztmesh.policy.bundle_signing import parse_trusted_signers, verify_bundle

    bundle = repo_copy / "policies" / "rego"
    shutil.rmtree(bundle)
    shutil.copytree(REPO_ROOT / "policies" / "rego", bundle)
    assert bundle_keys.sign(bundle) == 0
    assert _sync(repo_copy) == 0
    shipped = sync.bundle_from_manifests(kustomize(kubectl, repo_copy / "k8s" / "overlays" / "dev"))
    assert {".manifest", ".signatures.json"} <= set(shipped)
    mounted = repo_copy / "mounted"
    for path, content in shipped.items():
        (mounted / path).parent.mkdir(parents=True, exist_ok=True)
        (mounted / path).write_bytes(content if isinstance(content, bytes) else content.encode())
    trusted = parse_trusted_signers(bundle_keys.pins().split(","))
    assert verify_bundle(mounted, trusted).signers == (bundle_keys.classical, bundle_keys.post_quantum)
