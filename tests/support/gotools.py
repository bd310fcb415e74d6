"""Build Go programs that need modules (e.g. the tlog verifier over golang.org/x/mod): `go build` of a
folder with its own go.mod and go.sum, modules from the Go module proxy. Standard-library-only
programs use tests.support.servers.go_build, which never reaches the network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.servers import find_go


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
