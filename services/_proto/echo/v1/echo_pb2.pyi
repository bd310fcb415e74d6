from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("message", "delay_ms")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    message: str
    delay_ms: int
    def __init__(self, message: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message", "caller_spiffe_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CALLER_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    message: str
    caller_spiffe_id: str
    def __init__(self, message: _Optional[str] = ..., caller_spiffe_id: _Optional[str] = ...) -> None: ...
