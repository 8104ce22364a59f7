"""
The exec gateway's relay core: who is connected, which bridges are open, and the rules that span them.

A L{Switchboard} owns the L{ConnRegistry}, the L{StreamSlots}, the L{RevokedSet} and the set of open
bridges; it builds the L{InboundSession} and L{BridgeSession} of each new websocket, reaps idle
bridges (§9.3), closes everything on shutdown (§9.6) and keeps the relay metrics. The HTTP layer
(L{codexgw.execgw.web}) runs the pre-upgrade checks against it; the sessions report their lifecycle to
it. It does no I/O of its own except best-effort C{update_last_seen} calls to the store.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from codexgw.execgw.bridge import BridgeSession
from codexgw.execgw.inbound import InboundSession
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.peer import CLOSE_GOING_AWAY, CLOSE_POLICY, IFramePeer
from codexgw.execgw.registry import ConnRegistry, Slot, StreamSlots
from codexgw.execgw.revoked import RevokedSet
from codexgw.execgw.store import IStore
from codexgw.tokens import CapClaims, UsedTickets

log = Logger()


#: How often expired revoked turns and used tickets are forgotten (§2, §7.3, §7.4).
PRUNE_INTERVAL = 60.0


def idle_scan_interval(idle_timeout: float) -> float:
    """
    How often idle bridges are looked for: C{min(max(T/10, 50 ms), 30 s)} (§9.3).
    """
    return min(max(idle_timeout / 10, 0.05), 30.0)


class Switchboard:
    """
    The relay state of one exec gateway process.

    @ivar registry: live inbound connections by C{exe_id}.
    @ivar slots: reserved bridge slots per executor.
    @ivar revoked: revoked turn ids.
    @ivar used_tickets: ws tickets already accepted (the replay guard).
    @ivar bridges: every bridge websocket from its upgrade until it ends.
    @ivar shutting_down: set by L{shut_down}; sessions then originate no Reset frames.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: IStore,
        metrics: ExecMetrics,
        *,
        max_streams_per_executor: int,
        buffer_bytes: int,
        idle_timeout: float,
    ) -> None:
        self.clock = clock
        self.store = store
        self.metrics = metrics
        self.buffer_bytes = buffer_bytes
        self.idle_timeout = idle_timeout
        self.registry: ConnRegistry[InboundSession] = ConnRegistry()
        self.slots = StreamSlots(max_streams_per_executor)
        self.revoked = RevokedSet(clock)
        self.used_tickets = UsedTickets()
        self._last_ticket_exp: dict[str, int] = {}
        self.bridges: set[BridgeSession] = set()
        self.shutting_down = False
        self._idle_scan: LoopingCall | None = None
        self._pruner: LoopingCall | None = None
        self._frames = {d: metrics.frames.labels(direction=d) for d in ("to_executor", "to_bridge")}
        self._frame_bytes = {
            d: metrics.frame_bytes.labels(direction=d) for d in ("to_executor", "to_bridge")
        }

    # lifecycle

    def start(self) -> None:
        """
        Start the periodic tasks: the idle-bridge scan (none when the idle timeout is 0) and the
        pruner of revoked turns and used tickets.
        """
        if self.idle_timeout > 0 and self._idle_scan is None:
            self._idle_scan = self._every(idle_scan_interval(self.idle_timeout), self.reap_idle)
        if self._pruner is None:
            self._pruner = self._every(PRUNE_INTERVAL, self.prune)

    def _every(self, interval: float, task: Callable[[], None]) -> LoopingCall:
        call = LoopingCall(task)
        call.clock = self.clock
        call.start(interval, now=False)
        return call

    def stop(self) -> None:
        """
        Stop the periodic tasks.
        """
        for call in (self._idle_scan, self._pruner):
            if call is not None and call.running:
                call.stop()
        self._idle_scan = self._pruner = None

    def unique_ticket_exp(self, exe_id: str, exp: int) -> int:
        """
        The expiry to mint an executor's next ws ticket with: C{exp}, or one second past the last
        ticket's if that is not earlier.

        A ticket is C{<exe_id>.<exp>.<signature>}, so two registrations of one executor within the
        same second would get the same ticket, and the second connection would be refused as a
        replay (which an executor takes as fatal). Moving the expiry on by a second makes each
        ticket distinct at the cost of that second of validity.
        """
        exp = max(exp, self._last_ticket_exp.get(exe_id, 0) + 1)
        self._last_ticket_exp[exe_id] = exp
        return exp

    def prune(self) -> None:
        """
        Forget revoked turns, used tickets and last ticket expiries that have expired (every
        L{PRUNE_INTERVAL} seconds).
        """
        now = int(self.clock.seconds())
        self.revoked.prune()
        self.used_tickets.prune(now)
        for exe_id in [e for e, exp in self._last_ticket_exp.items() if exp <= now]:
            del self._last_ticket_exp[exe_id]
        self.metrics.revoked_turns.set(len(self.revoked))

    def shut_down(self) -> None:
        """
        Close every bridge, then every inbound, with 1001 C{gateway shutting down}; no Reset frames.
        """
        self.shutting_down = True
        self.stop()
        for bridge in list(self.bridges):
            bridge.shut_down()
        for inbound in self.registry.connections():
            inbound.close(CLOSE_GOING_AWAY, "gateway shutting down")

    def reap_idle(self) -> None:
        """
        Reap every open bridge that carried no relay frame for the idle timeout.
        """
        now = self.clock.seconds()
        for bridge in list(self.bridges):
            bridge.reap_if_idle(now, self.idle_timeout)

    # building sessions (the HTTP layer calls these after its checks)

    def new_inbound(self, exe_id: str, peer: IFramePeer, user_agent: str = "") -> InboundSession:
        """
        The relay logic of a new executor websocket.
        """
        return InboundSession(self, exe_id, peer, user_agent)

    def new_bridge(
        self, inbound: InboundSession, claims: CapClaims, slot: Slot, peer: IFramePeer
    ) -> BridgeSession:
        """
        The relay logic of a new bridge websocket, holding the slot reserved for it.
        """
        bridge = BridgeSession(self, inbound, claims, slot, peer)
        self.bridges.add(bridge)
        self.metrics.bridges_active.inc()
        return bridge

    def close_executor(self, exe_id: str) -> None:
        """
        The executor was deleted: close its live inbound with 1008 C{executor deleted}.
        """
        inbound = self.registry.lookup(exe_id)
        if inbound is not None:
            inbound.close(CLOSE_POLICY, "executor deleted")

    # reports from the sessions

    def inbound_connected(self, inbound: InboundSession) -> None:
        """
        An executor connection registered.
        """
        self.metrics.inbound_connected.set(len(self.registry))
        self.metrics.inbound_connections.labels(outcome="accepted").inc()
        self._touch(inbound.exe_id)

    def inbound_disconnected(self, inbound: InboundSession) -> None:
        """
        An executor connection ended.
        """
        self.metrics.inbound_connected.set(len(self.registry))
        self._touch(inbound.exe_id)

    def bridge_paired(self, bridge: BridgeSession) -> None:
        """
        A bridge's Resume arrived and its stream is routed.
        """
        self.metrics.bridge_dials.labels(outcome="paired").inc()

    def first_frame_rejected(self) -> None:
        """
        A bridge was closed for its first frame.
        """
        self.metrics.bridge_dials.labels(outcome="first_frame").inc()

    def bridge_ended(self, bridge: BridgeSession, code: int, reason: str, cause: str) -> None:
        """
        A bridge websocket ended (the session already released its slot).
        """
        if bridge in self.bridges:
            self.bridges.discard(bridge)
            self.metrics.bridges_active.dec()
        self.metrics.bridge_closed.labels(cause=cause).inc()
        log.info(
            "bridge {exe_id}/{stream_id} closed ({code} {reason})",
            event="bridge.closed",
            exe_id=bridge.exe_id,
            stream_id=bridge.stream_id,
            code=code,
            reason=reason,
            frames_in=bridge.frames_in,
            frames_out=bridge.frames_out,
            bytes_in=bridge.bytes_in,
            bytes_out=bridge.bytes_out,
            duration_s=self.clock.seconds() - bridge.opened_at,
        )

    def frame_forwarded(self, direction: str, size: int) -> None:
        """
        Count one forwarded frame.
        """
        self._frames[direction].inc()
        self._frame_bytes[direction].inc(size)

    def frame_dropped(self, where: str, why: str) -> None:
        """
        Count one dropped frame.
        """
        self.metrics.frames_dropped.labels(where=where, why=why).inc()

    def _touch(self, exe_id: str) -> None:
        d: Deferred[None] = self.store.update_last_seen(exe_id)

        def logged(failure: Failure) -> None:
            log.warn(
                "update_last_seen failed: {error}",
                event="store.error",
                op="update_last_seen",
                error=failure.value,
            )

        d.addErrback(logged)
