"""
The envtools hooks of env-mcp (C{envtools.md} §1.3), bound over HTTP to the app gateway's loopback
routes (C{app-gateway.md} §3.1–§3.4) with the spawn's C{X-Loopback-Token}:

 - L{LoopbackResolverSource}: C{GET /internal/connected} (§9.6), 3 s, at most 1 MiB read;
 - L{LoopbackCapTokens}: the cap-token provider (§9.8): starts with the spawn's token, renews it
   through C{POST /internal/captoken} (5 s) at 3/4 of its life or when forced;
 - L{LoopbackRelayCreator}: C{POST /internal/relay/create} (§9.4), 10 s.

The HTTP exchange (L{exchange}) is written here rather than borrowed from the app gateway's client
module: env-mcp never imports the app gateway package. It goes through an injected treq-like client
(L{HTTPRequester}: treq over an C{Agent} in production, C{treq.testing.StubTreq} in tests) and one
time limit per exchange on an injected clock.

Decisions where the spec is silent:
 - Every request carries C{User-Agent: codexgw-env-mcp} and no C{Origin}; redirects are not followed.
 - Error bodies are quoted as their first 1 KiB, decoded as UTF-8 with replacement and stripped of
   surrounding whitespace (the gateway's bodies end with C{\\n}).
 - A network failure or timeout of the resolver source is C{GET /internal/connected: <detail>}; a
   body over 1 MiB is C{decode: response body exceeds 1048576 bytes}. Timeouts read C{timed out after
   <n>s}.
 - The cap-token provider shares one renewal among concurrent callers. A failed renewal is retried at
   the next C{token()} that finds the token due. The renewal's body is empty (the route ignores it);
   a 200 answer must carry a non-empty string C{token}, else the renewal failed. Only the token is
   kept: its own C{iat}/C{exp} decide the next renewal.
 - A token whose payload lacks integer C{iat}/C{exp}, or has C{exp ≤ iat}, cannot be decoded: due.
 - A 201 answer of relay/create without string C{ticket}, C{upload_url} and C{download_url} is the
   error C{relay/create: decode: <detail>}.
 - Tokens are never logged; warnings name the route and the failure only.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as StreamProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from codexgw.envtools.interfaces import (
    ICapTokenProvider,
    IRelayCreator,
    IResolverSource,
    RelayError,
    RelayTicket,
    RelayUnavailable,
)
from codexgw.tokens import b64url_decode

#: The header the loopback routes authenticate with (§3.1).
LOOPBACK_TOKEN_HEADER: Final = "X-Loopback-Token"  # noqa: S105 - a header name
#: The User-Agent of env-mcp's requests (and of its bridge dials, §9.7).
USER_AGENT: Final = "codexgw-env-mcp"

#: Time limits of the three routes, in seconds (§11).
CONNECTED_TIMEOUT: Final = 3.0
CAPTOKEN_TIMEOUT: Final = 5.0
RELAY_TIMEOUT: Final = 10.0

#: The most of a needed response body read (§9.6).
MAX_BODY_BYTES: Final = 1 << 20
#: The most of an error body quoted.
MAX_QUOTED_BYTES: Final = 1 << 10


class HTTPRequester(Protocol):
    """
    The part of C{treq.client.HTTPClient} (and of C{treq.testing.StubTreq}) the hooks use.
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
        Send one request; the Deferred fires with the C{IResponse} once its headers arrived, and
        cancelling it abandons the request.
        """


class ExchangeFailed(Exception):
    """
    An exchange produced no response: network failure or timeout. C{str()} is a short description.
    """


class LoopbackError(Exception):
    """
    A loopback route failed; C{str()} is the error text the hook's caller shows.
    """


@dataclass(frozen=True)
class Reply:
    """
    A response: its status and the body read (all of it up to the caller's limit).

    @ivar truncated: the body went on beyond the limit.
    """

    status: int
    body: bytes
    truncated: bool


def quote_body(body: bytes) -> str:
    """
    At most 1 KiB of C{body} as text for an error message, stripped of surrounding whitespace.
    """
    return body[:MAX_QUOTED_BYTES].decode("utf-8", "replace").strip()


def make_http_client(reactor: Any, pool: HTTPConnectionPool) -> HTTPRequester:
    """
    The production client: treq over an C{Agent} using C{pool}.
    """
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
        Keep data up to the limit; a byte beyond it ends the reading, marked truncated.
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
        The body ended, completely or not.
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


def _read_bounded(response: IResponse, limit: int) -> Deferred[tuple[bytes, bool]]:
    protocol: _BoundedBody | None = None

    def cancel(d: Deferred[tuple[bytes, bool]]) -> None:
        if protocol is not None:
            protocol.stop()

    finished: Deferred[tuple[bytes, bool]] = Deferred(cancel)
    protocol = _BoundedBody(limit, finished)
    response.deliverBody(protocol)
    return finished


def describe(error: BaseException) -> str:
    """
    A short text for a failed exchange: the first reason Twisted's web client errors wrap
    (C{ResponseNeverReceived} and friends carry a list of failures), else the error's own text.
    """
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], Failure):
        inner = reasons[0].value
        if inner is not None:
            return describe(inner)
    return str(error) or type(error).__name__


async def _exchange(
    http: HTTPRequester, method: str, url: str, headers: Headers, data: bytes | None, limit: int
) -> Reply:
    response: IResponse = await http.request(
        method, url, headers=headers, data=data, allow_redirects=False, unbuffered=True
    )
    body, truncated = await _read_bounded(response, limit)
    return Reply(response.code, body, truncated)


def exchange(
    http: HTTPRequester,
    clock: IReactorTime,
    method: str,
    url: str,
    headers: Mapping[str, str],
    data: bytes | None,
    timeout: float,
    limit: int = MAX_BODY_BYTES,
) -> Deferred[Reply]:
    """
    Send one request and read its response (at most C{limit} body bytes) within C{timeout} seconds.

    @return: a Deferred firing with the L{Reply}, or failing with L{ExchangeFailed}.
    """
    raw = Headers({name.encode("ascii"): [value.encode("utf-8")] for name, value in headers.items()})

    def timed_out(result: Reply | Failure, timeout: float) -> Reply:
        if isinstance(result, Failure):
            raise ExchangeFailed(f"timed out after {timeout:g}s")
        return result

    def failed(failure: Failure) -> Failure:
        error = failure.value
        if error is None or isinstance(error, ExchangeFailed | CancelledError):
            return failure
        raise ExchangeFailed(describe(error))

    d = Deferred.fromCoroutine(_exchange(http, method, url, raw, data, limit))
    d.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    return d.addErrback(failed)


class _Loopback:
    """
    What the three hooks share: the client, the clock, the gateway's base URL and the token.
    """

    def __init__(
        self, http: HTTPRequester, clock: IReactorTime, base_url: str, loopback_token: str
    ) -> None:
        self.http = http
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self._token = loopback_token

    def headers(self, **extra: str) -> dict[str, str]:
        """
        The headers of a loopback request plus C{extra}.
        """
        return {LOOPBACK_TOKEN_HEADER: self._token, "User-Agent": USER_AGENT, **extra}

    def __repr__(self) -> str:
        # Never the token.
        return f"<loopback {self.base_url}>"


@implementer(IResolverSource)
class LoopbackResolverSource:
    """
    The resolver source of env-mcp (§9.6): the workspace's connected executors from
    C{GET /internal/connected}.
    """

    def __init__(
        self, http: HTTPRequester, clock: IReactorTime, base_url: str, loopback_token: str
    ) -> None:
        """
        @param base_url: C{--app-gateway-internal}.
        @param loopback_token: the spawn's loopback token.
        """
        self._loopback = _Loopback(http, clock, base_url, loopback_token)

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """
        The ConnectedExecutor objects; fails with L{LoopbackError}.
        """
        return Deferred.fromCoroutine(self._list())

    async def _list(self) -> builtins.list[dict[str, Any]]:
        loopback = self._loopback
        try:
            reply = await exchange(
                loopback.http,
                loopback.clock,
                "GET",
                loopback.base_url + "/internal/connected",
                loopback.headers(Accept="application/json"),
                None,
                CONNECTED_TIMEOUT,
            )
        except ExchangeFailed as e:
            raise LoopbackError(f"GET /internal/connected: {e}") from None
        if reply.status != 200:
            raise LoopbackError(f"HTTP {reply.status}: {quote_body(reply.body)}")
        if reply.truncated:
            raise LoopbackError(f"decode: response body exceeds {MAX_BODY_BYTES} bytes")
        try:
            entries = json.loads(reply.body.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise LoopbackError(f"decode: {e}") from None
        if not isinstance(entries, list):
            raise LoopbackError("decode: not a JSON array")
        if not all(isinstance(entry, dict) for entry in entries):
            raise LoopbackError("decode: an element is not a JSON object")
        return entries


def token_times(token: str) -> tuple[int, int] | None:
    """
    The C{iat} and C{exp} of a cap token's payload, decoded without verifying; C{None} when the token
    cannot be decoded or C{exp ≤ iat}.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(b64url_decode(parts[1]).decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    iat, exp = payload.get("iat"), payload.get("exp")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        return None
    assert isinstance(iat, int) and isinstance(exp, int)
    if exp <= iat:
        return None
    return iat, exp


def renewal_due(token: str, now: float) -> bool:
    """
    Whether C{token} is due for renewal at C{now}: at or past 3/4 of its life, or undecodable.
    """
    times = token_times(token)
    if times is None:
        return True
    iat, exp = times
    # now ≥ iat + (exp − iat) × 3/4, in exact arithmetic on the integer side.
    return 4 * now >= 4 * iat + 3 * (exp - iat)


@implementer(ICapTokenProvider)
class LoopbackCapTokens:
    """
    The cap-token provider of env-mcp (§9.8).
    """

    def __init__(
        self,
        initial: str,
        http: HTTPRequester,
        clock: IReactorTime,
        base_url: str,
        loopback_token: str,
        log: Logger | None = None,
    ) -> None:
        """
        @param initial: the token of C{--workspace-token-env}.
        @param base_url: C{--app-gateway-internal}.
        @param loopback_token: the spawn's loopback token.
        """
        self._current = initial
        self._loopback = _Loopback(http, clock, base_url, loopback_token)
        self._log = log if log is not None else Logger()
        self._renewing: list[Deferred[str]] | None = None

    def __repr__(self) -> str:
        return f"<LoopbackCapTokens {self._loopback!r}>"

    def token(self, force: bool) -> Deferred[str]:
        """
        The token for the next dial, renewed first when forced or due. Never fails.
        """
        if not force and not renewal_due(self._current, self._loopback.clock.seconds()):
            return succeed(self._current)
        waiter: Deferred[str] = Deferred()
        if self._renewing is not None:
            self._renewing.append(waiter)
            return waiter
        self._renewing = [waiter]
        Deferred.fromCoroutine(self._renew()).addBoth(self._renewed)
        return waiter

    def _renewed(self, _: object) -> None:
        waiters, self._renewing = self._renewing or [], None
        for waiter in waiters:
            waiter.callback(self._current)

    async def _renew(self) -> None:
        loopback = self._loopback
        try:
            reply = await exchange(
                loopback.http,
                loopback.clock,
                "POST",
                loopback.base_url + "/internal/captoken",
                loopback.headers(),
                b"",
                CAPTOKEN_TIMEOUT,
            )
            self._current = _renewed_token(reply)
        except Exception as e:
            self._log.warn("cap token renewal failed; keeping the current token: {error}", error=str(e))


def _renewed_token(reply: Reply) -> str:
    if reply.status != 200:
        raise LoopbackError(f"POST /internal/captoken: HTTP {reply.status}: {quote_body(reply.body)}")
    try:
        answer = json.loads(reply.body.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise LoopbackError(f"POST /internal/captoken: decode: {e}") from None
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise LoopbackError("POST /internal/captoken: decode: no token in the answer")
    return token


@implementer(IRelayCreator)
class LoopbackRelayCreator:
    """
    The relay creator of env-mcp (§9.4): tickets from C{POST /internal/relay/create}.
    """

    def __init__(
        self, http: HTTPRequester, clock: IReactorTime, base_url: str, loopback_token: str
    ) -> None:
        """
        @param base_url: C{--app-gateway-internal}.
        @param loopback_token: the spawn's loopback token.
        """
        self._loopback = _Loopback(http, clock, base_url, loopback_token)

    def create_relay(
        self, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int
    ) -> Deferred[RelayTicket]:
        """
        A relay ticket; fails with L{RelayUnavailable} (503) or L{RelayError}.
        """
        body = {
            "source_exe_id": source_exe_id,
            "dest_exe_id": dest_exe_id,
            "ttl_seconds": ttl_seconds,
            "max_bytes": max_bytes,
        }
        return Deferred.fromCoroutine(self._create(body))

    async def _create(self, body: dict[str, object]) -> RelayTicket:
        loopback = self._loopback
        try:
            reply = await exchange(
                loopback.http,
                loopback.clock,
                "POST",
                loopback.base_url + "/internal/relay/create",
                loopback.headers(**{"Content-Type": "application/json"}),
                json.dumps(body, separators=(",", ":")).encode("utf-8"),
                RELAY_TIMEOUT,
            )
        except ExchangeFailed as e:
            raise RelayError(f"relay/create: {e}") from None
        if reply.status == 503:
            raise RelayUnavailable("relay unavailable")
        if reply.status != 201:
            raise RelayError(f"relay/create: status {reply.status}: {quote_body(reply.body)}")
        return _ticket(reply)


def _ticket(reply: Reply) -> RelayTicket:
    fields = ("ticket", "upload_url", "download_url")
    try:
        answer = json.loads(reply.body.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise RelayError(f"relay/create: decode: {e}") from None
    if reply.truncated or not isinstance(answer, dict):
        raise RelayError("relay/create: decode: not a JSON object")
    values = [answer.get(name) for name in fields]
    for name, value in zip(fields, values, strict=True):
        if not isinstance(value, str):
            raise RelayError(f"relay/create: decode: {name} must be a string")
    ticket, upload_url, download_url = (str(v) for v in values)
    return RelayTicket(ticket=ticket, upload_url=upload_url, download_url=download_url)


@dataclass(frozen=True)
class LoopbackHooks:
    """
    The three hooks of one env-mcp process over one HTTP client.

    @ivar close: closes the client's cached connections (at exit).
    """

    source: LoopbackResolverSource
    cap_tokens: LoopbackCapTokens
    relay_creator: LoopbackRelayCreator
    close: Callable[[], object]


def loopback_hooks(
    reactor: Any, base_url: str, loopback_token: str, workspace_token: str, log: Logger | None = None
) -> LoopbackHooks:
    """
    Build the hooks over a production HTTP client (persistent connection pool on C{reactor}).

    Nothing is sent until a hook is used.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = make_http_client(reactor, pool)
    return LoopbackHooks(
        source=LoopbackResolverSource(http, reactor, base_url, loopback_token),
        cap_tokens=LoopbackCapTokens(workspace_token, http, reactor, base_url, loopback_token, log),
        relay_creator=LoopbackRelayCreator(http, reactor, base_url, loopback_token),
        close=pool.closeCachedConnections,
    )
