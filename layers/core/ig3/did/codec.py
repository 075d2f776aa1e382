"""Wire codecs for peaq DID documents: the protobuf ``Document`` and the ABI-encoded Attribute.

**Protobuf.** peaq publishes the document schema as ``did_document_format.proto`` (package
``document``); it is rebuilt here in code from a ``FileDescriptorProto`` (no protoc at build time,
no generated file to drift). Field numbers and types are what matter on the wire::

    message VerificationMethod { string id = 1; string type = 2; string controller = 3;
                                 string public_key_multibase = 4; }
    message Signature { string type = 1; string issuer = 2; string hash = 3; }
    message Services { string id = 1; string type = 2; optional string service_endpoint = 3;
                       optional string data = 4; }
    message Document { string id = 1; string controller = 2;
                       repeated VerificationMethod verification_methods = 3; Signature signature = 4;
                       repeated Services services = 5; repeated string authentications = 6; }

The descriptor lives in a private pool, so it cannot clash with another copy of the same schema
(e.g. peaq's SDK) loaded into the process.

**Attribute value.** peaq's SDKs store the document as the *ASCII hex* of the serialized message
(``value = doc.SerializeToString().hex().encode()``); raw protobuf bytes are accepted too.

**Precompile ABI.** ``readAttribute(address,bytes)`` (current runtimes; also registered as
``read_attribute(address,bytes)``) and ``read_attribute(bytes32,bytes)`` (older runtimes, keyed
by the 32-byte account id) return ``Attribute{bytes name; bytes value; uint32 validity;
uint256 created}``, coded by ``ig3.evm.abi`` (strict like eth-abi, without its eth-utils/cytoolz weight).
"""

from __future__ import annotations

import binascii
from functools import lru_cache
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ig3.did.model import DidDocument, DocumentSignature, Service, VerificationMethod

MAX_DOCUMENT_BYTES = 64 * 1024  # the precompile's bytes bound (2**16)

READ_ATTRIBUTE_SIG = "readAttribute(address,bytes)"
READ_ATTRIBUTE_LEGACY_SIG = "read_attribute(bytes32,bytes)"
ATTRIBUTE_ABI = "(bytes,bytes,uint32,uint256)"


class DocumentDecodeError(ValueError):
    pass


# --- protobuf -------------------------------------------------------------------------------

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="ig3_did_document_format.proto", package="document", syntax="proto3"
    )

    def message(
        name: str, fields: list[tuple[str, int, int, int, str | None]], proto3_optional: tuple = ()
    ) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if fname in proto3_optional:
                # proto3 `optional`: a synthetic oneof per field, as protoc emits it.
                f.proto3_optional = True
                f.oneof_index = len(m.oneof_decl)
                m.oneof_decl.add(name="_" + fname)

    message(
        "VerificationMethod",
        [
            ("id", 1, _STRING, _OPTIONAL, None),
            ("type", 2, _STRING, _OPTIONAL, None),
            ("controller", 3, _STRING, _OPTIONAL, None),
            ("public_key_multibase", 4, _STRING, _OPTIONAL, None),
        ],
    )
    message(
        "Signature",
        [
            ("type", 1, _STRING, _OPTIONAL, None),
            ("issuer", 2, _STRING, _OPTIONAL, None),
            ("hash", 3, _STRING, _OPTIONAL, None),
        ],
    )
    message(
        "Services",
        [
            ("id", 1, _STRING, _OPTIONAL, None),
            ("type", 2, _STRING, _OPTIONAL, None),
            ("service_endpoint", 3, _STRING, _OPTIONAL, None),
            ("data", 4, _STRING, _OPTIONAL, None),
        ],
        proto3_optional=("service_endpoint", "data"),
    )
    message(
        "Document",
        [
            ("id", 1, _STRING, _OPTIONAL, None),
            ("controller", 2, _STRING, _OPTIONAL, None),
            ("verification_methods", 3, _MESSAGE, _REPEATED, ".document.VerificationMethod"),
            ("signature", 4, _MESSAGE, _OPTIONAL, ".document.Signature"),
            ("services", 5, _MESSAGE, _REPEATED, ".document.Services"),
            ("authentications", 6, _STRING, _REPEATED, None),
        ],
    )
    return fd


class _Classes(NamedTuple):
    Document: Any
    VerificationMethod: Any
    Signature: Any
    Services: Any


@lru_cache(maxsize=1)
def proto_classes() -> _Classes:
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(_file_descriptor())
    get = lambda name: message_factory.GetMessageClass(fd.message_types_by_name[name])  # noqa: E731
    return _Classes(get("Document"), get("VerificationMethod"), get("Signature"), get("Services"))


def document_to_proto_bytes(doc: DidDocument) -> bytes:
    c = proto_classes()
    msg = c.Document(id=doc.id, controller=doc.controller, authentications=list(doc.authentications))
    for vm in doc.verification_methods:
        msg.verification_methods.add(
            id=vm.id, type=vm.type, controller=vm.controller, public_key_multibase=vm.public_key_multibase
        )
    for s in doc.services:
        svc = msg.services.add(id=s.id, type=s.type)
        if s.service_endpoint is not None:
            svc.service_endpoint = s.service_endpoint
        if s.data is not None:
            svc.data = s.data
    if doc.signature is not None:
        msg.signature.CopyFrom(
            c.Signature(type=doc.signature.type, issuer=doc.signature.issuer, hash=doc.signature.hash)
        )
    return msg.SerializeToString(deterministic=True)


def document_from_proto_bytes(data: bytes, **metadata: Any) -> DidDocument:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentDecodeError("DID document exceeds 64 KiB")
    msg = proto_classes().Document()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise DocumentDecodeError(f"not a peaq DID Document protobuf: {type(exc).__name__}") from None
    if not msg.id:
        raise DocumentDecodeError("DID document has no id")
    return DidDocument(
        id=msg.id,
        controller=msg.controller,
        verification_methods=tuple(
            VerificationMethod(
                id=v.id, type=v.type, controller=v.controller, public_key_multibase=v.public_key_multibase
            )
            for v in msg.verification_methods
        ),
        authentications=tuple(msg.authentications),
        services=tuple(
            Service(
                id=s.id,
                type=s.type,
                service_endpoint=s.service_endpoint if s.HasField("service_endpoint") else None,
                data=s.data if s.HasField("data") else None,
            )
            for s in msg.services
        ),
        signature=(
            DocumentSignature(type=msg.signature.type, issuer=msg.signature.issuer, hash=msg.signature.hash)
            if msg.HasField("signature")
            else None
        ),
        **metadata,
    )


def encode_attribute_value(doc: DidDocument) -> bytes:
    """The attribute value as peaq's SDKs write it: ASCII hex of the serialized Document."""
    return document_to_proto_bytes(doc).hex().encode()


def decode_attribute_value(value: bytes, **metadata: Any) -> DidDocument:
    """Accepts the SDKs' ASCII-hex form (optionally 0x-prefixed) or raw protobuf bytes."""
    text = value[2:] if value[:2] in (b"0x", b"0X") else value
    raw = value
    if text and len(text) % 2 == 0:
        try:
            raw = binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            raw = value
    return document_from_proto_bytes(raw, **metadata)


# --- precompile ABI -------------------------------------------------------------------------


class Attribute(NamedTuple):
    name: bytes
    value: bytes
    validity: int  # block number (u32::MAX = forever)
    created: int  # pallet timestamp, ms


def selector(signature: str) -> bytes:
    from ig3.did.ids import keccak256

    return keccak256(signature.encode())[:4]


def read_attribute_calldata(address: str, name: bytes) -> bytes:
    from ig3.evm.abi import encode

    return selector(READ_ATTRIBUTE_SIG) + encode(["address", "bytes"], [address, name])


def read_attribute_legacy_calldata(account_id: bytes, name: bytes) -> bytes:
    from ig3.evm.abi import encode

    return selector(READ_ATTRIBUTE_LEGACY_SIG) + encode(["bytes32", "bytes"], [account_id, name])


def encode_attribute_return(attr: Attribute) -> bytes:
    """ABI-encode an Attribute as the precompile returns it (used by local stand-ins and tests)."""
    from ig3.evm.abi import encode

    return encode([ATTRIBUTE_ABI], [(attr.name, attr.value, attr.validity, attr.created)])


def decode_attribute_return(data: bytes) -> Attribute:
    from ig3.evm.abi import AbiError as DecodingError
    from ig3.evm.abi import decode

    try:
        ((name, value, validity, created),) = decode([ATTRIBUTE_ABI], data)
    except (DecodingError, ValueError, TypeError) as exc:
        raise DocumentDecodeError(f"not an ABI-encoded Attribute: {type(exc).__name__}") from None
    return Attribute(bytes(name), bytes(value), int(validity), int(created))
