"""
Tests for L{codexgw.appgw.proxy}: the TUI websocket proxy (C{app-gateway.md} §7, acceptance items
18–27).

Two tiers:
 - L{UnitTests}: one L{TUIProxyProtocol} over a L{StringTransport}, its timers on a L{Clock}, a
   L{FakeSupervisor} and a recording dialer whose links are L{FakeChildLink}s. The TUI's side is raw
   websocket frames, so every byte the proxy writes is checked, and time (pings, close timeouts) is
   the test's.
 - L{IntegrationTests}: the real reactor on 127.0.0.1: a C{twisted.web} site serving the proxy's
   resource for a fixed workspace, a L{FakeSupervisor} pointing at an in-process L{FakeAppServer}, the
   real app-server dialer, and Autobahn clients as TUIs. Every wait is bounded and every connection is
   closed (and waited for) in cleanup.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from autobahn.websocket.types import ConnectionResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.appgw import proxy
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.proxy import (
    ChildLink,
    IChildLink,
    IChildReceiver,
    TUIProxyFactory,
    TUIProxyProtocol,
    dial_child,
)
from codexgw.appgw.rpcpolicy import (
    APPROVAL_REPLIES,
    HOST_CONFIG_MESSAGE,
    LOCAL_IO_MESSAGE,
    LOCAL_IO_METHODS,
    error_reply,
    judge_client_message,
)
from codexgw.appgw.supervision import EnsureError, IAttachment, SpawnCapacityError
from codexgw.testing.fakeappserver import FakeAppServer, FakeAppServerConnection, emit_payload
from codexgw.testing.fakesupervisor import FakeSupervisor
from tests.appgw.stubhttp import LogCollector

reactor: Any = global_reactor

MiB = 1024 * 1024
WORKSPACE = "ws_a"

#: The exact §7.3 replies for id 1.
APPROVAL_BYTES = {
    method: b'{"jsonrpc":"2.0","id":1,"result":'
    + json.dumps(result, separators=(",", ":")).encode()
    + b"}"
    for method, result in APPROVAL_REPLIES.items()
}


def encode(message: object) -> bytes:
    """
    C{message} as compact JSON bytes.
    """
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Unit tier: raw frames over a StringTransport


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """
    One final client frame (masked with a zero key, so the payload stays readable).
    """
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """
    Split unmasked server frames into C{(opcode, payload)}.
    """
    frames = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        frames.append((opcode, data[i : i + n]))
        i += n
    return frames


def close_payload(code: int, reason: str) -> bytes:
    """
    The payload of a close frame.
    """
    return code.to_bytes(2, "big") + reason.encode()


HANDSHAKE_HEADERS = (
    (b"Host", b"127.0.0.1:8086"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
    (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
    (b"x-codex-app-server-compression", b"zstd"),
    (b"Authorization", b"Bearer secret-token"),
)


class FakeChannel:
    """
    The HTTP channel of an upgrade request, as L{WebSocketResource} and the proxy's resource use it.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.timeouts: list[float | None] = []

    def setTimeout(self, timeout: float | None) -> None:
        """
        Record the idle timeout set.
        """
        self.timeouts.append(timeout)


class UpgradeRequest:
    """
    The parts of a C{twisted.web} request that an Autobahn upgrade reads.
    """

    def __init__(self, transport: Any) -> None:
        self.channel: FakeChannel | None = FakeChannel(transport)
        self.transport = transport
        self.method = b"GET"
        self.uri = b"/"
        self.requestHeaders = Headers()
        for name, value in HANDSHAKE_HEADERS:
            self.requestHeaders.addRawHeader(name, value)
        self.content = BytesIO(b"")


@implementer(IChildLink)
class FakeChildLink:
    """
    An L{IChildLink} that records what the proxy sends and how it closes.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.closes: list[tuple[int, str]] = []

    def send(self, payload: bytes, is_binary: bool) -> None:
        """
        See L{IChildLink.send}: dropped once closing, as the real link does.
        """
        if not self.closes:
            self.sent.append((payload, is_binary))

    def close(self, code: int, reason: str) -> None:
        """
        See L{IChildLink.close}.
        """
        self.closes.append((code, reason))


@dataclass
class Dial:
    """
    One call of the recording dialer.
    """

    url: str
    receiver: IChildReceiver
    result: Deferred[IChildLink]


@dataclass
class UnitTUI:
    """
    One TUI connection of the unit tier: its protocol, its transport and what it saw.
    """

    protocol: TUIProxyProtocol
    transport: StringTransport
    request: UpgradeRequest
    closed_calls: list[None] = field(default_factory=list)
    offset: int = 0
    response: bytes = b""

    def frames(self) -> list[tuple[int, bytes]]:
        """
        The frames written to the TUI since the last call.
        """
        data = self.transport.value()
        new, self.offset = data[self.offset :], len(data)
        return server_frames(new)

    def messages(self) -> list[tuple[bytes, bool]]:
        """
        The data messages written to the TUI since the last call.
        """
        return [(payload, opcode == 2) for opcode, payload in self.frames() if opcode in (1, 2)]

    def send(self, payload: bytes, binary: bool = False) -> None:
        """
        The TUI sends one message.
        """
        self.protocol.dataReceived(client_frame(payload, 2 if binary else 1))

    def send_close(self, code: int, reason: str = "") -> None:
        """
        The TUI starts a closing handshake.
        """
        self.protocol.dataReceived(client_frame(close_payload(code, reason), 8))

    def lose(self) -> None:
        """
        The TCP connection ends.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))


class UnitHarness:
    """
    A L{TUIProxyFactory} on a L{Clock} with a L{FakeSupervisor} and a recording dialer.
    """

    def __init__(
        self, client_buffer_bytes: int = 1 * MiB, ping_interval: float = 30.0, ping_timeout: float = 10.0
    ) -> None:
        self.clock = Clock()
        self.supervisor = FakeSupervisor("ws://127.0.0.1:4500")
        self.metrics = AppMetrics()
        self.dials: list[Dial] = []
        self.factory = TUIProxyFactory(
            self.supervisor,
            self.metrics,
            self.clock,
            client_buffer_bytes,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            dial=self._dial,
        )

    def _dial(self, url: str, receiver: IChildReceiver) -> Deferred[IChildLink]:
        result: Deferred[IChildLink] = Deferred()
        self.dials.append(Dial(url, receiver, result))
        return result

    def connect(self, workspace: str = WORKSPACE) -> UnitTUI:
        """
        Upgrade one request through L{TUIProxyFactory.resource_for}.
        """
        transport = StringTransport()
        transport.protocol = None  # type: ignore[attr-defined]  # WebSocketResource inspects it
        request = UpgradeRequest(transport)
        closed: list[None] = []
        resource = self.factory.resource_for(workspace, lambda: closed.append(None))
        resource.render(cast(Any, request))
        protocol = cast(Any, transport).protocol
        assert isinstance(protocol, TUIProxyProtocol)
        tui = UnitTUI(protocol, transport, request, closed)
        data = transport.value()
        end = data.index(b"\r\n\r\n") + 4
        tui.response, tui.offset = data[:end], end
        return tui

    def link(self, index: int = -1) -> FakeChildLink:
        """
        Complete a dial with a new L{FakeChildLink}.
        """
        link = FakeChildLink()
        self.dials[index].result.callback(link)
        return link

    def pair(self, workspace: str = WORKSPACE) -> tuple[UnitTUI, FakeChildLink]:
        """
        A TUI whose pair is pumping.
        """
        tui = self.connect(workspace)
        return tui, self.link()

    def count(self, name: str, **labels: str) -> float:
        """
        A sample of the metrics registry.
        """
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class UnitTests(SynchronousTestCase):
    """
    L{TUIProxyProtocol} over in-memory transports.
    """

    def setUp(self) -> None:
        """
        Collect the proxy's log events.
        """
        self.logs = LogCollector()
        self.patch(proxy, "log", self.logs.log)

    def test_interfaces(self) -> None:
        """
        The proxy protocol is an L{IAttachment} and an L{IChildReceiver}; the real link and the fake
        are L{IChildLink}s.
        """
        h = UnitHarness()
        tui, _ = h.pair()
        verifyObject(IAttachment, tui.protocol)
        verifyObject(IChildReceiver, tui.protocol)
        verifyObject(IChildLink, FakeChildLink())
        verifyObject(IChildLink, ChildLink())

    def test_upgrade_response(self) -> None:
        """
        The upgrade answers 101 with no permessage-deflate (offered), no subprotocol, no compression
        header and no C{Server}; the HTTP channel's idle timeout is switched off.
        """
        h = UnitHarness()
        tui = h.connect()
        head = tui.response.lower()
        self.assertTrue(head.startswith(b"http/1.1 101"))
        for absent in (b"sec-websocket-extensions", b"sec-websocket-protocol", b"x-codex", b"server:"):
            self.assertNotIn(absent, head)
        assert tui.request.channel is not None
        self.assertEqual(tui.request.channel.timeouts, [None])

    def test_held_until_pumping(self) -> None:
        """
        Until the app-server link is attached the TUI's messages wait, in order; the dial goes to
        C{<ws_url>/}.
        """
        h = UnitHarness()
        tui = h.connect()
        self.assertEqual(h.supervisor.ensures, [WORKSPACE])
        self.assertEqual([d.url for d in h.dials], ["ws://127.0.0.1:4500/"])
        tui.send(b"one")
        tui.send(b"\x00two", binary=True)
        tui.send(b'{"id":1,"method":"initialize"}')
        self.assertEqual(h.supervisor.touches[WORKSPACE], 1)  # the ensure only
        link = h.link()
        self.assertEqual(
            link.sent, [(b"one", False), (b"\x00two", True), (b'{"id":1,"method":"initialize"}', False)]
        )
        self.assertEqual(h.supervisor.attached(WORKSPACE), [tui.protocol])
        self.assertEqual(h.factory.open_connections, 1)
        self.assertEqual(h.count("codexgw_tui_connections"), 1)

    def test_hold_limit(self) -> None:
        """
        More than 1 MiB held while the pair is set up stops reading the TUI until the pump runs.
        """
        h = UnitHarness()
        tui = h.connect()
        tui.send(b"a" * (512 * 1024), binary=True)
        tui.send(b"b" * (512 * 1024), binary=True)
        self.assertEqual(tui.transport.producerState, "producing")
        tui.send(b"c", binary=True)
        self.assertEqual(tui.transport.producerState, "paused")
        link = h.link()
        self.assertEqual([len(p) for p, _ in link.sent], [512 * 1024, 512 * 1024, 1])
        self.assertEqual(tui.transport.producerState, "producing")

    @given(
        st.lists(
            st.tuples(st.binary(max_size=300), st.just(True))
            | st.tuples(st.text(max_size=100).map(str.encode), st.just(False))
            | st.tuples(
                st.sampled_from(
                    [
                        b'{"id":1,"method":"fs/readFile"}',
                        b'[{"id":1,"method":"initialize"}]',
                        b'{"id":1,"method":"initialize","id":2}',
                        b'{"id":"x","method":"thread/start","params":{"config":{"hooks":1}}}',
                        b' {"id":2, "method" : "turn/start", "params":{"input":[]}} ',
                    ]
                ),
                st.booleans(),
            ),
            max_size=8,
        )
    )
    @settings(max_examples=150, deadline=None)
    def test_forwarded_bytes_identical(self, messages: list[tuple[bytes, bool]]) -> None:
        """
        Every message the policy forwards reaches the app-server as one message of the same type with
        the same bytes, in order; nothing else does.
        """
        h = UnitHarness()
        tui, link = h.pair()
        for payload, binary in messages:
            tui.send(payload, binary)
        expected = [(p, b) for p, b in messages if judge_client_message(p).action == "forward"]
        self.assertEqual(link.sent, expected)
        self.assertEqual(h.supervisor.touches[WORKSPACE], 1 + len(messages))
        self.assertEqual(h.count("codexgw_tui_messages_total", direction="client"), len(messages))

    def test_blocked_request(self) -> None:
        """
        A local-IO request is answered to the TUI with the exact reply and never reaches the app-server;
        a blocked notification is dropped silently; both are counted and logged.
        """
        h = UnitHarness()
        tui, link = h.pair()
        tui.send(b'{"id":7,"method":"command/exec","params":{"command":["touch","/tmp/x"]}}')
        tui.send(b'{"method":"fs/remove","params":{}}')
        tui.send(b'{"id":8,"method":"plugin/install","params":{}}')
        self.assertEqual(link.sent, [])
        self.assertEqual(
            tui.messages(),
            [
                (error_reply(7, -32601, LOCAL_IO_MESSAGE), False),
                (error_reply(8, -32601, HOST_CONFIG_MESSAGE), False),
            ],
        )
        self.assertEqual(h.count("codexgw_rpc_blocked_total", reason="local_io"), 2)
        self.assertEqual(h.count("codexgw_rpc_blocked_total", reason="host_config"), 1)
        blocked = [e for e in self.logs.events if str(e.get("log_format")).startswith("rpc blocked")]
        self.assertEqual(
            [(e["method"], e["reason"]) for e in blocked],
            [("command/exec", "local_io"), ("fs/remove", "local_io"), ("plugin/install", "host_config")],
        )

    def test_dropped_messages_warned(self) -> None:
        """
        A batch and a duplicated key are dropped with a warning, and still count as activity.
        """
        h = UnitHarness()
        tui, link = h.pair()
        tui.send(b'[{"id":1,"method":"initialize"}]')
        tui.send(b'{"id":1,"method":"initialize","method":"fs/readFile"}')
        self.assertEqual(link.sent, [])
        self.assertEqual(tui.messages(), [])
        warnings = [e for e in self.logs.events if e["log_level"].name == "warn"]
        self.assertEqual([e["why"] for e in warnings], ["batch", "duplicate key"])
        self.assertEqual(h.count("codexgw_tui_messages_total", direction="client"), 2)

    def test_approval_auto_reply(self) -> None:
        """
        An approval request from the app-server is answered to it and never reaches the TUI; the same
        method as a notification does.
        """
        h = UnitHarness()
        tui, link = h.pair()
        receiver = h.dials[0].receiver
        for method in APPROVAL_REPLIES:
            receiver.child_message(encode({"id": 1, "method": method, "params": {}}), False)
        self.assertEqual(link.sent, [(APPROVAL_BYTES[m], False) for m in APPROVAL_REPLIES])
        self.assertEqual(tui.messages(), [])
        self.assertEqual(h.count("codexgw_approvals_auto_replied_total", path="tui"), 7)
        notification = encode({"method": "execCommandApproval", "params": {}})
        receiver.child_message(notification, False)
        receiver.child_message(b"\x01\x02", True)
        self.assertEqual(tui.messages(), [(notification, False), (b"\x01\x02", True)])
        self.assertEqual(h.count("codexgw_tui_messages_total", direction="server"), 9)
        self.assertEqual(h.supervisor.touches[WORKSPACE], 1 + 9)

    def test_backlog(self) -> None:
        """
        While the TUI's transport has paused the proxy, app-server messages wait in the backlog; when it
        resumes them they go out in order.
        """
        h = UnitHarness()
        tui, _ = h.pair()
        receiver = h.dials[0].receiver
        tui.protocol.pauseProducing()
        receiver.child_message(b"a", False)
        receiver.child_message(b"b", True)
        self.assertEqual(tui.messages(), [])
        tui.protocol.resumeProducing()
        self.assertEqual(tui.messages(), [(b"a", False), (b"b", True)])
        receiver.child_message(b"c", False)
        self.assertEqual(tui.messages(), [(b"c", False)])

    def test_slow_consumer(self) -> None:
        """
        A backlog over C{client_buffer_bytes} closes the TUI with 1008 C{slow consumer} and the link
        with 1000 C{gateway closing}, drops the backlog, detaches and counts.
        """
        h = UnitHarness(client_buffer_bytes=1000)
        tui, link = h.pair()
        other, other_link = h.pair()
        receiver = h.dials[0].receiver
        tui.protocol.pauseProducing()
        receiver.child_message(b"x" * 600, True)
        receiver.child_message(b"y" * 400, True)
        self.assertEqual(tui.frames(), [])
        receiver.child_message(b"z", True)
        self.assertEqual(tui.frames(), [(8, close_payload(1008, "slow consumer"))])
        self.assertEqual(link.closes, [(1000, "gateway closing")])
        self.assertEqual(h.count("codexgw_tui_slow_consumer_closes_total"), 1)
        self.assertEqual(h.supervisor.attached(WORKSPACE), [other.protocol])
        tui.protocol.resumeProducing()
        self.assertEqual(tui.frames(), [])
        self.assertEqual([e["log_format"] for e in self.logs.events], ["slow consumer"])
        # The other TUI of the workspace is unaffected.
        h.dials[1].receiver.child_message(b"ok", False)
        self.assertEqual(other.messages(), [(b"ok", False)])
        self.assertEqual(other_link.closes, [])

    def test_child_backpressure(self) -> None:
        """
        While the app-server link's transport is full, the TUI is not read.
        """
        h = UnitHarness()
        tui, _ = h.pair()
        receiver = h.dials[0].receiver
        receiver.child_write_paused()
        self.assertEqual(tui.transport.producerState, "paused")
        receiver.child_write_resumed()
        self.assertEqual(tui.transport.producerState, "producing")

    def test_app_server_ended(self) -> None:
        """
        The supervisor stopping the app-server closes the TUI with the end's code and the link with
        1000; the TUI's end is then logged and reported once.
        """
        for reason, close in (
            ("idle", (1001, "app-server stopped")),
            ("shutdown", (1001, "gateway shutting down")),
            ("crash", (1011, "app-server connection lost")),
        ):
            with self.subTest(reason=reason):
                h = UnitHarness()
                tui, link = h.pair()
                h.clock.advance(3)
                h.supervisor.end(WORKSPACE, reason)  # type: ignore[arg-type]
                self.assertEqual(tui.frames(), [(8, close_payload(*close))])
                self.assertEqual(link.closes, [(1000, "gateway closing")])
                tui.send_close(1000)
                tui.lose()
                self.assertEqual(len(tui.closed_calls), 1)
                self.assertEqual(h.factory.open_connections, 0)
                self.assertEqual(h.count("codexgw_tui_connections"), 0)
                ended = [
                    e for e in self.logs.events if str(e.get("log_format")).startswith("proxy ended")
                ][-1]
                self.assertEqual(
                    (ended["workspace_id"], ended["duration"], ended["close_code"]),
                    (WORKSPACE, 3, close[0]),
                )

    def test_tui_closes(self) -> None:
        """
        The TUI closing closes the link with 1000 C{gateway closing} and detaches.
        """
        h = UnitHarness()
        tui, link = h.pair()
        tui.send_close(1000, "bye")
        self.assertEqual(tui.frames(), [(8, close_payload(1000, ""))])
        tui.lose()
        self.assertEqual(link.closes, [(1000, "gateway closing")])
        self.assertEqual(h.supervisor.attached(WORKSPACE), [])
        self.assertEqual(len(tui.closed_calls), 1)
        ended = [e for e in self.logs.events if str(e.get("log_format")).startswith("proxy ended")]
        self.assertEqual([e["close_code"] for e in ended], [1000])

    def test_tui_drops(self) -> None:
        """
        The TUI's connection just ending does the same.
        """
        h = UnitHarness()
        tui, link = h.pair()
        tui.lose()
        self.assertEqual(link.closes, [(1000, "gateway closing")])
        self.assertEqual(h.supervisor.attached(WORKSPACE), [])
        self.assertEqual(tui.protocol.close_code, 1006)

    def test_child_lost(self) -> None:
        """
        The link ending closes the TUI: 1000/1001 → 1001 C{app-server closed}, anything else (a drop,
        an error, our own 1009) → 1011 C{app-server connection lost}.
        """
        for code, close in (
            (1000, (1001, "app-server closed")),
            (1001, (1001, "app-server closed")),
            (1006, (1011, "app-server connection lost")),
            (1011, (1011, "app-server connection lost")),
            (1009, (1011, "app-server connection lost")),
        ):
            with self.subTest(code=code):
                h = UnitHarness()
                tui, link = h.pair()
                h.dials[0].receiver.child_lost(code, "")
                self.assertEqual(tui.frames(), [(8, close_payload(*close))])
                self.assertEqual(link.closes, [])
                self.assertEqual(h.supervisor.attached(WORKSPACE), [])

    def test_ensure_failures(self) -> None:
        """
        Capacity closes the TUI with 1013, any other ensure failure with 1011; nothing is dialed.
        """
        for error, close in (
            (SpawnCapacityError(64), (1013, "spawn capacity reached")),
            (EnsureError("spawn: no such file"), (1011, "subprocess unavailable")),
        ):
            with self.subTest(error=error):
                h = UnitHarness()
                h.supervisor.failures.append(error)
                tui = h.connect()
                self.assertEqual(tui.frames(), [(8, close_payload(*close))])
                self.assertEqual(h.dials, [])
                tui.send_close(close[0])
                tui.lose()
                self.assertEqual(len(tui.closed_calls), 1)

    def test_dial_failed(self) -> None:
        """
        A failed dial closes the TUI with 1011 C{subprocess dial failed} and logs an error.
        """
        h = UnitHarness()
        tui = h.connect()
        h.dials[0].result.errback(proxy.DialFailed("connect: refused"))
        self.assertEqual(tui.frames(), [(8, close_payload(1011, "subprocess dial failed"))])
        errors = [e for e in self.logs.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"], "connect: refused")

    def test_attach_refused(self) -> None:
        """
        An app-server that ended between ensure and attach: the TUI gets 1011, the link 1000.
        """
        h = UnitHarness()
        tui = h.connect()
        h.supervisor.end(WORKSPACE, "crash")
        link = h.link()
        self.assertEqual(tui.frames(), [(8, close_payload(1011, "app-server connection lost"))])
        self.assertEqual(link.closes, [(1000, "gateway closing")])

    def test_ensure_cancelled(self) -> None:
        """
        The TUI leaving while ensure is pending cancels the ensure; nothing is dialed.
        """
        h = UnitHarness()
        h.supervisor.pending = []
        tui = h.connect()
        [(_, ensuring)] = h.supervisor.pending
        tui.send(b"queued")
        tui.lose()
        self.assertTrue(ensuring.called)
        failures: list[Failure] = []
        ensuring.addErrback(failures.append)
        self.assertEqual(failures, [])  # consumed by the proxy, which saw the CancelledError
        h.supervisor.complete_pending()
        self.assertEqual(h.dials, [])
        self.assertEqual(len(tui.closed_calls), 1)

    def test_ensure_cancelled_sees_cancellation(self) -> None:
        """
        The cancellation reaches the supervisor's Deferred as a L{CancelledError}.
        """
        h = UnitHarness()
        seen: list[Failure] = []
        ensuring: Deferred[Any] = Deferred(lambda d: seen.append(Failure(CancelledError())))
        self.patch(h.supervisor, "ensure", lambda workspace_id: ensuring)
        tui = h.connect()
        tui.lose()
        self.assertEqual(len(seen), 1)

    def test_dial_cancelled(self) -> None:
        """
        The TUI leaving while the dial is pending cancels the dial.
        """
        h = UnitHarness()
        cancelled: list[object] = []
        tui = h.connect()
        dial = h.dials[0]
        self.assertFalse(dial.result.called)
        tui.lose()
        self.assertTrue(dial.result.called)
        dial.result.addBoth(cancelled.append)
        self.assertEqual(cancelled, [None])  # the proxy consumed the CancelledError

    def test_ping(self) -> None:
        """
        An idle TUI gets a ping after 30 s and is dropped 10 s later without a pong (item 27).
        """
        h = UnitHarness()
        tui, link = h.pair()
        h.clock.advance(29.9)
        self.assertEqual(tui.frames(), [])
        h.clock.advance(0.2)
        [(opcode, _)] = tui.frames()
        self.assertEqual(opcode, 9)
        h.clock.advance(10)
        self.assertTrue(tui.transport.disconnecting)
        tui.lose()
        self.assertEqual(link.closes, [(1000, "gateway closing")])

    def test_ping_answered(self) -> None:
        """
        A TUI that answers pings stays connected; pings keep coming.
        """
        h = UnitHarness(ping_interval=2.0, ping_timeout=1.0)
        tui, _ = h.pair()
        for _ in range(3):
            h.clock.advance(2)
            [(opcode, payload)] = tui.frames()
            self.assertEqual(opcode, 9)
            tui.protocol.dataReceived(client_frame(payload, 10))
            h.clock.advance(0.5)
        self.assertFalse(tui.transport.disconnecting)

    def test_close_timeout(self) -> None:
        """
        A TUI that never answers our close frame is dropped after 5 s.
        """
        h = UnitHarness()
        tui, _ = h.pair()
        h.supervisor.end(WORKSPACE, "idle")
        h.clock.advance(4.9)
        self.assertFalse(tui.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(tui.transport.disconnecting)

    def test_close_all(self) -> None:
        """
        C{close_all} closes every TUI with the given code and every link with 1000.
        """
        h = UnitHarness()
        pairs = [h.pair(), h.pair("ws_b")]
        self.assertEqual(h.factory.open_connections, 2)
        h.factory.close_all(1001, "gateway shutting down")
        for tui, link in pairs:
            self.assertEqual(tui.frames(), [(8, close_payload(1001, "gateway shutting down"))])
            self.assertEqual(link.closes, [(1000, "gateway closing")])
            tui.send_close(1000)
            tui.lose()
        self.assertEqual(h.factory.open_connections, 0)

    def test_too_big(self) -> None:
        """
        A TUI message over the limit closes the TUI with 1009, then the link with 1000.
        """
        h = UnitHarness()
        tui, link = h.pair()
        too_big = bytes([0x82, 0x80 | 127]) + (64 * MiB + 1).to_bytes(8, "big") + b"\x00" * 4
        tui.protocol.dataReceived(too_big)
        [(opcode, payload)] = tui.frames()
        self.assertEqual((opcode, payload[:2]), (8, (1009).to_bytes(2, "big")))
        tui.lose()
        self.assertEqual(link.closes, [(1000, "gateway closing")])
        self.assertEqual(tui.protocol.close_code, 1009)

    def test_no_connection_to_upgrade(self) -> None:
        """
        A request whose client already left ends at once: C{on_closed} is called.
        """
        h = UnitHarness()
        closed: list[None] = []
        request = UpgradeRequest(StringTransport())
        request.channel = None
        self.assertEqual(
            h.factory.resource_for(WORKSPACE, lambda: closed.append(None)).render(cast(Any, request)),
            b"",
        )
        self.assertEqual(closed, [None])

    def test_on_closed_failure_logged(self) -> None:
        """
        A failing C{on_closed} is logged and does not disturb the teardown.
        """
        h = UnitHarness()
        tui, link = h.pair()

        def fail() -> None:
            raise RuntimeError("agentserver down")

        tui.protocol.on_closed = fail
        tui.lose()
        self.assertEqual(link.closes, [(1000, "gateway closing")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertTrue(any(e.get("log_failure") is not None for e in self.logs.events))


# --------------------------------------------------------------------------------------------------
# Integration tier: real sockets on 127.0.0.1


def digest(payload: bytes) -> bytes:
    """
    What L{TUIClient} keeps of a big payload.
    """
    return b"sha256:" + hashlib.sha256(payload).digest()


def kept(payload: bytes) -> bytes:
    """
    A payload as L{TUIClient} keeps it: small ones whole, big ones as their digest.
    """
    return payload if len(payload) <= 4096 else digest(payload)


class TUIClient(WebSocketClientProtocol):
    """
    A TUI: an Autobahn client that records every message (big ones by digest), pings and its close.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.response: ConnectionResponse | None = None
        self.opened: Deferred[TUIClient] = Deferred()
        self.close_info: tuple[int | None, str | None] | None = None
        self.pings = 0
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        Keep the handshake response.
        """
        self.response = response

    def onOpen(self) -> None:
        """
        Fire L{opened}.
        """
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Record the message.
        """
        self.messages.append((kept(payload), isBinary))
        self._check()

    def onPing(self, payload: bytes) -> None:
        """
        Count the ping and answer it.
        """
        self.pings += 1
        super().onPing(payload)
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Record the close (the server's code when it closed).
        """
        if self.close_info is None:
            self.close_info = (code, reason)
        if not self.opened.called:
            self.opened.errback(ConnectionDone(f"handshake failed: {code} {reason}"))
        self._check()

    def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
        """
        Wait (at most C{timeout} seconds) until C{condition} holds.
        """
        if condition():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        entry = (condition, waiting)
        self._waiters.append(entry)

        def forget(result: object) -> object:
            if entry in self._waiters:
                self._waiters.remove(entry)
            return result

        return waiting.addTimeout(timeout, reactor).addBoth(forget)

    def _check(self) -> None:
        for entry in list(self._waiters):
            condition, waiting = entry
            if condition():
                self._waiters.remove(entry)
                waiting.callback(None)

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """
        Wait for the websocket to end; return its close code and reason.
        """
        await self.until(lambda: self.close_info is not None, timeout)
        assert self.close_info is not None
        return self.close_info

    async def wait_messages(self, count: int, timeout: float = 10.0) -> list[tuple[bytes, bool]]:
        """
        Wait until C{count} messages arrived; return them.
        """
        await self.until(lambda: len(self.messages) >= count, timeout)
        return self.messages[:count]

    def send(self, payload: bytes, binary: bool = False) -> None:
        """
        Send one message.
        """
        self.sendMessage(payload, isBinary=binary)

    def send_json(self, message: object) -> None:
        """
        Send one JSON text message.
        """
        self.send(encode(message))


@implementer(IChildReceiver)
class WatchedReceiver:
    """
    Passes everything to the proxy and remembers when the link ended, for cleanup.
    """

    def __init__(self, inner: IChildReceiver) -> None:
        self.inner = inner
        self.lost: Deferred[None] = Deferred()

    def child_message(self, payload: bytes, is_binary: bool) -> None:
        """
        See L{IChildReceiver.child_message}.
        """
        self.inner.child_message(payload, is_binary)

    def child_write_paused(self) -> None:
        """
        See L{IChildReceiver.child_write_paused}.
        """
        self.inner.child_write_paused()

    def child_write_resumed(self) -> None:
        """
        See L{IChildReceiver.child_write_resumed}.
        """
        self.inner.child_write_resumed()

    def child_lost(self, code: int, reason: str) -> None:
        """
        See L{IChildReceiver.child_lost}.
        """
        self.inner.child_lost(code, reason)
        if not self.lost.called:
            self.lost.callback(None)


class _Root(Resource):
    """
    The web layer stand-in: every request upgrades for the gateway's fixed workspace.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render(self, request: Request) -> bytes | int:
        """
        Hand the request to the proxy.
        """
        self.gateway.upgrades += 1
        resource = self.gateway.factory.resource_for(self.gateway.workspace, self.gateway.tui_ended)
        return cast("bytes | int", resource.render(request))


class Gateway:
    """
    The proxy on a real port, with a L{FakeSupervisor} in front of an in-process L{FakeAppServer}.
    """

    def __init__(self, case: TestCase, client_buffer_bytes: int, ping_interval: float) -> None:
        self.case = case
        self.workspace = WORKSPACE
        self.app = FakeAppServer(reactor)
        self.supervisor = FakeSupervisor()
        self.metrics = AppMetrics()
        self.receivers: list[WatchedReceiver] = []
        self.factory = TUIProxyFactory(
            self.supervisor,
            self.metrics,
            reactor,
            client_buffer_bytes,
            ping_interval=ping_interval,
            dial=self._dial,
        )
        self.clients: list[TUIClient] = []
        self.upgrades = 0
        self.ended = 0
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.port: IListeningPort | None = None
        self.url = ""

    def _dial(self, url: str, receiver: IChildReceiver) -> Deferred[IChildLink]:
        watched = WatchedReceiver(receiver)
        dialing = dial_child(reactor, url, watched)

        def opened(link: IChildLink) -> IChildLink:
            # Runs just before the proxy attaches and starts pumping, in the same call chain.
            self.receivers.append(watched)
            reactor.callLater(0, self._changed)
            return link

        return dialing.addCallback(opened)

    def tui_ended(self) -> None:
        """
        The proxy's C{on_closed}.
        """
        self.ended += 1
        self._changed()

    def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
        """
        Wait (at most C{timeout} seconds) until C{condition} holds, checked whenever the proxy ends a
        TUI or opens an app-server link.
        """
        if condition():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        entry = (condition, waiting)
        self._waiters.append(entry)

        def forget(result: object) -> object:
            if entry in self._waiters:
                self._waiters.remove(entry)
            return result

        return waiting.addTimeout(timeout, reactor).addBoth(forget)

    def _changed(self) -> None:
        for entry in list(self._waiters):
            condition, waiting = entry
            if condition():
                self._waiters.remove(entry)
                waiting.callback(None)

    async def start(self) -> None:
        """
        Listen (the fake app-server and the proxy), and arrange the cleanup.
        """
        await self.app.listen()
        self.supervisor.ws_url = self.app.ws_url
        self.port = reactor.listenTCP(0, Site(_Root(self)), interface="127.0.0.1")
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}"  # type: ignore[union-attr]
        self.case.addCleanup(self.stop)

    async def stop(self) -> None:
        """
        Close every TUI, wait for the proxy to see them end and for every app-server link to end, stop
        the fake and the port.
        """
        for client in self.clients:
            if client.close_info is None:
                client.dropConnection(abort=True)
            await client.closed()
        await self.until(lambda: self.ended == self.upgrades)
        await gatherResults([r.lost for r in self.receivers]).addTimeout(10, reactor)
        await self.app.stop().addTimeout(10, reactor)
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)

    async def tui(
        self, path: str = "/", headers: dict[str, str] | None = None, wait_child: bool = True
    ) -> tuple[TUIClient, FakeAppServerConnection | None]:
        """
        Connect a TUI (offering permessage-deflate, with C{Origin}, C{Authorization} and the
        compression header), and wait for the proxy's app-server connection.
        """
        factory = WebSocketClientFactory(
            self.url + path,
            origin="https://tui.example",
            headers={
                "Authorization": "Bearer tui-secret",
                "x-codex-app-server-compression": "zstd",
                "Cookie": "session=1",
                **(headers or {}),
            },
            reactor=reactor,
        )
        factory.protocol = TUIClient
        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=PerMessageDeflateResponseAccept,
            maxFramePayloadSize=128 * MiB,
            maxMessagePayloadSize=128 * MiB,
            autoPingInterval=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            serverConnectionDropTimeout=0,
            failByDrop=False,
        )
        next_child = quietly(self.app.next_connection())
        links = len(self.receivers)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port, timeout=10)  # type: ignore[union-attr]
        client = cast(TUIClient, await endpoint.connect(factory).addTimeout(10, reactor))
        self.clients.append(client)
        await client.opened.addTimeout(10, reactor)
        if not wait_child:
            next_child.cancel()
            return client, None
        child = await next_child.addTimeout(10, reactor)
        # The fake lists its connection when it answers the handshake; the pair pumps once the
        # proxy's link has read that answer.
        await self.until(lambda: len(self.receivers) > links)
        return client, child

    def count(self, name: str, **labels: str) -> float:
        """
        A sample of the metrics registry.
        """
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def child_closed(
    child: FakeAppServerConnection, timeout: float = 10.0
) -> tuple[int | None, str | None]:
    """
    Wait for the fake's side of a proxy connection to end.
    """
    return await child.closed.addTimeout(timeout, reactor)


def quietly(d: Deferred[Any]) -> Deferred[Any]:
    """
    Swallow a cancellation, for waits abandoned on purpose.
    """
    return d.addErrback(lambda f: f.trap(CancelledError))


class IntegrationTests(TestCase):
    """
    The proxy between Autobahn TUIs and an in-process fake app-server, over real sockets.
    """

    timeout = 120

    async def gateway(self, client_buffer_bytes: int = 64 * MiB, ping_interval: float = 30.0) -> Gateway:
        """
        A started L{Gateway}.
        """
        gateway = Gateway(self, client_buffer_bytes, ping_interval)
        await gateway.start()
        return gateway

    async def test_paths_and_types(self) -> None:
        """
        C{/} and C{/codex-app/ws} both proxy; text and binary messages keep their type and bytes both
        ways (item 18).
        """
        gw = await self.gateway()
        for path in ("/", "/codex-app/ws"):
            tui, child = await gw.tui(path)
            assert child is not None
            sent = [
                (b"plain text", False),
                (bytes(range(256)), True),
                (b'"a json string"', False),
                (b"", True),
            ]
            for payload, binary in sent:
                tui.send(payload, binary)
            self.assertEqual(await tui.wait_messages(4), sent)
            self.assertEqual(child.received, sent)
            request = (
                b'{ "id" : 1 ,"method":"initialize","params":{"clientInfo":{"name":"t","version":"1"}}}'
            )
            tui.send(request)
            await child.wait_for("initialize").addTimeout(10, reactor)
            self.assertEqual(child.received[-1], (request, False))

    async def test_60mib_both_ways(self) -> None:
        """
        A 60 MiB binary message and a 60 MiB text message cross the proxy both ways intact (item 18).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        binary = bytes(range(256)) * (60 * MiB // 256)
        text = b'"' + b"x" * (60 * MiB - 2) + b'"'
        tui.send(binary, True)
        tui.send(text, False)
        messages = await tui.wait_messages(2, timeout=60)
        self.assertEqual(messages, [(digest(binary), True), (digest(text), False)])
        self.assertEqual(
            [(len(p), b) for p, b in child.received], [(len(binary), True), (len(text), False)]
        )
        self.assertEqual(child.received[0][0], binary)

    async def test_handshakes_carry_nothing(self) -> None:
        """
        The app-server handshake carries no C{Authorization}, C{Origin}, compression header,
        extension offer or cookie; the TUI's handshake response has no compression header and no
        permessage-deflate (item 19).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None and tui.response is not None
        self.assertEqual(
            set(child.request_headers),
            {
                "host",
                "upgrade",
                "connection",
                "pragma",
                "cache-control",
                "sec-websocket-key",
                "sec-websocket-version",
            },
        )
        for name in (
            "authorization",
            "origin",
            "x-codex-app-server-compression",
            "cookie",
            "sec-websocket-extensions",
        ):
            self.assertNotIn(name, child.request_headers)
        self.assertEqual(tui.response.extensions, [])
        self.assertIsNone(tui.response.protocol)
        self.assertNotIn("x-codex-app-server-compression", {k.lower() for k in tui.response.headers})

    async def test_approvals(self) -> None:
        """
        Each approval request with id 1 is answered to the app-server with the table's bytes within 2 s
        and never reaches the TUI; the same methods as notifications do (item 20).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        for method in APPROVAL_REPLIES:
            before = len(child.received)
            child.send_json({"id": 1, "method": method, "params": {"threadId": "t"}})
            await child.wait_for_message(
                lambda m: m.get("id") == 1 and "result" in m and m is not None
            ).addTimeout(2, reactor)
            self.assertEqual(child.received[before:], [(APPROVAL_BYTES[method], False)])
            # Forget this reply so the next wait needs a new one.
            child._objects.clear()
        marker = encode({"method": "marker", "params": {}})
        child.send(marker)
        self.assertEqual(await tui.wait_messages(1), [(marker, False)])
        notifications = [encode({"method": m, "params": {}}) for m in APPROVAL_REPLIES]
        for notification in notifications:
            child.send(notification)
        self.assertEqual(
            await tui.wait_messages(8), [(marker, False)] + [(n, False) for n in notifications]
        )
        self.assertEqual(gw.count("codexgw_approvals_auto_replied_total", path="tui"), 7)

    async def test_local_io_blocked(self) -> None:
        """
        Each local-IO method with an integer and a string id gets the exact -32601 reply and never
        reaches the app-server; as notifications they reach nobody (item 21).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        expected = []
        for method in sorted(LOCAL_IO_METHODS):
            for request_id in (11, f"s-{method}"):
                tui.send_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}})
                expected.append((error_reply(request_id, -32601, LOCAL_IO_MESSAGE), False))
            tui.send_json({"jsonrpc": "2.0", "method": method, "params": {}})
        tui.send(b"marker")
        self.assertEqual(await tui.wait_messages(len(expected) + 1), [*expected, (b"marker", False)])
        self.assertEqual(child.received, [(b"marker", False)])
        self.assertEqual(gw.count("codexgw_rpc_blocked_total", reason="local_io"), 42)

    async def test_pass_through(self) -> None:
        """
        The methods the TUI needs reach the app-server unchanged (item 21).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        sent = []
        for i, method in enumerate(
            (
                "initialize",
                "initialized",
                "turn/start",
                "thread/start",
                "thread/resume",
                "thread/list",
                "skills/list",
                "config/read",
            )
        ):
            raw = encode(
                {"jsonrpc": "2.0", "id": i, "method": method, "params": {"config": {"model": "m"}}}
            )
            sent.append((raw, False))
            tui.send(raw)
        tui.send(b"marker")
        await tui.until(lambda: (b"marker", False) in tui.messages)
        self.assertEqual(child.received, [*sent, (b"marker", False)])

    async def test_host_config_and_override(self) -> None:
        """
        Host-config methods get the host-config reply; a forbidden config override gets -32602; an
        allowed one passes (item 22).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        tui.send_json({"jsonrpc": "2.0", "id": 1, "method": "config/value/write", "params": {}})
        tui.send_json(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "thread/start",
                "params": {"config": {"mcp_servers.x.command": "sh"}},
            }
        )
        allowed = encode(
            {"jsonrpc": "2.0", "id": 3, "method": "thread/start", "params": {"config": {"model": "m"}}}
        )
        tui.send(allowed)
        replies = await tui.wait_messages(2)
        self.assertEqual(
            replies,
            [
                (error_reply(1, -32601, HOST_CONFIG_MESSAGE), False),
                (
                    b'{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Config override '
                    b'\\"mcp_servers.x.command\\" is disabled in the cloud deployment."}}',
                    False,
                ),
            ],
        )
        await child.wait_for("thread/start").addTimeout(10, reactor)
        self.assertEqual(child.received, [(allowed, False)])

    async def test_batch_and_duplicate_dropped(self) -> None:
        """
        A JSON array and a message with a duplicated C{method} key are not forwarded (item 23).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        tui.send(b'[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}]')
        tui.send(b'{"jsonrpc":"2.0","id":2,"method":"fs/readFile","method":"initialize","params":{}}')
        tui.send(b"marker")
        self.assertEqual(await tui.wait_messages(1), [(b"marker", False)])
        self.assertEqual(child.received, [(b"marker", False)])

    async def test_tui_message_too_big(self) -> None:
        """
        A TUI message over 64 MiB closes the TUI with 1009 and the app-server connection with 1000
        C{gateway closing} (item 24).
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        tui.send(b"\x00" * (64 * MiB + 1), True)
        code, _ = await tui.closed(timeout=30)
        self.assertEqual(code, 1009)
        self.assertEqual(await child_closed(child), (1000, "gateway closing"))
        self.assertEqual(child.received, [])

    async def test_child_message_too_big(self) -> None:
        """
        An app-server message over 64 MiB closes the app-server connection with 1009 and the TUI with
        1011 C{app-server connection lost}.
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        tui.send_json(
            {
                "id": 1,
                "method": "fake/emit",
                "params": {"count": 1, "size": 64 * MiB + 1, "binary": True},
            }
        )
        self.assertEqual(await tui.closed(timeout=30), (1011, "app-server connection lost"))
        code, _ = await child_closed(child, 30)
        self.assertEqual(code, 1009)

    async def test_slow_consumer(self) -> None:
        """
        One TUI stops reading while the fake app-server sends 200 MiB to every connection: that TUI is
        closed with 1008 C{slow consumer}, the other receives everything, and the fake's sends never
        wait more than 1 s (item 25).
        """
        gw = await self.gateway(client_buffer_bytes=1 * MiB)
        slow, slow_child = await gw.tui()
        fast, fast_child = await gw.tui()
        assert slow_child is not None and fast_child is not None
        cast(Any, slow.transport).pauseProducing()
        size, count = 64 * 1024, 3200
        fast.send_json(
            {
                "id": 1,
                "method": "fake/emit",
                "params": {"count": count, "size": size, "binary": True, "all": True},
            }
        )
        self.assertEqual(await child_closed(slow_child, 60), (1000, "gateway closing"))
        # Read now: a pause still under way when the connection ended would otherwise keep growing.
        slow_pause = slow_child.max_write_pause_seconds
        cast(Any, slow.transport).resumeProducing()
        self.assertEqual(await slow.closed(), (1008, "slow consumer"))
        messages = await fast.wait_messages(count + 1, timeout=90)
        payload = emit_payload(size, True)
        self.assertEqual(messages[:count], [(digest(payload), True)] * count)
        self.assertEqual(json.loads(messages[count][0]), {"id": 1, "result": {"sent": count}})
        self.assertLess(slow_pause, 1.0)
        self.assertLess(fast_child.max_write_pause_seconds, 1.0)
        self.assertEqual(gw.count("codexgw_tui_slow_consumer_closes_total"), 1)
        self.assertIsNone(fast.close_info)

    async def test_ensure_failures(self) -> None:
        """
        An ensure failure closes the TUI with 1011 C{subprocess unavailable}; capacity with 1013
        C{spawn capacity reached} (item 26).
        """
        gw = await self.gateway()
        gw.supervisor.failures.append(EnsureError("spawn: boom"))
        tui, _ = await gw.tui(wait_child=False)
        self.assertEqual(await tui.closed(), (1011, "subprocess unavailable"))
        gw.supervisor.failures.append(SpawnCapacityError(64))
        tui, _ = await gw.tui(wait_child=False)
        self.assertEqual(await tui.closed(), (1013, "spawn capacity reached"))
        self.assertEqual(gw.app.connections, [])

    async def test_dial_failed(self) -> None:
        """
        An app-server that refuses the connection closes the TUI with 1011 C{subprocess dial failed}.
        """
        gw = await self.gateway()
        closed_port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number = closed_port.getHost().port
        await closed_port.stopListening()
        gw.supervisor.ws_url = f"ws://127.0.0.1:{number}"
        tui, _ = await gw.tui(wait_child=False)
        self.assertEqual(await tui.closed(), (1011, "subprocess dial failed"))

    async def test_ping(self) -> None:
        """
        With the ping interval injected (1 s) an idle TUI gets a ping (item 27).
        """
        gw = await self.gateway(ping_interval=1.0)
        tui, _ = await gw.tui()
        await tui.until(lambda: tui.pings >= 2, timeout=5)

    async def test_app_server_stopped(self) -> None:
        """
        The supervisor stopping the app-server closes the TUI with 1001 C{app-server stopped} and the
        app-server connection with 1000 C{gateway closing}.
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        gw.supervisor.end(WORKSPACE, "idle")
        self.assertEqual(await tui.closed(), (1001, "app-server stopped"))
        self.assertEqual(await child_closed(child), (1000, "gateway closing"))

    async def test_child_drops(self) -> None:
        """
        The app-server connection dropping closes the TUI with 1011 C{app-server connection lost}.
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        child.drop()
        self.assertEqual(await tui.closed(), (1011, "app-server connection lost"))
        self.assertEqual(gw.supervisor.attached(WORKSPACE), [])

    async def test_child_closes(self) -> None:
        """
        The app-server closing normally (1000 or 1001) closes the TUI with 1001 C{app-server closed}.
        """
        gw = await self.gateway()
        for code in (1000, 1001):
            tui, child = await gw.tui()
            assert child is not None
            child.close(code, "bye")
            self.assertEqual(await tui.closed(), (1001, "app-server closed"))

    async def test_tui_closes(self) -> None:
        """
        The TUI closing closes the app-server connection with 1000 C{gateway closing}; the web layer's
        C{on_closed} runs once; the gauge returns to 0.
        """
        gw = await self.gateway()
        tui, child = await gw.tui()
        assert child is not None
        self.assertEqual(gw.count("codexgw_tui_connections"), 1)
        tui.sendClose(1000, "bye")
        self.assertEqual(await child_closed(child), (1000, "gateway closing"))
        await tui.closed()
        await gw.until(lambda: gw.ended == 1)
        self.assertEqual(gw.count("codexgw_tui_connections"), 0)
        self.assertEqual(gw.supervisor.attached(WORKSPACE), [])

    async def test_ensure_pending_then_tui_leaves(self) -> None:
        """
        Messages sent while ensure is pending arrive in order once it completes; a TUI that leaves
        while it is pending cancels it and nothing is dialed.
        """
        gw = await self.gateway()
        gw.supervisor.pending = []
        tui, _ = await gw.tui(wait_child=False)
        for i in range(5):
            tui.send(b"m%d" % i)
        await tui.until(lambda: bool(gw.supervisor.pending))
        next_child = gw.app.next_connection()
        gw.supervisor.complete_pending()
        child = await next_child.addTimeout(10, reactor)
        await tui.wait_messages(5)
        self.assertEqual(child.received, [(b"m%d" % i, False) for i in range(5)])
        leaving, _ = await gw.tui(wait_child=False)
        await leaving.until(lambda: bool(gw.supervisor.pending))
        [(_, ensuring)] = gw.supervisor.pending
        leaving.dropConnection(abort=True)
        await leaving.closed()
        await gw.until(lambda: gw.ended == 1)
        self.assertTrue(ensuring.called)
        gw.supervisor.complete_pending()
        self.assertEqual(len(gw.app.connections), 1)

    async def test_close_all(self) -> None:
        """
        C{close_all} closes every TUI with 1001 C{gateway shutting down} and its app-server connection
        with 1000.
        """
        gw = await self.gateway()
        pairs = [await gw.tui(), await gw.tui()]
        self.assertEqual(gw.factory.open_connections, 2)
        gw.factory.close_all(1001, "gateway shutting down")
        for tui, child in pairs:
            assert child is not None
            self.assertEqual(await tui.closed(), (1001, "gateway shutting down"))
            self.assertEqual(await child_closed(child), (1000, "gateway closing"))
