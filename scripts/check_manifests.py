"""Project checks over rendered Kubernetes manifests: what ztmesh's security review expects of every
object beyond schema validity (probes, limits, hardened pods, pinned images, network paths, PDBs,
SPIFFE identities that match their workloads).

    python scripts/check_manifests.py k8s/overlays/dev k8s/overlays/prod
    kubectl kustomize k8s/overlays/prod | python scripts/check_manifests.py --release -

A path is a kustomization folder (rendered with `kubectl kustomize`) or a YAML file ('-' for stdin).
Exit status 1 and one line per finding when anything is wrong.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, also when run as a script
from netpol_paths import LONG_RUNNING, NetworkModel, Port, Workload, namespace_of, ref, selects  # noqa: E402

Obj = dict[str, Any]
PINNED_IMAGE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
UNRELEASED_DIGEST = "sha256:" + "0" * 64
# RFC 5737 documentation ranges: placeholders in a shipped overlay, never a real store address.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
SPIFFE_ID = re.compile(r"spiffe://([A-Za-z0-9._-]+)/ns/([a-z0-9-]+)/sa/([a-z0-9.-]+)")
SPIFFE_TRUST_DOMAIN = re.compile(r"spiffe://([A-Za-z0-9._-]+)/")
# Label of the generated policy ConfigMap (scripts/sync_policy_configmap.py).
POLICY_BUNDLE_COMPONENT = "policy-bundle"


class ManifestError(Exception):
    """The manifests could not be read or rendered; the message names the path."""


@dataclass(frozen=True)
class Finding:
    rule: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.obj}: {self.message}"


def _container_findings(w: Workload) -> Iterable[Finding]:
    pod_sc = w.pod.get("securityContext") or {}
    for c in w.containers():
        where = f"{w.ref} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(section) or {}).get(resource):
                    yield Finding("resources", where, f"no {section}.{resource}")
        image = str(c.get("image", ""))
        if not PINNED_IMAGE.match(image):
            yield Finding("image-pinned", where, f"image {image!r} is not pinned by digest (@sha256:...)")

        def effective(key: str, sc: Obj = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        if effective("runAsNonRoot") is not True:
            yield Finding("security-context", where, "runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            yield Finding("security-context", where, "runAsUser is 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            yield Finding("security-context", where, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Finding("security-context", where, "allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            yield Finding("security-context", where, "privileged is true")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield Finding("security-context", where, "capabilities.drop does not include ALL")
        if capabilities.get("add"):
            yield Finding("security-context", where, f"adds capabilities {capabilities['add']}")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield Finding("security-context", where, f"seccompProfile is {seccomp or 'unset'}, not RuntimeDefault")
    if w.kind in LONG_RUNNING:
        for c in w.containers(with_init=False):
            for probe in ("readinessProbe", "livenessProbe"):
                if not c.get(probe):
                    yield Finding("probes", f"{w.ref} container {c.get('name')}", f"no {probe}")


def _pod_findings(w: Workload, service_accounts: dict[tuple[str, str], Obj]) -> Iterable[Finding]:
    pod = w.pod
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            yield Finding("security-context", w.ref, f"{key} is true")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for v in volumes.values():
        if "hostPath" in v:
            yield Finding("security-context", w.ref, f"volume {v.get('name')} mounts a hostPath")
    for c in w.containers():
        for mount in c.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name")) or {}
            updatable = {"configMap", "secret", "projected"} & set(volume)
            if (mount.get("subPath") or mount.get("subPathExpr")) and updatable:
                yield Finding(
                    "no-subpath",
                    f"{w.ref} container {c.get('name')}",
                    f"mounts volume {mount.get('name')} with subPath: ConfigMap/Secret updates never reach the pod",
                )
    token = pod.get("automountServiceAccountToken")
    if token is None:
        account = service_accounts.get((w.namespace, pod.get("serviceAccountName") or "default"), {})
        token = account.get("automountServiceAccountToken")
    if token is not False:
        yield Finding(
            "service-account-token", w.ref, "mounts a Kubernetes API token (set automountServiceAccountToken: false)"
        )


def _network_findings(objects: list[Obj], model: NetworkModel) -> Iterable[Finding]:
    for namespace in sorted({w.namespace for w in model.workloads}):
        if not model.has_default_deny(namespace):
            yield Finding(
                "default-deny",
                f"Namespace/{namespace}",
                "no NetworkPolicy denying all ingress and egress by default (podSelector: {}, no rules)",
            )
    for svc in (o for o in objects if o.get("kind") == "Service"):
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector or spec.get("type") == "ExternalName":
            continue  # endpoints managed elsewhere
        targets = [
            w
            for w in model.workloads
            if w.namespace == namespace_of(svc) and selects({"matchLabels": selector}, w.labels)
        ]
        if not targets:
            yield Finding("network-path", ref(svc), f"selector {selector} matches no workload")
            continue
        for svc_port in spec.get("ports") or []:
            for target in targets:
                port = _target_port(svc_port, target)
                if port is None:
                    yield Finding(
                        "network-path",
                        ref(svc),
                        f"port {svc_port.get('name', svc_port.get('port'))}: targetPort {svc_port.get('targetPort')!r} "
                        f"is not a container port of {target.ref}",
                    )
                    continue
                ok, why = model.path_exists(target, port)
                if not ok:
                    yield Finding(
                        "network-path",
                        ref(svc),
                        f"port {svc_port.get('name', svc_port.get('port'))} has no NetworkPolicy path: {why}",
                    )


def _target_port(svc_port: Obj, target: Workload) -> Port | None:
    target_port = svc_port.get("targetPort", svc_port.get("port"))
    protocol = svc_port.get("protocol", "TCP")
    if isinstance(target_port, str) and not target_port.isdigit():
        number = target.named_port(target_port)
        return None if number is None else Port(number, target_port, protocol)
    number = int(str(target_port))
    return Port(number, target.port_name(number), protocol)


def _pdb_findings(objects: list[Obj], model: NetworkModel) -> Iterable[Finding]:
    budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    for w in model.workloads:
        if w.kind not in ("Deployment", "StatefulSet"):
            continue
        if not any(
            namespace_of(b) == w.namespace and selects((b.get("spec") or {}).get("selector"), w.labels) for b in budgets
        ):
            yield Finding("pdb", w.ref, "no PodDisruptionBudget selects its pods")


def _env_value(w: Workload, name: str, configmaps: dict[tuple[str, str], Obj]) -> str | None:
    for c in w.containers(with_init=False):
        for item in c.get("env") or []:
            if item.get("name") == name and "value" in item:
                return str(item["value"])
        for source in c.get("envFrom") or []:
            cm_name = (source.get("configMapRef") or {}).get("name")
            data = (configmaps.get((w.namespace, str(cm_name))) or {}).get("data") or {}
            if name in data:
                return str(data[name])
    return None


def _identity_findings(objects: list[Obj], model: NetworkModel) -> Iterable[Finding]:
    configmaps = {(namespace_of(o), o["metadata"]["name"]): o for o in objects if o.get("kind") == "ConfigMap"}
    accounts = {(namespace_of(o), o["metadata"]["name"]) for o in objects if o.get("kind") == "ServiceAccount"}
    domains = {
        str(cm["data"]["ZTMESH_TRUST_DOMAIN"])
        for cm in configmaps.values()
        if "ZTMESH_TRUST_DOMAIN" in (cm.get("data") or {})
    }
    if len(domains) > 1:
        yield Finding("spiffe-identity", "ConfigMap/*", f"several trust domains configured: {sorted(domains)}")
    mesh_domain = next(iter(domains)) if len(domains) == 1 else None
    certificates = [o for o in objects if o.get("kind") == "Certificate" and not (o.get("spec") or {}).get("isCA")]
    for cert in certificates:
        secret = cert["spec"].get("secretName")
        users = [
            w
            for w in model.workloads
            if w.namespace == namespace_of(cert)
            and any((v.get("secret") or {}).get("secretName") == secret for v in w.pod.get("volumes") or [])
        ]
        for w in users:
            domain = _env_value(w, "ZTMESH_TRUST_DOMAIN", configmaps) or mesh_domain
            namespace = _env_value(w, "ZTMESH_NAMESPACE", configmaps)
            if namespace is not None and namespace != w.namespace:
                yield Finding(
                    "spiffe-identity", w.ref, f"ZTMESH_NAMESPACE={namespace} but the workload runs in {w.namespace}"
                )
            expected = f"spiffe://{domain}/ns/{w.namespace}/sa/{w.pod.get('serviceAccountName') or 'default'}"
            if domain is not None and cert["spec"].get("uris") != [expected]:
                yield Finding(
                    "spiffe-identity",
                    ref(cert),
                    f"URI SANs {cert['spec'].get('uris')} should be exactly [{expected}] (mounted by {w.ref})",
                )
    for cm in configmaps.values():
        if (cm["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == POLICY_BUNDLE_COMPONENT:
            continue  # Rego names callers of any namespace or trust domain: data, not wiring
        text = "\n".join(str(v) for v in (cm.get("data") or {}).values())
        for domain in SPIFFE_TRUST_DOMAIN.findall(text):
            if mesh_domain is not None and domain != mesh_domain:
                yield Finding("spiffe-identity", ref(cm), f"names trust domain {domain}, the mesh's is {mesh_domain}")
        for _domain, namespace, account in SPIFFE_ID.findall(text):
            if (namespace, account) not in accounts:
                yield Finding(
                    "spiffe-identity",
                    ref(cm),
                    f"names the SPIFFE ID of ServiceAccount {namespace}/{account}, which does not exist",
                )


def _is_documentation_network(cidr: str) -> bool:
    network = ipaddress.ip_network(cidr, strict=False)
    return any(network.version == n.version and network.subnet_of(n) for n in DOCUMENTATION_NETWORKS)  # type: ignore[arg-type]


def _release_findings(objects: list[Obj], model: NetworkModel) -> Iterable[Finding]:
    for w in model.workloads:
        for c in w.containers():
            image = str(c.get("image", ""))
            registry = image.split("/", 1)[0] if "/" in image else ""
            if image.endswith(UNRELEASED_DIGEST) or registry.endswith(".invalid"):
                yield Finding(
                    "image-released",
                    f"{w.ref} container {c.get('name')}",
                    f"image {image} is the unreleased placeholder; set the release with `kustomize edit set image`",
                )
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        spec = policy.get("spec") or {}
        for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                cidr = (peer.get("ipBlock") or {}).get("cidr")
                if cidr and _is_documentation_network(cidr):
                    yield Finding(
                        "placeholder-address", ref(policy), f"{cidr} is a documentation address; name your store's"
                    )


def check(objects: list[Obj], *, release: bool = False) -> list[Finding]:
    """Every finding over a rendered set of objects (empty when all is well)."""
    objects = [o for o in objects if isinstance(o, dict) and o.get("kind")]
    model = NetworkModel(objects)
    accounts = {(namespace_of(o), o["metadata"]["name"]): o for o in objects if o.get("kind") == "ServiceAccount"}
    findings: list[Finding] = []
    for w in model.workloads:
        findings += _container_findings(w)
        findings += _pod_findings(w, accounts)
    findings += _network_findings(objects, model)
    findings += _pdb_findings(objects, model)
    findings += _identity_findings(objects, model)
    if release:
        findings += _release_findings(objects, model)
    return findings


def render(path: str) -> list[Obj]:
    """Objects of a kustomization folder (via `kubectl kustomize`), a YAML file, or '-' (stdin)."""
    if path == "-":
        text = sys.stdin.read()
    elif Path(path).is_dir():
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ManifestError(f"{path}: rendering a kustomization needs kubectl on PATH")
        done = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ManifestError(f"{path}: kubectl kustomize failed: {done.stderr.strip()}")
        text = done.stdout
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ManifestError(f"{path}: {exc.strerror}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check rendered ztmesh manifests (see module docstring).")
    parser.add_argument("paths", nargs="+", help="kustomization folder, YAML file, or - for stdin")
    parser.add_argument(
        "--release", action="store_true", help="also refuse placeholders (unreleased image, documentation CIDRs)"
    )
    parser.add_argument("--no-schemas", action="store_true", help="skip strict Kubernetes/CRD schema validation")
    args = parser.parse_args(argv)
    failed = False
    for path in args.paths:
        try:
            objects = render(path)
        except ManifestError as exc:
            print(f"check_manifests: {exc}", file=sys.stderr)
            failed = True
            continue
        problems = [str(f) for f in check(objects, release=args.release)]
        if not args.no_schemas:
            from manifest_schemas import validate_objects

            problems += [f"schema: {p}" for p in validate_objects(objects)]
        for problem in problems:
            print(f"{path}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"{path}: {len(objects)} objects OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
