"""
The envtools hooks of env-mcp (C{envtools.md} §1.3), bound over HTTP to the app gateway's loopback
routes (C{app-gateway.md} §3.1–§3.4) with the spawn's C{X-Loopback-Token}:

 - L{LoopbackResolverSource}: C{GET /internal/connected} (§9.6), 3 s, at most 1 MiB read;
 - L{LoopbackCapTokens}: the cap-token provider (§9.8): starts with the spawn's token, renews it
   through C{POST /internal/captoken} (5 s) at 3/4 of its life or when forced;
 - L{LoopbackRelayCreator}: C{POST /internal/relay/create} (§9.4), 10 s.

The HTTP exchange is L{codexgw.httpclient}'s (env-mcp never imports the app gateway package): an
injected treq-like client (L{HTTPRequester}: treq over an C{Agent} in production,
C{treq.testing.StubTreq} in tests) and one time limit per exchange on an injected clock.

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
 - A caller's cancellation (e.g. of C{copy_path} by the front-end) stays a C{CancelledError}, never a
   route error.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from codexgw.envtools.interfaces import (
    ICapTokenProvider,
    IRelayCreator,
    IResolverSource,
    RelayError,
    RelayTicket,
    RelayUnavailable,
)
from codexgw.httpclient import (
    MAX_BODY_BYTES,
    ExchangeFailed,
    HTTPRequester,
    Reply,
    exchange,
    make_headers,
    make_http_client,
    quote_body,
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


class LoopbackError(Exception):
    """
    A loopback route failed; C{str()} is the error text the hook's caller shows.
    """


def _quote(body: bytes) -> str:
    # The gateway's bodies end with a newline: quoted stripped of surrounding whitespace.
    return quote_body(body).strip()


def _every_body(status: int) -> bool:
    # The hooks read every answer's body up to 1 MiB, and judge an oversized one themselves.
    return True


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

    def exchange(
        self, method: str, path: str, data: bytes | None, timeout: float, **extra: str
    ) -> Deferred[Reply]:
        """
        Send one request to the gateway's C{path} with the loopback headers plus C{extra}, and read
        its answer within C{timeout} seconds: every body up to 1 MiB, marked L{Reply.truncated}
        beyond.

        @return: fires with the L{Reply}; fails with L{ExchangeFailed} (or C{CancelledError} when
            the caller cancels).
        """
        headers = {LOOPBACK_TOKEN_HEADER: self._token, "User-Agent": USER_AGENT, **extra}
        return exchange(
            self.http, self.clock, method, self.base_url + path, make_headers(headers), data,
            timeout, _every_body, fail_oversized=False,
        )  # fmt: skip

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
        try:
            reply = await self._loopback.exchange(
                "GET", "/internal/connected", None, CONNECTED_TIMEOUT, Accept="application/json"
            )
        except ExchangeFailed as e:
            raise LoopbackError(f"GET /internal/connected: {e}") from None
        if reply.status != 200:
            raise LoopbackError(f"HTTP {reply.status}: {_quote(reply.body)}")
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
        try:
            reply = await self._loopback.exchange("POST", "/internal/captoken", b"", CAPTOKEN_TIMEOUT)
            self._current = _renewed_token(reply)
        except Exception as e:
            self._log.warn("cap token renewal failed; keeping the current token: {error}", error=str(e))


def _renewed_token(reply: Reply) -> str:
    if reply.status != 200:
        raise LoopbackError(f"POST /internal/captoken: HTTP {reply.status}: {_quote(reply.body)}")
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
        try:
            reply = await self._loopback.exchange(
                "POST",
                "/internal/relay/create",
                json.dumps(body, separators=(",", ":")).encode("utf-8"),
                RELAY_TIMEOUT,
                **{"Content-Type": "application/json"},
            )
        except ExchangeFailed as e:
            raise RelayError(f"relay/create: {e}") from None
        if reply.status == 503:
            raise RelayUnavailable("relay unavailable")
        if reply.status != 201:
            raise RelayError(f"relay/create: status {reply.status}: {_quote(reply.body)}")
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
