"""
The bridge client (C{envtools.md} §4): codex exec-server JSON-RPC carried in relay frames through the
exec gateway's C{/bridge/{exe_id}} websocket, and the pool of such clients.

Four layers, each replaceable in tests:
 - L{IBridgeLink} / L{IBridgeLinkReceiver}: one websocket as the protocol logic sees it — binary frames
   in and out, close, the end. L{BridgeLink} is the Autobahn adapter, L{connect_link} opens one;
   L{codexgw.testing.fakebridge.FakeBridgeLink} is the in-memory twin, and both pass the same
   interface tests (C{tests.envtools.test_bridge}).
 - L{BridgeClient}: the protocol logic of one stream (§4.2–§4.7) — Resume, Data C{seq} from 0,
   segments of 1 MiB, reassembly, the 64 MiB limits, replies matched by id, Reset, heartbeats, the
   end — on an injected clock, never touching Autobahn.
 - L{BridgeDialer}: the dial (§4.1, §4.9) — URL, cap token, the one retry after C{401 token
   expired}, then the opening of the stream.
 - L{BridgePool} (§4.8): one live client per exe id, single-flight dials, ended clients dropped.

Decisions where the spec is silent:
 - On an inbound Reset the client also closes its websocket with 1000 (the gateway closes the bridge
   after a Reset anyway; closing from this side too means nothing waits on the gateway for it).
 - The websocket pings every 30 s and is dropped when 30 s pass after a ping without any traffic: a
   silently dead network then ends the client (so the pool dials again) instead of leaving a client
   whose every call times out after 60 s.
 - Inbound C{segment_count} 0 or 1 is a complete payload whatever its C{segment_index}; the C{seq} of
   inbound messages is not checked for continuity (the spec asks neither).
 - A reply is matched only by an integer id (a boolean or a float never matches). A reply object
   with a non-null C{error} member is an error, even if it also carries C{result}; an C{error} that is
   not an object is reported with its JSON text as message and C{code=None}.
 - A request that is too large does not consume a C{seq} (nothing is sent).
 - The refused-upgrade text takes the first 200 bytes of the body as sent, de-chunked when the
   response is chunked; the body is read until C{Content-Length}, 200 bytes, or the end of the
   connection, whichever comes first.
 - A failure of the cap-token provider (it should never fail) is a C{bridge dial: <error>}.
 - C{close()} of the pool does not interrupt a dial in flight; its waiters fail at once with
   C{bridge: pool closed} and the client it produces is closed on arrival.
"""

# Autobahn's and Twisted's transport APIs are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote

from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol, parseHttpHeader
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from codexgw import relayframe
from codexgw.envtools.interfaces import (
    DEFAULT_CALL_TIMEOUT,
    CallError,
    DialError,
    IBridgePool,
    ICapTokenProvider,
    IExecServerClient,
)
from codexgw.executor.connection import client_endpoint
from codexgw.relayframe import Undecodable
from codexgw.wsdial import DialFactory

#: Connect plus websocket upgrade must finish within this many seconds (§4.1).
DIAL_TIMEOUT: Final = 10.0
#: The reply to C{initialize} must arrive within this many seconds (§4.2).
INITIALIZE_TIMEOUT: Final = 10.0
#: Largest websocket message accepted from the gateway (§4.1).
MAX_INCOMING_BYTES: Final = 16 << 20
#: Outbound payloads above this are split into segments of this size (§4.3).
SEGMENT_BYTES: Final = relayframe.SEGMENT_BYTES
#: Largest whole JSON-RPC message, in either direction (§4.3, §4.4).
MAX_MESSAGE_BYTES: Final = 64 << 20
#: Seconds between heartbeats while exec sessions live (§4.6).
HEARTBEAT_INTERVAL: Final = 60.0
#: The C{clientName} of C{initialize}, for both front-ends (§4.2).
CLIENT_NAME: Final = "codex-env-mcp"
#: Seconds between the websocket's own pings, and without traffic after one before it is dropped.
PING_INTERVAL: Final = 30.0
PING_TIMEOUT: Final = 30.0
#: Seconds a closing handshake may take.
CLOSE_TIMEOUT: Final = 1.0
#: How much of a refused upgrade's body the dial error shows.
REFUSAL_BODY_BYTES: Final = 200
#: Close code of a normal closure; Autobahn's code for a connection that just dropped.
CLOSE_NORMAL: Final = 1000
CLOSE_ABNORMAL: Final = 1006

#: The end text of a client whose websocket ended or that was closed (§4.7).
CONNECTION_CLOSED: Final = "bridge: connection closed"

log = Logger()

_T = TypeVar("_T")


# -------------------------------------------------------------------------------------------------
# The websocket, as the protocol logic sees it


class IBridgeLink(Interface):
    """
    The bridge client's websocket to the exec gateway.
    """

    def attach(receiver: IBridgeLinkReceiver) -> None:
        """
        Report to C{receiver} from now on: first the frames that arrived before (in order), and
        C{link_lost} if the websocket already ended. Called once.
        """

    def send_frame(frame: bytes) -> None:
        """
        Send C{frame} as one binary message now; dropped once the link is closing or has ended.
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake with C{code} and C{reason}; only the first call counts.
        """


class IBridgeLinkReceiver(Interface):
    """
    What the protocol logic is told about its websocket: frames, then C{link_lost} exactly once.
    """

    def frame_received(frame: bytes) -> None:
        """
        A binary message arrived; C{frame} is its exact bytes. (Text messages are not reported.)
        """

    def link_lost(code: int, reason: str) -> None:
        """
        The websocket ended with C{code} and C{reason} (1006 when it just dropped; the code this side
        sent when it started the closing handshake).
        """


class UpgradeRefused(DialError):
    """
    The gateway answered the upgrade with another status than 101: C{bridge dial: HTTP <status>:
    <body>}.

    @ivar status: the HTTP status.
    @ivar body: the first 200 bytes of the body, decoded and trimmed.
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"bridge dial: HTTP {status}: {body}")
        self.status = status
        self.body = body


#: Opens a link: C{connect(url, token, user_agent)}; fails with L{DialError}.
LinkConnector = Callable[[str, str, str], Deferred[IBridgeLink]]


# -------------------------------------------------------------------------------------------------
# The Autobahn adapter


@implementer(IBridgeLink)
class BridgeLink(WebSocketClientProtocol):
    """
    An Autobahn client protocol carrying relay frames for one L{IBridgeLinkReceiver}.

    @ivar closed: fires with C{(code, reason)} once the connection has ended, at whatever stage.
    """

    transport: Any
    _receiver: IBridgeLinkReceiver | None = None
    _lost: tuple[int, str] | None = None
    _opened = False
    # Set once a response other than 101 arrived: its status; the body is awaited in self.data.
    _refused_status: int | None = None
    # The dial error of a refusal whose body is complete.
    _refusal: UpgradeRefused | None = None

    def __init__(self) -> None:
        super().__init__()
        self._early: list[bytes] = []
        self.closed: Deferred[tuple[int, str]] = Deferred()

    # IBridgeLink

    def attach(self, receiver: IBridgeLinkReceiver) -> None:
        """
        See L{IBridgeLink.attach}.
        """
        self._receiver = receiver
        early, self._early = self._early, []
        for frame in early:
            receiver.frame_received(frame)
        if self._lost is not None:
            receiver.link_lost(*self._lost)

    def send_frame(self, frame: bytes) -> None:
        """
        See L{IBridgeLink.send_frame}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(frame, isBinary=True)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IBridgeLink.close}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    # The refused upgrade: Autobahn fails the handshake on the status line alone; the dial error
    # needs the body too.

    def processHandshake(self) -> None:
        """
        Read a refusal's body before failing the handshake; hand a 101 to Autobahn.
        """
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            return
        if self._refused_status is None:
            status = _status_of(self.data[: end + 4])
            if status is None or status == 101:
                super().processHandshake()
                return
            self._refused_status = status
        body, complete = _refusal_body(self.data[: end + 4], self.data[end + 4 :])
        if complete:
            self.wasNotCleanReason = f"upgrade refused with HTTP {self._refused_status}"
            self._refusal = UpgradeRefused(self._refused_status, _body_text(body))
            self.dropConnection(abort=True)

    # Autobahn callbacks

    def onOpen(self) -> None:
        """
        The handshake completed: the dial has its link.
        """
        self._opened = True
        cast(BridgeLinkFactory, self.factory).link_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Binary messages are frames for the receiver; text messages are ignored (§4.4).
        """
        if not isBinary:
            return
        if self._receiver is not None:
            self._receiver.frame_received(payload)
        else:
            self._early.append(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Report the end once: to the dial if the handshake never completed, else to the receiver.
        """
        if self._lost is not None:
            return
        # Autobahn declares these as None at class level; they hold what our close frame carried.
        local_code = cast("int | None", self.localCloseCode)
        local_reason = cast("bytes | None", self.localCloseReason)
        if self.closedByMe and local_code is not None:
            code = local_code
            reason = (local_reason or b"").decode("utf-8", "replace")
        self._lost = (code if code is not None else CLOSE_ABNORMAL, reason or "")
        if not self._opened:
            cast(BridgeLinkFactory, self.factory).link_failed(self._dial_error())
        elif self._receiver is not None:
            self._receiver.link_lost(*self._lost)
        self.closed.callback(self._lost)

    def _dial_error(self) -> DialError:
        if self._refusal is not None:
            return self._refusal
        if self._refused_status is not None:
            # The connection ended before the body was complete: what arrived is the body.
            end = self.data.find(b"\r\n\r\n")
            body, _ = _refusal_body(self.data[: end + 4], self.data[end + 4 :])
            return UpgradeRefused(self._refused_status, _body_text(body))
        return DialError(f"bridge dial: websocket handshake failed: {self.wasNotCleanReason}")


def _status_of(head: bytes) -> int | None:
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2:
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


def _refusal_body(head: bytes, data: bytes) -> tuple[bytes, bool]:
    """
    The part of a refused upgrade's body that arrived so far (at most L{REFUSAL_BODY_BYTES}), and
    whether nothing more is needed.
    """
    _, headers, _ = parseHttpHeader(head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, finished = _dechunk(data)
        return body[:REFUSAL_BODY_BYTES], finished or len(body) >= REFUSAL_BODY_BYTES
    length_text = headers.get("content-length")
    if length_text is not None and length_text.strip().isdigit():
        wanted = min(int(length_text), REFUSAL_BODY_BYTES)
        return data[:wanted], len(data) >= wanted
    return data[:REFUSAL_BODY_BYTES], len(data) >= REFUSAL_BODY_BYTES


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = bytearray()
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), False
        try:
            size = int(data[pos:line_end].split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            return bytes(body), True
        if size == 0:
            return bytes(body), True
        chunk = data[line_end + 2 : line_end + 2 + size]
        body += chunk
        if len(chunk) < size:
            return bytes(body), False
        pos = line_end + 2 + size + 2


def _body_text(body: bytes) -> str:
    return body[:REFUSAL_BODY_BYTES].decode("utf-8", "replace").strip()


class BridgeLinkFactory(DialFactory[BridgeLink]):
    """
    Builds the L{BridgeLink} of one dial, with every Autobahn option set explicitly; its
    C{opened} fails with L{DialError}.
    """

    protocol = BridgeLink

    def __init__(self, url: str, token: str, user_agent: str, reactor: Any) -> None:
        """
        @param url: the C{ws://} or C{wss://} URL of the bridge.
        @param token: the cap token for the C{Authorization} header.
        @param user_agent: the front-end's C{User-Agent}.
        """
        # No origin: the handshake carries no Origin header (§4.1).
        super().__init__(
            url=url,
            origin=None,
            useragent=user_agent,
            headers={"Authorization": f"Bearer {token}"},
            reactor=reactor,
        )
        self.setProtocolOptions(
            utf8validateIncoming=True,
            acceptMaskedServerFrames=False,
            maskClientFrames=True,
            applyMask=True,
            maxFramePayloadSize=MAX_INCOMING_BYTES,
            maxMessagePayloadSize=MAX_INCOMING_BYTES,
            autoFragmentSize=0,
            failByDrop=False,
            echoCloseCodeReason=False,
            serverConnectionDropTimeout=CLOSE_TIMEOUT,
            # A backstop only: the dial's own 10 s timer (connect plus upgrade) speaks first.
            openHandshakeTimeout=DIAL_TIMEOUT + 1,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            tcpNoDelay=True,
            perMessageCompressionOffers=[],
            perMessageCompressionAccept=lambda response: None,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            autoPingSize=12,
            autoPingRestartOnAnyTraffic=True,
        )


def connect_link(
    reactor: Any,
    url: str,
    token: str,
    user_agent: str,
    endpoint: IStreamClientEndpoint | None = None,
    timeout: float = DIAL_TIMEOUT,
) -> Deferred[IBridgeLink]:
    """
    Open the websocket at C{url} (connect plus upgrade within C{timeout}).

    @param endpoint: connect through this instead of the URL's own (tests).
    @return: fires with the open L{BridgeLink}; fails with L{UpgradeRefused} for a refused upgrade
        and with L{DialError} C{bridge dial: <detail>} for anything else.
    """
    return Deferred.fromCoroutine(_connect_link(reactor, url, token, user_agent, endpoint, timeout))


async def _connect_link(
    reactor: Any,
    url: str,
    token: str,
    user_agent: str,
    endpoint: IStreamClientEndpoint | None,
    timeout: float,
) -> IBridgeLink:
    try:
        factory = BridgeLinkFactory(url, token, user_agent, reactor)
        endpoint = endpoint or client_endpoint(reactor, url, timeout)
    except Exception as e:  # Autobahn refuses URLs it cannot use
        raise DialError(f"bridge dial: bad URL: {e}") from None

    def connect_failed(failure: Failure) -> None:
        error = failure.value
        factory.link_failed(DialError(f"bridge dial: {error}"))

    connecting = endpoint.connect(factory)
    connecting.addCallbacks(lambda _: None, connect_failed)
    try:
        return await factory.opened.addTimeout(timeout, reactor)
    except DeferredTimeout:
        connecting.cancel()
        factory.abort()
        raise DialError(f"bridge dial: timed out after {timeout:g} s") from None
    except CancelledError:
        connecting.cancel()
        factory.abort()
        raise


# -------------------------------------------------------------------------------------------------
# The protocol logic


@dataclass
class _Pending:
    method: str
    deferred: Deferred[Any]
    timer: IDelayedCall | None


@dataclass
class _Segments:
    seq: int
    count: int
    parts: list[bytes]
    size: int


@implementer(IExecServerClient, IBridgeLinkReceiver)
class BridgeClient:
    """
    One exec-server stream over one bridge websocket (§4.2–§4.7).

    Made on an attached link by the dialer, which then calls L{open}. Every timer runs on C{clock}.

    @ivar stream_id: the stream's id, a new lowercase hyphenated UUIDv4.
    @ivar ended: C{None} while usable; the end text once ended.
    @ivar sessions: how many live exec sessions run on this client.
    """

    def __init__(
        self,
        link: IBridgeLink,
        clock: IReactorTime,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        stream_id: str | None = None,
    ) -> None:
        """
        @param link: the open websocket; the client attaches itself to it.
        @param heartbeat_interval: seconds between heartbeats while sessions live.
        @param stream_id: the stream id to use (tests); a new UUIDv4 by default.
        """
        self.stream_id = stream_id if stream_id is not None else str(uuid.uuid4())
        self.ended: str | None = None
        self.sessions = 0
        self._link = link
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat: IDelayedCall | None = None
        self._seq = 0
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._segments: _Segments | None = None
        self._end_waiters: list[Deferred[str]] = []
        link.attach(self)

    # opening

    async def open(self, client_name: str = CLIENT_NAME, timeout: float = INITIALIZE_TIMEOUT) -> None:
        """
        Open the stream (§4.2): Resume, C{initialize} (reply within C{timeout}), C{initialized}.

        @raise DialError: with the failed step's text; the client is closed then.
        """
        self._link.send_frame(relayframe.resume_frame(self.stream_id, 0))
        try:
            await self.call("initialize", {"clientName": client_name}, timeout)
        except CallError as e:
            self.close()
            raise DialError(str(e)) from None
        self.notify("initialized", {})
        if self.ended is not None:
            raise DialError(self.ended)

    # IExecServerClient

    def call(self, method: str, params: Any, timeout: float = DEFAULT_CALL_TIMEOUT) -> Deferred[Any]:
        """
        See L{IExecServerClient.call}.
        """
        if self.ended is not None:
            return fail(CallError(self.ended))
        request_id = self._next_id
        self._next_id += 1
        payload = _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if len(payload) > MAX_MESSAGE_BYTES:
            return fail(
                CallError(f"{method}: message too large ({len(payload)} bytes > {MAX_MESSAGE_BYTES})")
            )

        def cancel(_: Deferred[Any]) -> None:
            pending = self._pending.pop(request_id, None)
            if pending is not None and pending.timer is not None and pending.timer.active():
                pending.timer.cancel()

        d: Deferred[Any] = Deferred(cancel)
        timer = self._clock.callLater(timeout, self._timed_out, request_id)
        self._pending[request_id] = _Pending(method, d, timer)
        self._send(payload)
        return d

    def notify(self, method: str, params: Any) -> None:
        """
        Send a notification (no reply); nothing happens once the client has ended.

        @raise CallError: when the message is too large.
        """
        if self.ended is not None:
            return
        payload = _encode({"jsonrpc": "2.0", "method": method, "params": params})
        if len(payload) > MAX_MESSAGE_BYTES:
            raise CallError(f"{method}: message too large ({len(payload)} bytes > {MAX_MESSAGE_BYTES})")
        self._send(payload)

    def session_opened(self) -> None:
        """
        See L{IExecServerClient.session_opened}.
        """
        if self.ended is not None:
            return
        self.sessions += 1
        if self._heartbeat is None:
            self._heartbeat = self._clock.callLater(self._heartbeat_interval, self._beat)

    def session_closed(self) -> None:
        """
        See L{IExecServerClient.session_closed}.
        """
        if self.sessions == 0:
            return
        self.sessions -= 1
        if self.sessions == 0:
            self._stop_heartbeat()

    def close(self) -> None:
        """
        See L{IExecServerClient.close}: the websocket is closed with 1000; no Reset is sent.
        """
        self._end(CONNECTION_CLOSED, close_link=True)

    def when_ended(self) -> Deferred[str]:
        """
        Fire with the end text once the client has ended (at once if it has).
        """
        if self.ended is not None:
            return succeed(self.ended)
        d: Deferred[str] = Deferred(lambda cancelled: _discard(self._end_waiters, cancelled))
        self._end_waiters.append(d)
        return d

    # IBridgeLinkReceiver

    def frame_received(self, frame: bytes) -> None:
        """
        See L{IBridgeLinkReceiver.frame_received} and §4.4.
        """
        if self.ended is not None:
            return
        try:
            message = relayframe.decode(frame)
        except Undecodable:
            return
        if message.version != relayframe.VERSION or message.stream_id != self.stream_id:
            return
        body = message.WhichOneof("body")
        if body == "data":
            data = message.data
            self._data(data.seq, data.segment_index, data.segment_count, data.payload)
        elif body == "reset":
            self._end(f"relay reset: {message.reset.reason}", close_link=True)

    def link_lost(self, code: int, reason: str) -> None:
        """
        See L{IBridgeLinkReceiver.link_lost}.
        """
        self._end(CONNECTION_CLOSED, close_link=False)

    # internals

    def _send(self, payload: bytes) -> None:
        # All segments of one message leave back to back: nothing else can run in between.
        for frame in relayframe.data_frames(self.stream_id, self._seq, payload, SEGMENT_BYTES):
            self._link.send_frame(frame)
        self._seq += 1

    def _data(self, seq: int, index: int, count: int, payload: bytes) -> None:
        if count <= 1:
            if self._segments is not None:
                self._fail("relay: bad segment sequence")
                return
            message = payload
        else:
            segments = self._segments
            if segments is None:
                if index != 0:
                    self._fail("relay: bad segment sequence")
                    return
                segments = self._segments = _Segments(seq, count, [], 0)
            elif seq != segments.seq or count != segments.count or index != len(segments.parts):
                self._fail("relay: bad segment sequence")
                return
            segments.parts.append(payload)
            segments.size += len(payload)
            if segments.size > MAX_MESSAGE_BYTES:
                self._fail(f"relay: message exceeds {MAX_MESSAGE_BYTES} bytes")
                return
            if len(segments.parts) < count:
                return
            message = b"".join(segments.parts)
            self._segments = None
        if len(message) > MAX_MESSAGE_BYTES:
            self._fail(f"relay: message exceeds {MAX_MESSAGE_BYTES} bytes")
            return
        self._deliver(message)

    def _deliver(self, message: bytes) -> None:
        try:
            reply = json.loads(message)
        except (ValueError, RecursionError):
            return
        if not isinstance(reply, dict):
            return
        request_id = reply.get("id")
        if type(request_id) is not int:
            return
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        error = reply.get("error")
        if error is not None:
            pending.deferred.errback(_call_error(pending.method, error))
        else:
            pending.deferred.callback(reply.get("result"))

    def _timed_out(self, request_id: int) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.timer = None
            pending.deferred.errback(CallError(f"{pending.method}: timed out"))

    def _beat(self) -> None:
        self._heartbeat = None
        if self.ended is not None or self.sessions == 0:
            return
        self._link.send_frame(relayframe.heartbeat_frame(self.stream_id))
        self._heartbeat = self._clock.callLater(self._heartbeat_interval, self._beat)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            if self._heartbeat.active():
                self._heartbeat.cancel()
            self._heartbeat = None

    def _fail(self, text: str) -> None:
        self._end(text, close_link=True)

    def _end(self, text: str, close_link: bool) -> None:
        if self.ended is not None:
            return
        self.ended = text
        self._stop_heartbeat()
        self._segments = None
        log.info(
            "bridge stream ended", event="envtools.bridge_ended", stream_id=self.stream_id, why=text
        )
        if close_link:
            self._link.close(CLOSE_NORMAL, "")
        pending, self._pending = self._pending, {}
        for call in pending.values():
            if call.timer is not None and call.timer.active():
                call.timer.cancel()
            call.deferred.errback(CallError(text))
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(text)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _call_error(method: str, error: object) -> CallError:
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code")
        text = message if isinstance(message, str) else json.dumps(message)
        int_code = code if type(code) is int else None
        return CallError(f"{method}: {text} (code={json.dumps(code)})", int_code)
    return CallError(f"{method}: {json.dumps(error)} (code=None)")


# -------------------------------------------------------------------------------------------------
# Dialing


class BridgeDialer:
    """
    Dials bridge clients for one front-end (§4.1, §4.2, §4.9).
    """

    def __init__(
        self,
        clock: IReactorTime,
        bridge_base: str,
        user_agent: str,
        tokens: ICapTokenProvider,
        connect: LinkConnector | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        client_name: str = CLIENT_NAME,
    ) -> None:
        """
        @param clock: the reactor (real dials) or a fake clock (tests with a fake C{connect}).
        @param bridge_base: the C{ws://}/C{wss://} URL ending in C{/bridge}.
        @param user_agent: C{codexgw-env-mcp} or C{codexgw-exec-sdk}.
        @param tokens: the cap-token provider.
        @param connect: opens a link; L{connect_link} on C{clock} by default.
        @param heartbeat_interval: seconds between heartbeats while sessions live.
        """
        self.clock = clock
        self.bridge_base = bridge_base
        self.user_agent = user_agent
        self.tokens = tokens
        self.heartbeat_interval = heartbeat_interval
        self.client_name = client_name
        self._connect: LinkConnector = connect or (
            lambda url, token, user_agent: connect_link(clock, url, token, user_agent)
        )

    def url_for(self, exe_id: str) -> str:
        """
        C{<bridge base>/<exe_id percent-encoded as one path segment>}.
        """
        return f"{self.bridge_base.rstrip('/')}/{quote(exe_id, safe='')}"

    def dial(self, exe_id: str) -> Deferred[BridgeClient]:
        """
        Open a bridge client to C{exe_id}: fails with L{DialError}.
        """
        return Deferred.fromCoroutine(self._dial(exe_id))

    async def _dial(self, exe_id: str) -> BridgeClient:
        url = self.url_for(exe_id)
        try:
            link = await self._connect(url, await self._token(False), self.user_agent)
        except UpgradeRefused as e:
            if e.status != 401 or e.body != "token expired":
                raise
            link = await self._connect(url, await self._token(True), self.user_agent)
        client = BridgeClient(link, self.clock, self.heartbeat_interval)
        await client.open(self.client_name)
        return client

    async def _token(self, force: bool) -> str:
        try:
            token: str = await maybeDeferred(self.tokens.token, force)
        except Exception as e:
            raise DialError(f"bridge dial: {e}") from None
        return token


# -------------------------------------------------------------------------------------------------
# The pool


@implementer(IBridgePool)
class BridgePool:
    """
    The bridge clients of one envtools context, one live client per exe id (§4.8).
    """

    def __init__(self, dial: Callable[[str], Deferred[BridgeClient]]) -> None:
        """
        @param dial: opens a client to an exe id (L{BridgeDialer.dial}); fails with L{DialError}.
        """
        self._dial = dial
        self._clients: dict[str, BridgeClient] = {}
        self._dialing: dict[str, list[Deferred[IExecServerClient]]] = {}
        self.closed = False

    def get(self, exe_id: str) -> Deferred[IExecServerClient]:
        """
        See L{IBridgePool.get}.
        """
        if not exe_id:
            return fail(DialError("bridge: exe_id required"))
        if self.closed:
            return fail(DialError("bridge: pool closed"))
        client = self._clients.get(exe_id)
        if client is not None:
            if client.ended is None:
                return succeed(client)
            del self._clients[exe_id]
        waiters = self._dialing.get(exe_id)
        first = waiters is None
        if waiters is None:
            waiters = self._dialing[exe_id] = []
        waiter: Deferred[IExecServerClient] = Deferred(lambda d: _discard(waiters, d))
        waiters.append(waiter)
        if first:
            maybeDeferred(self._dial, exe_id).addCallbacks(
                lambda client: self._dialled(exe_id, client),
                lambda failure: self._dial_failed(exe_id, failure),
            )
        return waiter

    def close(self) -> None:
        """
        See L{IBridgePool.close}.
        """
        if self.closed:
            return
        self.closed = True
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
        dialing, self._dialing = self._dialing, {}
        for waiters in dialing.values():
            for waiter in waiters:
                waiter.errback(DialError("bridge: pool closed"))

    def _dialled(self, exe_id: str, client: BridgeClient) -> None:
        waiters = self._dialing.pop(exe_id, [])
        if self.closed:
            client.close()
            return
        if client.ended is None:
            self._clients[exe_id] = client
            client.when_ended().addCallback(lambda _: self._forget(exe_id, client))
        for waiter in waiters:
            waiter.callback(client)

    def _dial_failed(self, exe_id: str, failure: Failure) -> None:
        waiters = self._dialing.pop(exe_id, [])
        error = failure.value
        if not isinstance(error, DialError):
            error = DialError(f"bridge dial: {error}")
        for waiter in waiters:
            waiter.errback(error)

    def _forget(self, exe_id: str, client: BridgeClient) -> None:
        if self._clients.get(exe_id) is client:
            del self._clients[exe_id]


def _discard(waiters: list[Deferred[_T]], d: Deferred[_T]) -> None:
    if d in waiters:
        waiters.remove(d)
