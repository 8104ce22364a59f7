"""
Tests for L{codexgw.appgw.brokerpool}: one broker Conn per workspace, single-flight dials, the idle
reaper and closing (C{app-gateway.md} §8.5; acceptance item 59).

The pool runs over L{tests.appgw.test_broker.FakeConnector} links, a
L{codexgw.testing.fakesupervisor.FakeSupervisor} and a L{Clock}; C{tests.appgw.test_turns} drives it
against the fake app-server over real sockets.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.broker import (
    CapacityExceeded,
    Conn,
    DialFailed,
    SubprocessCrash,
    WorkspaceRequired,
    WSDisconnect,
)
from codexgw.appgw.brokerpool import MIN_REAP_INTERVAL, BrokerPool
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.supervision import (
    AppServerHandle,
    EnsureError,
    SpawnCapacityError,
    SupervisorStopping,
)
from codexgw.testing.fakesupervisor import FakeSupervisor
from tests.appgw.test_broker import FakeConnector, failure_of


class PoolTestCase(SynchronousTestCase):
    """
    A pool over fake links, with an idle TTL of 100 ms.
    """

    ttl = 0.1

    def setUp(self) -> None:
        """
        A pool over fake links.
        """
        self.clock = Clock()
        self.supervisor = FakeSupervisor()
        self.connector = FakeConnector()
        self.metrics = AppMetrics()
        self.pool = BrokerPool(
            self.supervisor, self.metrics, self.clock, self.ttl, connector=self.connector
        )
        self.addCleanup(self.pool.close)

    def get(self, workspace_id: str = "ws_a") -> Conn:
        """
        The pool's Conn for C{workspace_id}, which must be ready at once.
        """
        return self.successResultOf(self.pool.get(workspace_id))


class GetTests(PoolTestCase):
    """
    L{BrokerPool.get}.
    """

    def test_empty(self) -> None:
        """
        An empty workspace id fails with C{workspaceID required}.
        """
        error = failure_of(self.pool.get(""))
        self.assertEqual((type(error), str(error)), (WorkspaceRequired, "workspaceID required"))
        self.assertEqual(self.supervisor.ensures, [])

    def test_reuse(self) -> None:
        """
        Three turns' worth of C{get} → one ensure, one dial, the same Conn; it is attached to the
        workspace as its broker connection.
        """
        conns = [self.get() for _ in range(3)]
        self.assertEqual(len(self.connector.urls), 1)
        self.assertEqual(self.supervisor.ensures, ["ws_a"])
        self.assertIs(conns[0], conns[1])
        self.assertIs(conns[1], conns[2])
        self.assertEqual(self.supervisor.attached("ws_a"), [conns[0]])
        self.assertIs(self.pool.conn("ws_a"), conns[0])

    def test_per_workspace(self) -> None:
        """
        Different workspaces get different Conns.
        """
        self.assertIsNot(self.get("ws_a"), self.get("ws_b"))
        self.assertEqual(len(self.connector.urls), 2)

    def test_single_flight(self) -> None:
        """
        Concurrent C{get}s of a workspace share one ensure and one dial.
        """
        self.supervisor.pending = []
        waiting = [self.pool.get("ws_a") for _ in range(10)]
        self.assertEqual(self.supervisor.ensures, ["ws_a"])
        for d in waiting:
            self.assertNoResult(d)
        self.supervisor.complete_pending()
        conns = {id(self.successResultOf(d)) for d in waiting}
        self.assertEqual(len(conns), 1)
        self.assertEqual(len(self.connector.urls), 1)

    def test_cancel_one(self) -> None:
        """
        Cancelling one waiting C{get} does not cancel the dial for the others.
        """
        self.supervisor.pending = []
        first, second = self.pool.get("ws_a"), self.pool.get("ws_a")
        first.cancel()
        self.assertIsInstance(failure_of(first), CancelledError)
        self.supervisor.complete_pending()
        self.successResultOf(second)
        self.assertIsNotNone(self.pool.conn("ws_a"))

    def test_ensure_errors(self) -> None:
        """
        Ensure failures are classified: capacity → C{capacityExceeded}, spawn → C{subprocessCrash},
        stopping → C{wsDisconnect}; nothing is pooled.
        """
        cases: list[tuple[Exception, type, str]] = [
            (SpawnCapacityError(2), CapacityExceeded, "spawn capacity reached (2 app-servers live)"),
            (EnsureError("spawn: no banner"), SubprocessCrash, "spawn: no banner"),
            (SupervisorStopping(), WSDisconnect, "gateway shutting down"),
        ]
        for raised, kind, message in cases:
            with self.subTest(raised=raised):
                self.supervisor.failures.append(raised)
                error = failure_of(self.pool.get("ws_a"))
                self.assertEqual((type(error), str(error)), (kind, message))
                self.assertIsNone(self.pool.conn("ws_a"))

    def test_dial_error(self) -> None:
        """
        A failed dial is C{subprocessCrash}; the next C{get} dials again.
        """
        self.connector.failure = DialFailed("refused")
        error = failure_of(self.pool.get("ws_a"))
        self.assertEqual(str(error), "dial: refused")
        self.get()
        self.assertEqual(len(self.connector.urls), 2)

    def test_closed_conn_dropped(self) -> None:
        """
        A Conn that closed (here: the app-server crashed) leaves the pool; the next C{get} ensures
        and dials again.
        """
        first = self.get()
        self.supervisor.end("ws_a", "crash", "signal 9")
        self.assertIsNone(self.pool.conn("ws_a"))
        second = self.get()
        self.assertIsNot(first, second)
        self.assertEqual(len(self.connector.urls), 2)
        self.assertEqual(self.supervisor.ensures, ["ws_a", "ws_a"])

    def test_timed_out_conn_redialled(self) -> None:
        """
        A Conn closed by a turn timeout is not reused.
        """
        conn = self.get()
        conn.attached_threads.add("t")
        turn = conn.turn("t", {}, 0.01)
        self.clock.advance(0.01)
        failure_of(turn)
        self.assertIsNot(self.get(), conn)


class ReaperTests(PoolTestCase):
    """
    The idle reaper.
    """

    def test_interval(self) -> None:
        """
        The reaper ticks every TTL/4, at least every 50 ms.
        """
        self.assertEqual(MIN_REAP_INTERVAL, 0.05)
        intervals = []
        for ttl in (0.1, 1.0, 300.0):
            pool = BrokerPool(FakeSupervisor(), None, Clock(), ttl, connector=FakeConnector())
            intervals.append(pool._reaper.interval)
            pool.close()
        self.assertEqual(intervals, [0.05, 0.25, 75.0])

    def test_idle_closed(self) -> None:
        """
        A Conn idle for the TTL (100 ms) is closed; the next C{get} dials again.
        """
        first = self.get()
        link = self.connector.links[0]
        self.clock.advance(0.05)
        self.assertTrue(first.is_open)
        self.clock.advance(0.05)
        self.assertFalse(first.is_open)
        self.assertEqual(link.closed, (1000, "broker idle"))
        self.assertIsNone(self.pool.conn("ws_a"))
        second = self.get()
        self.assertIsNot(first, second)
        self.assertEqual(len(self.connector.urls), 2)

    def test_activity_keeps(self) -> None:
        """
        Traffic resets the idle time.
        """
        conn = self.get()
        for _ in range(5):
            self.clock.advance(0.05)
            self.connector.links[0].deliver(b"{}")
        self.assertTrue(conn.is_open)

    def test_busy_kept(self) -> None:
        """
        A Conn with a pending turn is never idle, however long it is silent.
        """
        conn = self.get()
        conn.attached_threads.add("t")
        turn = conn.turn("t", {}, 3600)
        self.connector.links[0].respond("turn/start", {"turn": {"id": "u"}})
        for _ in range(100):
            self.clock.advance(0.05)
        self.assertTrue(conn.is_open)
        self.assertNoResult(turn)
        self.connector.links[0].deliver({"method": "turn/completed", "params": {"turn": {"id": "u"}}})
        self.successResultOf(turn)
        self.clock.advance(0.15)
        self.assertFalse(conn.is_open)


class CloseTests(PoolTestCase):
    """
    L{BrokerPool.close}.
    """

    def test_close(self) -> None:
        """
        C{close} closes every Conn, failing their waiters with C{gateway shutting down}; it fires once
        the links ended; a second call is fine; later C{get}s fail; the reaper stopped.
        """
        conn = self.get("ws_a")
        self.get("ws_b")
        started = conn.start_thread()
        closed = self.pool.close()
        self.successResultOf(closed)
        self.assertEqual(str(failure_of(started)), "gateway shutting down")
        self.assertEqual([link.closed for link in self.connector.links], [(1000, "gateway closing")] * 2)
        self.successResultOf(self.pool.close())
        error = failure_of(self.pool.get("ws_a"))
        self.assertEqual((type(error), str(error)), (WSDisconnect, "gateway shutting down"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_waits_for_links(self) -> None:
        """
        C{close} fires only when the links have ended.
        """
        self.get()
        link = self.connector.links[0]
        link.echo_close = False
        closed = self.pool.close()
        self.assertNoResult(closed)
        link.lose(1000, "gateway closing")
        self.successResultOf(closed)

    def test_close_during_dial(self) -> None:
        """
        A C{get} waiting for its dial fails with C{gateway shutting down}, and the ensure is
        cancelled (given up, so it fired).
        """
        self.supervisor.pending = []
        waiting = self.pool.get("ws_a")
        self.pool.close()
        error = failure_of(waiting)
        self.assertEqual((type(error), str(error)), (WSDisconnect, "gateway shutting down"))
        ensure: Deferred[AppServerHandle] = self.supervisor.pending[0][1]
        self.assertTrue(ensure.called)
        self.assertEqual(self.connector.urls, [])
