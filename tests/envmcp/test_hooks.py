"""
Tests for L{codexgw.envmcp.hooks}: the resolver source (C{app-gateway.md} §9.6, criterion 65), the
relay creator (§9.4, criterion 68) and the cap-token provider (§9.8, criterion 70) against in-memory
HTTP servers on a fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw.config import Secret
from codexgw.envmcp.hooks import (
    LoopbackCapTokens,
    LoopbackRelayCreator,
    LoopbackResolverSource,
    loopback_hooks,
    renewal_due,
    token_times,
)
from codexgw.envtools.bridge import BridgeDialer, IBridgeLink
from codexgw.envtools.interfaces import (
    DialError,
    ICapTokenProvider,
    IRelayCreator,
    IResolverSource,
    RelayError,
    RelayTicket,
    RelayUnavailable,
)
from codexgw.tokens import b64url_encode, mint_cap_token
from tests.appgw.stubhttp import Answer, Drop, Hang, LogCollector, RefusingHTTP, StubServer

BASE = "http://127.0.0.1:8086"
LOOPBACK = "loop-token-xyz"
SECRET = Secret(b"k" * 32)
#: A cap token's issue time in the tests; its life is 1000 s, so renewal is due from IAT + 750.
IAT = 1_800_000_000


def cap_token(iat: int = IAT, exp: int = IAT + 1000, turn: str = "trn_a") -> str:
    """
    A cap token of workspace C{ws_a} with the given times.
    """
    return mint_cap_token(SECRET, turn, "ws_a", iat, exp)


def clock_at(seconds: float) -> Clock:
    """
    A fake clock showing C{seconds}.
    """
    clock = Clock()
    clock.advance(seconds)
    return clock


class ResolverSourceTests(SynchronousTestCase):
    """
    L{LoopbackResolverSource}: C{GET /internal/connected}.
    """

    def setUp(self) -> None:
        """
        A clock.
        """
        self.clock = Clock()

    def listed(self, server: StubServer) -> Deferred[list[dict[str, Any]]]:
        """
        Call C{list()} against C{server} and flush the exchange.
        """
        d = LoopbackResolverSource(server.http, self.clock, BASE + "/", LOOPBACK).list()
        server.flush()
        return d

    def error_text(self, server: StubServer) -> str:
        """
        The text of the error C{list()} fails with.
        """
        return str(self.failureResultOf(self.listed(server), Exception).value)

    def test_interface(self) -> None:
        """
        The source provides L{IResolverSource}.
        """
        source = LoopbackResolverSource(StubServer(Answer(200, b"[]")).http, self.clock, BASE, "t")
        self.assertTrue(verifyObject(IResolverSource, source))

    def test_request(self) -> None:
        """
        The refresh is a C{GET /internal/connected} with C{X-Loopback-Token} and
        C{Accept: application/json} (criterion 65); the objects come back as listed, extra members
        kept.
        """
        entries = [
            {"exe_id": "exe_1", "name": "laptop", "description": "", "is_default": True, "x": 1},
            {"exe_id": "exe_2", "name": "ci", "description": "d", "is_default": False},
        ]
        server = StubServer(Answer(200, json.dumps(entries).encode() + b"\n"))
        self.assertEqual(self.successResultOf(self.listed(server)), entries)
        request = server.only_request()
        self.assertEqual((request.method, request.uri), (b"GET", b"/internal/connected"))
        self.assertEqual(request.header(b"X-Loopback-Token"), [LOOPBACK.encode()])
        self.assertEqual(request.header(b"Accept"), [b"application/json"])
        self.assertEqual(request.header(b"User-Agent"), [b"codexgw-env-mcp"])
        self.assertIsNone(request.header(b"Origin"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_empty(self) -> None:
        """
        C{[]} is an empty list.
        """
        self.assertEqual(self.successResultOf(self.listed(StubServer(Answer(200, b"[]")))), [])

    def test_status(self) -> None:
        """
        A 500 answer becomes C{HTTP 500: <body>} (criterion 65); the body is quoted up to 1 KiB.
        """
        self.assertEqual(self.error_text(StubServer(Answer(500, b"list\n"))), "HTTP 500: list")
        text = self.error_text(StubServer(Answer(401, b"x" * 5000)))
        self.assertEqual(text, "HTTP 401: " + "x" * 1024)

    def test_decode(self) -> None:
        """
        A body that is not a JSON array of objects is C{decode: <detail>}.
        """
        for body in (b"{", b"{}", b"null", b'[{"name":"a"}, 3]', b"\xff"):
            with self.subTest(body=body):
                self.assertTrue(self.error_text(StubServer(Answer(200, body))).startswith("decode: "))
        self.assertEqual(self.error_text(StubServer(Answer(200, b"{}"))), "decode: not a JSON array")

    def test_body_limit(self) -> None:
        """
        At most 1 MiB is read: a longer body is a decode error.
        """
        body = b"[" + b" " * (1 << 20) + b"]"
        self.assertEqual(
            self.error_text(StubServer(Answer(200, body))),
            "decode: response body exceeds 1048576 bytes",
        )

    def test_timeout(self) -> None:
        """
        No answer within 3 s fails the listing.
        """
        server = StubServer(Hang())
        d = self.listed(server)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(
            str(self.failureResultOf(d).value), "GET /internal/connected: timed out after 3s"
        )

    def test_network(self) -> None:
        """
        A refused connection or a dropped one fails the listing with the network error.
        """
        refusing = RefusingHTTP()
        d = LoopbackResolverSource(refusing.http, self.clock, BASE, LOOPBACK).list()
        self.assertRegex(
            str(self.failureResultOf(d).value), r"^GET /internal/connected: .*connection refused"
        )
        self.assertTrue(self.error_text(StubServer(Drop())).startswith("GET /internal/connected: "))


class RelayCreatorTests(SynchronousTestCase):
    """
    L{LoopbackRelayCreator}: C{POST /internal/relay/create}.
    """

    def setUp(self) -> None:
        """
        A clock.
        """
        self.clock = Clock()

    def create(self, server: StubServer) -> Deferred[RelayTicket]:
        """
        Ask C{server} for a relay ticket and flush the exchange.
        """
        creator = LoopbackRelayCreator(server.http, self.clock, BASE, LOOPBACK)
        d = creator.create_relay("exe_src", "exe_dst", 630, 0)
        server.flush()
        return d

    def test_interface(self) -> None:
        """
        The creator provides L{IRelayCreator}.
        """
        creator = LoopbackRelayCreator(StubServer(Answer(201)).http, self.clock, BASE, LOOPBACK)
        self.assertTrue(verifyObject(IRelayCreator, creator))

    def test_created(self) -> None:
        """
        The request posts the four fields in order with C{X-Loopback-Token} and a JSON content type
        (criterion 68); a 201 answer is the ticket.
        """
        answer = {
            "ticket": "T1",
            "upload_url": "http://gw/relay/up",
            "download_url": "http://gw/relay/down",
            "expires_at": "x",
        }
        server = StubServer(Answer(201, json.dumps(answer).encode() + b"\n"))
        ticket = self.successResultOf(self.create(server))
        self.assertEqual(ticket, RelayTicket("T1", "http://gw/relay/up", "http://gw/relay/down"))
        request = server.only_request()
        self.assertEqual((request.method, request.uri), (b"POST", b"/internal/relay/create"))
        self.assertEqual(
            request.body,
            b'{"source_exe_id":"exe_src","dest_exe_id":"exe_dst","ttl_seconds":630,"max_bytes":0}',
        )
        self.assertEqual(request.header(b"X-Loopback-Token"), [LOOPBACK.encode()])
        self.assertEqual(request.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unavailable(self) -> None:
        """
        A 503 answer is I{relay unavailable} (criterion 68).
        """
        server = StubServer(Answer(503, b'{"error":"relay not enabled"}\n'))
        self.failureResultOf(self.create(server), RelayUnavailable)

    def test_status(self) -> None:
        """
        Another status is C{relay/create: status <n>: <body ≤1 KiB>} (criterion 68: a 429).
        """
        server = StubServer(Answer(429, b'{"error":"too many relays"}\n'))
        failure = self.failureResultOf(self.create(server), RelayError)
        self.assertEqual(str(failure.value), 'relay/create: status 429: {"error":"too many relays"}')
        server = StubServer(Answer(403, b"y" * 3000))
        failure = self.failureResultOf(self.create(server), RelayError)
        self.assertEqual(str(failure.value), "relay/create: status 403: " + "y" * 1024)

    def test_bad_ticket(self) -> None:
        """
        A 201 answer without the three strings is a decode error.
        """
        for body in (b"nope", b"[]", b'{"ticket":"T","upload_url":"u"}'):
            with self.subTest(body=body):
                failure = self.failureResultOf(self.create(StubServer(Answer(201, body))), RelayError)
                self.assertTrue(str(failure.value).startswith("relay/create: decode: "))

    def test_network(self) -> None:
        """
        A network failure is C{relay/create: <detail>}; no answer within 10 s is a timeout.
        """
        creator = LoopbackRelayCreator(RefusingHTTP().http, self.clock, BASE, LOOPBACK)
        failure = self.failureResultOf(creator.create_relay("a", "b", 31, 0), RelayError)
        self.assertRegex(str(failure.value), r"^relay/create: .*connection refused")
        server = StubServer(Hang())
        d = self.create(server)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, RelayError)
        self.assertEqual(str(failure.value), "relay/create: timed out after 10s")

    def test_cancelled(self) -> None:
        """
        A caller's cancellation (C{copy_path} cancelled by the front-end) is a C{CancelledError}, not
        a relay error, and leaves no timer.
        """
        d = self.create(StubServer(Hang()))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TokenTimesTests(SynchronousTestCase):
    """
    L{token_times} and L{renewal_due}: the unverified decoding of a cap token.
    """

    def test_decoded(self) -> None:
        """
        A cap token's C{iat} and C{exp} are read without the secret.
        """
        self.assertEqual(token_times(cap_token()), (IAT, IAT + 1000))

    def test_undecodable(self) -> None:
        """
        Anything else cannot be decoded, and is due at once.
        """
        bad_payloads = [b"[]", b'{"iat":1}', b'{"iat":true,"exp":5}', b'{"iat":5,"exp":5}', b"\xff"]
        tokens = ["", "a.b", "a.b.c.d", "x.!!!.y"] + [
            f"h.{b64url_encode(payload)}.s" for payload in bad_payloads
        ]
        for token in tokens:
            with self.subTest(token=token):
                self.assertIsNone(token_times(token))
                self.assertTrue(renewal_due(token, 0))

    def test_three_quarters(self) -> None:
        """
        Renewal is due from exactly C{iat + (exp − iat) × 3/4} on.
        """
        token = cap_token()
        self.assertFalse(renewal_due(token, IAT + 749.999))
        self.assertTrue(renewal_due(token, IAT + 750))
        self.assertTrue(renewal_due(token, IAT + 5000))
        odd = cap_token(IAT, IAT + 3)  # 3/4 of 3 s is 2.25 s
        self.assertFalse(renewal_due(odd, IAT + 2.24))
        self.assertTrue(renewal_due(odd, IAT + 2.25))


class CapTokensTests(SynchronousTestCase):
    """
    L{LoopbackCapTokens}: the cap-token provider of env-mcp (§9.8).
    """

    def provider(
        self, server: StubServer, initial: str, now: float
    ) -> tuple[LoopbackCapTokens, Clock, LogCollector]:
        """
        A provider starting with C{initial} at time C{now}, renewing at C{server}.
        """
        clock = clock_at(now)
        logs = LogCollector()
        return LoopbackCapTokens(initial, server.http, clock, BASE, LOOPBACK, logs.log), clock, logs

    def token(self, provider: LoopbackCapTokens, server: StubServer, force: bool = False) -> str:
        """
        The token C{provider} gives, after flushing C{server}.
        """
        d = provider.token(force)
        server.flush()
        return self.successResultOf(d)

    def test_interface(self) -> None:
        """
        The provider provides L{ICapTokenProvider}; its C{repr} does not show a token.
        """
        provider, _, _ = self.provider(StubServer(Answer(500)), cap_token(), IAT)
        self.assertTrue(verifyObject(ICapTokenProvider, provider))
        self.assertNotIn(LOOPBACK, repr(provider))
        self.assertNotIn(cap_token(), repr(provider))

    def test_fresh(self) -> None:
        """
        Before 3/4 of its life the initial token is returned without any request.
        """
        server = StubServer(Answer(500))
        initial = cap_token()
        provider, _, _ = self.provider(server, initial, IAT + 749)
        self.assertEqual(self.token(provider, server), initial)
        self.assertEqual(server.requests, [])

    def test_due(self) -> None:
        """
        From 3/4 of its life on, C{POST /internal/captoken} with C{X-Loopback-Token} renews it; the
        new token is kept and, being fresh, used without another request.
        """
        new = cap_token(IAT + 750, IAT + 1750, "trn_b")
        server = StubServer(Answer(200, json.dumps({"token": new, "exp": IAT + 1750}).encode()))
        provider, clock, logs = self.provider(server, cap_token(), IAT + 750)
        self.assertEqual(self.token(provider, server), new)
        request = server.only_request()
        self.assertEqual((request.method, request.uri), (b"POST", b"/internal/captoken"))
        self.assertEqual(request.header(b"X-Loopback-Token"), [LOOPBACK.encode()])
        self.assertEqual(self.token(provider, server), new)
        self.assertEqual(len(server.requests), 1)
        self.assertEqual(logs.events, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_forced(self) -> None:
        """
        C{token(true)} renews a fresh token too.
        """
        new = cap_token(turn="trn_new")
        server = StubServer(Answer(200, json.dumps({"token": new, "exp": 1}).encode()))
        provider, _, _ = self.provider(server, cap_token(), IAT)
        self.assertEqual(self.token(provider, server, force=True), new)
        self.assertEqual(len(server.requests), 1)

    def test_undecodable(self) -> None:
        """
        A token that cannot be decoded counts as due.
        """
        server = StubServer(Answer(200, b'{"token":"fresh.one.x","exp":1}'))
        provider, _, _ = self.provider(server, "opaque", IAT)
        self.assertEqual(self.token(provider, server), "fresh.one.x")

    def test_renewal_fails(self) -> None:
        """
        A failed renewal (status, bad body, network, timeout) is logged at warning, without any
        token, and the current token is returned.
        """
        old = cap_token()
        for script in (Answer(500, b"mint failed\n"), Answer(200, b"{}"), Answer(200, b"x"), Drop()):
            with self.subTest(script=script):
                server = StubServer(script)
                provider, _, logs = self.provider(server, old, IAT + 800)
                self.assertEqual(self.token(provider, server), old)
                self.assertEqual(logs.levels(), ["warn"])
                self.assertIn("cap token renewal failed", logs.messages()[0])
                self.assertNotIn(old, logs.messages()[0])
                self.assertNotIn(LOOPBACK, logs.messages()[0])
        server = StubServer(Hang())
        provider, clock, logs = self.provider(server, old, IAT + 800)
        d = provider.token(False)
        server.flush()
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), old)
        self.assertIn("timed out after 5s", logs.messages()[0])

    def test_shared_renewal(self) -> None:
        """
        Concurrent callers share one renewal.
        """
        new = cap_token(IAT + 800, IAT + 1800)
        server = StubServer(Hang())
        provider, _, _ = self.provider(server, cap_token(), IAT + 800)
        waiting = [provider.token(False), provider.token(True), provider.token(False)]
        server.flush()
        self.assertEqual(len(server.requests), 1)
        for d in waiting:
            self.assertNoResult(d)
        [pending] = server.resource.pending
        pending.write(json.dumps({"token": new, "exp": IAT + 1800}).encode())
        pending.finish()
        server.flush()
        self.assertEqual([self.successResultOf(d) for d in waiting], [new] * 3)
        self.assertEqual(len(server.requests), 1)


class _RecordingConnect:
    """
    A bridge link connector that records the token of each dial and refuses it.
    """

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def __call__(self, url: str, token: str, user_agent: str) -> Deferred[IBridgeLink]:
        self.tokens.append(token)
        return fail(DialError("bridge dial: refused by the test"))


class DialTokenTests(SynchronousTestCase):
    """
    Criterion 70: the provider in front of a real L{BridgeDialer}.
    """

    def dial(self, server: StubServer, now: float) -> tuple[list[str], LogCollector]:
        """
        Dial once with a provider starting from a 1000 s token at C{now}; return the tokens the
        dial presented and the provider's logs.
        """
        clock = clock_at(now)
        logs = LogCollector()
        provider = LoopbackCapTokens(cap_token(), server.http, clock, BASE, LOOPBACK, logs.log)
        connect = _RecordingConnect()
        dialer = BridgeDialer(clock, "ws://gw/bridge", "codexgw-env-mcp", provider, connect=connect)
        d = dialer.dial("exe_1")
        server.flush()
        self.failureResultOf(d, DialError)
        return connect.tokens, logs

    def test_renewed_before_dial(self) -> None:
        """
        Past 3/4 of its life, the dial is preceded by C{POST /internal/captoken} and presents the
        returned token.
        """
        new = cap_token(IAT + 900, IAT + 1900, "trn_b")
        server = StubServer(Answer(200, json.dumps({"token": new, "exp": IAT + 1900}).encode()))
        tokens, logs = self.dial(server, IAT + 900)
        self.assertEqual(tokens, [new])
        self.assertEqual([r.uri for r in server.requests], [b"/internal/captoken"])
        self.assertEqual(logs.events, [])

    def test_renewal_fails(self) -> None:
        """
        With the renewal failing, the dial presents the old token and a warning is logged.
        """
        server = StubServer(Answer(500, b"no\n"))
        tokens, logs = self.dial(server, IAT + 900)
        self.assertEqual(tokens, [cap_token()])
        self.assertEqual(len(server.requests), 1)
        self.assertEqual(logs.levels(), ["warn"])

    def test_fresh(self) -> None:
        """
        A fresh token is presented as it is, without any request.
        """
        server = StubServer(Answer(500))
        tokens, _ = self.dial(server, IAT + 10)
        self.assertEqual(tokens, [cap_token()])
        self.assertEqual(server.requests, [])


class LoopbackHooksTests(SynchronousTestCase):
    """
    L{loopback_hooks}: the production binding.
    """

    def test_no_io_at_construction(self) -> None:
        """
        Building the hooks schedules and sends nothing; C{close} can be called.
        """
        clock: Any = Clock()
        hooks = loopback_hooks(clock, BASE, LOOPBACK, cap_token())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(verifyObject(IResolverSource, hooks.source))
        self.assertTrue(verifyObject(ICapTokenProvider, hooks.cap_tokens))
        self.assertTrue(verifyObject(IRelayCreator, hooks.relay_creator))
        hooks.close()
