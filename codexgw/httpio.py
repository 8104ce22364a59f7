"""
HTTP request bodies and responses as the gateways' specs define them.

 - L{BoundedRequest}: a C{twisted.web} request that stops keeping a body once it passes the site's
   cap, so an oversized upload costs neither memory nor disk; handlers answer 413 first.
 - L{read_json_object}: "invalid JSON" exactly as the specs define it (not UTF-8 JSON, not an object,
   or a listed field of the wrong type; C{null} means absent; a boolean is not an integer).
 - L{text_response}, L{json_response}, L{empty_response}: the two error body styles and success bodies,
   always with C{Content-Length} (never chunked).
 - L{GuardedSite} and its L{GuardedHTTPChannel}: request headers must complete within 10 s of a
   connection or of a request's first byte (a slow-header client cannot hold a connection), and
   accepted sockets use TCP keepalive (15 s idle, 15 s interval), as C{exec-gateway.md} §9.1 fixes.
 - L{redacted_access_log}: the site's access log line without the query string (tokens and tickets
   travel there) and without the secret path segments a site names.
"""

# twisted.web's Request is untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, cast

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
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
    body_too_large = False
    body_size = 0

    def gotLength(self, length: int | None) -> None:
        """
        Refuse to keep a body announced larger than the cap.
        """
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
            self.body_size = length
        super().gotLength(None if self.body_too_large else length)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep chunks until the cap is passed; then drop the kept part too.
        """
        self.body_size += len(data)
        if self.body_too_large:
            return
        if self.body_size > self.max_body_bytes:
            self.body_too_large = True
            content = cast(IO[bytes], self.content)
            content.seek(0)
            content.truncate()
            return
        super().handleContentChunk(data)


class GuardedHTTPChannel(HTTPChannel):
    """
    An HTTP/1.1 channel with a header deadline and TCP keepalive.

    Twisted's own timeout is an idle timeout that any byte resets, so a client trickling a header
    byte every few seconds would hold the connection forever; this deadline is not reset. While a
    keep-alive connection waits for its next request only the site's idle timeout applies; the
    deadline starts with the next request's first byte.
    """

    header_timeout: float = HEADER_TIMEOUT
    _header_deadline: IDelayedCall | None = None
    _awaiting_headers = True

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
        if self._awaiting_headers and self._header_deadline is None:
            self._arm_header_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """
        The headers are complete in time.
        """
        self._awaiting_headers = False
        self._disarm_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        """
        The response went out; the next request gets its own deadline.
        """
        super().requestDone(request)
        self._awaiting_headers = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Drop the deadline with the connection.
        """
        self._disarm_header_deadline()
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


def bounded_request(max_body_bytes: int) -> type[BoundedRequest]:
    """
    Return a L{BoundedRequest} class capped at C{max_body_bytes} (for C{Site(requestFactory=...)}).
    """
    return type("BoundedRequest", (BoundedRequest,), {"max_body_bytes": max_body_bytes})


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
