"""
Tests for L{codexgw.relayframe}: the spec's vectors, the hand-written encoder and peeker proved
against the generated protobuf module, and segmentation.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw import relayframe
from codexgw.relay_pb2 import RelayData, RelayMessageFrame
from codexgw.relayframe import (
    Body,
    FrameHead,
    Reassembler,
    SegmentError,
    Undecodable,
    data_frame,
    data_frames,
    decode,
    heartbeat_frame,
    peek,
    reset_frame,
    resume_frame,
)

stream_ids = st.text(min_size=1, max_size=40)
u32 = st.integers(0, 2**32 - 1)


class VectorTests(SynchronousTestCase):
    """
    The encoder reproduces C{exec-gateway.md} §5.1's test vectors.
    """

    def test_vectors(self) -> None:
        """
        Resume, Data, Reset and Heartbeat for stream C{s1} match the hex in the spec.
        """
        self.assertEqual(resume_frame("s1").hex(" "), "08 01 12 02 73 31 3a 00")
        self.assertEqual(
            data_frame("s1", 0, b"{}").hex(" "), "08 01 12 02 73 31 2a 06 18 01 22 02 7b 7d"
        )
        self.assertEqual(
            reset_frame("s1", "idle-timeout").hex(" "),
            "08 01 12 02 73 31 42 0e 0a 0c 69 64 6c 65 2d 74 69 6d 65 6f 75 74",
        )
        self.assertEqual(heartbeat_frame("s1").hex(" "), "08 01 12 02 73 31 4a 00")

    def test_generatedModuleFieldNumbers(self) -> None:
        """
        The checked-in generated module has the spec's message name and field numbers.
        """
        fields = {f.name: f.number for f in RelayMessageFrame.DESCRIPTOR.fields}
        self.assertEqual(
            RelayMessageFrame.DESCRIPTOR.full_name, "codex.exec_server.relay.v1.RelayMessageFrame"
        )
        self.assertEqual(
            fields,
            {"version": 1, "stream_id": 2, "ack": 3, "ack_bits": 4, "data": 5, "ack_frame": 6,
             "resume": 7, "reset": 8, "heartbeat": 9},
        )  # fmt: skip
        self.assertEqual(
            {f.name: f.number for f in RelayData.DESCRIPTOR.fields},
            {"seq": 1, "segment_index": 2, "segment_count": 3, "payload": 4},
        )


class EncodeTests(SynchronousTestCase):
    """
    The hand-written encoder agrees with protobuf.
    """

    @given(sid=stream_ids, seq=u32, index=u32, count=u32, payload=st.binary(max_size=300))
    def test_dataDecodes(self, sid: str, seq: int, index: int, count: int, payload: bytes) -> None:
        """
        Any Data frame decodes with protobuf to the same fields, and protobuf encodes it identically.
        """
        frame = data_frame(sid, seq, payload, index, count)
        message = decode(frame)
        self.assertEqual(message.version, 1)
        self.assertEqual(message.stream_id, sid)
        self.assertEqual(message.WhichOneof("body"), "data")
        self.assertEqual(
            (
                message.data.seq,
                message.data.segment_index,
                message.data.segment_count,
                message.data.payload,
            ),
            (seq, index, count, payload),
        )
        self.assertEqual(message.SerializeToString(), frame)

    @given(sid=stream_ids, next_seq=u32, reason=st.text(max_size=50))
    def test_controlFramesDecode(self, sid: str, next_seq: int, reason: str) -> None:
        """
        Resume, Reset and Heartbeat decode to what was encoded.
        """
        resume = decode(resume_frame(sid, next_seq))
        self.assertEqual((resume.WhichOneof("body"), resume.resume.next_seq), ("resume", next_seq))
        reset = decode(reset_frame(sid, reason))
        self.assertEqual((reset.WhichOneof("body"), reset.reset.reason), ("reset", reason))
        self.assertEqual(decode(heartbeat_frame(sid)).WhichOneof("body"), "heartbeat")


class PeekTests(SynchronousTestCase):
    """
    L{peek} reads the stream and body case the way protobuf would, and defines "undecodable".
    """

    @given(
        sid=st.text(max_size=40),
        body=st.sampled_from(["data", "ack_frame", "resume", "reset", "heartbeat", None]),
        version=u32,
        ack=u32,
    )
    def test_agreesWithProtobuf(self, sid: str, body: str | None, version: int, ack: int) -> None:
        """
        For any frame protobuf encodes, L{peek} reports its stream id and body case.
        """
        message = RelayMessageFrame(version=version, stream_id=sid, ack=ack)
        if body is not None:
            getattr(message, body).SetInParent()
        head = peek(message.SerializeToString())
        expected = {None: Body.NONE, "data": Body.DATA, "ack_frame": Body.ACK, "resume": Body.RESUME,
                    "reset": Body.RESET, "heartbeat": Body.HEARTBEAT}[body]  # fmt: skip
        self.assertEqual(head, FrameHead(sid, expected))

    @given(
        prefix=st.sampled_from([b"", b"\x08\x01\x12", b"\x08\x01\x12\x02s1"]),
        rest=st.binary(max_size=40),
    )
    def test_fastPathAgreesWithFieldWalk(self, prefix: bytes, rest: bytes) -> None:
        """
        For any bytes (biased towards the canonical layout), the fast path answers exactly what the
        general field walk answers, including refusing the same inputs.
        """
        frame = prefix + rest

        def outcome(read: Callable[[bytes], FrameHead]) -> FrameHead | type[Undecodable]:
            try:
                return read(frame)
            except Undecodable:
                return Undecodable

        self.assertEqual(outcome(peek), outcome(relayframe._peek_fields))

    def test_lastOccurrenceWinsAndAnyOrder(self) -> None:
        """
        Fields may come in any order and repeat; the last stream id and body win; unknown fields
        (including the reserved field 10 and 64-bit and 32-bit fixed fields) are skipped.
        """
        frame = (
            b"\x4a\x00"  # heartbeat
            + b"\x12\x01a"  # stream_id "a"
            + b"\x52\x02zz"  # field 10, reserved
            + b"\x59" + b"\x00" * 8  # field 11, fixed64
            + b"\x65" + b"\x00" * 4  # field 12, fixed32
            + b"\x3a\x00"  # resume
            + b"\x12\x02bc"  # stream_id "bc"
            + b"\x08\x01"
        )  # fmt: skip
        self.assertEqual(peek(frame), FrameHead("bc", Body.RESUME))
        self.assertEqual(decode(frame).WhichOneof("body"), "resume")

    def test_bodyWithWrongWireTypeIsUnknown(self) -> None:
        """
        A body field number sent as a varint is an unknown field, as protobuf treats it.
        """
        self.assertEqual(peek(b"\x12\x01a\x28\x01"), FrameHead("a", Body.NONE))

    def test_undecodable(self) -> None:
        """
        Truncated varints and lengths, invalid wire types, a non-length-delimited or non-UTF-8
        stream id are undecodable.
        """
        for bad in (
            b"\x08",  # truncated varint value
            b"\x08\xff",  # truncated varint
            b"\x12\x05ab",  # length past the end
            b"\x0b",  # wire type 3 (group)
            b"\x0e",  # wire type 6
            b"\x10\x01",  # stream_id as varint
            b"\x12\x02\xff\xfe",  # stream_id not UTF-8
            b"\x59\x00",  # truncated fixed64
            b"\x00\x00",  # field number 0
            b"\x08" + b"\xff" * 11,  # overlong varint
        ):
            with self.subTest(bad=bad):
                self.assertRaises(Undecodable, peek, bad)

    def test_decodeRefusesGarbage(self) -> None:
        """
        L{decode} turns protobuf's error into L{Undecodable}.
        """
        self.assertRaises(Undecodable, decode, b"\x12\x05ab")

    def test_emptyFrame(self) -> None:
        """
        An empty message is a well-formed frame with no stream and no body.
        """
        self.assertEqual(peek(b""), FrameHead("", Body.NONE))


class SegmentationTests(SynchronousTestCase):
    """
    Large messages travel as segments of one C{seq} and reassemble exactly.
    """

    def test_smallMessageIsOneFrame(self) -> None:
        """
        A message up to the segment size is one unsegmented frame.
        """
        frames = list(data_frames("s", 3, b"x" * relayframe.SEGMENT_BYTES))
        self.assertEqual(len(frames), 1)
        self.assertEqual(decode(frames[0]).data.segment_count, 1)

    def test_largeMessageIsSegmented(self) -> None:
        """
        A message one byte over the segment size becomes two segments of the same seq.
        """
        message = b"y" * (relayframe.SEGMENT_BYTES + 1)
        decoded = [decode(f).data for f in data_frames("s", 7, message)]
        self.assertEqual(
            [(d.seq, d.segment_index, d.segment_count) for d in decoded], [(7, 0, 2), (7, 1, 2)]
        )
        self.assertEqual(b"".join(d.payload for d in decoded), message)

    @given(message=st.binary(max_size=200), size=st.integers(1, 64), seq=u32)
    def test_reassemblesToSameBytes(self, message: bytes, size: int, seq: int) -> None:
        """
        Segmenting at any size and feeding the frames back yields the message exactly once, at the
        last segment.
        """
        reassembler = Reassembler()
        results = []
        for frame in data_frames("s", seq, message, size):
            d = decode(frame).data
            results.append(reassembler.feed(d.seq, d.segment_index, d.segment_count, d.payload))
        self.assertEqual(results[-1], message)
        self.assertEqual([r for r in results[:-1] if r is not None], [])

    def test_outOfOrder(self) -> None:
        """
        A skipped segment, a changed seq or count mid-message, and an index past the count fail.
        """
        for feeds in (
            [(1, 1, 2, b"a")],
            [(1, 0, 3, b"a"), (2, 1, 3, b"b")],
            [(1, 0, 3, b"a"), (1, 1, 4, b"b")],
            [(1, 0, 2, b"a"), (1, 1, 2, b"b"), (1, 1, 2, b"c")],
            [(1, 0, 2, b"a"), (1, 0, 1, b"b")],
        ):
            reassembler = Reassembler()
            with self.subTest(feeds=feeds), self.assertRaises(SegmentError):
                for seq, index, count, payload in feeds:
                    reassembler.feed(seq, index, count, payload)

    def test_sizeBound(self) -> None:
        """
        A reassembled message may not grow past the bound.
        """
        reassembler = Reassembler(max_message_bytes=3)
        self.assertIsNone(reassembler.feed(0, 0, 3, b"ab"))
        self.assertRaises(SegmentError, reassembler.feed, 0, 1, 3, b"cd")
