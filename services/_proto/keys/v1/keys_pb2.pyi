import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_PURPOSE_UNSPECIFIED: _ClassVar[KeyPurpose]
    KEY_PURPOSE_ENCRYPT: _ClassVar[KeyPurpose]
    KEY_PURPOSE_SIGN: _ClassVar[KeyPurpose]

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    ALGORITHM_ML_KEM_768: _ClassVar[Algorithm]
    ALGORITHM_ML_KEM_1024: _ClassVar[Algorithm]
    ALGORITHM_X25519_ML_KEM_768: _ClassVar[Algorithm]
    ALGORITHM_ML_DSA_65: _ClassVar[Algorithm]
    ALGORITHM_ML_DSA_87: _ClassVar[Algorithm]
    ALGORITHM_ED25519: _ClassVar[Algorithm]

class KeyVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_VERSION_STATE_UNSPECIFIED: _ClassVar[KeyVersionState]
    KEY_VERSION_STATE_ENABLED: _ClassVar[KeyVersionState]
    KEY_VERSION_STATE_DISABLED: _ClassVar[KeyVersionState]
    KEY_VERSION_STATE_DESTROYED: _ClassVar[KeyVersionState]

class KeyOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_OPERATION_UNSPECIFIED: _ClassVar[KeyOperation]
    KEY_OPERATION_ENCRYPT: _ClassVar[KeyOperation]
    KEY_OPERATION_DECRYPT: _ClassVar[KeyOperation]
    KEY_OPERATION_SIGN: _ClassVar[KeyOperation]
    KEY_OPERATION_VERIFY: _ClassVar[KeyOperation]
    KEY_OPERATION_GET_PUBLIC_KEY: _ClassVar[KeyOperation]
    KEY_OPERATION_ROTATE: _ClassVar[KeyOperation]
    KEY_OPERATION_MANAGE_VERSIONS: _ClassVar[KeyOperation]
KEY_PURPOSE_UNSPECIFIED: KeyPurpose
KEY_PURPOSE_ENCRYPT: KeyPurpose
KEY_PURPOSE_SIGN: KeyPurpose
ALGORITHM_UNSPECIFIED: Algorithm
ALGORITHM_ML_KEM_768: Algorithm
ALGORITHM_ML_KEM_1024: Algorithm
ALGORITHM_X25519_ML_KEM_768: Algorithm
ALGORITHM_ML_DSA_65: Algorithm
ALGORITHM_ML_DSA_87: Algorithm
ALGORITHM_ED25519: Algorithm
KEY_VERSION_STATE_UNSPECIFIED: KeyVersionState
KEY_VERSION_STATE_ENABLED: KeyVersionState
KEY_VERSION_STATE_DISABLED: KeyVersionState
KEY_VERSION_STATE_DESTROYED: KeyVersionState
KEY_OPERATION_UNSPECIFIED: KeyOperation
KEY_OPERATION_ENCRYPT: KeyOperation
KEY_OPERATION_DECRYPT: KeyOperation
KEY_OPERATION_SIGN: KeyOperation
KEY_OPERATION_VERIFY: KeyOperation
KEY_OPERATION_GET_PUBLIC_KEY: KeyOperation
KEY_OPERATION_ROTATE: KeyOperation
KEY_OPERATION_MANAGE_VERSIONS: KeyOperation

class KeyGrant(_message.Message):
    __slots__ = ("operation", "spiffe_ids")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_IDS_FIELD_NUMBER: _ClassVar[int]
    operation: KeyOperation
    spiffe_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, operation: _Optional[_Union[KeyOperation, str]] = ..., spiffe_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyAccessPolicy(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[KeyGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[KeyGrant, _Mapping]]] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "state", "create_time", "destroy_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DESTROY_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: KeyVersionState
    create_time: _timestamp_pb2.Timestamp
    destroy_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[KeyVersionState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destroy_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("key_id", "purpose", "algorithm", "primary_version", "versions", "access_policy", "labels", "create_time", "owner")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_POLICY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    purpose: KeyPurpose
    algorithm: Algorithm
    primary_version: int
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    access_policy: KeyAccessPolicy
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, key_id: _Optional[str] = ..., purpose: _Optional[_Union[KeyPurpose, str]] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., primary_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., access_policy: _Optional[_Union[KeyAccessPolicy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("key_id", "purpose", "algorithm", "access_policy", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ACCESS_POLICY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    purpose: KeyPurpose
    algorithm: Algorithm
    access_policy: KeyAccessPolicy
    labels: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., purpose: _Optional[_Union[KeyPurpose, str]] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., access_policy: _Optional[_Union[KeyAccessPolicy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("key_id", "version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("key_id", "version", "algorithm", "public_key", "pem")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    algorithm: Algorithm
    public_key: bytes
    pem: str
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., public_key: _Optional[bytes] = ..., pem: _Optional[str] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("key_id", "plaintext", "associated_data")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    plaintext: bytes
    associated_data: bytes
    def __init__(self, key_id: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., associated_data: _Optional[bytes] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("envelope", "key_version")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    key_version: int
    def __init__(self, envelope: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("envelope", "associated_data", "key_id")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATED_DATA_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    associated_data: bytes
    key_id: str
    def __init__(self, envelope: _Optional[bytes] = ..., associated_data: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("plaintext", "key_id", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_id: str
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("key_id", "message")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    message: bytes
    def __init__(self, key_id: _Optional[str] = ..., message: _Optional[bytes] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("signature", "key_version", "algorithm")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    key_version: int
    algorithm: Algorithm
    def __init__(self, signature: _Optional[bytes] = ..., key_version: _Optional[int] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("key_id", "key_version", "message", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    message: bytes
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., message: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("valid",)
    VALID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    def __init__(self, valid: _Optional[bool] = ...) -> None: ...

class KeyVersionRequest(_message.Message):
    __slots__ = ("key_id", "version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
