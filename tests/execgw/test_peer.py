"""
Tests for L{codexgw.execgw.peer} and L{codexgw.testing.fakepeer}: the L{IFramePeer} / L{IFrameReceiver}
contract the relay logic is written against (C{exec-gateway.md} §4.2, §4.3, §9.2, §9.4).

One interface-test mixin, L{FramePeerInterfaceTests}, runs against both implementations:
 - L{FakeFramePeer}, the in-memory twin the relay unit tests use;
 - the real Autobahn adapter L{FrameProtocol}, driven over in-memory transports (no sockets, no real
   time): a L{twisted.test.iosim} pump links it to an Autobahn C{WebSocketClientProtocol}, and every
   timer runs on a L{MemoryReactorClock} passed as the factory's C{reactor}.

L{FrameProtocolTests} adds what only the real adapter has: Autobahn's timers (handshake timeouts, pings),
the 1009 limit, the HTTP channel's producer hand-over and the refused permessage-deflate offer.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet import reactor as global_reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw import relayframe
from codexgw.execgw.peer import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    FrameFactory,
    FrameProtocol,
    IFramePeer,
    IFrameReceiver,
)
from codexgw.testing.fakepeer import FakeFramePeer

if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object

#: The frames every delivery test sends: empty, every byte value, a real Resume, and one large enough
#: to need a 64-bit websocket length.
SAMPLE_FRAMES = [
    b"",
    bytes(range(256)),
    relayframe.resume_frame("s1"),
    relayframe.data_frame("s1", 7, b"x" * 70_000),
]


@implementer(IFrameReceiver)
class RecordingReceiver:
    """
    An L{IFrameReceiver} that records every call in order, as C{(kind, *args)} tuples.
    """

    def __init__(self, peer: IFramePeer) -> None:
        self.peer = peer
        self.events: list[tuple[Any, ...]] = []

    def connection_opened(self) -> None:
        self.events.append(("opened",))

    def frame_received(self, frame: bytes) -> None:
        self.events.append(("frame", frame))

    def text_received(self) -> None:
        self.events.append(("text",))

    def write_drained(self) -> None:
        self.events.append(("drained",))

    def connection_lost(self, code: int, reason: str) -> None:
        self.events.append(("lost", code, reason))

    def frames(self) -> list[bytes]:
        """
        The binary messages received, in order.
        """
        return [event[1] for event in self.events if event[0] == "frame"]

    def losses(self) -> list[tuple[int, str]]:
        """
        The C{(code, reason)} of every C{connection_lost} call.
        """
        return [(event[1], event[2]) for event in self.events if event[0] == "lost"]

    def count(self, kind: str) -> int:
        """
        How many calls of C{kind} were made.
        """
        return sum(1 for event in self.events if event[0] == kind)


class PeerHarness(abc.ABC):
    """
    One relay connection under test, with the remote end played by the test.

    @ivar peer: the L{IFramePeer} under test.
    @ivar receiver: the receiver it reports to.
    """

    peer: IFramePeer
    receiver: RecordingReceiver

    @abc.abstractmethod
    def open(self) -> None:
        """
        Complete the websocket handshake.
        """

    @abc.abstractmethod
    def settle(self) -> None:
        """
        Let every byte in flight arrive and every started closing handshake finish.
        """

    @abc.abstractmethod
    def remote_send(self, frame: bytes) -> None:
        """
        The remote end sends one binary message.
        """

    @abc.abstractmethod
    def remote_send_text(self, text: str) -> None:
        """
        The remote end sends one text message.
        """

    @abc.abstractmethod
    def remote_messages(self) -> list[tuple[bool, bytes]]:
        """
        The C{(is_binary, payload)} of every message the remote end has read so far.
        """

    @abc.abstractmethod
    def remote_saw_close(self) -> tuple[int, str] | None:
        """
        The code and reason of the close frame the remote end got, if any.
        """

    @abc.abstractmethod
    def stop_remote_reading(self) -> None:
        """
        The remote end stops reading: what is sent to it from now on stays in the transport.
        """

    @abc.abstractmethod
    def remote_catches_up(self) -> None:
        """
        The remote end reads everything that waited for it.
        """

    @abc.abstractmethod
    def remote_closes(self, code: int, reason: str) -> None:
        """
        The remote end closes the websocket cleanly with C{code} and C{reason}.
        """

    @abc.abstractmethod
    def remote_drops(self) -> None:
        """
        The remote end's TCP connection vanishes without a closing handshake; bytes it had not sent yet
        are lost.
        """


class FakeHarness(PeerHarness):
    """
    L{FakeFramePeer} with the test playing its transport and remote end.
    """

    def __init__(self, open_now: bool = True) -> None:
        self.fake = FakeFramePeer()
        self.peer = self.fake
        self.receiver = RecordingReceiver(self.fake)
        self.fake.attach(self.receiver, open_now=open_now)
        self._read_upto: int | None = None

    def open(self) -> None:
        self.receiver.connection_opened()

    def settle(self) -> None:
        if self.fake.closed_with is not None:
            self.fake.finish_close()

    def remote_send(self, frame: bytes) -> None:
        self.fake.receive(frame)

    def remote_send_text(self, text: str) -> None:
        self.fake.receive_text()

    def remote_messages(self) -> list[tuple[bool, bytes]]:
        return [(True, frame) for frame in self.fake.sent[: self._read_upto]]

    def remote_saw_close(self) -> tuple[int, str] | None:
        return self.fake.closed_with

    def stop_remote_reading(self) -> None:
        self.fake.write_blocked = True
        self._read_upto = len(self.fake.sent)

    def remote_catches_up(self) -> None:
        self._read_upto = None
        self.fake.drain()

    def remote_closes(self, code: int, reason: str) -> None:
        self.fake.lose(code, reason)

    def remote_drops(self) -> None:
        self.fake.lose()


class ServerTransport(iosim.FakeTransport):
    """
    The gateway side of an in-memory connection, behaving like a Twisted TCP transport where the
    adapter depends on it:

     - C{pauseProducing}/C{resumeProducing} stop and restart reading: bytes from the remote end wait;
     - while the remote end does not read, written bytes stay here, and once more than C{bufferSize}
       wait the registered streaming producer is paused; it is resumed when they were all written.

    @ivar remote_reading: whether the remote end reads what this side writes.
    """

    bufferSize = 1024

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol, isServer=True)
        self.remote_reading = True
        self.reading_paused = False
        self.producer_paused = False
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        waiting = sum(len(chunk) for chunk in self.stream)
        if (
            not self.remote_reading
            and self.producer is not None
            and self.streamingProducer
            and not self.producer_paused
            and waiting > self.bufferSize
        ):
            self.producer_paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> Any:
        if not self.remote_reading:
            return None
        data = super().getOutBuffer()
        if self.producer_paused:
            self.producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False
        held, self.held = self.held, []
        for chunk in held:
            self.bufferReceived(chunk)

    def bufferReceived(self, buf: Any) -> None:
        if self.reading_paused:
            self.held.append(buf)
        else:
            super().bufferReceived(buf)


class RecordingClient(WebSocketClientProtocol):
    """
    The remote end: an Autobahn websocket client that records what it gets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bool, bytes]] = []
        self.closes: list[tuple[bool, int | None, str | None]] = []
        self.opened = False
        self.pings = 0

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((isBinary, payload))

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        super().onPing(payload)  # answers with a pong

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closes.append((wasClean, code, reason))


def build(factory: FrameFactory) -> FrameProtocol:
    """
    One server protocol from C{factory}, as Twisted would build it for an accepted connection.
    """
    protocol = factory.buildProtocol(iosim.FakeAddress())
    assert isinstance(protocol, FrameProtocol)
    return protocol


def client_factory(clock: IReactorTime, url: str = "ws://127.0.0.1:6060/bridge/exe_1") -> Any:
    """
    A client factory that schedules nothing: all its timeouts are off, so every timer in a test
    belongs to the server under test.
    """
    factory = WebSocketClientFactory(url, reactor=clock)
    factory.protocol = RecordingClient
    factory.setProtocolOptions(
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        serverConnectionDropTimeout=0,
        autoPingInterval=0,
    )
    return factory


class RealHarness(PeerHarness):
    """
    A L{FrameProtocol} made by a L{FrameFactory} on a L{MemoryReactorClock}, linked through an
    L{iosim} pump to a L{RecordingClient}.
    """

    def __init__(
        self,
        open_now: bool = True,
        max_frame_bytes: int = 1 << 20,
        ping_interval: float = 0.0,
        ping_timeout: float = 0.0,
        client: Any = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.receivers: list[RecordingReceiver] = []
        self.factory = FrameFactory(
            self._make_receiver, max_frame_bytes, ping_interval, ping_timeout, reactor=self.clock
        )
        self.server = build(self.factory)
        self.server_io = ServerTransport(self.server)
        self.client: Any = (
            client if client is not None else client_factory(self.clock).buildProtocol(None)
        )
        self.client_io = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(
            self.server, self.server_io, self.client, self.client_io, greet=open_now, clock=self.clock
        )
        self.peer = self.server
        self.receiver = self.receivers[0]

    def _make_receiver(self, peer: IFramePeer) -> IFrameReceiver:
        receiver = RecordingReceiver(peer)
        self.receivers.append(receiver)
        return receiver

    def open(self) -> None:
        self.pump.flush()

    def settle(self) -> None:
        self.pump.flush()

    def remote_send(self, frame: bytes) -> None:
        self.client.sendMessage(frame, isBinary=True)
        self.pump.flush()

    def remote_send_text(self, text: str) -> None:
        self.client.sendMessage(text.encode("utf-8"), isBinary=False)
        self.pump.flush()

    def remote_messages(self) -> list[tuple[bool, bytes]]:
        return list(self.client.messages)

    def remote_saw_close(self) -> tuple[int, str] | None:
        for clean, code, reason in self.client.closes:
            if clean and code is not None:
                return code, reason or ""
        return None

    def stop_remote_reading(self) -> None:
        self.server_io.remote_reading = False

    def remote_catches_up(self) -> None:
        self.server_io.remote_reading = True
        self.pump.flush()

    def remote_closes(self, code: int, reason: str) -> None:
        self.client.sendClose(code, reason)
        self.pump.flush()

    def remote_drops(self) -> None:
        self.client_io.stream.clear()
        self.client_io.loseConnection()
        self.pump.flush()


class FramePeerInterfaceTests(_MixinBase):
    """
    The L{IFramePeer}/L{IFrameReceiver} contract; subclasses say which implementation runs it.
    """

    def harness(self, open_now: bool = True) -> PeerHarness:
        """
        A fresh connection under test, open unless C{open_now} is false.
        """
        raise NotImplementedError

    def test_provides_interface(self) -> None:
        """
        The peer provides L{IFramePeer} completely, with a text C{peer} and C{pending_bytes} at 0.
        """
        h = self.harness()
        self.assertTrue(verifyObject(IFramePeer, h.peer))
        self.assertIsInstance(h.peer.peer, str)
        self.assertEqual(h.peer.pending_bytes, 0)

    def test_opened_first_and_once(self) -> None:
        """
        C{connection_opened} is reported once, before anything else.
        """
        h = self.harness()
        h.remote_send(b"a")
        self.assertEqual(h.receiver.events[0], ("opened",))
        self.assertEqual(h.receiver.count("opened"), 1)

    def test_send_frame_delivers_one_identical_binary_message(self) -> None:
        """
        Each C{send_frame} reaches the remote end as exactly one binary message with the same bytes,
        in order.
        """
        h = self.harness()
        for frame in SAMPLE_FRAMES:
            h.peer.send_frame(frame)
        h.settle()
        self.assertEqual(h.remote_messages(), [(True, frame) for frame in SAMPLE_FRAMES])

    def test_frame_received_carries_exact_bytes(self) -> None:
        """
        Each binary message from the remote end reaches C{frame_received} once, byte-identical and in
        order.
        """
        h = self.harness()
        for frame in SAMPLE_FRAMES:
            h.remote_send(frame)
        self.assertEqual(h.receiver.frames(), SAMPLE_FRAMES)

    def test_text_received(self) -> None:
        """
        A text message is reported as C{text_received}, never as a frame.
        """
        h = self.harness()
        h.remote_send_text("hello")
        self.assertEqual(h.receiver.count("text"), 1)
        self.assertEqual(h.receiver.frames(), [])

    def test_close_carries_code_and_reason(self) -> None:
        """
        C{close} sends the remote end the given code and reason, for every code the gateway uses, and
        the connection ends reporting that code and reason once.
        """
        for code, reason in [
            (CLOSE_NORMAL, "stream reset"),
            (CLOSE_GOING_AWAY, "gateway shutting down"),
            (CLOSE_PROTOCOL_ERROR, "first frame timeout"),
            (CLOSE_POLICY, "bridge buffer overflow"),
        ]:
            h = self.harness()
            h.peer.close(code, reason)
            h.settle()
            self.assertEqual(h.remote_saw_close(), (code, reason))
            self.assertEqual(h.receiver.losses(), [(code, reason)])

    def test_close_is_idempotent(self) -> None:
        """
        Only the first C{close} counts: the remote end sees its code and reason, and later calls
        change nothing.
        """
        h = self.harness()
        h.peer.close(CLOSE_GOING_AWAY, "first")
        h.peer.close(CLOSE_NORMAL, "second")
        h.settle()
        h.peer.close(CLOSE_POLICY, "third")
        h.settle()
        self.assertEqual(h.remote_saw_close(), (CLOSE_GOING_AWAY, "first"))
        self.assertEqual(h.receiver.losses(), [(CLOSE_GOING_AWAY, "first")])

    def test_send_after_close_dropped(self) -> None:
        """
        Frames sent after C{close}, before or after the connection ended, never reach the remote end.
        """
        h = self.harness()
        h.peer.send_frame(b"before")
        h.peer.close(CLOSE_NORMAL, "done")
        h.peer.send_frame(b"while closing")
        h.settle()
        h.peer.send_frame(b"after")
        h.settle()
        self.assertEqual(h.remote_messages(), [(True, b"before")])

    def test_pause_and_resume_reading(self) -> None:
        """
        After C{pause_reading} the remote end's frames are not delivered; C{resume_reading} delivers
        them, in order.
        """
        h = self.harness()
        h.remote_send(b"one")
        h.peer.pause_reading()
        h.remote_send(b"two")
        h.remote_send(b"three")
        h.settle()
        self.assertEqual(h.receiver.frames(), [b"one"])
        h.peer.resume_reading()
        h.settle()
        self.assertEqual(h.receiver.frames(), [b"one", b"two", b"three"])
        h.remote_send(b"four")
        self.assertEqual(h.receiver.frames()[-1], b"four")

    def test_pending_bytes_grow_and_drain(self) -> None:
        """
        While the remote end does not read, every byte sent counts as pending; when it catches up,
        C{pending_bytes} is 0 again, C{write_drained} is reported, and every frame arrives in order.
        """
        h = self.harness()
        h.peer.send_frame(b"read at once")
        h.settle()
        self.assertEqual(h.peer.pending_bytes, 0)
        h.stop_remote_reading()
        frames = [bytes([n]) * 4096 for n in range(5)]
        seen = []
        for frame in frames:
            h.peer.send_frame(frame)
            seen.append(h.peer.pending_bytes)
        self.assertEqual(seen, [4096 * n for n in range(1, 6)])
        self.assertEqual(h.receiver.count("drained"), 0)
        h.remote_catches_up()
        self.assertEqual(h.peer.pending_bytes, 0)
        self.assertEqual(h.receiver.count("drained"), 1)
        self.assertEqual(h.remote_messages(), [(True, b"read at once"), *((True, f) for f in frames)])

    def test_remote_drop_reported_once(self) -> None:
        """
        A connection that drops without a closing handshake is reported once, with 1006.
        """
        h = self.harness()
        h.remote_drops()
        h.settle()
        h.peer.close(CLOSE_NORMAL, "late")
        h.settle()
        self.assertEqual([code for code, _ in h.receiver.losses()], [CLOSE_ABNORMAL])

    def test_remote_close_reported_once(self) -> None:
        """
        A close started by the remote end is reported once with its code and reason; a later
        C{close} does nothing.
        """
        h = self.harness()
        h.remote_closes(CLOSE_NORMAL, "bye")
        h.peer.close(CLOSE_POLICY, "late")
        h.settle()
        self.assertEqual(h.receiver.losses(), [(CLOSE_NORMAL, "bye")])

    def test_lost_before_handshake(self) -> None:
        """
        A connection that ends before its websocket handshake completed is reported once through
        C{connection_lost}, never through C{connection_opened}.
        """
        h = self.harness(open_now=False)
        h.remote_drops()
        h.settle()
        self.assertEqual(h.receiver.count("opened"), 0)
        self.assertEqual(h.receiver.count("lost"), 1)

    def test_close_before_handshake(self) -> None:
        """
        C{close} before the handshake completed ends the connection: reported once, never opened.
        """
        h = self.harness(open_now=False)
        h.peer.close(CLOSE_NORMAL, "bridge session closed")
        h.settle()
        self.assertEqual(h.receiver.count("opened"), 0)
        self.assertEqual(h.receiver.count("lost"), 1)

    def test_pause_resume_after_lost(self) -> None:
        """
        Flow-control calls on an ended connection are harmless no-ops.
        """
        h = self.harness()
        h.remote_drops()
        h.peer.pause_reading()
        h.peer.resume_reading()
        h.peer.send_frame(b"x")
        self.assertEqual(h.receiver.count("lost"), 1)


class FakeFramePeerTests(FramePeerInterfaceTests, SynchronousTestCase):
    """
    The interface tests against L{FakeFramePeer}.
    """

    def harness(self, open_now: bool = True) -> PeerHarness:
        return FakeHarness(open_now)


class FrameProtocolInterfaceTests(FramePeerInterfaceTests, SynchronousTestCase):
    """
    The interface tests against the real Autobahn adapter over in-memory transports.
    """

    def setUp(self) -> None:
        self._global_calls = set(global_reactor.getDelayedCalls())

    def tearDown(self) -> None:
        new = set(global_reactor.getDelayedCalls()) - self._global_calls
        self.assertEqual(new, set(), "a timer landed on the global reactor")

    def harness(self, open_now: bool = True) -> PeerHarness:
        return RealHarness(open_now)


class FrameProtocolTests(SynchronousTestCase):
    """
    What only the Autobahn adapter has: timers on the factory's reactor, §9.2's limits, and its
    place on the HTTP channel's transport.
    """

    def setUp(self) -> None:
        self._global_calls = set(global_reactor.getDelayedCalls())

    def assertNoGlobalTimers(self) -> None:
        """
        Fail if any delayed call was added to the global reactor since C{setUp}.
        """
        new = set(global_reactor.getDelayedCalls()) - self._global_calls
        self.assertEqual(new, set(), "a timer landed on the global reactor")

    def test_timers_run_on_the_factory_reactor(self) -> None:
        """
        The open-handshake, closing-handshake and ping timers are scheduled on the reactor given to
        the factory, never on the global one.
        """
        h = RealHarness(open_now=False, ping_interval=2, ping_timeout=2)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # open-handshake timeout
        self.assertNoGlobalTimers()
        h.open()
        self.assertEqual(h.receiver.events, [("opened",)])
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # next ping
        h.stop_remote_reading()
        h.peer.close(CLOSE_NORMAL, "stream reset")
        self.assertEqual(len(h.clock.getDelayedCalls()), 2)  # + closing-handshake timeout
        self.assertNoGlobalTimers()
        h.remote_catches_up()
        self.assertEqual(h.receiver.losses(), [(CLOSE_NORMAL, "stream reset")])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertNoGlobalTimers()

    def test_settings(self) -> None:
        """
        The factory sets every §9.2 option explicitly: limits, pings, handshake timeouts, clean 1009
        closes, no compression.
        """
        factory = FrameFactory(RecordingReceiver, 4096, 2.0, 3.0, reactor=MemoryReactorClock())
        self.assertEqual(factory.maxFramePayloadSize, 4096)
        self.assertEqual(factory.maxMessagePayloadSize, 4096)
        self.assertEqual(factory.autoPingInterval, 2.0)
        self.assertEqual(factory.autoPingTimeout, 3.0)
        self.assertEqual(factory.openHandshakeTimeout, 5)
        self.assertEqual(factory.closeHandshakeTimeout, 1)
        self.assertFalse(factory.failByDrop)
        self.assertTrue(factory.utf8validateIncoming)
        no_pings = FrameFactory(RecordingReceiver, 0, 0, 3.0, reactor=MemoryReactorClock())
        self.assertEqual(no_pings.autoPingInterval, 0)
        self.assertEqual(no_pings.autoPingTimeout, 0)
        self.assertEqual(no_pings.maxMessagePayloadSize, 0)

    def test_open_handshake_timeout(self) -> None:
        """
        A client that never completes the handshake is dropped 5 s after connecting (fake clock);
        the receiver hears C{connection_lost} once and never C{connection_opened}.
        """
        h = RealHarness(client=Protocol())
        h.clock.advance(4.9)
        h.settle()
        self.assertEqual(h.receiver.events, [])
        h.clock.advance(0.1)
        h.settle()
        self.assertEqual(h.receiver.count("opened"), 0)
        self.assertEqual([code for code, _ in h.receiver.losses()], [CLOSE_ABNORMAL])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertNoGlobalTimers()

    def test_close_handshake_timeout(self) -> None:
        """
        A remote end that never answers our close frame is dropped 1 s later; the connection ends
        once, reporting the code and reason we closed with.
        """
        h = RealHarness()
        h.stop_remote_reading()
        h.peer.close(CLOSE_POLICY, "bridge buffer overflow")
        h.settle()
        self.assertEqual(h.receiver.count("lost"), 0)
        h.clock.advance(1)
        h.settle()
        self.assertEqual(h.receiver.losses(), [(CLOSE_POLICY, "bridge buffer overflow")])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertNoGlobalTimers()

    def test_message_too_big(self) -> None:
        """
        A message over the frame limit is not delivered; the connection is closed with 1009 and the
        receiver hears 1009 (acceptance items 32 and 49).
        """
        h = RealHarness(max_frame_bytes=100)
        h.remote_send(b"y" * 100)
        h.remote_send(b"z" * 101)
        h.settle()
        self.assertEqual(h.receiver.frames(), [b"y" * 100])
        seen = h.remote_saw_close()
        self.assertEqual(seen[0] if seen is not None else None, CLOSE_TOO_BIG)
        self.assertEqual([code for code, _ in h.receiver.losses()], [CLOSE_TOO_BIG])
        self.assertNoGlobalTimers()

    def test_ping_timeout(self) -> None:
        """
        With pings every 2 s and a 2 s timeout, a remote end that stops answering is dropped within 5 s
        of its last sign of life and reported once with 1006 (acceptance item 33); one that answers
        stays connected.
        """
        h = RealHarness(ping_interval=2, ping_timeout=2)
        for _ in range(10):
            h.clock.advance(1)
            h.settle()
        self.assertEqual(h.receiver.count("lost"), 0)
        h.stop_remote_reading()
        for _ in range(5):
            h.clock.advance(1)
            h.settle()
        self.assertEqual([code for code, _ in h.receiver.losses()], [CLOSE_ABNORMAL])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertNoGlobalTimers()

    def test_deflate_offer_refused(self) -> None:
        """
        A permessage-deflate offer is refused: the connection opens without extensions.
        """
        factory = client_factory(MemoryReactorClock())
        factory.setProtocolOptions(perMessageCompressionOffers=[PerMessageDeflateOffer()])
        h = RealHarness(client=factory.buildProtocol(None))
        self.assertTrue(h.client.opened)
        self.assertEqual(h.client.websocket_extensions_in_use, [])
        self.assertEqual(h.server.websocket_extensions_in_use, [])

    def test_takes_over_the_transport_producer(self) -> None:
        """
        On a transport whose producer is the HTTP channel, the adapter unregisters it and registers
        itself as a streaming producer, so that write-buffer notifications reach it.
        """

        @implementer(IPushProducer)
        class Channel:
            def pauseProducing(self) -> None:
                raise AssertionError("the channel must not be paused any more")

            def resumeProducing(self) -> None:
                raise AssertionError("the channel must not be resumed any more")

            def stopProducing(self) -> None:
                pass

        transport = StringTransport()
        transport.registerProducer(Channel(), True)
        receivers: list[RecordingReceiver] = []

        def make(peer: IFramePeer) -> IFrameReceiver:
            receivers.append(RecordingReceiver(peer))
            return receivers[-1]

        factory = FrameFactory(make, 1024, 0, 0, reactor=MemoryReactorClock())
        protocol = build(factory)
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)
        self.assertEqual(len(receivers), 1)
        self.assertIs(receivers[0].peer, protocol)
        self.assertEqual(protocol.peer, "192.168.1.1:54321")
        protocol.dropConnection(abort=True)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(receivers[0].count("lost"), 1)

    def test_bad_handshake_refused_with_length(self) -> None:
        """
        A request that is not a websocket handshake is refused with an explicit empty body: 426
        without C{Upgrade}, 400 for another broken handshake (§4.2 step 5). The receiver hears
        C{connection_lost} once and never C{connection_opened}.
        """
        for request, status in [
            (b"GET /bridge/exe_1 HTTP/1.1\r\nHost: example\r\n\r\n", b"426"),
            (
                b"GET /bridge/exe_1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
                b"400",
            ),
        ]:
            transport = StringTransport()
            receivers: list[RecordingReceiver] = []

            def make(peer: IFramePeer, receivers: list[RecordingReceiver] = receivers) -> IFrameReceiver:
                receivers.append(RecordingReceiver(peer))
                return receivers[-1]

            factory = FrameFactory(make, 1024, 0, 0, reactor=MemoryReactorClock())
            protocol = build(factory)
            protocol.makeConnection(transport)
            protocol.dataReceived(request)
            response = transport.value()
            self.assertTrue(response.startswith(b"HTTP/1.1 " + status), response)
            self.assertIn(b"Content-Length: 0\r\n", response)
            self.assertTrue(response.endswith(b"\r\n\r\n"), response)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(receivers[0].count("opened"), 0)
            self.assertEqual(receivers[0].count("lost"), 1)
        self.assertNoGlobalTimers()
