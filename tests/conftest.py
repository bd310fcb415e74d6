"""Test-wide fixtures: real servers (tests/support/servers.py) and the mesh PKI/server helpers."""

import importlib.util

pytest_plugins = [name for name in ("tests.support.servers", "tests.support.mesh") if importlib.util.find_spec(name)]
