"""
HTTP request bodies and responses as the gateways' specs define them.

 - L{BoundedRequest}: a C{twisted.web} request that stops keeping a body once it passes the site's
   cap, so an oversized upload costs neither memory nor disk; handlers answer 413 first. Requests of
   the site's I{streamed routes} (method and path prefix, e.g. C{PUT /relay/}) are instead processed as
   soon as their headers arrive and hand their body to an L{IBodyReceiver} as it comes, paused and
   resumed by the handler (the exec gateway's byte relay, C{exec-gateway.md} §4.7, §9.5).
 - L{read_json_object}: "invalid JSON" exactly as the specs define it (not UTF-8 JSON, not an object,
   or a listed field of the wrong type; C{null} means absent; a boolean is not an integer).
 - L{text_response}, L{json_response}, L{empty_response}: the two error body styles and success bodies,
   always with C{Content-Length} (never chunked).
 - L{GuardedSite} and its L{GuardedHTTPChannel}: request headers must complete within 10 s of a
   connection or of a request's first byte (a slow-header client cannot hold a connection), and
   accepted sockets use TCP keepalive (15 s idle, 15 s interval), as C{exec-gateway.md} §9.1 fixes.
 - L{redacted_access_log}: the site's access log line without the query string (tokens and tickets
   travel there) and without the secret path segments a site names.

Streamed request bodies (Twisted's channel otherwise buffers a whole body before it processes the
request):
 - The channel decides at the end of the headers: a request with a body (C{Content-Length} above 0 or
   chunked) whose method and path match a streamed route is processed at once; C{Expect: 100-continue}
   is answered at once as for every request. Its body is not read until the handler attaches a
   receiver and resumes it; pausing stops the socket's reading (the client's TCP window fills), so no
   more than one socket read (64 KiB) is held per request.
 - The channel's idle timeout does not run while a streamed request is processed (a relay side may
   wait minutes for its peer); it is restored for the next request as Twisted does for every request.
 - A response finished before its streamed body ended carries C{Connection: close}. The connection is
   then closed gracefully: the response is flushed, the write side shut down, and what the client
   still sends is read and dropped until it closes, for at most L{LINGER_TIMEOUT} seconds (closing with
   unread bytes would make the kernel answer with a reset, which can destroy the response before the
   client reads it).
 - A streamed request's connection loss is noticed when its socket is read or written: while the body
   is paused, a client that goes away is only seen at the next resume or response.
"""

# twisted.web's Request is untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import io
import json
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Final, Protocol, cast

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site

#: Seconds a client has to finish a request's headers (from accept, or from a request's first byte).
HEADER_TIMEOUT: Final = 10.0
#: TCP keepalive: seconds of idleness before the first probe, and between probes.
KEEPALIVE_IDLE: Final = 15
KEEPALIVE_INTERVAL: Final = 15

#: The default cap on kept request bodies (the admin and internal APIs' 1 MiB limit).
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
#: Seconds a connection whose response did not wait for its streamed body keeps reading (and dropping)
#: what the client still sends before it is cut.
LINGER_TIMEOUT: Final = 5.0

#: A streamed route: the request method and a path prefix, e.g. C{(b"PUT", b"/relay/")}.
StreamedRoute = tuple[bytes, bytes]


class IBodyReceiver(Protocol):
    """
    Where a request's body goes when a handler reads it as a stream (L{BoundedRequest.read_body_stream}).
    """

    def body_received(self, data: bytes) -> None:
        """
        The next piece of the body (never empty).
        """

    def body_ended(self) -> None:
        """
        The whole body was received; nothing follows.
        """


_JSON_TYPES: Final[Mapping[type, tuple[type, ...]]] = {str: (str,), bool: (bool,), int: (int,)}


class BoundedRequest(Request):
    """
    A request that keeps at most C{max_body_bytes} of its body.

    Anything beyond is read from the socket and thrown away, and L{body_too_large} is set, so the
    handler can answer 413 before any other check. Set C{max_body_bytes} on a subclass (or with
    L{bounded_request}) to the largest limit of any route of the site; routes with smaller limits
    compare L{body_size} themselves.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: The routes whose requests are processed when their headers arrive (set with L{bounded_request}).
    streamed_routes: tuple[StreamedRoute, ...] = ()
    body_too_large = False
    body_size = 0
    #: Whether this request was processed before its body arrived (the channel sets it).
    streamed = False
    _processed = False
    _body_receiver: IBodyReceiver | None = None
    _body_paused = True
    _body_complete = False
    _body_end_delivered = False
    _delivering = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_held: deque[bytes] = deque()

    def wants_streaming(self, method: bytes, target: bytes) -> bool:
        """
        Whether a request for C{method} and C{target} (the request line's target) is streamed.
        """
        path = target.split(b"?", 1)[0]
        return any(method == m and path.startswith(prefix) for m, prefix in self.streamed_routes)

    @property
    def body_incomplete(self) -> bool:
        """
        Whether this is a streamed request whose body has not been received to its end.
        """
        return self.streamed and not self._body_complete

    def gotLength(self, length: int | None) -> None:
        """
        Refuse to keep a body announced larger than the cap; keep nothing of a streamed body.
        """
        if self.streamed:
            self.content = io.BytesIO()
            return
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
            self.body_size = length
        super().gotLength(None if self.body_too_large else length)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep chunks until the cap is passed; then drop the kept part too. A streamed body goes to its
        receiver instead (or waits for it, at most one socket read).
        """
        self.body_size += len(data)
        if self.streamed:
            if not (self.finished or self._disconnected):
                self._body_held.append(data)
                self._deliver_body()
            return
        if self.body_too_large:
            return
        if self.body_size > self.max_body_bytes:
            self.body_too_large = True
            content = cast(IO[bytes], self.content)
            content.seek(0)
            content.truncate()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Process the request; for a streamed request the channel calls this twice: when the headers
        are complete (process it) and when the body is (end of the stream).
        """
        if self._processed:
            self._body_complete = True
            self._deliver_body()
            return
        self._processed = True
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        """
        A response that starts before its streamed body ended closes the connection afterwards.
        """
        if not self.startedWriting and self.body_incomplete:
            self.setHeader(b"Connection", b"close")
        super().write(data)

    def read_body_stream(self, receiver: IBodyReceiver) -> None:
        """
        Hand the body to C{receiver}, from the start, once L{resume_body} is called.

        A request that was not streamed (its route is not a streamed route of the site) has its whole
        kept body already; it is delivered as one piece.
        """
        self._body_receiver = receiver
        if not self.streamed:
            body = read_body(self)
            if body:
                self._body_held.append(body)
            self._body_complete = True

    def pause_body(self) -> None:
        """
        Stop delivering the body (and stop reading the socket).
        """
        self._body_paused = True
        channel = getattr(self, "channel", None)
        if self.body_incomplete and isinstance(channel, GuardedHTTPChannel):
            channel.pause_request_body()

    def resume_body(self) -> None:
        """
        Deliver the body: what was held first, then what the socket brings.
        """
        self._body_paused = False
        self._deliver_body()

    def _deliver_body(self) -> None:
        receiver = self._body_receiver
        if receiver is None or self._delivering:
            # Without a receiver the body waits; a delivery running further up the stack goes on.
            return
        self._delivering = True
        try:
            while self._body_held and not self._body_paused and not self._gone():
                receiver.body_received(self._body_held.popleft())
        finally:
            self._delivering = False
        if self._body_paused or self._gone() or self._body_held:
            return
        if self._body_complete:
            if not self._body_end_delivered:
                self._body_end_delivered = True
                receiver.body_ended()
            return
        channel = getattr(self, "channel", None)
        if isinstance(channel, GuardedHTTPChannel):
            channel.resume_request_body()

    def _gone(self) -> bool:
        return bool(self.finished or self._disconnected)


class GuardedHTTPChannel(HTTPChannel):
    """
    An HTTP/1.1 channel with a header deadline and TCP keepalive.

    Twisted's own timeout is an idle timeout that any byte resets, so a client trickling a header
    byte every few seconds would hold the connection forever; this deadline is not reset. While a
    keep-alive connection waits for its next request only the site's idle timeout applies; the
    deadline starts with the next request's first byte.
    """

    header_timeout: float = HEADER_TIMEOUT
    linger_timeout: float = LINGER_TIMEOUT
    _header_deadline: IDelayedCall | None = None
    _awaiting_headers = True
    #: A streamed request's body is paused: the socket is not read.
    _request_body_paused = False
    #: The response did not wait for its streamed body: the rest of the input is dropped.
    _dropping_input = False
    _linger: IDelayedCall | None = None
    _lost = False

    def connectionMade(self) -> None:
        """
        Start the header deadline and switch TCP keepalive on.
        """
        super().connectionMade()
        _keepalive(self.transport)
        self._arm_header_deadline()

    def dataReceived(self, data: bytes) -> None:
        """
        The first byte of a new request starts its header deadline.
        """
        if self._dropping_input:
            return
        if self._awaiting_headers and self._header_deadline is None:
            self._arm_header_deadline()
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        """
        Body bytes (or pipelined requests), unless the input is being dropped.
        """
        if self._dropping_input:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        """
        The headers are complete in time; a request of a streamed route is processed now.
        """
        self._awaiting_headers = False
        self._disarm_header_deadline()
        request = self.requests[-1]
        streamed = (
            self.length != 0
            and isinstance(request, BoundedRequest)
            and request.wants_streaming(self._command, self._path)
        )
        if streamed:
            request.streamed = True
        super().allHeadersReceived()
        if streamed:
            self._process_streamed(request)

    def _process_streamed(self, request: BoundedRequest) -> None:
        # The body is not read before the handler asks for it.
        self.pause_request_body()
        if self.timeOut:
            # As allContentReceived does for every request: restored by requestDone.
            self._savedTimeOut = self.setTimeout(None)
        request.requestReceived(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        """
        The end of a body; nothing to do when the response is already out and the input dropped.
        """
        if self._dropping_input:
            return
        super().allContentReceived()

    def pause_request_body(self) -> None:
        """
        Stop reading the socket for the streamed request (bytes already read wait in the parser).
        """
        self._request_body_paused = True
        self.paused = True
        self._networkProducer.pauseProducing()

    def resume_request_body(self) -> None:
        """
        Read the socket for the streamed request again, starting with the bytes already read.
        """
        if not self._request_body_paused or self._lost:
            return
        self._request_body_paused = False
        self.paused = False
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        # Hand over what the parser holds; a parse loop running further up the stack continues on its
        # own (LineReceiver then just appends the empty string).
        LineReceiver.dataReceived(self, b"")

    def resumeProducing(self) -> None:
        """
        The socket's send buffer drained; reading stays off while a streamed body is paused.
        """
        super().resumeProducing()
        if self._request_body_paused:
            self._networkProducer.pauseProducing()

    def requestDone(self, request: Request) -> None:
        """
        The response went out; the next request gets its own deadline. After a response that did not
        wait for its streamed body, the connection closes gracefully instead.
        """
        if isinstance(request, BoundedRequest) and request.body_incomplete:
            self.persistent = False
            self._dropping_input = True
        elif self._request_body_paused:
            # The body ended while its reading was paused: read again, and queue what the parser
            # still holds behind what was already set aside for the next request.
            self._request_body_paused = False
            self.paused = False
            if self._buffer:
                self._dataBuffer.append(self._buffer)
                self._buffer = b""
        super().requestDone(request)
        self._awaiting_headers = True

    def loseConnection(self) -> None:
        """
        Close; while input is dropped, gracefully: flush, shut down writing, read until the client
        closes or L{linger_timeout} passes.
        """
        if not self._dropping_input:
            super().loseConnection()
            return
        if self._linger is not None or self._lost:
            return
        transport: Any = self.transport
        cast(Any, self._networkProducer).unregisterProducer()
        self._request_body_paused = False
        self.paused = False
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        transport.resumeProducing()
        self._linger = self.callLater(self.linger_timeout, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Drop the deadlines with the connection.
        """
        self._lost = True
        self._disarm_header_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.callLater(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


def _keepalive(transport: object) -> None:
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    if set_keepalive is None:
        return
    set_keepalive(True)
    handle: Any = getattr(transport, "getHandle", lambda: None)()
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL)):
        if hasattr(socket, option) and hasattr(handle, "setsockopt"):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class GuardedSite(Site):
    """
    A C{Site} whose connections are L{GuardedHTTPChannel}s (plain HTTP/1.1: no TLS, so no HTTP/2).
    """

    # Twisted types this attribute as its HTTP/1.1-or-2 channel factory; a channel class is what it
    # calls.
    protocol = GuardedHTTPChannel  # type: ignore[assignment]


def bounded_request(
    max_body_bytes: int, streamed_routes: Sequence[StreamedRoute] = ()
) -> type[BoundedRequest]:
    """
    Return a L{BoundedRequest} class capped at C{max_body_bytes} (for C{Site(requestFactory=...)}),
    whose requests for C{streamed_routes} are processed as soon as their headers arrive (a
    L{GuardedSite} is needed for that).
    """
    attributes = {"max_body_bytes": max_body_bytes, "streamed_routes": tuple(streamed_routes)}
    return type("BoundedRequest", (BoundedRequest,), attributes)


def body_exceeds(request: IRequest, limit: int) -> bool:
    """
    Whether the request's body is over C{limit} bytes (or over the site's cap).
    """
    if isinstance(request, BoundedRequest):
        return request.body_too_large or request.body_size > limit
    content = request.content
    if content is None:
        return False
    content.seek(0, 2)
    size: int = content.tell()
    content.seek(0)
    return size > limit


def read_body(request: IRequest) -> bytes:
    """
    Return the whole (kept) request body.
    """
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read()
    return body


class InvalidJSON(ValueError):
    """
    The body is not what the route accepts; routes answer 400 C{invalid JSON}.
    """


def _no_constants(name: str) -> object:
    raise InvalidJSON(f"not JSON: {name}")


def read_json_object(body: bytes, fields: Mapping[str, type]) -> dict[str, object]:
    """
    Parse C{body} as a JSON object and check the listed fields' types.

    @param fields: field name → C{str}, C{bool} or C{int}; other keys are kept unchecked.
    @return: the object, with listed fields that were C{null} removed (absent).
    @raise InvalidJSON: when the body is empty, not UTF-8 JSON, not an object, or a listed field has
        another type (a boolean is not an integer; C{1.5} is not an integer).
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidJSON("not UTF-8 JSON") from e
    if not isinstance(value, dict):
        raise InvalidJSON("not a JSON object")
    for name, kind in fields.items():
        if name not in value:
            continue
        field = value[name]
        if field is None:
            del value[name]
        elif not isinstance(field, _JSON_TYPES[kind]) or (kind is int and isinstance(field, bool)):
            raise InvalidJSON(f"{name} has the wrong type")
    return value


def _respond(request: IRequest, status: int, content_type: bytes, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def text_response(request: IRequest, status: int, message: str) -> bytes:
    """
    A text body: C{message} and a newline, C{text/plain; charset=utf-8}, C{nosniff}.
    """
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return _respond(request, status, b"text/plain; charset=utf-8", message.encode("utf-8") + b"\n")


def plain_response(request: IRequest, status: int, body: bytes) -> bytes:
    """
    A bare text body without a trailing newline (health endpoints).
    """
    return _respond(request, status, b"text/plain; charset=utf-8", body)


def json_body(value: object) -> bytes:
    """
    Compact JSON (no spaces), keys in the order given, and a newline.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def json_response(request: IRequest, status: int, value: object) -> bytes:
    """
    A JSON body in the specs' style.
    """
    return _respond(request, status, b"application/json", json_body(value))


def json_error(request: IRequest, status: int, message: str) -> bytes:
    """
    C{{"error":"<message>"}}.
    """
    return json_response(request, status, {"error": message})


def empty_response(request: IRequest, status: int = 204) -> bytes:
    """
    A response without a body (204).
    """
    request.setResponseCode(status)
    return b""


def bearer_token(request: IRequest) -> str | None:
    """
    The token of an C{Authorization: Bearer <token>} header (capital B, one space), unmodified, or
    C{None} when the header is missing or does not begin that way. The token may be empty: C{Bearer }
    (which reaches us as C{Bearer}, without the space) gives C{""}.
    """
    raw: bytes | None = request.getHeader(b"Authorization")
    if raw == b"Bearer":
        # HTTP parsers drop a field value's trailing whitespace, so C{Bearer } arrives like this.
        return ""
    if raw is None or not raw.startswith(b"Bearer "):
        return None
    return raw[len(b"Bearer ") :].decode("utf-8", "surrogateescape")


class _LoggedRequest:
    """
    A request as the access log sees it: the original, with another C{uri}.
    """

    def __init__(self, request: Any, uri: bytes) -> None:
        self._request = request
        self.uri = uri

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def redacted_access_log(secret_prefixes: tuple[bytes, ...] = ()) -> Callable[[str, Any], str]:
    """
    An access-log formatter for C{Site(logFormatter=...)}: Twisted's combined log format, with the
    request path instead of the full URI (query strings carry ws tickets and registration tokens),
    and everything after a path prefix in C{secret_prefixes} (e.g. C{b"/relay/"}, whose next segment is
    a ticket) replaced by C{<redacted>}. The specs never let those reach a log.
    """

    def format_line(timestamp: str, request: Any) -> str:
        path: bytes = request.path
        for prefix in secret_prefixes:
            if path.startswith(prefix):
                path = prefix + b"<redacted>"
                break
        line: str = combinedLogFormatter(timestamp, _LoggedRequest(request, path))
        return line

    return format_line
