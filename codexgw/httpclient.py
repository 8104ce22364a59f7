"""
One bounded outbound HTTP exchange, as every client of the gateways and env-mcp makes it: the app
gateway's clients (C{app-gateway.md} §11, §4.3), env-mcp's loopback hooks (§9.4, §9.6, §9.8) and the
exec gateway's proxy-token verifier (C{exec-gateway.md} §4.8.1). The server side is
L{codexgw.httpio}'s.

This module imports no service, so every package may use it (the gateways never import each other,
C{delivery.md} §1). The rules it holds:
 - requests go through an injected treq-like client (L{HTTPRequester}: C{treq.client.HTTPClient} in
   production, C{treq.testing.StubTreq} in tests) and carry no C{Origin} header;
 - each exchange (request, response headers and body) has one total time limit, enforced with an
   injected clock by cancelling the request's Deferred;
 - a body the caller needs is read up to L{MAX_BODY_BYTES} (1 MiB); any other body up to
   L{MAX_QUOTED_BYTES} (1 KiB), and only that much is ever quoted (L{quote_body}).
The callers judge statuses and bodies and word their own errors (each spec has its texts).

Decisions where the specs are silent:
 - Redirects are never followed: a redirect would carry a secret header to another URL. A 3xx is
   just another status for the caller to judge.
 - A needed body over 1 MiB fails the exchange with C{response body exceeds 1048576 bytes} (the
   reading stops at the limit and the connection is closed), unless the caller asks for the first
   1 MiB marked L{Reply.truncated} instead (C{fail_oversized=False}) to word the failure itself.
 - Failures are L{ExchangeFailed} whose text is a short description: C{timed out after 5s}, or the
   underlying error's own text (for Twisted's C{ResponseNeverReceived} and friends, the text of the
   first wrapped reason rather than a list of failure reprs). The callers prefix their own labels.
 - A cancellation by the caller stays a C{CancelledError} (also when Twisted's web client reports it
   wrapped); only the exchange's own deadline becomes C{timed out after …}.
 - Quoted bodies are decoded as UTF-8 with replacement characters, so a cut in the middle of a
   character (or a binary body) never fails the error path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as StreamProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

#: The most of a needed response body any client reads.
MAX_BODY_BYTES: Final = 1 << 20
#: The most of any other body read, and of a body quoted in an error message.
MAX_QUOTED_BYTES: Final = 1 << 10


class HTTPRequester(Protocol):
    """
    The part of C{treq.client.HTTPClient} (and of C{treq.testing.StubTreq}) the clients use.
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Headers | None = None,
        data: bytes | None = None,
        allow_redirects: bool = True,
        unbuffered: bool = False,
    ) -> Deferred[Any]:
        """
        Send one request; the Deferred fires with the response (an C{IResponse}) once its headers
        arrived, and cancelling it abandons the request.
        """


class ExchangeFailed(Exception):
    """
    An exchange produced no usable response: network failure, timeout, or an oversized needed body.
    C{str(error)} is the description the callers quote.
    """


@dataclass(frozen=True)
class Reply:
    """
    A response as the clients judge it.

    @ivar status: the HTTP status code.
    @ivar body: the body read: all of it, up to L{MAX_BODY_BYTES}, when the caller needed it, else at
        most L{MAX_QUOTED_BYTES}.
    @ivar truncated: the body went on beyond what was read.
    """

    status: int
    body: bytes
    truncated: bool = False


def quote_body(body: bytes) -> str:
    """
    At most L{MAX_QUOTED_BYTES} of C{body} as text for an error message.
    """
    return body[:MAX_QUOTED_BYTES].decode("utf-8", "replace")


def json_bytes(value: object) -> bytes:
    """
    Compact UTF-8 JSON of C{value} (keys in the order given), as request bodies are sent.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_json(body: bytes) -> object:
    """
    Parse a response body as UTF-8 JSON.

    @raise ValueError: with the parser's description when it is not.
    """
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


def make_headers(fields: Mapping[str, str | bytes]) -> Headers:
    """
    Request headers from C{name → value}; text values are encoded as UTF-8.
    """
    return Headers(
        {name.encode("ascii"): [value if isinstance(value, bytes) else value.encode("utf-8")]
         for name, value in fields.items()}
    )  # fmt: skip


def make_http_client(reactor: Any, pool: HTTPConnectionPool | None = None) -> HTTPRequester:
    """
    The production client: treq over an C{Agent} with a persistent connection pool.

    @param reactor: the reactor (TCP, TLS and time).
    @param pool: the connection pool; a new persistent one when C{None}. Pass your own to close its
        cached connections at shutdown (C{pool.closeCachedConnections()}).
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, pool=pool))


class _BoundedBody(StreamProtocol):
    """
    Collect a response body up to a limit; past it, stop the transfer.
    """

    def __init__(self, limit: int, finished: Deferred[tuple[bytes, bool]]) -> None:
        self._limit = limit
        self._finished = finished
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        """
        Keep data up to the limit; the first byte beyond it ends the reading, marked truncated.
        """
        if self._finished.called:
            return
        room = self._limit - self._size
        self._chunks.append(data[:room])
        self._size += min(len(data), room)
        if len(data) > room:
            self._finished.callback((b"".join(self._chunks), True))
            self.stop()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The body ended: complete (or cut short in a way HTTP cannot tell, C{PotentialDataLoss}) or
        broken.
        """
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback((b"".join(self._chunks), False))
        else:
            self._finished.errback(reason)

    def stop(self) -> None:
        """
        Stop the transfer (the connection is closed).
        """
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


def read_bounded(response: IResponse, limit: int) -> Deferred[tuple[bytes, bool]]:
    """
    Read at most C{limit} bytes of C{response}'s body.

    @return: a Deferred firing with the bytes read and whether the body went on beyond them;
        cancelling it stops the transfer.
    """
    protocol: _BoundedBody | None = None

    def cancel(d: Deferred[tuple[bytes, bool]]) -> None:
        if protocol is not None:
            protocol.stop()

    finished: Deferred[tuple[bytes, bool]] = Deferred(cancel)
    protocol = _BoundedBody(limit, finished)
    response.deliverBody(protocol)
    return finished


def _root_cause(error: BaseException) -> BaseException:
    # Twisted's web client wraps the real reasons (ResponseNeverReceived, ResponseFailed,
    # RequestTransmissionFailed all carry a list of failures).
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], Failure):
        reason = reasons[0].value
        if reason is not None:
            return _root_cause(reason)
    return error


def describe(error: BaseException) -> str:
    """
    A short text for a failed exchange: the text of the first reason Twisted's web client errors
    (C{ResponseNeverReceived}, C{ResponseFailed}, C{RequestTransmissionFailed}) wrap, else the
    error's own text; the class name when the text is empty.
    """
    root = _root_cause(error)
    return str(root) or type(root).__name__


async def _exchange(
    http: HTTPRequester,
    method: str,
    url: str,
    headers: Headers,
    data: bytes | None,
    needs_body: Callable[[int], bool],
    fail_oversized: bool,
) -> Reply:
    response: IResponse = await http.request(
        method, url, headers=headers, data=data, allow_redirects=False, unbuffered=True
    )
    status = response.code
    needed = needs_body(status)
    body, truncated = await read_bounded(response, MAX_BODY_BYTES if needed else MAX_QUOTED_BYTES)
    if needed and truncated and fail_oversized:
        raise ExchangeFailed(f"response body exceeds {MAX_BODY_BYTES} bytes")
    return Reply(status, body, truncated)


def exchange(
    http: HTTPRequester,
    clock: IReactorTime,
    method: str,
    url: str,
    headers: Headers,
    data: bytes | None,
    timeout: float,
    needs_body: Callable[[int], bool],
    *,
    fail_oversized: bool = True,
) -> Deferred[Reply]:
    """
    Send one request and read its response within C{timeout} seconds of C{clock}.

    @param needs_body: whether the caller uses the body of a response with this status: such a
        body is read whole (at most L{MAX_BODY_BYTES}); any other body only up to
        L{MAX_QUOTED_BYTES}, for quoting.
    @param fail_oversized: whether a needed body beyond L{MAX_BODY_BYTES} fails the exchange
        (C{response body exceeds 1048576 bytes}); when C{False} the reply carries its first
        L{MAX_BODY_BYTES}, marked L{Reply.truncated}.
    @return: a Deferred firing with the L{Reply}, or failing with L{ExchangeFailed} (network failure,
        timeout, body too large) or C{CancelledError} when the caller cancelled it.
    """

    def timed_out(result: Reply | Failure, timeout: float) -> Reply:
        if isinstance(result, Failure):
            raise ExchangeFailed(f"timed out after {timeout:g}s")
        return result

    def failed(failure: Failure) -> Failure:
        error = failure.value
        if error is None or isinstance(error, ExchangeFailed):
            return failure
        if isinstance(_root_cause(error), CancelledError):
            # The caller cancelled: the web client reports it wrapped; hand it back plainly.
            return Failure(CancelledError())
        raise ExchangeFailed(describe(error))

    d = Deferred.fromCoroutine(_exchange(http, method, url, headers, data, needs_body, fail_oversized))
    d.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    return d.addErrback(failed)
