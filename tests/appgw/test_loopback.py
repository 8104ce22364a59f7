"""
Tests for L{codexgw.appgw.loopback}: the loopback gate of C{app-gateway.md} §3.1 (each status in order,
IPv4-mapped IPv6, each forwarding header) and the registry of per-spawn loopback tokens (acceptance
items 15, 16).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from codexgw.appgw.loopback import (
    BAD_TOKEN,
    FORBIDDEN,
    MISSING_TOKEN,
    GateRefusal,
    LoopbackGate,
    LoopbackGrant,
    LoopbackTokens,
    is_loopback_address,
)
from tests.appgw.stubhttp import LogCollector


def counting_bytes() -> Iterator[bytes]:
    """
    Deterministic "random" bytes: 32 bytes of 0, then of 1, and so on.
    """
    n = 0
    while True:
        yield bytes([n % 256]) * 32
        n += 1


class ClassificationTests(SynchronousTestCase):
    """
    L{is_loopback_address} (acceptance item 16).
    """

    def test_loopback(self) -> None:
        """
        C{127.0.0.0/8}, C{::1} and IPv4-mapped C{::ffff:127.x.x.x} are loopback.
        """
        for host in (
            "127.0.0.1", "127.5.5.5", "127.255.255.255", "127.0.0.0", "::1", "::ffff:127.0.0.1",
            "::ffff:127.9.8.7", "0:0:0:0:0:0:0:1",
        ):  # fmt: skip
            with self.subTest(host=host):
                self.assertTrue(is_loopback_address(host))

    def test_not_loopback(self) -> None:
        """
        Other addresses, names and malformed text are not.
        """
        for host in (
            "10.0.0.1", "192.168.0.1", "fe80::1", "10.0.0.5", "128.0.0.1", "0.0.0.0", "::",  # noqa: S104
            "::ffff:10.0.0.1", "::127.0.0.1", "localhost", "", "127.0.0.1.", "127.1", "::2",
        ):  # fmt: skip
            with self.subTest(host=host):
                self.assertFalse(is_loopback_address(host))


class TokensTests(SynchronousTestCase):
    """
    L{LoopbackTokens}.
    """

    def test_issue(self) -> None:
        """
        A token is 32 random bytes as unpadded base64url (43 characters) and looks up to its grant.
        """
        tokens = LoopbackTokens()
        token = tokens.issue("ws_a", "trn_0123456789abcdef")
        self.assertEqual(len(token), 43)
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
        self.assertEqual(tokens.lookup(token), LoopbackGrant("ws_a", "trn_0123456789abcdef"))
        self.assertEqual(tokens.lookup(token.encode()), LoopbackGrant("ws_a", "trn_0123456789abcdef"))
        self.assertEqual(len(tokens), 1)

    def test_random_source(self) -> None:
        """
        Tokens come from the given random source, 32 bytes each, and a repeat is drawn again.
        """
        source = iter([b"\x00" * 32, b"\x00" * 32, b"\xff" * 32])
        requested: list[int] = []

        def random_bytes(n: int) -> bytes:
            requested.append(n)
            return next(source)

        tokens = LoopbackTokens(random_bytes)
        first = tokens.issue("a", "t1")
        second = tokens.issue("b", "t2")
        self.assertEqual(first, "A" * 42 + "A")
        self.assertEqual(second, "_" * 42 + "8")
        self.assertEqual(requested, [32, 32, 32])
        self.assertEqual(tokens.lookup(second), LoopbackGrant("b", "t2"))

    def test_unknown(self) -> None:
        """
        Unknown, empty, prefix-of-live and non-ASCII tokens look up to nothing.
        """
        tokens = LoopbackTokens()
        token = tokens.issue("ws", "t")
        for presented in ("", "x", token[:-1], token + "A", token.upper(), "é" * 43, b"\xff" * 43):
            with self.subTest(presented=presented):
                self.assertIsNone(tokens.lookup(presented))

    def test_revoke(self) -> None:
        """
        A revoked token no longer looks up; others stay; revoking twice or an unknown token is fine.
        """
        numbers = counting_bytes()
        tokens = LoopbackTokens(lambda n: next(numbers))
        first = tokens.issue("ws_a", "t1")
        second = tokens.issue("ws_b", "t2")
        tokens.revoke(first)
        tokens.revoke(first)
        tokens.revoke("unknown")
        self.assertIsNone(tokens.lookup(first))
        self.assertEqual(tokens.lookup(second), LoopbackGrant("ws_b", "t2"))
        self.assertEqual(len(tokens), 1)

    def test_constant_time_over_every_candidate(self) -> None:
        """
        The lookup compares the presented token with every live token through
        L{hmac.compare_digest}, even after a match.
        """
        numbers = counting_bytes()
        tokens = LoopbackTokens(lambda n: next(numbers))
        issued = [tokens.issue(f"ws{i}", f"t{i}") for i in range(5)]
        with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as compare:
            self.assertEqual(tokens.lookup(issued[0]), LoopbackGrant("ws0", "t0"))
        self.assertEqual(compare.call_count, 5)


class GateTests(SynchronousTestCase):
    """
    L{LoopbackGate.check}, in the order of §3.1 (acceptance item 15).
    """

    def setUp(self) -> None:
        """
        A gate over one live token.
        """
        self.tokens = LoopbackTokens()
        self.token = self.tokens.issue("ws_a", "trn_00000000000000aa")
        self.logs = LogCollector()
        self.gate = LoopbackGate(self.tokens, self.logs.log)

    def headers(self, **fields: str) -> Headers:
        """
        Request headers from C{name=value} (C{_} in names becomes C{-}).
        """
        return Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in fields.items()})

    def test_valid(self) -> None:
        """
        A loopback peer presenting a live token gets its grant, from every loopback form.
        """
        for peer in ("127.0.0.1", "127.5.5.5", "::1", "::ffff:127.0.0.1"):
            with self.subTest(peer=peer):
                self.assertEqual(
                    self.gate.check(peer, self.headers(X_Loopback_Token=self.token)),
                    LoopbackGrant("ws_a", "trn_00000000000000aa"),
                )
        self.assertEqual(self.logs.events, [])

    def test_not_loopback(self) -> None:
        """
        A non-loopback peer gets 403 C{forbidden} (even with a valid token) and a warning.
        """
        for peer in ("10.0.0.5", "192.168.0.1", "fe80::1", "::ffff:10.0.0.5", None):
            with self.subTest(peer=peer):
                self.assertEqual(
                    self.gate.check(peer, self.headers(X_Loopback_Token=self.token)), FORBIDDEN
                )
        self.assertEqual(FORBIDDEN, GateRefusal(403, "forbidden"))
        self.assertEqual(self.logs.levels(), ["warn"] * 5)
        self.assertIn("10.0.0.5", self.logs.messages()[0])

    def test_forwarding_headers(self) -> None:
        """
        Each of C{Forwarded}, C{X-Forwarded-For}, C{X-Real-IP} (any case, even empty) closes the gate
        with 403, before the token is looked at; the warning names the header, never the token.
        """
        for name in ("Forwarded", "X-Forwarded-For", "X-Real-IP", "x-forwarded-for", "X-REAL-IP"):
            for value in (b"127.0.0.1", b""):
                with self.subTest(name=name, value=value):
                    headers = Headers({name.encode(): [value], b"X-Loopback-Token": [b"nope"]})
                    self.assertEqual(self.gate.check("127.0.0.1", headers), FORBIDDEN)
        for message in self.logs.messages():
            self.assertIn("forwarding header", message)
            self.assertNotIn(self.token, message)

    def test_missing_token(self) -> None:
        """
        No C{X-Loopback-Token} (or an empty one) → 401 C{missing X-Loopback-Token}, not logged.
        """
        self.assertEqual(self.gate.check("127.0.0.1", Headers()), MISSING_TOKEN)
        self.assertEqual(self.gate.check("::1", self.headers(X_Loopback_Token="")), MISSING_TOKEN)
        self.assertEqual(MISSING_TOKEN, GateRefusal(401, "missing X-Loopback-Token"))
        self.assertEqual(self.logs.events, [])

    def test_bad_token(self) -> None:
        """
        An unknown token → 401 C{bad token}; so is a header given twice.
        """
        self.assertEqual(self.gate.check("127.0.0.1", self.headers(X_Loopback_Token="x")), BAD_TOKEN)
        twice = Headers({b"X-Loopback-Token": [self.token.encode(), self.token.encode()]})
        self.assertEqual(self.gate.check("127.0.0.1", twice), BAD_TOKEN)
        self.assertEqual(BAD_TOKEN, GateRefusal(401, "bad token"))

    def test_revoked_token(self) -> None:
        """
        The token of a stopped spawn (revoked) → 401 C{bad token}.
        """
        self.tokens.revoke(self.token)
        self.assertEqual(
            self.gate.check("127.0.0.1", self.headers(X_Loopback_Token=self.token)), BAD_TOKEN
        )

    def test_check_request(self) -> None:
        """
        L{LoopbackGate.check_request} reads the client address and headers of a web request; a
        UNIX-socket peer is not loopback.
        """
        for address, expected in (
            (IPv4Address("TCP", "127.0.0.1", 5000), LoopbackGrant("ws_a", "trn_00000000000000aa")),
            (IPv6Address("TCP", "::1", 5000), LoopbackGrant("ws_a", "trn_00000000000000aa")),
            (IPv4Address("TCP", "10.0.0.5", 5000), FORBIDDEN),
            (UNIXAddress(b"/tmp/sock"), FORBIDDEN),
        ):
            with self.subTest(address=address):
                request: Any = DummyRequest([b"internal", b"connected"])
                request.client = address
                request.requestHeaders.setRawHeaders(b"X-Loopback-Token", [self.token.encode()])
                self.assertEqual(self.gate.check_request(request), expected)


class GatePropertyTests(SynchronousTestCase):
    """
    Whatever a request carries, the gate answers with a grant or one of its three refusals.
    """

    @given(
        st.one_of(st.none(), st.text(max_size=50), st.ip_addresses().map(str)),
        st.lists(
            st.tuples(
                st.sampled_from([b"X-Loopback-Token", b"Forwarded", b"X-Real-IP", b"Other"]),
                st.binary(max_size=60),
            ),
            max_size=4,
        ),
    )
    @settings(max_examples=200)
    def test_any_request(self, peer: str | None, fields: list[tuple[bytes, bytes]]) -> None:
        """
        Arbitrary peers and header bytes.
        """
        tokens = LoopbackTokens()
        token = tokens.issue("ws", "t")
        headers = Headers()
        for name, value in fields:
            headers.addRawHeader(name, value)
        result = LoopbackGate(tokens, LogCollector().log).check(peer, headers)
        if isinstance(result, LoopbackGrant):
            self.assertEqual(headers.getRawHeaders(b"X-Loopback-Token"), [token.encode()])
        else:
            self.assertIn(result, (FORBIDDEN, MISSING_TOKEN, BAD_TOKEN))
