"""
Tests for L{codexgw.httpio}: the header deadline and TCP keepalive of L{GuardedSite}, body limits and
the JSON body rules.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.static import Data
from twisted.web.test.requesthelper import DummyChannel

from codexgw.httpio import (
    HEADER_TIMEOUT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    GuardedSite,
    InvalidJSON,
    bounded_request,
    read_json_object,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class RecordingSocket:
    """
    Records C{setsockopt} calls.
    """

    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        """
        Record one option.
        """
        self.options.append((level, option, value))


class KeepaliveTransport(StringTransport):
    """
    A string transport that also takes TCP keepalive settings, like a TCP transport.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
        self.keepalive = False
        self.aborted = False
        self.handle = RecordingSocket()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Record the setting.
        """
        self.keepalive = enabled

    def getHandle(self) -> RecordingSocket:
        """
        The socket.
        """
        return self.handle

    def abortConnection(self) -> None:
        """
        Record the abort.
        """
        self.aborted = True


def connect() -> tuple[MemoryReactorClock, KeepaliveTransport, Any]:
    """
    A guarded site on a fake clock and one accepted connection.
    """
    clock = MemoryReactorClock()
    root = Resource()
    root.putChild(b"", Data(b"ok", "text/plain"))
    site = GuardedSite(root, timeout=120, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
    transport = KeepaliveTransport()
    assert channel is not None
    channel.makeConnection(transport)
    return clock, transport, channel


class HeaderDeadlineTests(SynchronousTestCase):
    """
    Request headers must complete within 10 s (C{exec-gateway.md} §9.1).
    """

    def test_silentConnection(self) -> None:
        """
        A connection that sends nothing is dropped after 10 s.
        """
        clock, transport, _ = connect()
        clock.advance(HEADER_TIMEOUT - 0.001)
        self.assertFalse(transport.aborted)
        clock.advance(0.001)
        self.assertTrue(transport.aborted)

    def test_tricklingHeaders(self) -> None:
        """
        Bytes arriving now and then do not extend the deadline.
        """
        clock, transport, channel = connect()
        for piece in (b"GET / HT", b"TP/1.1\r\n", b"Host: x\r\n"):
            channel.dataReceived(piece)
            clock.advance(3)
        self.assertFalse(transport.aborted)
        clock.advance(1)
        self.assertTrue(transport.aborted)

    def test_keepAliveWaitsForTheNextRequest(self) -> None:
        """
        Headers in time are served; an idle keep-alive connection is not held to the header deadline,
        but the next request's first byte starts a new one.
        """
        clock, transport, channel = connect()
        channel.dataReceived(REQUEST)
        self.assertIn(b"200 OK", transport.value())
        clock.advance(60)
        self.assertFalse(transport.aborted)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(HEADER_TIMEOUT)
        self.assertTrue(transport.aborted)


class KeepaliveTests(SynchronousTestCase):
    """
    Accepted sockets use TCP keepalive with 15 s idle and interval.
    """

    def test_keepalive(self) -> None:
        """
        Keepalive is on, with the idle and interval options where the platform has them.
        """
        _, transport, _ = connect()
        self.assertTrue(transport.keepalive)
        expected = [
            (socket.IPPROTO_TCP, getattr(socket, name), value)
            for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL))
            if hasattr(socket, name)
        ]
        self.assertEqual(transport.handle.options, expected)


class BoundedRequestTests(SynchronousTestCase):
    """
    Bodies over the site's cap are counted, never kept.
    """

    def test_announcedTooLarge(self) -> None:
        """
        A Content-Length over the cap marks the request and keeps nothing.
        """
        request = bounded_request(10)(DummyChannel())
        request.gotLength(11)
        request.handleContentChunk(b"x" * 11)
        self.assertTrue(request.body_too_large)
        assert request.content is not None
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"")

    def test_chunkedTooLarge(self) -> None:
        """
        A body of unknown length that grows past the cap drops what it kept.
        """
        request = bounded_request(10)(DummyChannel())
        request.gotLength(None)
        request.handleContentChunk(b"x" * 6)
        self.assertFalse(request.body_too_large)
        request.handleContentChunk(b"x" * 6)
        self.assertTrue(request.body_too_large)
        self.assertEqual(request.body_size, 12)
        assert request.content is not None
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"")


class JSONBodyTests(SynchronousTestCase):
    """
    "Invalid JSON" as the specs define it.
    """

    def test_invalid(self) -> None:
        """
        Empty, non-UTF-8, non-object, NaN, deeply nested and wrongly typed bodies are invalid.
        """
        fields = {"s": str, "b": bool, "i": int}
        for body in (b"", b"\xff", b"[]", b"1", b'{"s":NaN}', b"[" * 100000, b'{"s":1}', b'{"b":1}',
                     b'{"i":true}', b'{"i":1.5}', b'{"i":"1"}'):  # fmt: skip
            with self.subTest(body=body[:20]):
                self.assertRaises(InvalidJSON, read_json_object, body, fields)

    def test_valid(self) -> None:
        """
        Listed fields of the right type pass, C{null} means absent, unknown fields are kept.
        """
        self.assertEqual(
            read_json_object(b'{"s":"x","b":false,"i":2,"extra":[1],"n":null}', {"s": str, "n": str}),
            {"s": "x", "b": False, "i": 2, "extra": [1]},
        )
