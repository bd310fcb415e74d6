"""Helpers for the Kubernetes deployment tests: the overlays, rendering, and finding objects in a render."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO_ROOT / "k8s" / "overlays"
# Every overlay folder is rendered and checked: a new overlay is covered without editing the tests.
OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())

Objects = list[dict[str, Any]]


def missing(what: str) -> None:
    """Fail under CI (a missing tool there is a broken set-up), skip on a developer machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


def kustomize(kubectl: str, path: Path) -> Objects:
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def find_prefixed(objects: Objects, kind: str, prefix: str) -> dict[str, Any]:
    """A generated object whose name carries kustomize's content-hash suffix."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    assert len(matches) == 1, f"expected one {kind}/{prefix}*, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert matches, f"{obj['kind']}/{obj['metadata']['name']} has no container {name}"
    return matches[0]
