"""The names a decision travels under: HTTP headers Envoy adds upstream (ext_authz) and gRPC metadata
from the policy service and the PEP interceptors. Whatever a client sends under the prefix is dropped:
only ztmesh sets these."""

PREFIX = "x-ztmesh-"
DECISION_ID = "x-ztmesh-decision-id"
TRUST_SCORE = "x-ztmesh-trust-score"
OBLIGATIONS = "x-ztmesh-obligations"
STEP_UP = "x-ztmesh-step-up"
