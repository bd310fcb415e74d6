"""The targets of issue 15, each beside the ratio measured in this run of `make bench` and whether it
is met; then the floors under them - what the cheapest possible call would cost on this machine, from
rows of the same run. Benches report their measured values with `bench.harness.record`; run.py prints
both tables."""

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


CORES = 2  # what the load generator and every service share on the machine the targets were set for


def floors(values: dict[str, float]) -> str:
    """What the Decide and echo targets ask for beside the least a call could cost here (CPU per call,
    all processes, microseconds): the load generator's call, grpc.aio serving it with no ztmesh code, the
    decision in process, and - for Decide - its durable record at the best batching 16 callers allow (all
    16 in one Append, plus a sixteenth of a bare client call for the emitter). Nothing else of ours is
    counted, so a floor above its budget is a target no work on our code reaches on this machine."""
    needed = ("floor_echo_us", "floor_load_generator_us", "floor_bare_server_us", "floor_bare_client_us",
              "floor_record_us", "floor_decision_cached_us", "floor_decision_uncached_us")  # fmt: skip
    missing = [name for name in needed if name not in values]
    if missing:
        return f"floors: not measured ({', '.join(missing)})"
    v = values
    record = v["floor_record_us"] + v["floor_bare_client_us"] / 16
    rows = [f"{'floor (least CPU a call can cost here, us)':<56} {'floor':>8} {'budget':>8} {'best possible':>14}",
            "-" * 90]  # fmt: skip
    for label, decision, goal in (("Decide, cache on", "floor_decision_cached_us", 0.8),
                                  ("Decide, cache off", "floor_decision_uncached_us", 0.7)):  # fmt: skip
        floor = v["floor_load_generator_us"] + v["floor_bare_server_us"] + v[decision] + record
        budget = v["floor_echo_us"] / goal
        rows.append(f"{label + f' (target >= {goal:g}x echo)':<56} {floor:8.0f} {budget:8.0f} "
                    f"{v['floor_echo_us'] / floor:13.2f}x")  # fmt: skip
    echo = v["floor_bare_server_us"] + v["floor_bare_client_us"]
    rows.append(f"{'bare echo (target >= 4500/s)':<56} {echo:8.0f} {CORES * 1e6 / 4500:8.0f} "
                f"{CORES * 1e6 / echo:12.0f}/s")  # fmt: skip
    rows.append(f"{'  ... with a load generator that cost nothing':<56} {v['floor_bare_server_us']:8.0f} "
                f"{CORES * 1e6 / 4500:8.0f} {CORES * 1e6 / v['floor_bare_server_us']:12.0f}/s")  # fmt: skip
    return "\n".join(rows)
