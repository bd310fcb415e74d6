"""Settings of the plugins service (environment `ZTMESH_*`, YAML section `plugins:`)."""

from __future__ import annotations

from dataclasses import dataclass

from ztmesh.mesh.settings import positive, setting


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
        None, doc="require ML-DSA signatures by a keys-service key (default: on unless ZTMESH_DEV_MODE)"
    )
