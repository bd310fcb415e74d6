"""Test-wide fixtures: real servers (tests/support/servers.py) and the mesh PKI/server helpers,
and OPA as the policy service's bundle-pulling sidecar."""

import importlib.util
import os

# The shipped pack is unsigned: policy services built by tests load it as in dev mode. Signing is
# exercised where it is the subject (tests/security/test_bundle_signature.py sets this itself).
os.environ.setdefault("ZTMESH_POLICY_SIGNING_REQUIRED", "false")

_PLUGINS = (
    "tests.support.servers",
    "tests.support.mesh",
    "tests.support.opa_bundles",
    "tests.support.bundle_keys",
    "tests.audit.backends",
    "tests.support.gateway_fixtures",
)
pytest_plugins = [name for name in _PLUGINS if importlib.util.find_spec(name)]
