"""An upstream for gateway tests: answers 200 and records every request that reached it.

Plain HTTP by default; with `tls` it serves HTTPS with that mesh certificate and requires the caller's
(every hop is mTLS, and the shipped gateway config only talks TLS to its upstream).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ztmesh.mesh.tls import TlsFiles


@dataclass
class Upstream:
    port: int
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]


class _TlsServer(ThreadingHTTPServer):
    """Handshakes in the request's thread, so a slow or failing client never blocks `accept`."""

    daemon_threads = True
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def shutdown_request(self, request: Any) -> None:  # the TLS socket was closed above
        with contextlib.suppress(OSError):
            request.close()


@contextlib.contextmanager
def run_upstream(tls: TlsFiles | None = None) -> Iterator[Upstream]:
    upstream = Upstream(0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            headers: dict[str, str] = {}
            for key, value in self.headers.items():  # a repeated header shows as "a,b", so duplicates are visible
                name = key.lower()
                headers[name] = f"{headers[name]},{value}" if name in headers else value
            upstream.seen.append((self.command, self.path, headers))
            body = json.dumps({"ok": True, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            return

    server: ThreadingHTTPServer
    if tls is None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    else:
        tls_server = _TlsServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
        context.load_cert_chain(tls.cert, tls.key)
        context.verify_mode = ssl.CERT_REQUIRED
        tls_server.context = context
        server = tls_server
    upstream.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
