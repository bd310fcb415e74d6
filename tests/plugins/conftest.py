"""Plugin fixtures: the lgpd-analyzer built from source (make plugins), and a sandbox."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ztmesh.plugins.sandbox import Limits, Sandbox

ROOT = Path(__file__).resolve().parents[2]
ANALYZER = ROOT / "plugins" / "build" / "lgpd-analyzer.wasm"


@pytest.fixture(scope="session")
def analyzer_wasm() -> bytes:
    """Always rebuilt from the C source, so what is tested is what the source says."""
    build = subprocess.run(["make", "-C", str(ROOT / "plugins"), "-B"], capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        pytest.fail(f"make plugins failed (clang and lld come from make setup):\n{build.stderr}", pytrace=False)
    return ANALYZER.read_bytes()


@pytest.fixture(scope="session")
def session_sandbox():
    box = Sandbox(Limits())
    yield box
    box.close()
