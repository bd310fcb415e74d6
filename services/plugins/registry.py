"""The plugins core: registration (validation, signature, compilation), listing, execution, removal.

A plugin is compiled and its ABI checked before it is stored, so nothing broken is ever
registered; on start-up every stored plugin has its kept signature checked again against the
trusted-signer list and is compiled again (from the on-disk cache). A stored plugin that fails the
check is not loaded, and says so loudly."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from ztmesh.mesh.auditing import AuditEmitter, AuditEvent
from ztmesh.plugins.errors import BadInput, InvalidPlugin, PluginNotFound, PluginsError, SignatureRejected
from ztmesh.plugins.manifest import Manifest, ModuleSignature, signing_message
from ztmesh.plugins.sandbox import CallResult, CompiledPlugin, Sandbox
from ztmesh.plugins.store import PluginStore, StoredPlugin, now
from ztmesh.plugins.verifier import TRUSTED_SIGNERS, SignerTrust

MAX_MODULE_BYTES = 16 * 1024 * 1024
log = logging.getLogger(__name__)


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
        signers: SignerTrust | None,
        *,
        require_signature: bool,
        audit: AuditEmitter | None = None,
    ) -> None:
        if require_signature and signers is None:
            raise ValueError("signing is required but no trusted-signer check is configured")
        self._store = store
        self._sandbox = sandbox
        self._signers = signers
        self._require_signature = require_signature
        self._audit = audit
        self._plugins: dict[tuple[str, str], LoadedPlugin] = {}
        self._lock = threading.Lock()
        if require_signature and signers is not None and signers.empty:
            log.warning("plugin signing is required but %s is empty: no plugin can register or load", TRUSTED_SIGNERS)
        for stored in store.all():
            if self._load_refused(stored):
                continue
            compiled = sandbox.compile(stored.module, frozenset(stored.manifest.capabilities))
            self._plugins[(stored.manifest.name, stored.manifest.version)] = LoadedPlugin(stored, compiled)

    def _load_refused(self, stored: StoredPlugin) -> bool:
        """Check a stored plugin again as registration did: a row changed in the database, or a signer
        since removed from the list, must not run."""
        if not self._require_signature:
            return False
        manifest = stored.manifest
        try:
            if hashlib.sha256(stored.module).hexdigest() != stored.module_sha256:
                raise SignatureRejected("the stored module does not match its recorded SHA-256")
            if stored.signature is None:
                raise SignatureRejected(
                    "it has no stored signature (registered while signing was not required, or before signatures "
                    "were kept)"
                )
            assert self._signers is not None
            self._signers.check(stored.signature, signing_message(stored.module, manifest))
        except SignatureRejected as exc:
            log.error(
                "plugin %s %s is NOT loaded: %s; re-register it signed by a trusted signer, or unregister it",
                manifest.name, manifest.version, exc,
            )  # fmt: skip
            self._record("", "plugins.load", manifest, "DENIED", problem=str(exc))
            return True
        return False

    def register(
        self, caller: str, module: bytes, manifest: Manifest, signature: bytes, key_id: str, key_version: int
    ) -> StoredPlugin:
        if not module:
            raise InvalidPlugin("module is empty")
        if len(module) > MAX_MODULE_BYTES:
            raise InvalidPlugin(f"module is {len(module)} bytes; the limit is {MAX_MODULE_BYTES}")
        signed: ModuleSignature | None = None
        if self._require_signature:
            if not signature or not key_id:
                raise SignatureRejected("signing is required: the module must carry a signature and its key id")
            assert self._signers is not None
            signed = self._signers.attest(key_id, key_version, signing_message(module, manifest), signature)
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
            signed,  # unsigned only where signing is not required (dev mode): nothing unverified is recorded
            caller,
            now(),
        )
        self._store.add(stored)
        with self._lock:
            self._plugins[(manifest.name, manifest.version)] = LoadedPlugin(stored, compiled)
        signer = {"signing_key_id": signed.key_id} if signed is not None else {}
        self._record(caller, "plugins.register", manifest, "OK", module_sha256=stored.module_sha256, **signer)
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

    def execute(self, caller: str, name: str, version: str, function: str, input_json: bytes) -> tuple[CallResult, str]:
        """Run `function` of a plugin; audited with the caller, the function and what it cost (not the
        input, which may carry personal data), or with the failure."""
        plugin = self._find(name, version)
        manifest = plugin.stored.manifest
        if function not in manifest.functions:
            raise BadInput(f"function: plugin {name} {manifest.version} does not offer {function!r}")
        try:
            result = self._sandbox.call(plugin.compiled, function, input_json, manifest.limits)
        except PluginsError as exc:
            self._record(caller, "plugins.execute", manifest, "ERROR", function=function, error=type(exc).__name__)
            raise
        details = {"function": function, "fuel_consumed": result.fuel_consumed, "duration_us": result.duration_us}
        self._record(caller, "plugins.execute", manifest, "OK", **details)
        return result, manifest.version

    def unregister(self, caller: str, name: str, version: str) -> int:
        removed = self._store.remove(name, version)
        with self._lock:
            for key in [k for k in self._plugins if k[0] == name and (not version or k[1] == version)]:
                del self._plugins[key]
        if not removed:
            raise PluginNotFound(f"no plugin {name!r}" + (f" version {version}" if version else "") + " is registered")
        if self._audit is not None:  # after the removal, so a refused record leaves no half-removed plugin
            self._audit.emit(
                AuditEvent(
                    service="plugins",
                    action="plugins.unregister",
                    outcome="OK",
                    caller_spiffe_id=caller,
                    resource=f"plugin/{name}/{version or '*'}",
                    details={"removed": removed},
                )
            )
        return removed

    def close(self) -> None:
        self._sandbox.close()
        self._store.close()
