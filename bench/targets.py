"""The targets of issue 15, each beside the ratio measured in this run of `make bench` and whether it
is met. Benches report their measured values with `bench.harness.record`; run.py prints the table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    measure: str  # the key benches record under
    label: str
    goal: float
    at_least: bool = True  # False: the measured value must be at most `goal`
    unit: str = "x"

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        met = value >= self.goal if self.at_least else value <= self.goal
        return "met" if met else "NOT met"


TARGETS = (
    Target("decide_off_16", "Decide, cache off, 16 in flight / bare echo", 0.7),
    Target("decide_off_64", "Decide, cache off, 64 in flight / bare echo", 0.7),
    Target("decide_on_16", "Decide, cache on, 16 in flight / bare echo", 0.8),
    Target("decide_on_64", "Decide, cache on, 64 in flight / bare echo", 0.8),
    Target("echo_16", "bare echo on the mesh stack, 16 in flight", 4500, unit="/s"),
    Target("envoy_warm_ceiling", "Envoy -> ztmesh ext_authz, cache warm / Envoy alone", 0.35),
    Target("envoy_off_opa", "Envoy -> ztmesh / Envoy -> OPA-Envoy, throughput, cache off", 2.0),
    Target("envoy_warm_opa", "Envoy -> ztmesh / Envoy -> OPA-Envoy, throughput, cache warm", 2.0),
    Target("envoy_off_opa_p99", "Envoy -> ztmesh / Envoy -> OPA-Envoy, p99, cache off", 0.6, at_least=False),
    Target("envoy_warm_opa_p99", "Envoy -> ztmesh / Envoy -> OPA-Envoy, p99, cache warm", 0.6, at_least=False),
    Target(
        "keys_cost_16", "keys Encrypt+Decrypt 1 KiB over gRPC / in process, cost, 16 in flight", 3.0, at_least=False
    ),  # fmt: skip
    Target("plugins_trivial_16", "plugins Execute (trivial) / bare echo, 16 in flight", 0.7),
)


def read_results(path: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            values[entry["measure"]] = float(entry["value"])
    return values


def table(values: dict[str, float]) -> str:
    rows = [f"{'measure':<72} {'measured':>10} {'target':>9}  result", "-" * 104]
    for t in TARGETS:
        value = values.get(t.measure)
        shown = "-" if value is None else (f"{value:.0f}{t.unit}" if t.unit == "/s" else f"{value:.2f}{t.unit}")
        goal = f"{'>=' if t.at_least else '<='} {t.goal:g}{t.unit}"
        rows.append(f"{t.label:<72} {shown:>10} {goal:>9}  {t.verdict(value)}")
    return "\n".join(rows)
