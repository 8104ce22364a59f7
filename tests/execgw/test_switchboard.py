"""
Tests for L{codexgw.execgw.switchboard}: the relay core that builds the sessions, reaps idle bridges,
shuts everything down and keeps the relay metrics (C{exec-gateway.md} §4.3, §7.1–§7.2, §9.3, §9.6,
§10.2; acceptance items 48, 50 and 94 at the unit level).

Everything runs on a L{task.Clock} with L{FakeFramePeer}s and L{FakeStore}: no I/O, no real time.
L{Rig} and the frame helpers here are shared with C{test_bridge} and C{test_inbound}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from codexgw import relayframe
from codexgw.execgw.bridge import BridgeSession, BridgeState
from codexgw.execgw.inbound import InboundSession
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.peer import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    FrameFactory,
    IFramePeer,
    IFrameReceiver,
)
from codexgw.execgw.registry import Slot
from codexgw.execgw.store import ExecutorRecord, StoreUnavailable
from codexgw.execgw.switchboard import PRUNE_INTERVAL, Switchboard, idle_scan_interval
from codexgw.relayframe import Body
from codexgw.testing.fakepeer import FakeFramePeer
from codexgw.testing.fakestore import FakeStore
from codexgw.tokens import CapClaims
from tests.execgw.test_peer import RecordingClient, ServerTransport, build, client_factory

#: The claims of every bridge in these tests.
CLAIMS = CapClaims(turn_id="trn_test", workspace_id="ws_1", exp=2_000_000_000)


class LoggedPeer(FakeFramePeer):
    """
    A L{FakeFramePeer} that also appends C{(name, code, reason)} to a shared list on every C{close}
    call, so tests can check the order in which connections were closed.
    """

    def __init__(self, name: str, log: list[tuple[str, int, str]]) -> None:
        super().__init__()
        self.name = name
        self._log = log

    def close(self, code: int, reason: str) -> None:
        self._log.append((self.name, code, reason))
        super().close(code, reason)


class Rig:
    """
    A L{Switchboard} on a fake clock, fake store and fresh metrics, with helpers that do what the HTTP
    layer does after its checks and play the executors and bridge clients.

    @ivar peers: every peer made, so that L{settle} can finish the closes the relay logic started.
    @ivar close_log: C{(peer name, code, reason)} of every close call, in order.
    """

    def __init__(
        self,
        *,
        buffer_bytes: int = 1 << 20,
        idle_timeout: float = 300.0,
        max_streams: int = 32,
        start: bool = True,
        clock: task.Clock | None = None,
    ) -> None:
        self.clock = clock if clock is not None else task.Clock()
        self.store = FakeStore(self.clock)
        self.metrics = ExecMetrics()
        self.board = Switchboard(
            self.clock,
            self.store,
            self.metrics,
            max_streams_per_executor=max_streams,
            buffer_bytes=buffer_bytes,
            idle_timeout=idle_timeout,
        )
        self.peers: list[LoggedPeer] = []
        self.close_log: list[tuple[str, int, str]] = []
        if start:
            self.board.start()

    def _peer(self, name: str) -> LoggedPeer:
        peer = LoggedPeer(name, self.close_log)
        self.peers.append(peer)
        return peer

    def register_executor(self, exe_id: str = "exe_1") -> None:
        """
        Put C{exe_id} in the store, so that C{last_seen_at} updates are visible.
        """
        record = ExecutorRecord(
            exe_id=exe_id,
            user_id="usr_1",
            display_name="",
            description="",
            default_cwd="",
            registered_at=datetime(2026, 1, 1, tzinfo=UTC),
            last_seen_at=None,
        )
        self.store.create_executor(record, "hash")

    def last_seen(self, exe_id: str = "exe_1") -> datetime | None:
        """
        The stored C{last_seen_at} of C{exe_id}.
        """
        record = self.store._executors[exe_id][0]
        return record.last_seen_at

    def connect(
        self, exe_id: str = "exe_1", *, open_now: bool = True, name: str = ""
    ) -> tuple[InboundSession, LoggedPeer]:
        """
        An executor's inbound websocket, upgraded and (by default) open.
        """
        peer = self._peer(name or f"inbound:{exe_id}")
        inbound = self.board.new_inbound(exe_id, peer, "codexgw-executor/test")
        peer.attach(inbound, open_now=open_now)
        return inbound, peer

    def dial(
        self,
        exe_id: str = "exe_1",
        *,
        inbound: InboundSession | None = None,
        open_now: bool = True,
        name: str = "",
    ) -> tuple[BridgeSession, LoggedPeer, Slot]:
        """
        A bridge websocket after the pre-upgrade checks: a slot reserved, the session made on the
        executor's inbound (or C{inbound}), and (by default) the handshake completed.
        """
        if inbound is None:
            inbound = self.board.registry.lookup(exe_id)
            assert inbound is not None, f"{exe_id} is not connected"
        slot = self.board.slots.reserve(exe_id)
        assert slot is not None, "stream limit reached"
        peer = self._peer(name or f"bridge:{len(self.peers)}")
        bridge = self.board.new_bridge(inbound, CLAIMS, slot, peer)
        peer.attach(bridge, open_now=open_now)
        return bridge, peer, slot

    def pair(
        self,
        stream_id: str,
        exe_id: str = "exe_1",
        *,
        inbound: InboundSession | None = None,
        name: str = "",
    ) -> tuple[BridgeSession, LoggedPeer]:
        """
        A bridge that sent its Resume for C{stream_id}.
        """
        bridge, peer, _ = self.dial(exe_id, inbound=inbound, name=name)
        peer.receive(relayframe.resume_frame(stream_id))
        assert bridge.state is BridgeState.OPEN, bridge.state
        return bridge, peer

    def settle(self) -> None:
        """
        Finish every closing handshake the relay logic started, until nothing changes.
        """
        done: set[int] = set()
        while True:
            pending = [p for p in self.peers if p.closed_with is not None and id(p) not in done]
            if not pending:
                return
            for peer in pending:
                done.add(id(peer))
                peer.finish_close()

    def stray_timers(self) -> list[IDelayedCall]:
        """
        The pending delayed calls other than the switchboard's periodic tasks (the idle scan and the
        pruner run for as long as the switchboard does).
        """
        return [
            call
            for call in self.clock.getDelayedCalls()
            # A LoopingCall schedules itself as the delayed call's function.
            if not isinstance(getattr(call, "func", None), LoopingCall)
        ]

    def first_frame_timers(self) -> int:
        """
        How many first-frame timers are pending.
        """
        names = [
            getattr(getattr(call, "func", None), "__name__", "") for call in self.clock.getDelayedCalls()
        ]
        return names.count("_first_frame_timeout")

    def value(self, name: str, **labels: str) -> float:
        """
        The current value of one metric sample (0 when absent).
        """
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def bodies(frames: list[bytes]) -> list[Body]:
    """
    The body case of each frame.
    """
    return [relayframe.peek(frame).body for frame in frames]


def resets(frames: list[bytes], stream_id: str | None = None) -> list[str]:
    """
    The reasons of the Reset frames among C{frames} (of C{stream_id} only, when given).
    """
    reasons = []
    for frame in frames:
        head = relayframe.peek(frame)
        if head.body is Body.RESET and (stream_id is None or head.stream_id == stream_id):
            reasons.append(relayframe.decode(frame).reset.reason)
    return reasons


def data(stream_id: str, seq: int, payload: bytes = b"{}") -> bytes:
    """
    One Data frame.
    """
    return relayframe.data_frame(stream_id, seq, payload)


def capture_logs(case: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect every log event emitted during the test.
    """
    events: list[LogEvent] = []
    observer = cast("ILogObserver", events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class IdleScanIntervalTests(SynchronousTestCase):
    """
    L{idle_scan_interval} is C{min(max(T/10, 50 ms), 30 s)} (§9.3).
    """

    def test_values(self) -> None:
        """
        Short timeouts scan every 50 ms, long ones every 30 s, others every tenth of the timeout.
        """
        self.assertEqual(idle_scan_interval(0.2), 0.05)
        self.assertEqual(idle_scan_interval(0.1), 0.05)
        self.assertAlmostEqual(idle_scan_interval(2.0), 0.2)
        self.assertEqual(idle_scan_interval(300.0), 30.0)
        self.assertEqual(idle_scan_interval(3600.0), 30.0)


class LifecycleTests(SynchronousTestCase):
    """
    Starting and stopping the periodic tasks: the idle scan and the pruner.
    """

    def test_start_schedules_each_task_once(self) -> None:
        """
        C{start} schedules the idle scan and the pruner once each, even when called twice; C{stop}
        removes both.
        """
        rig = Rig(idle_timeout=0.2)
        rig.board.start()
        self.assertEqual(
            sorted(call.getTime() for call in rig.clock.getDelayedCalls()),
            [idle_scan_interval(0.2), PRUNE_INTERVAL],
        )
        rig.board.stop()
        rig.board.stop()
        self.assertEqual(rig.clock.getDelayedCalls(), [])

    def test_no_scan_without_idle_timeout(self) -> None:
        """
        An idle timeout of 0 disables reaping: only the pruner is scheduled, and a silent stream stays
        open.
        """
        rig = Rig(idle_timeout=0)
        rig.connect()
        _, peer = rig.pair("s1")
        self.assertEqual([call.getTime() for call in rig.clock.getDelayedCalls()], [PRUNE_INTERVAL])
        rig.clock.advance(3600)
        self.assertIsNone(peer.closed_with)

    def test_pruner_runs_every_minute(self) -> None:
        """
        Every 60 s the pruner forgets revoked turns with C{exp < now} and used tickets with
        C{exp <= now}, and keeps the rest (acceptance item 59).
        """
        rig = Rig()
        now = int(rig.clock.seconds())
        rig.board.revoked.add("trn_old", now + 30)
        rig.board.revoked.add("trn_new", now + 90)
        rig.board.used_tickets.claim(b"old", now + 60)
        rig.board.used_tickets.claim(b"new", now + 61)
        rig.clock.advance(59)
        self.assertEqual((len(rig.board.revoked), len(rig.board.used_tickets)), (2, 2))
        rig.clock.advance(1)
        self.assertFalse(rig.board.revoked.contains("trn_old"))
        self.assertTrue(rig.board.revoked.contains("trn_new"))
        self.assertEqual(len(rig.board.used_tickets), 1)
        rig.clock.advance(60)
        self.assertEqual((len(rig.board.revoked), len(rig.board.used_tickets)), (0, 0))


class IdleReapTests(SynchronousTestCase):
    """
    Idle streams are reaped (§9.3, acceptance item 48).
    """

    def test_silent_stream_reaped_in_time(self) -> None:
        """
        With T = 200 ms a silent stream is reaped after at least 200 ms and before 450 ms: the executor
        and the bridge each get C{Reset{"idle-timeout"}}, then the bridge is closed 1000
        C{bridge idle timeout}; completing the close sends no further Reset.
        """
        rig = Rig(idle_timeout=0.2)
        inbound, exe = rig.connect()
        bridge, peer = rig.pair("s1")
        while peer.closed_with is None and rig.clock.seconds() < 0.45:
            rig.clock.advance(0.01)
        self.assertGreaterEqual(rig.clock.seconds(), 0.2)
        self.assertLess(rig.clock.seconds(), 0.45)
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge idle timeout"))
        self.assertEqual(peer.sent, [relayframe.reset_frame("s1", "idle-timeout")])
        self.assertEqual(exe.sent[1:], [relayframe.reset_frame("s1", "idle-timeout")])
        self.assertNotIn("s1", inbound.routes)
        rig.settle()
        self.assertEqual(resets(exe.sent), ["idle-timeout"])
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="idle"), 1)
        self.assertNotIn(bridge, rig.board.bridges)

    def test_busy_streams_not_reaped(self) -> None:
        """
        Streams exchanging a frame every 100 ms for 1 s are not reaped with T = 200 ms, whichever
        direction the frames go; once silent, they are.
        """
        rig = Rig(idle_timeout=0.2)
        _, exe = rig.connect()
        _, both = rig.pair("both")
        _, up = rig.pair("up")
        _, down = rig.pair("down")
        for tick in range(10):
            rig.clock.advance(0.1)
            if tick % 2:
                both.receive(data("both", tick))
            else:
                exe.receive(data("both", tick))
            up.receive(data("up", tick))
            exe.receive(data("down", tick))
        self.assertEqual([both.closed_with, up.closed_with, down.closed_with], [None, None, None])
        self.assertEqual(resets(exe.sent), [])
        rig.clock.advance(0.3)
        self.assertEqual(
            [both.closed_with, up.closed_with, down.closed_with],
            [(CLOSE_NORMAL, "bridge idle timeout")] * 3,
        )

    def test_streams_awaiting_resume_not_reaped(self) -> None:
        """
        The idle scan leaves bridges without a stream alone: the first-frame timeout covers them.
        """
        rig = Rig(idle_timeout=0.2)
        _, exe = rig.connect()
        _, peer, _ = rig.dial()
        rig.clock.advance(1)
        self.assertIsNone(peer.closed_with)
        self.assertEqual(exe.sent, [])

    def test_reaped_once_while_closing(self) -> None:
        """
        A reaped bridge whose closing handshake takes longer than several scans is reaped once:
        exactly one C{Reset{"idle-timeout"}} reaches each side.
        """
        rig = Rig(idle_timeout=0.2)
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        rig.clock.advance(0.25)
        self.assertIsNotNone(peer.closed_with)
        for _ in range(20):
            rig.clock.advance(0.05)
        self.assertEqual(resets(exe.sent), ["idle-timeout"])
        self.assertEqual(resets(peer.sent), ["idle-timeout"])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="idle"), 0)
        rig.settle()
        self.assertEqual(resets(exe.sent), ["idle-timeout"])
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="idle"), 1)


class HygieneTests(SynchronousTestCase):
    """
    Nothing leaks (acceptance item 50).
    """

    def test_ten_sequential_bridges_leave_nothing(self) -> None:
        """
        Ten bridges opened and closed one after another, ending in every way a bridge can end, leave
        no route, no slot, no open bridge, a zero gauge and no timer but the idle scan.
        """
        rig = Rig(idle_timeout=0.2)
        inbound, exe = rig.connect()
        endings = ["client", "bridge_reset", "executor_reset", "too_big", "drop"] * 2
        for n, ending in enumerate(endings):
            sid = f"s{n}"
            _, peer = rig.pair(sid)
            peer.receive(data(sid, 0))
            exe.receive(data(sid, 0))
            if ending == "client":
                peer.lose(CLOSE_NORMAL, "")
            elif ending == "bridge_reset":
                peer.receive(relayframe.reset_frame(sid, "done"))
            elif ending == "executor_reset":
                exe.receive(relayframe.reset_frame(sid, "exited"))
            elif ending == "too_big":
                peer.lose(1009, "")
            else:
                peer.lose()
            rig.settle()
            self.assertEqual(rig.board.slots.count("exe_1"), 0, ending)
        self.assertEqual(len(inbound.routes), 0)
        self.assertEqual(inbound.attached(), [])
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.board.bridges, set())
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 0)
        self.assertEqual(rig.stray_timers(), [])
        rig.board.stop()
        self.assertEqual(rig.clock.getDelayedCalls(), [])
        self.assertEqual(resets(exe.sent).count("bridge-closed"), 6)


class ShutdownTests(SynchronousTestCase):
    """
    Graceful shutdown of the relay (§9.6, acceptance item 94 at the unit level).
    """

    def test_bridges_then_inbounds_without_reset(self) -> None:
        """
        C{shut_down} closes every bridge (paired, awaiting its Resume, or still in its handshake) with
        1001 C{gateway shutting down}, then every inbound with the same; no Reset reaches an
        executor, now or when the closes complete; afterwards nothing is left and each executor's
        C{last_seen_at} is updated.
        """
        rig = Rig(idle_timeout=0.2)
        rig.register_executor("exe_a")
        rig.register_executor("exe_b")
        _, exe_a = rig.connect("exe_a")
        _, exe_b = rig.connect("exe_b")
        rig.pair("a1", "exe_a")
        rig.pair("a2", "exe_a")
        rig.pair("b1", "exe_b")
        _, waiting, _ = rig.dial("exe_b")
        _, handshaking, _ = rig.dial("exe_a", open_now=False)
        rig.store.calls.clear()
        rig.board.shut_down()
        bridges = [name for name, _, _ in rig.close_log if name.startswith("bridge:")]
        inbounds = [name for name, _, _ in rig.close_log if name.startswith("inbound:")]
        self.assertEqual(len(set(bridges)), 5)
        self.assertEqual(sorted(inbounds), ["inbound:exe_a", "inbound:exe_b"])
        first_inbound = min(rig.close_log.index(e) for e in rig.close_log if e[0] in inbounds)
        last_bridge = max(rig.close_log.index(e) for e in rig.close_log if e[0] in bridges)
        self.assertLess(last_bridge, first_inbound)
        for peer in rig.peers:
            self.assertEqual(peer.closed_with, (CLOSE_GOING_AWAY, "gateway shutting down"))
        rig.settle()
        self.assertEqual(rig.clock.getDelayedCalls(), [])
        self.assertEqual(resets(exe_a.sent) + resets(exe_b.sent), [])
        self.assertEqual(len(rig.board.registry), 0)
        self.assertEqual(rig.board.slots.counts(), {})
        self.assertEqual(rig.board.bridges, set())
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="shutdown"), 5)
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 0)
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 0)
        self.assertEqual(rig.store.calls.count("update_last_seen"), 2)
        self.assertIsNotNone(rig.last_seen("exe_a"))
        self.assertIsNotNone(rig.last_seen("exe_b"))
        self.assertEqual(waiting.sent + handshaking.sent, [])

    def test_inbound_handshake_completing_during_shutdown(self) -> None:
        """
        An executor whose websocket handshake completes after shutdown began is closed 1001
        C{gateway shutting down} and never registers (it would otherwise stay open past the shutdown).
        """
        rig = Rig()
        inbound, exe = rig.connect(open_now=False)
        rig.board.shut_down()
        inbound.connection_opened()
        self.assertEqual(exe.closed_with, (CLOSE_GOING_AWAY, "gateway shutting down"))
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        rig.settle()
        self.assertEqual(len(rig.board.registry), 0)
        self.assertEqual(rig.store.calls, [])

    def test_client_close_during_shutdown_sends_no_reset(self) -> None:
        """
        A bridge whose client ends it while the gateway is shutting down causes no Reset.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        rig.board.shutting_down = True
        peer.lose(CLOSE_NORMAL, "")
        self.assertEqual(resets(exe.sent), [])


class CloseExecutorTests(SynchronousTestCase):
    """
    Deleting an executor closes its inbound (acceptance item 21's relay side).
    """

    def test_close_executor(self) -> None:
        """
        The live inbound is closed 1008 C{executor deleted} after its bridges were closed 1000
        C{bridge session closed}; no Reset is sent; an unknown executor is a no-op.
        """
        rig = Rig()
        _, exe = rig.connect()
        _, peer = rig.pair("s1")
        rig.board.close_executor("exe_unknown")
        self.assertIsNone(exe.closed_with)
        rig.board.close_executor("exe_1")
        self.assertEqual(peer.closed_with, (CLOSE_NORMAL, "bridge session closed"))
        self.assertEqual(exe.closed_with, (CLOSE_POLICY, "executor deleted"))
        self.assertEqual([name for name, _, _ in rig.close_log], ["bridge:1", "inbound:exe_1"])
        rig.settle()
        self.assertEqual(resets(exe.sent), [])
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        self.assertEqual(rig.board.slots.counts(), {})


class StoreTests(SynchronousTestCase):
    """
    C{update_last_seen} on connect and disconnect, best effort.
    """

    def test_last_seen_on_connect_and_disconnect(self) -> None:
        """
        Connecting and disconnecting each update C{last_seen_at}.
        """
        rig = Rig()
        rig.register_executor()
        rig.clock.advance(100)
        _, exe = rig.connect()
        self.assertEqual(rig.last_seen(), datetime.fromtimestamp(100, UTC))
        rig.clock.advance(50)
        exe.lose()
        self.assertEqual(rig.last_seen(), datetime.fromtimestamp(150, UTC))
        self.assertEqual(rig.store.calls[-2:], ["update_last_seen", "update_last_seen"])

    def test_store_failure_logged_and_ignored(self) -> None:
        """
        A failing C{update_last_seen} is logged as C{store.error} and changes nothing else: the
        executor registers, relays, and unregisters.
        """
        events = capture_logs(self)
        rig = Rig()
        rig.store.failure = StoreUnavailable("database down")
        inbound, exe = rig.connect()
        self.assertIs(rig.board.registry.lookup("exe_1"), inbound)
        _, peer = rig.pair("s1")
        exe.receive(data("s1", 0))
        self.assertEqual(peer.sent, [data("s1", 0)])
        exe.lose()
        self.assertIsNone(rig.board.registry.lookup("exe_1"))
        errors = [e for e in events if e.get("event") == "store.error"]
        self.assertEqual(len(errors), 2)
        self.assertEqual({e["op"] for e in errors}, {"update_last_seen"})


class MetricsTests(SynchronousTestCase):
    """
    The relay metrics of §10.2 move with the events they count.
    """

    def test_counters(self) -> None:
        """
        Pairing, first-frame failures, forwarded and dropped frames, and every close cause are counted;
        the bridge and inbound gauges follow the open connections.
        """
        rig = Rig(buffer_bytes=10)
        _, exe = rig.connect()
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 1)
        self.assertEqual(rig.value("cxg_exec_inbound_connections_total", outcome="accepted"), 1)
        _, client, _ = rig.dial()
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 1)
        resume = relayframe.resume_frame("c")
        client.receive(resume)
        self.assertEqual(rig.value("cxg_exec_bridge_dials_total", outcome="paired"), 1)
        frame = data("c", 0)
        client.receive(frame)
        exe.receive(frame)
        self.assertEqual(rig.value("cxg_exec_frames_total", direction="to_executor"), 2)
        self.assertEqual(
            rig.value("cxg_exec_frame_bytes_total", direction="to_executor"), len(resume) + len(frame)
        )
        self.assertEqual(rig.value("cxg_exec_frames_total", direction="to_bridge"), 1)
        self.assertEqual(rig.value("cxg_exec_frame_bytes_total", direction="to_bridge"), len(frame))
        client.receive(data("other", 1))
        client.receive(b"\xff")
        exe.receive(data("nobody", 0))
        exe.receive(b"\xff")
        exe.receive(data("", 0))
        exe.receive_text()
        for where, why in [
            ("bridge", "wrong_stream_id"),
            ("bridge", "undecodable"),
            ("inbound", "no_route"),
            ("inbound", "undecodable"),
            ("inbound", "missing_stream_id"),
            ("inbound", "text"),
        ]:
            self.assertEqual(
                rig.value("cxg_exec_frames_dropped_total", where=where, why=why), 1, (where, why)
            )
        client.lose(CLOSE_NORMAL, "")
        _, reset_peer = rig.pair("r")
        reset_peer.receive(relayframe.reset_frame("r", ""))
        _, too_big = rig.pair("t")
        too_big.lose(1009, "")
        rig.pair("x")
        rig.pair("x")
        _, slow = rig.pair("slow")
        slow.write_blocked = True
        exe.receive(data("slow", 0, b"0123456789"))
        idle, _ = rig.pair("idle")
        self.assertTrue(idle.reap_if_idle(rig.clock.seconds() + 1000, 1))
        _, rejected, _ = rig.dial()
        rejected.receive_text()
        self.assertEqual(rig.value("cxg_exec_bridge_dials_total", outcome="first_frame"), 1)
        rig.settle()
        for cause, count in [
            ("client", 2),
            ("reset", 1),
            ("too_big", 1),
            ("collision", 1),
            ("slow_consumer", 1),
            ("idle", 1),
        ]:
            self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause=cause), count, cause)
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 1)  # the second "x"
        exe.lose()
        rig.settle()
        self.assertEqual(rig.value("cxg_exec_bridge_closed_total", cause="executor_gone"), 1)
        self.assertEqual(rig.value("cxg_exec_bridges_active"), 0)
        self.assertEqual(rig.value("cxg_exec_inbound_connected"), 0)


class SlotMachine(RuleBasedStateMachine):
    """
    Random lives of bridges and executor connections: dials at every stage (also on a connection that
    already ended), Resumes and collisions, Resets from either side, client closes, drops, 1009s,
    executor reconnects and disconnects, idle reaps and first-frame timeouts, with closing handshakes
    completed at random times. Checked throughout: slots held = bridges not yet ended, routes point to
    their own open bridge, no stream gets two Resets without a Resume between.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(idle_timeout=5.0, max_streams=0)
        self.inbounds: list[tuple[InboundSession, LoggedPeer]] = [self.rig.connect()]
        self.bridges: list[tuple[BridgeSession, LoggedPeer]] = []

    def _live_bridges(self) -> list[tuple[BridgeSession, LoggedPeer]]:
        return [(b, p) for b, p in self.bridges if b.state is not BridgeState.CLOSED]

    @rule()
    def executor_connects(self) -> None:
        self.inbounds.append(self.rig.connect())

    @rule()
    def executor_drops(self) -> None:
        self.inbounds[-1][1].lose()

    @rule(pick=st.integers(min_value=0), open_now=st.booleans())
    def dial(self, pick: int, open_now: bool) -> None:
        inbound, _ = self.inbounds[pick % len(self.inbounds)]
        bridge, peer, _ = self.rig.dial(inbound=inbound, open_now=open_now)
        self.bridges.append((bridge, peer))

    @precondition(lambda self: self._live_bridges() != [])
    @rule(
        pick=st.integers(min_value=0),
        action=st.sampled_from(
            ["open", "resume", "data", "reset", "close", "drop", "too_big", "text", "exe_reset"]
        ),
        sid=st.sampled_from(["s1", "s2", "s3"]),
    )
    def act(self, pick: int, action: str, sid: str) -> None:
        live = self._live_bridges()
        bridge, peer = live[pick % len(live)]
        if action == "open":
            if bridge.state is BridgeState.HANDSHAKE:
                bridge.connection_opened()
        elif action == "resume":
            peer.receive(relayframe.resume_frame(sid))
        elif action == "data":
            peer.receive(data(bridge.stream_id or sid, 0))
        elif action == "reset":
            peer.receive(relayframe.reset_frame(bridge.stream_id or sid, "done"))
        elif action == "close":
            peer.lose(CLOSE_NORMAL, "")
        elif action == "drop":
            peer.lose()
        elif action == "too_big":
            peer.lose(1009, "")
        elif action == "text":
            peer.receive_text()
        else:
            for inbound, exe in self.inbounds:
                if inbound is bridge.inbound:
                    exe.receive(relayframe.reset_frame(sid, "exited"))

    @rule(seconds=st.sampled_from([0.5, 5.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.rig.clock.advance(seconds)

    @rule()
    def settle(self) -> None:
        self.rig.settle()

    @invariant()
    def slots_match_live_bridges(self) -> None:
        live = len(self._live_bridges())
        assert self.rig.board.slots.count("exe_1") == live, (self.rig.board.slots.counts(), live)
        assert len(self.rig.board.bridges) == live
        assert self.rig.value("cxg_exec_bridges_active") == live

    @invariant()
    def one_reset_per_stream(self) -> None:
        # At most one Reset per stream reaches an executor: never two without a Resume between.
        for _, exe in self.inbounds:
            ended: set[str] = set()
            for frame in exe.sent:
                head = relayframe.peek(frame)
                if head.body is Body.RESUME:
                    ended.discard(head.stream_id)
                elif head.body is Body.RESET:
                    assert head.stream_id not in ended, (head.stream_id, exe.sent)
                    ended.add(head.stream_id)

    @invariant()
    def routes_point_to_their_open_bridges(self) -> None:
        for inbound, _ in self.inbounds:
            for session in inbound.routes.sessions():
                assert isinstance(session, BridgeSession)
                assert session.state is BridgeState.OPEN
                assert inbound.routes.get(session.stream_id) is session

    def teardown(self) -> None:
        for _, exe in self.inbounds:
            exe.lose()
        for _, peer in self.bridges:
            peer.lose()
        assert self.rig.board.slots.counts() == {}
        assert self.rig.board.bridges == set()
        assert len(self.rig.board.registry) == 0
        assert self.rig.value("cxg_exec_bridges_active") == 0


class SlotMachineTests(SynchronousTestCase):
    """
    Slot, bridge and route bookkeeping under random interleavings (hypothesis state machine).
    """

    def test_slots_released_exactly_once(self) -> None:
        """
        Through random lives of bridges and executor connections, the slots held always equal the
        bridges not yet ended (a second release would raise), routes point only to their own open
        bridge, and nothing is left once every connection ended.
        """
        run_state_machine_as_test(
            SlotMachine,
            settings=settings(
                max_examples=400,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


class Link:
    """
    One real websocket: an Autobahn client linked by an L{iosim} pump to a L{FrameProtocol} whose
    receiver the switchboard makes.
    """

    def __init__(
        self,
        clock: MemoryReactorClock,
        make: Callable[[IFramePeer], IFrameReceiver],
        max_frame_bytes: int = 1 << 20,
        ping_interval: float = 0.0,
    ) -> None:
        factory = FrameFactory(make, max_frame_bytes, ping_interval, ping_interval, reactor=clock)
        self.server = build(factory)
        self.server_io = ServerTransport(self.server)
        self.client: RecordingClient = client_factory(clock).buildProtocol(None)
        self.client_io = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(self.server, self.server_io, self.client, self.client_io, clock=clock)

    def send(self, frame: bytes) -> None:
        """
        The client sends one binary message.
        """
        self.client.sendMessage(frame, isBinary=True)

    def binary(self) -> list[bytes]:
        """
        The binary messages the client received.
        """
        return [payload for is_binary, payload in self.client.messages if is_binary]

    def close_seen(self) -> tuple[int | None, str | None] | None:
        """
        The close code and reason the client got, if it closed.
        """
        return (self.client.closes[0][1], self.client.closes[0][2]) if self.client.closes else None


class AutobahnRelayTests(SynchronousTestCase):
    """
    The relay core behind the real Autobahn adapter on both sides (in-memory transports, fake clock):
    what the clients see on the wire.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.rig = Rig(clock=self.clock)
        self.links: list[Link] = []

    def flush(self) -> None:
        """
        Pump every link until no bytes move.
        """
        moved = True
        while moved:
            moved = False
            for link in self.links:
                moved = link.pump.flush() or moved

    def executor(self) -> tuple[InboundSession, Link]:
        """
        An executor connected through a real websocket.
        """
        link = Link(self.clock, lambda peer: self.rig.board.new_inbound("exe_1", peer))
        self.links.append(link)
        inbound = self.rig.board.registry.lookup("exe_1")
        assert inbound is not None
        self.assertIs(link.server.receiver, inbound)
        return inbound, link

    def bridge(
        self, inbound: InboundSession, max_frame_bytes: int = 1 << 20, ping_interval: float = 0.0
    ) -> Link:
        """
        A bridge client connected through a real websocket, after the pre-upgrade checks.
        """
        slot = self.rig.board.slots.reserve("exe_1")
        assert slot is not None
        link = Link(
            self.clock,
            lambda peer: self.rig.board.new_bridge(inbound, CLAIMS, slot, peer),
            max_frame_bytes,
            ping_interval,
        )
        self.links.append(link)
        return link

    def test_relay_both_ways(self) -> None:
        """
        Resume and Data cross byte-identical in both directions; a client that closes normally makes
        the executor receive one C{Reset{"bridge-closed"}}; nothing is left afterwards.
        """
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        resume = relayframe.resume_frame("s1")
        client.send(resume)
        self.flush()
        self.assertEqual(exe.binary(), [resume])
        down = data("s1", 0, bytes(range(256)) * 300)
        exe.send(down)
        up = data("s1", 0, b'{"jsonrpc":"2.0","id":1}')
        client.send(up)
        self.flush()
        self.assertEqual(client.binary(), [down])
        self.assertEqual(exe.binary(), [resume, up])
        client.client.sendClose(CLOSE_NORMAL, "done")
        self.flush()
        self.assertEqual(exe.binary()[2:], [relayframe.reset_frame("s1", "bridge-closed")])
        self.assertEqual(self.rig.board.slots.counts(), {})
        self.assertEqual(self.rig.board.bridges, set())
        self.assertEqual(self.rig.value("cxg_exec_bridge_closed_total", cause="client"), 1)

    def test_first_frame_rejected_on_the_wire(self) -> None:
        """
        A text first message closes the bridge with 1002 and the exact reason, as the client sees it.
        """
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        client.client.sendMessage(b"hello", isBinary=False)
        self.flush()
        self.assertEqual(
            client.close_seen(), (CLOSE_PROTOCOL_ERROR, "first frame must be binary Resume")
        )
        self.assertEqual(exe.binary(), [])
        self.assertEqual(self.rig.board.slots.counts(), {})

    def test_executor_reset_on_the_wire(self) -> None:
        """
        An executor Reset reaches the client, then the client sees close 1000 C{stream reset}.
        """
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        reset = relayframe.reset_frame("s1", "exited")
        exe.send(reset)
        self.flush()
        self.assertEqual(client.binary(), [reset])
        self.assertEqual(client.close_seen(), (CLOSE_NORMAL, "stream reset"))
        self.assertEqual(exe.binary(), [relayframe.resume_frame("s1")])

    def test_too_big_on_the_wire(self) -> None:
        """
        A client message over the frame limit closes its bridge with 1009 (cause C{too_big}); the
        executor gets C{Reset{"bridge-closed"}} and its other stream keeps working.
        """
        inbound, exe = self.executor()
        other = self.bridge(inbound)
        other.send(relayframe.resume_frame("other"))
        client = self.bridge(inbound, max_frame_bytes=1000)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        client.send(data("s1", 0, b"x" * 2000))
        self.flush()
        seen = client.close_seen()
        self.assertEqual(seen[0] if seen else None, CLOSE_TOO_BIG)
        self.assertEqual(resets(exe.binary()), ["bridge-closed"])
        self.assertEqual(self.rig.value("cxg_exec_bridge_closed_total", cause="too_big"), 1)
        exe.send(data("other", 0))
        other.send(data("other", 1))
        self.flush()
        self.assertEqual(other.binary(), [data("other", 0)])
        self.assertEqual(exe.binary()[-1], data("other", 1))

    def test_shutdown_on_the_wire(self) -> None:
        """
        At shutdown every client sees close 1001 C{gateway shutting down}; the executor gets no Reset.
        """
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        self.rig.board.shut_down()
        self.flush()
        self.assertEqual(client.close_seen(), (CLOSE_GOING_AWAY, "gateway shutting down"))
        self.assertEqual(exe.close_seen(), (CLOSE_GOING_AWAY, "gateway shutting down"))
        self.assertEqual(resets(exe.binary()), [])
        self.assertEqual(len(self.rig.board.registry), 0)
        self.assertEqual(self.rig.board.bridges, set())

    def test_slow_consumer_on_the_wire(self) -> None:
        """
        A client that stops reading is cut once more than B bytes wait for it: when it reads again it
        finds at most B + F bytes of frames, then close 1008 C{bridge buffer overflow}; the executor
        gets C{Reset{"slow-consumer"}}.
        """
        self.rig.board.buffer_bytes = 4096
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        client.server_io.remote_reading = False
        frames = [data("s1", n, b"d" * 1000) for n in range(20)]
        for frame in frames:
            exe.send(frame)
        self.flush()
        self.assertEqual(resets(exe.binary()), ["slow-consumer"])
        client.server_io.remote_reading = True
        self.flush()
        got = client.binary()
        self.assertEqual(got, frames[: len(got)])
        self.assertLessEqual(sum(len(f) for f in got), 4096 + 1024 + 1024 * 2)
        self.assertEqual(client.close_seen(), (CLOSE_POLICY, "bridge buffer overflow"))
        self.assertEqual(self.rig.board.slots.counts(), {})

    def test_stalled_executor_on_the_wire(self) -> None:
        """
        When the executor stops reading, its pending bytes pass B and the bridge's socket stops being
        read; once the executor reads again everything arrives, in order.
        """
        self.rig.board.buffer_bytes = 4096
        inbound, exe = self.executor()
        client = self.bridge(inbound)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        exe.server_io.remote_reading = False
        frames = [data("s1", n, b"u" * 1000) for n in range(20)]
        for frame in frames:
            client.send(frame)
            self.flush()
        self.assertTrue(inbound.throttled)
        self.assertTrue(client.server_io.reading_paused)
        self.assertTrue(client.server_io.held)
        self.assertLessEqual(exe.server.pending_bytes, 4096 + 2 * 1024)
        exe.server_io.remote_reading = True
        self.flush()
        self.assertEqual(exe.binary(), [relayframe.resume_frame("s1"), *frames])
        self.assertFalse(inbound.throttled)
        self.assertFalse(client.server_io.reading_paused)

    def test_pings_do_not_keep_a_stream_alive(self) -> None:
        """
        With T = 200 ms and pings every 50 ms that the client answers, a stream without relay frames is
        still reaped within 450 ms: both sides get C{Reset{"idle-timeout"}} and the client sees close
        1000 C{bridge idle timeout}.
        """
        self.rig = Rig(clock=self.clock, idle_timeout=0.2)
        inbound, exe = self.executor()
        client = self.bridge(inbound, ping_interval=0.05)
        client.send(relayframe.resume_frame("s1"))
        self.flush()
        start = self.clock.seconds()
        while client.close_seen() is None and self.clock.seconds() - start < 0.45:
            self.clock.advance(0.01)
            self.flush()
        self.assertEqual(client.close_seen(), (CLOSE_NORMAL, "bridge idle timeout"))
        self.assertGreaterEqual(client.client.pings, 3)
        self.assertEqual(client.binary(), [relayframe.reset_frame("s1", "idle-timeout")])
        self.assertEqual(resets(exe.binary()), ["idle-timeout"])


class TicketExpiryTests(SynchronousTestCase):
    """
    L{Switchboard.unique_ticket_exp} keeps an executor's tickets distinct.
    """

    def test_distinct_and_pruned(self) -> None:
        """
        Within one second the expiry moves on by one per ticket, per executor; once the last expiry
        has passed, the pruner forgets it and the next ticket gets the plain expiry again.
        """
        rig = Rig()
        now = int(rig.clock.seconds())
        board = rig.board
        self.assertEqual([board.unique_ticket_exp("exe_a", now + 300) for _ in range(3)],
                         [now + 300, now + 301, now + 302])  # fmt: skip
        self.assertEqual(board.unique_ticket_exp("exe_b", now + 300), now + 300)
        rig.clock.advance(60)
        self.assertEqual(board.unique_ticket_exp("exe_a", now + 360), now + 360)
        rig.clock.advance(PRUNE_INTERVAL * 6)
        self.assertEqual(board.unique_ticket_exp("exe_a", now + 1), now + 1)
