"""
One websocket connection as the exec gateway's relay logic sees it: frames in, frames out, close,
flow control.

The relay logic (L{codexgw.execgw.inbound}, L{codexgw.execgw.bridge}) never touches Autobahn. It talks
to an L{IFramePeer} and is told what happens through an L{IFrameReceiver}. L{FrameProtocol} adapts an
Autobahn server protocol to both; L{codexgw.testing.fakepeer.FakeFramePeer} is the in-memory twin the
unit tests use, and both pass the same interface tests.

Pending bytes (C{exec-gateway.md} §9.4) are measured the way the spec describes: the protocol registers
itself as a streaming producer on its transport; while the transport has paused it (its write buffer is
full) every byte we hand it counts as pending, and the count drops to zero when the transport resumes
it (the buffer drained).
"""

# Autobahn's and Twisted's transport APIs are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface, implementer

from codexgw.autobahntimers import ReactorTimer

#: Close code of a normal closure.
CLOSE_NORMAL = 1000
#: Close code of a gateway going away.
CLOSE_GOING_AWAY = 1001
#: Close code of a protocol error (first-frame failures).
CLOSE_PROTOCOL_ERROR = 1002
#: Close code of a policy violation (buffer overflow, executor deleted).
CLOSE_POLICY = 1008
#: Close code of a message that is too big.
CLOSE_TOO_BIG = 1009
#: Autobahn's code for a connection that ended without a close handshake.
CLOSE_ABNORMAL = 1006


class IFramePeer(Interface):
    """
    The far end of one websocket connection, as seen by the relay logic.
    """

    peer = Attribute("C{str}: the remote address, for logs.")
    pending_bytes = Attribute("C{int}: bytes handed to the transport and not yet written out.")

    def send_frame(frame: bytes) -> None:
        """
        Send C{frame} as one binary message now (never queued by us). Dropped once closing.
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake with C{code} and C{reason}. Idempotent: only the first call counts.
        """

    def pause_reading() -> None:
        """
        Stop reading from the peer, so its TCP window fills and it blocks.
        """

    def resume_reading() -> None:
        """
        Read from the peer again.
        """


class IFrameReceiver(Interface):
    """
    What the relay logic is told about one connection. Calls happen in this order: C{connection_opened}
    at most once, then messages and write notifications, then C{connection_lost} exactly once (also
    when the websocket handshake never completed).
    """

    def connection_opened() -> None:
        """
        The websocket handshake completed.
        """

    def frame_received(frame: bytes) -> None:
        """
        A binary message arrived; C{frame} is its exact bytes.
        """

    def text_received() -> None:
        """
        A text message arrived (relay connections carry only binary frames).
        """

    def write_drained() -> None:
        """
        The transport wrote out everything it held; L{IFramePeer.pending_bytes} is back to 0.
        """

    def connection_lost(code: int, reason: str) -> None:
        """
        The connection ended with close C{code} (L{CLOSE_ABNORMAL} when it just dropped). When this
        side started the closing handshake, C{code} and C{reason} are the ones it sent.
        """


@implementer(IFramePeer, IPushProducer)
class FrameProtocol(WebSocketServerProtocol):
    """
    An Autobahn server protocol carrying relay frames for one L{IFrameReceiver}.

    @ivar receiver: the relay logic for this connection, made by the factory's C{make_receiver}.
    """

    receiver: IFrameReceiver
    transport: Any
    pending_bytes = 0
    _write_paused = False
    _lost = False

    def connectionMade(self) -> None:
        """
        Take over write notifications from the HTTP channel that handed us the transport.
        """
        super().connectionMade()
        self.peer = _peer_text(self.transport)
        # The HTTPChannel registered itself as the transport's producer; a transport holds only one.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self.receiver = self.factory.make_receiver(self)

    # IFramePeer

    def send_frame(self, frame: bytes) -> None:
        """
        See L{IFramePeer.send_frame}.
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        self.sendMessage(frame, isBinary=True)
        if self._write_paused:
            self.pending_bytes += len(frame)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IFramePeer.close}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            # Not sendClose: it refuses every code but 1000 and 3000-4999, and the gateway closes with
            # 1001, 1002 and 1008 too.
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def pause_reading(self) -> None:
        """
        See L{IFramePeer.pause_reading}.
        """
        if self.transport is not None and not self._lost:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """
        See L{IFramePeer.resume_reading}.
        """
        if self.transport is not None and not self._lost:
            self.transport.resumeProducing()

    # IPushProducer: the transport tells us when its write buffer is full and when it drained.

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: count what we write from now on as pending.
        """
        self._write_paused = True

    def resumeProducing(self) -> None:
        """
        The transport drained its write buffer.
        """
        self._write_paused = False
        self.pending_bytes = 0
        if not self._lost:
            self.receiver.write_drained()

    def stopProducing(self) -> None:
        """
        The transport is going away; C{connectionLost} follows.
        """

    # Autobahn callbacks

    def onOpen(self) -> None:
        """
        The websocket handshake completed.
        """
        self.receiver.connection_opened()

    # Hot path. Autobahn's versions of these format debug-log arguments for every read and write and
    # fire an event (a Deferred) for every message, whether or not anyone listens; the relay does
    # neither.

    def dataReceived(self, data: bytes) -> None:
        """
        Hand received bytes to Autobahn's frame parser.
        """
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Write frame bytes straight to the transport unless Autobahn's send queue is in use.
        """
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)
        else:
            self.transport.write(data)

    def onMessageEnd(self) -> None:
        """
        Deliver a complete message to L{onMessage} directly.
        """
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        # Release the parts now; onMessageBegin starts a new list for the next message.
        self.message_data = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand each message to the receiver: binary ones with their exact bytes.
        """
        if isBinary:
            self.receiver.frame_received(payload)
        else:
            self.receiver.text_received()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Tell the receiver once, whatever stage the connection reached.
        """
        if self._lost:
            return
        self._lost = True
        # Autobahn declares these as None at class level; they hold what our close frame carried.
        local_code = cast("int | None", self.localCloseCode)
        local_reason = cast("bytes | None", self.localCloseReason)
        if self.closedByMe and local_code is not None:
            # We started the closing handshake: report our code (the peer's echo, or the 1006 of a
            # peer that never answered, would hide e.g. a 1009).
            code = local_code
            reason = (local_reason or b"").decode("utf-8", "replace")
        self.receiver.connection_lost(code if code is not None else CLOSE_ABNORMAL, reason or "")

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: list[tuple[str, str]] | None = None
    ) -> None:
        """
        Refuse a broken handshake with an explicit empty body (every response carries a length).
        """
        super().sendHttpErrorResponse(code, reason, [*(responseHeaders or []), ("Content-Length", "0")])


class FrameFactory(WebSocketServerFactory):
    """
    Builds L{FrameProtocol}s whose receivers come from C{make_receiver}, with every Autobahn option set
    explicitly (C{exec-gateway.md} §9.2; Autobahn's defaults are unlimited and unsafe).
    """

    protocol = FrameProtocol

    def __init__(
        self,
        make_receiver: Callable[[IFramePeer], IFrameReceiver],
        max_frame_bytes: int,
        ping_interval: float,
        ping_timeout: float,
        reactor: Any = None,
    ) -> None:
        """
        @param make_receiver: called with each new connection's L{IFramePeer}.
        @param max_frame_bytes: message and frame payload limit; 0 = unlimited.
        @param ping_interval: seconds between pings; 0 = no pings.
        @param ping_timeout: seconds without a pong or any frame before the connection is dropped.
        """
        super().__init__(reactor=reactor)  # None: the global reactor
        # Autobahn schedules its timeouts and pings through txaio's batched timer, which always uses
        # the global reactor; put them on ours.
        self._batched_timer = ReactorTimer(self.reactor)
        self.make_receiver = make_receiver
        self.setProtocolOptions(
            maxFramePayloadSize=max_frame_bytes,
            maxMessagePayloadSize=max_frame_bytes,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout if ping_interval else 0,
            autoPingRestartOnAnyTraffic=True,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=1,
            failByDrop=False,
            webStatus=False,  # a request without Upgrade gets 426, not Autobahn's HTML status page
            utf8validateIncoming=True,
            requireMaskedClientFrames=True,
            applyMask=True,  # unmask the clients' frames (False would deliver them still masked)
            perMessageCompressionAccept=lambda offers: None,
            trustXForwardedFor=0,
            allowedOrigins=["*"],  # machine-to-machine endpoints; no ambient credentials exist
        )


def _peer_text(transport: Any) -> str:
    try:
        address = transport.getPeer()
    except Exception:  # a transport without an address (tests)
        return "unknown"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
