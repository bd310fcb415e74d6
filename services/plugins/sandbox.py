"""The wasmtime sandbox that runs untrusted plugins.

Isolation per call: every call gets a fresh Store and a fresh instance (from a pre-linked, cached
module), so nothing survives from one call to the next. Limits per call: fuel (CPU), a wall-clock
deadline (epoch interruption, ticked by one background thread), a linear-memory and table cap,
and input/output size caps. No import is satisfied unless the manifest asks for a capability the
operator allows; today the only one is `wasi` (WASI preview 1 with no files, environment,
arguments or sockets). Compiled modules are cached in memory and serialized to disk.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

# The per-call path uses wasmtime-py's C bindings directly (wasmtime is pinned to 50.0.1): its
# public wrappers cost more per call than instantiating the module does. See _raw_export, _call_abi.
from wasmtime import _ffi  # noqa: E402

from ztmesh.plugins.errors import BadInput, DeadlineExceeded, InvalidPlugin, PluginFailed, ResourceExhausted

_I32, _I64 = _ffi.WASMTIME_I32.value, _ffi.WASMTIME_I64.value

ABI_VERSION = 1
EPOCH_TICK_SECONDS = 0.005
WASM_PAGE = 65536
WASI_MODULE = "wasi_snapshot_preview1"
REQUIRED_EXPORTS = ("memory", "ztm_alloc", "ztm_abi_version")


@dataclass(frozen=True)
class Limits:
    fuel: int = 200_000_000
    timeout_ms: int = 1000
    memory_bytes: int = 64 * 1024 * 1024
    table_elements: int = 10_000
    max_input_bytes: int = 1024 * 1024
    max_output_bytes: int = 1024 * 1024

    def bounded_by(self, maxima: Limits) -> Limits:
        """These limits with every value capped by the operator's maxima (0 = take the default)."""
        defaults = Limits()
        picked = {}
        for name in self.__dataclass_fields__:
            wanted = getattr(self, name) or getattr(defaults, name)
            picked[name] = min(wanted, getattr(maxima, name))
        return Limits(**picked)


@dataclass(frozen=True)
class CallResult:
    output: Any
    output_json: str
    fuel_consumed: int
    duration_us: int


class CompiledPlugin:
    def __init__(
        self, sha256: str, module: wasmtime.Module, pre: wasmtime.InstancePre, functions: frozenset[str], wasi: bool
    ) -> None:
        self.sha256 = sha256
        self.module = module
        self.pre = pre
        self.functions = functions
        self.wasi = wasi


class Sandbox:
    def __init__(
        self, maxima: Limits, *, allowed_capabilities: frozenset[str] = frozenset(), cache_dir: Path | None = None
    ) -> None:
        self.maxima = maxima
        self.allowed_capabilities = allowed_capabilities
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = 512 * 1024  # deep recursion traps instead of exhausting the host
        config.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(config)
        self._fingerprint = hashlib.sha256(
            f"wasmtime-{wasmtime.__name__}-fuel-epoch-stack512k-{_wasmtime_version()}".encode()
        ).hexdigest()[:16]
        self._cache_dir = cache_dir
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._compiled: dict[tuple[str, bool], CompiledPlugin] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(EPOCH_TICK_SECONDS):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()

    # --- compilation ---------------------------------------------------------------------------

    def _load_module(self, wasm: bytes, sha256: str) -> wasmtime.Module:
        cached = self._cache_dir / f"{sha256}-{self._fingerprint}.cwasm" if self._cache_dir else None
        if cached is not None and cached.exists():
            try:
                return wasmtime.Module.deserialize(self.engine, cached.read_bytes())
            except wasmtime.WasmtimeError:
                cached.unlink(missing_ok=True)  # stale or corrupt: compile again
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidPlugin(f"not a valid WebAssembly module: {str(exc).splitlines()[0]}") from None
        if cached is not None:
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(module.serialize())
            tmp.replace(cached)
        return module

    def compile(self, wasm: bytes, capabilities: frozenset[str] = frozenset()) -> CompiledPlugin:
        """Validate and compile a module (cached by content), refusing imports that were not granted."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        wants_wasi = "wasi" in capabilities
        key = (sha256, wants_wasi)
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
        for capability in capabilities:
            if capability not in self.allowed_capabilities:
                raise InvalidPlugin(f"capability {capability!r} is not allowed by the operator")
        module = self._load_module(wasm, sha256)
        for imported in module.imports:
            if imported.module == WASI_MODULE and wants_wasi:
                continue
            raise InvalidPlugin(
                f"module imports {imported.module}.{imported.name}, which is not granted"
                + ("" if imported.module != WASI_MODULE else " (WASI needs the `wasi` capability)")
            )
        exports = {e.name: e.type for e in module.exports}
        for name in REQUIRED_EXPORTS:
            if name not in exports:
                raise InvalidPlugin(f"module does not export `{name}` (see docs/plugin-abi.md)")
        alloc = exports["ztm_alloc"]
        if (
            not isinstance(alloc, wasmtime.FuncType)
            or [str(p) for p in alloc.params] != ["i32"]
            or [str(r) for r in alloc.results] != ["i32"]
        ):
            raise InvalidPlugin("`ztm_alloc` must be a function (i32) -> i32 (see docs/plugin-abi.md)")
        if not isinstance(exports["memory"], wasmtime.MemoryType):
            raise InvalidPlugin("`memory` must be a memory export")
        functions = frozenset(
            name
            for name, kind in exports.items()
            if isinstance(kind, wasmtime.FuncType)
            and name not in REQUIRED_EXPORTS
            and [str(p) for p in kind.params] == ["i32", "i32"]
            and [str(r) for r in kind.results] == ["i64"]
        )
        linker = wasmtime.Linker(self.engine)
        if wants_wasi:
            linker.define_wasi()
        compiled = CompiledPlugin(sha256, module, linker.instantiate_pre(module), functions, wants_wasi)
        self._check_abi(compiled)
        with self._lock:
            self._compiled[key] = compiled
        return compiled

    def _check_abi(self, compiled: CompiledPlugin) -> None:
        store = self._store(Limits().bounded_by(self.maxima), compiled.wasi)
        try:
            instance = compiled.pre.instantiate(store)
            abi_version = instance.exports(store)["ztm_abi_version"]
            assert isinstance(abi_version, wasmtime.Func)  # checked when the module was compiled
            version = abi_version(store)
        except wasmtime.Trap as trap:
            raise InvalidPlugin(f"module traps on start-up: {trap.message}") from None
        except wasmtime.WasmtimeError as exc:
            raise InvalidPlugin(f"module cannot be instantiated: {str(exc).splitlines()[0]}") from None
        if version != ABI_VERSION:
            raise InvalidPlugin(f"module speaks plugin ABI {version}; this host speaks {ABI_VERSION}")

    # --- calls -----------------------------------------------------------------------------------

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one sandbox per process; Limits are few and hashable
    def _bounded(self, limits: Limits) -> Limits:
        return limits.bounded_by(self.maxima)

    def _store(self, limits: Limits, wasi: bool) -> wasmtime.Store:
        store = wasmtime.Store(self.engine)
        store.set_limits(
            memory_size=limits.memory_bytes, table_elements=limits.table_elements, instances=1, tables=4, memories=1
        )
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(max(1, round(limits.timeout_ms / 1000 / EPOCH_TICK_SECONDS)))
        if wasi:
            store.set_wasi(wasmtime.WasiConfig())  # nothing inherited: no files, env, args or stdio
        return store

    def call(self, compiled: CompiledPlugin, function: str, input_json: bytes, limits: Limits) -> CallResult:
        limits = self._bounded(limits)
        if function not in compiled.functions:
            raise BadInput(
                f"the plugin exports no function {function!r} (it has: {', '.join(sorted(compiled.functions))})"
            )
        if len(input_json) > limits.max_input_bytes:
            raise BadInput(f"input is {len(input_json)} bytes; this plugin accepts at most {limits.max_input_bytes}")
        started = time.perf_counter()
        store = self._store(limits, compiled.wasi)
        instance = None
        try:
            instance = compiled.pre.instantiate(store)
            context = store._context()
            memory = _raw_export(context, instance, "memory").of.memory
            pointer = _call_abi(context, _raw_export(context, instance, "ztm_alloc").of.func, len(input_json))
            pointer &= 0xFFFFFFFF
            if not pointer or pointer + len(input_json) > _ffi.wasmtime_memory_data_size(context, ctypes.byref(memory)):
                raise PluginFailed("the plugin could not allocate memory for the input")
            base = ctypes.addressof(_ffi.wasmtime_memory_data(context, ctypes.byref(memory)).contents)
            ctypes.memmove(base + pointer, input_json, len(input_json))
            packed = _call_abi(context, _raw_export(context, instance, function).of.func, pointer, len(input_json))
            out_ptr, out_len = (packed >> 32) & 0xFFFFFFFF, packed & 0xFFFFFFFF
            if out_len > limits.max_output_bytes:
                raise ResourceExhausted(f"output of {out_len} bytes exceeds the limit of {limits.max_output_bytes}")
            # The memory may have moved or grown during the call: look it up again.
            size = _ffi.wasmtime_memory_data_size(context, ctypes.byref(memory))
            if out_ptr + out_len > size:
                raise PluginFailed("malformed output: the returned range lies outside the plugin's memory")
            base = ctypes.addressof(_ffi.wasmtime_memory_data(context, ctypes.byref(memory)).contents)
            raw = ctypes.string_at(base + out_ptr, out_len)
        except wasmtime.Trap as trap:
            error = _trap_error(trap)
            if isinstance(error, PluginFailed) and _memory_at_cap(store, instance, limits):
                # memory.grow fails quietly at the cap; a module that then traps ran out of memory.
                error = ResourceExhausted(f"the plugin reached its memory limit of {limits.memory_bytes} bytes")
            raise error from None
        except wasmtime.WasmtimeError as exc:
            # Instantiation hitting the memory/table caps is reported as an error, not a trap.
            raise ResourceExhausted(f"the plugin exceeded its limits: {str(exc).splitlines()[0]}") from None
        fuel_used = limits.fuel - store.get_fuel()
        try:
            output_json = raw.decode("utf-8")
            output = json.loads(output_json)
        except (UnicodeDecodeError, ValueError):
            raise PluginFailed("malformed output: not UTF-8 JSON") from None
        if isinstance(output, dict) and set(output) == {"error"}:
            raise PluginFailed(f"the plugin reported an error: {output['error']}")
        return CallResult(output, output_json, fuel_used, int((time.perf_counter() - started) * 1e6))


def _trap_error(trap: wasmtime.Trap) -> Exception:
    code = trap.trap_code
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return ResourceExhausted("the plugin ran out of fuel (CPU limit)")
    if code == wasmtime.TrapCode.INTERRUPT:
        return DeadlineExceeded("the plugin ran past its deadline")
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return ResourceExhausted("the plugin overflowed its stack")
    lines = (trap.message or "").splitlines()
    reason = next((line.strip() for line in lines if "wasm trap:" in line), lines[0] if lines else str(code))
    return PluginFailed(f"the plugin trapped: {reason}")


def _raw_export(context: Any, instance: wasmtime.Instance, name: str) -> Any:
    """One export by name, as the C API's extern. wasmtime-py's `exports()` wraps every export in
    Python objects, which costs more than the rest of a small call; the ABI needs three."""
    item = _ffi.wasmtime_extern_t()
    raw = name.encode()
    if not _ffi.wasmtime_instance_export_get(
        context, ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
    ):
        raise PluginFailed(f"the plugin has no export {name!r}")
    return item


def _call_abi(context: Any, func: Any, *args: int) -> int:
    """Call an ABI function whose i32 parameters and single integer result were checked at compilation.

    wasmtime-py's `Func.__call__` rebuilds the function type on every call (~50 us); the ABI types
    are fixed, so this goes straight to `wasmtime_func_call`."""
    params = (_ffi.wasmtime_val_t * len(args))()
    for index, value in enumerate(args):
        params[index].kind = _I32  # type: ignore[assignment]  # ctypes converts the int
        params[index].of.i32 = value
    results = (_ffi.wasmtime_val_t * 1)()
    trap = ctypes.POINTER(_ffi.wasm_trap_t)()
    error = _ffi.wasmtime_func_call(context, ctypes.byref(func), params, len(args), results, 1, ctypes.byref(trap))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)
    result = results[0]
    return int(result.of.i64 if result.kind == _I64 else result.of.i32)


def _memory_at_cap(store: wasmtime.Store, instance: wasmtime.Instance | None, limits: Limits) -> bool:
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    # The exact failing request is not visible from Python; a memory within a quarter of its cap that
    # ends in a trap is reported as exhaustion rather than as a bug in the plugin.
    return isinstance(memory, wasmtime.Memory) and memory.data_len(store) * 4 >= limits.memory_bytes * 3


def _wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")
