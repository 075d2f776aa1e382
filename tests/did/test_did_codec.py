"""The protobuf Document and the precompile's ABI, decoded from bytes built independently."""

import pytest
from eth_abi import decode, encode
from eth_hash.auto import keccak
from google.protobuf import descriptor_pb2

from ig3.did import codec
from ig3.did.model import DidDocument, DocumentSignature, Service, VerificationMethod

DID = "did:peaq:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def _full_doc() -> DidDocument:
    vm = VerificationMethod(
        id=DID + "#keys-1",
        type="EcdsaSecp256k1RecoveryMethod2020",
        controller=DID,
        public_key_multibase="eip155:3338:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    )
    return DidDocument(
        id=DID,
        controller=DID,
        verification_methods=(vm,),
        authentications=(vm.id,),
        services=(
            Service(id="#mqtt", type="ig3-edge", service_endpoint="mqtts://x"),
            Service(id="#meta", type="meta", data='{"chip":"M1"}'),
        ),
        signature=DocumentSignature(type="EcdsaSecp256k1RecoveryMethod2020", issuer=DID, hash="0xab"),
    )


def test_round_trip_keeps_every_field():
    doc = _full_doc()
    back = codec.document_from_proto_bytes(codec.document_to_proto_bytes(doc))
    assert back == doc
    # proto3 optional: an unset service endpoint stays unset (not "")
    assert back.services[1].service_endpoint is None and back.services[0].data is None


def test_wire_bytes_follow_the_field_numbers():
    """Hand-assemble a Document on the wire (tag = field << 3 | 2) and decode it."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    vm = (
        field(1, b"#k1")
        + field(2, b"Ed25519VerificationKey2020")
        + field(3, DID.encode())
        + field(4, b"zabc")
    )
    raw = field(1, DID.encode()) + field(2, DID.encode()) + field(3, vm) + field(6, b"#k1")
    doc = codec.document_from_proto_bytes(raw)
    assert doc.id == DID and doc.verification_methods[0].public_key_multibase == "zabc"
    assert doc.authentications == ("#k1",) and doc.method("#k1") is not None


def test_attribute_value_is_ascii_hex_as_peaq_sdks_write_it():
    doc = _full_doc()
    value = codec.encode_attribute_value(doc)
    assert value == codec.document_to_proto_bytes(doc).hex().encode()
    assert codec.decode_attribute_value(value) == doc
    assert codec.decode_attribute_value(b"0x" + value) == doc
    assert codec.decode_attribute_value(codec.document_to_proto_bytes(doc)) == doc  # raw bytes too


def test_garbage_is_refused():
    with pytest.raises(codec.DocumentDecodeError):
        codec.decode_attribute_value(b"\xff\xff\xff")
    with pytest.raises(codec.DocumentDecodeError):
        codec.document_from_proto_bytes(b"")  # no id


def test_schema_is_a_valid_proto3_file():
    fd = codec._file_descriptor()
    assert isinstance(fd, descriptor_pb2.FileDescriptorProto) and fd.package == "document"
    doc_fields = {f.name: f.number for f in next(m for m in fd.message_type if m.name == "Document").field}
    assert doc_fields == {
        "id": 1,
        "controller": 2,
        "verification_methods": 3,
        "signature": 4,
        "services": 5,
        "authentications": 6,
    }


def test_calldata_selectors_and_abi():
    address, name = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", DID.encode()
    data = codec.read_attribute_calldata(address, name)
    assert data[:4] == keccak(b"readAttribute(address,bytes)")[:4]
    assert decode(["address", "bytes"], data[4:]) == (address.lower(), name)
    legacy = codec.read_attribute_legacy_calldata(b"\x11" * 32, name)
    assert legacy[:4] == keccak(b"read_attribute(bytes32,bytes)")[:4]


def test_attribute_return_decodes_a_struct_encoded_by_eth_abi():
    value = codec.encode_attribute_value(_full_doc())
    raw = encode(["(bytes,bytes,uint32,uint256)"], [(DID.encode(), value, 123, 1_700_000_000_123)])
    attr = codec.decode_attribute_return(raw)
    assert attr == codec.Attribute(DID.encode(), value, 123, 1_700_000_000_123)
    with pytest.raises(codec.DocumentDecodeError):
        codec.decode_attribute_return(raw[:40])
