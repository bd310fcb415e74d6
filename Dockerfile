# syntax=docker/dockerfile:1
# One image for every ztmesh process; the command picks the service:
#   ztmesh serve policy|plugins|keys|audit     ztmesh audit verify     ztmesh keys rewrap ...
# Runs as an unprivileged user on a read-only root filesystem: everything it writes goes to
# ZTMESH_DATA_DIR and /tmp, which Kubernetes mounts as emptyDir volumes (k8s/base).
#
# The base is pinned by digest (the tag is for people); update both together.
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ztmesh
WORKDIR /src
# The in-process OPA (the default Rego engine): services/policy/opa_shim built with cgo as a shared
# library. Go is the golang.org/toolchain module from the Go module proxy, pinned by hash; gcc from Debian.
ARG GO_TOOLCHAIN=v0.0.1-go1.26.8.linux-amd64
ARG GO_TOOLCHAIN_SHA256=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python -c "import hashlib, io, os, sys, urllib.request, zipfile; \
data = urllib.request.urlopen(sys.argv[1], timeout=300).read(); \
assert hashlib.sha256(data).hexdigest() == sys.argv[2], 'Go toolchain hash mismatch'; \
z = zipfile.ZipFile(io.BytesIO(data)); \
[(z.extract(i, '/opt/gotc'), os.chmod(os.path.join('/opt/gotc', i.filename), (i.external_attr >> 16) & 0o777 or 0o644)) \
 for i in z.infolist() if not i.is_dir()]" \
    "https://proxy.golang.org/golang.org/toolchain/@v/${GO_TOOLCHAIN}.zip" "${GO_TOOLCHAIN_SHA256}" \
 && mv "/opt/gotc/golang.org/toolchain@${GO_TOOLCHAIN}" /opt/go && rm -rf /opt/gotc
# The audit service's native code (native/audit: the verifier's walk; Append's event check, record
# encoding and hashing) as an abi3 wheel, built with Rust's standalone toolchain from
# static.rust-lang.org, pinned by hash (its crates are pinned in Cargo.lock).
ARG RUST_TOOLCHAIN=rust-1.95.0-x86_64-unknown-linux-gnu
ARG RUST_TOOLCHAIN_SHA256=2e0338f18ecbaa4a0f631b9e80e8b8e26bb6fe77dd5454fba8a70cf96c1e84a1
COPY native/audit ./audit-native
RUN python -c "import hashlib, sys, urllib.request; \
data = urllib.request.urlopen(sys.argv[1], timeout=600).read(); \
assert hashlib.sha256(data).hexdigest() == sys.argv[2], 'Rust toolchain hash mismatch'; \
open('/tmp/rust.tar.xz', 'wb').write(data)" \
    "https://static.rust-lang.org/dist/${RUST_TOOLCHAIN}.tar.xz" "${RUST_TOOLCHAIN_SHA256}" \
 && mkdir /tmp/rust && tar -xJf /tmp/rust.tar.xz -C /tmp/rust --strip-components=1 \
 && /tmp/rust/install.sh --prefix=/opt/rust --components=rustc,cargo,rust-std-x86_64-unknown-linux-gnu >/dev/null \
 && python -m venv /opt/maturin && /opt/maturin/bin/pip install -q maturin==1.9.4 \
 && cd audit-native && PATH=/opt/rust/bin:$PATH CARGO_HOME=/tmp/cargo \
    /opt/maturin/bin/maturin build --release --locked --out /wheels \
 && rm -rf /tmp/rust /tmp/rust.tar.xz /tmp/cargo /opt/rust /opt/maturin target
COPY services/policy/opa_shim ./opa_shim
RUN cd opa_shim \
 && CGO_ENABLED=1 GOTOOLCHAIN=local GOFLAGS="-trimpath -mod=readonly -buildvcs=false" GOPATH=/tmp/gopath \
    /opt/go/bin/go build -buildmode=c-shared -o /opt/ztmesh/lib/libztmesh_opa.so . \
 && rm -rf /opt/ztmesh/lib/libztmesh_opa.h /tmp/gopath /root/.cache/go-build
# Only what the package needs (see .dockerignore): dependency pins live in pyproject.toml.
COPY pyproject.toml README.md ./
COPY services ./services
RUN /opt/ztmesh/bin/pip install . /wheels/ztmesh_audit_native-*.whl \
 && /opt/ztmesh/bin/pip uninstall --yes pip setuptools \
 && /opt/ztmesh/bin/python -m compileall -q -j 0 /opt/ztmesh/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ztmesh" \
      org.opencontainers.image.description="Zero Trust policy decision point: policy, plugins, keys and audit gRPC services" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 ztmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ztmesh \
 && mkdir -p /var/lib/ztmesh \
 && chown 10001:10001 /var/lib/ztmesh
COPY --from=build /opt/ztmesh /opt/ztmesh
# The default pack and trust data, so the image answers on its own; Kubernetes mounts the
# ConfigMaps ztmesh-policies and ztmesh-trust over these paths' settings (k8s/base/policy.yaml).
COPY policies/rego /usr/share/ztmesh/policies/rego
COPY policies/trust /usr/share/ztmesh/policies/trust
COPY policies/threat /usr/share/ztmesh/policies/threat
# Bytecode was compiled at build time; nothing may be written next to the code at run time.
ENV PATH=/opt/ztmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    ZTMESH_HOST=0.0.0.0 \
    ZTMESH_DATA_DIR=/var/lib/ztmesh \
    ZTMESH_OPA_LIBRARY=/opt/ztmesh/lib/libztmesh_opa.so \
    ZTMESH_POLICY_DIR=/usr/share/ztmesh/policies/rego \
    ZTMESH_TRUST_WEIGHTS=/usr/share/ztmesh/policies/trust/weights.json \
    ZTMESH_THREAT_DIR=/usr/share/ztmesh/policies/threat
WORKDIR /var/lib/ztmesh
USER 10001:10001
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
ENTRYPOINT ["ztmesh"]
CMD ["--help"]
