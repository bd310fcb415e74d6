"""Every overlay renders, validates strictly against the Kubernetes and cert-manager schemas, passes the
project check, and carries the deployment contract of DESIGN.md (ports, commands, identities)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scripts import check_manifests, manifest_schemas
from tests.k8s.manifests import OVERLAYS, Objects, container, find, find_prefixed, pod_spec

Render = Callable[[str], Objects]
SERVICES = {
    "policy": (50051, 9101, 9111),
    "plugins": (50052, 9102, 9112),
    "keys": (50053, 9103, 9113),
    "audit": (50054, 9104, 9114),
}
TRUST_DOMAIN = "ztmesh.local"
NAMESPACE = "ztmesh"


def test_overlays_exist() -> None:
    assert {"dev", "dev-opa", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_for_supported_kubernetes_versions(render: Render, overlay: str) -> None:
    objects = render(overlay)
    versions = manifest_schemas.kubernetes_versions()
    assert versions[0] == manifest_schemas.OLDEST_SUPPORTED and len(objects) > 20
    problems = manifest_schemas.validate_objects(objects, versions)
    assert not problems, "\n".join(str(p) for p in problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_project_check(render: Render, overlay: str) -> None:
    findings = check_manifests.check(render(overlay))
    assert not findings, "\n".join(str(f) for f in findings)


def test_prod_release_check_refuses_only_the_documented_placeholders(render: Render) -> None:
    findings = check_manifests.check(render("prod"), release=True)
    assert {f.rule for f in findings} == {"image-released", "placeholder-address"}
    assert {f.obj for f in findings if f.rule == "placeholder-address"} == {
        "NetworkPolicy/ztmesh/stores-egress-postgres",
        "NetworkPolicy/ztmesh/stores-egress-redis",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_runs_the_one_image_with_its_contract(render: Render, overlay: str, service: str) -> None:
    objects = render(overlay)
    grpc_port, metrics_port, health_port = SERVICES[service]
    deployment = find(objects, "Deployment", service)
    spec = pod_spec(deployment)
    main = container(deployment, service)
    assert main["args"] == ["serve", service]
    assert main["image"] == container(find(objects, "Deployment", "policy"), "policy")["image"]
    assert spec["serviceAccountName"] == service
    find(objects, "ServiceAccount", service)
    env = {e["name"]: e for e in main["env"]}
    assert env["ZTMESH_PORT"]["value"] == str(grpc_port)
    assert env["ZTMESH_METRICS_PORT"]["value"] == str(metrics_port)
    assert env["ZTMESH_HEALTH_PORT"]["value"] == str(health_port)
    # Readiness follows the service's dependencies; liveness and startup only that the process runs.
    assert main["readinessProbe"]["grpc"] == {"port": health_port}
    for probe in ("livenessProbe", "startupProbe"):
        assert main[probe]["grpc"] == {"port": health_port, "service": "liveness"}, probe
    service_obj = find(objects, "Service", service)
    assert {p["port"] for p in service_obj["spec"]["ports"]} == {grpc_port, metrics_port}
    mesh = find_prefixed(objects, "ConfigMap", "ztmesh-mesh")
    assert [s["configMapRef"]["name"] for s in main["envFrom"]] == [mesh["metadata"]["name"]]
    assert mesh["data"]["ZTMESH_TRUST_DOMAIN"] == TRUST_DOMAIN and mesh["data"]["ZTMESH_NAMESPACE"] == NAMESPACE
    assert mesh["data"][f"ZTMESH_{service.upper()}_ADDR"] == f"{service}.{NAMESPACE}.svc:{grpc_port}"
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mesh["data"]["ZTMESH_TLS_CERT"] == "/var/run/ztmesh/tls/tls.crt"
    assert mounts["/var/run/ztmesh/tls"]["readOnly"] is True
    assert mesh["data"]["ZTMESH_DATA_DIR"] in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes[mounts["/var/run/ztmesh/tls"]["name"]]["secret"]["secretName"]
    certificate = find(objects, "Certificate", service)
    assert certificate["spec"]["secretName"] == secret
    assert certificate["spec"]["uris"] == [f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}"]
    assert f"{service}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    find(objects, "PodDisruptionBudget", service)
    spread = spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_scales_with_an_hpa_and_reads_the_bundle_folder(render: Render, overlay: str) -> None:
    objects = render(overlay)
    hpa = find(objects, "HorizontalPodAutoscaler", "policy")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "policy"}
    deployment = find(objects, "Deployment", "policy")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    policy = container(deployment, "policy")
    policy_dir = {e["name"]: e.get("value") for e in policy["env"]}["ZTMESH_POLICY_DIR"]
    mount = next(m for m in policy["volumeMounts"] if m["mountPath"] == policy_dir)
    assert "subPath" not in mount and mount["readOnly"] is True
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "ztmesh-policies"
    find(objects, "ConfigMap", "ztmesh-policies")  # stable name: no hash suffix


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_audit_verify_cronjob(render: Render, overlay: str) -> None:
    objects = render(overlay)
    cron = find(objects, "CronJob", "audit-verify")
    assert container(cron, "audit-verify")["args"] == ["audit", "verify"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert find(objects, "Certificate", "audit-verify")["spec"]["uris"] == [
        f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/audit-verify"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoy_gateway_mounts_the_generated_config(render: Render, overlay: str) -> None:
    objects = render(overlay)
    gateway = find(objects, "Deployment", "envoy")
    config = find_prefixed(objects, "ConfigMap", "envoy-gateway")
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert set(config["data"]) == {"envoy-gateway.yaml", "sds-identity.yaml", "sds-trust-bundle.yaml"}
    assert container(gateway, "envoy")["args"][:2] == ["--config-path", "/etc/envoy/envoy-gateway.yaml"]
    assert pod_spec(gateway)["serviceAccountName"] == "envoy"


def test_dev_brings_its_stores_and_ca(render: Render) -> None:
    objects = render("dev")
    find(objects, "StatefulSet", "postgres")
    find(objects, "Deployment", "redis")
    assert find(objects, "Issuer", "ztmesh-ca")["spec"]["ca"]["secretName"] == "ztmesh-dev-ca"
    assert find(objects, "Certificate", "ztmesh-dev-ca")["spec"]["isCA"] is True
    for cert in (o for o in objects if o["kind"] == "Certificate" and not o["spec"].get("isCA")):
        assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "ztmesh-ca"}
    env = {e["name"]: e for e in container(find(objects, "Deployment", "policy"), "policy")["env"]}
    redis_secret = env["ZTMESH_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"]
    assert redis_secret.startswith("ztmesh-redis-"), "the dev Secret is generated (content-hashed name)"
    assert [c["name"] for c in pod_spec(find(objects, "Deployment", "policy"))["containers"]] == ["policy"]


def test_dev_opa_adds_the_reference_engine_beside_policy(render: Render) -> None:
    deployment = find(render("dev-opa"), "Deployment", "policy")
    env = {e["name"]: e.get("value") for e in container(deployment, "policy")["env"]}
    assert env["ZTMESH_REGO_ENGINE"] == "opa" and env["ZTMESH_OPA_URL"] == "http://127.0.0.1:8181"
    opa = container(deployment, "opa")
    assert "--addr=127.0.0.1:8181" in opa["args"], "OPA's unauthenticated API must stay on loopback"


def test_prod_uses_external_stores_and_the_platform_issuer(render: Render) -> None:
    objects = render("prod")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "postgres") not in kinds and ("Deployment", "redis") not in kinds
    assert not [o for o in objects if o["kind"] in ("Secret", "Issuer", "ClusterIssuer")], "secrets come from outside"
    for cert in (o for o in objects if o["kind"] == "Certificate"):
        assert cert["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    for service, key in (("audit", "audit-url"), ("keys", "keys-url"), ("plugins", "plugins-url")):
        env = {e["name"]: e for e in container(find(objects, "Deployment", service), service)["env"]}
        assert env["ZTMESH_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ztmesh-database", "key": key}
    keys = find(objects, "Deployment", "keys")
    assert any(v.get("secret", {}).get("secretName") == "ztmesh-kek" for v in pod_spec(keys)["volumes"])
    assert find_prefixed(objects, "ConfigMap", "ztmesh-mesh")["data"]["ZTMESH_DEV_MODE"] == "false"
