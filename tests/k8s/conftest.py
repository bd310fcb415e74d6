"""Fixtures for the Kubernetes deployment tests: kubectl, and every overlay rendered once per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests.k8s.manifests import OVERLAYS_DIR, Objects, kustomize, missing


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        missing("kubectl")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def render(kubectl: str) -> Callable[[str], Objects]:
    """`render(overlay)` -> the overlay's objects, each overlay rendered once per session."""
    cache: dict[str, Objects] = {}

    def rendered(overlay: str) -> Objects:
        if overlay not in cache:
            cache[overlay] = kustomize(kubectl, OVERLAYS_DIR / overlay)
        return cache[overlay]

    return rendered
