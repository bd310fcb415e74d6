"""The project check (scripts/check_manifests.py) catches each way a manifest can go wrong: every row
breaks one thing in a copy of the rendered dev overlay and names the finding it must produce."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import check_manifests, manifest_schemas
from tests.k8s.manifests import REPO_ROOT, Objects, container, find, pod_spec

Mutation = Callable[[Objects], None]


def _policy(objects: Objects) -> dict[str, Any]:
    return container(find(objects, "Deployment", "policy"), "policy")


def _drop(objects: Objects, kind: str, name: str) -> None:
    objects.remove(find(objects, kind, name))


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path inside the policy container (`sc.` = its securityContext)."""

    def mutate(objects: Objects) -> None:
        target = _policy(objects)
        *parents, leaf = path.replace("sc.", "securityContext.").split(".")
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value

    return mutate


def _pod_sc(key: str, value: Any) -> Mutation:
    def mutate(objects: Objects) -> None:
        pod = pod_spec(find(objects, "Deployment", "policy"))["securityContext"]
        if value is None:
            pod.pop(key)
        else:
            pod[key] = value

    return mutate


def _subpath(objects: Objects) -> None:
    mount = next(m for m in _policy(objects)["volumeMounts"] if m["name"] == "policies")
    mount["subPath"] = "main.rego"


def _envoy_loses_egress(objects: Objects) -> None:
    find(objects, "NetworkPolicy", "envoy")["spec"]["egress"].pop(0)


def _policy_ingress_wrong_port(objects: Objects) -> None:
    find(objects, "NetworkPolicy", "policy")["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 50099}]


def _wrong_spiffe_id(objects: Objects) -> None:
    find(objects, "Certificate", "keys")["spec"]["uris"] = ["spiffe://ztmesh.local/ns/ztmesh/sa/policy"]


def _envoy_pins_other_trust_domain(objects: Objects) -> None:
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("envoy-gateway"))
    text = config["data"]["envoy-gateway.yaml"]
    config["data"]["envoy-gateway.yaml"] = text.replace(
        "spiffe://ztmesh.local/ns/ztmesh/sa/policy", "spiffe://other.org/ns/ztmesh/sa/policy"
    )


def _token_mounted(objects: Objects) -> None:
    pod_spec(find(objects, "Deployment", "policy")).pop("automountServiceAccountToken")
    find(objects, "ServiceAccount", "policy").pop("automountServiceAccountToken")


def _no_seccomp(objects: Objects) -> None:
    _pod_sc("seccompProfile", None)(objects)
    _set("sc.seccompProfile", None)(objects)


def _host_network(objects: Objects) -> None:
    pod_spec(find(objects, "Deployment", "policy"))["hostNetwork"] = True


CASES: list[tuple[str, Mutation, str, str]] = [
    ("no readiness probe", _set("readinessProbe", None), "probes", "no readinessProbe"),
    ("no liveness probe", _set("livenessProbe", None), "probes", "no livenessProbe"),
    ("no cpu limit", _set("resources.limits.cpu", None), "resources", "no limits.cpu"),
    ("no memory limit", _set("resources.limits.memory", None), "resources", "no limits.memory"),
    ("no requests", _set("resources.requests", None), "resources", "no requests.cpu"),
    ("writable root fs", _set("sc.readOnlyRootFilesystem", False), "security-context", "readOnlyRootFilesystem"),
    (
        "privilege escalation unset",
        _set("sc.allowPrivilegeEscalation", None),
        "security-context",
        "allowPrivilegeEscalation",
    ),
    (
        "capabilities kept",
        _set("sc.capabilities", {"drop": ["NET_RAW"]}),
        "security-context",
        "drop does not include ALL",
    ),
    ("capability added", _set("sc.capabilities.add", ["NET_ADMIN"]), "security-context", "adds capabilities"),
    ("privileged", _set("sc.privileged", True), "security-context", "privileged is true"),
    (
        "seccomp unconfined",
        _set("sc.seccompProfile", {"type": "Unconfined"}),
        "security-context",
        "seccompProfile is Unconfined",
    ),
    ("root allowed", _set("sc.runAsNonRoot", False), "security-context", "runAsNonRoot is not true"),
    ("runs as uid 0", _pod_sc("runAsUser", 0), "security-context", "runAsUser is 0"),
    ("no seccomp anywhere", _no_seccomp, "security-context", "seccompProfile is unset"),
    ("host network", _host_network, "security-context", "hostNetwork is true"),
    ("image by tag", _set("image", "ztmesh/ztmesh:1.0"), "image-pinned", "not pinned by digest"),
    ("image latest", _set("image", "ztmesh/ztmesh:latest"), "image-pinned", "not pinned by digest"),
    ("image without tag", _set("image", "ztmesh"), "image-pinned", "not pinned by digest"),
    ("short digest", _set("image", "ztmesh@sha256:abc"), "image-pinned", "not pinned by digest"),
    ("configmap by subPath", _subpath, "no-subpath", "subPath"),
    ("api token mounted", _token_mounted, "service-account-token", "automountServiceAccountToken"),
    ("no default deny", lambda o: _drop(o, "NetworkPolicy", "default-deny"), "default-deny", "Namespace/ztmesh"),
    (
        "service without ingress rule",
        lambda o: _drop(o, "NetworkPolicy", "plugins"),
        "network-path",
        "Service/ztmesh/plugins",
    ),
    ("client cannot egress", _envoy_loses_egress, "network-path", "none of them may send to it"),
    ("ingress on the wrong port", _policy_ingress_wrong_port, "network-path", "admits any client on port 50051"),
    (
        "no store path",
        lambda o: _drop(o, "NetworkPolicy", "stores-egress-postgres"),
        "network-path",
        "Service/ztmesh/postgres",
    ),
    ("no pdb", lambda o: _drop(o, "PodDisruptionBudget", "audit"), "pdb", "Deployment/ztmesh/audit"),
    ("certificate names another workload", _wrong_spiffe_id, "spiffe-identity", "sa/keys"),
    ("envoy pins another trust domain", _envoy_pins_other_trust_domain, "spiffe-identity", "trust domain other.org"),
]


@pytest.mark.parametrize(("mutate", "rule", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_reports_each_broken_manifest(
    render: Callable[[str], Objects], mutate: Mutation, rule: str, text: str
) -> None:
    objects = copy.deepcopy(render("dev"))
    assert not check_manifests.check(objects)
    mutate(objects)
    findings = check_manifests.check(objects)
    matching = [f for f in findings if f.rule == rule and text in str(f)]
    assert matching, f"expected a {rule!r} finding mentioning {text!r}, got: {[str(f) for f in findings]}"


def test_policy_bundle_may_name_any_caller(render: Callable[[str], Objects]) -> None:
    objects = copy.deepcopy(render("dev"))
    bundle = find(objects, "ConfigMap", "ztmesh-policies")
    bundle["data"] = {"callers.rego": 'allowed := {"spiffe://partner.org/ns/clinic/sa/frontend"}\n'}
    assert not check_manifests.check(objects)


def test_release_mode_refuses_the_unreleased_image(render: Callable[[str], Objects]) -> None:
    objects = copy.deepcopy(render("dev"))
    assert not [f for f in check_manifests.check(objects, release=True) if f.rule == "placeholder-address"]
    image_findings = [f for f in check_manifests.check(objects, release=True) if f.rule == "image-released"]
    assert {f.obj.split(" container ")[0] for f in image_findings} >= {
        "Deployment/ztmesh/policy",
        "CronJob/ztmesh/audit-verify",
    }
    released = "registry.example.org/ztmesh@sha256:" + "ab" * 32
    for obj in objects:
        for c in pod_spec(obj)["containers"] if obj["kind"] in ("Deployment", "CronJob", "StatefulSet") else []:
            if "ztmesh" in c["image"]:
                c["image"] = released
    assert not check_manifests.check(objects, release=True)


SCHEMA_CASES: list[tuple[str, Mutation, str]] = [
    ("misspelt container field", _set("readinesProbe", {"grpc": {"port": 9111}}), "'readinesProbe' was unexpected"),
    ("wrong type", _set("resources.limits.cpu", ["1"]), "resources.limits.cpu"),
    ("certificate typo", lambda o: find(o, "Certificate", "policy")["spec"].update(uri=["x"]), "'uri' was unexpected"),
    (
        "bad certificate duration",
        lambda o: find(o, "Certificate", "policy")["spec"].update(duration="1 day"),
        "spec.duration",
    ),
    ("issuer without a type", lambda o: find(o, "Issuer", "ztmesh-ca")["spec"].pop("ca"), "Issuer/ztmesh-ca"),
]


@pytest.mark.parametrize(("mutate", "text"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_schema_validation_reports_invalid_objects(
    render: Callable[[str], Objects], mutate: Mutation, text: str
) -> None:
    objects = copy.deepcopy(render("dev"))
    mutate(objects)
    problems = [str(p) for p in manifest_schemas.validate_objects(objects, (manifest_schemas.OLDEST_SUPPORTED,))]
    assert any(text in p for p in problems), problems


def test_unknown_custom_resource_is_an_error_not_a_skip() -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "policy"},
        "spec": {},
    }
    (problem,) = manifest_schemas.validate_object(monitor, manifest_schemas.OLDEST_SUPPORTED)
    assert "no schema for monitoring.coreos.com/v1 ServiceMonitor" in str(problem)


def test_command_line_fails_on_a_broken_file_and_passes_the_overlays(
    tmp_path: Path, render: Callable[[str], Objects]
) -> None:
    broken = copy.deepcopy(render("dev"))
    _set("image", "ztmesh:latest")(broken)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    script = str(REPO_ROOT / "scripts" / "check_manifests.py")
    bad = subprocess.run(
        [sys.executable, script, "--no-schemas", str(path)], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and "image-pinned" in bad.stdout
    good = subprocess.run(
        [sys.executable, script, "k8s/overlays/dev", "k8s/overlays/prod"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "k8s/overlays/prod:" in good.stdout and "objects OK" in good.stdout
    missing = subprocess.run(
        [sys.executable, script, str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "nope.yaml" in missing.stderr
