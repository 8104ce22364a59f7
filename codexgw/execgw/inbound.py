"""
One executor's inbound websocket (C{exec-gateway.md} §4.2 after the upgrade, §9.4).

An L{InboundSession} is the relay logic of one C{/codex-exec/{exe_id}} connection: it registers in the
L{ConnRegistry} (evicting an older connection for the same executor), routes the executor's frames to
the bridge of their stream without re-encoding them, carries the bridges' frames to the executor, and
applies back-pressure: when the executor stops reading, it pauses reading from every bridge attached to
it and resumes them when its transport drained.

It reads its own websocket and nothing else ever pauses that reading: one slow bridge cannot stall the
others (a bridge that does not keep up is cut by L{BridgeSession.deliver}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.logger import Logger
from zope.interface import implementer

from codexgw import relayframe
from codexgw.execgw.peer import CLOSE_GOING_AWAY, CLOSE_NORMAL, IFramePeer, IFrameReceiver
from codexgw.execgw.registry import IInboundConnection, InboundConnectionBase
from codexgw.relayframe import Undecodable

if TYPE_CHECKING:
    from codexgw.execgw.bridge import BridgeSession
    from codexgw.execgw.switchboard import Switchboard

log = Logger()


@implementer(IFrameReceiver, IInboundConnection)
class InboundSession(InboundConnectionBase):
    """
    The relay logic of one executor's inbound websocket.

    Route and attachment bookkeeping comes from L{InboundConnectionBase}; the sessions in it are
    always L{BridgeSession}s.

    @ivar opened: C{True} once the websocket handshake completed and the connection registered.
    @ivar throttled: C{True} while the executor's pending bytes exceeded the buffer bound and the
        attached bridges are paused.
    """

    def __init__(
        self, switchboard: Switchboard, exe_id: str, peer: IFramePeer, user_agent: str = ""
    ) -> None:
        super().__init__()
        self._switchboard = switchboard
        self.exe_id = exe_id
        self.peer = peer
        self.user_agent = user_agent
        self.opened = False
        self.throttled = False
        self.connected_at = switchboard.clock.seconds()
        self._lost = False

    @property
    def alive(self) -> bool:
        """
        Whether the executor is reachable through this connection: opened, and its bridges not closed.
        """
        return self.opened and not self.bridges_closed

    def _bridges(self) -> list[BridgeSession]:
        return cast("list[BridgeSession]", self.attached())

    # bridges → executor

    def send_to_executor(self, frame: bytes) -> None:
        """
        Write one frame to the executor; pause every attached bridge when it stops keeping up.
        """
        if not self.alive:
            return
        self.peer.send_frame(frame)
        self._switchboard.frame_forwarded("to_executor", len(frame))
        if not self.throttled and self.peer.pending_bytes > self._switchboard.buffer_bytes:
            self.throttled = True
            for session in self._bridges():
                session.peer.pause_reading()

    # IFrameReceiver

    def connection_opened(self) -> None:
        """
        Register, evicting an older connection of the same executor, and note the executor as seen.
        """
        if self.bridges_closed:
            return
        if self._switchboard.shutting_down:
            # The handshake finished after shut_down closed the registered connections.
            self.close(CLOSE_GOING_AWAY, "gateway shutting down")
            return
        self.opened = True
        prior = self._switchboard.registry.register(self.exe_id, self)
        if prior is not None:
            bridges = prior.close(CLOSE_NORMAL, "inbound closed")
            log.info(
                "executor {exe_id} reconnected; older connection evicted",
                event="inbound.evicted_prior",
                exe_id=self.exe_id,
                bridges_closed=bridges,
            )
        log.info(
            "executor {exe_id} connected from {peer}",
            event="inbound.connected",
            exe_id=self.exe_id,
            peer=self.peer.peer,
            user_agent=self.user_agent,
        )
        self._switchboard.inbound_connected(self)

    def frame_received(self, frame: bytes) -> None:
        """
        Forward the exact bytes to the bridge of the frame's stream, or drop the frame.
        """
        try:
            head = relayframe.peek(frame)
        except Undecodable:
            self._dropped("undecodable", "")
            return
        if not head.stream_id:
            self._dropped("missing_stream_id", "")
            return
        session = cast("BridgeSession | None", self.routes.get(head.stream_id))
        if session is None:
            # Expected after a bridge ended: the executor may still be answering.
            log.debug(
                "executor frame for unrouted stream",
                event="inbound.frame_dropped",
                exe_id=self.exe_id,
                why="no_route",
                stream_id=head.stream_id,
            )
            self._switchboard.frame_dropped("inbound", "no_route")
            return
        session.deliver(frame, head.body)

    def text_received(self) -> None:
        """
        Executors send only binary frames; text is dropped.
        """
        self._dropped("text", "")

    def write_drained(self) -> None:
        """
        The executor caught up: let the bridges send again.
        """
        if self.throttled:
            self.throttled = False
            for session in self._bridges():
                session.peer.resume_reading()

    def connection_lost(self, code: int, reason: str) -> None:
        """
        Unregister (only if still this connection) and close every bridge on it.
        """
        if self._lost:
            return
        self._lost = True
        bridges = self.close_bridges()
        if self.opened:
            self._switchboard.registry.unregister(self.exe_id, self)
            log.info(
                "executor {exe_id} disconnected ({code} {reason})",
                event="inbound.disconnected",
                exe_id=self.exe_id,
                code=code,
                reason=reason,
                bridges_closed=bridges,
                duration_s=self._switchboard.clock.seconds() - self.connected_at,
            )
            self._switchboard.inbound_disconnected(self)

    def _close_ws(self, code: int, reason: str) -> None:
        self.peer.close(code, reason)

    def _dropped(self, why: str, stream_id: str) -> None:
        log.warn(
            "executor frame dropped on {exe_id}: {why}",
            event="inbound.frame_dropped",
            exe_id=self.exe_id,
            why=why,
            stream_id=stream_id,
        )
        self._switchboard.frame_dropped("inbound", why)
