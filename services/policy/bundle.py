"""Policy bundles: read a folder in OPA bundle layout, check it, and swap it in atomically.

A bundle is `.rego` modules, `*_test.rego` tests and `data.json`/`data.yaml` files (data lands at
the path of its folder, as in OPA). Before a bundle replaces the serving one it must parse, pass
every Rego test (run in process), and answer each probe request with a well-shaped decision; a
bundle that fails is refused with a BundleError naming file and line, and the old one keeps
serving. The revision is a hash of the content, so the same files always give the same revision.
Outside dev mode a bundle must also be signed, for exactly that revision, by trusted signers and
not be older than the one serving (bundle_signing.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ztmesh.policy.answer import parse_answer
from ztmesh.policy.bundle_signing import BundleVerifier
from ztmesh.policy.errors import BundleError, EngineError, MalformedDecision
from ztmesh.policy.opa_inproc import PreparedQuery, RegoRuntimeError, analyse_input_paths, check_modules, run_tests
from ztmesh.policy.rego import InputPaths, RegoEngine, TestResult, packages_of, prune, pruning_tree, rule_path

log = logging.getLogger("ztmesh.policy.bundle")

DEFAULT_ENTRYPOINT = "data.ztmesh.authz.decision"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_FILES = 1000
# Each load-time probe evaluation ends after this long (as each Rego test does in OPA's tester): a
# probe that loops must refuse the bundle, not hold the reload lock forever.
PROBE_TIMEOUT_S = 5.0
DATA_FILES = ("data.json", "data.yaml", "data.yml")
_SIGNED_EXTRAS = (".signatures.json", ".manifest")


@dataclass(frozen=True)
class Bundle:
    root: str
    modules: Mapping[str, str]  # policy modules: relative path -> source
    tests: Mapping[str, str]  # *_test.rego
    data: Mapping[str, Any]  # the merged data document
    revision: str
    entrypoint: str = DEFAULT_ENTRYPOINT
    packages: tuple[str, ...] = ()
    input_paths: InputPaths | None = None  # None: the policies may read all of the input
    loaded_at: float = field(default_factory=time.time)
    _tree: dict[str, Any] | None = None

    def prune(self, document: Mapping[str, Any]) -> Mapping[str, Any]:
        """The part of `document` the policies can read (all of it when that cannot be bounded)."""
        return document if self._tree is None else prune(document, self._tree)

    def data_at(self, path: Sequence[str]) -> Any:
        node: Any = self.data
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node


def _bundle_files(root: Path) -> list[Path]:
    """Files of the bundle, skipping hidden entries (a Kubernetes ConfigMap volume keeps its real
    files under `..<timestamp>/` and links them from the top; the links are what we read)."""
    if not root.is_dir():
        raise BundleError(f"policy folder {root} does not exist or is not a folder")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix == ".rego" or path.name in DATA_FILES:
            files.append(path)
    if len(files) > MAX_FILES:
        raise BundleError(f"{len(files)} files; a bundle holds at most {MAX_FILES}", str(root))
    return files


def _merge(data: dict[str, Any], at: tuple[str, ...], value: Any, file: str) -> None:
    node = data
    for key in at:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BundleError(f"data at {'.'.join(at)} collides with another data file", file)
    if not isinstance(value, dict):
        raise BundleError("a data file must hold an object", file)
    for key, item in value.items():
        if key in node:
            raise BundleError(f"data key {'.'.join((*at, key))} is defined twice", file)
        node[key] = item


def read_bundle(root: Path, entrypoint: str = DEFAULT_ENTRYPOINT) -> Bundle:
    """Read (not yet check) the bundle in `root`."""
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    data: dict[str, Any] = {}
    digest = hashlib.sha256()
    total = 0
    for path in _bundle_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read: {exc}", rel) from None
        total += len(content)
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"the bundle is over {MAX_BUNDLE_BYTES // (1024 * 1024)} MiB", rel)
        digest.update(rel.encode() + b"\0" + len(content).to_bytes(8, "big") + content)
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"not UTF-8 (byte {exc.start})", rel) from None
        if path.suffix == ".rego":
            (tests if path.name.endswith("_test.rego") else modules)[rel] = text
            continue
        try:
            value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"not JSON: {exc.msg}", rel, exc.lineno) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise BundleError(f"not YAML: {exc}", rel, mark.line + 1 if mark else 0) from None
        _merge(data, tuple(path.relative_to(root).parent.parts), value, rel)
    if not modules:
        raise BundleError(f"no policy modules (.rego) in {root}")
    return Bundle(
        root=str(root),
        modules=modules,
        tests=tests,
        data=data,
        revision=digest.hexdigest(),  # all 256 bits: a signature binds the content through it
        entrypoint=rule_path(entrypoint),
        packages=packages_of(modules.values()),
    )


def _entrypoint_location(bundle: Bundle) -> tuple[str, int]:
    """The file and line defining the entrypoint rule, to point at when its answers are wrong."""
    package, _, rule = bundle.entrypoint.removeprefix("data.").rpartition(".")
    head = re.compile(rf"^{re.escape(rule)}\b", re.MULTILINE)
    for path, source in sorted(bundle.modules.items()):
        if re.search(rf"^package\s+{re.escape(package)}\s*$", source, re.MULTILINE):
            match = head.search(source)
            if match:
                return path, source.count("\n", 0, match.start()) + 1
    return "", 0


def _probe(bundle: Bundle, probes: Mapping[str, Mapping[str, Any]], timeout_s: float) -> tuple[str, str, int]:
    """The first probe answered wrongly, described, with the file:line of a runtime error; or ""."""
    query = PreparedQuery(bundle.modules, bundle.data, bundle.entrypoint, explain=True)
    try:
        for name, probe in probes.items():
            try:
                parse_answer(query.evaluate(probe, timeout_s=timeout_s))
            except (EngineError, MalformedDecision) as exc:
                where = (exc.file, exc.line) if isinstance(exc, RegoRuntimeError) and exc.file else ("", 0)
                return f"{bundle.entrypoint} answers the probe {name!r} wrongly: {exc}", *where
        return "", "", 0
    finally:
        query.release()


@dataclass(frozen=True)
class CheckReport:
    bundle: Bundle
    tests: tuple[TestResult, ...]

    @property
    def failures(self) -> tuple[TestResult, ...]:
        return tuple(t for t in self.tests if not t.passed)


def check_bundle(
    bundle: Bundle,
    probes: Mapping[str, Mapping[str, Any]],
    require_tests: bool = True,
    raise_on_failure: bool = True,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> CheckReport:
    """Parse, run the Rego tests, and evaluate the entrypoint on every probe input (name -> input),
    each for at most `probe_timeout_s` (a runaway probe is a refused bundle, not a hung reload).

    Raises BundleError for the first problem (with `raise_on_failure`, for failing tests too); returns
    the bundle with its input paths filled in and every test result."""
    # Compile errors first, with their file and line: syntax, types, unknown or refused builtins.
    check_modules(bundle.modules, bundle.data, bundle.entrypoint)
    results = tuple(run_tests(bundle.modules, bundle.tests, bundle.data)) if bundle.tests else ()
    if require_tests and not results:
        raise BundleError("the bundle has no Rego tests (*_test.rego with test_ rules); refusing an untested policy")
    failed = [t for t in results if not t.passed]
    if failed and raise_on_failure:
        first = failed[0]
        summary = f"{len(failed)} of {len(results)} Rego tests failed, first {first.name}: {first.error}"
        raise BundleError(summary, first.file, first.line)
    file, line = _entrypoint_location(bundle)
    if not file:
        raise BundleError(f"no module defines the entrypoint {bundle.entrypoint}")
    problem, at_file, at_line = _probe(bundle, probes, probe_timeout_s)
    if problem:
        raise BundleError(problem, at_file or file, at_line or line)
    paths = analyse_input_paths(bundle.modules)
    checked = dataclasses.replace(bundle, input_paths=paths, _tree=None if paths is None else pruning_tree(paths))
    return CheckReport(checked, results)


@dataclass(frozen=True)
class ReloadResult:
    revision: str
    changed: bool
    previous: str = ""


class BundleManager:
    """Holds the serving bundle; `reload()` reads the folder again and swaps if the new one passes."""

    def __init__(
        self,
        root: Path,
        engine: RegoEngine,
        probes: Mapping[str, Mapping[str, Any]],
        entrypoint: str = DEFAULT_ENTRYPOINT,
        require_tests: bool = True,
        verifier: BundleVerifier | None = None,
    ) -> None:
        self.root = Path(root)
        self.verifier = verifier  # None: unsigned bundles load (dev mode)
        self.engine = engine
        self.entrypoint = entrypoint
        self._probes = probes
        self._require_tests = require_tests
        self._current: Bundle | None = None
        self._lock = threading.Lock()  # one reload at a time; readers never wait
        self._listeners: list[Callable[[Bundle], None]] = []
        self._checked: Bundle | None = None  # the last bundle that passed the checks
        self.last_error = ""
        self.pending = ""  # a checked revision the engine has not taken yet (e.g. OPA unreachable)

    @property
    def current(self) -> Bundle:
        bundle = self._current
        if bundle is None:
            raise EngineError("no policy bundle is loaded")
        return bundle

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def engine_problem(self) -> str:
        """Why the engine does not serve the current bundle right now, or "" (asked live of engines
        that can tell, i.e. an OPA server: restarted, unreachable, serving something else)."""
        serving_revision = getattr(self.engine, "serving_revision", None)
        bundle = self._current
        if serving_revision is None or bundle is None:
            return ""
        serving = serving_revision()
        if serving == bundle.revision:
            return ""
        now = f"serves revision {serving}" if serving else "serves no bundle (unreachable, or not activated yet)"
        return f"the {self.engine.name} engine {now}, not {bundle.revision}: decisions are DENY until it does"

    def on_swap(self, listener: Callable[[Bundle], None]) -> None:
        self._listeners.append(listener)

    def reload(self) -> ReloadResult:
        """Swap in the folder's bundle if it changed and passes every check; BundleError otherwise."""
        with self._lock:
            previous = self._current
            self.pending = ""
            try:
                bundle = read_bundle(self.root, self.entrypoint)
                if previous is not None and bundle.revision == previous.revision:
                    return ReloadResult(previous.revision, changed=False, previous=previous.revision)
                signature = self.verifier.check(self.root, bundle.revision) if self.verifier else None
                checked = self._checked
                if checked is None or checked.revision != bundle.revision:  # a retry skips the checks
                    checked = check_bundle(bundle, self._probes, self._require_tests).bundle
                    self._checked = checked
                self.pending = checked.revision
                self.engine.install(checked)
            except (BundleError, EngineError) as exc:
                serving = previous.revision if previous else "nothing"
                if isinstance(exc, BundleError):
                    self.last_error, self.pending = str(exc), ""
                else:  # when checked but not taken by the engine (pending), the watcher retries
                    waiting = f"; bundle {self.pending} waits for the engine" if self.pending else ""
                    self.last_error = f"{exc}{waiting}; {serving} keeps serving"
                log.error("policy bundle refused, %s keeps serving: %s", serving, exc)
                raise
            self._current = checked
            self.last_error = self.pending = ""
            if signature is not None and self.verifier is not None:
                self.verifier.accept(signature)
        log.info("policy bundle %s serving (was %s)", checked.revision, previous.revision if previous else "none")
        for listener in self._listeners:
            listener(checked)
        return ReloadResult(checked.revision, changed=True, previous=previous.revision if previous else "")


def fingerprint(*roots: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector for a set of folders: (path, mtime_ns, size) of every visible file,
    following links (a ConfigMap update swaps the `..data` link; the stat of each link target moves)."""
    seen = []
    for root in roots:
        if not root.exists():
            continue
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in candidates:
            rel = path.relative_to(root)
            # Hidden entries are skipped (a ConfigMap's `..data`), but not the signature and manifest,
            # which may change after the files they vouch for.
            if path != root and any(p.startswith(".") for p in rel.parts) and rel.as_posix() not in _SIGNED_EXTRAS:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                seen.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(seen)
