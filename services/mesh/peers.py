"""mTLS channels from one mesh workload to the others, by service name.

A connection is built with the workload's own certificate and rebuilt when those files change, so a
rotated client certificate is used without a restart (the old connection is closed after a delay so
calls already on it can finish). `channel()` hands out one stable channel per service that sends each
call over the current connection: a client stub built once keeps working across rotations.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.loop import mesh_loop
from ztmesh.mesh.tls import TlsFiles, client_credentials

_RECHECK_SECONDS = 5.0
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # gRPC's default reconnect back-off grows to 120 s: a peer back after an outage would wait that long
    # for a new connection (an audit spool would keep its backlog). A failed connect costs next to nothing.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _CurrentMethod:
    """A multicallable that binds itself to the current connection of its service on each call."""

    def __init__(self, current: Callable[[], grpc.Channel], kind: str, args: tuple[Any, ...], kwargs: Any) -> None:
        self._current = current
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self._bound: tuple[grpc.Channel | None, Any] = (None, None)

    def _method(self) -> Any:
        channel = self._current()
        bound_to, method = self._bound  # one tuple: a racing call never pairs a channel with another's method
        if channel is not bound_to:
            method = getattr(channel, self._kind)(*self._args, **self._kwargs)
            self._bound = (channel, method)
        return method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._method().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._method().future(*args, **kwargs)


class _PeerChannel(grpc.Channel):
    """The stable channel to one service; its connection is whatever PeerChannels holds now."""

    def __init__(self, current: Callable[[], grpc.Channel]) -> None:
        self._current = current

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _CurrentMethod(self._current, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _CurrentMethod(self._current, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _CurrentMethod(self._current, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _CurrentMethod(self._current, "stream_stream", args, kwargs)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._current().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._current().unsubscribe(callback)

    def close(self) -> None:
        pass  # the connections belong to PeerChannels, which closes them

    def __enter__(self) -> _PeerChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class PeerChannels:
    def __init__(
        self, settings: MeshSettings, identity: str, recheck_s: float = _RECHECK_SECONDS, retire_after_s: float = 30.0
    ) -> None:
        cert, key, ca = settings.tls_files(identity)
        self._settings = settings
        self._files = TlsFiles(cert, key, ca)
        self._lock = threading.Lock()
        self._connections: dict[str, grpc.Channel] = {}
        self._channels: dict[str, _PeerChannel] = {}
        self._aio_connections: dict[str, grpc.aio.Channel] = {}
        self._stamp = self._files.stamp()
        self._checked = time.monotonic()
        self._recheck_s = recheck_s
        self._retire_after_s = retire_after_s

    def channel(self, service: str) -> grpc.Channel:
        """The channel to `service`; stubs built on it follow certificate rotations."""
        with self._lock:
            channel = self._channels.get(service)
            if channel is None:
                channel = self._channels[service] = _PeerChannel(lambda: self._connection(service))
            return channel

    def _recheck(self, now: float) -> None:
        """Drop the connections made with certificate files that have changed since (under the lock)."""
        if now - self._checked <= self._recheck_s:
            return
        self._checked = now
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        retired, self._connections = self._connections, {}
        threading.Timer(self._retire_after_s, lambda: [c.close() for c in retired.values()]).start()
        retired_aio, self._aio_connections = self._aio_connections, {}
        if retired_aio:
            loop = mesh_loop()
            loop.call_soon_threadsafe(loop.call_later, self._retire_after_s, _close_aio, list(retired_aio.values()))

    def _connection(self, service: str) -> grpc.Channel:
        with self._lock:
            self._recheck(time.monotonic())
            connection = self._connections.get(service)
            if connection is None:
                connection = grpc.secure_channel(
                    self._settings.peer_address(service), client_credentials(self._files), options=_CHANNEL_OPTIONS
                )
                self._connections[service] = connection
            return connection

    def aio_connection(self, service: str) -> grpc.aio.Channel:
        """The current asyncio channel to `service`, for a caller on the serving loop (ztmesh.mesh.loop);
        a new one after the certificate files change, as for `channel`."""
        with self._lock:
            self._recheck(time.monotonic())
            connection = self._aio_connections.get(service)
            if connection is None:
                connection = grpc.aio.secure_channel(
                    self._settings.peer_address(service), client_credentials(self._files), options=_CHANNEL_OPTIONS
                )
                self._aio_connections[service] = connection
            return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()
            retired_aio, self._aio_connections = list(self._aio_connections.values()), {}
        if retired_aio:
            mesh_loop().call_soon_threadsafe(_close_aio, retired_aio)


def _close_aio(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        asyncio.ensure_future(channel.close())


def operator_channel(service: str, identity: str = "client") -> grpc.Channel:
    """The channel a command-line user opens to a service, with the operator certificate."""
    from ztmesh.mesh.launch import load_mesh_settings

    settings = load_mesh_settings()
    cert, key, ca = settings.tls_files(identity)
    return grpc.secure_channel(settings.peer_address(service), client_credentials(TlsFiles(cert, key, ca)))
