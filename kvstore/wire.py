"""Hand-framed data messages: block bytes with one copy each way instead of four.

``PutRequest`` and ``GetResponse`` carry block bytes in field 2 (``bytes data``) of a
oneof. Such a message is, byte for byte::

    0x12 | varint(len) | payload        (field 2, wire type 2: length-delimited)

Going through protobuf costs a copy into ``bytes``, a copy into the message, and a copy
to serialize; parsing copies the field out again. Instead the sender joins the tag,
length and a view of the block into one ``bytes`` (one copy), and the receiver hands
out a ``memoryview`` of the received buffer (no copy). Headers still go through protobuf,
so any standard gRPC client or server interoperates: the bytes on the wire are the same.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from kvstore._proto.strata.v1 import store_pb2

DATA_TAG = 0x12


class Data(NamedTuple):
    """A received data message: a view of the bytes gRPC handed over."""

    data: memoryview


class Malformed(NamedTuple):
    """A request that is neither a data message nor a valid protobuf message (say, one
    cut short). The deserializer hands it on rather than raising, so that the servicer
    answers INVALID_ARGUMENT instead of gRPC answering INTERNAL."""

    reason: str


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_data(piece: memoryview) -> bytes:
    """A serialized data message (``PutRequest`` or ``GetResponse``) holding ``piece``."""
    return b"".join((bytes((DATA_TAG,)), _varint(piece.nbytes), piece))


def _data_view(raw: bytes) -> memoryview | None:
    """The payload of a data message, or None if ``raw`` is another kind of message."""
    if not raw or raw[0] != DATA_TAG:
        return None
    length = shift = 0
    pos = 1
    while True:
        if pos >= len(raw) or shift > 63:
            return None  # a cut-off length: protobuf decides (and refuses)
        byte = raw[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            break
        shift += 7
    if pos + length != len(raw):
        return None  # more fields than one data field: let protobuf parse it
    return memoryview(raw)[pos:]


def serialize(message: bytes | store_pb2.PutRequest | store_pb2.GetResponse) -> bytes:
    """Request/response serializer: pre-framed bytes pass through, messages serialize."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def parse_get_response(raw: bytes) -> Data | store_pb2.GetResponse:
    view = _data_view(raw)
    return Data(view) if view is not None else store_pb2.GetResponse.FromString(raw)


def parse_put_request(raw: bytes) -> Data | store_pb2.PutRequest | Malformed:
    view = _data_view(raw)
    if view is not None:
        return Data(view)
    try:
        return store_pb2.PutRequest.FromString(raw)
    except DecodeError as exc:
        return Malformed(f"data: a malformed or truncated message ({exc})")
