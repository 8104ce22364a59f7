"""
One bridge stream (C{exec-gateway.md} §4.3 after the upgrade, §5, §9.3, §9.4).

A L{BridgeSession} is the relay logic of one C{/bridge/{exe_id}} websocket: it enforces the first-frame
rules, pumps the client's frames to the executor's inbound connection (only frames of its own stream,
byte for byte), takes the executor's frames for its stream from the L{InboundSession}, cuts a client
that stops reading, and decides whether the executor must be told C{Reset{"bridge-closed"}} when the
bridge ends. It knows nothing of Autobahn: it speaks to an L{IFramePeer}.

The stream slot reserved before the upgrade is released in L{BridgeSession.connection_lost}, which the
transport layer calls exactly once whatever stage the connection reached.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from codexgw import relayframe
from codexgw.execgw.peer import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    IFramePeer,
    IFrameReceiver,
)
from codexgw.execgw.registry import IBridgeSession, Slot
from codexgw.relayframe import Body, Undecodable
from codexgw.tokens import CapClaims

if TYPE_CHECKING:
    from codexgw.execgw.inbound import InboundSession
    from codexgw.execgw.switchboard import Switchboard

#: Seconds a new bridge has to send its Resume.
FIRST_FRAME_TIMEOUT = 10.0

log = Logger()


class BridgeState(enum.Enum):
    """
    Where a bridge is in its life.
    """

    HANDSHAKE = "handshake"
    AWAITING_RESUME = "awaiting-resume"
    OPEN = "open"
    CLOSED = "closed"


@implementer(IFrameReceiver, IBridgeSession)
class BridgeSession:
    """
    The relay logic of one bridge websocket, carrying exactly one stream.

    @ivar stream_id: the stream, once the Resume arrived; C{""} before.
    @ivar last_activity: clock time of the last relay frame in either direction.
    """

    def __init__(
        self,
        switchboard: Switchboard,
        inbound: InboundSession,
        claims: CapClaims,
        slot: Slot,
        peer: IFramePeer,
    ) -> None:
        self._switchboard = switchboard
        self._slot = slot
        self._clock: IReactorTime = switchboard.clock
        self.inbound = inbound
        self.exe_id = inbound.exe_id
        self.claims = claims
        self.peer = peer
        self.state = BridgeState.HANDSHAKE
        self.stream_id = ""
        self.opened_at = self._clock.seconds()
        self.last_activity = self.opened_at
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        #: True once a Reset for this stream passed the gateway or was originated by it, or when the
        #: executor must not get one (collision, inbound gone, shutdown).
        self._reset_settled = False
        self._close_cause = ""
        self._first_frame_timer: IDelayedCall | None = None
        inbound.attach(self)

    # IFrameReceiver

    def connection_opened(self) -> None:
        """
        Start the first-frame clock; honour back-pressure the inbound is already under.
        """
        if self.state is not BridgeState.HANDSHAKE:
            return
        self.state = BridgeState.AWAITING_RESUME
        if not self.inbound.alive:
            # The executor went away between the pre-upgrade checks and now.
            self._end(CLOSE_NORMAL, "bridge session closed", "executor_gone", settle_reset=True)
            return
        self._first_frame_timer = self._clock.callLater(FIRST_FRAME_TIMEOUT, self._first_frame_timeout)
        if self.inbound.throttled:
            self.peer.pause_reading()

    def frame_received(self, frame: bytes) -> None:
        """
        The first frame must be this stream's Resume; later frames of this stream go to the executor.
        """
        if self._close_cause:
            # Closing (rejected, evicted, reset, cut, reaped): the peer still delivers what the client
            # sent before it saw our close frame, and none of it may be relayed.
            return
        if self.state is BridgeState.AWAITING_RESUME:
            self._first_frame(frame)
        elif self.state is BridgeState.OPEN:
            self._pump(frame)

    def text_received(self) -> None:
        """
        Text is refused as a first frame and ignored afterwards.
        """
        if self.state is BridgeState.AWAITING_RESUME:
            self._reject_first("first frame must be binary Resume")

    def write_drained(self) -> None:
        """
        Nothing to do: executor frames are written at once, and the overflow check runs per frame.
        """

    def connection_lost(self, code: int, reason: str) -> None:
        """
        Remove the route, release the slot, and tell the executor the stream ended if nobody did.
        """
        if self.state is BridgeState.CLOSED:
            return
        was_open = self.state is BridgeState.OPEN
        self.state = BridgeState.CLOSED
        if self._first_frame_timer is not None and self._first_frame_timer.active():
            self._first_frame_timer.cancel()
        self._first_frame_timer = None
        if not self._close_cause:
            self._close_cause = "too_big" if code == CLOSE_TOO_BIG else "client"
        if was_open:
            self.inbound.remove_route(self.stream_id, self)
            if not self._reset_settled and self.inbound.alive and not self._switchboard.shutting_down:
                self._reset_settled = True
                self.inbound.send_to_executor(relayframe.reset_frame(self.stream_id, "bridge-closed"))
        self.inbound.detach(self)
        self._slot.release()
        self._switchboard.bridge_ended(self, code, reason, self._close_cause)

    # IBridgeSession (the registry closes sessions through this)

    def close(self, code: int, reason: str) -> None:
        """
        Close because the executor side went away (inbound ended, evicted, deleted, collision).

        No Reset reaches the executor for these closes: it is gone, or (collision) it keeps the session.
        """
        self._end(code, reason, "executor_gone", settle_reset=True)

    def evict_by_collision(self) -> None:
        """
        A newer bridge took over this stream id on the same executor.
        """
        self._end(CLOSE_NORMAL, "bridge session closed", "collision", settle_reset=True)

    def shut_down(self) -> None:
        """
        The gateway is stopping.
        """
        self._end(CLOSE_GOING_AWAY, "gateway shutting down", "shutdown", settle_reset=True)

    # Executor → bridge

    def deliver(self, frame: bytes, body: Body) -> None:
        """
        Write one executor frame of this stream to the client at once (never queued).

        An executor Reset ends the stream; a client whose pending bytes exceed the buffer bound is cut.
        """
        if self.state is not BridgeState.OPEN:
            return
        self.last_activity = self._clock.seconds()
        self.peer.send_frame(frame)
        self.frames_out += 1
        self.bytes_out += len(frame)
        self._switchboard.frame_forwarded("to_bridge", len(frame))
        if body is Body.RESET:
            self._reset_settled = True
            self.inbound.remove_route(self.stream_id, self)
            self._end(CLOSE_NORMAL, "stream reset", "reset")
        elif self.peer.pending_bytes > self._switchboard.buffer_bytes:
            log.warn(
                "bridge {exe_id}/{stream_id} is not reading; cut at {pending_bytes} pending bytes",
                event="bridge.slow_consumer",
                exe_id=self.exe_id,
                stream_id=self.stream_id,
                pending_bytes=self.peer.pending_bytes,
            )
            self._reset_to_executor("slow-consumer")
            self._end(CLOSE_POLICY, "bridge buffer overflow", "slow_consumer")

    def reap_if_idle(self, now: float, idle_timeout: float) -> bool:
        """
        End the stream if no relay frame crossed it for C{idle_timeout} seconds.

        @return: whether it was reaped.
        """
        if self.state is not BridgeState.OPEN or self._close_cause:
            return False  # not paired yet, or already closing (reaped once is enough)
        if now - self.last_activity < idle_timeout:
            return False
        log.info(
            "bridge {exe_id}/{stream_id} idle for {idle_s:.1f}s; reaped",
            event="bridge.idle_reaped",
            exe_id=self.exe_id,
            stream_id=self.stream_id,
            idle_s=now - self.last_activity,
        )
        reset = relayframe.reset_frame(self.stream_id, "idle-timeout")
        self._reset_to_executor("idle-timeout")
        self.peer.send_frame(reset)
        self._end(CLOSE_NORMAL, "bridge idle timeout", "idle")
        return True

    # internals

    def _first_frame(self, frame: bytes) -> None:
        if self._first_frame_timer is not None and self._first_frame_timer.active():
            self._first_frame_timer.cancel()
        self._first_frame_timer = None
        try:
            head = relayframe.peek(frame)
        except Undecodable:
            self._reject_first("malformed first frame")
            return
        if head.body is not Body.RESUME:
            self._reject_first("first frame must be Resume")
            return
        if not head.stream_id:
            self._reject_first("Resume missing stream_id")
            return
        if len(head.stream_id.encode("utf-8")) > relayframe.MAX_STREAM_ID_BYTES:
            self._reject_first("invalid stream_id")
            return
        if not self.inbound.alive:
            self._end(CLOSE_NORMAL, "bridge session closed", "executor_gone", settle_reset=True)
            return
        self.stream_id = head.stream_id
        self.state = BridgeState.OPEN
        evicted = self.inbound.add_route(self.stream_id, self)
        if evicted is not None:
            log.warn(
                "stream {stream_id} on {exe_id} taken over by a new bridge",
                event="bridge.stream_collision",
                exe_id=self.exe_id,
                stream_id=self.stream_id,
            )
            cast("BridgeSession", evicted).evict_by_collision()
        log.info(
            "bridge paired {exe_id}/{stream_id}",
            event="bridge.paired",
            exe_id=self.exe_id,
            stream_id=self.stream_id,
            turn_id=self.claims.turn_id,
            workspace_id=self.claims.workspace_id,
        )
        self._switchboard.bridge_paired(self)
        self._to_executor(frame)

    def _pump(self, frame: bytes) -> None:
        try:
            head = relayframe.peek(frame)
        except Undecodable:
            self._dropped("undecodable")
            return
        if head.stream_id != self.stream_id:
            self._dropped("wrong_stream_id")
            return
        self._to_executor(frame)
        if head.body is Body.RESET:
            self._reset_settled = True
            self.inbound.remove_route(self.stream_id, self)
            self._end(CLOSE_NORMAL, "stream reset", "reset")

    def _to_executor(self, frame: bytes) -> None:
        self.last_activity = self._clock.seconds()
        self.frames_in += 1
        self.bytes_in += len(frame)
        self.inbound.send_to_executor(frame)

    def _reset_to_executor(self, reason: str) -> None:
        self._reset_settled = True
        self.inbound.remove_route(self.stream_id, self)
        if self.inbound.alive:
            self.inbound.send_to_executor(relayframe.reset_frame(self.stream_id, reason))

    def _dropped(self, why: str) -> None:
        log.warn(
            "bridge frame dropped on {exe_id}/{stream_id}: {why}",
            event="bridge.frame_dropped",
            exe_id=self.exe_id,
            stream_id=self.stream_id,
            why=why,
        )
        self._switchboard.frame_dropped("bridge", why)

    def _reject_first(self, reason: str) -> None:
        log.warn(
            "bridge first frame rejected on {exe_id}: {reason}",
            event="bridge.first_frame_rejected",
            exe_id=self.exe_id,
            reason=reason,
        )
        self._switchboard.first_frame_rejected()
        self._end(CLOSE_PROTOCOL_ERROR, reason, "client")

    def _first_frame_timeout(self) -> None:
        self._first_frame_timer = None
        if self.state is BridgeState.AWAITING_RESUME:
            self._reject_first("first frame timeout")

    def _end(self, code: int, reason: str, cause: str, settle_reset: bool = False) -> None:
        if self.state is BridgeState.CLOSED or self._close_cause:
            return
        self._close_cause = cause
        if settle_reset:
            self._reset_settled = True
        self.peer.close(code, reason)
