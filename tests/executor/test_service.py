"""
Tests for L{codexgw.executor.service}: the register-dial-serve loop, its backoff, the fatal rejection
and the stop (C{executor.md} §2).

Registration and dialing are fakes the test answers; the multiplexer is the real one with fake
children; time is a L{task.Clock}.
"""

from __future__ import annotations

import signal

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from codexgw import relayframe
from codexgw.executor.backoff import Backoff
from codexgw.executor.multiplexer import KILL_AFTER, TERM_AFTER, StreamMultiplexer
from codexgw.executor.proctree import OrphanGuard
from codexgw.executor.registration import RegistrationFailed, RegistrationRejected
from codexgw.executor.service import REAP_INTERVAL, ConnectedLink, ExecutorService
from codexgw.testing.fakechild import FakeExecServerSpawner
from codexgw.testing.fakelink import FakeRelayLink
from tests.executor.logs import EventLog
from tests.executor.proctools import FakeProcessTable


class Link(FakeRelayLink):
    """
    A fake link with the C{closed} the service waits on; a close completes at once (the gateway
    answers the closing handshake) and is reported to the multiplexer.
    """

    def __init__(self, mux: StreamMultiplexer) -> None:
        super().__init__(mux)
        self.mux = mux
        self.closed: Deferred[tuple[int, str]] = Deferred()

    def close(self, code: int, reason: str) -> None:
        """
        Record the close; the gateway answers it at once.
        """
        super().close(code, reason)
        self.drop(code, reason)

    def drop(self, code: int = 1006, reason: str = "") -> None:
        """
        The connection ends.
        """
        if not self.closed.called:
            self.mux.link_lost(code, reason)
            self.closed.callback((code, reason))


class Rig:
    """
    A service with fakes around it.
    """

    def __init__(self, orphans: bool = False) -> None:
        self.clock = task.Clock()
        self.spawner = FakeExecServerSpawner()
        self.mux = StreamMultiplexer(self.clock, self.spawner.spawn)
        self.registrations: list[Deferred[str]] = []
        self.dials: list[tuple[str, Deferred[ConnectedLink]]] = []
        self.links: list[Link] = []
        self.fatal: list[tuple[int, str]] = []
        self.table = FakeProcessTable()
        guard = OrphanGuard(self.table, lambda: self.spawner.live_pids) if orphans else None
        self.service = ExecutorService(
            self.clock,
            self._register,
            self._dial,
            self.mux,
            Backoff(uniform=lambda low, high: 1.0),
            fatal=lambda status, message: self.fatal.append((status, message)),
            orphans=guard,
            subreaper=lambda: True,
        )

    def _register(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.registrations.append(d)
        return d

    def _dial(self, url: str) -> Deferred[ConnectedLink]:
        d: Deferred[ConnectedLink] = Deferred()
        self.dials.append((url, d))
        return d

    def connect(self) -> Link:
        """
        Answer the pending registration and dial: a connection opens.
        """
        self.registrations[-1].callback(f"ws://gw/codex-exec/e?token={len(self.registrations)}")
        link = Link(self.mux)
        self.mux.link_opened(link)
        self.links.append(link)
        self.dials[-1][1].callback(link)
        return link


class LoopTests(SynchronousTestCase):
    """
    Register, dial, serve, and again.
    """

    def test_first_attempt_at_once(self) -> None:
        """
        Starting registers at once, then dials the URL the registration returned, and logs
        C{connected}.
        """
        log = EventLog(self)
        rig = Rig()
        rig.service.startService()
        self.assertEqual(len(rig.registrations), 1)
        rig.connect()
        self.assertEqual(rig.dials[0][0], "ws://gw/codex-exec/e?token=1")
        self.assertEqual(len(log.named("executor.connected")), 1)
        self.assertEqual(rig.service.connections, 1)

    def test_backoff_on_failures(self) -> None:
        """
        Failed registrations are retried after 1, 1.5, 2.25, 3.375 … s, capped at 60 s.
        """
        rig = Rig()
        rig.service.startService()
        delays = []
        for attempt in range(14):
            rig.registrations[-1].errback(RegistrationFailed("HTTP 503"))
            [call] = rig.clock.getDelayedCalls()
            delays.append(call.getTime() - rig.clock.seconds())
            rig.clock.advance(delays[-1] + 1e-9)
            self.assertEqual(len(rig.registrations), attempt + 2)
        for got, want in zip(delays, [min(60.0, 1.5**n) for n in range(14)], strict=True):
            self.assertAlmostEqual(got, want, places=6)

    def test_dial_failure_retried(self) -> None:
        """
        A failed dial goes back to registering (a fresh ticket) after the backoff's delay.
        """
        rig = Rig()
        rig.service.startService()
        rig.registrations[-1].callback("ws://gw/1")
        rig.dials[-1][1].errback(Exception("handshake failed"))
        self.assertEqual(len(rig.registrations), 1)
        rig.clock.advance(1)
        self.assertEqual(len(rig.registrations), 2)

    def test_reconnect_after_disconnect(self) -> None:
        """
        After a disconnect the executor registers again (a new ticket for every dial) after the next
        delay; C{disconnected} is logged with code and reason.
        """
        log = EventLog(self)
        rig = Rig()
        rig.service.startService()
        rig.connect().drop(1000, "inbound closed")
        [gone] = log.named("executor.disconnected")
        self.assertEqual((gone["code"], gone["reason"]), (1000, "inbound closed"))
        rig.clock.advance(0.999)
        self.assertEqual(len(rig.registrations), 1)
        rig.clock.advance(0.001)
        self.assertEqual(len(rig.registrations), 2)
        rig.connect()
        self.assertEqual(rig.dials[1][0], "ws://gw/codex-exec/e?token=2")

    def test_short_connections_keep_backing_off(self) -> None:
        """
        Connections that live less than 30 s do not reset the backoff: the delays keep growing.
        """
        rig = Rig()
        rig.service.startService()
        delays = []
        for _ in range(4):
            link = rig.connect()
            rig.clock.advance(29)
            link.drop()
            before = rig.clock.seconds()
            count = len(rig.registrations)
            while len(rig.registrations) == count:
                rig.clock.advance(0.125)
            delays.append(rig.clock.seconds() - before)
        self.assertEqual(delays, [1.0, 1.5, 2.25, 3.375])

    def test_stable_connection_resets(self) -> None:
        """
        A connection that lived 30 s resets the backoff: the next delay is 1 s again.
        """
        rig = Rig()
        rig.service.startService()
        rig.registrations[-1].errback(RegistrationFailed("x"))
        rig.clock.advance(1)
        rig.registrations[-1].errback(RegistrationFailed("x"))
        rig.clock.advance(1.5)
        link = rig.connect()
        rig.clock.advance(30)
        link.drop()
        rig.clock.advance(0.999)
        self.assertEqual(len(rig.registrations), 3)
        rig.clock.advance(0.001)
        self.assertEqual(len(rig.registrations), 4)

    def test_rejection_is_fatal(self) -> None:
        """
        A 4xx registration answer logs C{registration rejected (<status>): <body>} at error level,
        ends the process with status 1, and is never retried.
        """
        log = EventLog(self)
        rig = Rig()
        rig.service.startService()
        rig.registrations[-1].errback(RegistrationRejected(401, '{"error":"unauthorized"}'))
        self.assertEqual(rig.fatal, [(1, 'registration rejected (401): {"error":"unauthorized"}')])
        [event] = log.named("executor.registration_rejected")
        self.assertEqual((event["status"], event["log_level"].name), (401, "error"))
        rig.clock.advance(3600)
        self.assertEqual(len(rig.registrations), 1)

    def test_rejection_after_reconnect(self) -> None:
        """
        A token rejected on a later registration (the executor was deleted) is fatal too.
        """
        rig = Rig()
        rig.service.startService()
        rig.connect().drop()
        rig.clock.advance(1)
        rig.registrations[-1].errback(RegistrationRejected(403, "gone"))
        self.assertEqual(rig.fatal, [(1, "registration rejected (403): gone")])


class StopTests(SynchronousTestCase):
    """
    Stopping the service (SIGTERM/SIGINT).
    """

    def test_stop_while_connected(self) -> None:
        """
        Stopping closes the websocket with 1001, ends every session (children told to end), fires
        once they all exited, never reconnects, and clears the exit signal so that twist exits 0.
        """
        rig = Rig()
        rig.clock._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        rig.service.startService()
        link = rig.connect()
        rig.mux.frame_received(relayframe.resume_frame("s1"))
        child = rig.spawner.children[0]
        child.exits_on_eof = False
        stopped = rig.service.stopService()
        self.assertEqual(link.closed_with, (1001, "executor shutting down"))
        self.assertTrue(child.stdin_closed)
        self.assertNoResult(stopped)
        rig.clock.advance(TERM_AFTER + KILL_AFTER)
        self.successResultOf(stopped)
        self.assertEqual(child.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertIsNone(rig.clock._exitSignal)  # type: ignore[attr-defined]
        rig.clock.advance(3600)
        self.assertEqual(len(rig.registrations), 1)

    def test_stop_while_waiting(self) -> None:
        """
        Stopping during the backoff wait cancels it: no registration is made afterwards.
        """
        rig = Rig()
        rig.service.startService()
        rig.registrations[-1].errback(RegistrationFailed("x"))
        self.successResultOf(rig.service.stopService())
        rig.clock.advance(3600)
        self.assertEqual(len(rig.registrations), 1)

    def test_stop_while_registering(self) -> None:
        """
        Stopping during a registration cancels it.
        """
        rig = Rig()
        rig.service.startService()
        pending = rig.registrations[-1]
        self.successResultOf(rig.service.stopService())
        self.assertTrue(pending.called)  # cancelled
        self.assertEqual(rig.fatal, [])

    def test_stop_while_dialing(self) -> None:
        """
        Stopping during a dial cancels it; nothing is retried.
        """
        rig = Rig()
        rig.service.startService()
        rig.registrations[-1].callback("ws://gw/1")
        pending = rig.dials[-1][1]
        self.successResultOf(rig.service.stopService())
        self.assertTrue(pending.called)  # cancelled
        rig.clock.advance(3600)
        self.assertEqual(len(rig.registrations), 1)


class OrphanTests(SynchronousTestCase):
    """
    The service's use of L{OrphanGuard}.
    """

    def table_with_orphan(self, rig: Rig) -> None:
        """
        An adopted orphan (pid 300, own session) under the executor (pid 100).
        """
        rig.table.add(100, 1, 100, 100)
        rig.table.add(300, 100, 300, 300)

    def test_idle_kills_adopted(self) -> None:
        """
        When the last session is gone, adopted processes are killed; while one lives, they are not.
        """
        rig = Rig(orphans=True)
        self.table_with_orphan(rig)
        rig.service.startService()
        self.assertTrue(rig.service.subreaper)
        rig.connect()
        rig.mux.frame_received(relayframe.resume_frame("a"))
        rig.mux.frame_received(relayframe.resume_frame("b"))
        rig.mux.frame_received(relayframe.reset_frame("a", "x"))
        self.assertEqual(rig.table.killed, [])
        rig.mux.frame_received(relayframe.reset_frame("b", "x"))
        self.assertEqual(rig.table.killed, [(300, signal.SIGKILL)])
        self.successResultOf(rig.service.stopService())

    def test_zombies_reaped_periodically(self) -> None:
        """
        Adopted zombies are reaped every 5 s; stopping kills what is left and stops the reaping.
        """
        rig = Rig(orphans=True)
        self.table_with_orphan(rig)
        rig.table.add(310, 100, 310, 310, state="Z")
        rig.service.startService()
        rig.clock.advance(REAP_INTERVAL)
        self.assertEqual(rig.table.reaped, [310])
        self.successResultOf(rig.service.stopService())
        self.assertEqual(rig.table.killed, [(300, signal.SIGKILL)])
        self.assertEqual(rig.clock.getDelayedCalls(), [])

    def test_without_subreaper(self) -> None:
        """
        Where the process cannot be a subreaper, nothing adopted is touched.
        """
        rig = Rig(orphans=True)
        self.table_with_orphan(rig)
        rig.service._become_subreaper = lambda: False
        rig.service.startService()
        self.assertFalse(rig.service.subreaper)
        self.successResultOf(rig.service.stopService())
        self.assertEqual(rig.table.killed, [])
