"""mTLS channels from one mesh workload to the others, by service name.

A channel is built with the workload's own certificate and rebuilt when those files change, so a
rotated client certificate is used without a restart (the old channel is closed after a delay so
calls already on it can finish).
"""

from __future__ import annotations

import threading
import time

import grpc

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.tls import TlsFiles, client_credentials

_RECHECK_SECONDS = 5.0
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class PeerChannels:
    def __init__(self, settings: MeshSettings, identity: str) -> None:
        cert, key, ca = settings.tls_files(identity)
        self._settings = settings
        self._files = TlsFiles(cert, key, ca)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stamp = self._files.stamp()
        self._checked = time.monotonic()

    def channel(self, service: str) -> grpc.Channel:
        now = time.monotonic()
        with self._lock:
            if now - self._checked > _RECHECK_SECONDS:
                self._checked = now
                stamp = self._files.stamp()
                if stamp != self._stamp:
                    self._stamp = stamp
                    retired, self._channels = self._channels, {}
                    threading.Timer(30.0, lambda: [c.close() for c in retired.values()]).start()
            channel = self._channels.get(service)
            if channel is None:
                channel = grpc.secure_channel(
                    self._settings.peer_address(service), client_credentials(self._files), options=_CHANNEL_OPTIONS
                )
                self._channels[service] = channel
            return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def operator_channel(service: str, identity: str = "client") -> grpc.Channel:
    """The channel a command-line user opens to a service, with the operator certificate."""
    from ztmesh.mesh.launch import load_mesh_settings

    settings = load_mesh_settings()
    cert, key, ca = settings.tls_files(identity)
    return grpc.secure_channel(settings.peer_address(service), client_credentials(TlsFiles(cert, key, ca)))
