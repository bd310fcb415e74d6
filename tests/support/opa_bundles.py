"""A real OPA server wired as the policy service's sidecar: it pulls ztmesh's bundle from an
`OpaBundleServer` (OPA's bundle service API) and reports its status there. Unlike `start_opa`, it
can be stopped and started again on the same port, as a restarted sidecar would be.

Fixture: `opa_sidecar` (an `OpaSidecar`, stopped at the end); `opa_sidecar.engine()` builds an
`OpaServerEngine` on it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ServerProcess, ServerStartError, _running, free_port, log_tail
from tests.support.servers import _start, find_opa
from ztmesh.policy.opa_server import OpaBundleServer, OpaServerEngine, opa_config


class OpaSidecar:
    """`opa run --server` on a fixed loopback port, configured with `opa_config(bundles.url)` (changed by
    `configure`, e.g. a bundle size limit), and the bundle server it pulls from."""

    def __init__(self, opa: Path, base_dir: Path, configure: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.opa = opa
        self.base_dir = base_dir
        self.bundles = OpaBundleServer()
        self.port = free_port()
        self.config = opa_config(self.bundles.url, long_poll_s=5)
        if configure is not None:
            configure(self.config)
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        assert not self.running, "already running"
        directory = Path(tempfile.mkdtemp(prefix="ztmesh-opa-sidecar-", dir=self.base_dir))
        config = directory / "config.json"
        config.write_text(json.dumps(self.config))
        log = directory / "opa.log"
        argv = [str(self.opa), "run", "--server", "--addr", f"127.0.0.1:{self.port}", "--disable-telemetry",
                "--log-level", "error", "--config-file", str(config)]  # fmt: skip
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
        self._process = ServerProcess("opa", process, directory, log)
        _running.add(self._process)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        tail = log_tail(log)
        self.stop()
        raise ServerStartError(f"OPA sidecar did not start on port {self.port}; log:\n{tail}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def engine(self, **options: Any) -> OpaServerEngine:
        return OpaServerEngine(self.url, self.bundles, **options)

    def close(self) -> None:
        self.stop()
        self.bundles.close()


@pytest.fixture
def opa_sidecar(tmp_path: Path) -> Iterator[OpaSidecar]:
    sidecar = OpaSidecar(_start("OPA", find_opa), tmp_path)
    _start("OPA sidecar", sidecar.start)
    yield sidecar
    sidecar.close()
