"""
Tests for L{codexgw.execgw.registry}: the connection registry, route tables, inbound close and stream
slots of C{exec-gateway.md} §7.1–§7.2 (acceptance item 87).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.execgw.registry import (
    ConnRegistry,
    IBridgeSession,
    IInboundConnection,
    InboundConnectionBase,
    Slot,
    SlotReleasedTwice,
    StreamRoutes,
    StreamSlots,
)


@implementer(IBridgeSession)
class FakeSession:
    """
    A bridge session that records its closes. The first close cleans up like a real bridge: it
    removes its route (if it has a stream), detaches from its inbound and releases its slot.
    """

    def __init__(
        self,
        name: str = "",
        inbound: InboundConnectionBase | None = None,
        slot: Slot | None = None,
        events: list[str] | None = None,
    ) -> None:
        self.name = name
        self.inbound = inbound
        self.stream_id = ""
        self.slot = slot
        self.events = events if events is not None else []
        self.closes: list[tuple[int, str]] = []

    @property
    def closed(self) -> bool:
        """
        Whether L{close} was called at least once.
        """
        return bool(self.closes)

    def close(self, code: int, reason: str) -> None:
        """
        Record the close; only the first one cleans up.
        """
        self.closes.append((code, reason))
        if len(self.closes) > 1:
            return
        self.events.append(self.name)
        if self.inbound is not None:
            if self.stream_id:
                self.inbound.remove_route(self.stream_id, self)
            self.inbound.detach(self)
        if self.slot is not None:
            self.slot.release()

    def __repr__(self) -> str:
        return f"FakeSession({self.name!r})"


class FakeInbound(InboundConnectionBase):
    """
    An inbound connection whose websocket close is recorded (also as C{"ws"} in C{events}).
    """

    def __init__(self, exe_id: str = "exe_1", events: list[str] | None = None) -> None:
        super().__init__()
        self.exe_id = exe_id
        self.events = events if events is not None else []
        self.ws_closes: list[tuple[int, str]] = []

    def _close_ws(self, code: int, reason: str) -> None:
        self.events.append("ws")
        self.ws_closes.append((code, reason))

    def open_session(self, name: str, stream_id: str = "") -> FakeSession:
        """
        Attach a new session sharing this connection's event log, routed on C{stream_id} if given.
        """
        session = FakeSession(name, inbound=self, events=self.events)
        self.attach(session)
        if stream_id:
            session.stream_id = stream_id
            self.add_route(stream_id, session)
        return session


SESSION_CLOSED = (1000, "bridge session closed")


class ConnRegistryTests(SynchronousTestCase):
    """
    L{ConnRegistry}: at most one connection per executor; only the registered one can unregister.
    """

    def test_registerLookup(self) -> None:
        """
        A registered connection is found by its id; others are absent.
        """
        registry: ConnRegistry[FakeInbound] = ConnRegistry()
        conn = FakeInbound()
        self.assertIsNone(registry.register("exe_1", conn))
        self.assertIs(registry.lookup("exe_1"), conn)
        self.assertIsNone(registry.lookup("exe_2"))
        self.assertIn("exe_1", registry)
        self.assertEqual(len(registry), 1)

    def test_registerReturnsDifferentPrior(self) -> None:
        """
        Registering a second connection returns the first (to be evicted); the same object again
        returns C{None}.
        """
        registry: ConnRegistry[FakeInbound] = ConnRegistry()
        first, second = FakeInbound(), FakeInbound()
        registry.register("exe_1", first)
        self.assertIs(registry.register("exe_1", second), first)
        self.assertIs(registry.lookup("exe_1"), second)
        self.assertIsNone(registry.register("exe_1", second))
        self.assertIs(registry.lookup("exe_1"), second)

    def test_lateUnregisterOfOldConnection(self) -> None:
        """
        A late unregister of the evicted connection never removes the newer one.
        """
        registry: ConnRegistry[FakeInbound] = ConnRegistry()
        old, new = FakeInbound(), FakeInbound()
        registry.register("exe_1", old)
        registry.register("exe_1", new)
        self.assertFalse(registry.unregister("exe_1", old))
        self.assertIs(registry.lookup("exe_1"), new)
        self.assertTrue(registry.unregister("exe_1", new))
        self.assertIsNone(registry.lookup("exe_1"))
        self.assertFalse(registry.unregister("exe_1", new))
        self.assertFalse(registry.unregister("exe_unknown", new))

    def test_connectedIdsIsSnapshot(self) -> None:
        """
        L{ConnRegistry.connected_ids} and L{ConnRegistry.connections} are copies: later changes do not
        show up in them.
        """
        registry: ConnRegistry[FakeInbound] = ConnRegistry()
        a, b = FakeInbound("a"), FakeInbound("b")
        registry.register("a", a)
        registry.register("b", b)
        ids = registry.connected_ids()
        conns = registry.connections()
        self.assertEqual(sorted(ids), ["a", "b"])
        registry.unregister("a", a)
        registry.register("c", FakeInbound("c"))
        self.assertEqual(sorted(ids), ["a", "b"])
        self.assertEqual(conns, [a, b])
        self.assertEqual(sorted(registry.connected_ids()), ["b", "c"])


class StreamRoutesTests(SynchronousTestCase):
    """
    L{StreamRoutes}: add evicts, remove only the matching session.
    """

    def test_addReturnsEvicted(self) -> None:
        """
        Adding a route for a taken stream id returns the session it replaces; re-adding the same
        session returns C{None}.
        """
        routes = StreamRoutes()
        a, b = FakeSession("a"), FakeSession("b")
        self.assertIsNone(routes.add_route("s1", a))
        self.assertIs(routes.add_route("s1", b), a)
        self.assertIs(routes.get("s1"), b)
        self.assertIsNone(routes.add_route("s1", b))
        self.assertEqual(len(routes), 1)
        self.assertFalse(a.closed, "the caller closes the evicted session, not the table")

    def test_removeOnlyMatching(self) -> None:
        """
        Removing with a session the route no longer points to is a no-op.
        """
        routes = StreamRoutes()
        a, b = FakeSession("a"), FakeSession("b")
        routes.add_route("s1", a)
        routes.add_route("s1", b)
        self.assertFalse(routes.remove_route("s1", a))
        self.assertIs(routes.get("s1"), b)
        self.assertTrue(routes.remove_route("s1", b))
        self.assertIsNone(routes.get("s1"))
        self.assertNotIn("s1", routes)
        self.assertFalse(routes.remove_route("s1", b))

    def test_snapshotAndClear(self) -> None:
        """
        L{StreamRoutes.snapshot_and_clear} returns the sessions in route order and empties the table.
        """
        routes = StreamRoutes()
        a, b, c = FakeSession("a"), FakeSession("b"), FakeSession("c")
        routes.add_route("s2", b)
        routes.add_route("s1", a)
        routes.add_route("s3", c)
        self.assertEqual(routes.sessions(), [b, a, c])
        self.assertEqual(routes.snapshot_and_clear(), [b, a, c])
        self.assertEqual(len(routes), 0)
        self.assertEqual(routes.snapshot_and_clear(), [])


class InboundConnectionTests(SynchronousTestCase):
    """
    L{InboundConnectionBase}: closing closes every bridge once, then the websocket once.
    """

    def test_interfaces(self) -> None:
        """
        The base class provides L{IInboundConnection}; the fake session provides L{IBridgeSession}.
        """
        self.assertTrue(verifyObject(IInboundConnection, FakeInbound()))
        self.assertTrue(verifyObject(IBridgeSession, FakeSession()))

    def test_closeClosesBridgesThenWs(self) -> None:
        """
        Close snapshots and clears the routes, closes each routed and attached session with 1000
        C{bridge session closed}, then closes the websocket with the given code and reason.
        """
        conn = FakeInbound()
        unrouted = conn.open_session("unrouted")
        routed = conn.open_session("routed", "s1")
        self.assertEqual(conn.close(1000, "inbound closed"), 2)
        self.assertEqual(conn.events, ["routed", "unrouted", "ws"])
        self.assertEqual(routed.closes, [SESSION_CLOSED])
        self.assertEqual(unrouted.closes, [SESSION_CLOSED])
        self.assertEqual(conn.ws_closes, [(1000, "inbound closed")])
        self.assertEqual(len(conn.routes), 0)
        self.assertEqual(conn.attached(), [])

    def test_closeOrder(self) -> None:
        """
        Routed sessions close in route order, then unrouted attached ones in attach order, each once
        although routed sessions are attached too.
        """
        conn = FakeInbound()
        a, b, c, d = (conn.open_session(name) for name in "abcd")
        for stream_id, session in (("s2", c), ("s1", a)):
            session.stream_id = stream_id
            conn.add_route(stream_id, session)
        self.assertEqual(conn.close_bridges(), 4)
        self.assertEqual(conn.events, ["c", "a", "b", "d"])
        for session in (a, b, c, d):
            self.assertEqual(session.closes, [SESSION_CLOSED])

    def test_closeIdempotent(self) -> None:
        """
        A second close closes nothing and does not close the websocket again.
        """
        conn = FakeInbound()
        session = conn.open_session("a", "s1")
        self.assertEqual(conn.close(1000, "inbound closed"), 1)
        self.assertEqual(conn.close(1001, "gateway shutting down"), 0)
        self.assertEqual(session.closes, [SESSION_CLOSED])
        self.assertEqual(conn.ws_closes, [(1000, "inbound closed")])

    def test_sessionCloseIdempotent(self) -> None:
        """
        A session already closed (here by shutdown) is not closed again by its connection's close,
        because its close is idempotent and it detached itself.
        """
        conn = FakeInbound()
        session = conn.open_session("a", "s1")
        session.close(1001, "gateway shutting down")
        session.close(1001, "gateway shutting down")
        self.assertEqual(conn.close(1001, "gateway shutting down"), 0)
        self.assertEqual(conn.events, ["a", "ws"])

    def test_closeBridgesThenClose(self) -> None:
        """
        After the connection ended by itself (L{InboundConnectionBase.close_bridges}), a later close
        (eviction) only closes the websocket.
        """
        conn = FakeInbound()
        session = conn.open_session("a")
        self.assertEqual(conn.close_bridges(), 1)
        self.assertTrue(conn.bridges_closed)
        self.assertEqual(conn.close_bridges(), 0)
        self.assertEqual(conn.ws_closes, [])
        self.assertEqual(conn.close(1000, "inbound closed"), 0)
        self.assertEqual(session.closes, [SESSION_CLOSED])
        self.assertEqual(conn.ws_closes, [(1000, "inbound closed")])

    def test_sessionCleanupDuringClose(self) -> None:
        """
        Sessions that remove their route and detach while being closed do not disturb the close.
        """
        conn = FakeInbound()
        sessions = [conn.open_session(str(i), f"s{i}") for i in range(5)]
        self.assertEqual(conn.close(1000, "inbound closed"), 5)
        for session in sessions:
            self.assertEqual(session.closes, [SESSION_CLOSED])

    def test_attachAfterClose(self) -> None:
        """
        A bridge attaching to a connection whose bridges were closed is closed at once.
        """
        conn = FakeInbound()
        conn.close(1000, "inbound closed")
        late = FakeSession("late")
        self.assertFalse(conn.attach(late))
        self.assertEqual(late.closes, [SESSION_CLOSED])
        self.assertEqual(conn.attached(), [])

    def test_detach(self) -> None:
        """
        A detached session is not closed with the connection; detaching an unknown session is a no-op.
        """
        conn = FakeInbound()
        kept = conn.open_session("kept")
        gone = conn.open_session("gone")
        conn.detach(gone)
        conn.detach(FakeSession("stranger"))
        self.assertEqual(conn.attached(), [kept])
        conn.close(1000, "inbound closed")
        self.assertEqual(gone.closes, [])
        self.assertEqual(kept.closes, [SESSION_CLOSED])

    def test_routeEviction(self) -> None:
        """
        A second session on a routed stream id takes the route; the evicted session's cleanup
        leaves the new route in place.
        """
        conn = FakeInbound()
        old = conn.open_session("old", "s1")
        new = conn.open_session("new")
        new.stream_id = "s1"
        self.assertIs(conn.add_route("s1", new), old)
        old.close(*SESSION_CLOSED)
        self.assertIs(conn.routes.get("s1"), new)
        self.assertEqual(conn.attached(), [new])
        self.assertFalse(conn.remove_route("s1", old))
        self.assertTrue(conn.remove_route("s1", new))


class StreamSlotsTests(SynchronousTestCase):
    """
    L{StreamSlots}: a per-executor limit, counters of 0 deleted, each slot released exactly once.
    """

    def test_limit(self) -> None:
        """
        Reservations succeed up to the limit and fail beyond it; a release makes room again.
        """
        slots = StreamSlots(2)
        first = slots.reserve("exe_1")
        second = slots.reserve("exe_1")
        assert first is not None and second is not None
        self.assertIsNone(slots.reserve("exe_1"))
        self.assertIsNotNone(slots.reserve("exe_2"))
        self.assertEqual(slots.count("exe_1"), 2)
        first.release()
        self.assertEqual(slots.count("exe_1"), 1)
        self.assertIsNotNone(slots.reserve("exe_1"))

    def test_unlimited(self) -> None:
        """
        A limit of 0 means unlimited.
        """
        slots = StreamSlots(0)
        held = [slots.reserve("exe_1") for _ in range(100)]
        self.assertTrue(all(held))
        self.assertEqual(slots.count("exe_1"), 100)

    def test_zeroCountersDeleted(self) -> None:
        """
        When the last slot of an executor is released its counter disappears.
        """
        slots = StreamSlots(32)
        slot = slots.reserve("exe_1")
        assert slot is not None
        self.assertEqual(slots.counts(), {"exe_1": 1})
        slot.release()
        self.assertEqual(slots.counts(), {})
        self.assertEqual(slots.count("exe_1"), 0)

    def test_doubleRelease(self) -> None:
        """
        Releasing a slot twice raises and leaves the other slots of the executor counted.
        """
        slots = StreamSlots(32)
        slot = slots.reserve("exe_1")
        other = slots.reserve("exe_1")
        assert slot is not None and other is not None
        slot.release()
        self.assertTrue(slot.released)
        self.assertFalse(other.released)
        self.assertRaises(SlotReleasedTwice, slot.release)
        self.assertEqual(slots.count("exe_1"), 1)

    def test_negativeLimit(self) -> None:
        """
        A negative limit is refused.
        """
        self.assertRaises(ValueError, StreamSlots, -1)


EXE_IDS = st.sampled_from(["exe_a", "exe_b"])
STREAM_IDS = st.sampled_from(["s1", "s2", "s3"])


class RegistryMachine(RuleBasedStateMachine):
    """
    Executors connect, get evicted and disconnect late while bridges dial, resume (colliding), end
    and get closed; the routes, attachments and slot counters stay consistent throughout.
    """

    conns = Bundle("conns")
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.registry: ConnRegistry[FakeInbound] = ConnRegistry()
        self.slots = StreamSlots(3)
        self.all_conns: list[FakeInbound] = []
        # Every session ever opened, with its executor and inbound connection.
        self.opened: list[tuple[FakeSession, str, FakeInbound]] = []

    @rule(target=conns, exe_id=EXE_IDS)
    def connect(self, exe_id: str) -> FakeInbound:
        """
        A new inbound connection registers, evicting the prior one.
        """
        conn = FakeInbound(exe_id)
        self.all_conns.append(conn)
        prior = self.registry.register(exe_id, conn)
        if prior is not None:
            prior.close(1000, "inbound closed")
        return conn

    @rule(conn=conns)
    def disconnect(self, conn: FakeInbound) -> None:
        """
        A connection ends by itself (or an evicted one's cleanup runs late).
        """
        conn.close_bridges()
        self.registry.unregister(conn.exe_id, conn)

    @rule(target=sessions, exe_id=EXE_IDS)
    def dial(self, exe_id: str) -> FakeSession | None:
        """
        A bridge reserves a slot, finds the inbound and attaches; otherwise it releases its slot.
        """
        slot = self.slots.reserve(exe_id)
        if slot is None:
            assert self.slots.count(exe_id) == self.slots.limit
            return None
        conn = self.registry.lookup(exe_id)
        if conn is None:
            slot.release()
            return None
        session = FakeSession(inbound=conn, slot=slot)
        self.opened.append((session, exe_id, conn))
        assert conn.attach(session)
        return session

    @rule(session=sessions, stream_id=STREAM_IDS)
    def resume(self, session: FakeSession | None, stream_id: str) -> None:
        """
        An open, unrouted bridge sends its Resume and takes the route, evicting a colliding session.
        """
        if session is None or session.closed or session.stream_id:
            return
        assert session.inbound is not None
        session.stream_id = stream_id
        evicted = session.inbound.add_route(stream_id, session)
        if evicted is not None:
            evicted.close(1000, "bridge session closed")

    @rule(session=sessions)
    def end(self, session: FakeSession | None) -> None:
        """
        A bridge ends from its client side (repeat closes are no-ops).
        """
        if session is not None:
            session.close(1000, "client")

    @invariant()
    def slots_match_open_sessions(self) -> None:
        """
        Each executor's counter equals its open sessions; no counter is zero or negative.
        """
        for exe_id in ("exe_a", "exe_b"):
            live = sum(1 for s, e, _ in self.opened if e == exe_id and not s.closed)
            assert self.slots.count(exe_id) == live, (exe_id, self.slots.counts(), live)
        assert all(count > 0 for count in self.slots.counts().values())

    @invariant()
    def routes_point_to_open_attached_sessions(self) -> None:
        """
        Every route and attachment is an open session of that connection, which is still live.
        """
        for conn in self.all_conns:
            if conn.bridges_closed:
                assert len(conn.routes) == 0 and conn.attached() == []
            attached = conn.attached()
            for session in conn.routes.sessions():
                assert isinstance(session, FakeSession)
                assert not session.closed and session in attached
            for session in attached:
                assert isinstance(session, FakeSession)
                assert not session.closed and session.inbound is conn

    @invariant()
    def open_sessions_are_attached(self) -> None:
        """
        An open session is attached to a connection whose bridges are not closed.
        """
        for session, _, conn in self.opened:
            if not session.closed:
                assert not conn.bridges_closed and session in conn.attached()

    @invariant()
    def registry_holds_newest_live_connection(self) -> None:
        """
        Each executor's newest connection is registered while it lives; no other connection is.
        """
        for exe_id in ("exe_a", "exe_b"):
            mine = [conn for conn in self.all_conns if conn.exe_id == exe_id]
            expected = mine[-1] if mine and not mine[-1].bridges_closed else None
            assert self.registry.lookup(exe_id) is expected, exe_id

    @invariant()
    def resumed_sessions_hold_their_route(self) -> None:
        """
        An open session that sent its Resume is the one its stream id routes to.
        """
        for session, _, conn in self.opened:
            if not session.closed and session.stream_id:
                assert conn.routes.get(session.stream_id) is session

    @invariant()
    def sessions_closed_once(self) -> None:
        """
        A session closed by its connection got exactly one C{bridge session closed}.
        """
        for session, _, _ in self.opened:
            assert session.closes.count(SESSION_CLOSED) <= 1


class RegistryMachineTests(SynchronousTestCase):
    """
    Runs L{RegistryMachine}.
    """

    def test_stateMachine(self) -> None:
        """
        Interleavings of register/evict/route/close/reserve/release keep routes and slot counters
        consistent: no negative, zero or leaked counters.
        """
        run_state_machine_as_test(RegistryMachine, settings=settings(max_examples=200, deadline=None))
