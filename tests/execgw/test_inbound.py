"""
Tests for L{codexgw.execgw.inbound}: an executor's inbound websocket after the upgrade
(C{exec-gateway.md} §4.2, §5.5, §7.1, §9.4; acceptance items 29–32, 43 and 52 at the unit level).

The relay logic runs on L{FakeFramePeer}s and a L{task.Clock} through the shared L{Rig}: no I/O and no
real time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.execgw.bridge import BridgeState
from codexgw.execgw.peer import CLOSE_ABNORMAL, CLOSE_NORMAL, CLOSE_TOO_BIG, IFrameReceiver
from codexgw.execgw.registry import IInboundConnection
from codexgw.relayframe import Body
from tests.execgw.test_switchboard import Rig, bodies, data, resets


class InterfaceTests(SynchronousTestCase):
    """
    L{InboundSession} provides what the transport, the registry and the bridges call.
    """

    def test_provides(self) -> None:
        """
        An inbound session provides L{IFrameReceiver} and L{IInboundConnection} completely.
        """
        rig = Rig()
        inbound, _ = rig.connect()
        self.assertTrue(verifyObject(IFrameReceiver, inbound))
        self.assertTrue(verifyObject(IInboundConnection, inbound))


class ConnectTests(SynchronousTestCase):
    """
    Registration on connect (§4.2 after the upgrade, steps 1–2).
    """

    def test_registers_when_open(self) -> None:
        """
        The connection registers when its handshake completes, not before; it is then alive, counted
        and C{last_seen_at} is updated.
        """
        rig = Rig()
        rig.register_executor()
        inbound, exe = rig.connect(open_now=False)
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        self.assertFalse(inbound.alive)
        self.assertEqual(rig.store.calls, ["create_executor"])
        inbound.connection_opened()
        self.assertIs(rig.board.registry.lookup("exe_1"), inbound)
        self.assertTrue(inbound.alive)
        self.assertIsNotNone(rig.last_seen())
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 1)
        self.assertEqual(rig.value("cxg_exec_inbound_connections_total", outcome="accepted"), 1)
        self.assertIsNone(exe.closed_with)

    def test_lost_before_handshake(self) -> None:
        """
        A connection that ends before its handshake completed never registers, touches no store and
        is not counted.
        """
        rig = Rig()
        inbound, exe = rig.connect(open_now=False)
        exe.lose()
        inbound.connection_opened()
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        self.assertEqual(rig.store.calls, [])
        self.assertEqual(rig.value("cxg_exec_inbound_connections_total", outcome="accepted"), 0)


class DropTests(SynchronousTestCase):
    """
    Executor frames that cannot be routed are dropped and the connection stays open (acceptance
    item 31).
    """

    def test_dropped_frames(self) -> None:
        """
        Text, undecodable, stream-less and unknown-stream frames are dropped, counted by why, and the
        inbound stays open and keeps routing.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        exe.receive_text()
        exe.receive(b"\xff\xff")
        exe.receive(b"\x12\x05ab")
        exe.receive(data("", 0))
        exe.receive(relayframe.reset_frame("", "x"))
        exe.receive(data("nobody", 0))
        self.assertEqual(peer.sent, [])
        self.assertIsNone(exe.closed_with)
        self.assertIsNone(peer.closed_with)
        for why, count in [("text", 1), ("undecodable", 2), ("missing_stream_id", 2), ("no_route", 1)]:
            self.assertEqual(
                rig.value("cxg_exec_frames_dropped_total", where="inbound", why=why), count, why
            )
        exe.receive(data("s1", 0))
        self.assertEqual(peer.sent, [data("s1", 0)])


class RoutingTests(SynchronousTestCase):
    """
    Executor frames reach exactly their stream's bridge (§5.5, acceptance item 43).
    """

    def test_two_bridges_isolated(self) -> None:
        """
        Executor Data for A reaches only A and vice versa, byte-identical; Data from each bridge
        reaches the executor; nothing else reaches anybody.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, a = rig.pair("A")
        _, b = rig.pair("B")
        for_a = data("A", 0, b'{"to":"a"}')
        for_b = data("B", 0, b'{"to":"b"}')
        exe.receive(for_a)
        rig.clock.advance(0.2)
        self.assertEqual(a.sent, [for_a])
        self.assertEqual(b.sent, [])
        exe.receive(for_b)
        rig.clock.advance(0.2)
        self.assertEqual(a.sent, [for_a])
        self.assertEqual(b.sent, [for_b])
        from_a = data("A", 0, b'{"from":"a"}')
        from_b = data("B", 0, b'{"from":"b"}')
        a.receive(from_a)
        b.receive(from_b)
        self.assertEqual(
            exe.sent, [relayframe.resume_frame("A"), relayframe.resume_frame("B"), from_a, from_b]
        )

    def test_frames_of_other_executors_isolated(self) -> None:
        """
        Two executors may use the same stream id: each one's frames reach only its own bridge.
        """
        rig = Rig()
        _, exe1 = rig.connect("exe_1")
        _, exe2 = rig.connect("exe_2")
        _, b1 = rig.pair("s", "exe_1")
        _, b2 = rig.pair("s", "exe_2")
        exe1.receive(data("s", 1))
        exe2.receive(data("s", 2))
        b1.receive(data("s", 10))
        self.assertEqual(b1.sent, [data("s", 1)])
        self.assertEqual(b2.sent, [data("s", 2)])
        self.assertEqual(exe1.sent[-1], data("s", 10))
        self.assertEqual(exe2.sent, [relayframe.resume_frame("s")])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["exe", "bridge", "noise"]),
                st.sampled_from(["s1", "s2"]),
                st.binary(max_size=64),
            ),
            max_size=60,
        )
    )
    def test_interleavings_keep_streams_apart(self, steps: list[tuple[str, str, bytes]]) -> None:
        """
        Property: for any interleaving of two streams' frames from both sides (with foreign,
        undecodable and unknown-stream frames mixed in), each bridge receives exactly its own stream's
        executor frames, in order, and the executor receives each bridge's frames in order after its
        Resume.
        """
        rig = Rig()
        _, exe = rig.connect()
        peers = {sid: rig.pair(sid)[1] for sid in ("s1", "s2")}
        to_bridge: dict[str, list[bytes]] = {"s1": [], "s2": []}
        to_exe: list[bytes] = [relayframe.resume_frame("s1"), relayframe.resume_frame("s2")]
        for n, (side, sid, payload) in enumerate(steps):
            frame = data(sid, n, payload)
            other = "s2" if sid == "s1" else "s1"
            if side == "exe":
                exe.receive(frame)
                to_bridge[sid].append(frame)
            elif side == "bridge":
                peers[sid].receive(frame)
                to_exe.append(frame)
            else:
                peers[sid].receive(data(other, n, payload))
                peers[sid].receive(payload + b"\xff")
                exe.receive(data("s3", n, payload))
        self.assertEqual(peers["s1"].sent, to_bridge["s1"])
        self.assertEqual(peers["s2"].sent, to_bridge["s2"])
        self.assertEqual(exe.sent, to_exe)


class DisconnectTests(SynchronousTestCase):
    """
    The executor's connection ends (§4.2 step 4, acceptance items 30 and 32).
    """

    def assertEndsEverything(self, code: int) -> None:
        """
        The inbound ending with C{code} closes every bridge on it — paired, awaiting its Resume, in its
        handshake — with 1000 C{bridge session closed}, sends no Reset, unregisters, updates
        C{last_seen_at}, and leaves no slot once the bridges' closes complete.
        """
        rig = Rig()
        rig.register_executor()
        inbound, exe = rig.connect()
        rig.clock.advance(60)
        _, paired = rig.pair("s1")
        _, waiting, _ = rig.dial()
        _, handshaking, _ = rig.dial(open_now=False)
        exe.lose(code, "")
        for peer in (paired, waiting, handshaking):
            self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        self.assertFalse(inbound.alive)
        self.assertEqual(rig.store.calls.count("update_last_seen"), 2)
        seen = rig.last_seen()
        self.assertEqual(seen.timestamp() if seen is not None else None, 60)
        rig.settle()
        self.assertEqual(resets(exe.sent), [])
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.board.bridges, set())
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 0)
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="executor_gone"), 3)
        self.assertEqual(rig.first_frame_timers(), 0)

    def test_peer_close(self) -> None:
        """
        A clean close by the executor ends everything.
        """
        self.assertEndsEverything(CLOSE_NORMAL)

    def test_drop(self) -> None:
        """
        A dropped connection (network error, ping timeout) ends everything.
        """
        self.assertEndsEverything(CLOSE_ABNORMAL)

    def test_too_big(self) -> None:
        """
        An executor message over the limit (the connection closed 1009) ends everything.
        """
        self.assertEndsEverything(CLOSE_TOO_BIG)

    def test_lost_once(self) -> None:
        """
        A second C{connection_lost} changes nothing.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        exe.lose()
        inbound.connection_lost(CLOSE_NORMAL, "")
        self.assertEqual(rig.store.calls.count("update_last_seen"), 2)

    def test_frames_after_bridges_closed_dropped(self) -> None:
        """
        Once its bridges were closed, the inbound sends nothing more to the executor.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        rig.pair("s1")
        inbound.close_bridges()
        inbound.send_to_executor(data("s1", 0))
        self.assertEqual(exe.sent, [relayframe.resume_frame("s1")])


class EvictionTests(SynchronousTestCase):
    """
    A second connection for the same executor evicts the first (§4.2 step 1, acceptance item 29).
    """

    def test_second_connection_evicts_first(self) -> None:
        """
        The first connection's bridges are closed 1000 C{bridge session closed}, then its websocket
        1000 C{inbound closed}; no Reset reaches either connection; the registry holds the second;
        the first's late cleanup does not unregister it; new bridges pair on the second only.
        """
        rig = Rig()
        first, exe1 = rig.connect(name="first")
        _, paired = rig.pair("s1", name="bridge:paired")
        _, waiting, _ = rig.dial(name="bridge:waiting")
        second, exe2 = rig.connect(name="second")
        self.assertEqual(
            rig.close_log,
            [
                ("bridge:paired", CLOSE_NORMAL, "bridge session closed"),
                ("bridge:waiting", CLOSE_NORMAL, "bridge session closed"),
                ("first", CLOSE_NORMAL, "inbound closed"),
            ],
        )
        self.assertIs(rig.board.registry.lookup("exe_1"), second)
        self.assertIsNone(exe2.closed_with)
        exe1.receive(data("s1", 0))
        self.assertEqual(paired.sent, [])
        rig.settle()
        self.assertIs(rig.board.registry.lookup("exe_1"), second)
        self.assertEqual(resets(exe1.sent) + resets(exe2.sent), [])
        self.assertEqual(exe2.sent, [])
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 1)
        _, fresh = rig.pair("s1")
        fresh.receive(data("s1", 1))
        exe2.receive(data("s1", 2))
        self.assertEqual(exe2.sent, [relayframe.resume_frame("s1"), data("s1", 1)])
        self.assertEqual(fresh.sent, [data("s1", 2)])
        self.assertEqual(exe1.sent, [relayframe.resume_frame("s1")])
        self.assertEqual(rig.board.slots.count("exe_1"), 1)
        self.assertFalse(first.alive)
        self.assertEqual(waiting.sent, [])

    def test_reconnect_same_object(self) -> None:
        """
        A connection that registers again (same object) evicts nothing.
        """
        rig = Rig()
        inbound, exe = rig.connect()
        rig.board.registry.register("exe_1", inbound)
        self.assertIsNone(exe.closed_with)
        self.assertTrue(inbound.alive)


class BackpressureTests(SynchronousTestCase):
    """
    Bridges → executor back-pressure (§9.4, acceptance item 52).
    """

    def test_stalled_executor(self) -> None:
        """
        While two bridges send 64 MiB each to an executor that reads only in bursts, every attached
        bridge is paused once the executor's pending bytes exceed B and resumed after it drained; the
        pending bytes never exceed B + 2F, and every frame arrives, each stream in order.
        """
        buffer_bytes = 64 * 1024
        payload = b"p" * (16 * 1024 - 32)
        total = 64 * 1024 * 1024 // len(payload)
        rig = Rig(buffer_bytes=buffer_bytes)
        inbound, exe = rig.connect()
        _, a = rig.pair("A")
        _, b = rig.pair("B")
        frame_bytes = len(data("A", total, payload))
        exe.sent.clear()
        exe.write_blocked = True
        next_seq = {"A": 0, "B": 0}
        received = {"A": 0, "B": 0}
        highest = pauses = 0
        while received["A"] < total or received["B"] < total:
            for sid, peer in (("A", a), ("B", b)):
                # The client sends while its TCP window has room: at most one frame waits in it.
                if next_seq[sid] < total and not peer.unread:
                    peer.receive(data(sid, next_seq[sid], payload))
                    next_seq[sid] += 1
                highest = max(highest, exe.pending_bytes)
            if not a.reading and not b.reading:
                pauses += 1
                self.assertTrue(inbound.throttled)
                self.assertGreater(exe.pending_bytes, buffer_bytes)
                for frame in exe.sent:
                    head = relayframe.peek(frame)
                    self.assertEqual(relayframe.decode(frame).data.seq, received[head.stream_id])
                    received[head.stream_id] += 1
                exe.sent.clear()
                exe.drain()
                exe.write_blocked = True
                self.assertEqual([a.reading, b.reading], [True, True])
                self.assertFalse(inbound.throttled)
            elif next_seq["A"] == total and next_seq["B"] == total and not (a.unread or b.unread):
                for frame in exe.sent:
                    head = relayframe.peek(frame)
                    self.assertEqual(relayframe.decode(frame).data.seq, received[head.stream_id])
                    received[head.stream_id] += 1
                exe.sent.clear()
        self.assertLessEqual(highest, buffer_bytes + 2 * frame_bytes)
        self.assertGreater(pauses, 100)
        self.assertEqual(received, {"A": total, "B": total})
        self.assertIsNone(a.closed_with)
        self.assertIsNone(b.closed_with)
        self.assertTrue(exe.reading)

    def test_new_and_handshaking_bridges_paused_while_throttled(self) -> None:
        """
        A bridge still in its handshake when the executor stalls is paused too, and so is a bridge
        whose handshake completes while the executor is stalled; all resume when it drains.
        """
        rig = Rig(buffer_bytes=100)
        _, exe = rig.connect()
        _, a = rig.pair("A")
        handshaking, early, _ = rig.dial(open_now=False)
        exe.write_blocked = True
        a.receive(data("A", 0, b"x" * 200))
        self.assertFalse(a.reading)
        self.assertFalse(early.reading)
        _, late, _ = rig.dial()
        self.assertFalse(late.reading)
        handshaking.connection_opened()
        self.assertFalse(early.reading)
        exe.drain()
        self.assertTrue(a.reading and early.reading and late.reading)

    def test_paused_frames_keep_order(self) -> None:
        """
        Frames a client sent while its bridge was paused reach the executor after the ones before, in
        order, once the executor drained.
        """
        rig = Rig(buffer_bytes=100)
        _, exe = rig.connect()
        _, a = rig.pair("A")
        exe.write_blocked = True
        frames = [data("A", n, b"y" * 150) for n in range(4)]
        for frame in frames:
            a.receive(frame)
        self.assertEqual(exe.sent[1:], frames[:1])
        self.assertEqual(a.unread, frames[1:])
        exe.drain()
        self.assertEqual(exe.sent[1:], frames)
        self.assertEqual(bodies(exe.sent), [Body.RESUME] + [Body.DATA] * 4)
        self.assertTrue(a.reading)

    def test_resets_pass_while_throttled(self) -> None:
        """
        A bridge that ends while the executor is stalled still gets its C{Reset{"bridge-closed"}}
        through (no queue holds it back).
        """
        rig = Rig(buffer_bytes=100)
        _, exe = rig.connect()
        _, a = rig.pair("A")
        bridge, b = rig.pair("B")
        exe.write_blocked = True
        a.receive(data("A", 0, b"x" * 200))
        self.assertFalse(b.reading)
        b.lose(CLOSE_NORMAL, "")
        self.assertIs(bridge.state, BridgeState.CLOSED)
        self.assertEqual(resets(exe.sent), ["bridge-closed"])
