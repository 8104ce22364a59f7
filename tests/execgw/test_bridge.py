"""
Tests for L{codexgw.execgw.bridge}: one bridge stream after the upgrade (C{exec-gateway.md} §4.3, §5,
§9.4; acceptance items 41, 42, 44–47, 49, 51 and 54 at the unit level).

The relay logic runs on L{FakeFramePeer}s and a L{task.Clock} through the shared L{Rig}: no I/O and no
real time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.execgw.bridge import FIRST_FRAME_TIMEOUT, BridgeState
from codexgw.execgw.peer import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    IFrameReceiver,
)
from codexgw.execgw.registry import IBridgeSession
from codexgw.relayframe import Body
from tests.execgw.test_switchboard import CLAIMS, Rig, bodies, data, resets


def _field(number: int, payload: bytes) -> bytes:
    """
    One length-delimited protobuf field (for hand-made frames).
    """
    return bytes([number << 3 | 2, len(payload)]) + payload


class InterfaceTests(SynchronousTestCase):
    """
    L{BridgeSession} provides what the transport and the registry call.
    """

    def test_provides(self) -> None:
        """
        A bridge session provides L{IFrameReceiver} and L{IBridgeSession} completely.
        """
        rig = Rig()
        rig.connect()
        bridge, _, _ = rig.dial()
        self.assertTrue(verifyObject(IFrameReceiver, bridge))
        self.assertTrue(verifyObject(IBridgeSession, bridge))
        self.assertIs(bridge.claims, CLAIMS)


class FirstFrameTests(SynchronousTestCase):
    """
    The first message must be this stream's Resume (§4.3 first-message rules, acceptance item 41).
    """

    def assertRejected(self, send: str | bytes, reason: str) -> None:
        """
        Sending C{send} (a text message when it is a C{str}) as the first message closes the bridge
        1002 with C{reason}; nothing reaches the executor, no route is made, and the slot is released
        when the close completes.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        bridge, peer, slot = rig.dial()
        if isinstance(send, str):
            peer.receive_text()
        else:
            peer.receive(send)
        self.assertEqual(peer.closed_with, (CLOSE_PROTOCOL_ERROR, reason))
        self.assertEqual(exe.sent, [])
        self.assertEqual(len(inbound.routes), 0)
        self.assertEqual(rig.value("cxg_exec_bridge_dials_total", outcome="first_frame"), 1)
        self.assertEqual(rig.value("cxg_exec_bridge_dials_total", outcome="paired"), 0)
        peer.receive(relayframe.resume_frame("late"))
        rig.settle()
        self.assertEqual(exe.sent, [])
        self.assertTrue(slot.released)
        self.assertIs(bridge.state, BridgeState.CLOSED)
        self.assertEqual(rig.first_frame_timers(), 0)

    def test_text(self) -> None:
        """
        A text message → 1002 C{first frame must be binary Resume}.
        """
        self.assertRejected("hello", "first frame must be binary Resume")

    def test_garbage(self) -> None:
        """
        Bytes that are not a protobuf frame → 1002 C{malformed first frame}.
        """
        for garbage in [b"\xff", b"\x12\x10s1", b"\x0f", relayframe.resume_frame("s1")[:-1]]:
            self.assertRejected(garbage, "malformed first frame")

    def test_not_resume(self) -> None:
        """
        A Data, Reset, Heartbeat or body-less frame first → 1002 C{first frame must be Resume}.
        """
        for frame in [
            data("s1", 0),
            relayframe.reset_frame("s1", "x"),
            relayframe.heartbeat_frame("s1"),
            b"\x08\x01" + _field(2, b"s1"),
            b"",
        ]:
            self.assertRejected(frame, "first frame must be Resume")

    def test_empty_stream_id(self) -> None:
        """
        A Resume without a C{stream_id} → 1002 C{Resume missing stream_id}.
        """
        self.assertRejected(relayframe.resume_frame(""), "Resume missing stream_id")

    def test_long_stream_id(self) -> None:
        """
        A 129-byte C{stream_id} (counted in UTF-8 bytes) → 1002 C{invalid stream_id}.
        """
        self.assertRejected(relayframe.resume_frame("a" * 129), "invalid stream_id")
        self.assertRejected(relayframe.resume_frame("é" * 64 + "a"), "invalid stream_id")

    def test_longest_stream_id_accepted(self) -> None:
        """
        A 128-byte C{stream_id} pairs.
        """
        for sid in ["a" * 128, "é" * 64]:
            rig = Rig()
            _, exe = rig.connect()
            bridge, _ = rig.pair(sid)
            self.assertEqual(bridge.stream_id, sid)
            self.assertEqual(exe.sent, [relayframe.resume_frame(sid)])

    def test_timeout(self) -> None:
        """
        No message within 10 s of the upgrade → 1002 C{first frame timeout}; the clock starts at the
        handshake's completion, not before.
        """
        rig = Rig(idle_timeout=0)
        _, exe = rig.connect()
        bridge, peer, slot = rig.dial(open_now=False)
        rig.clock.advance(30)
        self.assertIsNone(peer.closed_with)
        bridge.connection_opened()
        rig.clock.advance(FIRST_FRAME_TIMEOUT - 0.001)
        self.assertIsNone(peer.closed_with)
        rig.clock.advance(0.001)
        self.assertEqual(peer.closed_with, (CLOSE_PROTOCOL_ERROR, "first frame timeout"))
        self.assertEqual(FIRST_FRAME_TIMEOUT, 10.0)
        rig.settle()
        self.assertEqual(exe.sent, [])
        self.assertTrue(slot.released)
        self.assertEqual(rig.stray_timers(), [])

    def test_resume_cancels_timeout(self) -> None:
        """
        A Resume in time cancels the first-frame timer: the stream outlives the 10 s.
        """
        rig = Rig(idle_timeout=0)
        rig.connect()
        _, peer = rig.pair("s1")
        self.assertEqual(rig.stray_timers(), [])
        rig.clock.advance(60)
        self.assertIsNone(peer.closed_with)

    def test_client_gone_before_resume(self) -> None:
        """
        A client that leaves before its Resume ends without a Reset (there was no stream), and its
        timer and slot are released.
        """
        rig = Rig(idle_timeout=0)
        _, exe = rig.connect()
        _, peer, slot = rig.dial()
        peer.lose(CLOSE_NORMAL, "")
        self.assertEqual(exe.sent, [])
        self.assertTrue(slot.released)
        self.assertEqual(rig.stray_timers(), [])


class ResumeTests(SynchronousTestCase):
    """
    The Resume reaches the executor unchanged and first (acceptance item 42).
    """

    def test_resume_forwarded_byte_identical_and_first(self) -> None:
        """
        A Resume in an unusual but valid encoding (fields reordered, an unknown field, a non-zero
        C{next_seq}) reaches the executor byte for byte, before the stream's next frame.
        """
        resume = _field(7, b"\x08\x05") + _field(2, b"s1") + b"\x08\x01" + _field(15, b"??")
        self.assertIs(relayframe.peek(resume).body, Body.RESUME)
        rig = Rig()
        _, exe = rig.connect()
        _, peer, _ = rig.dial()
        peer.receive(resume)
        peer.receive(data("s1", 0))
        self.assertEqual(exe.sent, [resume, data("s1", 0)])

    @settings(max_examples=50, deadline=None)
    @given(
        sid=st.text(min_size=1, max_size=32).filter(lambda s: len(s.encode("utf-8")) <= 128),
        next_seq=st.integers(min_value=0, max_value=2**32 - 1),
    )
    def test_any_resume_forwarded_unchanged(self, sid: str, next_seq: int) -> None:
        """
        Property: any valid Resume pairs its stream and reaches the executor byte-identical.
        """
        rig = Rig()
        _, exe = rig.connect()
        bridge, peer, _ = rig.dial()
        resume = relayframe.resume_frame(sid, next_seq)
        peer.receive(resume)
        self.assertEqual(bridge.stream_id, sid)
        self.assertEqual(exe.sent, [resume])


class PumpTests(SynchronousTestCase):
    """
    Frames from the bridge after the Resume (§4.3 pump, acceptance item 45).
    """

    def test_own_frames_forwarded(self) -> None:
        """
        Every frame of the session's stream — Data, Heartbeat, Ack, another Resume — reaches the
        executor byte-identical and in order.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        frames = [
            data("s1", 0, b'{"jsonrpc":"2.0"}'),
            relayframe.heartbeat_frame("s1"),
            b"\x08\x01" + _field(2, b"s1") + _field(6, b""),
            relayframe.resume_frame("s1", 3),
            data("s1", 1, bytes(range(256)) * 4),
        ]
        for frame in frames:
            peer.receive(frame)
        self.assertEqual(exe.sent[1:], frames)

    def test_foreign_and_broken_frames_dropped(self) -> None:
        """
        Frames of another stream, without a stream, or undecodable never reach the executor; text is
        ignored; the bridge stays open and keeps relaying.
        """
        rig = Rig()
        _, exe = rig.connect()
        rig.pair("victim")
        _, peer = rig.pair("s1")
        sent_before = list(exe.sent)
        peer.receive(data("victim", 0))
        peer.receive(relayframe.reset_frame("victim", "hijack"))
        peer.receive(data("", 0))
        peer.receive(b"\xff\xff")
        peer.receive(b"\x10\x01\x12")
        peer.receive_text()
        rig.clock.advance(0.3)
        self.assertEqual(exe.sent, sent_before)
        self.assertIsNone(peer.closed_with)
        dropped = "cxg_exec_frames_dropped_total"
        self.assertEqual(rig.value(dropped, where="bridge", why="wrong_stream_id"), 3)
        self.assertEqual(rig.value(dropped, where="bridge", why="undecodable"), 2)
        peer.receive(data("s1", 0))
        self.assertEqual(exe.sent[-1], data("s1", 0))

    def test_activity_tracked(self) -> None:
        """
        Every forwarded frame, in either direction, updates the stream's activity time; dropped ones
        do not.
        """
        rig = Rig()
        _, exe = rig.connect()
        bridge, peer = rig.pair("s1")
        rig.clock.advance(5)
        peer.receive(data("s1", 0))
        self.assertEqual(bridge.last_activity, 5)
        rig.clock.advance(5)
        exe.receive(data("s1", 0))
        self.assertEqual(bridge.last_activity, 10)
        rig.clock.advance(5)
        peer.receive(data("other", 0))
        peer.receive_text()
        self.assertEqual(bridge.last_activity, 10)
        self.assertEqual((bridge.frames_in, bridge.frames_out), (2, 1))


class ResetTests(SynchronousTestCase):
    """
    Resets in both directions end the stream, and the executor hears of a stream's end once
    (§4.3 step 4, §5.4; acceptance items 46 and 47).
    """

    def test_executor_reset(self) -> None:
        """
        An executor Reset is forwarded to the bridge, which is then closed 1000 C{stream reset}; later
        executor frames of the stream are dropped, and the bridge's end sends no Reset back.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        _, peer = rig.pair("s1")
        reset = relayframe.reset_frame("s1", "exec-server exited")
        exe.receive(reset)
        self.assertEqual(peer.sent, [reset])
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "stream reset"))
        self.assertNotIn("s1", inbound.routes)
        exe.receive(data("s1", 5))
        self.assertEqual(peer.sent, [reset])
        self.assertEqual(rig.value("cxg_exec_frames_dropped_total", where="inbound", why="no_route"), 1)
        rig.settle()
        self.assertEqual(resets(exe.sent), [])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="reset"), 1)

    def test_client_close_sends_one_reset(self) -> None:
        """
        A bridge that closes normally makes the gateway send the executor exactly one
        C{Reset{"bridge-closed"}} for its stream.
        """
        rig = Rig()
        _, exe = rig.connect()
        bridge, peer = rig.pair("s1")
        peer.lose(CLOSE_NORMAL, "")
        bridge.connection_lost(CLOSE_NORMAL, "")
        self.assertEqual(exe.sent[1:], [relayframe.reset_frame("s1", "bridge-closed")])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="client"), 1)

    def test_drop_sends_one_reset(self) -> None:
        """
        A bridge that just drops (network error, ping timeout) is treated the same way.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        peer.lose(CLOSE_ABNORMAL, "")
        self.assertEqual(resets(exe.sent, "s1"), ["bridge-closed"])

    def test_bridge_reset_not_doubled(self) -> None:
        """
        A bridge that sent Reset itself: the Reset is forwarded, the bridge is closed 1000
        C{stream reset}, and no C{Reset{"bridge-closed"}} follows; later frames from it are not
        forwarded.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        _, peer = rig.pair("s1")
        reset = relayframe.reset_frame("s1", "client done")
        peer.receive(reset)
        self.assertEqual(exe.sent[-1], reset)
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "stream reset"))
        self.assertNotIn("s1", inbound.routes)
        peer.receive(data("s1", 9))
        rig.settle()
        self.assertEqual(exe.sent[1:], [reset])

    def test_too_big(self) -> None:
        """
        A bridge closed 1009 (message over the limit) sends the executor C{Reset{"bridge-closed"}}; the
        executor's other streams are unaffected (acceptance item 49).
        """
        rig = Rig()
        _, exe = rig.connect()
        _, other = rig.pair("other")
        _, peer = rig.pair("s1")
        peer.lose(CLOSE_TOO_BIG, "message too big")
        self.assertEqual(resets(exe.sent), ["bridge-closed"])
        self.assertEqual(resets(exe.sent, "s1"), ["bridge-closed"])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="too_big"), 1)
        exe.receive(data("other", 0))
        other.receive(data("other", 0))
        self.assertEqual(other.sent, [data("other", 0)])
        self.assertEqual(exe.sent[-1], data("other", 0))
        self.assertIsNone(other.closed_with)

    def test_no_reset_when_executor_gone(self) -> None:
        """
        Bridges closed because their inbound ended send no Reset (there is nobody to tell).
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        exe.lose()
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        rig.settle()
        self.assertEqual(resets(exe.sent), [])


class CollisionTests(SynchronousTestCase):
    """
    A second bridge with a live stream id takes the stream over (§4.3 step 1, acceptance item 44).
    """

    def test_newer_bridge_takes_over(self) -> None:
        """
        The older bridge is closed 1000 C{bridge session closed}; the executor gets the second Resume
        and no Reset, now or when the older bridge's close completes; later executor frames of the
        stream reach only the newer bridge, whose frames still reach the executor.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        old, old_peer = rig.pair("s1")
        new, new_peer = rig.pair("s1")
        self.assertEqual(old_peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        self.assertIsNone(new_peer.closed_with)
        self.assertIs(inbound.routes.get("s1"), new)
        rig.settle()
        self.assertIs(inbound.routes.get("s1"), new)
        self.assertEqual(exe.sent, [relayframe.resume_frame("s1")] * 2)
        exe.receive(data("s1", 0))
        self.assertEqual(new_peer.sent, [data("s1", 0)])
        self.assertEqual(old_peer.sent, [])
        new_peer.receive(data("s1", 1))
        self.assertEqual(exe.sent[-1], data("s1", 1))
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="collision"), 1)
        self.assertIs(old.state, BridgeState.CLOSED)

    def test_evicted_bridge_cannot_inject(self) -> None:
        """
        Frames the evicted bridge sends while its close is under way never reach the executor: the
        stream now belongs to the newer bridge.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, old_peer = rig.pair("s1")
        rig.pair("s1")
        sent = list(exe.sent)
        old_peer.receive(data("s1", 7))
        old_peer.receive(relayframe.reset_frame("s1", "late"))
        self.assertEqual(exe.sent, sent)

    def test_closing_bridge_relays_nothing(self) -> None:
        """
        A bridge being closed — here for its first frame — relays nothing it receives afterwards,
        not even a valid Resume.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        _, peer, _ = rig.dial()
        peer.receive_text()
        peer.receive(relayframe.resume_frame("s1"))
        self.assertEqual(exe.sent, [])
        self.assertEqual(len(inbound.routes), 0)
        rig.settle()
        self.assertEqual(exe.sent, [])


class SlowConsumerTests(SynchronousTestCase):
    """
    Executor → bridge: a bridge that stops reading is cut, the others are unaffected (§9.4, acceptance
    item 51).
    """

    def test_slow_bridge_cut(self) -> None:
        """
        With B = 64 KiB and 16 KiB frames, a bridge that does not read while the executor sends 64 MiB
        is closed 1008 C{bridge buffer overflow}; its pending bytes never exceed B + F; the executor
        gets one C{Reset{"slow-consumer"}}; a second stream keeps receiving throughout; later frames of
        the cut stream are dropped.
        """
        buffer_bytes = 64 * 1024
        payload = b"x" * (16 * 1024 - 32)
        frame = data("slow", 0, payload)
        frame_bytes = len(frame)
        rig = Rig(buffer_bytes=buffer_bytes)
        _, exe = rig.connect()
        _, slow = rig.pair("slow")
        _, fast = rig.pair("fast")
        slow.write_blocked = True
        highest = 0
        sent_when_cut: int | None = None
        for n in range(64 * 1024 * 1024 // frame_bytes):
            exe.receive(data("slow", n, payload))
            highest = max(highest, slow.pending_bytes)
            exe.receive(data("fast", n))
            if sent_when_cut is None and slow.closed_with is not None:
                sent_when_cut = len(slow.sent)
        self.assertLessEqual(highest, buffer_bytes + frame_bytes)
        self.assertGreater(highest, buffer_bytes)
        self.assertEqual(slow.closed_with, (CLOSE_POLICY, "bridge buffer overflow"))
        self.assertEqual(len(slow.sent), sent_when_cut)
        self.assertEqual(sent_when_cut, buffer_bytes // frame_bytes + 1)
        self.assertEqual(len(fast.sent), 64 * 1024 * 1024 // frame_bytes)
        self.assertIsNone(fast.closed_with)
        self.assertEqual(resets(exe.sent), ["slow-consumer"])
        self.assertEqual(resets(exe.sent, "slow"), ["slow-consumer"])
        rig.settle()
        self.assertEqual(resets(exe.sent), ["slow-consumer"])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="slow_consumer"), 1)

    def test_reading_bridge_never_cut(self) -> None:
        """
        A bridge that keeps reading is never cut, however much the executor sends.
        """
        rig = Rig(buffer_bytes=1024)
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        for n in range(200):
            exe.receive(data("s1", n, b"y" * 1000))
        self.assertIsNone(peer.closed_with)
        self.assertEqual(len(peer.sent), 200)
        self.assertEqual(bodies(peer.sent), [Body.DATA] * 200)

    def test_executor_reading_never_paused_by_bridge(self) -> None:
        """
        The inbound reader is never paused because of a bridge.
        """
        rig = Rig(buffer_bytes=1024)
        _, exe = rig.connect()
        _, slow = rig.pair("s1")
        slow.write_blocked = True
        for n in range(5):
            exe.receive(data("s1", n, b"z" * 600))
        self.assertTrue(exe.reading)


class LifecycleEdgeTests(SynchronousTestCase):
    """
    Bridges whose executor side changed under them, and slots released exactly once.
    """

    def test_handshake_never_completed(self) -> None:
        """
        A bridge whose websocket handshake never completed (C{connection_lost} without
        C{connection_opened}) releases its slot once and leaves the open-bridge set.
        """
        rig = Rig()
        _, exe = rig.connect()
        bridge, peer, slot = rig.dial(open_now=False)
        self.assertEqual(rig.board.slots.count("exe_1"), 1)
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 1)
        peer.lose()
        bridge.connection_lost(CLOSE_ABNORMAL, "")
        self.assertTrue(slot.released)
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.board.bridges, set())
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 0)
        self.assertEqual(exe.sent, [])

    def test_attached_to_ended_inbound(self) -> None:
        """
        A bridge made for an inbound that ended before the upgrade is closed at once with 1000
        C{bridge session closed}; its slot is released once when the connection ends.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        exe.lose()
        bridge, peer, slot = rig.dial(inbound=inbound, open_now=False)
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        self.assertFalse(slot.released)
        bridge.connection_opened()
        self.assertEqual(rig.first_frame_timers(), 0)
        rig.settle()
        self.assertTrue(slot.released)
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.board.bridges, set())
        self.assertEqual(exe.sent, [])

    def test_inbound_ended_before_resume(self) -> None:
        """
        An inbound that ends while its bridge awaits the Resume closes the bridge 1000
        C{bridge session closed}; a Resume arriving during that close is not relayed.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        _, peer, slot = rig.dial()
        exe.lose()
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        peer.receive(relayframe.resume_frame("s1"))
        self.assertEqual(len(inbound.routes), 0)
        rig.settle()
        self.assertTrue(slot.released)
        self.assertEqual(exe.sent, [])

    def test_close_idempotent(self) -> None:
        """
        Only the first of L{BridgeSession.close}, C{evict_by_collision} and C{shut_down} counts: the
        websocket gets its code and reason, and the close is counted under its cause.
        """
        rig = Rig()
        rig.connect()
        bridge, peer = rig.pair("s1")
        bridge.close(CLOSE_NORMAL, "bridge session closed")
        bridge.close(CLOSE_POLICY, "executor deleted")
        bridge.evict_by_collision()
        bridge.shut_down()
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        rig.settle()
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="executor_gone"), 1)
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="collision"), 0)
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="shutdown"), 0)

    def test_lost_twice_releases_once(self) -> None:
        """
        A second C{connection_lost} changes nothing (the slot would raise on a second release).
        """
        rig = Rig()
        _, exe = rig.connect()
        bridge, _ = rig.pair("s1")
        bridge.connection_lost(CLOSE_NORMAL, "")
        bridge.connection_lost(CLOSE_NORMAL, "")
        self.assertEqual(resets(exe.sent), ["bridge-closed"])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="client"), 1)


class RevocationTests(SynchronousTestCase):
    """
    Revoking a turn never closes its existing bridges (acceptance item 54).
    """

    def test_revoked_turn_keeps_bridges(self) -> None:
        """
        After the bridge's turn is revoked, the bridge stays open and relays in both directions.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        rig.board.revoked.add(CLAIMS.turn_id, CLAIMS.exp)
        self.assertTrue(rig.board.revoked.contains(CLAIMS.turn_id))
        peer.receive(data("s1", 0))
        exe.receive(data("s1", 0))
        self.assertIsNone(peer.closed_with)
        self.assertEqual(exe.sent[-1], data("s1", 0))
        self.assertEqual(peer.sent, [data("s1", 0)])
