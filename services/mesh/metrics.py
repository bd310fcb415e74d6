"""Prometheus metrics: per-method request counts and latency histograms, served on /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

REQUESTS = Counter(
    "ztmesh_grpc_requests",
    "gRPC requests handled, by method and status code",
    ["service", "method", "code"],
)
LATENCY = Histogram(
    "ztmesh_grpc_request_duration_seconds",
    "gRPC request latency, by method",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def serve_metrics(host: str, port: int) -> None:
    """Start the /metrics HTTP endpoint in a daemon thread (port 0 = off)."""
    if port:
        start_http_server(port, addr=host)
