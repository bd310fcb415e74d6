"""The plugins core: registration (validation, signature, compilation), listing, execution, removal.

A plugin is compiled and its ABI checked before it is stored, so nothing broken is ever
registered; on start-up every stored plugin is compiled again (from the on-disk cache)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Protocol

from ztmesh.mesh.auditing import AuditEmitter, AuditEvent
from ztmesh.plugins.errors import BadInput, InvalidPlugin, PluginNotFound, SignatureRejected
from ztmesh.plugins.manifest import Manifest, signing_message
from ztmesh.plugins.sandbox import CallResult, CompiledPlugin, Sandbox
from ztmesh.plugins.store import PluginStore, StoredPlugin, now

MAX_MODULE_BYTES = 16 * 1024 * 1024


class SignatureVerifier(Protocol):
    def verify(self, key_id: str, key_version: int, message: bytes, signature: bytes) -> bool: ...


@dataclass
class LoadedPlugin:
    stored: StoredPlugin
    compiled: CompiledPlugin


def _version_key(version: str) -> tuple[int, int, int, int, str]:
    core, _, pre = version.partition("+")[0].partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    return (major, minor, patch, 0 if pre else 1, pre)  # a release sorts after its pre-releases


class PluginRegistry:
    def __init__(
        self,
        store: PluginStore,
        sandbox: Sandbox,
        verifier: SignatureVerifier | None,
        *,
        require_signature: bool,
        audit: AuditEmitter | None = None,
    ) -> None:
        if require_signature and verifier is None:
            raise ValueError("signing is required but no verifier is configured")
        self._store = store
        self._sandbox = sandbox
        self._verifier = verifier
        self._require_signature = require_signature
        self._audit = audit
        self._plugins: dict[tuple[str, str], LoadedPlugin] = {}
        self._lock = threading.Lock()
        for stored in store.all():
            compiled = sandbox.compile(stored.module, frozenset(stored.manifest.capabilities))
            self._plugins[(stored.manifest.name, stored.manifest.version)] = LoadedPlugin(stored, compiled)

    def register(
        self, caller: str, module: bytes, manifest: Manifest, signature: bytes, key_id: str, key_version: int
    ) -> StoredPlugin:
        if not module:
            raise InvalidPlugin("module is empty")
        if len(module) > MAX_MODULE_BYTES:
            raise InvalidPlugin(f"module is {len(module)} bytes; the limit is {MAX_MODULE_BYTES}")
        if self._require_signature:
            if not signature or not key_id:
                raise SignatureRejected("signing is required: the module must carry a signature and its key id")
            assert self._verifier is not None
            if not self._verifier.verify(key_id, key_version, signing_message(module, manifest), signature):
                raise SignatureRejected(
                    f"signature by key {key_id!r} does not verify over this module and manifest (tampered or wrong key)"
                )
        compiled = self._sandbox.compile(module, frozenset(manifest.capabilities))
        missing = sorted(set(manifest.functions) - compiled.functions)
        if missing:
            raise InvalidPlugin(
                f"manifest names functions the module does not export with the ABI signature: {missing}"
            )
        stored = StoredPlugin(
            manifest,
            module,
            hashlib.sha256(module).hexdigest(),
            key_id if self._require_signature or signature else "",
            caller,
            now(),
        )
        self._store.add(stored)
        with self._lock:
            self._plugins[(manifest.name, manifest.version)] = LoadedPlugin(stored, compiled)
        return stored

    def _record(self, caller: str, action: str, manifest: Manifest, outcome: str, **details: object) -> None:
        if self._audit is not None:
            self._audit.emit(
                AuditEvent(
                    service="plugins",
                    action=action,
                    outcome=outcome,
                    caller_spiffe_id=caller,
                    resource=f"plugin/{manifest.name}/{manifest.version}",
                    details=dict(details),
                )
            )

    def list(self, name: str = "") -> list[StoredPlugin]:
        with self._lock:
            return [p.stored for (n, _), p in sorted(self._plugins.items()) if not name or n == name]

    def _find(self, name: str, version: str) -> LoadedPlugin:
        with self._lock:
            if version:
                found = self._plugins.get((name, version))
            else:
                candidates = [p for (n, _), p in self._plugins.items() if n == name]
                found = max(candidates, key=lambda p: _version_key(p.stored.manifest.version), default=None)
        if found is None:
            raise PluginNotFound(f"no plugin {name!r}" + (f" version {version}" if version else "") + " is registered")
        return found

    def execute(self, name: str, version: str, function: str, input_json: bytes) -> tuple[CallResult, str]:
        plugin = self._find(name, version)
        manifest = plugin.stored.manifest
        if function not in manifest.functions:
            raise BadInput(f"plugin {name} {manifest.version} does not offer {function!r}")
        return self._sandbox.call(plugin.compiled, function, input_json, manifest.limits), manifest.version

    def unregister(self, name: str, version: str) -> int:
        removed = self._store.remove(name, version)
        if removed and self._audit is not None:
            self._audit.emit(
                AuditEvent(
                    service="plugins",
                    action="plugins.unregister",
                    outcome="OK",
                    resource=f"plugin/{name}/{version or '*'}",
                    details={"removed": removed},
                )
            )
        with self._lock:
            for key in [k for k in self._plugins if k[0] == name and (not version or k[1] == version)]:
                del self._plugins[key]
        if not removed:
            raise PluginNotFound(f"no plugin {name!r}" + (f" version {version}" if version else "") + " is registered")
        return removed

    def close(self) -> None:
        self._sandbox.close()
        self._store.close()
