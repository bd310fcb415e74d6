import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
    __slots__ = ("fuel", "timeout_ms", "memory_bytes", "table_elements", "max_input_bytes", "max_output_bytes")
    FUEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TABLE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    fuel: int
    timeout_ms: int
    memory_bytes: int
    table_elements: int
    max_input_bytes: int
    max_output_bytes: int
    def __init__(self, fuel: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., table_elements: _Optional[int] = ..., max_input_bytes: _Optional[int] = ..., max_output_bytes: _Optional[int] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("name", "version", "functions", "limits", "capabilities", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    functions: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., functions: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterPluginRequest(_message.Message):
    __slots__ = ("module", "manifest", "signature", "signing_key_id", "signing_key_version")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    module: bytes
    manifest: Manifest
    signature: bytes
    signing_key_id: str
    signing_key_version: int
    def __init__(self, module: _Optional[bytes] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., signature: _Optional[bytes] = ..., signing_key_id: _Optional[str] = ..., signing_key_version: _Optional[int] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("manifest", "module_sha256", "register_time", "signing_key_id", "registered_by")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MODULE_SHA256_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_BY_FIELD_NUMBER: _ClassVar[int]
    manifest: Manifest
    module_sha256: str
    register_time: _timestamp_pb2.Timestamp
    signing_key_id: str
    registered_by: str
    def __init__(self, manifest: _Optional[_Union[Manifest, _Mapping]] = ..., module_sha256: _Optional[str] = ..., register_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signing_key_id: _Optional[str] = ..., registered_by: _Optional[str] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("name", "version", "function", "input_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    function: str
    input_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., function: _Optional[str] = ..., input_json: _Optional[str] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("output_json", "fuel_consumed", "duration_us", "version")
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    FUEL_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    output_json: str
    fuel_consumed: int
    duration_us: int
    version: str
    def __init__(self, output_json: _Optional[str] = ..., fuel_consumed: _Optional[int] = ..., duration_us: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class UnregisterPluginRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnregisterPluginResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...
