"""Strict schema validation of rendered manifests: built-in kinds against the Kubernetes OpenAPI
schemas of the `kubernetes-validate` package, cert-manager kinds against k8s/schemas/.

Strict means an unknown or misspelt field is an error, as `kubectl apply --validate=strict` would say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_SCHEMA_DIR = REPO_ROOT / "k8s" / "schemas"
# The oldest Kubernetes minor ztmesh supports (native sleep preStop hooks, gRPC probes, PDB
# unhealthyPodEvictionPolicy) and the newest one the installed kubernetes-validate knows.
OLDEST_SUPPORTED = "1.30"
# Custom resources ztmesh ships, each validated against a schema in k8s/schemas/. Any other kind
# without a Kubernetes schema is an error, never silently skipped.
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    ("cert-manager.io/v1", "Certificate"): "cert-manager.io/certificate_v1.json",
    ("cert-manager.io/v1", "Issuer"): "cert-manager.io/issuer_v1.json",
    ("cert-manager.io/v1", "ClusterIssuer"): "cert-manager.io/clusterissuer_v1.json",
}


@dataclass(frozen=True)
class SchemaProblem:
    """One object that does not match its schema for one Kubernetes version."""

    kind: str
    name: str
    version: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} (Kubernetes {self.version}): {self.message}"


def kubernetes_versions() -> tuple[str, ...]:
    """The versions every manifest is validated for: the oldest supported and the newest known."""
    newest = kv_utils.major_minor(kubernetes_validate.latest_version())
    return (OLDEST_SUPPORTED, newest) if newest != OLDEST_SUPPORTED else (newest,)


@lru_cache(maxsize=8)
def _definitions_resource(version: str) -> Resource[Any]:
    path = f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json"
    return Resource.from_contents(kv_utils.schema_contents(path, version))


@lru_cache(maxsize=16)
def _crd_validator(schema_file: str, version: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_SCHEMA_DIR / schema_file).read_text())
    # CRD schemas borrow ObjectMeta from the Kubernetes definitions of the same version.
    registry: Registry[Any] = _definitions_resource(version) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _where(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: {error.message}" if path else error.message


def validate_object(obj: dict[str, Any], version: str) -> list[SchemaProblem]:
    """Problems of one object for one Kubernetes version (empty when it is valid)."""
    kind = str(obj.get("kind", "?"))
    name = str((obj.get("metadata") or {}).get("name", "?"))
    crd = CRD_SCHEMAS.get((str(obj.get("apiVersion")), kind))
    if crd is not None:
        errors = sorted(_crd_validator(crd, version).iter_errors(obj), key=lambda e: list(e.absolute_path))
        return [SchemaProblem(kind, name, version, _where(e)) for e in errors]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [SchemaProblem(kind, name, version, _where(exc))]
    except kubernetes_validate.SchemaNotFoundError:
        return [
            SchemaProblem(
                kind,
                name,
                version,
                f"no schema for {obj.get('apiVersion')} {kind}: not a Kubernetes {version} kind, and not "
                "one of the custom resources in scripts/manifest_schemas.py CRD_SCHEMAS",
            )
        ]
    return []


def validate_objects(objects: list[dict[str, Any]], versions: tuple[str, ...] | None = None) -> list[SchemaProblem]:
    """Validate every object for every version; all problems, not only the first."""
    problems: list[SchemaProblem] = []
    for version in versions or kubernetes_versions():
        for obj in objects:
            problems += validate_object(obj, version)
    return problems
