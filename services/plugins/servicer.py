"""PluginService over gRPC: validate, convert, call the registry, map errors to status codes."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh.mesh.auditing import DeferringEmitter
from ztmesh.mesh.edge import Edge, caller_id
from ztmesh.plugins import errors
from ztmesh.plugins.manifest import Manifest
from ztmesh.plugins.registry import PluginRegistry
from ztmesh.plugins.sandbox import Limits
from ztmesh.plugins.store import StoredPlugin

# Which core error becomes which status code, most specific first (audit outages: the mesh's rules).
EDGE = Edge(
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.SignatureRejected, grpc.StatusCode.PERMISSION_DENIED),
    (errors.PluginNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PluginExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidPlugin, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.BadInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PluginFailed, grpc.StatusCode.ABORTED),
    (errors.PluginsError, grpc.StatusCode.INTERNAL),
)


def manifest_from_proto(message: plugins_pb2.Manifest) -> Manifest:
    limits = Limits(
        fuel=message.limits.fuel,
        timeout_ms=message.limits.timeout_ms,
        memory_bytes=message.limits.memory_bytes,
        table_elements=message.limits.table_elements,
        max_input_bytes=message.limits.max_input_bytes,
        max_output_bytes=message.limits.max_output_bytes,
    )
    return Manifest(
        message.name,
        message.version,
        tuple(message.functions),
        limits,
        tuple(message.capabilities),
        message.description,
    )


def manifest_to_proto(manifest: Manifest) -> plugins_pb2.Manifest:
    return plugins_pb2.Manifest(
        name=manifest.name,
        version=manifest.version,
        functions=list(manifest.functions),
        limits=plugins_pb2.Limits(**manifest.limits.__dict__),
        capabilities=list(manifest.capabilities),
        description=manifest.description,
    )


def plugin_to_proto(stored: StoredPlugin) -> plugins_pb2.Plugin:
    registered = timestamp_pb2.Timestamp()
    registered.FromDatetime(stored.registered_at)
    return plugins_pb2.Plugin(
        manifest=manifest_to_proto(stored.manifest),
        module_sha256=stored.module_sha256,
        register_time=registered,
        signing_key_id=stored.signing_key_id,
        registered_by=stored.registered_by,
    )


class PluginServicer(plugins_pb2_grpc.PluginServiceServicer):
    """Execute (the hot RPC) is served from the loop, its record made durable there (`audit`, the
    registry's emitter); registering and listing are blocking handlers."""

    def __init__(self, registry: PluginRegistry, audit: DeferringEmitter) -> None:
        self.registry = registry
        self.audit = audit

    @EDGE.rpc
    def RegisterPlugin(
        self, request: plugins_pb2.RegisterPluginRequest, context: grpc.ServicerContext
    ) -> plugins_pb2.Plugin:
        stored = self.registry.register(
            caller_id(),
            request.module,
            manifest_from_proto(request.manifest),
            request.signature,
            request.signing_key_id,
            request.signing_key_version,
        )
        return plugin_to_proto(stored)

    @EDGE.rpc
    def ListPlugins(
        self, request: plugins_pb2.ListPluginsRequest, context: grpc.ServicerContext
    ) -> plugins_pb2.ListPluginsResponse:
        return plugins_pb2.ListPluginsResponse(plugins=[plugin_to_proto(p) for p in self.registry.list(request.name)])

    @EDGE.rpc
    async def Execute(
        self, request: plugins_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> plugins_pb2.ExecuteResponse:
        # The sandbox runs in a thread (a plugin may take its whole deadline); its record is made durable here.
        result, version = await self.audit.run_audited(
            self.registry.execute, caller_id(), request.name, request.version, request.function,
            request.input_json.encode(),
        )  # fmt: skip
        return plugins_pb2.ExecuteResponse(
            output_json=result.output_json,
            fuel_consumed=result.fuel_consumed,
            duration_us=result.duration_us,
            version=version,
        )

    @EDGE.rpc
    def UnregisterPlugin(
        self, request: plugins_pb2.UnregisterPluginRequest, context: grpc.ServicerContext
    ) -> plugins_pb2.UnregisterPluginResponse:
        removed = self.registry.unregister(caller_id(), request.name, request.version)
        return plugins_pb2.UnregisterPluginResponse(removed=removed)
