"""OPA itself, in process: the pinned OPA module behind a small C ABI (services/policy/opa_shim/,
built by scripts/install-deps.sh into .tools/lib/), loaded with ctypes. The default Rego engine.

One crossing per evaluation: the input goes in as JSON bytes, the value comes back as JSON. A bundle
is compiled and its query prepared once (OPA's PreparedEvalQuery, shared by every thread; ctypes
releases the GIL for the call). Also here: load-time checks (OPA's compiler with this OPA's
capabilities minus the network builtins), the bundle's Rego tests through OPA's own tester (what
`opa test` runs), and the input paths a bundle reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ztmesh.policy.errors import BundleError, EngineError, StaleBundle
from ztmesh.policy.rego import UNDEFINED, CompiledBundle, InputPaths, TestResult, discover_tests, minimal_prefixes

LIBRARY_ENV = "ZTMESH_OPA_LIBRARY"
OPA_VERSION = "1.22.2"  # the pin of services/policy/opa_shim/go.mod and scripts/install-deps.sh
_DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / ".tools" / "lib" / "libztmesh_opa.so"

ABI_VERSION = 2  # main.go abiVersion: the exports' signatures and replies this module expects
INPUT_NONE, INPUT_JSON, INPUT_TERM = 0, 1, 2  # ztm_eval's input kinds (main.go)
_MAX_TIMEOUT_MS = 2**31 - 1  # ztm_eval's timeout is a C int

_load_lock = threading.Lock()
_library: _Library | None = None


def library_path() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or _DEFAULT_LIBRARY)


class _Library:
    """The loaded shim: each call hands JSON bytes and gets back a buffer it must free."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        out: list[Any] = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)]
        lib.ztm_prepare.argtypes = [ctypes.c_char_p, ctypes.c_int, *out]
        lib.ztm_prepare.restype = ctypes.c_ulonglong
        lib.ztm_eval.argtypes = [ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, *out]
        lib.ztm_eval.restype = ctypes.c_int
        lib.ztm_test.argtypes = [ctypes.c_char_p, ctypes.c_int, *out]
        lib.ztm_test.restype = ctypes.c_int
        lib.ztm_input_paths.argtypes = [ctypes.c_char_p, ctypes.c_int, *out]
        lib.ztm_input_paths.restype = ctypes.c_int
        lib.ztm_release.argtypes = [ctypes.c_ulonglong]
        lib.ztm_release.restype = None
        lib.ztm_free.argtypes = [ctypes.c_void_p]
        lib.ztm_free.restype = None
        lib.ztm_version.argtypes = out
        lib.ztm_version.restype = None
        self._lib = lib
        self._eval = lib.ztm_eval
        self._free = lib.ztm_free
        # ztm_version's signature never changes: it is safe to call on any build, before the others.
        self.version_info: dict[str, Any] = self._take(lambda o, n: lib.ztm_version(o, n))[1]
        abi = self.version_info.get("abi")
        if abi != ABI_VERSION:  # a stale build: calling it with this module's signatures could crash
            raise EngineError(
                f"{path} has C ABI {abi if abi is not None else 1}, not {ABI_VERSION}: it was built from "
                "older sources; run make setup"
            )
        version = self.version_info["opa"]
        if version != OPA_VERSION:
            raise EngineError(f"{path} embeds OPA {version}, not the pinned {OPA_VERSION}: run make setup")
        lib.ztm_packages.argtypes = [ctypes.c_char_p, ctypes.c_int, *out]
        lib.ztm_packages.restype = ctypes.c_int

    def _take(self, call: Any) -> tuple[int, Any]:
        out = ctypes.c_void_p()
        size = ctypes.c_int()
        rc = call(ctypes.byref(out), ctypes.byref(size))
        return rc, json.loads(self._body(out, size))

    def _body(self, out: ctypes.c_void_p, size: ctypes.c_int) -> bytes:
        if not out.value:
            return b"{}"
        try:
            return ctypes.string_at(out.value, size.value)
        finally:
            self._free(out)

    def prepare(self, request: bytes) -> tuple[int, Any]:
        return self._take(lambda o, n: self._lib.ztm_prepare(request, len(request), o, n))

    def eval(self, handle: int, payload: bytes, kind: int, timeout_ms: int = 0) -> tuple[int, Any]:
        # The decision path: no closure, the ctypes functions bound once.
        out = ctypes.c_void_p()
        size = ctypes.c_int()
        rc = self._eval(handle, payload, len(payload), kind, timeout_ms, ctypes.byref(out), ctypes.byref(size))
        return rc, json.loads(self._body(out, size))

    def test(self, request: bytes) -> tuple[int, Any]:
        return self._take(lambda o, n: self._lib.ztm_test(request, len(request), o, n))

    def input_paths(self, request: bytes) -> tuple[int, Any]:
        return self._take(lambda o, n: self._lib.ztm_input_paths(request, len(request), o, n))

    def packages(self, request: bytes) -> tuple[int, Any]:
        return self._take(lambda o, n: self._lib.ztm_packages(request, len(request), o, n))

    def release(self, handle: int) -> None:
        self._lib.ztm_release(handle)


def load_library(path: Path) -> _Library:
    """Load the shim at `path`; EngineError saying how to build it when it is missing or broken."""
    if not path.is_file():
        raise EngineError(
            f"the in-process OPA library {path} is missing: run make setup "
            f"(scripts/install-deps.sh builds it), or set {LIBRARY_ENV} to its path"
        )
    try:
        return _Library(path)
    except (OSError, AttributeError) as exc:
        raise EngineError(f"cannot load the in-process OPA library {path}: {exc}; run make setup") from None


def library() -> _Library:
    """The shim, loaded once per process (from ZTMESH_OPA_LIBRARY, else .tools/lib of the checkout)."""
    global _library
    with _load_lock:
        if _library is None:
            _library = load_library(library_path())
        return _library


def _bundle_error(failure: Mapping[str, Any], default_file: str = "") -> BundleError:
    """OPA's compile errors as one BundleError at the first one's file:line (the others counted)."""
    problems = failure.get("problems") or []
    if not problems:
        return BundleError(str(failure.get("error", "rejected by OPA")), default_file)
    first = problems[0]
    message = first["message"] if not first.get("code") else f"{first['code']}: {first['message']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more error{'s' if len(problems) > 2 else ''})"
    return BundleError(message, first.get("file", "") or default_file, int(first.get("row", 0)))


class RegoRuntimeError(EngineError):
    """OPA failed evaluating (a conflict, a builtin error under strict builtin errors), at file:line."""

    def __init__(self, failure: Mapping[str, Any]) -> None:
        problems = failure.get("problems") or [{}]
        first = problems[0]
        self.file = str(first.get("file", ""))
        self.line = int(first.get("row", 0))
        self.code = str(first.get("code", ""))  # OPA's error code: eval_conflict_error, eval_type_error...
        self.opa_error = str(failure.get("error", ""))  # the error as OPA prints it
        message = first.get("message") or failure.get("error", "failed")
        where = f"{self.file}:{self.line}: " if self.file and self.line else ""
        super().__init__(f"rego evaluation failed: {where}{message}")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class PreparedQuery:
    """A query compiled with its modules and data, evaluated any number of times from any thread."""

    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, Any],
        query: str,
        rule: bool = True,
        strict_builtin_errors: bool = False,
        explain: bool = False,
    ) -> None:
        self._lib = library()
        # An undefined rule is evaluated again with strict builtin errors, to name a builtin error
        # that made it so (OPA, by default, turns it into undefined): one extra evaluation, only then.
        self._explain = (modules, data, query) if explain and rule and not strict_builtin_errors else None
        self._strict: PreparedQuery | None = None
        self._strict_lock = threading.Lock()
        request = {"modules": dict(modules), "data": dict(data), "query": query, "rule": rule,
                   "strict_builtin_errors": strict_builtin_errors}  # fmt: skip
        try:
            payload = _dumps(request)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"data cannot be loaded: {exc}") from None
        rc, reply = self._lib.prepare(payload)
        if rc == 0:
            raise _bundle_error(reply)
        self.handle = rc
        self.rule = rule

    def evaluate(self, document: Any, kind: int = INPUT_JSON, timeout_s: float = 0.0) -> Any:
        """For a rule: its value, UNDEFINED when undefined. Otherwise: the list of every result's bindings.
        `document` is JSON-able, or with INPUT_TERM a Rego term as text, or ignored with INPUT_NONE;
        an evaluation longer than `timeout_s` (0: no limit) ends with a RegoRuntimeError."""
        if kind == INPUT_JSON:
            try:
                payload = _dumps(document)
            except (TypeError, ValueError) as exc:
                raise EngineError(f"the input is not JSON: {exc}") from None
        else:
            payload = document.encode() if kind == INPUT_TERM else b""
        rc, reply = self._lib.eval(self.handle, payload, kind, timeout_ms(timeout_s))
        if rc != 0:
            kind_of_failure = reply.get("kind")  # main.go's kinds: the message may quote the input
            if kind_of_failure == "released":
                raise StaleBundle("the prepared query was released (its bundle was replaced)")
            if kind_of_failure == "timeout":
                text = str(reply.get("error", ""))
                raise EngineError(f"rego evaluation took longer than {timeout_s:g} s (ZTMESH_OPA_TIMEOUT): {text}")
            raise RegoRuntimeError(reply)
        if not self.rule:
            return reply["results"]
        if "value" in reply:
            return reply["value"]
        if self._explain is not None:
            self._strict_twin().evaluate(document, kind, timeout_s)  # raises RegoRuntimeError naming the error
        return UNDEFINED

    def _strict_twin(self) -> PreparedQuery:
        with self._strict_lock:
            if self._strict is None:
                assert self._explain is not None
                modules, data, query = self._explain
                self._strict = PreparedQuery(modules, data, query, strict_builtin_errors=True)
            return self._strict

    def evaluate_raw(self, document: Any, kind: int) -> tuple[int, Any]:
        """(0, reply) or (1, OPA's error reply with code, message, location): for the conformance harness."""
        payload = _dumps(document) if kind == INPUT_JSON else document.encode() if kind == INPUT_TERM else b""
        return self._lib.eval(self.handle, payload, kind)

    def release(self) -> None:
        handle, self.handle = self.handle, 0
        if handle:
            self._lib.release(handle)
        if self._strict is not None:
            self._strict.release()


def timeout_ms(timeout_s: float) -> int:
    """ztm_eval's timeout: 0 (no limit) only for 0 or less; else at least 1 ms, at most a C int."""
    if timeout_s <= 0:
        return 0
    return min(max(1, round(timeout_s * 1000)), _MAX_TIMEOUT_MS)


def package_paths(modules: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each module's package as OPA parses it (file -> ("a", "b") for package a.b); BundleError when
    one does not parse."""
    rc, reply = library().packages(_dumps({"modules": dict(modules)}))
    if rc != 0:
        raise _bundle_error(reply)
    return {path: tuple(segments) for path, segments in reply["packages"].items()}


def check_modules(modules: Mapping[str, str], data: Mapping[str, Any], entrypoint: str) -> None:
    """Compile as the engine will: BundleError at file:line for a syntax or type error, an unknown
    or refused builtin (network), or a feature this OPA lacks. Nothing is kept."""
    PreparedQuery(modules, data, entrypoint).release()


def run_tests(modules: Mapping[str, str], tests: Mapping[str, str], data: Mapping[str, Any]) -> list[TestResult]:
    """The bundle's `test_` rules through OPA's tester, as `opa test DIR` runs them (a test passes when
    its rule is defined and not false; `todo_` tests are skipped). BundleError when it does not compile."""
    rc, reply = library().test(_dumps({"modules": {**modules, **tests}, "data": dict(data)}))
    if rc != 0:
        raise _bundle_error(reply)
    lines = {rule: (file, line) for rule, file, line in discover_tests(tests)}
    results = []
    for r in sorted(reply["results"] or [], key=lambda r: (r["file"], r["row"], r["name"])):
        name = f"{r['package']}.{r['name']}"
        file, line = r["file"], r["row"]
        if not file:
            file, line = lines.get(name, ("", 0))
        error = r.get("error", "") or ("" if not r["fail"] else "false or undefined")
        results.append(TestResult(name, file, line, passed=not r["fail"] and not r.get("error"),
                                  skipped=r["skip"], error=error))  # fmt: skip
    return results


def analyse_input_paths(modules: Mapping[str, str]) -> InputPaths | None:
    """The input paths the modules read, from OPA's own parse (see main.go ztm_input_paths); None
    when some reference cannot be bounded, so the whole input counts."""
    rc, reply = library().input_paths(_dumps({"modules": dict(modules)}))
    if rc != 0:
        raise _bundle_error(reply)
    paths = reply.get("paths")
    return None if paths is None else minimal_prefixes(tuple(p) for p in paths)


class OpaEmbeddedEngine:
    """OPA itself in process (the default engine): one prepared query per installed bundle; the
    current and the previous bundle stay prepared, so a decision that picked the old one just before
    a swap finishes on it."""

    in_process = True  # no I/O: a decision on the serving loop may evaluate there (PolicyEngine.decides_on_loop)

    name = "opa-embedded"

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s  # an evaluation running longer is an error: the decision is a DENY
        self._prepared: dict[str, PreparedQuery] = {}
        self._current = ""
        self._lock = threading.Lock()
        library()  # fail at start, naming the missing library, not at the first decision

    def install(self, bundle: CompiledBundle) -> None:
        prepared = PreparedQuery(bundle.modules, bundle.data, bundle.entrypoint, explain=True)
        with self._lock:
            keep = {rev: p for rev, p in self._prepared.items() if rev == self._current and rev != bundle.revision}
            dropped = [p for rev, p in self._prepared.items() if rev not in keep]
            keep[bundle.revision] = prepared
            self._prepared = keep
            self._current = bundle.revision
        for old in dropped:
            old.release()

    def evaluate(self, bundle: CompiledBundle, document: Mapping[str, Any], pruned: Mapping[str, Any]) -> Any:
        prepared = self._prepared.get(bundle.revision)
        if prepared is None:
            raise StaleBundle(f"bundle {bundle.revision} is no longer installed")
        try:
            return prepared.evaluate(pruned, INPUT_JSON, self.timeout_s)
        except StaleBundle:
            raise StaleBundle(f"bundle {bundle.revision} is no longer installed") from None

    def query(
        self,
        bundle: CompiledBundle,
        query: str,
        document: Any = UNDEFINED,
        *,
        input_term: str | None = None,
        strict_builtin_errors: bool = False,
    ) -> list[dict[str, Any]]:
        """Every result of an ad hoc query over `bundle`'s modules and data (installed or not), as
        bindings; the input is `document` (UNDEFINED: none) or a Rego term's text. BundleError when
        the bundle or query does not compile, RegoRuntimeError when evaluation fails."""
        prepared = PreparedQuery(bundle.modules, bundle.data, query, rule=False,
                                 strict_builtin_errors=strict_builtin_errors)  # fmt: skip
        try:
            if input_term is not None:
                results: list[dict[str, Any]] = prepared.evaluate(input_term, INPUT_TERM)
            else:
                results = prepared.evaluate(document, INPUT_NONE if document is UNDEFINED else INPUT_JSON)
            return results
        finally:
            prepared.release()

    def close(self) -> None:
        with self._lock:
            prepared, self._prepared = self._prepared, {}
        for p in prepared.values():
            p.release()
