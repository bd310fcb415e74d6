"""OPA's Wasm target (`opa build -t wasm`) run in wasmtime-py: a candidate the policy bench measures
beside OPA in process, not an engine of the service (docs/policy-pack.md says why).

The compiled policy calls back into the host for the builtins Wasm lacks (on the default pack only
`sprintf`); this host implements just enough of Go's fmt for the pack, which is exactly why Wasm
cannot be exact for every bundle without reimplementing OPA's builtins.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import wasmtime


def build(opa: Path, bundle_dir: Path, entrypoint: str) -> tuple[bytes, Any]:
    """(policy.wasm, data) of `opa build -t wasm -e entrypoint` over the bundle folder, tests left out."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle.tar.gz"
        subprocess.run([str(opa), "build", "-t", "wasm", "-e", entrypoint, "--ignore", "*_test.rego",
                        "-o", str(out), str(bundle_dir)], check=True, capture_output=True, timeout=300)  # fmt: skip
        with tarfile.open(out) as tar:
            files = {m.name.lstrip("/"): tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
            wasm = files["policy.wasm"].read()  # type: ignore[union-attr]
            data = json.loads(files["data.json"].read()) if "data.json" in files else {}  # type: ignore[union-attr]
    return wasm, data


def _go_v(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _sprintf(fmt: str, values: list[Any]) -> str:
    """%s, %v and %d only: NOT OPA's sprintf, enough for the pack."""
    items = iter(values)
    return re.sub(r"%[svd]", lambda _m: _go_v(next(items)), fmt)


class OpaWasm:
    """One instance of a compiled policy; `evaluate(input JSON bytes)` is OPA's one-call opa_eval."""

    def __init__(self, wasm: bytes, data: Any) -> None:
        engine = wasmtime.Engine()
        self._store = wasmtime.Store(engine)
        self._memory = wasmtime.Memory(self._store, wasmtime.MemoryType(wasmtime.Limits(10, None)))
        linker = wasmtime.Linker(engine)
        linker.define(self._store, "env", "memory", self._memory)
        i32 = wasmtime.ValType.i32()

        def abort(addr: int) -> None:
            raise RuntimeError(f"opa_abort: {self._string(addr)}")

        linker.define_func("env", "opa_abort", wasmtime.FuncType([i32], []), abort)
        linker.define_func("env", "opa_println", wasmtime.FuncType([i32], []), lambda addr: None)
        for arity in range(5):
            linker.define_func(
                "env", f"opa_builtin{arity}", wasmtime.FuncType([i32] * (2 + arity), [i32]), self._builtin
            )
        exports = linker.instantiate(self._store, wasmtime.Module(engine, wasm)).exports(self._store)
        names = ("opa_malloc", "opa_json_parse", "opa_json_dump", "opa_heap_ptr_get", "opa_heap_ptr_set", "opa_eval",
                 "builtins")  # fmt: skip
        self._fn: dict[str, Any] = {name: exports[name] for name in names}
        ids = json.loads(self._string(self._call("opa_json_dump", self._call("builtins"))))
        self._builtins = {number: name for name, number in ids.items()}
        self.host_builtins = sorted(ids)
        self._data = self._parse(json.dumps(data).encode())
        self._heap = self._call("opa_heap_ptr_get")

    def _call(self, name: str, *args: int) -> Any:
        return self._fn[name](self._store, *args)

    def _string(self, addr: int) -> str:
        memory = self._memory.data_ptr(self._store)
        end = addr
        while memory[end]:
            end += 1
        return bytes(memory[addr:end]).decode()

    def _write(self, payload: bytes) -> int:
        addr: int = self._call("opa_malloc", len(payload))
        self._memory.write(self._store, payload, addr)
        return addr

    def _parse(self, payload: bytes) -> int:
        parsed: int = self._call("opa_json_parse", self._write(payload), len(payload))
        return parsed

    def _builtin(self, number: int, _ctx: int, *args: int) -> int:
        name = self._builtins.get(number)
        if name != "sprintf":
            raise RuntimeError(f"builtin {name} has no host implementation here")
        fmt, values = (json.loads(self._string(self._call("opa_json_dump", a))) for a in args)
        return self._parse(json.dumps(_sprintf(fmt, values)).encode())

    def evaluate(self, payload: bytes) -> Any:
        """The entrypoint's value for this input (JSON bytes); None when undefined."""
        self._call("opa_heap_ptr_set", self._heap)  # every evaluation starts from the data's heap
        addr = self._write(payload)
        result = self._call("opa_eval", 0, 0, self._data, addr, len(payload), self._call("opa_heap_ptr_get"), 0)
        rows = json.loads(self._string(result))
        return rows[0]["result"] if rows else None
