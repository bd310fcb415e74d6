"""Settings of the plugins service (environment `ZTMESH_*`, YAML section `plugins:`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ztmesh.mesh.settings import positive, setting
from ztmesh.plugins.verifier import algorithm_problem, trusted_signer_problem


def _each(check: Callable[[str], str | None]) -> Callable[[tuple[str, ...]], str | None]:
    return lambda entries: next((problem for e in entries if (problem := check(e))), None)


@dataclass(frozen=True)
class PluginsSettings:
    plugin_max_fuel: int = setting(2_000_000_000, doc="most fuel (wasm instructions) one call may use", check=positive)
    plugin_max_timeout_ms: int = setting(5_000, doc="longest wall-clock deadline of one call", check=positive)
    plugin_max_memory_bytes: int = setting(256 * 1024 * 1024, doc="largest linear memory of one call", check=positive)
    plugin_max_table_elements: int = setting(100_000, doc="largest table of one call", check=positive)
    plugin_max_input_bytes: int = setting(4 * 1024 * 1024, doc="largest JSON input of one call", check=positive)
    plugin_max_output_bytes: int = setting(4 * 1024 * 1024, doc="largest JSON output of one call", check=positive)
    plugin_capabilities: tuple[str, ...] = setting((), doc="capabilities plugins may request (only `wasi` exists)")
    plugin_signing_required: bool | None = setting(
        None,
        doc="require a signature by a trusted signer to register or load a module (default: on unless ZTMESH_DEV_MODE)",
    )
    plugin_trusted_signers: tuple[str, ...] = setting(
        (),
        doc="keys whose signatures count, as KEY_ID@sha256:FINGERPRINT (`ztmesh keys fingerprint KEY_ID`); "
        "pinned by public key, so a rebound key id is not trusted",
        check=_each(trusted_signer_problem),
    )
    plugin_signer_algorithms: tuple[str, ...] = setting(
        ("ML-DSA-65", "ML-DSA-87"), doc="signature algorithms plugin signers may use", check=_each(algorithm_problem)
    )
