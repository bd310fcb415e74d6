"""Test-wide fixtures: real servers (tests/support/servers.py) and the mesh PKI/server helpers,
and OPA as the policy service's bundle-pulling sidecar."""

import importlib.util

_PLUGINS = ("tests.support.servers", "tests.support.mesh", "tests.support.opa_bundles")
pytest_plugins = [name for name in _PLUGINS if importlib.util.find_spec(name)]
