"""
The executor's websocket to the exec gateway (C{executor.md} §2 steps 2–3): an Autobahn client
protocol adapted to L{IRelayLink}, reporting to an L{IRelayLinkReceiver} (the stream multiplexer).

L{dial} connects to the ticket URL of a registration (C{ws://} over TCP, C{wss://} over TLS with the
host's certificate checked), completes the websocket handshake — no permessage-deflate offer, binary
frames only — and returns the L{RelayLink}; its L{RelayLink.closed} fires with the close code and
reason when the connection ends.

Pending bytes (for the multiplexer's flow control, C{executor.md} §3) are the bytes the TCP transport
holds and has not written to the socket. Twisted has no public call for that number, so L{RelayLink}
reads it from Twisted's C{FileDescriptor} write buffer (C{dataBuffer}, C{offset}, C{_tempDataLen}),
below a TLS layer when there is one; should a transport not have that shape, it falls back to the way
C{codexgw.execgw.peer} counts: the link is registered as a streaming producer on its transport, and
every byte written while the transport has paused it counts as pending until the transport drains.

Decisions where the spec is silent:
 - The executor pings too, every 30 s, and drops a connection that shows no traffic (pong or frame)
   for 30 s after a ping: without it, a silently dead network would keep the agent "connected" until
   TCP gives up (hours) instead of reconnecting. TCP keepalive is switched on as well.
 - Incoming messages may be up to 64 MiB + 64 KiB (a whole unsegmented 64 MiB message and its frame
   header); anything larger closes the connection with 1009, as nothing valid can be that large.
 - The connection and the websocket handshake must complete within 10 s.
 - A text message is dropped with a warning.
"""

# Autobahn's and Twisted's transport APIs are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any, Final

from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from codexgw.executor.multiplexer import MAX_MESSAGE_BYTES, IRelayLink, IRelayLinkReceiver
from codexgw.wsdial import DialFactory

#: Seconds between the executor's own pings, and without traffic after one before giving up.
PING_INTERVAL: Final = 30.0
PING_TIMEOUT: Final = 30.0
#: Seconds the TCP connection plus the websocket handshake may take.
DIAL_TIMEOUT: Final = 10.0
#: Seconds a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT: Final = 2.0
#: Largest incoming message.
MAX_INCOMING_BYTES: Final = MAX_MESSAGE_BYTES + (64 << 10)
#: Autobahn's code for a connection that ended without a closing handshake.
CLOSE_ABNORMAL: Final = 1006
#: Close code of a peer going away (the executor stopping).
CLOSE_GOING_AWAY: Final = 1001

log = Logger()


class DialFailed(Exception):
    """
    The websocket could not be opened (refused, failed handshake, timeout).
    """


@implementer(IRelayLink, IPushProducer)
class RelayLink(WebSocketClientProtocol):
    """
    The executor's end of its websocket, as an L{IRelayLink}.

    @ivar receiver: told about frames, drains and the end of the connection (from the factory).
    @ivar closed: fires with C{(code, reason)} when the connection has ended, whatever stage it
        reached.
    @ivar opened_at: clock time of the completed handshake, or C{None}.
    """

    transport: Any
    receiver: IRelayLinkReceiver
    closed: Deferred[tuple[int, str]]
    _write_paused = False
    _paused_bytes = 0
    _lost = False
    opened_at: float | None = None

    def connectionMade(self) -> None:
        """
        Watch the transport's write buffer and keep the TCP connection alive.
        """
        self.closed = Deferred()
        super().connectionMade()
        self.receiver = self.factory.receiver
        self.transport.registerProducer(self, True)
        keepalive = getattr(self.transport, "setTcpKeepAlive", None)
        if keepalive is not None:
            keepalive(True)

    # IRelayLink

    @property
    def pending_bytes(self) -> int:
        """
        See L{IRelayLink.pending_bytes} and the module docstring.
        """
        exact = buffered_bytes(self.transport)
        return self._paused_bytes if exact is None else exact

    def send_frame(self, frame: bytes) -> None:
        """
        See L{IRelayLink.send_frame}.
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        self.sendMessage(frame, isBinary=True)
        if self._write_paused:
            self._paused_bytes += len(frame)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IRelayLink.close}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            # sendClose refuses 1001; the close frame itself takes any valid code.
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    # IPushProducer: the transport reports a full write buffer and its draining.

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full.
        """
        self._write_paused = True

    def resumeProducing(self) -> None:
        """
        The transport wrote out its buffer.
        """
        self._write_paused = False
        self._paused_bytes = 0
        if self.opened_at is not None and not self._lost:
            self.receiver.write_drained()

    def stopProducing(self) -> None:
        """
        The transport is going away; C{onClose} follows.
        """

    # Autobahn callbacks

    def onOpen(self) -> None:
        """
        The handshake completed: hand the link to the receiver.
        """
        self.opened_at = self.factory.reactor.seconds()
        self.receiver.link_opened(self)
        self.factory.link_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Binary messages are frames for the receiver; text is dropped.
        """
        if isBinary:
            self.receiver.frame_received(payload)
        else:
            log.warn("text message from the gateway dropped", event="executor.frame_dropped", why="text")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Report the end once: to the receiver (if the link was opened) and through L{closed}.
        """
        if self._lost:
            return
        self._lost = True
        close_code = code if code is not None else CLOSE_ABNORMAL
        close_reason = reason or ""
        if self.opened_at is not None:
            self.receiver.link_lost(close_code, close_reason)
        else:
            failed = DialFailed(f"websocket handshake failed: {close_code} {close_reason}")
            self.factory.link_failed(failed)
        self.closed.callback((close_code, close_reason))


class RelayLinkFactory(DialFactory[RelayLink]):
    """
    Builds the L{RelayLink} of one dial, with every Autobahn option set explicitly; its C{opened}
    fails with L{DialFailed}.
    """

    protocol = RelayLink

    def __init__(self, url: str, receiver: IRelayLinkReceiver, user_agent: str, reactor: Any) -> None:
        """
        @param url: the C{ws://} or C{wss://} URL (with its ticket) to open.
        @param user_agent: the C{User-Agent} of the handshake.
        """
        super().__init__(url=url, useragent=user_agent, reactor=reactor)
        self.receiver = receiver
        self.setProtocolOptions(
            perMessageCompressionOffers=[],
            perMessageCompressionAccept=lambda response: None,
            maxFramePayloadSize=MAX_INCOMING_BYTES,
            maxMessagePayloadSize=MAX_INCOMING_BYTES,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            autoPingRestartOnAnyTraffic=True,
            openHandshakeTimeout=DIAL_TIMEOUT,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            failByDrop=False,
            utf8validateIncoming=True,
            tcpNoDelay=True,
        )


def client_endpoint(reactor: Any, url: str, timeout: float = DIAL_TIMEOUT) -> IStreamClientEndpoint:
    """
    The endpoint a websocket URL connects through: TCP, with TLS for C{wss://}.
    """
    secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


async def dial(
    reactor: Any,
    url: str,
    receiver: IRelayLinkReceiver,
    user_agent: str,
    timeout: float = DIAL_TIMEOUT,
    endpoint: IStreamClientEndpoint | None = None,
) -> RelayLink:
    """
    Open the websocket at C{url}; its frames go to C{receiver} once it is open.

    @param endpoint: connect through this instead of the URL's own (tests).
    @raise DialFailed: when it cannot be opened within C{timeout}.
    """
    try:
        factory = RelayLinkFactory(url, receiver, user_agent, reactor)
    except Exception as e:  # Autobahn refuses URLs it cannot use
        raise DialFailed(f"bad websocket URL: {e}") from None
    connecting = (endpoint or client_endpoint(reactor, url, timeout)).connect(factory)
    try:
        await connecting.addTimeout(timeout, reactor)
    except Exception as e:
        raise DialFailed(f"connect: {e}") from None
    try:
        return await factory.opened.addTimeout(timeout, reactor)
    except DialFailed:
        raise
    except Exception as e:
        # Timed out or cancelled mid-handshake: do not leave the connection behind.
        factory.abort()
        raise DialFailed(f"websocket handshake: {e}") from None


def buffered_bytes(transport: Any) -> int | None:
    """
    The bytes C{transport} holds and has not written to its socket, when it can tell.

    @return: the count, or C{None} for a transport without Twisted's C{FileDescriptor} buffer.
    """
    # A FileDescriptor keeps unsent bytes in dataBuffer (from offset on) plus a list counted by
    # _tempDataLen; a TLS layer hands its output straight to the TCP transport below it.
    for _ in range(3):
        if transport is None:
            return None
        try:
            return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
        except (AttributeError, TypeError):
            transport = getattr(transport, "transport", None)
    return None
