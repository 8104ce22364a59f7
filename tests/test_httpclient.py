"""
Tests for L{codexgw.httpclient}: the outbound exchange every client shares — one deadline over
request and body, bodies bounded at 1 MiB (or 1 KiB for quoting), an oversized needed body failing or
marked truncated as the caller asks, no redirects, no C{Origin}, caller cancellation kept distinct
from the deadline — and its small helpers. The callers' own error texts are tested with the callers.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from codexgw.httpclient import (
    MAX_BODY_BYTES,
    MAX_QUOTED_BYTES,
    ExchangeFailed,
    Reply,
    decode_json,
    describe,
    exchange,
    json_bytes,
    make_headers,
    make_http_client,
    quote_body,
)
from tests.appgw.stubhttp import Answer, Hang, StubServer


class ExchangeTests(SynchronousTestCase):
    """
    L{exchange}.
    """

    def setUp(self) -> None:
        """
        A clock.
        """
        self.clock = Clock()

    def run_exchange(
        self,
        server: StubServer,
        needs_body: bool = True,
        method: str = "POST",
        fail_oversized: bool = True,
    ) -> Deferred[Reply]:
        """
        Start an exchange with C{server} (timeout 5 s) and flush it.
        """
        d = exchange(
            server.http, self.clock, method, "http://svc:80/path?q=1", make_headers({"X-A": "b"}),
            b"{}" if method == "POST" else None, 5.0, lambda status: needs_body,
            fail_oversized=fail_oversized,
        )  # fmt: skip
        server.flush()
        return d

    def test_reply(self) -> None:
        """
        The request goes out as given (method, URI, headers, body; no C{Origin}) and the reply has
        the status and body.
        """
        server = StubServer(Answer(201, b"created"))
        d = self.run_exchange(server)
        self.assertEqual(self.successResultOf(d), Reply(201, b"created"))
        recorded = server.only_request()
        self.assertEqual((recorded.method, recorded.uri, recorded.body), (b"POST", b"/path?q=1", b"{}"))
        self.assertEqual(recorded.header(b"X-A"), [b"b"])
        self.assertIsNone(recorded.header(b"Origin"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_body_limits(self) -> None:
        """
        A needed body is read to 1 MiB exactly; beyond fails. Another body is cut at 1 KiB.
        """
        server = StubServer(Answer(200, b"a" * MAX_BODY_BYTES))
        self.assertEqual(len(self.successResultOf(self.run_exchange(server)).body), MAX_BODY_BYTES)
        server = StubServer(Answer(200, b"a" * (MAX_BODY_BYTES + 1)))
        failure = self.failureResultOf(self.run_exchange(server), ExchangeFailed)
        self.assertEqual(str(failure.value), "response body exceeds 1048576 bytes")
        server = StubServer(Answer(500, b"b" * 5000))
        reply = self.successResultOf(self.run_exchange(server, needs_body=False))
        self.assertEqual(reply, Reply(500, b"b" * MAX_QUOTED_BYTES, truncated=True))
        server = StubServer(Answer(500, b"b" * MAX_QUOTED_BYTES))
        reply = self.successResultOf(self.run_exchange(server, needs_body=False))
        self.assertEqual(reply, Reply(500, b"b" * MAX_QUOTED_BYTES))

    def test_oversized_kept(self) -> None:
        """
        With C{fail_oversized=False} a needed body beyond 1 MiB is its first 1 MiB, marked truncated,
        for the caller to word the failure.
        """
        server = StubServer(Answer(200, b"a" * (MAX_BODY_BYTES + 1)))
        reply = self.successResultOf(self.run_exchange(server, fail_oversized=False))
        self.assertEqual(reply, Reply(200, b"a" * MAX_BODY_BYTES, truncated=True))
        server = StubServer(Answer(200, b"a" * MAX_BODY_BYTES))
        reply = self.successResultOf(self.run_exchange(server, fail_oversized=False))
        self.assertFalse(reply.truncated)

    def test_no_redirect(self) -> None:
        """
        A redirect is a reply like any other: it is not followed (a secret header would go along).
        """
        server = StubServer(Answer(302, b"", {b"Location": b"http://svc:80/elsewhere"}))
        reply = self.successResultOf(self.run_exchange(server, method="GET"))
        self.assertEqual(reply.status, 302)
        self.assertEqual(len(server.requests), 1)

    def test_deadline(self) -> None:
        """
        The deadline covers waiting for headers and for the body: C{timed out after 5s}.
        """
        for script in (Hang(), Hang(b"partial")):
            with self.subTest(script=script):
                server = StubServer(script)
                d = self.run_exchange(server)
                self.clock.advance(4.5)
                self.assertNoResult(d)
                self.clock.advance(0.5)
                failure = self.failureResultOf(d, ExchangeFailed)
                self.assertEqual(str(failure.value), "timed out after 5s")

    def test_caller_cancels(self) -> None:
        """
        A caller's cancellation is C{CancelledError}, not a timeout, and stops the deadline.
        """
        for script in (Hang(), Hang(b"partial")):
            with self.subTest(script=script):
                server = StubServer(script)
                d = self.run_exchange(server)
                d.cancel()
                self.failureResultOf(d, CancelledError)
                self.assertEqual(self.clock.getDelayedCalls(), [])


class HelperTests(SynchronousTestCase):
    """
    The small helpers.
    """

    def test_quote_body(self) -> None:
        """
        At most 1 KiB, decoded with replacement characters (a cut character is not an error).
        """
        self.assertEqual(quote_body(b"x" * 2000), "x" * 1024)
        self.assertEqual(quote_body(b"x" * 1023 + "é".encode()), "x" * 1023 + "\ufffd")
        self.assertEqual(quote_body(b"\xff"), "\ufffd")
        self.assertEqual(quote_body(b""), "")

    def test_describe(self) -> None:
        """
        Twisted's wrapped client errors are described by their first reason; others by their text
        or class name.
        """
        refused = ConnectionRefusedError("connection refused")
        self.assertEqual(
            describe(ResponseNeverReceived([Failure(refused)])),
            "Connection was refused by other side: connection refused.",
        )
        self.assertEqual(
            describe(ResponseFailed([Failure(DNSLookupError("no such host"))])),
            "DNS lookup failed: no such host.",
        )
        self.assertEqual(describe(ValueError()), "ValueError")
        self.assertEqual(describe(ValueError("bad")), "bad")

    def test_json(self) -> None:
        """
        Request bodies are compact UTF-8 JSON in key order; response bodies must be UTF-8 JSON.
        """
        self.assertEqual(json_bytes({"b": 1, "a": "é"}), '{"b":1,"a":"é"}'.encode())
        self.assertEqual(decode_json(b' {"a": [1]} '), {"a": [1]})
        self.assertRaises(ValueError, decode_json, b"\xff")
        self.assertRaises(ValueError, decode_json, b"")
        self.assertRaises(ValueError, decode_json, b"[" * 100000)

    def test_headers(self) -> None:
        """
        Text values are UTF-8 encoded, bytes kept.
        """
        headers = make_headers({"X-Text": "é", "X-Bytes": b"\x01"})
        self.assertEqual(headers.getRawHeaders(b"X-Text"), ["é".encode()])
        self.assertEqual(headers.getRawHeaders(b"X-Bytes"), [b"\x01"])
        self.assertIsInstance(headers, Headers)

    def test_make_http_client(self) -> None:
        """
        The production client is treq's, with a persistent pool of its own or the one given.
        """
        from treq.client import HTTPClient  # noqa: PLC0415
        from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415
        from twisted.web.client import HTTPConnectionPool  # noqa: PLC0415

        reactor = MemoryReactorClock()
        self.assertIsInstance(make_http_client(reactor), HTTPClient)
        pool = HTTPConnectionPool(reactor)
        self.assertIsInstance(make_http_client(reactor, pool), HTTPClient)
