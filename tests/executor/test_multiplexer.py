"""
Tests for L{codexgw.executor.multiplexer}: every rule of C{executor.md} §3 and §4, at the unit level.

The multiplexer runs on a L{FakeRelayLink}, L{FakeExecServerChild}ren and a L{task.Clock}: no I/O and
no real time.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.executor.child import MAX_LINE_BYTES, IExecServerChildReceiver
from codexgw.executor.multiplexer import (
    DRAIN_POLL,
    HIGH_WATER,
    IDLE_TIMEOUT,
    KILL_AFTER,
    LOW_WATER,
    MAX_MESSAGE_BYTES,
    TERM_AFTER,
    IRelayLinkReceiver,
    SessionState,
    StreamMultiplexer,
)
from codexgw.relay_pb2 import RelayMessageFrame
from codexgw.testing.fakechild import FakeExecServerChild, FakeExecServerSpawner
from codexgw.testing.fakelink import FakeRelayLink
from tests.executor.logs import EventLog

MIB = 1 << 20
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"clientName": "t"}}


def compact(message: dict[str, Any]) -> bytes:
    """
    C{message} as the compact JSON envtools sends.
    """
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


class Rig:
    """
    A multiplexer on a fake link with fake children, driven by the test.
    """

    def __init__(self, max_streams: int = 32, max_line_bytes: int = MAX_LINE_BYTES, **kw: Any) -> None:
        self.clock = task.Clock()
        self.spawner = FakeExecServerSpawner(max_line_bytes)
        self.idle_calls = 0
        self.mux = StreamMultiplexer(
            self.clock, self.spawner.spawn, max_streams=max_streams, on_idle=self._idle, **kw
        )
        self.link = FakeRelayLink()
        self.mux.link_opened(self.link)
        self._taken = 0

    def _idle(self) -> None:
        self.idle_calls += 1

    def receive(self, frame: bytes) -> None:
        """
        The gateway sends one frame.
        """
        self.mux.frame_received(frame)

    def open(self, stream_id: str) -> FakeExecServerChild:
        """
        Resume C{stream_id}; return the child of the new session.
        """
        before = len(self.spawner.children)
        self.receive(relayframe.resume_frame(stream_id))
        assert len(self.spawner.children) == before + 1, "no child was spawned"
        return self.spawner.children[-1]

    def send_json(self, stream_id: str, seq: int, message: dict[str, Any]) -> None:
        """
        The gateway sends one JSON-RPC message on C{stream_id} (segmented when over 1 MiB).
        """
        for frame in relayframe.data_frames(stream_id, seq, compact(message)):
            self.receive(frame)

    def take(self) -> list[RelayMessageFrame]:
        """
        The frames sent since the last call, decoded.
        """
        frames = self.link.sent[self._taken :]
        self._taken = len(self.link.sent)
        return [relayframe.decode(frame) for frame in frames]

    def resets(self) -> list[tuple[str, str]]:
        """
        The C{(stream_id, reason)} of every Reset sent so far.
        """
        decoded = [relayframe.decode(frame) for frame in self.link.sent]
        return [(f.stream_id, f.reset.reason) for f in decoded if f.WhichOneof("body") == "reset"]


def messages(frames: list[RelayMessageFrame], stream_id: str) -> list[tuple[int, bytes]]:
    """
    The C{(seq, payload)} of every whole message of C{stream_id} in C{frames}, checking that segments
    come back to back, in index order, with one C{seq}.
    """
    found: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    seq = count = -1
    for frame in frames:
        if frame.stream_id != stream_id:
            assert not parts, "a frame of another stream came between segments"
            continue
        assert frame.WhichOneof("body") == "data", "another frame came between segments"
        data = frame.data
        if data.segment_count <= 1:
            assert not parts
            found.append((data.seq, data.payload))
            continue
        if not parts:
            seq, count = data.seq, data.segment_count
        assert (data.seq, data.segment_count, data.segment_index) == (seq, count, len(parts))
        parts.append(data.payload)
        if len(parts) == count:
            found.append((seq, b"".join(parts)))
            parts = []
    assert not parts, "a message ended in the middle"
    return found


def frame_with(version: int, stream_id: str) -> bytes:
    """
    A Heartbeat frame with any version and stream id (made with the generated module).
    """
    message = RelayMessageFrame(version=version, stream_id=stream_id)
    message.heartbeat.SetInParent()
    return message.SerializeToString()


class InterfaceTests(SynchronousTestCase):
    """
    The multiplexer and its sessions provide what the link and the children call.
    """

    def test_provides(self) -> None:
        """
        The multiplexer is an L{IRelayLinkReceiver}, a session an L{IExecServerChildReceiver}; the
        fakes provide their interfaces.
        """
        rig = Rig()
        rig.open("s1")
        self.assertTrue(verifyObject(IRelayLinkReceiver, rig.mux))
        self.assertTrue(verifyObject(IExecServerChildReceiver, rig.mux.sessions["s1"]))

    def test_limits(self) -> None:
        """
        The fixed values of C{executor.md} §3–§4: 64 MiB messages, 30 min idle, 8 MiB / 1 MiB
        watermarks, SIGTERM 2 s after the stdin close and SIGKILL 5 s after that.
        """
        self.assertEqual(
            (MAX_MESSAGE_BYTES, IDLE_TIMEOUT, HIGH_WATER, LOW_WATER, TERM_AFTER, KILL_AFTER),
            (64 * MIB, 1800.0, 8 * MIB, MIB, 2.0, 5.0),
        )
        self.assertEqual(MAX_LINE_BYTES, 64 * MIB)


class ResumeTests(SynchronousTestCase):
    """
    Resume opens a session; a second Resume keeps it; too many streams are refused.
    """

    def test_resume_opens_session(self) -> None:
        """
        Resume for an unknown stream spawns one child and sends nothing; the open is logged with the
        child's pid.
        """
        log = EventLog(self)
        rig = Rig()
        child = rig.open("s1")
        self.assertEqual(rig.take(), [])
        self.assertEqual(rig.mux.sessions["s1"].child, child)
        [opened] = log.named("executor.stream_opened")
        self.assertEqual((opened["stream_id"], opened["pid"]), ("s1", child.pid))

    def test_second_resume_keeps_session(self) -> None:
        """
        Resume for a known stream keeps its session and child: nothing is spawned or sent.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.receive(relayframe.resume_frame("s1", 5))
        self.assertEqual(len(rig.spawner.children), 1)
        self.assertIs(rig.mux.sessions["s1"].child, child)
        self.assertEqual(rig.take(), [])

    def test_too_many_streams(self) -> None:
        """
        With C{max_streams} live sessions, a Resume for a new stream gets C{reset{"too many streams"}}
        and no child; once a session ended, a new stream is served again.
        """
        rig = Rig(max_streams=2)
        rig.open("a")
        rig.open("b")
        rig.receive(relayframe.resume_frame("c"))
        self.assertEqual(len(rig.spawner.children), 2)
        self.assertEqual(rig.resets(), [("c", "too many streams")])
        rig.receive(relayframe.reset_frame("a", "bridge-closed"))
        rig.open("c")

    def test_default_max_streams(self) -> None:
        """
        By default 32 streams are served and the 33rd is refused.
        """
        rig = Rig()
        for index in range(32):
            rig.open(f"s{index}")
        rig.receive(relayframe.resume_frame("s32"))
        self.assertEqual(rig.resets(), [("s32", "too many streams")])

    def test_spawn_failure(self) -> None:
        """
        A child that cannot be started answers C{reset{"exec-server failed to start"}}; the stream is
        not served, and a later Resume tries again.
        """
        rig = Rig()
        rig.spawner.fail_with = OSError("no processes left")
        rig.receive(relayframe.resume_frame("s1"))
        self.assertEqual(rig.resets(), [("s1", "exec-server failed to start")])
        self.assertEqual(rig.mux.sessions, {})
        rig.open("s1")
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class DataTests(SynchronousTestCase):
    """
    Data frames in, stdout lines out.
    """

    def test_request_and_reply(self) -> None:
        """
        A Data payload is written to the child as one line, byte for byte; the child's answer comes
        back as Data C{seq} 0 on the same stream, one frame with C{segment_count} 1.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.send_json("s1", 0, INITIALIZE)
        self.assertEqual(child.written, [compact(INITIALIZE)])
        [frame] = rig.take()
        self.assertEqual((frame.version, frame.stream_id), (1, "s1"))
        self.assertEqual((frame.data.seq, frame.data.segment_index, frame.data.segment_count), (0, 0, 1))
        reply = json.loads(frame.data.payload)
        self.assertEqual(reply["id"], 1)
        self.assertIn("sessionId", reply["result"])

    def test_segment_count_zero_is_whole(self) -> None:
        """
        C{segment_count} 0 means a complete payload, as 1 does.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.receive(relayframe.data_frame("s1", 0, b'{"a":1}', segment_count=0))
        self.assertEqual(child.written, [b'{"a":1}'])

    def test_unknown_stream(self) -> None:
        """
        Data for a stream without a session gets C{reset{"unknown stream"}} and spawns nothing; so
        does Data for a stream whose session ended.
        """
        rig = Rig()
        rig.receive(relayframe.data_frame("nope", 0, b"{}"))
        self.assertEqual(rig.resets(), [("nope", "unknown stream")])
        self.assertEqual(rig.spawner.children, [])
        rig.open("s1")
        rig.receive(relayframe.reset_frame("s1", "bridge-closed"))
        rig.receive(relayframe.data_frame("s1", 0, b"{}"))
        self.assertEqual(rig.resets(), [("nope", "unknown stream"), ("s1", "unknown stream")])

    def test_reassembly(self) -> None:
        """
        The segments of one C{seq} are joined in index order and written as one line only once the
        last one arrived.
        """
        rig = Rig()
        child = rig.open("s1")
        payload = compact({"jsonrpc": "2.0", "id": 7, "method": "x", "params": {"b": "y" * (3 * MIB)}})
        frames = list(relayframe.data_frames("s1", 0, payload))
        self.assertEqual(len(frames), 4)
        for frame in frames[:-1]:
            rig.receive(frame)
            self.assertEqual(child.written, [])
        rig.receive(frames[-1])
        self.assertEqual(child.written, [payload])

    def test_bad_segment_sequence(self) -> None:
        """
        A segment out of order ends the session with C{reset{"bad segment sequence"}}.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.receive(relayframe.data_frame("s1", 0, b"ab", segment_index=1, segment_count=2))
        self.assertEqual(rig.resets(), [("s1", "bad segment sequence")])
        self.assertTrue(child.stdin_closed)
        self.assertNotIn("s1", rig.mux.sessions)

    def test_reassembled_message_too_large(self) -> None:
        """
        Segments adding up to more than the message limit end the session with
        C{reset{"message too large"}} before the message is complete; nothing is written.
        """
        rig = Rig(max_message_bytes=2500)
        child = rig.open("s1")
        for index in range(3):
            rig.receive(relayframe.data_frame("s1", 0, b"x" * 1000, index, 4))
        self.assertEqual(rig.resets(), [("s1", "message too large")])
        self.assertEqual(child.written, [])
        self.assertTrue(child.stdin_closed)

    def test_line_breaks_in_payload(self) -> None:
        """
        CR and LF in a payload become spaces: one payload is always exactly one line for the child.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.receive(relayframe.data_frame("s1", 0, b'{"a":\n1,\r\n"b":2}'))
        self.assertEqual(child.written, [b'{"a": 1,  "b":2}'])

    def test_seq_per_stream_from_zero(self) -> None:
        """
        Each stream numbers its outgoing messages from 0 on its own, whatever the other streams do;
        output never crosses streams.
        """
        rig = Rig()
        first = rig.open("a")
        second = rig.open("b")
        for index in range(3):
            first.emit(b'{"from":"a","n":%d}' % index)
            if index < 2:
                second.emit(b'{"from":"b","n":%d}' % index)
        frames = rig.take()
        self.assertEqual(messages(frames, "a"), [(n, b'{"from":"a","n":%d}' % n) for n in range(3)])
        self.assertEqual(messages(frames, "b"), [(n, b'{"from":"b","n":%d}' % n) for n in range(2)])

    def test_segmentation_boundaries(self) -> None:
        """
        A line of exactly 1 MiB is one frame; 1 MiB + 1 byte is two segments of one C{seq}; 3.5 MiB
        is four; segments come back to back in index order and the next message takes the next
        C{seq}.
        """
        rig = Rig()
        child = rig.open("s1")
        lines = [b"a" * MIB, b"b" * (MIB + 1), b"c" * (7 * MIB // 2), b"{}"]
        for line in lines:
            child.emit(line)
        frames = rig.take()
        self.assertEqual(
            [(f.data.seq, f.data.segment_index, f.data.segment_count) for f in frames],
            [(0, 0, 1), (1, 0, 2), (1, 1, 2), (2, 0, 4), (2, 1, 4), (2, 2, 4), (2, 3, 4), (3, 0, 1)],
        )
        self.assertTrue(all(len(f.data.payload) <= MIB for f in frames))
        self.assertEqual(messages(frames, "s1"), list(enumerate(lines)))

    def test_line_limit(self) -> None:
        """
        A stdout line of exactly 64 MiB is relayed (64 segments); one byte more ends the session with
        C{reset{"message too large"}} and nothing of that line is sent.
        """
        rig = Rig()
        child = rig.open("s1")
        child.emit(b"x" * (64 * MIB))
        frames = rig.take()
        self.assertEqual(len(frames), 64)
        self.assertEqual({f.data.segment_count for f in frames}, {64})
        del frames
        child.emit(b"y" * (64 * MIB + 1))
        self.assertEqual([f.WhichOneof("body") for f in rig.take()], ["reset"])
        self.assertEqual(rig.resets(), [("s1", "message too large")])
        self.assertTrue(child.stdin_closed)

    @given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6))
    @settings(max_examples=40, deadline=None)
    def test_segmented_round_trip(self, payloads: list[bytes]) -> None:
        """
        Whatever the sizes, payloads segmented by the gateway side reach the child whole and in order,
        and lines the child prints come back whole and in order (here with 1 KiB segments on the way
        in).
        """
        rig = Rig()
        child = rig.open("s1")
        child.exits_on_eof = False
        clean = [p.replace(b"\n", b" ").replace(b"\r", b" ") for p in payloads]
        for seq, payload in enumerate(clean):
            for frame in relayframe.data_frames("s1", seq, payload, segment_bytes=1024):
                rig.receive(frame)
        self.assertEqual(child.written, clean)
        rig.take()  # the fake's answers to whatever the payloads were
        for payload in clean:
            child.emit(payload)
        self.assertEqual([p for _, p in messages(rig.take(), "s1")], clean)


class IsolationTests(SynchronousTestCase):
    """
    One bad stream never affects another.
    """

    def test_failure_ends_only_its_stream(self) -> None:
        """
        An unexpected error while handling a frame resets that stream (C{internal error}) and is
        logged; the other stream keeps working.
        """
        rig = Rig()
        bad = rig.open("bad")
        good = rig.open("good")

        def broken(line: bytes) -> None:
            raise RuntimeError("boom")

        bad.write_line = broken  # type: ignore[method-assign]
        rig.receive(relayframe.data_frame("bad", 0, b"{}"))
        self.assertEqual(rig.resets(), [("bad", "internal error")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        rig.send_json("good", 0, INITIALIZE)
        self.assertEqual(good.written, [compact(INITIALIZE)])
        self.assertEqual(list(rig.mux.sessions), ["good"])


class ControlFrameTests(SynchronousTestCase):
    """
    Heartbeat, Ack, Reset and frames that are dropped.
    """

    def test_heartbeat_reply(self) -> None:
        """
        A Heartbeat is answered with a Heartbeat on the same stream id, for a known stream and an
        unknown one alike.
        """
        rig = Rig()
        rig.open("s1")
        rig.receive(relayframe.heartbeat_frame("s1"))
        rig.receive(relayframe.heartbeat_frame("other"))
        self.assertEqual(
            rig.link.sent, [relayframe.heartbeat_frame("s1"), relayframe.heartbeat_frame("other")]
        )

    def test_ack_ignored(self) -> None:
        """
        Ack frames are ignored: nothing is sent, spawned or written.
        """
        rig = Rig()
        child = rig.open("s1")
        message = RelayMessageFrame(version=1, stream_id="s1")
        message.ack_frame.SetInParent()
        rig.receive(message.SerializeToString())
        rig.receive(message.SerializeToString().replace(b"s1", b"zz"))
        self.assertEqual((rig.link.sent, child.written, len(rig.spawner.children)), ([], [], 1))

    def test_dropped_frames(self) -> None:
        """
        Undecodable bytes, C{version} ≠ 1 and an empty C{stream_id} are dropped with a warning: no
        answer, no session.
        """
        log = EventLog(self)
        rig = Rig()
        for frame in [b"\xff\xff\xff", frame_with(2, "s1"), frame_with(0, "s1"), frame_with(1, "")]:
            rig.receive(frame)
        rig.receive(relayframe.resume_frame(""))
        self.assertEqual((rig.link.sent, rig.spawner.children), ([], []))
        dropped = log.named("executor.frame_dropped")
        self.assertEqual(
            [e["why"] for e in dropped],
            ["undecodable", "version 2", "version 0", "empty stream_id", "empty stream_id"],
        )
        self.assertTrue(all(e["log_level"].name == "warn" for e in dropped))

    def test_gateway_reset_ends_session(self) -> None:
        """
        A Reset from the gateway ends the session without a Reset in return: stdin closed at once,
        the session gone, its end logged with the reason and exit code.
        """
        log = EventLog(self)
        rig = Rig()
        child = rig.open("s1")
        rig.receive(relayframe.reset_frame("s1", "bridge-closed"))
        self.assertTrue(child.stdin_closed)
        self.assertEqual(rig.link.sent, [])
        self.assertEqual((rig.mux.sessions, rig.mux.ending), ({}, set()))
        [closed] = log.named("executor.stream_closed")
        self.assertEqual(
            (closed["stream_id"], closed["reason"], closed["exit_code"]),
            ("s1", "reset by gateway: bridge-closed", 0),
        )

    def test_reset_for_unknown_stream_ignored(self) -> None:
        """
        A Reset for a stream without a session changes nothing and sends nothing.
        """
        rig = Rig()
        rig.receive(relayframe.reset_frame("x", "bridge-closed"))
        self.assertEqual((rig.link.sent, rig.spawner.children), ([], []))


class EndingTests(SynchronousTestCase):
    """
    How sessions end (C{executor.md} §4).
    """

    def test_exec_server_exit(self) -> None:
        """
        A child that exits on its own ends its session with C{reset{"exec-server exited: <code>"}},
        after every line it printed before; Data afterwards gets C{unknown stream}.
        """
        rig = Rig()
        child = rig.open("s1")
        child.emit(b'{"last":true}')
        child.exit(3)
        frames = rig.take()
        self.assertEqual([f.WhichOneof("body") for f in frames], ["data", "reset"])
        self.assertEqual(frames[1].reset.reason, "exec-server exited: 3")
        self.assertEqual(rig.mux.sessions, {})
        rig.receive(relayframe.data_frame("s1", 1, b"{}"))
        self.assertEqual(rig.resets()[-1], ("s1", "unknown stream"))

    def test_ladder(self) -> None:
        """
        Ending closes stdin at once, sends SIGTERM to the group 2 s later and SIGKILL 5 s after that;
        the session is reported ended with the kill's exit code only then.
        """
        log = EventLog(self)
        rig = Rig()
        child = rig.open("s1")
        child.exits_on_eof = False
        rig.receive(relayframe.reset_frame("s1", "bridge-closed"))
        self.assertTrue(child.stdin_closed)
        self.assertEqual(child.signals, [])
        rig.clock.advance(TERM_AFTER - 0.01)
        self.assertEqual(child.signals, [])
        rig.clock.advance(0.01)
        self.assertEqual(child.signals, [signal.SIGTERM])
        self.assertEqual(len(rig.mux.ending), 1)
        rig.clock.advance(KILL_AFTER - 0.01)
        self.assertEqual(child.signals, [signal.SIGTERM])
        rig.clock.advance(0.01)
        self.assertEqual(child.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual((rig.mux.ending, rig.clock.getDelayedCalls()), (set(), []))
        self.assertEqual(log.named("executor.stream_closed")[0]["exit_code"], 137)
        self.assertEqual(rig.idle_calls, 1)

    def test_exit_cancels_ladder(self) -> None:
        """
        A child that exits after its stdin closed gets no signal, and no timer is left.
        """
        rig = Rig()
        child = rig.open("s1")
        child.exits_on_eof = False
        rig.receive(relayframe.reset_frame("s1", "x"))
        rig.clock.advance(1)
        child.exit(0)
        self.assertEqual(rig.clock.getDelayedCalls(), [])
        rig.clock.advance(60)
        self.assertEqual(child.signals, [])

    def test_output_after_end_dropped(self) -> None:
        """
        What an ending child still prints is not sent: the stream is over.
        """
        rig = Rig()
        child = rig.open("s1")
        child.exits_on_eof = False
        rig.receive(relayframe.reset_frame("s1", "x"))
        child.emit(b'{"late":1}')
        self.assertEqual(rig.link.sent, [])

    def test_idle_timeout(self) -> None:
        """
        A stream with no frame from the gateway for 30 min is ended with C{reset{"idle-timeout"}};
        every frame of the stream (Data, Heartbeat, Resume, Ack) restarts the count.
        """
        rig = Rig()
        child = rig.open("s1")
        rig.clock.advance(IDLE_TIMEOUT - 1)
        rig.send_json("s1", 0, INITIALIZE)
        rig.clock.advance(IDLE_TIMEOUT - 1)
        rig.receive(relayframe.heartbeat_frame("s1"))
        rig.clock.advance(IDLE_TIMEOUT - 1)
        rig.receive(relayframe.resume_frame("s1"))
        rig.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(child.stdin_closed)
        self.assertEqual(rig.resets(), [])
        rig.clock.advance(1)
        self.assertEqual(rig.resets(), [("s1", "idle-timeout")])
        self.assertTrue(child.stdin_closed)

    def test_idle_ignores_output(self) -> None:
        """
        Output of the child does not keep a stream alive: only the gateway's frames do.
        """
        rig = Rig()
        child = rig.open("s1")
        for _ in range(30):
            rig.clock.advance(60)
            child.emit(b"{}")
        self.assertEqual(rig.resets(), [("s1", "idle-timeout")])

    def test_link_lost_ends_all(self) -> None:
        """
        When the websocket ends, every live session ends (stdin closed) and nothing is sent; a new
        link starts with no session.
        """
        rig = Rig()
        children = [rig.open("a"), rig.open("b")]
        rig.mux.link_lost(1006, "")
        self.assertTrue(all(c.stdin_closed for c in children))
        self.assertEqual((rig.link.sent, rig.mux.sessions), ([], {}))
        second = FakeRelayLink()
        rig.mux.link_opened(second)
        rig.receive(relayframe.data_frame("a", 0, b"{}"))
        self.assertEqual(second.sent, [relayframe.reset_frame("a", "unknown stream")])

    def test_stop(self) -> None:
        """
        C{stop} ends every session and fires once every child exited — at once for children that
        exit at stdin EOF, after the SIGKILL for a hung one; Resumes are refused from then on.
        """
        rig = Rig()
        rig.open("a")
        hung = rig.open("b")
        hung.exits_on_eof = False
        stopped = rig.mux.stop()
        self.assertNoResult(stopped)
        rig.clock.advance(TERM_AFTER + KILL_AFTER)
        self.successResultOf(stopped)
        self.assertEqual(hung.signals, [signal.SIGTERM, signal.SIGKILL])
        rig.receive(relayframe.resume_frame("c"))
        self.assertEqual(rig.resets(), [("c", "executor stopping")])

    def test_stop_without_sessions(self) -> None:
        """
        C{stop} with nothing running fires at once.
        """
        self.successResultOf(Rig().mux.stop())

    def test_state_after_exit(self) -> None:
        """
        A session's exit code and reason are kept, and it fires C{ended}.
        """
        rig = Rig()
        child = rig.open("s1")
        session = rig.mux.sessions["s1"]
        child.exit(1)
        self.assertEqual(
            (session.state, session.exit_code, session.reason),
            (SessionState.ENDED, 1, "exec-server exited: 1"),
        )
        self.successResultOf(session.ended)

    def test_stderr_logged(self) -> None:
        """
        The child's stderr lines are logged with the stream id.
        """
        log = EventLog(self)
        rig = Rig()
        child = rig.open("s1")
        child.emit_stderr(b"WARNING: something")
        [line] = log.named("executor.exec_server_stderr")
        self.assertEqual((line["stream_id"], line["line"]), ("s1", "WARNING: something"))


class FlowControlTests(SynchronousTestCase):
    """
    Pausing the children while the link is backed up (C{executor.md} §3).
    """

    def test_pause_above_high_water(self) -> None:
        """
        A send that leaves the link above 8 MiB pauses every live child; at exactly 8 MiB nothing is
        paused.
        """
        rig = Rig()
        first, second = rig.open("a"), rig.open("b")
        rig.link.pending_bytes = HIGH_WATER
        first.emit(b"{}")
        self.assertFalse(first.paused or second.paused)
        rig.link.pending_bytes = HIGH_WATER + 1
        first.emit(b"{}")
        self.assertTrue(first.paused and second.paused)
        self.assertTrue(rig.mux.throttled)

    def test_resume_below_low_water(self) -> None:
        """
        The children resume once the link holds less than 1 MiB — seen by the periodic look or at a
        drain report — and not at exactly 1 MiB; output held meanwhile is then sent in order.
        """
        rig = Rig()
        child = rig.open("a")
        rig.link.pending_bytes = HIGH_WATER + 1
        child.emit(b'{"n":0}')
        child.emit(b'{"n":1}')
        self.assertEqual(len(rig.take()), 1)
        rig.link.pending_bytes = LOW_WATER
        rig.clock.advance(DRAIN_POLL)
        self.assertTrue(child.paused)
        rig.link.pending_bytes = LOW_WATER - 1
        rig.clock.advance(DRAIN_POLL)
        self.assertFalse(child.paused)
        self.assertEqual(messages(rig.take(), "a"), [(1, b'{"n":1}')])
        self.assertEqual(rig.clock.getDelayedCalls()[0].getTime(), IDLE_TIMEOUT)
        self.assertEqual(len(rig.clock.getDelayedCalls()), 1)

    def test_drain_report_resumes(self) -> None:
        """
        A drain report from the link resumes the children at once when below the low-water mark.
        """
        rig = Rig()
        child = rig.open("a")
        rig.link.pending_bytes = HIGH_WATER + 1
        child.emit(b"{}")
        rig.link.pending_bytes = 0
        rig.mux.write_drained()
        self.assertFalse(child.paused)

    def test_new_stream_starts_paused(self) -> None:
        """
        A session opened while the link is backed up starts with its child paused, and resumes with
        the others.
        """
        rig = Rig()
        first = rig.open("a")
        rig.link.pending_bytes = HIGH_WATER + 1
        first.emit(b"{}")
        second = rig.open("b")
        self.assertTrue(second.paused)
        rig.link.pending_bytes = 0
        rig.mux.write_drained()
        self.assertFalse(first.paused or second.paused)

    def test_resumed_output_refills(self) -> None:
        """
        When what a resumed child delivers fills the link again, the children are paused again and
        none is left running.
        """
        rig = Rig()
        first, second = rig.open("a"), rig.open("b")
        rig.link.pending_bytes = HIGH_WATER + 1
        first.emit(b"{}")
        first.emit(b"{}")
        second.emit(b"{}")
        rig.mux.write_drained()  # still high: nothing happens
        self.assertTrue(first.paused and second.paused)
        rig.link.pending_bytes = 0
        original = rig.link.send_frame

        def fills(frame: bytes) -> None:
            original(frame)
            rig.link.pending_bytes = HIGH_WATER + 1

        rig.link.send_frame = fills  # type: ignore[method-assign]
        rig.mux.write_drained()
        self.assertTrue(rig.mux.throttled)
        self.assertTrue(first.paused and second.paused)

    def test_ending_child_resumed(self) -> None:
        """
        A child whose session ends while paused is resumed (its output is dropped) so that it can
        exit; its exit is reported.
        """
        rig = Rig()
        child = rig.open("a")
        rig.link.pending_bytes = HIGH_WATER + 1
        child.emit(b"{}")
        rig.receive(relayframe.reset_frame("a", "x"))
        self.assertFalse(child.paused)
        self.assertEqual(rig.mux.ending, set())

    def test_link_lost_unthrottles(self) -> None:
        """
        Losing the link forgets the backlog: no timer is left looking at it.
        """
        rig = Rig()
        child = rig.open("a")
        rig.link.pending_bytes = HIGH_WATER + 1
        child.emit(b"{}")
        rig.mux.link_lost(1006, "")
        self.assertFalse(rig.mux.throttled)
        self.assertEqual(rig.clock.getDelayedCalls(), [])
