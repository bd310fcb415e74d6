"""The Rego engine seam, and regorus (the `gordon-to-regorus` package) as a measured candidate.

`RegoEngine` is what the decision path calls: `install` a checked bundle, `evaluate` the decision
rule of an installed bundle. The default engine is OPA itself in process (opa_inproc.py); the OPA
server engine lives in opa_server.py. `RegorusEngine` is kept only as a candidate the conformance
harness and the bench measure: it answers differently from OPA on OPA's own conformance cases, so
no setting selects it (docs/policy-pack.md).

Also here: the test result type, test discovery, pruning the input to the paths a bundle reads.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import regorus

from ztmesh.policy.errors import BundleError, EngineError, StaleBundle

_LOCATION = re.compile(r"-->\s*(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+)")
_MESSAGE = re.compile(r"^error:\s*(?P<message>.+)$", re.MULTILINE)
_TEST_RULE = re.compile(r"^(?P<name>(?:todo_)?test_[A-Za-z0-9_]*)\b", re.MULTILINE)
_PACKAGE = re.compile(r"^package\s+(?P<name>[\w.]+)", re.MULTILINE)


class _Undefined:
    """The value of a rule that is undefined for this input (distinct from a rule whose value is null)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()


class CompiledBundle(Protocol):
    """What engines need of a bundle: its identity, its modules and data, and the rule to query."""

    revision: str
    modules: Mapping[str, str]
    data: Mapping[str, Any]
    entrypoint: str  # e.g. data.ztmesh.authz.decision


class RegoEngine(Protocol):
    name: str

    def install(self, bundle: CompiledBundle) -> None:
        """Make `bundle` the one evaluated; raise BundleError/EngineError and keep the old one on failure."""
        ...

    def evaluate(self, bundle: CompiledBundle, document: Mapping[str, Any], pruned: Mapping[str, Any]) -> Any:
        """The value of the bundle's entrypoint for this input, as JSON (sets as sorted arrays, null as
        None); UNDEFINED when the rule is undefined for it (an engine may raise instead).

        `document` is the full input, `pruned` only the paths the policies read: an engine may use
        either. Raises StaleBundle when `bundle` is no longer installed, EngineError on failure."""
        ...

    def close(self) -> None: ...


def regorus_error(exc: BaseException, default_file: str = "") -> BundleError:
    """A regorus exception as a BundleError with file and line; the Rust backtrace is dropped."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    where = _LOCATION.search(text)
    message = _MESSAGE.search(text)
    problem = message.group("message").strip() if message else text.splitlines()[0] if text else repr(exc)
    if where:
        return BundleError(problem, where.group("file"), int(where.group("line")))
    return BundleError(problem, default_file)


def new_engine(modules: Mapping[str, str], data: Mapping[str, Any]) -> regorus.Engine:
    """Parse every module (BundleError naming file:line on a syntax error) and add the data.

    On failure the half-built engine is dropped before raising: an exception's traceback keeps its
    frames' locals alive, and a regorus Engine freed later by another thread cannot be dropped."""
    engine = regorus.Engine()
    error: BundleError | None = None
    for path, source in sorted(modules.items()):
        try:
            engine.add_policy(path, source)
        except RuntimeError as exc:
            error = regorus_error(exc, path)
            break
    if error is None:
        try:
            engine.add_data(dict(data))
        except (RuntimeError, ValueError, TypeError) as exc:
            error = BundleError(f"data cannot be loaded: {regorus_error(exc).problem}")
    if error is not None:
        del engine
        raise error
    return engine


def rule_path(entrypoint: str) -> str:
    return entrypoint if entrypoint.startswith("data.") else "data." + entrypoint.replace("/", ".")


def evaluate_rule(engine: regorus.Engine, entrypoint: str, document: Mapping[str, Any]) -> Any:
    """Set the input and evaluate one rule; None when the rule is undefined for this input."""
    try:
        engine.set_input(document)
        return engine.eval_rule(entrypoint)
    except (RuntimeError, ValueError, TypeError) as exc:
        error = regorus_error(exc)
        raise EngineError(f"rego evaluation failed: {error}") from None
    except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException, a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise EngineError(
            f"rego engine panicked: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


# --- the input paths the policies read (found by opa_inproc.analyse_input_paths) ------------------

InputPaths = tuple[tuple[str, ...], ...]


def minimal_prefixes(paths: Iterable[tuple[str, ...]]) -> InputPaths:
    """Only the shortest prefixes, sorted: reading input.a covers input.a.b."""
    minimal: list[tuple[str, ...]] = []
    for path in sorted(set(paths), key=len):
        if not any(path[: len(p)] == p for p in minimal):
            minimal.append(path)
    return tuple(sorted(minimal))


def pruning_tree(paths: InputPaths) -> dict[str, Any]:
    """{"a": {"b": True}} for the path a.b: True means take the whole value."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for segment in path[:-1]:
            node = node.setdefault(segment, {})
        node[path[-1]] = True
    return tree


def prune(document: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key in document:
            value = document[key]
            if sub is True:
                out[key] = value
            elif isinstance(value, Mapping):
                out[key] = prune(value, sub)
    return out


# --- regorus: a candidate the harness and the bench measure, not an engine of the service ---------


# Per-thread engines of every RegorusEngine, in one module-level thread-local: a regorus Engine may
# only be dropped by its own thread, and a thread's locals are dropped by that thread when it ends.
# (A thread-local owned by a RegorusEngine would be dropped by whichever thread collects it.)
_THREAD_ENGINES = threading.local()
_retired: set[int] = set()  # tokens of closed RegorusEngines: each thread drops their engines on next use


class RegorusEngine:
    """In-process Rego on regorus: the default engine, no sidecar.

    A regorus Engine is bound to the thread that made it (pyo3 `unsendable`: using, cloning or even
    dropping it from another thread fails), so each thread compiles its own engine from the installed
    bundle's sources, once per revision (under a millisecond for the default pack); installing only
    records the bundle, after a parse check (check_bundle ran the full checks)."""

    name = "regorus"
    _tokens = iter(range(1, 1 << 62))

    def __init__(self) -> None:
        self._bundles: dict[str, CompiledBundle] = {}  # revision -> bundle: the current and the previous
        self._current = ""
        self._lock = threading.Lock()
        self._token = next(self._tokens)

    def install(self, bundle: CompiledBundle) -> None:
        new_engine(bundle.modules, bundle.data)  # refuse what does not parse before anything changes
        with self._lock:
            # Keep the previous bundle too: a decision that picked it just before the swap finishes on it.
            keep = {rev: b for rev, b in self._bundles.items() if rev == self._current}
            keep[bundle.revision] = bundle
            self._bundles = keep
            self._current = bundle.revision

    def _engine_for(self, revision: str) -> regorus.Engine:
        engines: dict[tuple[int, str], regorus.Engine] | None = getattr(_THREAD_ENGINES, "engines", None)
        if engines is None:
            engines = _THREAD_ENGINES.engines = {}
        engine = engines.get((self._token, revision))
        if engine is None:
            bundle = self._bundles.get(revision)
            if bundle is None:
                raise StaleBundle(f"bundle {revision} is no longer installed")
            try:
                engine = new_engine(bundle.modules, bundle.data)
            except BundleError as exc:  # it parsed at install: only a broken engine gets here
                raise EngineError(f"cannot compile bundle {revision}: {exc}") from exc
            for token, rev in list(engines):  # this thread's engines of replaced bundles or closed engines
                if token in _retired or (token == self._token and rev not in self._bundles):
                    del engines[(token, rev)]
            engines[(self._token, revision)] = engine
        return engine

    def evaluate(self, bundle: CompiledBundle, document: Mapping[str, Any], pruned: Mapping[str, Any]) -> Any:
        return evaluate_rule(self._engine_for(bundle.revision), bundle.entrypoint, pruned)

    def query(
        self,
        bundle: CompiledBundle,
        query: str,
        document: Any = UNDEFINED,
        *,
        input_term: str | None = None,
        strict_builtin_errors: bool = False,
    ) -> list[dict[str, Any]]:
        """Every result of an ad hoc query, as bindings (as OpaEmbeddedEngine.query; for the harness).
        regorus has no strict/lenient builtin error modes and no Rego-term input: EngineError for those."""
        if input_term is not None:
            raise EngineError("regorus takes no Rego-term input (input_term)")
        engine = new_engine(bundle.modules, bundle.data)
        try:
            if document is not UNDEFINED:
                engine.set_input_json(json.dumps(document))
            reply = json.loads(engine.eval_query_as_json(query))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise EngineError(f"rego evaluation failed: {regorus_error(exc)}") from None
        except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException, a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise EngineError(f"rego engine panicked: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        finally:
            del engine
        return [r.get("bindings", {}) for r in reply.get("result", [])]

    def close(self) -> None:
        self._bundles = {}
        _retired.add(self._token)


# --- Rego unit tests (`test_` rules): their results and where they are ----------------------------


@dataclass(frozen=True)
class TestResult:
    name: str  # data.<package>.<rule>
    file: str
    line: int
    passed: bool
    skipped: bool = False
    error: str = ""


def discover_tests(tests: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """(rule path, file, line) of every test rule, as `opa test` finds them (rules named test_*)."""
    found: dict[str, tuple[str, str, int]] = {}
    for path, source in sorted(tests.items()):
        package = _PACKAGE.search(source)
        if not package:
            continue
        for match in _TEST_RULE.finditer(source):
            rule = f"data.{package.group('name')}.{match.group('name')}"
            line = source.count("\n", 0, match.start()) + 1
            found.setdefault(rule, (rule, path, line))  # several bodies of one test: the first names it
    return list(found.values())


def packages_of(modules: Iterable[str]) -> tuple[str, ...]:
    names = {m.group("name") for source in modules for m in _PACKAGE.finditer(source)}
    return tuple(sorted(names))
