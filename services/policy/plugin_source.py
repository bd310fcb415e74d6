"""Plugins of the plugins service as data sources for decisions (NIST SP 800-207's "data sources").

Each configured source names a plugin and one of its functions. On every decision the function is
given the request's free-form `attributes` (JSON) and its output — a JSON object — becomes
`input.plugins.<name>` for the Rego policies, e.g. with the lgpd-analyzer:

    ZTMESH_DECISION_PLUGINS=lgpd=lgpd-analyzer:analyze
    Decide(..., attributes={"text": "paciente Maria, CPF 123.456.789-09"})
    → input.plugins.lgpd == {"risk_score": 55, "compliance_level": "high", "findings": [...]}

A plugin that fails, times out or answers something other than a JSON object fails the decision
closed (the engine turns the exception into a DENY naming the plugin).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh.policy.model import DecisionRequest

_SPEC = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)=(?P<plugin>[a-z0-9][a-z0-9._-]*):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class PluginSpec:
    name: str  # the key under input.plugins
    plugin: str
    function: str


def parse_specs(specs: tuple[str, ...]) -> list[PluginSpec]:
    """`name=plugin:function` items; ValueError naming the first bad or repeated one."""
    parsed: list[PluginSpec] = []
    for spec in specs:
        match = _SPEC.match(spec.strip())
        if not match:
            raise ValueError(f"{spec!r} is not name=plugin:function (e.g. lgpd=lgpd-analyzer:analyze)")
        if any(p.name == match["name"] for p in parsed):
            raise ValueError(f"{match['name']!r} is named twice")
        parsed.append(PluginSpec(match["name"], match["plugin"], match["function"]))
    return parsed


class PluginDataSource:
    """One plugin function called through PluginService.Execute over mTLS."""

    def __init__(self, spec: PluginSpec, channel: grpc.Channel, timeout_s: float) -> None:
        self.name = spec.name
        self.spec = spec
        self._stub = plugins_pb2_grpc.PluginServiceStub(channel)
        self._timeout = timeout_s

    def enrich(self, request: DecisionRequest) -> Mapping[str, Any]:
        call = plugins_pb2.ExecuteRequest(
            name=self.spec.plugin, function=self.spec.function, input_json=json.dumps(request.attributes)
        )
        try:
            reply = self._stub.Execute(call, timeout=self._timeout)
        except grpc.RpcError as err:
            raise RuntimeError(f"{err.code().name}: {err.details()}") from None  # type: ignore[attr-defined]
        output = json.loads(reply.output_json)
        if not isinstance(output, dict):
            kind = type(output).__name__
            raise ValueError(f"{self.spec.plugin}.{self.spec.function} answered a {kind}, not a JSON object")
        return output
