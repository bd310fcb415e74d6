"""The sandbox holds hostile modules: each fails with the right error and the sandbox keeps working."""

from __future__ import annotations

import json

import pytest

from tests.plugins import modules
from ztmesh.plugins.errors import BadInput, DeadlineExceeded, InvalidPlugin, PluginFailed, ResourceExhausted
from ztmesh.plugins.sandbox import Limits, Sandbox

TIGHT = Limits(fuel=50_000_000, timeout_ms=2000, memory_bytes=8 * 1024 * 1024, max_output_bytes=64 * 1024)


@pytest.fixture
def sandbox(tmp_path):
    # Fuel maxima far above any call's: a test asking for a deadline must not run out of fuel first on a
    # fast, idle machine (200M instructions take well under a second).
    box = Sandbox(Limits(fuel=10**15), cache_dir=tmp_path / "cache")
    yield box
    box.close()


def echo_works(sandbox: Sandbox) -> None:
    plugin = sandbox.compile(modules.ECHO)
    assert sandbox.call(plugin, "echo", b'{"still":"alive"}', TIGHT).output == {"still": "alive"}


@pytest.mark.parametrize(
    ("wasm", "limits", "error", "message"),
    [
        (modules.INFINITE_LOOP, TIGHT, ResourceExhausted, "ran out of fuel"),
        (modules.INFINITE_LOOP, Limits(fuel=10**15, timeout_ms=100), DeadlineExceeded, "deadline"),
        (modules.MEMORY_HOG, TIGHT, ResourceExhausted, "memory limit"),
        (modules.DEEP_RECURSION, TIGHT, ResourceExhausted, "stack"),
        (modules.HUGE_OUTPUT, TIGHT, ResourceExhausted, "exceeds the limit"),
        (modules.OUT_OF_BOUNDS_OUTPUT, TIGHT, PluginFailed, "outside the plugin's memory"),
        (modules.NOT_JSON, TIGHT, PluginFailed, "not UTF-8 JSON"),
    ],
    ids=[
        "infinite-loop-fuel",
        "infinite-loop-deadline",
        "memory-growth",
        "deep-recursion",
        "huge-output",
        "output-out-of-bounds",
        "malformed-output",
    ],
)
def test_hostile_module_is_contained(sandbox, wasm, limits, error, message):
    plugin = sandbox.compile(wasm)
    with pytest.raises(error, match=message):
        sandbox.call(plugin, "run", b"{}", limits)
    echo_works(sandbox)


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        (modules.WASI_IMPORT, "imports wasi_snapshot_preview1.fd_write, which is not granted"),
        (modules.HOST_IMPORT, "imports env.read_secrets, which is not granted"),
        (modules.MALFORMED, "not a valid WebAssembly module"),
        (modules.NO_ABI, "does not export `memory`"),
    ],
    ids=["wasi-import", "unknown-host-import", "malformed-binary", "no-abi"],
)
def test_bad_modules_are_refused_at_compilation(sandbox, wasm, message):
    with pytest.raises(InvalidPlugin, match=message):
        sandbox.compile(wasm)
    echo_works(sandbox)


def test_wasi_is_refused_even_when_requested_unless_the_operator_allows_it(sandbox):
    with pytest.raises(InvalidPlugin, match="capability 'wasi' is not allowed"):
        sandbox.compile(modules.WASI_IMPORT, frozenset({"wasi"}))
    allowing = Sandbox(Limits(), allowed_capabilities=frozenset({"wasi"}))
    try:
        plugin = allowing.compile(modules.WASI_IMPORT, frozenset({"wasi"}))
        assert plugin.wasi
    finally:
        allowing.close()


def test_no_state_survives_between_calls(sandbox):
    plugin = sandbox.compile(modules.STATEFUL)
    answers = [sandbox.call(plugin, "run", b"{}", TIGHT).output for _ in range(5)]
    assert answers == [{"calls": 1}] * 5


def test_input_limits_and_unknown_functions(sandbox):
    plugin = sandbox.compile(modules.ECHO)
    with pytest.raises(BadInput, match="accepts at most 16"):
        sandbox.call(plugin, "echo", json.dumps({"x": "y" * 100}).encode(), Limits(max_input_bytes=16))
    with pytest.raises(BadInput, match="exports no function 'steal'"):
        sandbox.call(plugin, "steal", b"{}", TIGHT)


def test_manifest_limits_are_capped_by_the_operator(tmp_path):
    box = Sandbox(Limits(fuel=1_000_000, timeout_ms=1000))
    try:
        plugin = box.compile(modules.INFINITE_LOOP)
        with pytest.raises(ResourceExhausted):  # asked for far more fuel than the operator allows
            box.call(plugin, "run", b"{}", Limits(fuel=10**15, timeout_ms=60_000))
    finally:
        box.close()


def test_compiled_modules_are_cached_on_disk(tmp_path):
    first = Sandbox(Limits(), cache_dir=tmp_path / "cache")
    first.compile(modules.ECHO)
    first.close()
    cached = list((tmp_path / "cache").glob("*.cwasm"))
    assert len(cached) == 1
    second = Sandbox(Limits(), cache_dir=tmp_path / "cache")
    try:
        assert second.call(second.compile(modules.ECHO), "echo", b"[1]", TIGHT).output == [1]
    finally:
        second.close()
