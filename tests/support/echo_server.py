"""Run the echo app on the real server bootstrap in its own process (tests of signals and exit codes).

Usage: python -m tests.support.echo_server <cert_dir> <port>
"""

import sys
from pathlib import Path

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.echo import build_echo_app
from ztmesh.mesh.log import configure_logging
from ztmesh.mesh.server import MeshServer
from ztmesh.mesh.spiffe import authorize_any

if __name__ == "__main__":
    cert_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    configure_logging("echo")
    settings = MeshSettings(cert_dir=cert_dir, port=port, metrics_port=0, health_port=0, grace_period=10.0)
    MeshServer(build_echo_app(authorize_any()), settings, identity="policy").run_until_signalled()
    sys.exit(0)
