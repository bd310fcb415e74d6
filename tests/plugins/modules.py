"""Test plugins written in WebAssembly text: one well-behaved, the rest hostile in one way each.

Every module speaks the ABI (docs/plugin-abi.md): `memory`, `ztm_alloc`, `ztm_abi_version` and
functions `(ptr, len) -> i64` returning `out_ptr << 32 | out_len`."""

from __future__ import annotations

import wasmtime

_ABI = """
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "ztm_abi_version") (result i32) (i32.const 1))
  (func (export "ztm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (if (i32.gt_u (global.get $top) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 1))))))
    (local.get $p))
"""


def _pack(ptr: str, length: str) -> str:
    return f"(i64.or (i64.shl (i64.extend_i32_u {ptr}) (i64.const 32)) (i64.extend_i32_u {length}))"


def module(body: str, imports: str = "") -> bytes:
    return bytes(wasmtime.wat2wasm(f"(module {imports} {_ABI} {body})"))


ECHO = module(f"""
  (func (export "echo") (param $p i32) (param $n i32) (result i64) {_pack("(local.get $p)", "(local.get $n)")})
""")

INFINITE_LOOP = module("""
  (func (export "run") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))
""")

MEMORY_HOG = module("""
  (func (export "run") (param i32 i32) (result i64)
    (loop $l (if (i32.ne (memory.grow (i32.const 16)) (i32.const -1)) (then (br $l))))
    unreachable)
""")

DEEP_RECURSION = module("""
  (func $down (param $x i64) (result i64) (i64.add (call $down (i64.add (local.get $x) (i64.const 1))) (i64.const 1)))
  (func (export "run") (param i32 i32) (result i64) (call $down (i64.const 0)))
""")

HUGE_OUTPUT = module(f"""
  (func (export "run") (param i32 i32) (result i64) {_pack("(i32.const 0)", "(i32.const 0x7fffffff)")})
""")

OUT_OF_BOUNDS_OUTPUT = module(f"""
  (func (export "run") (param i32 i32) (result i64) {_pack("(i32.const 65000)", "(i32.const 1000)")})
""")

NOT_JSON = module(f"""
  (data (i32.const 16) "this is not json")
  (func (export "run") (param i32 i32) (result i64) {_pack("(i32.const 16)", "(i32.const 16)")})
""")

# Counts its calls in a global and in memory, and answers the count: a fresh instance answers 1.
STATEFUL = module(f"""
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 8) "{{\\"calls\\":0}}")
  (func (export "run") (param i32 i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store8 (i32.const 17) (i32.add (i32.load8_u (i32.const 17)) (global.get $calls)))
    {_pack("(i32.const 8)", "(i32.const 11)")})
""")

WASI_IMPORT = module(
    f'(func (export "run") (param i32 i32) (result i64) {_pack("(i32.const 0)", "(i32.const 0)")})',
    '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
)

HOST_IMPORT = module(
    f'(func (export "run") (param i32 i32) (result i64) {_pack("(i32.const 0)", "(i32.const 0)")})',
    '(import "env" "read_secrets" (func (result i32)))',
)

NO_ABI = bytes(wasmtime.wat2wasm('(module (func (export "run") (param i32 i32) (result i64) (i64.const 0)))'))
MALFORMED = b"\x00asm\x01\x00\x00\x00\xff\xff garbage"
