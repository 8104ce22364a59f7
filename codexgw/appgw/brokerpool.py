"""
The broker's connection pool (C{app-gateway.md} §8.5): at most one L{Conn} per workspace, dialled on
first use, reused while open, closed by a reaper once idle.

L{BrokerPool.get} asks the supervisor for the workspace's app-server (spawning it if needed), then
dials and handshakes (L{codexgw.appgw.broker.open_conn}); concurrent callers of one workspace share
that single dial. A Conn leaves the pool the moment it becomes unusable (closed by anyone, its
app-server ended, its link dropped), so the next C{get} dials again — also after a timed-out turn
closed it.

Decisions where the spec is silent:
 - C{get} fails only with L{TransportError}s (ensure failures classified by
   L{codexgw.appgw.broker.transport_error}), except for an empty id (L{WorkspaceRequired}).
 - A caller that cancels its C{get} gives up only its own wait; the dial goes on for the others and
   its Conn enters the pool.
 - C{close} fails waiting C{get}s and the waiters of every Conn with C{wsDisconnect}
   C{gateway shutting down}, cancels dials in progress (their ensure gives up its spawn-queue place),
   and makes later C{get}s fail the same way. Its Deferred fires once every Conn's link has ended
   (bounded by Autobahn's 2 s closing handshake).
 - The reaper closes an idle Conn with 1000 C{broker idle}.
"""

from __future__ import annotations

from typing import Final, cast

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from codexgw.appgw.broker import (
    CLOSE_NORMAL,
    CRASH_GRACE,
    SHUTTING_DOWN,
    Conn,
    Connector,
    TransportError,
    WorkspaceRequired,
    WSDisconnect,
    open_conn,
    transport_error,
    websocket_connector,
)
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.supervision import ISupervisor

#: Shortest reaper period, seconds.
MIN_REAP_INTERVAL: Final = 0.05

log = Logger()


class BrokerPool:
    """
    One broker L{Conn} per workspace (the spec's C{Pool}).

    @ivar idle_ttl: seconds without traffic after which an unbusy Conn is closed.
    """

    def __init__(
        self,
        supervisor: ISupervisor,
        metrics: AppMetrics | None,
        reactor: IReactorTime,
        idle_ttl: float,
        connector: Connector | None = None,
        crash_grace: float = CRASH_GRACE,
    ) -> None:
        """
        Start the idle reaper (every C{idle_ttl / 4}, at least L{MIN_REAP_INTERVAL}).

        @param supervisor: gives each workspace's app-server; the Conns attach to it.
        @param metrics: given to every Conn.
        @param reactor: drives the reaper and every Conn's timeouts; also dials, unless
            C{connector} is given.
        @param idle_ttl: C{CXG_BROKER_POOL_IDLE_TTL} in seconds (> 0).
        @param connector: opens links (default: websockets on C{reactor}).
        @param crash_grace: see L{codexgw.appgw.broker.CRASH_GRACE}.
        """
        self.idle_ttl = idle_ttl
        self._supervisor = supervisor
        self._metrics = metrics
        self._connector = connector or websocket_connector(reactor)
        self._crash_grace = crash_grace
        self._clock = reactor
        self._conns: dict[str, Conn] = {}
        self._dials: dict[str, Deferred[Conn]] = {}
        self._dial_waiters: dict[str, list[Deferred[Conn]]] = {}
        self._closed = False
        self._closing: list[Conn] = []
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = reactor
        self._reaper.start(max(idle_ttl / 4, MIN_REAP_INTERVAL), now=False).addErrback(
            lambda f: log.failure("broker pool reaper stopped", f)
        )

    def conn(self, workspace_id: str) -> Conn | None:
        """
        The workspace's pooled Conn, if it has one.
        """
        return self._conns.get(workspace_id)

    def get(self, workspace_id: str) -> Deferred[Conn]:
        """
        The workspace's open Conn: the pooled one, else a new one (single-flight per workspace).

        @return: fails with L{WorkspaceRequired} for C{""}, else with a L{TransportError}.
            Cancelling it abandons only this caller's wait.
        """
        if not workspace_id:
            return fail(WorkspaceRequired())
        if self._closed:
            return fail(WSDisconnect(SHUTTING_DOWN))
        conn = self._conns.get(workspace_id)
        if conn is not None and conn.is_open:
            return succeed(conn)
        waiters = self._dial_waiters.setdefault(workspace_id, [])

        def abandon(d: Deferred[Conn]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiting: Deferred[Conn] = Deferred(abandon)
        waiters.append(waiting)
        if workspace_id not in self._dials:
            dialing = ensureDeferred(self._dial(workspace_id))
            self._dials[workspace_id] = dialing
            dialing.addBoth(self._dialed, workspace_id)
        return waiting

    async def _dial(self, workspace_id: str) -> Conn:
        try:
            handle = await self._supervisor.ensure(workspace_id)
            return await open_conn(
                handle, self._supervisor, self._connector, self._clock, self._metrics, self._crash_grace
            )
        except TransportError:
            raise
        except Exception as e:
            raise transport_error(e) from None

    def _dialed(self, result: Conn | Failure, workspace_id: str) -> None:
        self._dials.pop(workspace_id, None)
        waiters = self._dial_waiters.pop(workspace_id, [])
        if isinstance(result, Conn) and self._closed:
            self._close_conn(result)
        if self._closed:
            result = Failure(WSDisconnect(SHUTTING_DOWN))
        if isinstance(result, Conn):
            conn = result
            self._conns[workspace_id] = conn
            conn.when_unusable(lambda c: self._drop(workspace_id, c))
            for d in waiters:
                d.callback(conn)
            return
        error = cast(BaseException, result.value)
        if not isinstance(error, TransportError | WorkspaceRequired):
            error = transport_error(error)
        for d in waiters:
            d.errback(error)

    def _drop(self, workspace_id: str, conn: Conn) -> None:
        if self._conns.get(workspace_id) is conn:
            del self._conns[workspace_id]

    def _reap(self) -> None:
        now = self._clock.seconds()
        for conn in list(self._conns.values()):
            if conn.is_open and not conn.busy and now - conn.last_activity >= self.idle_ttl:
                log.debug("broker idle", workspace_id=conn.workspace_id)
                conn.close(CLOSE_NORMAL, "broker idle")

    def _close_conn(self, conn: Conn) -> None:
        self._closing.append(conn)
        conn.close(CLOSE_NORMAL, "gateway closing", WSDisconnect(SHUTTING_DOWN))

    def close(self) -> Deferred[None]:
        """
        Stop the reaper and close every Conn (idempotent).

        @return: fires once the links of every Conn it closed have ended.
        """
        if not self._closed:
            self._closed = True
            if self._reaper.running:
                self._reaper.stop()
            for conn in list(self._conns.values()):
                self._close_conn(conn)
            self._conns.clear()
            for dialing in list(self._dials.values()):
                dialing.cancel()
        done = DeferredList([conn.wait_closed() for conn in self._closing], consumeErrors=True)
        return done.addCallback(lambda _: None)
