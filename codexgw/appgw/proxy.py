"""
The TUI websocket proxy (C{app-gateway.md} §7.1 step 5 to §7.5): the pair of websockets of one TUI
connection, the TUI's (server side) and the gateway's own to the workspace's C{codex app-server}
(client side).

The web layer checks and authenticates the upgrade (§7.1 steps 1–4) and hands the request to
L{TUIProxyFactory.resource_for}, which upgrades it for that workspace. From then on one
L{TUIProxyProtocol} runs the pair:
 1. After the upgrade it holds the TUI's messages (queued in order, not forwarded), asks the
    supervisor for the workspace's app-server (L{ISupervisor.ensure}), dials C{<ws_url>/} with no
    client headers, attaches itself to the app-server (L{IAttachment}), flushes the queue and pumps.
    Failures close the TUI with the codes of §7.1.
 2. It pumps messages one for one, same type, same bytes (§7.2): TUI messages through
    L{judge_client_message} (§7.4), app-server messages through L{approval_reply} (§7.3).
 3. Back-pressure (§7.2): the app-server is always read; while the TUI's transport has paused us
    (its write buffer is full) messages for the TUI wait in a per-connection backlog, and a backlog
    over C{client_buffer_bytes} closes the TUI as a slow consumer. While the app-server's transport
    has paused its link, the TUI is not read.
 4. Either side ending ends the pair with the close codes of §7.5.

The app-server side is reached through L{IChildLink} / L{IChildReceiver}; L{dial_child} makes the
real link (an Autobahn client), and the factory takes another dialer for tests.

Decisions where the spec is silent:
 - "Stops reading from the TUI" while the pair is set up is done as holding its messages, and the
   socket is only no longer read once more than L{HOLD_BYTES} (1 MiB) are held: a socket that is not
   read does not notice its peer leaving (the reactor stops watching it), and a TUI that leaves while
   its app-server is being spawned must cancel the ensure (§7.1). A TUI sends a few small requests
   before it has any answer, so in practice nothing is ever paused there.
 - A blocked request's error reply to the TUI goes through the same backlog as app-server messages,
   and only the TUI's request counts in C{codexgw_tui_messages_total{direction="client"}} (the reply
   is not a proxied message). An auto-answered approval request counts as one
   C{direction="server"} message (dropped); the reply written to the app-server is not counted.
 - Only messages that arrive while the pair is being set up or pumping are handled; once the pair is
   ending, late messages from either side are discarded without counting.
 - The TUI's handshake response carries no C{Server} header.
 - C{tui_connections} counts TUI websockets from the completed handshake to their end; the
   C{proxy ended} line is written for those only. C{on_closed} is called for every upgrade the web
   layer handed over, also when the handshake never completed.
 - Closing handshakes are bounded: a peer has 5 s to answer our close frame, and a connection still
   open 5 s after either side's close frame (a peer that keeps the TCP connection, or one that stopped
   reading behind a full write buffer) is aborted. The app-server link does not use Autobahn's own
   "server did not drop TCP" timer, which runs on the global reactor.
 - The app-server dial (TCP connect plus websocket handshake) is bounded as a whole by 10 s. Its
   handshake carries only what the websocket protocol needs (C{Host}, C{Upgrade}, C{Connection},
   C{Sec-WebSocket-Key}, C{Sec-WebSocket-Version}, and Autobahn's C{Pragma}/C{Cache-Control}): not
   even a C{User-Agent}.
 - A failure to dial is logged at error level with the app-server URL and the error; a failed ensure
   at warning level with the error (C{spawn capacity reached} is the supervisor's to log).
"""

# Autobahn's and Twisted's transport APIs are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest, ConnectionResponse
from autobahn.websocket.util import parse_url
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import Interface, implementer

from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.rpcpolicy import approval_reply, judge_client_message
from codexgw.appgw.supervision import (
    AppServerEnd,
    AppServerHandle,
    IAttachment,
    ISupervisor,
    SpawnCapacityError,
)
from codexgw.autobahntimers import ReactorTimer
from codexgw.wsdial import DialFactory

#: §12.1: largest websocket message either side may send us (larger → 1009).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: §7.2: seconds between pings to the TUI, and without a pong before it is dropped.
PING_INTERVAL: Final = 30.0
PING_TIMEOUT: Final = 10.0
#: §7.2: Autobahn's opening-handshake timeout.
HANDSHAKE_TIMEOUT: Final = 10.0
#: §7.1: seconds the app-server dial (connect and handshake) may take.
DIAL_TIMEOUT: Final = 10.0
#: Seconds a closing handshake may take, and a closed websocket may keep its TCP connection.
CLOSE_TIMEOUT: Final = 5.0
#: Bytes of TUI messages held while the pair is being set up before the TUI is no longer read.
HOLD_BYTES: Final = 1024 * 1024

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
#: Autobahn's code for a connection that ended without a closing handshake.
CLOSE_ABNORMAL: Final = 1006

#: §7.5 close reasons.
GATEWAY_CLOSING: Final = "gateway closing"
APP_SERVER_CLOSED: Final = "app-server closed"
APP_SERVER_LOST: Final = "app-server connection lost"
SLOW_CONSUMER: Final = "slow consumer"
SPAWN_CAPACITY: Final = "spawn capacity reached"
SUBPROCESS_UNAVAILABLE: Final = "subprocess unavailable"
DIAL_FAILED: Final = "subprocess dial failed"

log = Logger()


class DialFailed(Exception):
    """
    The websocket to the app-server could not be opened (refused, failed handshake).
    """


class IChildLink(Interface):
    """
    The gateway's open websocket to a workspace's app-server, as the proxy uses it.
    """

    def send(payload: bytes, is_binary: bool) -> None:
        """
        Send one message now (dropped once the link is closing).
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake. Only the first call counts.
        """


class IChildReceiver(Interface):
    """
    What a proxy is told about its app-server link, from the moment the dial succeeded. Calls end
    with exactly one C{child_lost}.
    """

    def child_message(payload: bytes, is_binary: bool) -> None:
        """
        A message arrived from the app-server; C{payload} is its exact bytes.
        """

    def child_write_paused() -> None:
        """
        The link's transport has a full write buffer: stop feeding it.
        """

    def child_write_resumed() -> None:
        """
        The link's transport drained its write buffer.
        """

    def child_lost(code: int, reason: str) -> None:
        """
        The link ended with close C{code} (L{CLOSE_ABNORMAL} when it just dropped). When the gateway
        started the closing handshake (also for a 1009), C{code} and C{reason} are the ones it sent.
        """


#: Opens the link to C{url} for a receiver: fires with the open link, fails when it cannot be
#: opened; cancelling it gives up (and closes whatever was opened).
ChildDialer = Callable[[str, IChildReceiver], "Deferred[IChildLink]"]


def _close_frame(protocol: Any, code: int, reason: str) -> None:
    """
    Start a closing handshake on an Autobahn protocol with any code (Autobahn's C{sendClose} refuses
    1001, 1008, 1011 and 1013), or drop a connection whose handshake has not completed.
    """
    if protocol.state == WebSocketProtocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
    elif protocol.state == WebSocketProtocol.STATE_CONNECTING:
        protocol.dropConnection(abort=True)


def _reported_close(protocol: Any, code: int | None, reason: str | None) -> tuple[int, str]:
    """
    The close code and reason of an ended Autobahn connection: ours when we started the closing
    handshake (the peer's echo, or the 1006 of a peer that never answered, would hide e.g. a 1009).
    """
    local_code: int | None = protocol.localCloseCode
    if protocol.closedByMe and local_code is not None:
        local_reason: bytes | None = protocol.localCloseReason
        return local_code, (local_reason or b"").decode("utf-8", "replace")
    return (code if code is not None else CLOSE_ABNORMAL), reason or ""


class _Linger:
    """
    Aborts a connection that is still open C{CLOSE_TIMEOUT} seconds after its closing began.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._call: IDelayedCall | None = None

    def arm(self, transport: Any) -> None:
        """
        Start the countdown (once) for C{transport}.
        """
        if self._call is None and transport is not None:
            self._call = self._reactor.callLater(CLOSE_TIMEOUT, transport.abortConnection)

    def disarm(self) -> None:
        """
        The connection ended: forget the countdown.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()


# --------------------------------------------------------------------------------------------------
# The app-server side


@implementer(IChildLink, IPushProducer)
class ChildLink(WebSocketClientProtocol):
    """
    The gateway's websocket to an app-server (an Autobahn client), as an L{IChildLink}.
    """

    transport: Any
    _opened = False
    _lost = False

    def connectionMade(self) -> None:
        """
        Register for write notifications (the proxy stops reading the TUI while this link is full).
        """
        super().connectionMade()
        self._linger = _Linger(self.factory.reactor)
        self.transport.registerProducer(self, True)

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        Nothing to check in the app-server's handshake response.
        """

    def onOpen(self) -> None:
        """
        The handshake completed: the dial succeeded.
        """
        self._opened = True
        self.factory.link_opened(self)

    # IChildLink

    def send(self, payload: bytes, is_binary: bool) -> None:
        """
        See L{IChildLink.send}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=is_binary)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IChildLink.close}.
        """
        _close_frame(self, code, reason)
        self._linger.arm(self.transport)

    # IPushProducer: the transport tells us when its write buffer is full and when it drained.

    def pauseProducing(self) -> None:
        """
        The write buffer is full.
        """
        if self._opened and not self._lost:
            self.factory.receiver.child_write_paused()

    def resumeProducing(self) -> None:
        """
        The write buffer drained.
        """
        if self._opened and not self._lost:
            self.factory.receiver.child_write_resumed()

    def stopProducing(self) -> None:
        """
        The transport is going away; C{onClose} follows.
        """

    # Hot path: Autobahn's versions format debug-log arguments for every read and fire an event (a
    # Deferred) for every message.

    def dataReceived(self, data: bytes) -> None:
        """
        Hand received bytes to Autobahn's frame parser.
        """
        self._dataReceived(data)

    def onMessageEnd(self) -> None:
        """
        Deliver a complete message to L{onMessage} directly.
        """
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand each message to the receiver.
        """
        if self._opened and not self._lost:
            self.factory.receiver.child_message(payload, isBinary)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """
        Answer as Autobahn does, and make sure the connection ends soon after.
        """
        result: bool | None = super().onCloseFrame(code, reasonRaw)
        self._linger.arm(self.transport)
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Report the end once: to the receiver when the link was opened, else as a failed dial.
        """
        if self._lost:
            return
        self._lost = True
        self._linger.disarm()
        close_code, close_reason = _reported_close(self, code, reason)
        if self._opened:
            self.factory.receiver.child_lost(close_code, close_reason)
        else:
            self.factory.link_failed(
                DialFailed(f"websocket handshake failed: {close_code} {close_reason}")
            )


class ChildLinkFactory(DialFactory[ChildLink]):
    """
    Builds the L{ChildLink} of one dial, with every Autobahn option set explicitly: no compression
    offer, no pings, no C{Origin}, no extra headers, 64 MiB messages. Its C{opened} fails with
    L{DialFailed}.
    """

    protocol = ChildLink

    def __init__(self, url: str, receiver: IChildReceiver, reactor: Any, max_message: int) -> None:
        """
        @param url: the app-server's C{ws://127.0.0.1:<port>/}.
        @param receiver: told about the link once it is open.
        @param max_message: largest incoming message (larger → 1009).
        """
        super().__init__(
            url=url, origin=None, protocols=None, useragent=None, headers=None, reactor=reactor
        )
        self.receiver = receiver
        self.setProtocolOptions(
            version=13,
            perMessageCompressionOffers=[],
            perMessageCompressionAccept=lambda response: None,
            maxFramePayloadSize=max_message,
            maxMessagePayloadSize=max_message,
            autoFragmentSize=0,
            autoPingInterval=0,
            autoPingTimeout=0,
            autoPingSize=12,
            openHandshakeTimeout=DIAL_TIMEOUT,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            # 0: no txaio timer on the global reactor; ChildLink's linger does the job.
            serverConnectionDropTimeout=0,
            failByDrop=False,
            echoCloseCodeReason=False,
            utf8validateIncoming=True,
            acceptMaskedServerFrames=False,
            maskClientFrames=True,
            applyMask=True,
            tcpNoDelay=True,
        )


def dial_child(
    reactor: Any,
    url: str,
    receiver: IChildReceiver,
    max_message: int = MAX_MESSAGE_BYTES,
    timeout: float = DIAL_TIMEOUT,
) -> Deferred[IChildLink]:
    """
    Open the gateway's websocket to an app-server (§7.1): no client headers, no permessage-deflate.

    @param reactor: the reactor to connect with (also the clock of every timer).
    @param url: C{ws://127.0.0.1:<port>/}.
    @param receiver: told about the link's messages, write pauses and end once it is open.
    @param max_message: largest incoming message.
    @param timeout: seconds for the TCP connect and the websocket handshake together.
    @return: fires with the open link; fails with L{DialFailed}, or C{TimeoutError} after C{timeout};
        cancelling it drops whatever connection exists.
    """

    async def dial() -> IChildLink:
        try:
            factory = ChildLinkFactory(url, receiver, reactor, max_message)
            _secure, host, port, _resource, _path, _params = parse_url(url)
        except Exception as e:  # Autobahn refuses URLs it cannot use
            raise DialFailed(f"bad websocket URL: {e}") from None
        try:
            await TCP4ClientEndpoint(reactor, host, port, timeout=timeout).connect(factory)
        except CancelledError:
            raise
        except Exception as e:
            raise DialFailed(f"connect: {e}") from None
        try:
            link: IChildLink = await factory.opened
        except BaseException:
            factory.abort()
            raise
        return link

    dialing: Deferred[IChildLink] = Deferred.fromCoroutine(dial())
    return dialing.addTimeout(timeout, reactor)


# --------------------------------------------------------------------------------------------------
# The TUI side


@implementer(IAttachment, IChildReceiver, IPushProducer)
class TUIProxyProtocol(WebSocketServerProtocol):
    """
    One TUI websocket (Autobahn server side) and the pair it runs with its app-server link.

    @ivar workspace_id: the authenticated workspace (set by L{TUIProxyFactory.resource_for}).
    @ivar on_closed: called once when this websocket has ended.
    @ivar phase: C{handshake}, C{starting} (ensure and dial), C{pumping} or C{ended}.
    @ivar close_code: the close code the TUI websocket ended with (C{None} while it is open).
    """

    transport: Any
    workspace_id: str
    on_closed: Callable[[], None]

    def __init__(self) -> None:
        """
        A connection in its handshake, with nothing held, queued or dialed.
        """
        super().__init__()
        self.phase: Literal["handshake", "starting", "pumping", "ended"] = "handshake"
        self.close_code: int | None = None
        self._opened_at: float | None = None
        self._gone = False
        # TUI messages that arrived before the pump runs, in order, and their bytes.
        self._inbound: list[tuple[bytes, bool]] = []
        self._inbound_bytes = 0
        # Why the TUI is not being read ("starting", "child"); read while empty.
        self._read_pauses: set[str] = set()
        # Whether the TUI's transport has paused us (its write buffer is full), and what waits.
        self._write_paused = False
        self._backlog: deque[tuple[bytes, bool]] = deque()
        self._backlog_bytes = 0
        self._ensuring: Deferred[AppServerHandle] | None = None
        self._dialing: Deferred[IChildLink] | None = None
        self._handle: AppServerHandle | None = None
        self._attached = False
        self._child: IChildLink | None = None

    def connectionMade(self) -> None:
        """
        Take over write notifications from the HTTP channel that handed us the transport.
        """
        super().connectionMade()
        self._linger = _Linger(self.factory.reactor)
        # The HTTPChannel registered itself as the transport's producer; a transport holds only one.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self.factory.connection_made(self)

    def onConnect(self, request: ConnectionRequest) -> None:
        """
        Accept with no subprotocol and no extra headers (compression offers are declined by the
        factory's options; C{x-codex-app-server-compression} is ignored).
        """

    def onOpen(self) -> None:
        """
        The upgrade completed: hold the TUI's messages and get the workspace's app-server.
        """
        self._opened_at = self.factory.reactor.seconds()
        self.factory.connection_opened(self)
        self.phase = "starting"
        ensuring = maybeDeferred(self.factory.supervisor.ensure, self.workspace_id)
        self._ensuring = ensuring
        ensuring.addCallbacks(self._ensured, self._ensure_failed).addErrback(self._broken)

    # Setting up the pair (§7.1)

    def _ensured(self, handle: AppServerHandle) -> None:
        self._ensuring = None
        if self.phase != "starting":
            return
        self._handle = handle
        dialing = self.factory.dial(handle.ws_url.rstrip("/") + "/", self)
        self._dialing = dialing
        dialing.addCallbacks(self._dialed, self._dial_failed).addErrback(self._broken)

    def _ensure_failed(self, failure: Failure) -> None:
        self._ensuring = None
        if self.phase != "starting":
            return  # cancelled: the TUI went away
        if failure.check(SpawnCapacityError):
            self._end((CLOSE_TRY_AGAIN_LATER, SPAWN_CAPACITY))
            return
        log.warn(
            "TUI proxy: app-server unavailable: {error}",
            workspace_id=self.workspace_id,
            error=failure.getErrorMessage(),
        )
        self._end((CLOSE_INTERNAL_ERROR, SUBPROCESS_UNAVAILABLE))

    def _dialed(self, link: IChildLink) -> None:
        self._dialing = None
        if self.phase != "starting" or self._handle is None:
            link.close(CLOSE_NORMAL, GATEWAY_CLOSING)
            return
        self._child = link
        if not self.factory.supervisor.attach(self._handle, self):
            # The app-server ended between ensure and now.
            self._end((CLOSE_INTERNAL_ERROR, APP_SERVER_LOST))
            return
        self._attached = True
        self.phase = "pumping"
        queued, self._inbound, self._inbound_bytes = self._inbound, [], 0
        for payload, is_binary in queued:
            if self._ended():
                return  # a blocked request's reply overflowed the backlog
            self._from_tui(payload, is_binary)
        self._resume_reading("starting")

    def _ended(self) -> bool:
        # A method, so that mypy does not keep a narrowed phase across calls that change it.
        return self.phase == "ended"

    def _dial_failed(self, failure: Failure) -> None:
        self._dialing = None
        if self.phase != "starting":
            return  # cancelled: the TUI went away
        log.error(
            "subprocess dial failed: {error}",
            workspace_id=self.workspace_id,
            url=self._handle.ws_url if self._handle is not None else None,
            error=failure.getErrorMessage(),
        )
        self._end((CLOSE_INTERNAL_ERROR, DIAL_FAILED))

    def _broken(self, failure: Failure) -> None:
        # A bug in the set-up callbacks: never leave the TUI hanging.
        log.failure("TUI proxy set-up failed", failure, workspace_id=self.workspace_id)
        self._end((CLOSE_INTERNAL_ERROR, SUBPROCESS_UNAVAILABLE))

    # TUI → app-server

    def dataReceived(self, data: bytes) -> None:
        """
        Hand received bytes to Autobahn's frame parser (without its per-read debug formatting).
        """
        self._dataReceived(data)

    def onMessageEnd(self) -> None:
        """
        Deliver a complete message to L{onMessage} directly (without Autobahn's per-message event).
        """
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        A TUI message: queue it while the pair is being set up, else judge and forward it.
        """
        if self.phase == "pumping":
            self._from_tui(payload, isBinary)
        elif self.phase == "starting":
            self._inbound.append((payload, isBinary))
            self._inbound_bytes += len(payload)
            if self._inbound_bytes > HOLD_BYTES:
                self._pause_reading("starting")

    def _from_tui(self, payload: bytes, is_binary: bool) -> None:
        verdict = judge_client_message(payload)
        if verdict.action == "forward":
            if self._child is not None:
                self._child.send(payload, is_binary)
        elif verdict.action == "drop":
            log.warn("TUI message dropped: {why}", workspace_id=self.workspace_id, why=verdict.reason)
        else:
            self.factory.blocked(verdict.reason)
            log.info(
                "rpc blocked: {method} ({reason})",
                workspace_id=self.workspace_id,
                method=verdict.method,
                reason=verdict.reason,
            )
            if verdict.reply is not None:
                self._to_tui(verdict.reply, False)
        self.factory.activity(self.workspace_id, "client")

    def _pause_reading(self, why: str) -> None:
        if not self._read_pauses and self._steerable():
            self.transport.pauseProducing()
        self._read_pauses.add(why)

    def _resume_reading(self, why: str) -> None:
        if why not in self._read_pauses:
            return
        self._read_pauses.discard(why)
        if not self._read_pauses and self._steerable():
            self.transport.resumeProducing()

    def _steerable(self) -> bool:
        # Whether the TUI's transport can still be paused and resumed (not lost, not closing).
        return not self._gone and self.transport is not None and not self.transport.disconnecting

    # IChildReceiver: app-server → TUI

    def child_message(self, payload: bytes, is_binary: bool) -> None:
        """
        See L{IChildReceiver.child_message}: answer approval requests, pass everything else on.
        """
        if self.phase == "ended" or self._child is None:
            return
        reply = approval_reply(payload)
        if reply is not None:
            self._child.send(reply, False)
            self.factory.auto_replied()
        else:
            self._to_tui(payload, is_binary)
        self.factory.activity(self.workspace_id, "server")

    def child_write_paused(self) -> None:
        """
        See L{IChildReceiver.child_write_paused}: stop reading the TUI.
        """
        if self.phase != "ended":
            self._pause_reading("child")

    def child_write_resumed(self) -> None:
        """
        See L{IChildReceiver.child_write_resumed}: read the TUI again.
        """
        self._resume_reading("child")

    def child_lost(self, code: int, reason: str) -> None:
        """
        See L{IChildReceiver.child_lost}: end the pair (§7.5).
        """
        self._child = None
        if self.phase == "ended":
            return
        if code in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
            self._end((CLOSE_GOING_AWAY, APP_SERVER_CLOSED))
        else:
            self._end((CLOSE_INTERNAL_ERROR, APP_SERVER_LOST))

    def _to_tui(self, payload: bytes, is_binary: bool) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self._write_paused or self._backlog:
            self._backlog.append((payload, is_binary))
            self._backlog_bytes += len(payload)
            if self._backlog_bytes > self.factory.client_buffer_bytes:
                self._slow_consumer()
            return
        self.sendMessage(payload, isBinary=is_binary)

    def _slow_consumer(self) -> None:
        log.warn(
            "slow consumer",
            workspace_id=self.workspace_id,
            backlog_bytes=self._backlog_bytes,
            limit=self.factory.client_buffer_bytes,
        )
        self.factory.slow_consumer()
        self._end((CLOSE_POLICY, SLOW_CONSUMER))

    # IPushProducer: the TUI's transport tells us when its write buffer is full and when it drained.

    def pauseProducing(self) -> None:
        """
        The TUI's write buffer is full: hold further messages in the backlog.
        """
        self._write_paused = True

    def resumeProducing(self) -> None:
        """
        The TUI's write buffer drained: send the backlog until it fills again.
        """
        self._write_paused = False
        while self._backlog and not self._write_paused and self.state == WebSocketProtocol.STATE_OPEN:
            payload, is_binary = self._backlog.popleft()
            self._backlog_bytes -= len(payload)
            self.sendMessage(payload, isBinary=is_binary)

    def stopProducing(self) -> None:
        """
        The transport is going away; C{onClose} follows.
        """

    # IAttachment

    def app_server_ended(self, end: AppServerEnd) -> None:
        """
        See L{IAttachment.app_server_ended}: close the TUI with the end's code (§7.5).
        """
        self._attached = False  # the supervisor has forgotten us already
        self._end(end.tui_close())

    # Ending

    def shut_down(self, code: int, reason: str) -> None:
        """
        Close this TUI with C{code} and C{reason} and its app-server link with 1000 (gateway
        shutdown); a websocket still in its handshake is dropped.
        """
        if self.phase == "handshake":
            if not self._gone:
                self.dropConnection(abort=True)
            return
        self._end((code, reason))

    def _end(self, tui_close: tuple[int, str] | None) -> None:
        """
        Tear the pair down once: stop setting it up, leave the supervisor, close the app-server link
        with 1000 C{gateway closing} and the TUI with C{tui_close} (C{None}: it is closing already).
        """
        if self.phase == "ended":
            return
        self.phase = "ended"
        for pending in (self._ensuring, self._dialing):
            if pending is not None:
                pending.cancel()
        self._ensuring = self._dialing = None
        self._inbound, self._inbound_bytes = [], 0
        self._backlog.clear()
        self._backlog_bytes = 0
        if self._attached and self._handle is not None:
            self._attached = False
            self.factory.supervisor.detach(self._handle, self)
        child, self._child = self._child, None
        if child is not None:
            child.close(CLOSE_NORMAL, GATEWAY_CLOSING)
        if tui_close is not None and not self._gone:
            _close_frame(self, *tui_close)
            self._linger.arm(self.transport)
        # Read again, so that the TUI's answer to our close frame (or its own) gets through.
        if self._read_pauses:
            self._read_pauses.clear()
            if self._steerable():
                self.transport.resumeProducing()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """
        Answer as Autobahn does, and make sure the connection ends soon after.
        """
        result: bool | None = super().onCloseFrame(code, reasonRaw)
        self._linger.arm(self.transport)
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The TUI websocket ended (whatever stage it reached): end the pair, log, tell the web layer.
        """
        if self._gone:
            return
        self._gone = True
        self._linger.disarm()
        self.close_code, _ = _reported_close(self, code, reason)
        self._end(None)
        self.factory.connection_lost(self)
        if self._opened_at is not None:
            log.info(
                "proxy ended: workspace {workspace_id}, close code {close_code}",
                workspace_id=self.workspace_id,
                duration=self.factory.reactor.seconds() - self._opened_at,
                close_code=self.close_code,
            )
        try:
            self.on_closed()
        except Exception:
            log.failure("TUI proxy: on_closed failed", workspace_id=self.workspace_id)


class _BoundFactory:
    """
    What a L{WebSocketResource} builds its protocol from: the proxy factory, for one workspace.
    """

    def __init__(
        self, factory: TUIProxyFactory, workspace_id: str, on_closed: Callable[[], None]
    ) -> None:
        self.factory = factory
        self.workspace_id = workspace_id
        self.on_closed = on_closed

    def buildProtocol(self, addr: Any) -> TUIProxyProtocol:
        """
        A L{TUIProxyProtocol} of the factory, for this workspace.
        """
        protocol = self.factory.buildProtocol(addr)
        assert isinstance(protocol, TUIProxyProtocol)
        protocol.workspace_id = self.workspace_id
        protocol.on_closed = self.on_closed
        return protocol


class _TUIUpgrade(WebSocketResource):
    """
    Autobahn's L{WebSocketResource} for one authenticated request.
    """

    def __init__(self, bound: _BoundFactory) -> None:
        super().__init__(bound)
        self._bound = bound

    def render(self, request: IRequest) -> bytes | int:
        """
        Upgrade the request's connection; when there is no connection left to upgrade, tell the web
        layer at once that this TUI has ended.
        """
        channel = getattr(request, "channel", None)
        if channel is None or channel.transport is None:
            self._bound.on_closed()
            if channel is None:
                return b""
        else:
            # The HTTP channel's idle timeout would still fire after the upgrade and drop a healthy
            # websocket; websockets have their own liveness (pings).
            channel.setTimeout(None)
        rendered: bytes | int = super().render(request)
        return rendered


class TUIProxyFactory(WebSocketServerFactory):
    """
    The TUI proxy of one gateway: builds a L{TUIProxyProtocol} per upgraded request, with every
    Autobahn option set explicitly, and counts into L{AppMetrics}.

    @ivar supervisor: the workspaces' app-servers.
    @ivar metrics: where the proxy counts.
    @ivar client_buffer_bytes: the per-TUI backlog limit (C{CXG_CLIENT_BUFFER_BYTES}).
    @ivar dial: opens the link to an app-server.
    """

    protocol = TUIProxyProtocol
    noisy = False

    def __init__(
        self,
        supervisor: ISupervisor,
        metrics: AppMetrics,
        reactor: Any,
        client_buffer_bytes: int,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        max_message: int = MAX_MESSAGE_BYTES,
        dial: ChildDialer | None = None,
    ) -> None:
        """
        @param reactor: the reactor of every connection and timer (L{IReactorTCP}, L{IReactorTime}).
        @param ping_interval: seconds between pings to each TUI; 0 = none.
        @param ping_timeout: seconds without a pong (or any other frame) before a TUI is dropped.
        @param max_message: largest message in either direction (larger → 1009).
        @param dial: opens the link to an app-server; default L{dial_child} on C{reactor}.
        """
        super().__init__(url=None, protocols=None, server=None, headers=None, reactor=reactor)
        # Autobahn schedules its timeouts and pings through txaio, which always uses the global
        # reactor; put them on ours.
        self._batched_timer = ReactorTimer(reactor)
        self.supervisor = supervisor
        self.metrics = metrics
        self.client_buffer_bytes = client_buffer_bytes
        self.dial: ChildDialer = dial or (
            lambda url, receiver: dial_child(reactor, url, receiver, max_message=max_message)
        )
        self._connections: set[TUIProxyProtocol] = set()
        self._open: set[TUIProxyProtocol] = set()
        self._messages = {d: metrics.tui_messages.labels(direction=d) for d in ("client", "server")}
        self._auto_replied = metrics.approvals_auto_replied.labels(path="tui")
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,
            utf8validateIncoming=True,
            requireMaskedClientFrames=True,
            maskServerFrames=False,
            applyMask=True,
            maxFramePayloadSize=max_message,
            maxMessagePayloadSize=max_message,
            autoFragmentSize=0,
            failByDrop=False,
            echoCloseCodeReason=False,
            openHandshakeTimeout=HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            tcpNoDelay=True,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout if ping_interval else 0,
            autoPingSize=12,
            autoPingRestartOnAnyTraffic=True,
            serveFlashSocketPolicy=False,
            # §7.1 step 2 checked the Origin before the upgrade.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            maxConnections=0,
            trustXForwardedFor=0,
        )

    def resource_for(self, workspace_id: str, on_closed: Callable[[], None]) -> IResource:
        """
        The resource that upgrades this request into a TUI websocket for C{workspace_id}.

        @param workspace_id: the authenticated workspace.
        @param on_closed: called once when the TUI websocket has ended (also when the upgrade could
            not happen); must return quickly.
        """
        resource: IResource = _TUIUpgrade(_BoundFactory(self, workspace_id, on_closed))
        return resource

    @property
    def open_connections(self) -> int:
        """
        TUI websockets whose handshake completed and that have not ended.
        """
        return len(self._open)

    def close_all(self, code: int, reason: str) -> None:
        """
        Close every TUI with C{code} and C{reason} (and its app-server link with 1000), e.g.
        C{1001 gateway shutting down}; TUIs still in their handshake are dropped.
        """
        for connection in list(self._connections):
            connection.shut_down(code, reason)

    # Called by the protocols

    def connection_made(self, connection: TUIProxyProtocol) -> None:
        """
        A TUI's connection was handed over.
        """
        self._connections.add(connection)

    def connection_opened(self, connection: TUIProxyProtocol) -> None:
        """
        A TUI's websocket handshake completed.
        """
        self._open.add(connection)
        self.metrics.tui_connections.set(len(self._open))

    def connection_lost(self, connection: TUIProxyProtocol) -> None:
        """
        A TUI's connection ended.
        """
        self._connections.discard(connection)
        self._open.discard(connection)
        self.metrics.tui_connections.set(len(self._open))

    def activity(self, workspace_id: str, direction: Literal["client", "server"]) -> None:
        """
        One message forwarded or dropped: touch the workspace and count it.
        """
        self.supervisor.touch(workspace_id)
        self._messages[direction].inc()

    def blocked(self, reason: str) -> None:
        """
        Count one blocked TUI request.
        """
        self.metrics.rpc_blocked.labels(reason=reason).inc()

    def auto_replied(self) -> None:
        """
        Count one approval request answered by the gateway.
        """
        self._auto_replied.inc()

    def slow_consumer(self) -> None:
        """
        Count one TUI closed as a slow consumer.
        """
        self.metrics.slow_consumer_closes.inc()
