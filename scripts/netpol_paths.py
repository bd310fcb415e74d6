"""NetworkPolicy reasoning over rendered manifests: which pods a policy selects, and whether a client
may reach a Service port once every policy (ingress of the target, egress of the client) is applied.

Pods are the pod templates of workloads; sources outside the rendered objects (other namespaces,
IP blocks, "anyone") count as clients whose egress this repository does not control.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def namespace_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def ref(obj: Obj) -> str:
    """`Kind/namespace/name` of an object, as findings name it."""
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name', '?')}"


@dataclass(frozen=True)
class Workload:
    """A pod template and the object that owns it."""

    obj: Obj
    pod: Obj  # the PodSpec
    labels: dict[str, str] = field(hash=False)

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def namespace(self) -> str:
        return namespace_of(self.obj)

    @property
    def ref(self) -> str:
        return ref(self.obj)

    def containers(self, with_init: bool = True) -> Iterator[Obj]:
        yield from self.pod.get("containers") or []
        if with_init:
            yield from self.pod.get("initContainers") or []

    def named_port(self, name: str) -> int | None:
        for container in self.containers():
            for port in container.get("ports") or []:
                if port.get("name") == name:
                    return int(port["containerPort"])
        return None

    def port_name(self, number: int) -> str | None:
        for container in self.containers():
            for port in container.get("ports") or []:
                if port.get("containerPort") == number:
                    return port.get("name")
        return None


def workloads(objects: list[Obj]) -> list[Workload]:
    found = []
    for obj in objects:
        path = _TEMPLATE_PATHS.get(str(obj.get("kind")))
        if obj.get("kind") == "Pod":
            found.append(Workload(obj, obj.get("spec") or {}, dict((obj.get("metadata") or {}).get("labels") or {})))
            continue
        if path is None:
            continue
        template: Any = obj
        for key in path:
            template = (template or {}).get(key)
        template = template or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        found.append(Workload(obj, template.get("spec") or {}, labels))
    return found


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def is_empty_selector(selector: Obj | None) -> bool:
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


def policy_types(policy: Obj) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


@dataclass(frozen=True)
class Port:
    """A destination port on a pod: number, optional container-port name and protocol."""

    number: int
    name: str | None
    protocol: str = "TCP"

    def allowed_by(self, rule_ports: list[Obj] | None) -> bool:
        if not rule_ports:
            return True
        for item in rule_ports:
            if item.get("protocol", "TCP") != self.protocol:
                continue
            value = item.get("port")
            if value is None:
                return True
            if isinstance(value, int):
                end = item.get("endPort", value)
                if value <= self.number <= end:
                    return True
            elif value == self.name:
                return True
        return False


class NetworkModel:
    """The rendered NetworkPolicies and namespaces, answering reachability questions."""

    def __init__(self, objects: list[Obj]) -> None:
        self.policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
        self.workloads = workloads(objects)
        self.namespace_labels: dict[str, dict[str, str]] = {}
        for obj in objects:
            if obj.get("kind") == "Namespace":
                name = obj["metadata"]["name"]
                self.namespace_labels[name] = dict(obj["metadata"].get("labels") or {})

    def labels_of_namespace(self, namespace: str) -> dict[str, str]:
        return {**self.namespace_labels.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}

    def policies_for(self, workload: Workload, direction: str) -> list[Obj]:
        return [
            p
            for p in self.policies
            if namespace_of(p) == workload.namespace
            and direction in policy_types(p)
            and selects((p.get("spec") or {}).get("podSelector"), workload.labels)
        ]

    def has_default_deny(self, namespace: str) -> bool:
        for p in self.policies:
            spec = p.get("spec") or {}
            if (
                namespace_of(p) == namespace
                and is_empty_selector(spec.get("podSelector"))
                and {"Ingress", "Egress"} <= set(policy_types(p))
                and not spec.get("ingress")
                and not spec.get("egress")
            ):
                return True
        return False

    def _peer_namespaces_only(self, peer: Obj, policy_namespace: str) -> str | None:
        """The one rendered namespace a peer can match, or None when it may match namespaces outside."""
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None:
            return policy_namespace
        match_labels = ns_selector.get("matchLabels") or {}
        if set(match_labels) == {NAMESPACE_NAME_LABEL} and not ns_selector.get("matchExpressions"):
            name = match_labels[NAMESPACE_NAME_LABEL]
            return name if any(w.namespace == name for w in self.workloads) else None
        return None

    def _peer_matches(self, peer: Obj, policy_namespace: str, workload: Workload) -> bool:
        if "ipBlock" in peer:
            return False  # pod IPs are not known from manifests
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None:
            ns_ok = workload.namespace == policy_namespace
        else:
            ns_ok = selects(ns_selector, self.labels_of_namespace(workload.namespace))
        return ns_ok and selects(peer.get("podSelector"), workload.labels)

    def egress_allows(self, source: Workload, target: Workload, port: Port) -> bool:
        policies = self.policies_for(source, "Egress")
        if not policies:
            return True
        for policy in policies:
            for rule in (policy.get("spec") or {}).get("egress") or []:
                if not port.allowed_by(rule.get("ports")):
                    continue
                peers = rule.get("to")
                if not peers or any(self._peer_matches(p, namespace_of(policy), target) for p in peers):
                    return True
        return False

    def clients(self, target: Workload, port: Port) -> tuple[bool, list[Workload]]:
        """(reachable from outside the rendered objects, rendered workloads the ingress rules admit)."""
        policies = self.policies_for(target, "Ingress")
        if not policies:
            return True, []
        external = False
        admitted: list[Workload] = []
        for policy in policies:
            for rule in (policy.get("spec") or {}).get("ingress") or []:
                if not port.allowed_by(rule.get("ports")):
                    continue
                peers = rule.get("from")
                if not peers:
                    external = True
                    continue
                for peer in peers:
                    if "ipBlock" in peer:
                        external = True
                        continue
                    namespace = self._peer_namespaces_only(peer, namespace_of(policy))
                    if namespace is None:
                        external = True
                        continue
                    admitted += [
                        w
                        for w in self.workloads
                        if w is not target and self._peer_matches(peer, namespace_of(policy), w)
                    ]
        return external, admitted

    def path_exists(self, target: Workload, port: Port) -> tuple[bool, str]:
        """Whether any client can reach `port` on `target`, and why not when it cannot."""
        external, admitted = self.clients(target, port)
        if external:
            return True, ""
        if not admitted:
            return False, f"no ingress rule of {target.ref} admits any client on port {port.number}"
        for source in admitted:
            if self.egress_allows(source, target, port):
                return True, ""
        names = ", ".join(sorted({w.ref for w in admitted}))
        return False, f"ingress admits {names} on port {port.number}, but none of them may send to it (egress)"
