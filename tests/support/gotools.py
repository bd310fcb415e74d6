"""Build the small Go programs that tests use as independent implementations (tlog verifiers, TLS
probes): `go build` of a folder with its own go.mod and go.sum, once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.processes import MissingComponent


def find_go() -> Path:
    """The go command: on PATH, or where Debian-based images put it (/usr/local/go/bin)."""
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if found is None:
        raise MissingComponent("the Go toolchain (go) is not installed")
    return Path(found)


def build_go_program(source: Path, output_dir: Path, timeout: float = 300.0) -> Path:
    """`go build` the main package in `source` into `output_dir`; modules come from go.sum via the proxy."""
    binary = output_dir / source.name
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
    result = subprocess.run(
        [str(find_go()), "build", "-trimpath", "-o", str(binary), "."],
        cwd=source, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"go build in {source} failed:\n{result.stderr[-2000:]}")
    return binary
