"""Run OPA's own conformance cases (v1/test/cases/testdata/v1 of the pinned OPA module) against a
ztmesh Rego engine, through the engine class the service uses, with OPA's comparison rules.

Usage: python scripts/opa_conformance.py [--engine opa-embedded|regorus] [--category NAME] [--show KIND]

Per category it counts: pass; silent-wrong (an answer, no error, that is not OPA's: the dangerous
kind); error (an error where OPA answers); fail (a different error from OPA's); unsupported (refused
at load); excluded (tests/policy/conformance_exclusions.yaml, with the reason). OPA's rules, from its
runner (v1/topdown/exported_test.go): the expected result sets are compared unordered; with
`sort_bindings` each binding (an array) is compared sorted; `want_error` is a substring of the
error, `want_error_code` its code; `strict_error` turns on strict builtin errors; `input_term` is
the input in Rego syntax; modules are named test-<i>.rego.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ztmesh.policy.errors import BundleError, EngineError
from ztmesh.policy.opa_inproc import OPA_VERSION, OpaEmbeddedEngine, RegoRuntimeError
from ztmesh.policy.rego import UNDEFINED, RegorusEngine

REPO = Path(__file__).resolve().parents[1]
EXCLUSIONS = REPO / "tests" / "policy" / "conformance_exclusions.yaml"
KINDS = ("pass", "silent-wrong", "error", "fail", "unsupported", "excluded")
ENGINES = {"opa-embedded": OpaEmbeddedEngine, "regorus": RegorusEngine}


def cases_dir() -> Path:
    """The cases in the Go module cache (filled by install-deps' build of OPA); OPA_CASES overrides."""
    if os.environ.get("OPA_CASES"):
        return Path(os.environ["OPA_CASES"])
    go = os.environ.get("GO", "go")
    if not any((Path(p) / "go").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        go = "/usr/local/go/bin/go"
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    return Path(cache) / f"github.com/open-policy-agent/opa@v{OPA_VERSION}" / "v1/test/cases/testdata/v1"


@dataclass(frozen=True)
class Case:
    category: str
    file: str
    note: str
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class CaseBundle:
    """A conformance case's modules and data, in the shape the engines install (CompiledBundle)."""

    modules: Mapping[str, str]
    data: Mapping[str, Any]
    revision: str = "conformance"
    entrypoint: str = "data"


@dataclass
class Outcome:
    case: Case
    kind: str
    detail: str = ""


class _Yaml12Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML as OPA reads it: only true/false are booleans (PyYAML's YAML 1.1 also takes on/off/yes/no)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_cases(root: Path, category: str | None = None) -> list[Case]:
    loader = _Yaml12Loader
    cases = []
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if category and rel.parts[0] != category:
            continue
        for raw in (yaml.load(path.read_text(), Loader=loader) or {}).get("cases", []):
            cases.append(Case(rel.parts[0], rel.as_posix(), str(raw["note"]), raw))
    return cases


def load_exclusions(path: Path = EXCLUSIONS) -> dict[str, str]:
    """note -> why it is excluded."""
    rows = yaml.safe_load(path.read_text()) or []
    return {row["note"]: row["reason"] for row in rows}


# --- OPA's comparison ----------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A hashable form in which OPA-equal JSON values are equal (1 == 1.0, object key order)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        number = float(value)
        if isinstance(value, float) and value.is_integer() and abs(number) < 2**63:
            return ("number", int(value))
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    return ("other", repr(value))


def _order(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=str)


def result_set(results: Iterable[Mapping[str, Any]], sort_bindings: bool, ignore_generated: bool) -> frozenset[Any]:
    rows = set()
    for bindings in results:
        row = {}
        for name, value in bindings.items():
            if ignore_generated and name.startswith("__localq"):
                continue
            if sort_bindings and isinstance(value, list):
                value = sorted(value, key=_order)
            row[name] = canonical(value)
        rows.add(tuple(sorted(row.items())))
    return frozenset(rows)


def run_case(engine: Any, case: Case, exclusions: Mapping[str, str]) -> Outcome:
    raw = case.raw
    if case.note in exclusions:
        return Outcome(case, "excluded", exclusions[case.note])
    modules = {f"test-{i}.rego": source for i, source in enumerate(raw.get("modules") or [])}
    bundle = CaseBundle(modules, raw.get("data") or {})
    want_error, want_code = raw.get("want_error"), raw.get("want_error_code")
    document = raw.get("input", UNDEFINED)
    try:
        got = engine.query(bundle, raw["query"], document, input_term=raw.get("input_term"),
                           strict_builtin_errors=bool(raw.get("strict_error")))  # fmt: skip
    except BundleError as exc:
        return Outcome(case, "unsupported", f"refused at load: {exc}")
    except EngineError as exc:
        if want_error is None and want_code is None:
            return Outcome(case, "error", str(exc))
        text = exc.opa_error if isinstance(exc, RegoRuntimeError) else str(exc)
        code = exc.code if isinstance(exc, RegoRuntimeError) else None
        if want_error is not None and want_error not in text:
            return Outcome(case, "fail", f"error {text!r} does not contain {want_error!r}")
        # An engine without OPA's error codes (regorus) is given the benefit of the doubt on the code.
        if want_code is not None and code is not None and code != want_code:
            return Outcome(case, "fail", f"error code {code!r}, OPA's is {want_code!r}: {text}")
        return Outcome(case, "pass")
    if want_error is not None or want_code is not None:
        return Outcome(case, "silent-wrong", f"answered {got!r}; OPA fails with {want_code or want_error!r}")
    want = raw.get("want_result")
    if want is None:
        return Outcome(case, "fail", "the case expects nothing (neither want_result nor an error)")
    sort_bindings, ignore = bool(raw.get("sort_bindings")), bool(raw.get("ignore_generated_vars"))
    if result_set(got, sort_bindings, ignore) != result_set(want, sort_bindings, ignore):
        return Outcome(case, "silent-wrong", f"answered {got!r}; OPA answers {want!r}")
    return Outcome(case, "pass")


def run(engine_name: str, cases: Sequence[Case], exclusions: Mapping[str, str], workers: int = 2) -> list[Outcome]:
    engine = ENGINES[engine_name]()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # the calls release the GIL
            return list(pool.map(lambda c: run_case(engine, c, exclusions), cases))
    finally:
        engine.close()


@dataclass
class Table:
    rows: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Table:
        table = cls()
        for o in outcomes:
            table.rows[o.case.category][o.kind] += 1
        return table

    def total(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.rows.values():
            total.update(counts)
        return total

    def lines(self, only_imperfect: bool = False) -> Iterator[str]:
        yield f"{'category':<28}" + "".join(f"{k:>13}" for k in KINDS)
        for category in sorted(self.rows):
            counts = self.rows[category]
            if only_imperfect and counts["pass"] + counts["excluded"] == sum(counts.values()):
                continue
            yield f"{category:<28}" + "".join(f"{counts[k]:>13}" for k in KINDS)
        total = self.total()
        yield f"{'TOTAL':<28}" + "".join(f"{total[k]:>13}" for k in KINDS)
        ran = sum(total.values()) - total["excluded"]
        yield f"pass rate (excluded cases left out): {total['pass']}/{ran} = {100 * total['pass'] / max(ran, 1):.1f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), default="opa-embedded")
    parser.add_argument("--category", help="only this folder of the cases")
    parser.add_argument("--show", choices=KINDS, action="append", default=[], help="list the cases of this kind")
    parser.add_argument("--all-rows", action="store_true", help="print categories that pass entirely too")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    cases = load_cases(cases_dir(), args.category)
    outcomes = run(args.engine, cases, load_exclusions(), args.workers)
    print(f"engine {args.engine}: {len(cases)} cases of OPA v{OPA_VERSION}")
    for line in Table.of(outcomes).lines(only_imperfect=not args.all_rows):
        print(line)
    for o in outcomes:
        if o.kind in args.show:
            print(f"{o.kind}: {o.case.file}: {o.case.note}: {o.detail[:400]}")
    total = Table.of(outcomes).total()
    return 0 if total["pass"] + total["excluded"] == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
