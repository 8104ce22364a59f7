"""
Tests for L{codexgw.executor.connection} and L{codexgw.testing.fakelink}: the L{IRelayLink} contract
and the executor's Autobahn client.

One interface-test mixin, L{RelayLinkInterfaceTests}, runs against both implementations:
 - L{FakeRelayLink}, the in-memory twin the multiplexer tests use;
 - L{RelayLink}, the real Autobahn client, linked through a L{twisted.test.iosim} pump to an Autobahn
   server protocol, with every timer on a L{MemoryReactorClock} (no sockets, no real time).

L{RelayLinkTests} and L{DialTests} add what only the real client has: its handshake, what it reports
to the multiplexer, and L{dial}.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.executor.connection import (
    MAX_INCOMING_BYTES,
    DialFailed,
    RelayLink,
    RelayLinkFactory,
    buffered_bytes,
    client_endpoint,
    dial,
)
from codexgw.executor.multiplexer import IRelayLink, IRelayLinkReceiver
from codexgw.testing.fakelink import FakeRelayLink

if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object

URL = "ws://127.0.0.1:6060/codex-exec/exe_1?token=t.i.c"
SAMPLE_FRAMES = [
    b"",
    bytes(range(256)),
    relayframe.resume_frame("s1"),
    relayframe.data_frame("s1", 7, b"x" * 70_000),
]


@implementer(IRelayLinkReceiver)
class RecordingLinkReceiver:
    """
    Records what a link reports, as C{(kind, *args)} tuples.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def link_opened(self, link: IRelayLink) -> None:
        """
        Record the open.
        """
        self.events.append(("opened", link))

    def frame_received(self, frame: bytes) -> None:
        """
        Record a frame.
        """
        self.events.append(("frame", frame))

    def write_drained(self) -> None:
        """
        Record a drain.
        """
        self.events.append(("drained",))

    def link_lost(self, code: int, reason: str) -> None:
        """
        Record the end.
        """
        self.events.append(("lost", code, reason))

    def kinds(self) -> list[str]:
        """
        The kinds of the events, in order.
        """
        return [event[0] for event in self.events]


class RecordingServer(WebSocketServerProtocol):
    """
    The gateway's end: an Autobahn server protocol that records the handshake and what it gets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.messages: list[tuple[bool, bytes]] = []
        self.closes: list[tuple[bool, int | None, str | None]] = []
        self.deny: int | None = None

    def onConnect(self, request: Any) -> None:
        """
        Record the handshake request; refuse it when C{deny} is set.
        """
        self.request = request
        if self.deny is not None:
            raise ConnectionDeny(self.deny, "unauthorized")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Record a message.
        """
        self.messages.append((isBinary, payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Record the end.
        """
        self.closes.append((wasClean, code, reason))


class ClientTransport(iosim.FakeTransport):
    """
    The executor's side of an in-memory connection, behaving like a TCP transport where the link
    depends on it: while the far end does not read, written bytes stay here, and once more than
    C{bufferSize} wait the registered streaming producer is paused; it is resumed when they were
    all written.
    """

    bufferSize = 1024

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol, isServer=False)
        self.remote_reading = True
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        """
        Keep C{data}; pause the producer when too much waits for a far end that does not read.
        """
        super().write(data)
        waiting = sum(len(chunk) for chunk in self.stream)
        backed_up = waiting > self.bufferSize and not self.remote_reading
        if backed_up and self.producer is not None and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> Any:
        """
        Hand the pump what was written, if the far end reads; resume the producer then.
        """
        if not self.remote_reading:
            return None
        data = super().getOutBuffer()
        if self.producer_paused:
            self.producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


def server_factory(clock: Any) -> WebSocketServerFactory:
    """
    A gateway-side factory that schedules nothing of its own.
    """
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = RecordingServer
    factory.setProtocolOptions(
        openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0, maxMessagePayloadSize=0
    )
    return factory


def recording_server(clock: Any) -> RecordingServer:
    """
    One gateway-side protocol, as Twisted would build it for an accepted connection.
    """
    protocol = server_factory(clock).buildProtocol(iosim.FakeAddress())
    assert isinstance(protocol, RecordingServer)
    return protocol


class LinkHarness(abc.ABC):
    """
    One link under test, with the far end played by the test.
    """

    link: IRelayLink

    @abc.abstractmethod
    def settle(self) -> None:
        """
        Let everything in flight arrive.
        """

    @abc.abstractmethod
    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        The C{(is_binary, payload)} of every message the far end has read.
        """

    @abc.abstractmethod
    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        The code and reason of the close frame the far end got, if any.
        """

    @abc.abstractmethod
    def stop_remote_reading(self) -> None:
        """
        The far end stops reading.
        """

    @abc.abstractmethod
    def remote_catches_up(self) -> None:
        """
        The far end reads everything that waited.
        """


class FakeHarness(LinkHarness):
    """
    L{FakeRelayLink}.
    """

    def __init__(self) -> None:
        self.receiver = RecordingLinkReceiver()
        self.fake = FakeRelayLink(self.receiver)
        self.link = self.fake
        self._read_upto: int | None = None

    def settle(self) -> None:
        """
        See L{LinkHarness.settle}.
        """

    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        See L{LinkHarness.remote_messages}.
        """
        return [(True, frame) for frame in self.fake.sent[: self._read_upto]]

    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        See L{LinkHarness.remote_saw_close}.
        """
        return self.fake.closed_with

    def stop_remote_reading(self) -> None:
        """
        See L{LinkHarness.stop_remote_reading}.
        """
        self.fake.write_blocked = True
        self._read_upto = len(self.fake.sent)

    def remote_catches_up(self) -> None:
        """
        See L{LinkHarness.remote_catches_up}.
        """
        self._read_upto = None
        self.fake.drain()


class RealHarness(LinkHarness):
    """
    A L{RelayLink} from a L{RelayLinkFactory} on a L{MemoryReactorClock}, linked to a
    L{RecordingServer} through an iosim pump, handshake completed.
    """

    def __init__(self, open_now: bool = True) -> None:
        self.clock = MemoryReactorClock()
        self.receiver = RecordingLinkReceiver()
        self.factory = RelayLinkFactory(URL, self.receiver, "ua/1", self.clock)
        client = self.factory.buildProtocol(None)
        self.server = recording_server(self.clock)
        self.client_io = ClientTransport(client)
        self.server_io = iosim.FakeTransport(self.server, isServer=True)
        self.pump = iosim.connect(
            self.server, self.server_io, client, self.client_io, greet=open_now, clock=self.clock
        )
        self.real = client
        self.link = client

    def settle(self) -> None:
        """
        See L{LinkHarness.settle}.
        """
        self.pump.flush()

    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        See L{LinkHarness.remote_messages}.
        """
        return list(self.server.messages)

    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        See L{LinkHarness.remote_saw_close}.
        """
        for clean, code, reason in self.server.closes:
            if clean and code is not None:
                return code, reason or ""
        return None

    def stop_remote_reading(self) -> None:
        """
        See L{LinkHarness.stop_remote_reading}.
        """
        self.client_io.remote_reading = False

    def remote_catches_up(self) -> None:
        """
        See L{LinkHarness.remote_catches_up}.
        """
        self.client_io.remote_reading = True
        self.pump.flush()


class RelayLinkInterfaceTests(_MixinBase):
    """
    The L{IRelayLink} contract; subclasses say which implementation runs it.
    """

    def harness(self) -> LinkHarness:
        """
        An open link under test.
        """
        raise NotImplementedError

    def test_provides(self) -> None:
        """
        The link provides L{IRelayLink} completely, with nothing pending.
        """
        h = self.harness()
        self.assertTrue(verifyObject(IRelayLink, h.link))
        self.assertEqual(h.link.pending_bytes, 0)

    def test_send_frame(self) -> None:
        """
        Each C{send_frame} reaches the far end as exactly one binary message with the same bytes, in
        order.
        """
        h = self.harness()
        for frame in SAMPLE_FRAMES:
            h.link.send_frame(frame)
        h.settle()
        self.assertEqual(h.remote_messages(), [(True, frame) for frame in SAMPLE_FRAMES])

    def test_close(self) -> None:
        """
        C{close} sends the far end the code and reason (1001 too); only the first close counts, and
        frames sent afterwards are dropped.
        """
        h = self.harness()
        h.link.close(1001, "executor shutting down")
        h.link.close(1000, "again")
        h.link.send_frame(b"late")
        h.settle()
        self.assertEqual(h.remote_saw_close(), (1001, "executor shutting down"))
        self.assertEqual(h.remote_messages(), [])

    def test_pending_bytes(self) -> None:
        """
        While the far end does not read, sent bytes are counted as pending; once it has read them
        all, nothing is.
        """
        h = self.harness()
        h.stop_remote_reading()
        for _ in range(4):
            h.link.send_frame(b"y" * 2000)
        self.assertGreater(h.link.pending_bytes, 0)
        h.remote_catches_up()
        self.assertEqual(h.link.pending_bytes, 0)
        self.assertEqual(len(h.remote_messages()), 4)


class FakeLinkInterfaceTests(RelayLinkInterfaceTests, SynchronousTestCase):
    """
    The contract, on L{FakeRelayLink}.
    """

    def harness(self) -> LinkHarness:
        """
        A fake link.
        """
        return FakeHarness()


class RealLinkInterfaceTests(RelayLinkInterfaceTests, SynchronousTestCase):
    """
    The contract, on the real Autobahn client.
    """

    def harness(self) -> LinkHarness:
        """
        A real link over iosim.
        """
        return RealHarness()


class RelayLinkTests(SynchronousTestCase):
    """
    What only the real client has.
    """

    def test_handshake(self) -> None:
        """
        The handshake asks for the ticket URL's path and query with the executor's User-Agent, offers
        no permessage-deflate, and reports the link to the receiver once.
        """
        h = RealHarness()
        request = h.server.request
        self.assertEqual((request.path, request.params), ("/codex-exec/exe_1", {"token": ["t.i.c"]}))
        self.assertEqual(request.headers["user-agent"], "ua/1")
        self.assertNotIn("sec-websocket-extensions", request.headers)
        self.assertEqual(h.receiver.events, [("opened", h.link)])
        self.assertIsNotNone(h.real.opened_at)

    def test_options(self) -> None:
        """
        Incoming messages up to 64 MiB + 64 KiB, pings every 30 s, no deflate offers.
        """
        factory = RelayLinkFactory(URL, RecordingLinkReceiver(), "ua", MemoryReactorClock())
        self.assertEqual(
            (factory.maxMessagePayloadSize, factory.maxFramePayloadSize), (MAX_INCOMING_BYTES,) * 2
        )
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (30.0, 30.0))
        self.assertEqual(factory.perMessageCompressionOffers, [])
        self.assertFalse(factory.failByDrop)

    def test_frames_and_text(self) -> None:
        """
        Binary messages reach the receiver byte for byte; text messages are dropped.
        """
        h = RealHarness()
        for frame in SAMPLE_FRAMES:
            h.server.sendMessage(frame, isBinary=True)
        h.server.sendMessage(b"text", isBinary=False)
        h.settle()
        self.assertEqual([e[1] for e in h.receiver.events if e[0] == "frame"], SAMPLE_FRAMES)
        self.assertNotIn(b"text", [e[1] for e in h.receiver.events if e[0] == "frame"])

    def test_remote_close(self) -> None:
        """
        A close from the gateway reaches the receiver once with its code and reason, and fires
        C{closed}.
        """
        h = RealHarness()
        h.server.sendClose(1000, "inbound closed")
        h.settle()
        self.assertEqual(h.receiver.events[-1], ("lost", 1000, "inbound closed"))
        self.assertEqual(self.successResultOf(h.real.closed), (1000, "inbound closed"))
        self.assertEqual(h.receiver.kinds().count("lost"), 1)

    def test_drop(self) -> None:
        """
        A connection that just drops is reported as 1006.
        """
        h = RealHarness()
        h.server_io.loseConnection()
        h.settle()
        self.assertEqual(h.receiver.events[-1][:2], ("lost", 1006))

    def test_drained_reported(self) -> None:
        """
        When the transport resumes the link after its buffer filled, the receiver hears of it.
        """
        h = RealHarness()
        h.stop_remote_reading()
        h.link.send_frame(b"z" * 5000)
        self.assertNotIn("drained", h.receiver.kinds())
        h.remote_catches_up()
        self.assertIn("drained", h.receiver.kinds())

    def test_exact_buffer(self) -> None:
        """
        On a transport with Twisted's C{FileDescriptor} buffer (under a TLS layer or not), pending
        bytes are read from it exactly; anything else has no exact count.
        """

        class Tcp:
            dataBuffer = b"x" * 100
            offset = 30
            _tempDataLen = 5

        class Tls:
            transport = Tcp()

        self.assertEqual((buffered_bytes(Tcp()), buffered_bytes(Tls())), (75, 75))
        self.assertIsNone(buffered_bytes(object()))
        self.assertIsNone(buffered_bytes(None))


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    An endpoint that "connects" a client factory to a server protocol through an iosim pump.
    """

    def __init__(self, clock: MemoryReactorClock, server: Protocol | None, refuse: bool = False) -> None:
        self.clock = clock
        self.server = server
        self.refuse = refuse
        self.client: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Build the client and pump it to the server (or refuse).
        """
        if self.refuse or self.server is None:
            return fail(ConnectionRefusedError("refused"))
        self.client = factory.buildProtocol(iosim.FakeAddress())
        self.pump = iosim.connect(
            self.server,
            iosim.FakeTransport(self.server, isServer=True),
            self.client,
            iosim.FakeTransport(self.client, isServer=False),
            clock=self.clock,
        )
        return succeed(self.client)


class DialTests(SynchronousTestCase):
    """
    L{dial} and L{client_endpoint}.
    """

    def dial(self, endpoint: MemoryEndpoint) -> Deferred[RelayLink]:
        """
        Dial L{URL} through C{endpoint}.
        """
        return Deferred.fromCoroutine(
            dial(endpoint.clock, URL, RecordingLinkReceiver(), "ua", endpoint=endpoint)
        )

    def test_success(self) -> None:
        """
        A completed handshake returns the open link.
        """
        clock = MemoryReactorClock()
        server = recording_server(clock)
        link = self.successResultOf(self.dial(MemoryEndpoint(clock, server)))
        self.assertIsInstance(link, RelayLink)
        self.assertIsNotNone(link.opened_at)

    def test_refused_connection(self) -> None:
        """
        A refused TCP connection is a L{DialFailed}.
        """
        failure = self.failureResultOf(self.dial(MemoryEndpoint(MemoryReactorClock(), None)), DialFailed)
        self.assertIn("connect:", failure.getErrorMessage())

    def test_refused_upgrade(self) -> None:
        """
        A gateway that refuses the upgrade (401) is a L{DialFailed}.
        """
        clock = MemoryReactorClock()
        server = recording_server(clock)
        server.deny = 401
        failure = self.failureResultOf(self.dial(MemoryEndpoint(clock, server)), DialFailed)
        self.assertIn("handshake", failure.getErrorMessage())

    def test_silent_server(self) -> None:
        """
        A server that never answers the handshake is given up after 10 s, and the connection is
        dropped.
        """
        clock = MemoryReactorClock()
        endpoint = MemoryEndpoint(clock, Protocol())
        d = self.dial(endpoint)
        self.assertNoResult(d)
        clock.advance(10)
        endpoint.pump.flush()
        self.failureResultOf(d, DialFailed)
        self.assertTrue(
            endpoint.client.transport.disconnecting or endpoint.client.transport.disconnected
        )

    def test_bad_url(self) -> None:
        """
        A URL Autobahn cannot use is a L{DialFailed}.
        """
        d = Deferred.fromCoroutine(
            dial(MemoryReactorClock(), "ws://x/#frag", RecordingLinkReceiver(), "ua")
        )
        self.failureResultOf(d, DialFailed)

    def test_client_endpoint(self) -> None:
        """
        C{ws://} connects over TCP to the URL's host and port (80 by default); C{wss://} over TLS.
        """
        clock = MemoryReactorClock()
        plain = client_endpoint(clock, "ws://gw.example:6060/x")
        self.assertIsInstance(plain, HostnameEndpoint)
        self.assertIn("gw.example:6060", repr(plain))
        secure = client_endpoint(clock, "wss://gw.example/x")
        # The TLS wrapper around the TCP endpoint.
        self.assertTrue(IStreamClientEndpoint.providedBy(secure))
        self.assertNotIsInstance(secure, HostnameEndpoint)
