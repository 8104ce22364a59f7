"""
Relay frames (C{exec-gateway.md} §5): one protobuf C{RelayMessageFrame} per websocket message.

Three jobs, three tools:
 - B{Encoding} the frames codexgw originates is hand-written here (a handful of varints), because the
   executor and bridge clients encode one Data frame per JSON-RPC message on their hot path.
 - B{Peeking} — reading only C{stream_id} and which body is set — is what the exec gateway does to every
   frame it forwards; L{peek} walks the top-level fields without building a message and without copying
   the payload, so forwarding stays close to wire speed. It also decides what is I{undecodable}.
 - B{Decoding} whole frames (clients need C{seq} and the payload) uses the generated module
   L{codexgw.relay_pb2}, built from the checked-in C{relay.proto}, which also serves the tests as the
   oracle the hand-written parts are proved against.

Large JSON-RPC messages are split into segments of one C{seq} (L{data_frames}) and put back together by
L{Reassembler}.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from codexgw.relay_pb2 import RelayMessageFrame

#: Messages larger than this are split into segments of this size (C{exec-gateway.md} §5.3).
SEGMENT_BYTES: Final = 1 << 20
#: The only frame version codexgw writes.
VERSION: Final = 1
#: Longest C{stream_id}, in bytes.
MAX_STREAM_ID_BYTES: Final = 128


class Body(enum.IntEnum):
    """
    Which C{oneof body} case a frame carries; the value is the protobuf field number.
    """

    NONE = 0
    DATA = 5
    ACK = 6
    RESUME = 7
    RESET = 8
    HEARTBEAT = 9


class Undecodable(ValueError):
    """
    The bytes are not a well-formed relay frame (C{exec-gateway.md} §5.2).
    """


@dataclass(frozen=True, slots=True)
class FrameHead:
    """
    What the gateway reads of a frame: its stream and its body case (last occurrence wins).
    """

    stream_id: str
    body: Body


# -------------------------------------------------------------------------------------------------
# Encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    # proto3 leaves zero-valued scalars off the wire.
    return _varint(number << 3) + _varint(value) if value else b""


def _frame(stream_id: str, body: Body, body_bytes: bytes) -> bytes:
    return (
        b"\x08\x01"  # version = 1
        + _field_bytes(2, stream_id.encode("utf-8"))
        + _field_bytes(body, body_bytes)
    )


def resume_frame(stream_id: str, next_seq: int = 0) -> bytes:
    """
    Encode C{Resume{next_seq}}, the first frame of every bridge stream.
    """
    return _frame(stream_id, Body.RESUME, _field_varint(1, next_seq))


def data_frame(
    stream_id: str, seq: int, payload: bytes, segment_index: int = 0, segment_count: int = 1
) -> bytes:
    """
    Encode one C{Data} frame (one segment of message C{seq}).
    """
    body = (
        _field_varint(1, seq)
        + _field_varint(2, segment_index)
        + _field_varint(3, segment_count)
        + (_field_bytes(4, payload) if payload else b"")
    )
    return _frame(stream_id, Body.DATA, body)


def data_frames(
    stream_id: str, seq: int, message: bytes, segment_bytes: int = SEGMENT_BYTES
) -> Iterator[bytes]:
    """
    Encode one message as Data frames of one C{seq}: a single frame up to C{segment_bytes}, else
    segments of C{segment_bytes} (the last may be shorter) numbered from 0.
    """
    if len(message) <= segment_bytes:
        yield data_frame(stream_id, seq, message)
        return
    view = memoryview(message)
    count = -(-len(message) // segment_bytes)
    for index in range(count):
        chunk = view[index * segment_bytes : (index + 1) * segment_bytes]
        yield data_frame(stream_id, seq, bytes(chunk), index, count)


def reset_frame(stream_id: str, reason: str) -> bytes:
    """
    Encode C{Reset{reason}}, which ends a stream.
    """
    return _frame(stream_id, Body.RESET, _field_bytes(1, reason.encode("utf-8")) if reason else b"")


def heartbeat_frame(stream_id: str) -> bytes:
    """
    Encode C{Heartbeat{}}.
    """
    return _frame(stream_id, Body.HEARTBEAT, b"")


# -------------------------------------------------------------------------------------------------
# Peeking and decoding


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Undecodable("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


_BODY_BY_KEY: Final = {(body << 3) | 2: body for body in Body if body is not Body.NONE}


def peek(frame: bytes) -> FrameHead:
    """
    Read C{stream_id} and the body case of C{frame} without decoding anything else.

    Fields may come in any order and repeat (the last occurrence wins); unknown fields, and body fields
    of the wrong wire type (as protobuf treats them), are skipped; field 10, the reserved handshake
    body, is unknown to codexgw.

    @raise Undecodable: truncated varint or length, invalid wire type, or field 2 not length-delimited
        or not UTF-8.
    """
    # Fast path for the layout protobuf encoders (ours, Go's, codex's) write: version 1, a stream id
    # under 128 bytes, then one body that runs to the end. Anything else takes the general walk.
    end = len(frame)
    if end > 5 and frame[0] == 0x08 and frame[1] == 0x01 and frame[2] == 0x12 and frame[3] < 0x80:
        key_pos = 4 + frame[3]
        body = _BODY_BY_KEY.get(frame[key_pos]) if key_pos < end else None
        if body is not None:
            try:
                length, pos = _read_varint(frame, key_pos + 1, end)
                if pos + length == end:
                    return FrameHead(frame[4:key_pos].decode("utf-8"), body)
            except (Undecodable, UnicodeDecodeError):
                pass
    return _peek_fields(frame)


def _peek_fields(frame: bytes) -> FrameHead:
    pos = 0
    end = len(frame)
    stream_id = b""
    body = Body.NONE
    while pos < end:
        key, pos = _read_varint(frame, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise Undecodable("field number 0")
        if wire_type == 0:
            _, pos = _read_varint(frame, pos, end)
        elif wire_type == 2:
            length, pos = _read_varint(frame, pos, end)
            if length > end - pos:
                raise Undecodable("truncated length-delimited field")
            if number == 2:
                stream_id = frame[pos : pos + length]
            elif Body.DATA <= number <= Body.HEARTBEAT:
                body = Body(number)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            # 3 and 4 are the deprecated groups; 6 and 7 do not exist.
            raise Undecodable(f"invalid wire type {wire_type}")
        if pos > end:
            raise Undecodable("truncated fixed-width field")
        if number == 2 and wire_type != 2:
            raise Undecodable("stream_id is not length-delimited")
    try:
        return FrameHead(stream_id.decode("utf-8"), body)
    except UnicodeDecodeError:
        raise Undecodable("stream_id is not UTF-8") from None


def decode(frame: bytes) -> RelayMessageFrame:
    """
    Decode a whole frame with the generated protobuf module.

    @raise Undecodable: when protobuf refuses the bytes.
    """
    message = RelayMessageFrame()
    try:
        message.ParseFromString(frame)
    except DecodeError as e:
        raise Undecodable(str(e)) from None
    return message


# -------------------------------------------------------------------------------------------------
# Reassembly


class SegmentError(ValueError):
    """
    Data segments arrived out of the order C{data_frames} sends them in.
    """


class Reassembler:
    """
    Put segmented messages back together, one stream's Data frames at a time.

    Segments of a message arrive in order (C{exec-gateway.md} §5.5): index 0 to C{count - 1}, one
    C{seq}, nothing interleaved. Anything else is a L{SegmentError}; the caller resets the stream.

    @ivar max_message_bytes: a reassembled message may not grow past this (0 = unlimited), so a peer
        cannot make us buffer without bound by never sending the last segment.
    """

    def __init__(self, max_message_bytes: int = 0) -> None:
        self.max_message_bytes = max_message_bytes
        self._seq = 0
        self._count = 0
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, seq: int, index: int, count: int, payload: bytes) -> bytes | None:
        """
        Add one Data frame's segment.

        @return: the whole message once its last segment arrived, else C{None}.
        @raise SegmentError: on a segment out of order, a changed C{seq} or C{count}, or an oversized
            message.
        """
        if count <= 1 and index == 0 and not self._parts:
            return payload
        if index != len(self._parts):
            raise SegmentError(f"segment {index} arrived, expected {len(self._parts)}")
        if self._parts and (seq != self._seq or count != self._count):
            raise SegmentError("segment of another message arrived mid-message")
        if index >= count:
            raise SegmentError(f"segment index {index} out of range for count {count}")
        self._size += len(payload)
        if self.max_message_bytes and self._size > self.max_message_bytes:
            raise SegmentError("reassembled message too large")
        self._seq, self._count = seq, count
        self._parts.append(payload)
        if len(self._parts) < count:
            return None
        message = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return message
