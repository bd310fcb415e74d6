"""The Rego engine on a real OPA server: bundles go to OPA through OPA's own bundle service protocol,
decisions come back over its REST API through `opa-python-client`.

OPA's REST writes (PUT /v1/policies, PUT /v1/data) are one transaction each, so pushing a bundle
through them is never atomic: a refused module left the new data live. Instead this process serves
the checked bundle as a tarball (`.manifest` with the revision) from a small HTTP endpoint that OPA
polls (long polling: a new bundle is fetched at once); OPA activates a bundle in one storage
transaction, entirely or not at all, and reports the outcome to the same endpoint (its status API).
The bundle carries a generated module that answers the decision together with the revision that
gave it, read in the same snapshot, so an answer is never attributed to a revision that did not
produce it. `opa_config()` is the OPA configuration that points OPA at the endpoint.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import requests
from opa_client import OpaClient

from ztmesh.policy.errors import BundleError, EngineError, EngineUnavailable, StaleBundle
from ztmesh.policy.opa_inproc import package_paths
from ztmesh.policy.rego import UNDEFINED, CompiledBundle

log = logging.getLogger("ztmesh.policy.opa")

BUNDLE_NAME = "ztmesh"
BUNDLE_RESOURCE = "/bundles/ztmesh.tar.gz"
STATUS_PATH = "/status"
SERVING_PACKAGE = "ztmesh_serving"  # the generated module: decision + revision in one snapshot
_LONG_POLL_TYPE = "application/vnd.openpolicyagent.bundles"  # tells OPA the server long-polls
LONG_POLL_S = 20


def serving_module(bundle: CompiledBundle) -> str:
    """The module OPA is queried at: the entrypoint's value and the revision, read together."""
    return (
        f"package {SERVING_PACKAGE}\n\nrevision := {json.dumps(bundle.revision)}\n\ndecision := {bundle.entrypoint}\n"
    )


def bundle_tarball(bundle: CompiledBundle) -> bytes:
    """The bundle in OPA's tarball format: `.manifest` (revision, the whole data tree as its root),
    the policy modules at their paths, the merged data as one `data.json`, the serving module."""
    # The packages as OPA parses them (a regex over the source misses an indented `package` line): a
    # module in data.ztmesh_serving could answer the decision OPA is queried at.
    for path, package in sorted(package_paths(bundle.modules).items()):
        if package[:1] == (SERVING_PACKAGE,) or path == f"{SERVING_PACKAGE}.rego":
            raise BundleError(f"the package and file name {SERVING_PACKAGE} are reserved by the OPA engine", path)
    files: dict[str, bytes] = {
        "/.manifest": json.dumps({"revision": bundle.revision, "roots": [""]}).encode(),
        "/data.json": json.dumps(bundle.data, ensure_ascii=False).encode(),
        f"/{SERVING_PACKAGE}.rego": serving_module(bundle).encode(),
    }
    for path, source in bundle.modules.items():
        files["/" + path] = source.encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def opa_config(bundle_url: str, long_poll_s: int = LONG_POLL_S) -> dict[str, Any]:
    """OPA's configuration (`opa run --server --config-file`) pulling ztmesh's bundle from `bundle_url`
    and reporting its status there; the same as k8s/components/opa-sidecar passes with `--set`."""
    return {
        "services": {BUNDLE_NAME: {"url": bundle_url}},
        "bundles": {
            BUNDLE_NAME: {
                "service": BUNDLE_NAME,
                "resource": BUNDLE_RESOURCE,
                "persist": False,
                "polling": {
                    "min_delay_seconds": 1,
                    "max_delay_seconds": 2,
                    "long_polling_timeout_seconds": long_poll_s,
                },
            }
        },
        "status": {"service": BUNDLE_NAME},
    }


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer (OPA stopped while long-polling) is routine.
        log.debug("bundle server: connection from %s ended abruptly", client_address, exc_info=True)


@dataclass(frozen=True)
class BundleStatus:
    """OPA's latest status report about ztmesh's bundle."""

    active_revision: str
    code: str  # "" when the last download and activation succeeded
    message: str
    received_at: float
    downloads: int  # how many tarballs OPA had fetched when this report arrived
    file: str = ""  # where the first error is, when OPA says
    line: int = 0


def _describe_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    location = error.get("location") or {}
    where = f"{location.get('file', '').lstrip('/')}:{location.get('row', '')}: " if location.get("file") else ""
    return f"{where}{error.get('code', '')}: {error.get('message', '')}"


def _status_message(status: Mapping[str, Any]) -> str:
    errors = status.get("errors") or []
    details = "; ".join(_describe_error(e) for e in errors if e)
    message = str(status.get("message") or status.get("code") or "")
    return f"{message}: {details}" if details else message


class OpaBundleServer:
    """Serves the published bundle to OPA (long polling, an ETag per publication) and keeps OPA's
    status reports. Listens on `host:port` (port 0: a free one; see `url`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._cond = threading.Condition()
        self._tarball = b""
        self._etag = ""
        self._publications = 0
        self._downloads = 0  # complete 200 responses: OPA got the current tarball this many times
        self._downloaded_etag = ""
        self.status: BundleStatus | None = None
        self._httpd = _QuietHTTPServer((host, port), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="opa-bundle-server", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def publish(self, tarball: bytes, revision: str) -> str:
        """Make `tarball` the bundle OPA fetches next; returns its ETag (new for every publication,
        so OPA fetches it again even when it refused the same revision before)."""
        with self._cond:
            self._publications += 1
            self._tarball = tarball
            self._etag = f'"{revision}.{self._publications}"'
            self._cond.notify_all()
            return self._etag

    def downloaded(self, etag: str) -> bool:
        with self._cond:
            return self._downloaded_etag == etag

    @property
    def downloads(self) -> int:
        return self._downloads

    # --- HTTP ----------------------------------------------------------------------------------

    def _serve_bundle(self, handler: BaseHTTPRequestHandler) -> None:
        wait = 0.0
        for part in (handler.headers.get("Prefer") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == "wait" and value.isdigit():
                wait = float(value)
        known = {tag.strip() for tag in (handler.headers.get("If-None-Match") or "").split(",") if tag.strip()}
        deadline = time.monotonic() + wait
        with self._cond:
            while (not self._etag or self._etag in known) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            etag, tarball = self._etag, self._tarball
        if not etag:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if etag in known:  # nothing new within the wait: OPA asks again at once (long polling)
            handler.send_response(304)
            handler.send_header("ETag", etag)
            handler.send_header("Content-Type", _LONG_POLL_TYPE)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        try:
            handler.send_response(200)
            handler.send_header("ETag", etag)
            handler.send_header("Content-Type", _LONG_POLL_TYPE)
            handler.send_header("Content-Length", str(len(tarball)))
            handler.end_headers()
            handler.wfile.write(tarball)
            handler.wfile.flush()
        except OSError:  # OPA went away mid-poll (stopped, restarted): it asks again when back
            handler.close_connection = True
            return
        with self._cond:
            self._downloads += 1
            self._downloaded_etag = etag
            self._cond.notify_all()

    def _take_status(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if handler.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        try:
            report = json.loads(body)
            status = (report.get("bundles") or {}).get(BUNDLE_NAME)
        except (ValueError, AttributeError):
            return
        if not isinstance(status, dict):
            return
        first = next((e for e in status.get("errors") or [] if isinstance(e, dict)), {})
        location = first.get("location") or {}
        with self._cond:
            self.status = BundleStatus(
                active_revision=str(status.get("active_revision") or ""),
                code=str(status.get("code") or ""),
                message=_status_message(status),
                received_at=time.monotonic(),
                downloads=self._downloads,
                file=str(location.get("file") or "").lstrip("/"),
                line=int(location.get("row") or 0),
            )
            self._cond.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if urlparse(self.path).path == BUNDLE_RESOURCE:
                    server._serve_bundle(self)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802
                if urlparse(self.path).path == STATUS_PATH:
                    server._take_status(self)
                else:
                    self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler

    def wait(self, timeout: float) -> None:
        """Until something changes (a download, a status report) or `timeout` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _revision_of(reply: Mapping[str, Any]) -> str:
    result = reply.get("result")
    return str(result.get("revision") or "") if isinstance(result, dict) else ""


class OpaServerEngine:
    """Evaluates on `opa run --server` at `url` (http://host:port), which pulls its bundle from this
    engine's bundle server (`bundle_server`, or a new one on `bundle_host:bundle_port`; OPA must be
    configured with `opa_config(engine.bundles.url)`)."""

    name = "opa"

    def __init__(
        self,
        url: str,
        bundle_server: OpaBundleServer | None = None,
        *,
        bundle_host: str = "127.0.0.1",
        bundle_port: int = 0,
        timeout_s: float = 1.0,
        activation_timeout_s: float = 10.0,
        owns_bundle_server: bool = False,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"OPA URL {url!r} is not http(s)://host:port")
        port = parsed.port or (443 if parsed.scheme == "https" else 8181)
        # No retries: a decision waits for one attempt, then fails closed; the caller may retry.
        self._client = OpaClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https", timeout=timeout_s,
                                 retries=0)  # fmt: skip
        self.url = url
        self.activation_timeout_s = activation_timeout_s
        self._owns_server = owns_bundle_server or bundle_server is None  # closed with the engine
        self.bundles = bundle_server or OpaBundleServer(bundle_host, bundle_port)
        self._install_lock = threading.Lock()
        self._installed: CompiledBundle | None = None  # the bundle OPA confirmed active
        self._activating = ""  # the revision being installed, while install() waits for OPA
        self._swapped = threading.Condition()

    # --- activation ----------------------------------------------------------------------------

    def _query_revision(self) -> str:
        """The revision OPA serves ("" for none); raises when OPA cannot be asked. Only the revision
        rule is evaluated, not the decision (which an empty input may not suit)."""
        reply = self._client.query_rule(input_data={}, package_path=SERVING_PACKAGE, rule_name="revision")
        return str(reply.get("result") or "")

    def serving_revision(self) -> str:
        """The revision OPA serves now ("" when it serves none or cannot be reached)."""
        try:
            return self._query_revision()
        except (requests.RequestException, ValueError):
            return ""

    def _await_activation(self, bundle: CompiledBundle, etag: str, started: float) -> None:
        deadline = started + self.activation_timeout_s
        downloads_before = self.bundles.downloads
        reached = False
        while True:
            try:
                revision = self._query_revision()
                reached = True
            except (requests.RequestException, ValueError):
                revision = ""
            if revision == bundle.revision and self.bundles.downloaded(etag):
                return
            status = self.bundles.status
            # A report after OPA fetched this publication, still not on its revision: OPA refused it.
            if (
                status is not None and status.code and status.downloads > downloads_before
                and self.bundles.downloaded(etag) and status.active_revision != bundle.revision
            ):  # fmt: skip
                raise BundleError(f"OPA refused the bundle: {status.message}", status.file, status.line)
            now = time.monotonic()
            if now >= deadline or (not reached and now - started > min(1.0, self.activation_timeout_s)):
                break
            self.bundles.wait(0.05)
        if not reached:
            raise EngineUnavailable(f"OPA at {self.url} unreachable while activating bundle {bundle.revision}")
        raise EngineUnavailable(
            f"OPA at {self.url} did not activate bundle {bundle.revision} within {self.activation_timeout_s:g} s "
            f"(it {'fetched' if self.bundles.downloaded(etag) else 'did not fetch'} it from {self.bundles.url})"
        )

    def install(self, bundle: CompiledBundle) -> None:
        """Publish `bundle` and wait until OPA serves it. On refusal or timeout the previous bundle is
        published again, so what OPA fetches (now, or after a restart) is what this engine serves."""
        with self._install_lock:
            started = time.monotonic()
            tarball = bundle_tarball(bundle)  # a refused bundle (reserved package) leaves nothing activating
            self._activating = bundle.revision
            etag = self.bundles.publish(tarball, bundle.revision)
            try:
                self._await_activation(bundle, etag, started)
            except EngineError:
                previous = self._installed
                if previous is not None:
                    self.bundles.publish(bundle_tarball(previous), previous.revision)
                raise
            else:
                self._installed = bundle
            finally:
                with self._swapped:
                    self._activating = ""
                    self._swapped.notify_all()
        log.info("OPA at %s serves bundle %s", self.url, bundle.revision)

    # --- evaluating ----------------------------------------------------------------------------

    def evaluate(self, bundle: CompiledBundle, document: Mapping[str, Any], pruned: Mapping[str, Any]) -> Any:
        installed = self._installed
        if installed is None or installed.revision != bundle.revision:
            raise StaleBundle(f"bundle {bundle.revision} is not the one on the OPA server")
        try:
            reply = self._client.query_rule(input_data=dict(document), package_path=SERVING_PACKAGE)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise EngineUnavailable(f"OPA at {self.url} unreachable: {type(exc).__name__}") from exc
        except requests.HTTPError as exc:
            body = exc.response.text[:300] if exc.response is not None else ""
            raise EngineError(f"OPA at {self.url} answered {exc}: {body}") from exc
        except (requests.RequestException, ValueError) as exc:
            raise EngineUnavailable(f"OPA at {self.url} failed: {exc}") from exc
        revision = _revision_of(reply)
        if revision and revision == self._activating:
            # OPA already serves the bundle being installed: evaluate again once the swap is done.
            with self._swapped:
                self._swapped.wait_for(lambda: self._activating != revision, timeout=self.activation_timeout_s)
            raise StaleBundle(f"bundle {bundle.revision} is being replaced by {revision}")
        if revision != bundle.revision:
            # Restarted and not yet activated, or serving another revision: no answer of bundle's.
            served = f"revision {revision}" if revision else "no ztmesh bundle"
            raise EngineUnavailable(f"OPA at {self.url} serves {served}, not {bundle.revision}")
        return reply["result"].get("decision", UNDEFINED)  # absent: the entrypoint is undefined

    def close(self) -> None:
        self._client.close_connection()
        if self._owns_server:
            self.bundles.close()
