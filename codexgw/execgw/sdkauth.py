"""
Authentication of the SDK REST surface (C{exec-gateway.md} §4.8.1): who a bearer token speaks for.

Two verifiers behind one interface, L{ISDKAuthenticator}, chosen by the configuration (§2 "derived
switches", L{make_sdk_authenticator}):

 - L{ProxyTokenAuth}, the I{remote verifier} (C{CXG_AGENTSERVER_INTERNAL_URL} set): agentserver
   validates the proxy token (C{POST <url>/internal/validate-proxy-token}, 5 s); answers are kept in
   an LRU cache of 1024 entries keyed by the token's SHA-256 — identities for 5 min, rejections (401)
   for 30 s, on an injected clock — and concurrent misses for one token share one request.
 - L{HMACTokenAuth}, the I{local verifier} (C{CXG_INBOUND_HMAC_SECRET} set, no agentserver URL): the
   token must be an inbound HMAC token (§6.3); the identity is C{(part0, "")}.

Every failure is an L{SDKAuthError} whose text is the spec's (C{sdk auth: …}); the routes answer it
with 401 C{invalid_token}, so authentication never yields a 5xx. The one exception is the caller's
own cancellation (a client that hung up), which stays a C{CancelledError}.

The HTTP exchange is L{codexgw.httpclient}'s (the two gateways never import each other, C{delivery.md}
§1).

Decisions where the spec is silent:
 - An empty token is refused by both verifiers without any work; the local verifier says
   C{sdk auth: invalid token} (its only text), the remote one C{sdk auth: empty token}.
 - The cache key is the SHA-256 of the token's bytes as received (a header that is not UTF-8 is kept
   byte for byte); the request body carries those same bytes in the JSON string.
 - A cached answer is used while C{now < expires_at}; an expired entry found by a lookup is removed.
   A lookup that hits moves the entry to the most recently used end; inserting past 1024 entries
   evicts the least recently used.
 - A waiter that is cancelled (its HTTP client hung up) leaves the shared request running: its answer
   still goes into the cache for the other waiters and later calls.
 - The 200 body is read up to 1 MiB (more → C{sdk auth: decode response: response body exceeds
   1048576 bytes}); of any other status at most 1 KiB is read and dropped (only the status matters).
   The 5 s limit covers the request, the headers and the body.
 - A 200 body decodes when it is a UTF-8 JSON object whose C{workspace_id} is a non-empty string and
   whose C{user_id} is a string, C{null} or absent (→ C{""}); anything else is a decode error naming
   what is wrong. Redirects are not followed (a 3xx is just another status).
 - Network failures are described by the first reason Twisted's web client wraps (a refused
   connection reads as the OS text), a timeout as C{timed out after 5s}.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool
from zope.interface import Interface, implementer

from codexgw import httpclient
from codexgw.config import Secret
from codexgw.execgw.config import ExecGatewayConfig
from codexgw.httpclient import (
    MAX_BODY_BYTES,
    HTTPRequester,
    Reply,
    decode_json,
    describe,
    exchange,
    make_headers,
)
from codexgw.tokens import TokenError, verify_inbound_token

#: agentserver's route that validates proxy tokens (§4.8.1).
VALIDATE_PATH: Final = "/internal/validate-proxy-token"
#: Seconds one validation may take: request, headers and body (§4.8.1).
VALIDATE_TIMEOUT: Final = 5.0
#: Entries of the proxy-token cache, and how long answers are kept, in seconds (§9.1).
CACHE_CAPACITY: Final = 1024
POSITIVE_TTL: Final = 5 * 60.0
NEGATIVE_TTL: Final = 30.0

#: The error texts of §4.8.1.
EMPTY_TOKEN: Final = "sdk auth: empty token"  # noqa: S105 - an error text
REJECTED: Final = "sdk auth: token rejected by agentserver"
INVALID_TOKEN: Final = "sdk auth: invalid token"  # noqa: S105 - an error text


@dataclass(frozen=True)
class SDKIdentity:
    """
    Who an SDK request speaks for.

    @ivar workspace_id: the caller's workspace (never empty).
    @ivar user_id: the caller's user, C{""} when unknown (always so with the local verifier).
    """

    workspace_id: str
    user_id: str = ""


class SDKAuthError(Exception):
    """
    A bearer token was not accepted; C{str()} is the spec's text (C{sdk auth: …}), which the routes
    send as the C{invalid_token} message.
    """


class ISDKAuthenticator(Interface):
    """
    Turns an SDK bearer token into an identity (§4.8.1).
    """

    def authenticate(token: str) -> Deferred[SDKIdentity]:
        """
        The identity C{token} speaks for.

        @param token: the bearer token as received (may be empty).
        @return: fires with the L{SDKIdentity}; fails with L{SDKAuthError} only (or
            C{CancelledError} when the caller cancels).
        """


@implementer(ISDKAuthenticator)
class HMACTokenAuth:
    """
    The local verifier: inbound HMAC tokens under C{CXG_INBOUND_HMAC_SECRET} (§6.3).
    """

    def __init__(self, secret: Secret) -> None:
        """
        @param secret: C{CXG_INBOUND_HMAC_SECRET}.
        """
        self._secret = secret

    def authenticate(self, token: str) -> Deferred[SDKIdentity]:
        """
        See L{ISDKAuthenticator.authenticate}: identity C{(part0, "")}; any failure is
        C{sdk auth: invalid token}.
        """
        if not token:
            return fail(SDKAuthError(INVALID_TOKEN))
        try:
            inbound = verify_inbound_token(self._secret, token)
        except TokenError:
            return fail(SDKAuthError(INVALID_TOKEN))
        return succeed(SDKIdentity(inbound.workspace_id, ""))


@dataclass(frozen=True)
class _Entry:
    """
    A cached answer: an identity, or the rejection (C{identity} C{None}), until C{expires_at}.
    """

    identity: SDKIdentity | None
    expires_at: float


@dataclass(frozen=True)
class _Outcome:
    """
    What one validation found: an identity or an error, and how long to cache it (C{None}: not).
    """

    identity: SDKIdentity | None
    error: SDKAuthError | None
    ttl: float | None


def _decode_identity(body: bytes) -> SDKIdentity:
    """
    The identity of a 200 answer.

    @raise ValueError: with the detail of C{sdk auth: decode response: <detail>}.
    """
    answer = decode_json(body)
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    workspace_id = answer.get("workspace_id")
    if not isinstance(workspace_id, str) or not workspace_id:
        raise ValueError("workspace_id missing or empty")
    user_id = answer.get("user_id")
    if user_id is None:
        user_id = ""
    if not isinstance(user_id, str):
        raise ValueError("user_id is not a string")
    return SDKIdentity(workspace_id, user_id)


@implementer(ISDKAuthenticator)
class ProxyTokenAuth:
    """
    The remote verifier: agentserver validates proxy tokens; answers are cached (§4.8.1).

    @ivar requests: how many validations were sent to agentserver (for the logs and tests).
    """

    def __init__(
        self,
        http: HTTPRequester,
        clock: IReactorTime,
        base_url: str,
        internal_secret: Secret,
        *,
        timeout: float = VALIDATE_TIMEOUT,
        capacity: int = CACHE_CAPACITY,
        positive_ttl: float = POSITIVE_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        """
        @param http: the HTTP client.
        @param clock: enforces the timeout and the cache lifetimes.
        @param base_url: C{CXG_AGENTSERVER_INTERNAL_URL} (no trailing C{/}).
        @param internal_secret: C{CXG_AGENTSERVER_INTERNAL_SECRET}, sent as C{X-Internal-Secret}.
        @param timeout: seconds one validation may take.
        @param capacity: entries the cache holds.
        @param positive_ttl: seconds an identity is cached.
        @param negative_ttl: seconds a rejection (401) is cached.
        @param pool: the connection pool behind C{http}, closed by L{close} (when given).
        """
        self._http = http
        self._clock = clock
        self._url = base_url.rstrip("/") + VALIDATE_PATH
        self._secret = internal_secret
        self._timeout = timeout
        self._capacity = capacity
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._pool = pool
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._in_flight: dict[bytes, list[Deferred[SDKIdentity]]] = {}
        self.requests = 0

    def __repr__(self) -> str:
        # Never the secret.
        return f"<ProxyTokenAuth {self._url}>"

    def cache_size(self) -> int:
        """
        The number of cache entries (expired ones included until a lookup or eviction drops them).
        """
        return len(self._cache)

    def authenticate(self, token: str) -> Deferred[SDKIdentity]:
        """
        See L{ISDKAuthenticator.authenticate}: from the cache, else from agentserver (joining a
        validation of the same token in flight).
        """
        if not token:
            return fail(SDKAuthError(EMPTY_TOKEN))
        raw = token.encode("utf-8", "surrogateescape")
        key = hashlib.sha256(raw).digest()
        entry = self._cache.get(key)
        if entry is not None:
            if self._clock.seconds() < entry.expires_at:
                self._cache.move_to_end(key)
                if entry.identity is None:
                    return fail(SDKAuthError(REJECTED))
                return succeed(entry.identity)
            del self._cache[key]
        waiters = self._in_flight.get(key)
        first = waiters is None
        if waiters is None:
            waiters = self._in_flight[key] = []

        def cancel(d: Deferred[SDKIdentity]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[SDKIdentity] = Deferred(cancel)
        waiters.append(waiter)
        if first:
            self.requests += 1
            Deferred.fromCoroutine(self._validate(raw)).addCallback(self._settled, key)
        return waiter

    def close(self) -> Deferred[None]:
        """
        Close the connection pool's cached connections (when a pool was given).
        """
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def _settled(self, outcome: _Outcome, key: bytes) -> None:
        if outcome.ttl is not None:
            self._remember(key, _Entry(outcome.identity, self._clock.seconds() + outcome.ttl))
        waiters = self._in_flight.pop(key, [])
        for waiter in waiters:
            if outcome.identity is not None:
                waiter.callback(outcome.identity)
            else:
                assert outcome.error is not None
                waiter.errback(SDKAuthError(str(outcome.error)))

    def _remember(self, key: bytes, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    async def _validate(self, raw_token: bytes) -> _Outcome:
        # Never raises: every ending is an outcome (authentication never yields a 5xx).
        try:
            reply = await self._exchange(raw_token)
        except CancelledError:
            return _Outcome(None, SDKAuthError("sdk auth: agentserver unreachable: cancelled"), None)
        except Exception as e:
            detail = describe(e)
            return _Outcome(None, SDKAuthError(f"sdk auth: agentserver unreachable: {detail}"), None)
        if reply.status == 401:
            return _Outcome(None, SDKAuthError(REJECTED), self._negative_ttl)
        if reply.status != 200:
            return _Outcome(None, SDKAuthError(f"sdk auth: agentserver returned {reply.status}"), None)
        if reply.truncated:
            detail = f"response body exceeds {MAX_BODY_BYTES} bytes"
            return _Outcome(None, SDKAuthError(f"sdk auth: decode response: {detail}"), None)
        try:
            identity = _decode_identity(reply.body)
        except ValueError as e:
            return _Outcome(None, SDKAuthError(f"sdk auth: decode response: {e}"), None)
        return _Outcome(identity, None, self._positive_ttl)

    def _exchange(self, raw_token: bytes) -> Deferred[Reply]:
        # The token goes into the JSON string byte for byte (surrogateescape undoes the header's
        # decoding); JSON escapes what must be escaped.
        text = raw_token.decode("utf-8", "surrogateescape")
        body = json.dumps({"proxy_token": text}, separators=(",", ":"), ensure_ascii=False)
        data = body.encode("utf-8", "surrogateescape")
        headers = make_headers(
            {"Content-Type": "application/json", "X-Internal-Secret": self._secret.value}
        )
        return exchange(
            self._http, self._clock, "POST", self._url, headers, data, self._timeout,
            _needs_body, fail_oversized=False,
        )  # fmt: skip


def _needs_body(status: int) -> bool:
    # Only a 200 body is used; of any other at most 1 KiB is read and dropped.
    return status == 200


def make_http_client(reactor: Any) -> tuple[HTTPRequester, HTTPConnectionPool]:
    """
    The production HTTP client of the remote verifier: treq over an C{Agent} with a persistent pool.

    @return: the client and its pool (close the pool's connections at shutdown).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    return httpclient.make_http_client(reactor, pool), pool


def make_sdk_authenticator(
    config: ExecGatewayConfig,
    reactor: Any,
    clock: IReactorTime | None = None,
    http: Callable[[Any], tuple[HTTPRequester, HTTPConnectionPool | None]] | None = None,
) -> ISDKAuthenticator | None:
    """
    The verifier the configuration asks for (§2): remote when C{CXG_AGENTSERVER_INTERNAL_URL} is
    set, else local when C{CXG_INBOUND_HMAC_SECRET} is set, else none (the surface is not mounted).

    @param reactor: the reactor the remote verifier's HTTP client runs on.
    @param clock: the remote verifier's clock; C{reactor} by default.
    @param http: makes the HTTP client and its pool from the reactor (tests); L{make_http_client} by
        default.
    """
    if config.agentserver_internal_url is not None:
        client, pool = (http or make_http_client)(reactor)
        return ProxyTokenAuth(
            client,
            clock if clock is not None else reactor,
            config.agentserver_internal_url,
            config.agentserver_internal_secret,
            pool=pool,
        )
    if config.inbound_hmac_secret is not None:
        return HMACTokenAuth(config.inbound_hmac_secret)
    return None
