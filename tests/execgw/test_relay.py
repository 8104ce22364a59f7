"""
Unit tests of the byte relay (L{codexgw.execgw.relay}, the relay routes of L{codexgw.execgw.web} and
the streamed request bodies of L{codexgw.httpio}; C{exec-gateway.md} §4.6, §4.7, §6.5, §7.6, §9.5,
acceptance items 60–69 in memory).

Layers, each on fakes and a fake clock:
 - the pairing protocol (L{Relay}, L{RelayRegistry}, L{create_relay}) with fake sides;
 - the side contracts: L{FakeUpload} and L{FakeDownload} pass the same interface tests as the real
   twisted.web sides (L{RequestUpload}, L{RequestDownload}) driven over the wire format;
 - the routes over the gateway's own site: raw HTTP bytes into a L{GuardedSite} channel over a string
   transport, responses parsed back (interim C{100 Continue}, chunked bodies and whether their final
   chunk came), so streaming, back-pressure and early answers are seen as a client sees them.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.relay import (
    ABORT_GRACE,
    DOWNLOAD_BUFFER_BYTES,
    UPLOAD_READ_BYTES,
    IRelayDownload,
    IRelayUpload,
    Relay,
    RelayGrant,
    RelayRefused,
    RelayRegistry,
    RelayState,
    RequestDownload,
    RequestUpload,
    create_relay,
    new_ticket,
    pairing_body,
)
from codexgw.execgw.store import ExecutorRecord, StoreUnavailable
from codexgw.httpio import LINGER_TIMEOUT, GuardedSite, bounded_request
from codexgw.testing.fakestore import FakeStore
from tests.execgw.test_web import (
    EXE,
    NOT_JSON_OBJECTS,
    NOW,
    OTHER_EXE,
    SHARED_SECRET,
    WS,
    LogCapture,
    Reply,
    ReplyAssertions,
    RouteHarness,
    bearer,
    json_bytes,
    settled,
)

if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object

TICKET_PATTERN = re.compile(r"^rly_[A-Za-z0-9_-]{43}$")
BASE = "https://relay.test"
RELAY_ENV = {"CXG_PUBLIC_HTTPS_BASE_URL": BASE + "/"}
THIRD_EXE = "exe_77777777-8888-4999-aaaa-bbbbbbbbbbbb"


def body_of(value: dict[str, object]) -> bytes:
    """
    The exact pairing body of §4.7 (compact JSON, no newline).
    """
    return json.dumps(value, separators=(",", ":")).encode()


# -------------------------------------------------------------------------------------------------
# The wire: raw HTTP in, parsed responses out


@dataclass
class Answer:
    """
    One response as a client reads it.

    @ivar complete: whether its body ended properly (the final chunk of a chunked body, or all of
        C{Content-Length}).
    """

    status: int
    headers: dict[str, list[str]]
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    body = bytearray()
    while True:
        line, separator, after = data.partition(b"\r\n")
        if not separator:
            return bytes(body), False, b""
        size = int(line.split(b";")[0], 16)
        if size == 0:
            if after.startswith(b"\r\n"):
                return bytes(body), True, after[2:]
            return bytes(body), False, b""
        body += after[:size]
        if len(after) < size + 2:
            return bytes(body), False, b""
        data = after[size + 2 :]


def parse_answers(raw: bytes) -> list[Answer]:
    """
    Every response in C{raw}, interim (1xx) ones included, the last possibly incomplete.
    """
    answers = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        if not separator:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if 100 <= status < 200:
            answers.append(Answer(status, headers, b"", True))
            raw = rest
            continue
        if "chunked" in headers.get("transfer-encoding", []):
            body, complete, raw = _dechunk(rest)
        elif "content-length" in headers:
            length = int(headers["content-length"][0])
            body, raw = rest[:length], rest[length:]
            complete = len(body) == length
        else:
            body, complete, raw = rest, False, b""
        answers.append(Answer(status, headers, body, complete))
    return answers


class TCPStringTransport(StringTransport):
    """
    A string transport with what the gateway uses of a TCP transport: half-close and abort, recorded.
    """

    write_closed = False
    aborted = False
    bufferSize = 65536

    def loseWriteConnection(self) -> None:
        """
        Record the half-close.
        """
        self.write_closed = True

    def abortConnection(self) -> None:
        """
        Record the abort.
        """
        self.aborted = True
        super().abortConnection()


def head(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    length: int | None = None,
    chunked: bool = False,
    expect: bool = False,
) -> bytes:
    """
    A request head (HTTP/1.1, keep-alive).
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: gw.test", *(f"{n}: {v}" for n, v in headers)]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """
    One chunk of a chunked request body (C{b""} is the last one).
    """
    return b"%x\r\n%s\r\n" % (len(data), data)


class CongestingTransport(TCPStringTransport):
    """
    A transport whose send buffer is full after every write (it tells its producer at once, as a TCP
    transport does past its buffer size).
    """

    def write(self, data: bytes) -> None:
        """
        Take the bytes, then report congestion.
        """
        super().write(data)
        if self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        """
        As L{write}.
        """
        self.write(b"".join(data))


class Wire:
    """
    One client connection to a site, in memory.
    """

    def __init__(self, site: Site, kind: type[TCPStringTransport] = TCPStringTransport) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.transport = kind(hostAddress=IPv4Address("TCP", "127.0.0.1", 6060), peerAddress=peer)
        channel = site.buildProtocol(peer)
        assert channel is not None
        self.channel: Any = channel
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """
        The client sends C{data}.
        """
        self.channel.dataReceived(data)

    def lose(self) -> None:
        """
        The connection is gone.
        """
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def answers(self) -> list[Answer]:
        """
        Every response so far.
        """
        return parse_answers(self.transport.value())

    @property
    def final(self) -> Answer | None:
        """
        The first final (non-1xx) response so far, or C{None}.
        """
        finals = [a for a in self.answers if a.status >= 200]
        return finals[0] if finals else None

    @property
    def reading(self) -> bool:
        """
        Whether the gateway reads this connection's socket.
        """
        return self.transport.producerState == "producing"


# -------------------------------------------------------------------------------------------------
# Fake sides, and a stand-in relay that records what sides report


class RecordingRelay:
    """
    Stands in for a L{Relay} and records what a side reports.
    """

    def __init__(self, clock: MemoryReactorClock | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.clock = clock if clock is not None else MemoryReactorClock()

    def upload_received(self, side: object, data: bytes) -> None:
        """
        Record a body piece.
        """
        self.events.append(("received", data))

    def upload_ended(self, side: object) -> None:
        """
        Record the end of the body.
        """
        self.events.append(("ended",))

    def upload_lost(self, side: object) -> None:
        """
        Record a lost upload.
        """
        self.events.append(("lost",))

    def download_congested(self, side: object, congested: bool) -> None:
        """
        Record congestion.
        """
        self.events.append(("congested", congested))

    def download_lost(self, side: object) -> None:
        """
        Record a lost download.
        """
        self.events.append(("lost",))

    def body(self) -> bytes:
        """
        The body pieces received, joined.
        """
        return b"".join(e[1] for e in self.events if e[0] == "received")


@implementer(IRelayUpload)
class FakeUpload:
    """
    An uploading client in memory: starts paused; what it sends reaches its relay only while resumed.

    @ivar responses: the C{(status, body)} answers it got (at most one).
    """

    def __init__(self, relay: Relay | RecordingRelay) -> None:
        self.relay: Any = relay
        self.paused = True
        self.pending: deque[bytes | None] = deque()
        self.responses: list[tuple[int, bytes]] = []
        self.pauses = 0
        self.resumes = 0

    def send(self, data: bytes) -> None:
        """
        The client sends body bytes.
        """
        self.pending.append(data)
        self._flush()

    def end(self) -> None:
        """
        The client ends its body.
        """
        self.pending.append(None)
        self._flush()

    def lose(self) -> None:
        """
        The client goes away.
        """
        if not self.responses:
            self.relay.upload_lost(self)

    def _flush(self) -> None:
        while self.pending and not self.paused and not self.responses:
            item = self.pending.popleft()
            if item is None:
                self.relay.upload_ended(self)
            else:
                self.relay.upload_received(self, item)

    def pause(self) -> None:
        """
        See L{IRelayUpload.pause}.
        """
        self.pauses += 1
        self.paused = True

    def resume(self) -> None:
        """
        See L{IRelayUpload.resume}.
        """
        self.resumes += 1
        self.paused = False
        self._flush()

    def respond(self, status: int, body: bytes) -> None:
        """
        See L{IRelayUpload.respond}.
        """
        if not self.responses:
            self.responses.append((status, body))

    @property
    def response(self) -> tuple[int, bytes] | None:
        """
        The answer, if any.
        """
        return self.responses[0] if self.responses else None


@implementer(IRelayDownload)
class FakeDownload:
    """
    A downloading client in memory.

    @ivar body: the octet-stream bytes written.
    @ivar ended: C{"finished"}, C{"aborted"} or C{None}.
    """

    def __init__(self, relay: Relay | RecordingRelay) -> None:
        self.relay: Any = relay
        self.body = bytearray()
        self.started = False
        self.ended: str | None = None
        self.responses: list[tuple[int, bytes]] = []

    def congest(self, congested: bool) -> None:
        """
        The client's transport fills up (or drains).
        """
        if self.started and self.ended is None:
            self.relay.download_congested(self, congested)

    def lose(self) -> None:
        """
        The client goes away.
        """
        if self.ended is None and not self.responses:
            self.relay.download_lost(self)

    def write(self, data: bytes) -> None:
        """
        See L{IRelayDownload.write}.
        """
        if self.ended is None and not self.responses:
            self.started = True
            self.body += data

    def finish(self) -> None:
        """
        See L{IRelayDownload.finish}.
        """
        if self.ended is None and not self.responses:
            self.started = True
            self.ended = "finished"

    def abort(self) -> None:
        """
        See L{IRelayDownload.abort}.
        """
        if self.ended is None and not self.responses:
            self.ended = "aborted"

    def respond(self, status: int, body: bytes) -> None:
        """
        See L{IRelayDownload.respond}.
        """
        if self.ended is None and not self.responses and not self.started:
            self.responses.append((status, body))

    @property
    def response(self) -> tuple[int, bytes] | None:
        """
        The JSON answer, if any.
        """
        return self.responses[0] if self.responses else None


# -------------------------------------------------------------------------------------------------
# Side contracts: the fakes and the twisted.web sides pass the same tests


@dataclass
class Seen:
    """
    What a side's client saw: a JSON answer, or the octet stream and how it ended.
    """

    status: int | None
    body: bytes
    complete: bool
    aborted: bool
    content_type: str | None = None


class UploadDriver:
    """
    A side under test and how a client acts on it.
    """

    side: IRelayUpload
    relay: RecordingRelay

    def send(self, data: bytes) -> None:
        """
        The client sends body bytes.
        """
        raise NotImplementedError

    def end(self) -> None:
        """
        The client ends the body.
        """
        raise NotImplementedError

    def lose(self) -> None:
        """
        The client goes away.
        """
        raise NotImplementedError

    def answer(self) -> tuple[int, bytes] | None:
        """
        The response the client got.
        """
        raise NotImplementedError


class UploadContract(_MixinBase):
    """
    What every L{IRelayUpload} does.
    """

    def driver(self) -> UploadDriver:
        """
        A fresh side with its client.
        """
        raise NotImplementedError

    def test_provides(self) -> None:
        """
        The side provides L{IRelayUpload}.
        """
        self.assertTrue(verifyObject(IRelayUpload, self.driver().side))

    def test_starts_paused(self) -> None:
        """
        Nothing of the body reaches the relay before C{resume}.
        """
        d = self.driver()
        d.send(b"abc")
        self.assertEqual(d.relay.events, [])
        d.side.resume()
        self.assertEqual(d.relay.events, [("received", b"abc")])

    def test_order_and_end(self) -> None:
        """
        Pieces arrive in order, then the end.
        """
        d = self.driver()
        d.side.resume()
        d.send(b"one")
        d.send(b"two")
        d.end()
        self.assertEqual(d.relay.body(), b"onetwo")
        self.assertEqual(d.relay.events[-1], ("ended",))

    def test_pause(self) -> None:
        """
        While paused nothing is delivered; resuming delivers what was held, in order.
        """
        d = self.driver()
        d.side.resume()
        d.send(b"a")
        d.side.pause()
        d.send(b"b")
        d.end()
        self.assertEqual(d.relay.events, [("received", b"a")])
        d.side.resume()
        self.assertEqual(d.relay.events, [("received", b"a"), ("received", b"b"), ("ended",)])

    def test_respond_once(self) -> None:
        """
        C{respond} answers the client; a second answer is ignored.
        """
        d = self.driver()
        d.side.respond(423, b'{"error":"x"}')
        d.side.respond(500, b'{"error":"y"}')
        self.assertEqual(d.answer(), (423, b'{"error":"x"}'))

    def test_silent_after_respond(self) -> None:
        """
        After its answer the side reports nothing more.
        """
        d = self.driver()
        d.side.resume()
        d.side.respond(500, b"{}")
        d.send(b"late")
        d.end()
        self.assertEqual(d.relay.events, [])

    def test_lost(self) -> None:
        """
        A client that goes away is reported.
        """
        d = self.driver()
        d.lose()
        self.assertIn(("lost",), d.relay.events)


class DownloadDriver:
    """
    A download side under test and how its client acts on it.
    """

    side: IRelayDownload
    relay: RecordingRelay

    def congest(self, congested: bool) -> None:
        """
        The client's transport fills up or drains.
        """
        raise NotImplementedError

    def lose(self) -> None:
        """
        The client goes away.
        """
        raise NotImplementedError

    def seen(self) -> Seen:
        """
        What the client saw.
        """
        raise NotImplementedError


class DownloadContract(_MixinBase):
    """
    What every L{IRelayDownload} does.
    """

    def driver(self) -> DownloadDriver:
        """
        A fresh side with its client.
        """
        raise NotImplementedError

    def test_provides(self) -> None:
        """
        The side provides L{IRelayDownload}.
        """
        self.assertTrue(verifyObject(IRelayDownload, self.driver().side))

    def test_stream(self) -> None:
        """
        Writes make a 200 octet stream, complete once finished.
        """
        d = self.driver()
        d.side.write(b"abc")
        d.side.write(b"def")
        seen = d.seen()
        self.assertEqual((seen.status, seen.body, seen.complete), (200, b"abcdef", False))
        d.side.finish()
        seen = d.seen()
        self.assertEqual((seen.body, seen.complete, seen.aborted), (b"abcdef", True, False))

    def test_empty_stream(self) -> None:
        """
        Finishing without writes is a complete empty 200.
        """
        d = self.driver()
        d.side.finish()
        seen = d.seen()
        self.assertEqual((seen.status, seen.body, seen.complete), (200, b"", True))

    def test_abort(self) -> None:
        """
        An abort leaves the client with an incomplete stream.
        """
        d = self.driver()
        d.side.write(b"abc")
        d.side.abort()
        seen = d.seen()
        self.assertEqual((seen.body, seen.complete, seen.aborted), (b"abc", False, True))

    def test_respond(self) -> None:
        """
        A JSON answer instead of the stream.
        """
        d = self.driver()
        d.side.respond(408, b'{"error":"x"}')
        seen = d.seen()
        self.assertEqual((seen.status, seen.body, seen.complete), (408, b'{"error":"x"}', True))
        self.assertEqual(seen.content_type, "application/json")

    def test_congestion(self) -> None:
        """
        The transport's congestion reaches the relay.
        """
        d = self.driver()
        d.side.write(b"x")
        d.congest(True)
        d.congest(False)
        self.assertEqual(d.relay.events, [("congested", True), ("congested", False)])

    def test_lost(self) -> None:
        """
        A client that goes away is reported.
        """
        d = self.driver()
        d.side.write(b"x")
        d.lose()
        self.assertIn(("lost",), d.relay.events)


class FakeUploadDriver(UploadDriver):
    """
    Drives a L{FakeUpload}.
    """

    def __init__(self) -> None:
        self.relay = RecordingRelay()
        self.fake = FakeUpload(self.relay)
        self.side = self.fake

    def send(self, data: bytes) -> None:
        """
        See L{UploadDriver.send}.
        """
        self.fake.send(data)

    def end(self) -> None:
        """
        See L{UploadDriver.end}.
        """
        self.fake.end()

    def lose(self) -> None:
        """
        See L{UploadDriver.lose}.
        """
        self.fake.lose()

    def answer(self) -> tuple[int, bytes] | None:
        """
        See L{UploadDriver.answer}.
        """
        return self.fake.response


class FakeDownloadDriver(DownloadDriver):
    """
    Drives a L{FakeDownload}.
    """

    def __init__(self) -> None:
        self.relay = RecordingRelay()
        self.fake = FakeDownload(self.relay)
        self.side = self.fake

    def congest(self, congested: bool) -> None:
        """
        See L{DownloadDriver.congest}.
        """
        self.fake.congest(congested)

    def lose(self) -> None:
        """
        See L{DownloadDriver.lose}.
        """
        self.fake.lose()

    def seen(self) -> Seen:
        """
        See L{DownloadDriver.seen}.
        """
        if self.fake.response is not None:
            status, body = self.fake.response
            return Seen(status, body, True, False, "application/json")
        return Seen(
            200 if self.fake.started else None,
            bytes(self.fake.body),
            self.fake.ended == "finished",
            self.fake.ended == "aborted",
            "application/octet-stream",
        )


class SideSite:
    """
    A guarded site whose C{/up} (PUT, streamed) and C{/down} (GET) requests become relay sides
    reporting to a L{RecordingRelay}.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.clock = MemoryReactorClock()
        self.relay = RecordingRelay(self.clock)
        self.sides: list[Any] = []
        root = Resource()
        root.putChild(b"up", _SideResource(self, RequestUpload))
        root.putChild(b"down", _SideResource(self, RequestDownload))
        self.site = GuardedSite(root, timeout=120, reactor=self.clock)
        self.site.requestFactory = bounded_request(1 << 20, ((b"PUT", b"/up"),))
        self.site.startFactory()
        case.addCleanup(self.site.stopFactory)


class _SideResource(Resource):
    """
    Turns each request into a side of the given kind, left open.
    """

    isLeaf = True

    def __init__(self, owner: SideSite, kind: Callable[[IRequest, Relay], Any]) -> None:
        super().__init__()
        self.owner = owner
        self.kind = kind

    def render(self, request: IRequest) -> Any:
        """
        Make the side.
        """
        self.owner.sides.append(self.kind(request, cast(Relay, self.owner.relay)))
        return NOT_DONE_YET


class RequestUploadDriver(UploadDriver):
    """
    Drives a L{RequestUpload}: a chunked PUT over the wire.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        site = SideSite(case)
        self.relay = site.relay
        self.wire = Wire(site.site)
        self.wire.send(head("PUT", "/up", chunked=True))
        [self.side] = site.sides

    def send(self, data: bytes) -> None:
        """
        See L{UploadDriver.send}.
        """
        self.wire.send(chunk(data))

    def end(self) -> None:
        """
        See L{UploadDriver.end}.
        """
        self.wire.send(chunk(b""))

    def lose(self) -> None:
        """
        See L{UploadDriver.lose}.
        """
        self.wire.lose()

    def answer(self) -> tuple[int, bytes] | None:
        """
        See L{UploadDriver.answer}.
        """
        final = self.wire.final
        return None if final is None else (final.status, final.body)


class RequestDownloadDriver(DownloadDriver):
    """
    Drives a L{RequestDownload}: a GET over the wire.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        site = SideSite(case)
        self.relay = site.relay
        self.wire = Wire(site.site)
        self.wire.send(head("GET", "/down"))
        [self.side] = site.sides

    def congest(self, congested: bool) -> None:
        """
        See L{DownloadDriver.congest}: the transport tells its channel, as a TCP transport does.
        """
        if congested:
            self.wire.channel.pauseProducing()
        else:
            self.wire.channel.resumeProducing()

    def lose(self) -> None:
        """
        See L{DownloadDriver.lose}.
        """
        self.wire.lose()

    def seen(self) -> Seen:
        """
        See L{DownloadDriver.seen}.
        """
        final = self.wire.final
        # Closed by the gateway without completing the response.
        aborted = self.wire.transport.disconnecting and not (final and final.complete)
        if final is None:
            return Seen(None, b"", False, aborted)
        return Seen(final.status, final.body, final.complete, aborted, final.header("Content-Type"))


class FakeUploadTests(UploadContract, SynchronousTestCase):
    """
    L{FakeUpload} keeps the upload contract.
    """

    def driver(self) -> UploadDriver:
        """
        A fake side.
        """
        return FakeUploadDriver()


class RequestUploadTests(UploadContract, SynchronousTestCase):
    """
    L{RequestUpload} keeps the upload contract, over the wire.
    """

    def driver(self) -> UploadDriver:
        """
        A streamed PUT request.
        """
        return RequestUploadDriver(self)

    def test_answer_closes(self) -> None:
        """
        An answer before the end of the body closes the connection; the JSON answer has a length and
        the reason phrase of 423.
        """
        d = RequestUploadDriver(self)
        d.side.respond(423, b'{"error":"x"}')
        final = d.wire.final
        assert final is not None
        self.assertEqual(final.header("Connection"), "close")
        self.assertEqual(final.header("Content-Length"), "13")
        self.assertIn(b"HTTP/1.1 423 Locked\r\n", d.wire.transport.value())


class FakeDownloadTests(DownloadContract, SynchronousTestCase):
    """
    L{FakeDownload} keeps the download contract.
    """

    def driver(self) -> DownloadDriver:
        """
        A fake side.
        """
        return FakeDownloadDriver()


class RequestDownloadTests(DownloadContract, SynchronousTestCase):
    """
    L{RequestDownload} keeps the download contract, over the wire.
    """

    def driver(self) -> DownloadDriver:
        """
        A GET request.
        """
        return RequestDownloadDriver(self)

    def test_headers(self) -> None:
        """
        The stream is chunked C{application/octet-stream} with C{nosniff}; its headers go out with
        the first bytes, not before.
        """
        d = RequestDownloadDriver(self)
        self.assertEqual(d.wire.transport.value(), b"")
        d.side.write(b"x")
        final = d.wire.final
        assert final is not None
        self.assertEqual(final.header("Content-Type"), "application/octet-stream")
        self.assertEqual(final.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(final.header("Transfer-Encoding"), "chunked")
        self.assertIsNone(final.header("Content-Length"))


# -------------------------------------------------------------------------------------------------
# The pairing protocol


class RelayFixture:
    """
    A registry on a fake clock with metrics.
    """

    def __init__(self, max_per_workspace: int = 16, default_ttl: float = 300.0) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.metrics = ExecMetrics()
        self.registry = RelayRegistry(self.clock, BASE, default_ttl, max_per_workspace, self.metrics)

    def relay(self, ttl_seconds: int = 0, max_bytes: int = 0, wid: str = WS) -> Relay:
        """
        A new relay.
        """
        grant = self.registry.create(wid, EXE, OTHER_EXE, ttl_seconds, max_bytes)
        relay = self.registry.find(grant.ticket)
        assert relay is not None
        return relay

    def sample(self, name: str, **labels: str) -> float:
        """
        One metric sample's value.
        """
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class PairingTests(SynchronousTestCase):
    """
    L{Relay}: pairing, streaming and how a relay ends (§4.7).
    """

    def setUp(self) -> None:
        self.fx = RelayFixture()
        self.log = LogCapture(self)

    def pair(self, relay: Relay, put_first: bool = True) -> tuple[FakeUpload, FakeDownload]:
        """
        Attach an upload and a download in the given order.
        """
        up, down = FakeUpload(relay), FakeDownload(relay)
        if put_first:
            self.assertTrue(relay.attach_upload(up))
            self.assertTrue(relay.attach_download(down))
        else:
            self.assertTrue(relay.attach_download(down))
            self.assertTrue(relay.attach_upload(up))
        return up, down

    def test_put_first(self) -> None:
        """
        A PUT waits paused; the GET pairs, the body streams, the GET finishes, then the PUT gets 200.
        """
        relay = self.fx.relay()
        up = FakeUpload(relay)
        relay.attach_upload(up)
        up.send(b"early")
        self.assertEqual((up.resumes, relay.received), (0, 0))
        down = FakeDownload(relay)
        relay.attach_download(down)
        self.assertIs(relay.state, RelayState.TRANSFERRING)
        up.send(b"-late")
        self.assertEqual(bytes(down.body), b"early-late")
        up.end()
        self.assertEqual(down.ended, "finished")
        self.assertEqual(up.response, (200, body_of({"bytes": 10, "status": "ok"})))
        self.assertIs(relay.state, RelayState.FINISHED)

    def test_get_first(self) -> None:
        """
        A GET waits; the PUT pairs at once.
        """
        relay = self.fx.relay()
        up, down = self.pair(relay, put_first=False)
        up.send(b"x" * 100)
        up.end()
        self.assertEqual((bytes(down.body), down.ended), (b"x" * 100, "finished"))
        self.assertEqual(up.response, (200, b'{"bytes":100,"status":"ok"}'))

    def test_empty_body(self) -> None:
        """
        A zero-byte upload gives a complete empty download.
        """
        relay = self.fx.relay()
        up, down = self.pair(relay)
        up.end()
        self.assertEqual((bytes(down.body), down.ended), (b"", "finished"))
        self.assertEqual(up.response, (200, b'{"bytes":0,"status":"ok"}'))

    def test_second_claims(self) -> None:
        """
        Each side may be claimed once: 423 with the exact bodies, the first claims unaffected.
        """
        relay = self.fx.relay()
        up, down = FakeUpload(relay), FakeDownload(relay)
        relay.attach_upload(up)
        other_up = FakeUpload(relay)
        self.assertFalse(relay.attach_upload(other_up))
        self.assertEqual(other_up.response, (423, b'{"error":"PUT side already claimed"}'))
        relay.attach_download(down)
        other_down = FakeDownload(relay)
        self.assertFalse(relay.attach_download(other_down))
        self.assertEqual(other_down.response, (423, b'{"error":"GET side already claimed"}'))
        other_up.relay.upload_received(other_up, b"intruder")
        other_up.lose()
        other_down.lose()
        up.send(b"ok")
        up.end()
        self.assertEqual(bytes(down.body), b"ok")

    def test_expiry_put_waiting(self) -> None:
        """
        At expiry a waiting PUT gets 408 and the ticket is gone.
        """
        relay = self.fx.relay(ttl_seconds=30)
        up = FakeUpload(relay)
        relay.attach_upload(up)
        self.fx.clock.advance(29.999)
        self.assertIsNone(up.response)
        self.fx.clock.advance(0.001)
        self.assertEqual(up.response, (408, b'{"error":"timed out waiting for GET side"}'))
        self.assertIsNone(self.fx.registry.find(relay.ticket))
        self.assertEqual(relay.outcome, "timeout")

    def test_expiry_get_waiting(self) -> None:
        """
        At expiry a waiting GET gets 408 (no octet-stream bytes).
        """
        relay = self.fx.relay(ttl_seconds=30)
        down = FakeDownload(relay)
        relay.attach_download(down)
        self.fx.clock.advance(30)
        self.assertEqual(down.response, (408, b'{"error":"timed out waiting for PUT side"}'))
        self.assertFalse(down.started)
        self.assertEqual(len(self.fx.registry), 0)

    def test_expiry_unclaimed(self) -> None:
        """
        A ticket nobody used is removed at expiry (outcome C{timeout}).
        """
        relay = self.fx.relay(ttl_seconds=30)
        self.fx.clock.advance(30)
        self.assertEqual((len(self.fx.registry), relay.outcome), (0, "timeout"))

    def test_paired_ignores_expiry(self) -> None:
        """
        Once both sides are present the expiry no longer applies.
        """
        relay = self.fx.relay(ttl_seconds=30)
        up, _ = self.pair(relay)
        self.fx.clock.advance(3600)
        self.assertEqual(self.fx.clock.getDelayedCalls(), [])
        up.send(b"late")
        up.end()
        self.assertEqual(up.response, (200, b'{"bytes":4,"status":"ok"}'))

    def test_max_bytes(self) -> None:
        """
        Past C{max_bytes} the download is aborted after exactly C{max_bytes} bytes and the PUT gets 500
        naming both counts.
        """
        relay = self.fx.relay(max_bytes=1000)
        up, down = self.pair(relay)
        up.send(b"a" * 600)
        up.send(b"b" * 600)
        self.assertEqual(down.ended, "aborted")
        self.assertEqual(bytes(down.body), b"a" * 600 + b"b" * 400)
        error = "relay: payload exceeded MaxBytes (1200 > 1000)"
        self.assertEqual(up.response, (500, body_of({"bytes": 1000, "error": error})))
        self.assertEqual(relay.outcome, "error")

    def test_max_bytes_exact(self) -> None:
        """
        Exactly C{max_bytes} bytes pass.
        """
        relay = self.fx.relay(max_bytes=1000)
        up, down = self.pair(relay)
        up.send(b"a" * 1000)
        up.end()
        self.assertEqual((len(down.body), down.ended), (1000, "finished"))

    def test_download_lost(self) -> None:
        """
        The GET client lost mid-transfer: the PUT gets 500 with the bytes written.
        """
        relay = self.fx.relay()
        up, down = self.pair(relay)
        up.send(b"x" * 10)
        down.lose()
        self.assertEqual(up.response, (500, b'{"bytes":10,"error":"relay: download side disconnected"}'))
        up.send(b"more")
        self.assertEqual(relay.written, 10)

    def test_upload_lost(self) -> None:
        """
        The PUT client lost mid-transfer: the GET is aborted.
        """
        relay = self.fx.relay()
        up, down = self.pair(relay)
        up.send(b"x")
        up.lose()
        self.assertEqual(down.ended, "aborted")
        self.assertEqual(relay.outcome, "error")

    def test_waiting_lost(self) -> None:
        """
        A waiting side's connection lost finishes the ticket (C{abandoned}).
        """
        for attach in ("upload", "download"):
            relay = self.fx.relay()
            if attach == "upload":
                up = FakeUpload(relay)
                relay.attach_upload(up)
                up.lose()
            else:
                down = FakeDownload(relay)
                relay.attach_download(down)
                down.lose()
            self.assertEqual(relay.outcome, "abandoned")
            self.assertIsNone(self.fx.registry.find(relay.ticket))

    def test_congestion(self) -> None:
        """
        A congested download pauses the upload; draining resumes it.
        """
        relay = self.fx.relay()
        up, down = self.pair(relay)
        up.send(b"a")
        down.congest(True)
        self.assertTrue(up.paused)
        up.send(b"b")
        self.assertEqual(bytes(down.body), b"a")
        down.congest(False)
        self.assertFalse(up.paused)
        self.assertEqual(bytes(down.body), b"ab")

    def test_congested_before_pairing(self) -> None:
        """
        A download that is congested when the upload arrives does not resume it.
        """
        relay = self.fx.relay()
        down = FakeDownload(relay)
        relay.attach_download(down)
        down.started = True
        down.congest(True)
        up = FakeUpload(relay)
        relay.attach_upload(up)
        self.assertEqual(up.resumes, 0)
        down.congest(False)
        self.assertEqual(up.resumes, 1)

    def test_finished_logs_and_metrics(self) -> None:
        """
        Each outcome is counted once; active relays and bytes follow; C{relay.finished} carries the
        fields of §10.1 and no ticket.
        """
        relay = self.fx.relay()
        self.assertEqual(self.fx.sample("cxg_exec_relays_active"), 1)
        up, _ = self.pair(relay)
        up.send(b"x" * 7)
        up.end()
        self.assertEqual(self.fx.sample("cxg_exec_relays_active"), 0)
        self.assertEqual(self.fx.sample("cxg_exec_relays_total", outcome="ok"), 1)
        self.assertEqual(self.fx.sample("cxg_exec_relay_bytes_total"), 7)
        [finished] = self.log.named("relay.finished")
        self.assertEqual(
            {k: finished[k] for k in ("workspace_id", "source_exe_id", "dest_exe_id", "outcome")},
            {"workspace_id": WS, "source_exe_id": EXE, "dest_exe_id": OTHER_EXE, "outcome": "ok"},
        )
        self.assertEqual((finished["bytes"], finished["error"]), (7, ""))
        self.assertNotIn(relay.ticket, self.log.text())

    def test_pairing_body(self) -> None:
        """
        Pairing bodies are compact, ordered and without a newline.
        """
        self.assertEqual(pairing_body({"bytes": 3, "status": "ok"}), b'{"bytes":3,"status":"ok"}')


class RegistryTests(SynchronousTestCase):
    """
    L{RelayRegistry}: tickets, TTLs, the per-workspace cap and lookups (§4.6, §6.5, §7.6).
    """

    def setUp(self) -> None:
        self.fx = RelayFixture()
        self.log = LogCapture(self)

    def test_ticket_format(self) -> None:
        """
        C{rly_} + base64url of 32 random bytes: 47 characters; URLs use the base.
        """
        grant = self.fx.registry.create(WS, EXE, OTHER_EXE)
        self.assertRegex(grant.ticket, TICKET_PATTERN)
        self.assertEqual(len(grant.ticket), 47)
        self.assertEqual(grant.upload_url, f"{BASE}/relay/{grant.ticket}")
        self.assertEqual(grant.download_url, grant.upload_url)
        self.assertEqual(new_ticket(lambda n: b"\xff" * n), "rly_" + "_" * 42 + "8")

    def test_ttl(self) -> None:
        """
        C{ttl_seconds} > 0 is used (capped at 86400); absent or ≤ 0 means the default.
        """
        cases = [(0, 300.0), (-5, 300.0), (60, 60.0), (86400, 86400.0), (86401, 86400.0)]
        for ttl_seconds, expected in cases:
            grant = self.fx.registry.create(f"ws_{ttl_seconds}", EXE, OTHER_EXE, ttl_seconds)
            relay = self.fx.registry.find(grant.ticket)
            assert relay is not None
            self.assertEqual(relay.expires_at - NOW, expected)
            self.assertEqual(grant.expires_at.timestamp(), NOW + expected)

    def test_fractional_default_ttl(self) -> None:
        """
        A fractional default TTL (e.g. 2 ms) expires exactly then; C{expires_at} keeps the fraction.
        """
        fx = RelayFixture(default_ttl=0.002)
        grant = fx.registry.create(WS, EXE, OTHER_EXE)
        self.assertEqual(grant.json()["expires_at"], "2026-05-17T06:40:00.002Z")
        fx.clock.advance(0.002)
        self.assertEqual(len(fx.registry), 0)

    def test_find_at_expiry(self) -> None:
        """
        A lookup at the expiry moment finds nothing, even before the timer ran.
        """
        grant = self.fx.registry.create(WS, EXE, OTHER_EXE, 10)
        self.fx.clock.rightNow += 10
        self.assertIsNone(self.fx.registry.find(grant.ticket))
        self.assertEqual(len(self.fx.registry), 0)

    def test_find_unknown(self) -> None:
        """
        Unknown, altered and non-ASCII tickets are not found.
        """
        grant = self.fx.registry.create(WS, EXE, OTHER_EXE)
        for ticket in ("", "rly_x", grant.ticket[:-1] + "A", grant.ticket + "x", "rly_é"):
            self.assertIsNone(self.fx.registry.find(ticket))

    def test_cap(self) -> None:
        """
        The cap counts pending and transferring relays per workspace; finishing frees a place.
        """
        fx = RelayFixture(max_per_workspace=2)
        first = fx.relay()
        second = fx.relay()
        up, down = FakeUpload(second), FakeDownload(second)
        second.attach_upload(up)
        second.attach_download(down)
        with self.assertRaises(RelayRefused) as caught:
            fx.registry.create(WS, EXE, OTHER_EXE)
        self.assertEqual(
            (caught.exception.status, caught.exception.message),
            (429, "relay: workspace concurrent relay cap reached"),
        )
        fx.registry.create("ws_other", EXE, OTHER_EXE)
        first.expire()
        fx.registry.create(WS, EXE, OTHER_EXE)
        self.assertEqual(fx.registry.active(WS), 2)

    def test_created_log(self) -> None:
        """
        C{relay.created} carries the ids and the TTL, never the ticket.
        """
        grant = self.fx.registry.create(WS, EXE, OTHER_EXE, 42)
        [created] = self.log.named("relay.created")
        self.assertEqual(
            {k: created[k] for k in ("workspace_id", "source_exe_id", "dest_exe_id", "ttl_s")},
            {"workspace_id": WS, "source_exe_id": EXE, "dest_exe_id": OTHER_EXE, "ttl_s": 42.0},
        )
        self.assertNotIn(grant.ticket, self.log.text())


class CreateRelayTests(SynchronousTestCase):
    """
    L{create_relay}: the checks of §4.6 shared by the route and the SDK's relay creator.
    """

    def setUp(self) -> None:
        self.fx = RelayFixture()
        self.store = FakeStore(self.fx.clock)
        for exe_id in (EXE, OTHER_EXE, THIRD_EXE):
            record = ExecutorRecord(exe_id, "usr", "", "", "", datetime.fromtimestamp(NOW, UTC), None)
            settled(self.store.create_executor(record, "hash"))
        for exe_id in (EXE, OTHER_EXE):
            settled(self.store.bind_workspace_executor(WS, exe_id, exe_id[-4:], "", False))

    def create(self, *ids: str, ttl_seconds: int = 0) -> Deferred[RelayGrant]:
        """
        Run L{create_relay} for C{(workspace_id, source_exe_id, dest_exe_id)}.
        """
        wid, source, dest = ids
        return Deferred.fromCoroutine(
            create_relay(self.fx.registry, self.store, wid, source, dest, ttl_seconds=ttl_seconds)
        )

    def refusal(self, d: Deferred[RelayGrant]) -> tuple[int, str]:
        """
        The status and message of a refused create.
        """
        failure = self.failureResultOf(d, RelayRefused)
        error = cast(RelayRefused, failure.value)
        return error.status, error.message

    def test_created(self) -> None:
        """
        Two bound executors: a grant.
        """
        grant = self.successResultOf(self.create(WS, EXE, OTHER_EXE, ttl_seconds=60))
        self.assertRegex(grant.ticket, TICKET_PATTERN)
        self.assertEqual(self.store.calls[-2:], ["owns_executor", "owns_executor"])

    def test_ids_required(self) -> None:
        """
        Any empty id → 400, before any store call.
        """
        calls = len(self.store.calls)
        for ids in (("", EXE, OTHER_EXE), (WS, "", OTHER_EXE), (WS, EXE, "")):
            self.assertEqual(
                self.refusal(self.create(*ids)),
                (400, "workspace_id, source_exe_id, dest_exe_id required"),
            )
        self.assertEqual(len(self.store.calls), calls)

    def test_not_in_workspace(self) -> None:
        """
        403 names the first executor not bound to the workspace (source first).
        """
        self.assertEqual(
            self.refusal(self.create(WS, THIRD_EXE, OTHER_EXE)),
            (403, f"executor not in workspace: {THIRD_EXE}"),
        )
        self.assertEqual(
            self.refusal(self.create(WS, EXE, THIRD_EXE)),
            (403, f"executor not in workspace: {THIRD_EXE}"),
        )
        self.assertEqual(
            self.refusal(self.create("ws_other", EXE, OTHER_EXE)),
            (403, f"executor not in workspace: {EXE}"),
        )

    def test_store_down(self) -> None:
        """
        A store failure → 500 C{ownership check failed}, the store error as the cause.
        """
        self.store.failure = StoreUnavailable("down")
        d = self.create(WS, EXE, OTHER_EXE)
        failure = self.failureResultOf(d, RelayRefused)
        self.assertEqual(cast(RelayRefused, failure.value).status, 500)
        self.assertIsInstance(failure.value.__cause__, StoreUnavailable)

    def test_deadline(self) -> None:
        """
        Both checks together get 5 s.
        """
        self.store.stalled = True
        d = self.create(WS, EXE, OTHER_EXE)
        self.fx.clock.advance(4.999)
        self.assertNoResult(d)
        self.fx.clock.advance(0.001)
        self.assertEqual(self.refusal(d), (500, "ownership check failed"))

    def test_cap(self) -> None:
        """
        The cap is checked after the ownership checks.
        """
        fx = RelayFixture(max_per_workspace=1)
        self.fx = fx
        self.store._clock = fx.clock
        self.successResultOf(self.create(WS, EXE, OTHER_EXE))
        self.assertEqual(
            self.refusal(self.create(WS, EXE, OTHER_EXE)),
            (429, "relay: workspace concurrent relay cap reached"),
        )


# -------------------------------------------------------------------------------------------------
# The routes, over the gateway's own site


def bearer_header(token: str) -> list[tuple[str, str]]:
    """
    An C{Authorization: Bearer} header.
    """
    return [("Authorization", f"Bearer {token}")]


class RelayRoutes:
    """
    A gateway's routes with the relay enabled (or not), two bound executors, and raw connections.
    """

    def __init__(self, case: SynchronousTestCase, env: dict[str, str] | None = None) -> None:
        self.gw = RouteHarness(case, RELAY_ENV if env is None else env)
        for exe_id in (EXE, OTHER_EXE):
            self.gw.add_executor(exe_id)
            self.gw.bind(exe_id, WS, name=f"box-{exe_id[-4:]}")

    @property
    def clock(self) -> MemoryReactorClock:
        """
        The gateway's clock.
        """
        return self.gw.clock

    def wire(self) -> Wire:
        """
        A new client connection.
        """
        return Wire(self.gw.site)

    def create(self, **fields: object) -> Reply:
        """
        C{POST /api/exec-gateway/relay/create} with the shared secret.
        """
        body = {"workspace_id": WS, "source_exe_id": EXE, "dest_exe_id": OTHER_EXE, **fields}
        return self.gw.fetch(
            "POST",
            "/api/exec-gateway/relay/create",
            [("Authorization", f"Bearer {SHARED_SECRET}")],
            json_bytes(body),
        )

    def ticket(self, **fields: object) -> str:
        """
        A new relay's ticket.
        """
        reply = self.create(**fields)
        assert reply.status == 201, reply
        ticket: str = reply.json["ticket"]
        return ticket

    def put(
        self,
        ticket: str,
        length: int | None = None,
        *,
        chunked: bool = False,
        expect: bool = False,
        body: bytes = b"",
    ) -> Wire:
        """
        Start a PUT of C{ticket} (its head, and C{body} right behind it).
        """
        wire = self.wire()
        request = head(
            "PUT",
            f"/relay/{ticket}",
            bearer_header(ticket),
            length=length,
            chunked=chunked,
            expect=expect,
        )
        wire.send(request + body)
        return wire

    def get(self, ticket: str) -> Wire:
        """
        Start a GET of C{ticket}.
        """
        wire = self.wire()
        wire.send(head("GET", f"/relay/{ticket}", bearer_header(ticket)))
        return wire


class RelayRouteTests(ReplyAssertions):
    """
    C{/api/exec-gateway/relay/create}, C{PUT /relay/<ticket>} and C{GET /relay/<ticket>} (§4.6, §4.7).
    """

    def setUp(self) -> None:
        self.r = RelayRoutes(self)
        self.log = LogCapture(self)

    def assertFinal(self, wire: Wire, status: int, body: bytes) -> Answer:
        """
        C{wire} got a complete final response C{status} with exactly C{body}.
        """
        final = wire.final
        assert final is not None, wire.transport.value()
        self.assertEqual((final.status, final.body, final.complete), (status, body, True))
        return final

    def assertPairing(self, wire: Wire, status: int, value: dict[str, object]) -> None:
        """
        C{wire} got a pairing response: JSON without a newline, with a length.
        """
        final = self.assertFinal(wire, status, body_of(value))
        self.assertEqual(final.header("Content-Type"), "application/json")
        self.assertEqual(final.header("Content-Length"), str(len(final.body)))

    # -- disabled

    def test_disabled(self) -> None:
        """
        Relay disabled: PUT and GET → 404 text; create → 503 JSON (after the secret check).
        """
        gw = RouteHarness(self)
        message = "relay disabled (no public HTTPS base URL configured)"
        for method in ("PUT", "GET"):
            reply = gw.fetch(
                method, "/relay/rly_x", bearer("rly_x"), b"data" if method == "PUT" else None
            )
            self.assertText(reply, 404, message)
        secret = [("Authorization", f"Bearer {SHARED_SECRET}")]
        reply = gw.fetch("POST", "/api/exec-gateway/relay/create", secret, b"{}")
        self.assertJSONError(reply, 503, "relay not enabled (PublicHTTPSBaseURL unset)")
        self.assertText(
            gw.fetch("POST", "/api/exec-gateway/relay/create", (), b"{}"), 401, "unauthorized"
        )

    # -- create

    def test_create(self) -> None:
        """
        201 with the ticket, both URLs on the public base (trailing C{/} removed) and C{expires_at}.
        """
        reply = self.r.create(ttl_seconds=90)
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header("Content-Type"), "application/json")
        self.assertTrue(reply.body.endswith(b"}\n"))
        value = reply.json
        self.assertEqual(list(value), ["ticket", "upload_url", "download_url", "expires_at"])
        self.assertRegex(value["ticket"], TICKET_PATTERN)
        self.assertEqual(value["upload_url"], f"{BASE}/relay/{value['ticket']}")
        self.assertEqual(value["download_url"], value["upload_url"])
        self.assertEqual(value["expires_at"], "2026-05-17T06:41:30Z")

    def test_create_auth(self) -> None:
        """
        Without the shared secret → 401 text.
        """
        for headers in (
            [],
            [("Authorization", "Bearer nope")],
            [("Authorization", f"bearer {SHARED_SECRET}")],
        ):
            reply = self.r.gw.fetch("POST", "/api/exec-gateway/relay/create", headers, b"{}")
            self.assertText(reply, 401, "unauthorized")

    def test_create_invalid(self) -> None:
        """
        Invalid JSON and wrong types → 400 C{invalid JSON}; missing ids → 400; oversized → 413.
        """
        secret = [("Authorization", f"Bearer {SHARED_SECRET}")]
        bodies = [*NOT_JSON_OBJECTS, b'{"ttl_seconds":"5"}', b'{"max_bytes":1.5}', b'{"workspace_id":1}']
        for body in bodies:
            reply = self.r.gw.fetch("POST", "/api/exec-gateway/relay/create", secret, body)
            self.assertJSONError(reply, 400, "invalid JSON")
        reply = self.r.gw.fetch(
            "POST", "/api/exec-gateway/relay/create", secret, b'{"workspace_id":"ws_1"}'
        )
        self.assertJSONError(reply, 400, "workspace_id, source_exe_id, dest_exe_id required")
        big = b'{"pad":"' + b"x" * (1 << 20) + b'"}'
        reply = self.r.gw.fetch("POST", "/api/exec-gateway/relay/create", secret, big)
        self.assertJSONError(reply, 413, "request body too large")

    def test_create_refusals(self) -> None:
        """
        An executor not in the workspace → 403 naming it; store down → 500 (logged); cap → 429.
        """
        self.assertJSONError(
            self.r.create(dest_exe_id=THIRD_EXE), 403, f"executor not in workspace: {THIRD_EXE}"
        )
        self.r.gw.store.failure = StoreUnavailable("down")
        self.assertJSONError(self.r.create(), 500, "ownership check failed")
        self.assertEqual(len(self.log.named("store.error")), 1)
        self.r.gw.store.failure = None
        for _ in range(16):
            self.assertEqual(self.r.create().status, 201)
        self.assertJSONError(self.r.create(), 429, "relay: workspace concurrent relay cap reached")

    # -- pre-checks

    def test_bearer(self) -> None:
        """
        Only C{Bearer <the URL's ticket>} passes; an unknown ticket → 410; HEAD → 405.
        """
        ticket = self.r.ticket()
        other = self.r.ticket()
        refused = [
            [("Authorization", f"bearer {ticket}")],
            [("Authorization", "Bearer ")],
            [("Authorization", "")],
            [("Authorization", f"Token {ticket}")],
            [],
            [("Authorization", f"Bearer {other}")],
        ]
        for method in ("PUT", "GET"):
            for headers in refused:
                body = b"x" if method == "PUT" else None
                self.assertText(
                    self.r.gw.fetch(method, f"/relay/{ticket}", headers, body), 401, "unauthorized"
                )
        unknown = new_ticket()
        for method in ("PUT", "GET"):
            reply = self.r.gw.fetch(method, f"/relay/{unknown}", bearer(unknown))
            self.assertText(reply, 410, "ticket not found or expired")
        wire = self.r.wire()
        wire.send(head("HEAD", f"/relay/{ticket}", bearer_header(ticket)))
        self.assertEqual([a.status for a in wire.answers], [405])
        self.assertIsNotNone(self.r.gw.routes.relays and self.r.gw.routes.relays.find(ticket))

    # -- transfers

    def test_put_first(self) -> None:
        """
        128 KiB, PUT first with C{Expect: 100-continue}: 100 at once, the body not read while waiting,
        then streamed to the GET; the PUT gets its 200 after the GET's final chunk.
        """
        ticket = self.r.ticket()
        payload = bytes(range(256)) * 512
        put = self.r.put(ticket, len(payload), expect=True, body=payload[:1000])
        self.assertEqual([a.status for a in put.answers], [100])
        self.assertFalse(put.reading)
        get = self.r.get(ticket)
        self.assertTrue(put.reading)
        for offset in range(1000, len(payload), 7000):
            put.send(payload[offset : offset + 7000])
        response = get.final
        assert response is not None
        self.assertEqual((response.status, response.body, response.complete), (200, payload, True))
        self.assertEqual(response.header("Content-Type"), "application/octet-stream")
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")
        self.assertPairing(put, 200, {"bytes": 131072, "status": "ok"})
        self.assertIsNone(put.final and put.final.header("Connection"))
        self.assertText(
            self.r.gw.fetch("PUT", f"/relay/{ticket}", bearer(ticket), b"x"),
            410,
            "ticket not found or expired",
        )

    def test_get_first(self) -> None:
        """
        GET first, then a chunked PUT: byte-equal.
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        self.assertEqual(get.transport.value(), b"")
        put = self.r.put(ticket, chunked=True)
        put.send(chunk(b"hello ") + chunk(b"world"))
        put.send(chunk(b""))
        self.assertFinal(get, 200, b"hello world")
        self.assertPairing(put, 200, {"bytes": 11, "status": "ok"})

    def test_empty_put(self) -> None:
        """
        A PUT without a body (not streamed) pairs too: an empty complete download.
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        put = self.r.put(ticket, 0)
        self.assertFinal(get, 200, b"")
        self.assertPairing(put, 200, {"bytes": 0, "status": "ok"})

    def test_second_claims(self) -> None:
        """
        A second PUT and a second GET → 423 with the exact bodies; the 423 PUT's connection closes.
        """
        ticket = self.r.ticket()
        self.r.put(ticket, 10)
        self.r.get(ticket)
        second_put = self.r.put(ticket, 10, body=b"0123456789")
        second_get = self.r.get(ticket)
        self.assertPairing(second_put, 423, {"error": "PUT side already claimed"})
        self.assertPairing(second_get, 423, {"error": "GET side already claimed"})
        final = second_put.final
        assert final is not None
        self.assertEqual(final.header("Connection"), "close")

    def test_expiry(self) -> None:
        """
        A waiting PUT and a waiting GET → 408 at expiry (GET: JSON, no octet stream); then 410.
        """
        put_ticket = self.r.ticket(ttl_seconds=30)
        get_ticket = self.r.ticket(ttl_seconds=30)
        put = self.r.put(put_ticket, 10, body=b"0123456789")
        get = self.r.get(get_ticket)
        self.r.clock.advance(29.9)
        self.assertIsNone(put.final)
        self.assertIsNone(get.final)
        self.r.clock.advance(0.1)
        self.assertPairing(put, 408, {"error": "timed out waiting for GET side"})
        self.assertPairing(get, 408, {"error": "timed out waiting for PUT side"})
        for ticket in (put_ticket, get_ticket):
            self.assertText(
                self.r.gw.fetch("GET", f"/relay/{ticket}", bearer(ticket)),
                410,
                "ticket not found or expired",
            )

    def test_idle_timeout_suspended(self) -> None:
        """
        The channel's 120 s idle timeout does not cut a PUT waiting longer for its GET.
        """
        ticket = self.r.ticket(ttl_seconds=300)
        put = self.r.put(ticket, 10)
        self.r.clock.advance(299)
        self.assertFalse(put.transport.disconnecting)
        self.r.clock.advance(1)
        self.assertPairing(put, 408, {"error": "timed out waiting for GET side"})

    def test_max_bytes(self) -> None:
        """
        C{max_bytes} 1000 and a 2000-byte PUT: the GET gets 1000 bytes and no final chunk (aborted),
        the PUT 500 with the counts.
        """
        ticket = self.r.ticket(max_bytes=1000)
        get = self.r.get(ticket)
        put = self.r.put(ticket, 2000, body=b"z" * 2000)
        response = get.final
        assert response is not None
        self.assertEqual((response.status, response.body, response.complete), (200, b"z" * 1000, False))
        self.assertTrue(get.transport.disconnecting)
        error = "relay: payload exceeded MaxBytes (2000 > 1000)"
        self.assertPairing(put, 500, {"bytes": 1000, "error": error})
        # A client that does not read what was flushed is cut after the grace.
        self.r.clock.advance(ABORT_GRACE - 0.01)
        self.assertFalse(get.transport.aborted)
        self.r.clock.advance(0.01)
        self.assertTrue(get.transport.aborted)

    def test_get_disconnect(self) -> None:
        """
        The GET client goes away mid-stream: the PUT gets 500 with the bytes written.
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        put = self.r.put(ticket, 100, body=b"a" * 40)
        get.lose()
        self.assertPairing(put, 500, {"bytes": 40, "error": "relay: download side disconnected"})

    def test_put_disconnect(self) -> None:
        """
        The PUT client goes away mid-stream: the GET is aborted.
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        put = self.r.put(ticket, 100, body=b"a" * 40)
        put.lose()
        self.assertTrue(get.transport.disconnecting)
        response = get.final
        assert response is not None
        self.assertEqual((response.body, response.complete), (b"a" * 40, False))
        # The client read it all and closed: nothing is left to cut.
        get.lose()
        self.r.clock.advance(ABORT_GRACE)
        self.assertFalse(get.transport.aborted)

    def test_waiting_disconnect(self) -> None:
        """
        A waiting GET's connection lost: the ticket is finished and removed.
        """
        ticket = self.r.ticket()
        self.r.get(ticket).lose()
        self.assertText(
            self.r.gw.fetch("PUT", f"/relay/{ticket}", bearer(ticket), b"x"),
            410,
            "ticket not found or expired",
        )
        [finished] = self.log.named("relay.finished")
        self.assertEqual(finished["outcome"], "abandoned")

    def test_backpressure(self) -> None:
        """
        While the GET's transport is congested the PUT's socket is not read and nothing more is
        written to the GET; draining resumes both, in order.
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        put = self.r.put(ticket, 300, body=b"a" * 100)
        get.channel.pauseProducing()
        self.assertFalse(put.reading)
        put.send(b"b" * 100)
        response = get.final
        assert response is not None
        self.assertEqual(response.body, b"a" * 100)
        get.channel.resumeProducing()
        self.assertTrue(put.reading)
        put.send(b"c" * 100)
        self.assertFinal(get, 200, b"a" * 100 + b"b" * 100 + b"c" * 100)
        self.assertPairing(put, 200, {"bytes": 300, "status": "ok"})

    def test_keep_alive(self) -> None:
        """
        After a completed streamed PUT its connection serves the next request.
        """
        ticket = self.r.ticket()
        self.r.get(ticket)
        put = self.r.put(ticket, 3, body=b"abc" + b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        statuses = [(a.status, a.body) for a in put.answers]
        self.assertEqual(statuses, [(200, b'{"bytes":3,"status":"ok"}'), (200, b"ok")])
        self.assertFalse(put.transport.disconnecting)

    def test_end_while_paused(self) -> None:
        """
        A body that ends while its reading is paused (the download congested mid-read) is finished
        once the download drains, and the connection then serves the request pipelined behind it.
        """
        ticket = self.r.ticket()
        get = Wire(self.r.gw.site, CongestingTransport)
        get.send(head("GET", f"/relay/{ticket}", bearer_header(ticket)))
        healthz = b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        put = self.r.put(ticket, chunked=True)
        put.send(chunk(b"a" * 10) + chunk(b"b" * 10) + chunk(b"") + healthz)
        self.assertFalse(put.reading)
        self.assertEqual(put.answers, [])
        get.channel.resumeProducing()
        get.channel.resumeProducing()
        self.assertEqual(
            [(a.status, a.body) for a in put.answers][-2:],
            [(200, b'{"bytes":20,"status":"ok"}'), (200, b"ok")],
        )
        self.assertTrue(put.reading)
        self.assertFinal(get, 200, b"a" * 10 + b"b" * 10)

    def test_buffer_sizes(self) -> None:
        """
        A relay reads its upload's socket in larger pieces and lets its download's transport buffer
        more than Twisted's 64 KiB default before pausing the upload (still ≤ 2 MiB together).
        """
        ticket = self.r.ticket()
        get = self.r.get(ticket)
        put = self.r.put(ticket, 10, body=b"x")
        self.assertEqual(put.transport.bufferSize, UPLOAD_READ_BYTES)
        self.assertEqual(get.transport.bufferSize, DOWNLOAD_BUFFER_BYTES)
        self.assertLessEqual(2 * UPLOAD_READ_BYTES + DOWNLOAD_BUFFER_BYTES, 2 << 20)

    def test_idle_timeout_restored(self) -> None:
        """
        After a streamed PUT the connection's idle timeout applies again.
        """
        ticket = self.r.ticket()
        self.r.get(ticket)
        put = self.r.put(ticket, 3, body=b"abc")
        self.r.clock.advance(119)
        self.assertFalse(put.transport.disconnecting)
        self.r.clock.advance(1)
        self.assertTrue(put.transport.disconnecting)

    def test_linger(self) -> None:
        """
        After an answer that did not wait for the body, the connection's write side is shut, what the
        client still sends is read and dropped, and the connection is cut after the linger time.
        """
        ticket = self.r.ticket()
        self.r.put(ticket, 10)
        second = self.r.put(ticket, 1 << 30, body=b"x" * 100)
        self.assertTrue(second.transport.write_closed)
        self.assertTrue(second.reading)
        answered = second.transport.value()
        second.send(b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n" + b"y" * 5000)
        self.assertEqual(second.transport.value(), answered)
        self.r.clock.advance(LINGER_TIMEOUT - 0.01)
        self.assertFalse(second.transport.aborted)
        self.r.clock.advance(0.01)
        self.assertTrue(second.transport.aborted)

    def test_linger_client_closes(self) -> None:
        """
        A client that closes during the linger ends it; nothing is left scheduled.
        """
        ticket = self.r.ticket()
        third = self.r.put(new_ticket(), 10, body=b"x")
        third.lose()
        self.r.put(ticket, 10)
        second = self.r.put(ticket, 10)
        second.lose()
        self.r.clock.advance(LINGER_TIMEOUT)
        self.assertFalse(second.transport.aborted)

    def test_other_routes_not_streamed(self) -> None:
        """
        A PUT elsewhere is handled as before: its body is read whole first and the connection kept.
        """
        wire = self.r.wire()
        wire.send(head("PUT", "/healthz", length=5) + b"abcde")
        final = wire.final
        assert final is not None
        self.assertEqual(final.status, 405)
        self.assertIsNone(final.header("Connection"))
        self.assertTrue(wire.reading)

    def test_metrics(self) -> None:
        """
        C{/metrics} shows active relays and, after a transfer, its outcome and bytes.
        """
        ticket = self.r.ticket()
        self.assertIn("\ncxg_exec_relays_active 1.0\n", self.r.gw.fetch("GET", "/metrics").body.decode())
        self.r.get(ticket)
        self.r.put(ticket, 5, body=b"12345")
        text = self.r.gw.fetch("GET", "/metrics").body.decode()
        self.assertIn("\ncxg_exec_relays_active 0.0\n", text)
        self.assertIn('\ncxg_exec_relays_total{outcome="ok"} 1.0\n', text)
        self.assertIn("\ncxg_exec_relay_bytes_total 5.0\n", text)

    def test_ticket_never_logged(self) -> None:
        """
        No log line (access log included) carries a ticket.
        """
        ticket = self.r.ticket()
        self.r.get(ticket)
        self.r.put(ticket, 1, body=b"x")
        self.assertNotIn(ticket, self.log.text())
