"""
Tests for L{codexgw.envtools.bridge} and L{codexgw.testing.fakebridge}: the bridge client, dialer
and pool (C{envtools.md} §4, acceptance criteria 4–10).

 - L{BridgeLinkInterfaceTests} is the L{IBridgeLink} contract, run against the in-memory
   L{FakeBridgeLink} and against the real Autobahn L{BridgeLink} linked through a
   L{twisted.test.iosim} pump to an Autobahn server (every timer on a L{MemoryReactorClock}).
 - L{BridgeLinkTests} and L{ConnectLinkTests} cover what only the Autobahn adapter has: the
   handshake request, the options, a refused upgrade's status and body, the dial timeout.
 - L{BridgeClientTests}, L{DialerTests} and L{PoolTests} run the protocol logic against the fake
   exec gateway (L{FakeExecGateway}) on a L{Clock}.
 - L{RealExecutorTests} dials the real exec gateway with a real executor and the pinned codex
   exec-server (subprocesses on 127.0.0.1, every wait bounded).
"""

from __future__ import annotations

import abc
import base64
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.envtools.bridge import (
    MAX_INCOMING_BYTES,
    BridgeClient,
    BridgeDialer,
    BridgeLink,
    BridgeLinkFactory,
    BridgePool,
    IBridgeLink,
    IBridgeLinkReceiver,
    UpgradeRefused,
    connect_link,
)
from codexgw.envtools.interfaces import (
    CallError,
    DialError,
    IBridgePool,
    ICapTokenProvider,
    IExecServerClient,
)
from codexgw.relay_pb2 import RelayMessageFrame
from codexgw.testing.fakebridge import (
    FAKE_BRIDGE_BASE,
    FakeBridgeLink,
    FakeBridgeStream,
    FakeCapTokens,
    FakeExecGateway,
    ScriptedError,
    ScriptedExecServer,
)
from codexgw.testing.fakeexecserver import FakeExecServer
from tests.execgw.gateway import WAIT, Clients, SharedGateway, bounded, mint_cap, reactor
from tests.execgw.test_gateway_integration import free_port
from tests.executor.test_integration import ExecutorCase

if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object

MIB = 1 << 20
URL = "ws://127.0.0.1:6060/bridge/exe_1"
SAMPLE_FRAMES = [
    b"",
    bytes(range(256)),
    relayframe.resume_frame("s1"),
    relayframe.data_frame("s1", 7, b"x" * 70_000),
]


@implementer(IBridgeLinkReceiver)
class RecordingReceiver:
    """
    An L{IBridgeLinkReceiver} that records every call, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def frame_received(self, frame: bytes) -> None:
        self.events.append(("frame", frame))

    def link_lost(self, code: int, reason: str) -> None:
        self.events.append(("lost", code, reason))

    def frames(self) -> list[bytes]:
        """
        The frames received, in order.
        """
        return [event[1] for event in self.events if event[0] == "frame"]

    def losses(self) -> list[tuple[int, str]]:
        """
        Every C{link_lost} call's code and reason.
        """
        return [(event[1], event[2]) for event in self.events if event[0] == "lost"]


# -------------------------------------------------------------------------------------------------
# The link contract


class RecordingServer(WebSocketServerProtocol):
    """
    The gateway's end: an Autobahn server protocol that records the handshake request and what it
    gets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.messages: list[tuple[bool, bytes]] = []
        self.closes: list[tuple[bool, int | None, str | None]] = []

    def onConnect(self, request: Any) -> None:
        """
        Record the handshake request.
        """
        self.request = request

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


class ExecServerOverWebsocket(RecordingServer):
    """
    A gateway plus executor on a real websocket: Data frames (unsegmented) go to a
    L{ScriptedExecServer}, whose replies come back as Data frames of the stream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backend = ScriptedExecServer()
        self.backend.on_reply = self._reply
        self.stream_id = ""
        self._seq = 0

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Record, then answer Data.
        """
        super().onMessage(payload, isBinary)
        frame = relayframe.decode(payload)
        body = frame.WhichOneof("body")
        if body == "resume":
            self.stream_id = frame.stream_id
        elif body == "data":
            self.backend.handle(frame.data.payload)

    def _reply(self, message: bytes) -> None:
        self.sendMessage(relayframe.data_frame(self.stream_id, self._seq, message), isBinary=True)
        self._seq += 1


def server_factory(clock: Any, protocol: type[WebSocketServerProtocol]) -> WebSocketServerFactory:
    """
    A gateway-side factory that schedules nothing of its own.
    """
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = protocol
    factory.setProtocolOptions(
        openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0, maxMessagePayloadSize=0
    )
    return factory


def build_server(clock: Any, protocol: type[RecordingServer] = RecordingServer) -> Any:
    """
    One gateway-side protocol, as Twisted would build it for an accepted connection.
    """
    return server_factory(clock, protocol).buildProtocol(iosim.FakeAddress())


class LinkHarness(abc.ABC):
    """
    One link under test, with the gateway's end played by the test.

    @ivar link: the link under test.
    @ivar receiver: its receiver (attached unless the harness was made with C{attach=False}).
    """

    link: IBridgeLink
    receiver: RecordingReceiver

    @abc.abstractmethod
    def settle(self) -> None:
        """
        Let everything in flight arrive and every started closing handshake finish.
        """

    @abc.abstractmethod
    def remote_send(self, frame: bytes) -> None:
        """
        The gateway sends a binary message.
        """

    @abc.abstractmethod
    def remote_send_text(self, text: str) -> None:
        """
        The gateway sends a text message.
        """

    @abc.abstractmethod
    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        The C{(is_binary, payload)} of every message the gateway got.
        """

    @abc.abstractmethod
    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        The code and reason of the close frame the gateway got, if any.
        """

    @abc.abstractmethod
    def remote_closes(self, code: int, reason: str) -> None:
        """
        The gateway closes the websocket cleanly.
        """

    @abc.abstractmethod
    def remote_drops(self) -> None:
        """
        The connection vanishes without a closing handshake.
        """


class FakeHarness(LinkHarness):
    """
    L{FakeBridgeLink}, with the test playing the far end.
    """

    def __init__(self, attach: bool = True) -> None:
        self.fake = FakeBridgeLink()
        self.link = self.fake
        self.receiver = RecordingReceiver()
        if attach:
            self.link.attach(self.receiver)

    def settle(self) -> None:
        """
        See L{LinkHarness.settle}: the fake completes everything at once.
        """

    def remote_send(self, frame: bytes) -> None:
        """
        See L{LinkHarness.remote_send}.
        """
        self.fake.receive(frame)

    def remote_send_text(self, text: str) -> None:
        """
        See L{LinkHarness.remote_send_text}.
        """
        self.fake.receive_text()

    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        See L{LinkHarness.remote_messages}.
        """
        return [(True, frame) for frame in self.fake.sent]

    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        See L{LinkHarness.remote_saw_close}.
        """
        return self.fake.closed_with

    def remote_closes(self, code: int, reason: str) -> None:
        """
        See L{LinkHarness.remote_closes}.
        """
        self.fake.lose(code, reason)

    def remote_drops(self) -> None:
        """
        See L{LinkHarness.remote_drops}.
        """
        self.fake.lose()


class RealHarness(LinkHarness):
    """
    A L{BridgeLink} from a L{BridgeLinkFactory} on a L{MemoryReactorClock}, linked to a
    L{RecordingServer} through an iosim pump, handshake completed.
    """

    def __init__(
        self,
        attach: bool = True,
        token: str = "tok-123",  # noqa: S107
        user_agent: str = "ua/1",
    ) -> None:
        self.clock = MemoryReactorClock()
        self.factory = BridgeLinkFactory(URL, token, user_agent, self.clock)
        client = self.factory.buildProtocol(None)
        self.server = build_server(self.clock)
        self.client_io = iosim.FakeTransport(client, isServer=False)
        self.server_io = iosim.FakeTransport(self.server, isServer=True)
        self.pump = iosim.connect(
            self.server, self.server_io, client, self.client_io, greet=True, clock=self.clock
        )
        self.real = client
        self.link = client
        self.receiver = RecordingReceiver()
        if attach:
            self.link.attach(self.receiver)

    def settle(self) -> None:
        """
        See L{LinkHarness.settle}.
        """
        self.pump.flush()

    def remote_send(self, frame: bytes) -> None:
        """
        See L{LinkHarness.remote_send}.
        """
        self.server.sendMessage(frame, isBinary=True)
        self.pump.flush()

    def remote_send_text(self, text: str) -> None:
        """
        See L{LinkHarness.remote_send_text}.
        """
        self.server.sendMessage(text.encode("utf-8"), isBinary=False)
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

    def remote_closes(self, code: int, reason: str) -> None:
        """
        See L{LinkHarness.remote_closes}.
        """
        self.server.sendClose(code, reason)
        self.pump.flush()

    def remote_drops(self) -> None:
        """
        See L{LinkHarness.remote_drops}.
        """
        self.server_io.stream.clear()
        self.server_io.loseConnection()
        self.pump.flush()


class BridgeLinkInterfaceTests(_MixinBase):
    """
    The L{IBridgeLink} contract; subclasses say which implementation runs it.
    """

    def harness(self, attach: bool = True) -> LinkHarness:
        """
        A fresh open link under test, its receiver attached unless C{attach} is false.
        """
        raise NotImplementedError

    def test_provides_interface(self) -> None:
        """
        The link provides L{IBridgeLink} completely.
        """
        self.assertTrue(verifyObject(IBridgeLink, self.harness().link))

    def test_send_frame_delivers_identical_binary_messages(self) -> None:
        """
        Each C{send_frame} reaches the gateway as one binary message with the same bytes, in order.
        """
        h = self.harness()
        for frame in SAMPLE_FRAMES:
            h.link.send_frame(frame)
        h.settle()
        self.assertEqual(h.remote_messages(), [(True, frame) for frame in SAMPLE_FRAMES])

    def test_frames_received_exactly(self) -> None:
        """
        Each binary message from the gateway reaches C{frame_received} once, byte-identical and in
        order.
        """
        h = self.harness()
        for frame in SAMPLE_FRAMES:
            h.remote_send(frame)
        self.assertEqual(h.receiver.frames(), SAMPLE_FRAMES)

    def test_text_not_reported(self) -> None:
        """
        Text messages are not reported, and the link stays open.
        """
        h = self.harness()
        h.remote_send_text("hello")
        h.remote_send(b"after")
        self.assertEqual(h.receiver.events, [("frame", b"after")])

    def test_frames_before_attach(self) -> None:
        """
        Frames that arrived before C{attach} are delivered by it, in order, before later ones.
        """
        h = self.harness(attach=False)
        h.remote_send(b"one")
        h.remote_send(b"two")
        h.link.attach(h.receiver)
        h.remote_send(b"three")
        self.assertEqual(h.receiver.frames(), [b"one", b"two", b"three"])

    def test_lost_before_attach(self) -> None:
        """
        A link that ended before C{attach} reports its frames and then its end, once.
        """
        h = self.harness(attach=False)
        h.remote_send(b"one")
        h.remote_closes(1000, "bye")
        h.settle()
        h.link.attach(h.receiver)
        self.assertEqual(h.receiver.events, [("frame", b"one"), ("lost", 1000, "bye")])

    def test_close_carries_code_and_reason(self) -> None:
        """
        C{close} sends the gateway the code and reason; the link reports that code and reason once.
        """
        h = self.harness()
        h.link.close(1000, "done")
        h.settle()
        self.assertEqual(h.remote_saw_close(), (1000, "done"))
        self.assertEqual(h.receiver.losses(), [(1000, "done")])

    def test_close_idempotent(self) -> None:
        """
        Only the first C{close} counts.
        """
        h = self.harness()
        h.link.close(1000, "first")
        h.link.close(1000, "second")
        h.settle()
        h.link.close(1000, "third")
        h.settle()
        self.assertEqual(h.remote_saw_close(), (1000, "first"))
        self.assertEqual(h.receiver.losses(), [(1000, "first")])

    def test_send_after_close_dropped(self) -> None:
        """
        Frames sent after C{close} never reach the gateway.
        """
        h = self.harness()
        h.link.send_frame(b"before")
        h.link.close(1000, "")
        h.link.send_frame(b"while closing")
        h.settle()
        h.link.send_frame(b"after")
        h.settle()
        self.assertEqual(h.remote_messages(), [(True, b"before")])

    def test_remote_close_reported_once(self) -> None:
        """
        A close started by the gateway is reported once with its code and reason; a later C{close}
        does nothing.
        """
        h = self.harness()
        h.remote_closes(1000, "stream reset")
        h.link.close(1000, "late")
        h.settle()
        self.assertEqual(h.receiver.losses(), [(1000, "stream reset")])

    def test_remote_drop_reported_as_1006(self) -> None:
        """
        A connection that drops without a closing handshake is reported once, with 1006.
        """
        h = self.harness()
        h.remote_drops()
        h.settle()
        h.link.close(1000, "late")
        h.settle()
        self.assertEqual([code for code, _ in h.receiver.losses()], [1006])


class FakeLinkInterfaceTests(BridgeLinkInterfaceTests, SynchronousTestCase):
    """
    The contract, on the in-memory twin.
    """

    def harness(self, attach: bool = True) -> LinkHarness:
        """
        A L{FakeBridgeLink}.
        """
        return FakeHarness(attach)


class RealLinkInterfaceTests(BridgeLinkInterfaceTests, SynchronousTestCase):
    """
    The contract, on the real Autobahn adapter.
    """

    def harness(self, attach: bool = True) -> LinkHarness:
        """
        A L{BridgeLink} over iosim.
        """
        return RealHarness(attach)


# -------------------------------------------------------------------------------------------------
# The Autobahn adapter


class RawHTTPServer(Protocol):
    """
    A server that answers the handshake request with raw bytes: C{head} once the request is in, then
    whatever the test writes.
    """

    def __init__(self, head: bytes, close: bool = False) -> None:
        self.head = head
        self.close = close
        self.request = b""

    def dataReceived(self, data: bytes) -> None:
        """
        Answer once the request headers are complete.
        """
        complete = b"\r\n\r\n" in self.request
        self.request += data
        if not complete and b"\r\n\r\n" in self.request:
            self.transport.write(self.head)  # type: ignore[union-attr]
            if self.close:
                self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    An endpoint that "connects" to the next of C{servers} through an iosim pump (or refuses when
    there is none left).
    """

    def __init__(self, clock: MemoryReactorClock, *servers: Protocol) -> None:
        self.clock = clock
        self.servers = list(servers)
        self.clients: list[Any] = []
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Build the client and pump it to the next server.
        """
        if not self.servers:
            return fail(ConnectionRefusedError("refused"))
        server = self.servers.pop(0)
        client = factory.buildProtocol(iosim.FakeAddress())
        self.clients.append(client)
        self.pumps.append(
            iosim.connect(
                server,
                iosim.FakeTransport(server, isServer=True),
                client,
                iosim.FakeTransport(client, isServer=False),
                clock=self.clock,
            )
        )
        return succeed(client)

    def flush(self) -> None:
        """
        Move every byte in flight on every connection.
        """
        for pump in self.pumps:
            pump.flush()


class BridgeLinkTests(SynchronousTestCase):
    """
    What only the Autobahn adapter has.
    """

    def test_handshake_request(self) -> None:
        """
        Criterion 4: the upgrade asks for the bridge path with C{Authorization: Bearer <token>} and
        the front-end's C{User-Agent}, without C{Origin} and without a permessage-deflate offer.
        """
        h = RealHarness(token="tok-123", user_agent="codexgw-env-mcp")
        request = h.server.request
        self.assertEqual(request.path, "/bridge/exe_1")
        self.assertEqual(request.headers["authorization"], "Bearer tok-123")
        self.assertEqual(request.headers["user-agent"], "codexgw-env-mcp")
        self.assertNotIn("origin", request.headers)
        self.assertNotIn("sec-websocket-extensions", request.headers)
        self.assertEqual(h.real.websocket_extensions_in_use, [])

    def test_options(self) -> None:
        """
        Incoming messages up to 16 MiB; pings every 30 s; no deflate; no drop on failure.
        """
        factory = BridgeLinkFactory(URL, "t", "ua", MemoryReactorClock())
        self.assertEqual(MAX_INCOMING_BYTES, 16 * MIB)
        self.assertEqual(
            (factory.maxMessagePayloadSize, factory.maxFramePayloadSize), (16 * MIB, 16 * MIB)
        )
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (30.0, 30.0))
        self.assertEqual(factory.perMessageCompressionOffers, [])
        self.assertFalse(factory.failByDrop)
        self.assertIsNone(factory.origin)

    def test_message_over_16_mib_ends_link(self) -> None:
        """
        A message above 16 MiB ends the link (1009) instead of being delivered.
        """
        h = RealHarness()
        h.remote_send(b"x" * (16 * MIB + 1))
        self.assertEqual(h.receiver.frames(), [])
        self.assertEqual([code for code, _ in h.receiver.losses()], [1009])

    def test_closed_fires(self) -> None:
        """
        C{closed} fires with the code and reason once the connection ended.
        """
        h = RealHarness()
        h.remote_closes(1000, "bridge idle timeout")
        self.assertEqual(self.successResultOf(h.real.closed), (1000, "bridge idle timeout"))


class ConnectLinkTests(SynchronousTestCase):
    """
    L{connect_link}: the dial of one websocket.
    """

    def connect(self, endpoint: MemoryEndpoint) -> Deferred[IBridgeLink]:
        """
        Dial L{URL} through C{endpoint}.
        """
        return connect_link(endpoint.clock, URL, "tok-123", "ua", endpoint=endpoint)

    def refused(self, *chunks: bytes, close: bool = False) -> str:
        """
        The dial error of a server that answers with C{chunks} (the first as soon as the request is
        in, the others one by one after it), closing the connection at the end when C{close}.
        """
        clock = MemoryReactorClock()
        server = RawHTTPServer(chunks[0])
        endpoint = MemoryEndpoint(clock, server)
        d = self.connect(endpoint)
        endpoint.flush()
        for chunk in chunks[1:]:
            self.assertNoResult(d)
            assert server.transport is not None
            server.transport.write(chunk)
            endpoint.flush()
        if close:
            self.assertNoResult(d)
            assert server.transport is not None
            server.transport.loseConnection()
            endpoint.flush()
        failure = self.failureResultOf(d, DialError)
        return str(failure.value)

    def test_success(self) -> None:
        """
        A completed handshake gives the open link.
        """
        clock = MemoryReactorClock()
        endpoint = MemoryEndpoint(clock, build_server(clock))
        d = self.connect(endpoint)
        endpoint.flush()
        self.assertIsInstance(self.successResultOf(d), BridgeLink)

    def test_refused_with_body(self) -> None:
        """
        Criterion 8: a refused upgrade is C{bridge dial: HTTP <status>: <body trimmed>}, with the body
        awaited when it arrives after the headers.
        """
        text = self.refused(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 23\r\n\r\n",
            b"executor not",
            b" connected\n",
        )
        self.assertEqual(text, "bridge dial: HTTP 503: executor not connected")

    def test_refused_status_and_body_kept(self) -> None:
        """
        The refusal carries its status and trimmed body for the dialer.
        """
        clock = MemoryReactorClock()
        head = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 14\r\n\r\ntoken expired\n"
        d = self.connect(endpoint := MemoryEndpoint(clock, RawHTTPServer(head)))
        endpoint.flush()
        error = self.failureResultOf(d, UpgradeRefused).value
        assert isinstance(error, UpgradeRefused)
        self.assertEqual((error.status, error.body), (401, "token expired"))

    def test_body_first_200_bytes(self) -> None:
        """
        Only the first 200 bytes of the body are shown, decoded with replacement.
        """
        body = b"\xff" + b"a" * 300
        text = self.refused(b"HTTP/1.1 500 Internal\r\nContent-Length: 301\r\n\r\n" + body)
        self.assertEqual(text, "bridge dial: HTTP 500: \ufffd" + "a" * 199)

    def test_chunked_body(self) -> None:
        """
        A chunked body is shown de-chunked.
        """
        text = self.refused(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"7\r\nexe_id \r\n",
            b"10\r\nnot in workspace\r\n0\r\n\r\n",
        )
        self.assertEqual(text, "bridge dial: HTTP 403: exe_id not in workspace")

    def test_body_until_close(self) -> None:
        """
        Without a length, the body runs until the connection ends.
        """
        text = self.refused(b"HTTP/1.1 502 Bad Gateway\r\n\r\nupstream ", b"gone", close=True)
        self.assertEqual(text, "bridge dial: HTTP 502: upstream gone")

    def test_refused_connection(self) -> None:
        """
        Criterion 8: an unreachable gateway is C{bridge dial: <detail>}.
        """
        d = self.connect(MemoryEndpoint(MemoryReactorClock()))
        text = self.failureResultOf(d, DialError).getErrorMessage()
        self.assertTrue(text.startswith("bridge dial: "), text)
        self.assertIn("refused", text)

    def test_silent_server_times_out(self) -> None:
        """
        Connect plus upgrade must finish within 10 s; the connection is dropped then.
        """
        clock = MemoryReactorClock()
        endpoint = MemoryEndpoint(clock, Protocol())
        d = self.connect(endpoint)
        endpoint.flush()
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        endpoint.flush()
        text = self.failureResultOf(d, DialError).getErrorMessage()
        self.assertEqual(text, "bridge dial: timed out after 10 s")
        transport = endpoint.clients[0].transport
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_bad_url(self) -> None:
        """
        A URL Autobahn cannot use is a dial error.
        """
        d = connect_link(MemoryReactorClock(), "http://x/#frag", "t", "ua")
        self.assertTrue(self.failureResultOf(d, DialError).getErrorMessage().startswith("bridge dial:"))


# -------------------------------------------------------------------------------------------------
# The protocol logic, against the fake gateway


class GatewayCase(SynchronousTestCase):
    """
    A fake exec gateway with one connected executor C{exe_1}, a dialer on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = FakeExecGateway()
        self.gateway.add_executor("exe_1", "box")
        self.tokens = FakeCapTokens(["tok-123", "tok-456"])
        self.dialer = BridgeDialer(
            self.clock, FAKE_BRIDGE_BASE, "codexgw-env-mcp", self.tokens, connect=self.gateway.connect
        )

    def open_client(self, exe_id: str = "exe_1") -> tuple[BridgeClient, FakeBridgeStream]:
        """
        A dialled client and the gateway's end of its stream.
        """
        client = self.successResultOf(self.dialer.dial(exe_id))
        return client, self.gateway.streams[-1]

    def backend(self, stream: FakeBridgeStream) -> ScriptedExecServer:
        """
        The scripted exec-server behind C{stream}.
        """
        return cast(ScriptedExecServer, stream.backend)

    def call_error(self, d: Deferred[Any]) -> str:
        """
        The text of the L{CallError} C{d} failed with.
        """
        return str(self.failureResultOf(d, CallError).value)


def _frame_body(frame: RelayMessageFrame | None) -> str | None:
    return None if frame is None else frame.WhichOneof("body")


class BridgeClientTests(GatewayCase):
    """
    L{BridgeClient}: opening, frames, calls, the end, heartbeats (criteria 4–7, 10).
    """

    def test_provides_interface(self) -> None:
        """
        The client provides L{IExecServerClient}, usable (C{ended} C{None}) once open.
        """
        client, _ = self.open_client()
        self.assertTrue(verifyObject(IExecServerClient, client))
        self.assertIsNone(client.ended)

    def test_dial_and_opening(self) -> None:
        """
        Criterion 4: the dial carries the token and the front-end's User-Agent to C{<base>/<exe_id>};
        the first frame is C{resume{next_seq:0}} with a UUIDv4 stream id; then C{initialize}
        C{{"clientName":"codex-env-mcp"}} as seq 0 and C{initialized} as seq 1; later calls use
        seq 2, 3, 4.
        """
        client, stream = self.open_client()
        [dial] = self.gateway.dials
        self.assertEqual(
            (dial.url, dial.token, dial.user_agent),
            (FAKE_BRIDGE_BASE + "/exe_1", "tok-123", "codexgw-env-mcp"),
        )
        first = stream.frames[0]
        assert first is not None
        self.assertEqual((first.version, first.WhichOneof("body")), (1, "resume"))
        self.assertEqual(first.resume.next_seq, 0)
        self.assertEqual(first.stream_id, client.stream_id)
        self.assertEqual(str(uuid.UUID(client.stream_id)), client.stream_id)
        self.assertEqual(uuid.UUID(client.stream_id).version, 4)
        self.assertEqual(
            stream.messages,
            [
                b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientName":"codex-env-mcp"}}',
                b'{"jsonrpc":"2.0","method":"initialized","params":{}}',
            ],
        )
        self.backend(stream).results["fs/getMetadata"] = {"isFile": True}
        for _ in range(3):
            self.assertEqual(
                self.successResultOf(client.call("fs/getMetadata", {"path": "file:///x"})),
                {"isFile": True},
            )
        self.assertEqual([seq for seq, _, _, _ in stream.data_frames], [0, 1, 2, 3, 4])
        for frame in stream.frames:
            assert frame is not None
            self.assertEqual(
                (frame.version, frame.stream_id, frame.ack, frame.ack_bits),
                (1, client.stream_id, 0, 0),
            )
        self.assertEqual([r.get("id") for r in stream.requests[2:]], [2, 3, 4])

    def test_exe_id_percent_encoded(self) -> None:
        """
        The exe id is one percent-encoded path segment.
        """
        self.gateway.add_executor("exe/1 #?")
        self.open_client("exe/1 #?")
        self.assertEqual(self.gateway.dials[0].url, FAKE_BRIDGE_BASE + "/exe%2F1%20%23%3F")
        self.assertEqual(self.gateway.dials[0].exe_id, "exe/1 #?")

    def test_initialize_timeout(self) -> None:
        """
        No C{initialize} reply within 10 s: the dial fails with C{initialize: timed out} and the
        websocket is closed.
        """
        self.gateway.backend = lambda: _silent("initialize")
        d = self.dialer.dial("exe_1")
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, DialError).getErrorMessage(), "initialize: timed out")
        self.assertEqual(self.gateway.streams[0].link.closed_with, (1000, ""))

    def test_initialize_error(self) -> None:
        """
        An C{initialize} error fails the dial with its text.
        """

        def refuse(params: Any) -> Any:
            raise ScriptedError(-32602, "missing field `clientName`")

        backend = ScriptedExecServer()
        backend.results["initialize"] = refuse
        self.gateway.backend = lambda: backend
        d = self.dialer.dial("exe_1")
        self.assertEqual(
            self.failureResultOf(d, DialError).getErrorMessage(),
            "initialize: missing field `clientName` (code=-32602)",
        )

    def test_replies_matched_by_id(self) -> None:
        """
        Criterion 5: replies with and without C{jsonrpc} are matched by id, also out of order;
        notifications, id -1, unknown ids, non-objects and invalid JSON are ignored.
        """
        client, stream = self.open_client()
        backend = self.backend(stream)
        backend.silent.add("process/read")
        first = client.call("process/read", {"processId": "a"})
        second = client.call("process/read", {"processId": "b"})
        for noise in [
            b'{"method":"process/output","params":{"processId":"a","seq":1}}',
            b'{"id":-1,"error":{"code":-32700,"message":"parse error"}}',
            b'{"id":99,"result":{}}',
            b'{"id":"3","result":{}}',
            b'{"id":true,"result":{}}',
            b"[1,2]",
            b"not json",
        ]:
            stream.send_message(noise)
        self.assertNoResult(first)
        self.assertNoResult(second)
        stream.send_message(b'{"jsonrpc":"2.0","id":3,"result":"second"}')
        stream.send_message(b'{"id":2,"result":"first"}')
        self.assertEqual(self.successResultOf(first), "first")
        self.assertEqual(self.successResultOf(second), "second")
        self.assertIsNone(client.ended)

    def test_error_reply(self) -> None:
        """
        Criterion 5: a JSON-RPC error is C{<method>: <message> (code=<code>)}, with its code.
        """
        client, _ = self.open_client()
        failure = self.failureResultOf(client.call("fs/frobnicate", {}), CallError)
        self.assertEqual(
            failure.getErrorMessage(),
            "fs/frobnicate: exec-server stub does not implement `fs/frobnicate` yet (code=-32601)",
        )
        assert isinstance(failure.value, CallError)
        self.assertEqual(failure.value.code, -32601)

    def test_call_timeout_then_usable(self) -> None:
        """
        Criterion 5: a call without reply fails with C{<method>: timed out} after 60 s; a late reply
        is ignored and the client stays usable.
        """
        client, stream = self.open_client()
        backend = self.backend(stream)
        backend.silent.add("process/read")
        d = client.call("process/read", {"processId": "p"})
        self.clock.advance(59.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.call_error(d), "process/read: timed out")
        stream.send_message(b'{"id":2,"result":{}}')
        backend.results["fs/remove"] = {}
        self.assertEqual(self.successResultOf(client.call("fs/remove", {"path": "file:///x"})), {})
        self.assertIsNone(client.ended)

    def test_custom_timeout(self) -> None:
        """
        A call's own timeout replaces the 60 s.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("process/read")
        d = client.call("process/read", {}, timeout=5)
        self.clock.advance(5)
        self.assertEqual(self.call_error(d), "process/read: timed out")

    def test_cancel_call(self) -> None:
        """
        A cancelled call is forgotten: its reply is ignored and no timer is left.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("process/read")
        d = client.call("process/read", {})
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        stream.send_message(b'{"id":2,"result":{}}')
        self.assertIsNone(client.ended)

    def test_request_segmented(self) -> None:
        """
        Criterion 6: a 3 MiB request leaves as 3 Data frames of one seq, indices 0–2, count 3, back to
        back; the gateway reassembles it exactly.
        """
        client, stream = self.open_client()
        self.backend(stream).results["fs/writeFile"] = {}
        envelope = len(b'{"jsonrpc":"2.0","id":2,"method":"fs/writeFile","params":{"dataBase64":""}}')
        data = "A" * (3 * MIB - envelope)
        self.successResultOf(client.call("fs/writeFile", {"dataBase64": data}))
        self.assertEqual(
            stream.data_frames[2:],
            [(2, 0, 3, MIB), (2, 1, 3, MIB), (2, 2, 3, MIB)],
        )
        self.assertEqual(stream.requests[2]["params"]["dataBase64"], data)

    def test_segment_boundary(self) -> None:
        """
        A request of exactly 1 MiB is one frame; one byte more is two segments.
        """
        client, stream = self.open_client()
        self.backend(stream).results["m"] = {}
        envelope = len(b'{"jsonrpc":"2.0","id":2,"method":"m","params":""}')
        self.successResultOf(client.call("m", "x" * (MIB - envelope)))
        self.successResultOf(client.call("m", "x" * (MIB - envelope + 1)))
        self.assertEqual(
            [(seq, index, count) for seq, index, count, _ in stream.data_frames[2:]],
            [(2, 0, 1), (3, 0, 2), (3, 1, 2)],
        )

    def test_reply_reassembled(self) -> None:
        """
        Criterion 6: a reply in 3 segments is reassembled.
        """
        client, stream = self.open_client()
        data = base64.b64encode(os.urandom(2 * MIB + 1000)).decode()
        self.backend(stream).results["fs/readFile"] = {"dataBase64": data}
        result = self.successResultOf(client.call("fs/readFile", {"path": "file:///x"}))
        self.assertEqual(result, {"dataBase64": data})

    def test_reply_segments_out_of_order(self) -> None:
        """
        Criterion 6: an out-of-order segment fails the client with C{relay: bad segment sequence}
        and closes its websocket with 1000.
        """
        for frames in [
            [(5, 0, 3), (5, 2, 3)],
            [(5, 1, 3)],
            [(5, 0, 3), (6, 1, 3)],
            [(5, 0, 3), (5, 1, 4)],
            [(5, 0, 3), (5, 0, 1)],
        ]:
            client, stream = self.open_client()
            self.backend(stream).silent.add("process/read")
            d = client.call("process/read", {})
            for seq, index, count in frames:
                assert stream.stream_id is not None
                stream.send_frame(relayframe.data_frame(stream.stream_id, seq, b"{", index, count))
            self.assertEqual(self.call_error(d), "relay: bad segment sequence")
            self.assertEqual(client.ended, "relay: bad segment sequence")
            self.assertEqual(stream.link.closed_with, (1000, ""))
            self.assertEqual(self.call_error(client.call("x", {})), "relay: bad segment sequence")

    def test_reply_above_64_mib(self) -> None:
        """
        Criterion 6: a reply growing above 64 MiB fails the client with C{relay: message exceeds
        67108864 bytes}.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("fs/readFile")
        d = client.call("fs/readFile", {})
        assert stream.stream_id is not None
        segment = b"x" * MIB
        for index in range(65):
            stream.send_frame(relayframe.data_frame(stream.stream_id, 2, segment, index, 100))
        self.assertEqual(self.call_error(d), "relay: message exceeds 67108864 bytes")
        self.assertEqual(stream.link.closed_with, (1000, ""))

    def test_request_above_64_mib(self) -> None:
        """
        Criterion 6: a request above 64 MiB fails locally with C{message too large} and sends
        nothing; the client stays usable and the seq is not used up.
        """
        client, stream = self.open_client()
        sent = len(stream.link.sent)
        data = "A" * (64 * MIB)
        d = client.call("fs/writeFile", {"dataBase64": data})
        size = len(b'{"jsonrpc":"2.0","id":2,"method":"fs/writeFile","params":{"dataBase64":""}}')
        self.assertEqual(
            self.call_error(d),
            f"fs/writeFile: message too large ({size + 64 * MIB} bytes > 67108864)",
        )
        self.assertEqual(len(stream.link.sent), sent)
        self.assertIsNone(client.ended)
        self.backend(stream).results["fs/remove"] = {}
        self.successResultOf(client.call("fs/remove", {}))
        self.assertEqual(stream.data_frames[-1][0], 2)

    def test_ignored_frames(self) -> None:
        """
        Ignored: undecodable frames, version ≠ 1, another stream id, ack, resume and heartbeat
        bodies, text messages.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("process/read")
        d = client.call("process/read", {})
        sid = client.stream_id
        reply = b'{"id":2,"result":"late"}'
        other_version = RelayMessageFrame(version=2, stream_id=sid)
        other_version.data.payload = reply
        other_version.data.segment_count = 1
        ack = RelayMessageFrame(version=1, stream_id=sid)
        ack.ack_frame.SetInParent()
        for frame in [
            b"\xff\xff\xff",
            other_version.SerializeToString(),
            relayframe.data_frame("other-stream", 0, reply),
            relayframe.reset_frame("other-stream", "idle-timeout"),
            ack.SerializeToString(),
            relayframe.resume_frame(sid, 3),
            relayframe.heartbeat_frame(sid),
        ]:
            stream.send_frame(frame)
        stream.link.receive_text()
        self.assertNoResult(d)
        self.assertIsNone(client.ended)
        stream.send_frame(relayframe.data_frame(sid, 0, reply, 0, 0))
        self.assertEqual(self.successResultOf(d), "late")

    def test_reset(self) -> None:
        """
        Criterion 7: a Reset fails pending and later calls with C{relay reset: <reason>}.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("process/read")
        d = client.call("process/read", {})
        ended = client.when_ended()
        stream.reset("idle-timeout")
        self.assertEqual(self.call_error(d), "relay reset: idle-timeout")
        self.assertEqual(self.call_error(client.call("fs/remove", {})), "relay reset: idle-timeout")
        self.assertEqual(client.ended, "relay reset: idle-timeout")
        self.assertEqual(self.successResultOf(ended), "relay reset: idle-timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_close_mid_call(self) -> None:
        """
        Criterion 7: the websocket closing mid-call fails it with C{bridge: connection closed} at
        once; so does a dropped connection.
        """
        for end in (FakeBridgeStream.close, FakeBridgeStream.drop):
            client, stream = self.open_client()
            self.backend(stream).silent.add("process/read")
            d = client.call("process/read", {})
            end(stream)
            self.assertEqual(self.call_error(d), "bridge: connection closed")
            self.assertEqual(client.ended, "bridge: connection closed")

    def test_close(self) -> None:
        """
        Criterion 7: C{close()} fails pending calls with C{bridge: connection closed}, closes the
        websocket with 1000 and sends no Reset; twice is fine; a call after it fails at once.
        """
        client, stream = self.open_client()
        self.backend(stream).silent.add("process/read")
        d = client.call("process/read", {})
        client.close()
        client.close()
        self.assertEqual(self.call_error(d), "bridge: connection closed")
        self.assertEqual(stream.link.closed_with, (1000, ""))
        self.assertEqual(stream.ended, (1000, ""))
        self.assertNotIn("reset", [_frame_body(f) for f in stream.frames])
        self.assertEqual(self.call_error(client.call("x", {})), "bridge: connection closed")
        self.assertEqual(self.successResultOf(client.when_ended()), "bridge: connection closed")

    def test_heartbeats_while_sessions_live(self) -> None:
        """
        Criterion 10: with a live exec session a heartbeat frame leaves every 60 s; none without.
        """
        client, stream = self.open_client()
        self.clock.advance(600)
        self.assertEqual(stream.heartbeats, 0)
        client.session_opened()
        self.clock.advance(59.9)
        self.assertEqual(stream.heartbeats, 0)
        self.clock.advance(0.1)
        self.assertEqual(stream.heartbeats, 1)
        client.session_opened()
        self.clock.advance(60)
        self.assertEqual(stream.heartbeats, 2)
        client.session_closed()
        self.clock.advance(60)
        self.assertEqual(stream.heartbeats, 3)
        client.session_closed()
        self.clock.advance(600)
        self.assertEqual(stream.heartbeats, 3)
        client.session_closed()  # one too many: harmless
        self.assertEqual(client.sessions, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        heartbeat = next(f for f in stream.frames if _frame_body(f) == "heartbeat")
        assert heartbeat is not None
        self.assertEqual(heartbeat.stream_id, client.stream_id)

    def test_heartbeat_interval(self) -> None:
        """
        The interval is the dialer's.
        """
        self.dialer.heartbeat_interval = 1.0
        client, stream = self.open_client()
        client.session_opened()
        self.clock.pump([1.0] * 5)
        self.assertEqual(stream.heartbeats, 5)

    def test_heartbeats_stop_at_end(self) -> None:
        """
        An ended client sends no heartbeats and leaves no timer.
        """
        client, stream = self.open_client()
        client.session_opened()
        stream.reset("exec-server exited: 1")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        client.session_opened()
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _silent(*methods: str) -> ScriptedExecServer:
    backend = ScriptedExecServer()
    backend.silent.update(methods)
    return backend


class DialerTests(GatewayCase):
    """
    L{BridgeDialer}: refusals and the one retry after C{401 token expired} (criterion 8).
    """

    def dial_error(self, exe_id: str = "exe_1") -> str:
        """
        The text of the dial's failure.
        """
        return str(self.failureResultOf(self.dialer.dial(exe_id), DialError).value)

    def test_executor_not_connected(self) -> None:
        """
        A 503 refusal is C{bridge dial: HTTP 503: executor not connected}.
        """
        self.assertEqual(self.dial_error("exe_2"), "bridge dial: HTTP 503: executor not connected")
        self.assertEqual(self.tokens.calls, [False])

    def test_token_expired_retried_once(self) -> None:
        """
        C{401 token expired} → C{token(true)} once and one more dial with the new token.
        """
        self.gateway.expired_tokens.add("tok-123")
        client, _ = self.open_client()
        self.assertIsNone(client.ended)
        self.assertEqual(self.tokens.calls, [False, True])
        self.assertEqual([d.token for d in self.gateway.dials], ["tok-123", "tok-456"])

    def test_second_401_final(self) -> None:
        """
        A second C{401 token expired} is final.
        """
        self.gateway.expired_tokens.update({"tok-123", "tok-456"})
        self.assertEqual(self.dial_error(), "bridge dial: HTTP 401: token expired")
        self.assertEqual(self.tokens.calls, [False, True])
        self.assertEqual(len(self.gateway.dials), 2)

    def test_retry_outcome_final(self) -> None:
        """
        Whatever the retry gets is the outcome.
        """
        self.gateway.refusals = [(401, "token expired"), (503, "executor stream limit reached")]
        self.assertEqual(self.dial_error(), "bridge dial: HTTP 503: executor stream limit reached")

    def test_other_401_not_retried(self) -> None:
        """
        Another 401 body is not retried.
        """
        self.gateway.refusals = [(401, "unauthorized")]
        self.assertEqual(self.dial_error(), "bridge dial: HTTP 401: unauthorized")
        self.assertEqual(self.tokens.calls, [False])

    def test_unreachable(self) -> None:
        """
        A network failure is C{bridge dial: <detail>}.
        """
        self.gateway.unreachable = "Connection was refused by other side: 111: Connection refused."
        self.assertEqual(
            self.dial_error(),
            "bridge dial: Connection was refused by other side: 111: Connection refused.",
        )

    def test_token_provider_failure(self) -> None:
        """
        A failing token provider is a dial error.
        """

        @implementer(ICapTokenProvider)
        class Broken:
            def token(self, force: bool) -> Deferred[str]:
                return fail(RuntimeError("no token"))

        dialer = BridgeDialer(self.clock, FAKE_BRIDGE_BASE, "ua", Broken(), self.gateway.connect)
        text = self.failureResultOf(dialer.dial("exe_1"), DialError).getErrorMessage()
        self.assertEqual(text, "bridge dial: no token")

    def test_real_link_retry(self) -> None:
        """
        The retry over the real Autobahn adapter: a 401 C{token expired} refusal, then an upgrade
        carrying the new token, then the stream opens.
        """
        clock = MemoryReactorClock()
        refusal = RawHTTPServer(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 14\r\n\r\ntoken expired\n"
        )
        server = build_server(clock, ExecServerOverWebsocket)
        endpoint = MemoryEndpoint(clock, refusal, server)
        dialer = BridgeDialer(
            clock,
            "ws://127.0.0.1:6060/bridge",
            "codexgw-env-mcp",
            self.tokens,
            connect=lambda url, token, ua: connect_link(clock, url, token, ua, endpoint=endpoint),
        )
        d = dialer.dial("exe_1")
        for _ in range(5):
            endpoint.flush()
        client = self.successResultOf(d)
        self.assertIsNone(client.ended)
        self.assertIn(b"Authorization: Bearer tok-123", refusal.request)
        self.assertEqual(server.request.headers["authorization"], "Bearer tok-456")
        self.assertEqual(server.request.path, "/bridge/exe_1")
        self.assertEqual(
            [m["method"] for m in server.backend.requests],
            ["initialize", "initialized"],
        )
        client.close()
        endpoint.flush()
        self.assertEqual(server.closes[-1][:2], (True, 1000))


class PoolTests(GatewayCase):
    """
    L{BridgePool} (criterion 9).
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = BridgePool(self.dialer.dial)

    def test_provides_interface(self) -> None:
        """
        The pool provides L{IBridgePool}.
        """
        self.assertTrue(verifyObject(IBridgePool, self.pool))

    def test_concurrent_gets_share_one_dial(self) -> None:
        """
        10 concurrent C{get}s → 1 dial, 1 client; later gets return the same live client.
        """
        self.gateway.hold_dials = True
        gets = [self.pool.get("exe_1") for _ in range(10)]
        self.assertEqual(len(self.gateway.dials), 1)
        for d in gets:
            self.assertNoResult(d)
        self.gateway.release_dials()
        clients = {id(self.successResultOf(d)) for d in gets}
        self.assertEqual(len(clients), 1)
        self.assertEqual(len(self.gateway.streams), 1)
        again = self.successResultOf(self.pool.get("exe_1"))
        self.assertEqual(id(again), clients.pop())
        self.assertEqual(len(self.gateway.dials), 1)

    def test_reset_client_replaced(self) -> None:
        """
        After a Reset the next C{get} dials a new stream with a new stream id.
        """
        first = cast(BridgeClient, self.successResultOf(self.pool.get("exe_1")))
        self.gateway.streams[0].reset("idle-timeout")
        second = cast(BridgeClient, self.successResultOf(self.pool.get("exe_1")))
        self.assertIsNot(first, second)
        self.assertNotEqual(first.stream_id, second.stream_id)
        self.assertEqual(len(self.gateway.streams), 2)
        self.assertEqual(self.gateway.streams[1].stream_id, second.stream_id)

    def test_client_ended_between_gets(self) -> None:
        """
        A client whose end was not reported through C{when_ended} yet is still not handed out.
        """
        first = cast(BridgeClient, self.successResultOf(self.pool.get("exe_1")))
        first.ended = "bridge: connection closed"
        second = self.successResultOf(self.pool.get("exe_1"))
        self.assertIsNot(first, second)

    def test_empty_exe_id(self) -> None:
        """
        An empty exe id → C{bridge: exe_id required}, without a dial.
        """
        d = self.pool.get("")
        self.assertEqual(self.failureResultOf(d, DialError).getErrorMessage(), "bridge: exe_id required")
        self.assertEqual(self.gateway.dials, [])

    def test_failed_dial_not_remembered(self) -> None:
        """
        Every waiter of a failed dial gets its error; the next C{get} dials again.
        """
        self.gateway.hold_dials = True
        gets = [self.pool.get("exe_2") for _ in range(3)]
        self.gateway.release_dials()
        for d in gets:
            self.assertEqual(
                self.failureResultOf(d, DialError).getErrorMessage(),
                "bridge dial: HTTP 503: executor not connected",
            )
        self.gateway.hold_dials = False
        self.gateway.add_executor("exe_2")
        self.successResultOf(self.pool.get("exe_2"))
        self.assertEqual(len(self.gateway.dials), 2)

    def test_clients_per_exe_id(self) -> None:
        """
        Each exe id has its own client.
        """
        self.gateway.add_executor("exe_2")
        one = self.successResultOf(self.pool.get("exe_1"))
        two = self.successResultOf(self.pool.get("exe_2"))
        self.assertIsNot(one, two)
        self.assertEqual([d.exe_id for d in self.gateway.dials], ["exe_1", "exe_2"])

    def test_close(self) -> None:
        """
        C{close()} closes every client; later gets fail with C{bridge: pool closed}; waiters of a
        dial in flight fail at once and the client it brings is closed.
        """
        client = self.successResultOf(self.pool.get("exe_1"))
        self.gateway.add_executor("exe_2")
        self.gateway.hold_dials = True
        waiting = self.pool.get("exe_2")
        self.pool.close()
        self.pool.close()
        self.assertEqual(client.ended, "bridge: connection closed")
        self.assertEqual(
            self.failureResultOf(waiting, DialError).getErrorMessage(), "bridge: pool closed"
        )
        self.gateway.release_dials()
        self.assertEqual(self.gateway.streams[1].ended, (1000, ""))
        d = self.pool.get("exe_1")
        self.assertEqual(self.failureResultOf(d, DialError).getErrorMessage(), "bridge: pool closed")

    def test_cancelled_get(self) -> None:
        """
        A cancelled C{get} leaves the shared dial to the others.
        """
        self.gateway.hold_dials = True
        first = self.pool.get("exe_1")
        second = self.pool.get("exe_1")
        first.cancel()
        self.failureResultOf(first)
        self.gateway.release_dials()
        self.successResultOf(second)

    def test_other_dial_errors_wrapped(self) -> None:
        """
        A dial function failing with something else than L{DialError} still gives a L{DialError}.
        """
        pool = BridgePool(lambda exe_id: fail(RuntimeError("boom")))
        text = self.failureResultOf(pool.get("exe_1"), DialError).getErrorMessage()
        self.assertEqual(text, "bridge dial: boom")


class FakeExecServerBehindGatewayTests(SynchronousTestCase):
    """
    The bridge client through the fake gateway to the fake exec-server of
    L{codexgw.testing.fakeexecserver}, on a L{Clock}: "a stand-in speaking relay frames behind a
    fake gateway".
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir(parents=True)
        self.servers: list[FakeExecServer] = []
        self.gateway = FakeExecGateway(self.new_server)
        self.gateway.add_executor("exe_1", "box")
        dialer = BridgeDialer(
            self.clock, FAKE_BRIDGE_BASE, "codexgw-env-mcp", FakeCapTokens(), self.gateway.connect
        )
        self.client = self.successResultOf(dialer.dial("exe_1"))

    def new_server(self) -> FakeExecServer:
        """
        One fake exec-server per stream, its files under the test's directory.
        """
        server = FakeExecServer(self.clock, root=str(self.root))
        self.servers.append(server)
        return server

    def call(self, method: str, params: Any) -> Any:
        """
        Call, let the clock run 250 ms, and return the result.
        """
        d = self.client.call(method, params)
        self.clock.advance(0.25)
        return self.successResultOf(d)

    def test_handshake_done(self) -> None:
        """
        The dial performed the exec-server's handshake: C{initialize} then C{initialized}.
        """
        [server] = self.servers
        self.assertEqual([r["method"] for r in server.requests], ["initialize"])
        self.assertEqual(server.requests[0]["params"], {"clientName": "codex-env-mcp"})
        self.assertEqual([n["method"] for n in server.notifications], ["initialized"])

    def test_echo_hi(self) -> None:
        """
        C{process/start} of C{/bin/echo hi} read with the polling rule gives C{aGkK}, exit code 0.
        """
        start = {
            "processId": "p1",
            "argv": ["/bin/echo", "hi"],
            "cwd": "file:///",
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": False,
            "pipeStdin": False,
            "arg0": None,
        }
        self.assertEqual(self.call("process/start", start)["processId"], "p1")
        after: int | None = None
        chunks: list[str] = []
        exit_code: Any = None
        for _ in range(10):
            read = self.call(
                "process/read", {"processId": "p1", "afterSeq": after, "maxBytes": 65536, "waitMs": 250}
            )
            chunks += [c["chunk"] for c in read["chunks"] if c["stream"] == "stdout"]
            after = read["nextSeq"] - 1
            if read["closed"]:
                exit_code = read["exitCode"]
                break
        self.assertEqual((chunks, exit_code), (["aGkK"], 0))

    def test_3_mib_round_trip(self) -> None:
        """
        A 3 MiB C{fs/writeFile} and C{fs/readFile} round trip, segmented both ways.
        """
        data = os.urandom(3 * MIB)
        encoded = base64.b64encode(data).decode()
        self.assertEqual(self.call("fs/writeFile", {"path": "file:///a.bin", "dataBase64": encoded}), {})
        self.assertEqual((self.root / "a.bin").read_bytes(), data)
        read = self.call("fs/readFile", {"path": "file:///a.bin"})
        self.assertEqual(base64.b64decode(read["dataBase64"]), data)
        self.assertEqual(
            [(index, count) for _, index, count, _ in self.gateway.streams[0].data_frames[2:]],
            [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (0, 1)],
        )

    def test_error_text(self) -> None:
        """
        An exec-server error becomes C{<method>: <message> (code=<code>)}.
        """
        d = self.client.call("fs/readFile", {"path": "file:///missing"})
        self.assertEqual(
            str(self.failureResultOf(d, CallError).value),
            "fs/readFile: No such file or directory (os error 2) (code=-32004)",
        )

    def test_close_ends_exec_server(self) -> None:
        """
        Closing the client ends the stream's exec-server and its processes.
        """
        start = {
            "processId": "s",
            "argv": ["sleep", "100"],
            "cwd": "file:///",
            "env": {},
            "tty": False,
            "pipeStdin": False,
            "arg0": None,
        }
        self.call("process/start", start)
        [server] = self.servers
        self.assertTrue(server.processes["s"].running)
        self.client.close()
        self.assertTrue(server.ended)
        self.assertFalse(server.processes["s"].running)

    def test_exec_server_exit_resets(self) -> None:
        """
        An exec-server that exits resets the stream: the client ends with C{relay reset:
        exec-server exited: 0}.
        """
        self.servers[0].close()
        self.assertEqual(self.client.ended, "relay reset: exec-server exited: 0")


# -------------------------------------------------------------------------------------------------
# The real exec gateway, a real executor and the pinned codex exec-server


@implementer(IBridgeLink, IBridgeLinkReceiver)
class CountingLink:
    """
    A real link that counts the Data frames of segmented messages in both directions.
    """

    def __init__(self, link: BridgeLink) -> None:
        self.link = link
        self.segments_out = 0
        self.segments_in = 0
        self.receiver: IBridgeLinkReceiver | None = None

    def attach(self, receiver: IBridgeLinkReceiver) -> None:
        self.receiver = receiver
        self.link.attach(self)

    def send_frame(self, frame: bytes) -> None:
        if _segment_count(frame) > 1:
            self.segments_out += 1
        self.link.send_frame(frame)

    def close(self, code: int, reason: str) -> None:
        self.link.close(code, reason)

    def frame_received(self, frame: bytes) -> None:
        if _segment_count(frame) > 1:
            self.segments_in += 1
        assert self.receiver is not None
        self.receiver.frame_received(frame)

    def link_lost(self, code: int, reason: str) -> None:
        assert self.receiver is not None
        self.receiver.link_lost(code, reason)


def _segment_count(frame: bytes) -> int:
    decoded = relayframe.decode(frame)
    return decoded.data.segment_count if decoded.WhichOneof("body") == "data" else 0


def real_pool(
    case: ExecutorCase, tokens: FakeCapTokens, heartbeat_interval: float = 60.0
) -> tuple[BridgePool, list[CountingLink]]:
    """
    A pool dialling C{case}'s gateway with C{tokens}; at the end of the test it is closed and its
    websockets are awaited.
    """
    assert case.gateway.port is not None
    links: list[CountingLink] = []

    async def connect(url: str, token: str, user_agent: str) -> IBridgeLink:
        link = await connect_link(reactor, url, token, user_agent)
        assert isinstance(link, BridgeLink)
        counting = CountingLink(link)
        links.append(counting)
        return counting

    dialer = BridgeDialer(
        reactor,
        f"ws://127.0.0.1:{case.gateway.port}/bridge",
        "codexgw-env-mcp",
        tokens,
        connect=lambda url, token, ua: Deferred.fromCoroutine(connect(url, token, ua)),
        heartbeat_interval=heartbeat_interval,
    )
    pool = BridgePool(dialer.dial)

    async def close() -> None:
        pool.close()
        for link in links:
            await bounded(link.link.closed, WAIT, "bridge websocket closed")

    case.addCleanup(close)
    return pool, links


class RealExecutorTests(ExecutorCase):
    """
    The bridge client against the real exec gateway, a registered and bound executor and the
    pinned codex exec-server.
    """

    timeout = 120

    async def test_echo_and_3_mib_round_trip(self) -> None:
        """
        Through C{/bridge/<exe_id>}: C{initialize}, C{process/start} of C{/bin/echo hi} read with the
        polling rule gives C{aGkK} and exit code 0; a 3 MiB C{fs/writeFile} and C{fs/readFile}
        round trip is byte-exact, segmented both ways.
        """
        _, exe_id, workspace = await self.live_executor()
        pool, links = real_pool(self, FakeCapTokens([mint_cap(workspace)]))
        client = await pool.get(exe_id)
        started = await client.call(
            "process/start",
            {
                "processId": "p1",
                "argv": ["/bin/echo", "hi"],
                "cwd": "file:///tmp",
                "env": {"PATH": "/usr/bin:/bin"},
                "tty": False,
                "pipeStdin": False,
                "arg0": None,
            },
        )
        self.assertEqual(started["processId"], "p1")
        after: int | None = None
        chunks: list[str] = []
        exit_code: Any = None
        for _ in range(40):
            read = await client.call(
                "process/read", {"processId": "p1", "afterSeq": after, "maxBytes": 65536, "waitMs": 250}
            )
            chunks += [c["chunk"] for c in read["chunks"] if c["stream"] == "stdout"]
            after = read["nextSeq"] - 1
            if read["exited"]:
                exit_code = read["exitCode"]
                break
        self.assertEqual((chunks, exit_code), (["aGkK"], 0))

        data = os.urandom(3 * MIB)
        target = Path(self.mktemp()).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        uri = target.as_uri()
        await client.call("fs/writeFile", {"path": uri, "dataBase64": base64.b64encode(data).decode()})
        self.assertEqual(target.read_bytes(), data)
        read_back = await client.call("fs/readFile", {"path": uri})
        self.assertEqual(base64.b64decode(read_back["dataBase64"]), data)
        [link] = links
        # 4 MiB of base64 in each direction: at least 4 segments each way.
        self.assertGreaterEqual(link.segments_out, 4)
        self.assertGreaterEqual(link.segments_in, 4)
        self.assertIs(await pool.get(exe_id), client)

    async def test_dial_errors(self) -> None:
        """
        Criterion 8 on the real gateway: an expired token is renewed once and the retry succeeds; a
        bound executor that is not connected is C{bridge dial: HTTP 503: executor not connected};
        a closed port is C{bridge dial: …}.
        """
        _, exe_id, workspace = await self.live_executor()
        tokens = FakeCapTokens([mint_cap(workspace, ttl=-10), mint_cap(workspace)])
        pool, _ = real_pool(self, tokens)
        client = await pool.get(exe_id)
        self.assertIsNone(client.ended)
        self.assertEqual(tokens.calls, [False, True])

        offline, _, _ = await self.registered()
        # Bound to another workspace than the token's: the ownership check refuses first.
        try:
            await pool.get(offline)
        except DialError as e:
            self.assertEqual(str(e), "bridge dial: HTTP 403: exe_id not in workspace")
        else:
            self.fail("dial to a foreign executor succeeded")
        bound = await self.api.bind(workspace, offline, "offline-box")
        self.assertEqual(bound.status, 201, bound)
        try:
            await pool.get(offline)
        except DialError as e:
            self.assertEqual(str(e), "bridge dial: HTTP 503: executor not connected")
        else:
            self.fail("dial to an offline executor succeeded")

        closed = BridgeDialer(reactor, f"ws://127.0.0.1:{free_port()}/bridge", "codexgw-env-mcp", tokens)
        try:
            await closed.dial(exe_id)
        except DialError as e:
            self.assertTrue(str(e).startswith("bridge dial: "), str(e))
        else:
            self.fail("dial to a closed port succeeded")


class IdleBridgeTests(ExecutorCase):
    """
    Heartbeats against the real gateway's idle reaper (C{CXG_BRIDGE_IDLE_TIMEOUT=2s}).
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's gateway, which reaps bridges idle for 2 s.
        """
        self.clients = Clients()
        self.addCleanup(self.clients.cleanup)
        shared = SharedGateway.for_class(
            type(self),
            "sqlite",
            {"CXG_BRIDGE_IDLE_TIMEOUT": "2s"},
            Path(self.mktemp()).parent / "gateway",
        )
        self.addCleanup(shared.release)
        self.gateway = await shared.acquire()
        self.api = self.http(self.gateway)

    async def test_heartbeats_keep_stream(self) -> None:
        """
        With a live session and heartbeats every second, a stream is still usable after 5 s without
        calls; a stream without sessions is reset C{idle-timeout} meanwhile, and the pool then dials
        a new one.
        """
        _, exe_id, workspace = await self.live_executor()
        tokens = FakeCapTokens([mint_cap(workspace)])
        kept_pool, _ = real_pool(self, tokens, heartbeat_interval=1.0)
        idle_pool, _ = real_pool(self, tokens)
        kept = cast(BridgeClient, await kept_pool.get(exe_id))
        idle = cast(BridgeClient, await idle_pool.get(exe_id))
        kept.session_opened()
        self.assertEqual(
            await bounded(idle.when_ended(), 10, "idle stream reset"), "relay reset: idle-timeout"
        )
        await bounded(deferLater(reactor, 5.0 - 2.0), 10, "quiet time")
        self.assertIsNone(kept.ended)
        metadata = await kept.call("fs/getMetadata", {"path": "file:///tmp"})
        self.assertTrue(metadata["isDirectory"])
        again = cast(BridgeClient, await idle_pool.get(exe_id))
        self.assertNotEqual(again.stream_id, idle.stream_id)
        kept.session_closed()
