"""Settings of the policy service (environment `ZTMESH_*`, YAML section `policy:`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ztmesh.mesh.errors import SpiffeIdError
from ztmesh.mesh.settings import one_of, positive, setting
from ztmesh.mesh.spiffe import SpiffeId
from ztmesh.policy.bundle_signing import parse_trusted_signers
from ztmesh.policy.trust_config import TrustFiles

# The shipped pack and trust data beside the sources (a checkout, installed editable): `ztmesh up`
# works from any folder. An installed image sets ZTMESH_POLICY_DIR & co. to its mounted copies.
_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def spiffe_ids(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            SpiffeId.parse(value)
        except SpiffeIdError as exc:
            return str(exc)
    return None


def signer_pins(values: tuple[str, ...]) -> str | None:
    try:
        parse_trusted_signers(values)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class PolicySettings:
    policy_dir: Path = setting(_POLICIES / "rego", doc="Rego bundle folder (OPA layout), hot-reloaded")
    trust_weights: Path = setting(
        _POLICIES / "trust" / "weights.json", doc="trust algorithm weights and thresholds (JSON), hot-reloaded"
    )
    threat_dir: Path = setting(_POLICIES / "threat", doc="folder of the IP/CIDR lists named in the weights file")
    rego_engine: str = setting(
        "embedded", doc="embedded (OPA itself, in process) or opa (an OPA server at ZTMESH_OPA_URL)",
        check=one_of("embedded", "opa"),
    )  # fmt: skip
    policy_signing_required: bool | None = setting(
        None, doc="load only bundles signed by a trusted signer (default: on unless ZTMESH_DEV_MODE)"
    )
    policy_trusted_signers: tuple[str, ...] = setting(
        (), doc="bundle signers whose signatures count, KEY_ID@sha256:FINGERPRINT (`ztmesh keys fingerprint KEY_ID`)",
        check=signer_pins,
    )  # fmt: skip
    policy_bundle_floor_file: Path | None = setting(
        None, doc="where the newest accepted bundle's signing time is kept against replays (default "
        "<data_dir>/policy/bundle-floor.json): on storage that outlives pods and is shared by replicas",
    )  # fmt: skip
    opa_url: str = setting("http://127.0.0.1:8181", doc="OPA REST API base URL, with ZTMESH_REGO_ENGINE=opa")
    opa_timeout: float = setting(
        1.0, doc="seconds one Rego evaluation (in process or by the OPA server) may take before the decision is DENY",
        check=positive,
    )  # fmt: skip
    opa_bundle_listen: str = setting(
        "127.0.0.1:8182", doc="host:port where this service serves its checked bundle to OPA (OPA's bundle API)"
    )
    opa_activation_timeout: float = setting(
        10.0, doc="seconds OPA may take to activate a new bundle before the old one stays", check=positive
    )
    decision_cache: bool = setting(True, doc="cache policy answers (in Redis when ZTMESH_REDIS_URL is set)")
    max_batch: int = setting(100, doc="maximum requests in one DecideBatch call", check=positive)
    gateway_workloads: tuple[str, ...] = setting(
        (), doc="SPIFFE IDs (of the trust domain) of workloads whose certificate counts at the gateway; others get 403"
    )
    reload_interval: float = setting(2.0, doc="seconds between looks at the policy and trust files", check=positive)
    decision_plugins: tuple[str, ...] = setting(
        (), doc="plugins consulted on every decision, `name=plugin:function` (output at input.plugins.<name>)"
    )
    plugin_timeout: float = setting(0.5, doc="seconds a decision plugin may take before the decision is DENY",
                                    check=positive)  # fmt: skip
    signal_reporters: tuple[str, ...] = setting(
        (), doc="SPIFFE IDs allowed to ReportSignal besides the operators (SIEM, IdP, EDR workloads)",
        check=spiffe_ids,
    )  # fmt: skip
    signal_rate: float = setting(20.0, doc="signals per second one reporter may send (per replica)", check=positive)
    signal_burst: int = setting(200, doc="signals one reporter may send at once (per replica)", check=positive)
    signal_max_subjects: int = setting(
        100_000, doc="subjects the in-process signal store holds; beyond, new subjects are refused", check=positive
    )
    signal_max_clock_skew: float = setting(
        2.0, doc="seconds this replica's clock may differ from the signal store's before it is reported",
        check=positive,
    )  # fmt: skip

    @property
    def trust_files(self) -> TrustFiles:
        return TrustFiles(self.trust_weights, self.threat_dir)
