"""The Rego engine on a real OPA server, over its REST API through `opa-python-client`.

`install` pushes the bundle's policy modules (tests stay home) and data to the server; `evaluate`
queries the entrypoint with the full input. OPA has no multi-module transaction, so a push holds a
write lock that this process's evaluations wait on: none of them sees half a bundle. Modules are
pushed in passes because OPA compiles on every PUT and a module may need one not yet pushed. If
the server forgets the policies (restarted), queries turn undefined: the engine answers
unavailable (DENY) and pushes again before the next query.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import requests
from opa_client import OpaClient

from ztmesh.policy.errors import BundleError, EngineError, EngineUnavailable, StaleBundle
from ztmesh.policy.rego import CompiledBundle

MODULE_PREFIX = "ztmesh/"  # ids of the modules this engine manages on the server


class _ReadWriteLock:
    """Many evaluations at once, or one push."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    errors = getattr(exc, "errors", None)
    if errors:
        details = "; ".join(
            f"{e.get('location', {}).get('file', '')}:{e.get('location', {}).get('row', '')}: {e.get('message', '')}"
            for e in errors
            if isinstance(e, dict)
        )
        return f"{message}: {details}" if message else details
    return str(message or exc)


class OpaServerEngine:
    """Evaluates on `opa run --server` at `url` (http://host:port); pushes bundles to it."""

    name = "opa"

    def __init__(self, url: str, timeout_s: float = 1.0, push_timeout_s: float = 10.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"OPA URL {url!r} is not http(s)://host:port")
        port = parsed.port or (443 if parsed.scheme == "https" else 8181)
        ssl = parsed.scheme == "https"
        # No retries: a decision waits for one attempt, then fails closed; the caller may retry.
        self._client = OpaClient(host=parsed.hostname, port=port, ssl=ssl, timeout=timeout_s, retries=0)
        self._pusher = OpaClient(host=parsed.hostname, port=port, ssl=ssl, timeout=push_timeout_s, retries=2)
        self.url = url
        self._lock = _ReadWriteLock()
        self._installed: CompiledBundle | None = None
        self._needs_push = False

    # --- pushing -------------------------------------------------------------------------------

    def _push(self, bundle: CompiledBundle) -> None:
        client = self._pusher
        for root, value in bundle.data.items():
            if not isinstance(value, dict):
                raise BundleError(f"top-level data {root!r} must be an object to be pushed to OPA")
            client.update_or_create_data(value, root)
        pending = {MODULE_PREFIX + path: source for path, source in bundle.modules.items()}
        errors: dict[str, str] = {}
        while pending:
            pushed = []
            for module_id, source in sorted(pending.items()):
                try:
                    client.update_policy_from_string(source, module_id, rego_compat=False)
                    pushed.append(module_id)
                except Exception as exc:  # opa_client raises its own types; keep the reason, retry later
                    errors[module_id] = _describe(exc)
            for module_id in pushed:
                del pending[module_id]
                errors.pop(module_id, None)
            if not pushed:
                first = sorted(errors)[0]
                raise BundleError(f"OPA refused the module: {errors[first]}", first.removeprefix(MODULE_PREFIX))
        wanted = {MODULE_PREFIX + path for path in bundle.modules}
        for module_id in client.get_policies_list():
            if module_id.startswith(MODULE_PREFIX) and module_id not in wanted:
                client.delete_policy(module_id)
        previous = self._installed
        if previous is not None:
            for root in set(previous.data) - set(bundle.data):
                client.delete_data(root)

    def install(self, bundle: CompiledBundle) -> None:
        with self._lock.writing():
            try:
                self._push(bundle)
            except BundleError:
                raise
            except requests.RequestException as exc:
                raise EngineUnavailable(f"OPA at {self.url} unreachable while pushing the bundle: {exc}") from exc
            except Exception as exc:
                raise EngineError(f"OPA at {self.url} refused the bundle: {_describe(exc)}") from exc
            self._installed = bundle
            self._needs_push = False

    # --- evaluating ----------------------------------------------------------------------------

    def _repush(self) -> None:
        with self._lock.writing():
            if self._needs_push and self._installed is not None:
                self._push(self._installed)
                self._needs_push = False

    def evaluate(self, bundle: CompiledBundle, document: Mapping[str, Any], pruned: Mapping[str, Any]) -> Any:
        if self._needs_push:
            try:
                self._repush()
            except Exception as exc:
                raise EngineUnavailable(f"OPA at {self.url} lost the policies and refuses them again: {exc}") from exc
        package, _, rule = bundle.entrypoint.removeprefix("data.").rpartition(".")
        with self._lock.reading():
            installed = self._installed
            if installed is None or installed.revision != bundle.revision:
                raise StaleBundle(f"bundle {bundle.revision} is not the one on the OPA server")
            try:
                reply = self._client.query_rule(input_data=dict(document), package_path=package, rule_name=rule)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise EngineUnavailable(f"OPA at {self.url} unreachable: {type(exc).__name__}") from exc
            except requests.HTTPError as exc:
                body = exc.response.text[:300] if exc.response is not None else ""
                raise EngineError(f"OPA at {self.url} answered {exc}: {body}") from exc
            except requests.RequestException as exc:
                raise EngineUnavailable(f"OPA at {self.url} failed: {exc}") from exc
        if "result" not in reply:
            # Undefined: either the policy leaves it so, or the server lost our modules (restart).
            self._needs_push = True
            raise EngineUnavailable(f"OPA at {self.url} has no decision at {bundle.entrypoint}: re-pushing")
        return reply["result"]

    def close(self) -> None:
        self._client.close_connection()
        self._pusher.close_connection()
