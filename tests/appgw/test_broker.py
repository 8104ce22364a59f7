"""
Tests for L{codexgw.appgw.broker}: the Turn API broker's JSON-RPC connection to an app-server
(C{app-gateway.md} §8.3, §8.4; acceptance items 52–58).

The L{Conn} logic runs over L{FakeLink}, an in-memory L{IRPCLink} the test plays the app-server
through, on a L{Clock}; L{WebSocketRPCLink} passes the same link tests over an in-memory connection
(L{twisted.test.iosim}) to an Autobahn server. The socket tests against the fake app-server are in
C{tests.appgw.test_turns}.
"""

from __future__ import annotations

import json
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.appgw.broker import (
    INITIALIZE_REQUEST,
    INITIALIZED_NOTIFICATION,
    BrokerTimeout,
    CapacityExceeded,
    CodexRPCError,
    Conn,
    DialFailed,
    IRPCLink,
    IRPCReceiver,
    RPCLinkFactory,
    SubprocessCrash,
    TransportError,
    WSDisconnect,
    end_error,
    open_conn,
    transport_error,
)
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.supervision import (
    AppServerEnd,
    AppServerHandle,
    EnsureError,
    IAttachment,
    SpawnCapacityError,
    SupervisorStopping,
)
from codexgw.autobahntimers import ReactorTimer
from codexgw.testing.fakesupervisor import FakeSupervisor

JSON = dict[str, Any]


def encode(message: JSON) -> bytes:
    """
    C{message} as compact JSON bytes.
    """
    return json.dumps(message, separators=(",", ":")).encode()


@implementer(IRPCLink)
class FakeLink:
    """
    An in-memory L{IRPCLink}: the test reads what the Conn sent and plays the app-server.

    @ivar sent: every message sent, in order.
    @ivar closed: the C{(code, reason)} of the first C{close}, or C{None}.
    @ivar echo_close: whether C{close} ends the link at once (the peer answering the close).
    """

    def __init__(self, receiver: IRPCReceiver, echo_close: bool = True) -> None:
        """
        @param receiver: told about messages and the end.
        """
        self.receiver = receiver
        self.echo_close = echo_close
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.lost = False

    def send_text(self, payload: bytes) -> None:
        """
        See L{IRPCLink.send_text}.
        """
        if self.closed is None and not self.lost:
            self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IRPCLink.close}.
        """
        if self.closed is not None or self.lost:
            return
        self.closed = (code, reason)
        if self.echo_close:
            self.lose(code, reason)

    # The app-server's side.

    def messages(self) -> list[JSON]:
        """
        The sent messages, decoded.
        """
        return [json.loads(m) for m in self.sent]

    def methods(self) -> list[str | None]:
        """
        The C{method} of every sent message (C{None} for replies).
        """
        return [m.get("method") for m in self.messages()]

    def last(self, method: str) -> JSON:
        """
        The last sent message with C{method}.
        """
        return [m for m in self.messages() if m.get("method") == method][-1]

    def deliver(self, message: JSON | bytes) -> None:
        """
        The app-server sends C{message}.
        """
        self.receiver.message_received(message if isinstance(message, bytes) else encode(message))

    def respond(self, method: str, result: object) -> None:
        """
        Answer the last request with C{method} with C{result}.
        """
        self.deliver({"jsonrpc": "2.0", "id": self.last(method)["id"], "result": result})

    def respond_error(self, method: str, code: int, message: str) -> None:
        """
        Answer the last request with C{method} with a JSON-RPC error.
        """
        error = {"code": code, "message": message}
        self.deliver({"jsonrpc": "2.0", "id": self.last(method)["id"], "error": error})

    def lose(self, code: int = 1006, reason: str = "") -> None:
        """
        The connection ends.
        """
        if not self.lost:
            self.lost = True
            self.receiver.link_lost(code, reason)


class FakeConnector:
    """
    A L{codexgw.appgw.broker.Connector} handing out L{FakeLink}s that answer C{initialize} at once.

    @ivar urls: every URL dialled.
    @ivar links: every link made.
    @ivar failure: when set, the next dial fails with it.
    @ivar auto_initialize: whether links answer C{initialize} by themselves.
    """

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.links: list[FakeLink] = []
        self.failure: Exception | None = None
        self.auto_initialize = True

    def __call__(self, url: str, receiver: IRPCReceiver) -> Deferred[IRPCLink]:
        """
        Dial C{url}.
        """
        self.urls.append(url)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            return fail(failure)
        link = AutoInitLink(receiver) if self.auto_initialize else FakeLink(receiver)
        self.links.append(link)
        return succeed(link)


@implementer(IRPCLink)
class AutoInitLink(FakeLink):
    """
    A L{FakeLink} whose app-server answers C{initialize} as soon as it is sent.
    """

    def send_text(self, payload: bytes) -> None:
        """
        Record C{payload}; answer it if it is C{initialize}.
        """
        super().send_text(payload)
        if payload == INITIALIZE_REQUEST:
            self.deliver({"jsonrpc": "2.0", "id": 1, "result": {"userAgent": "fake"}})


def ensured(supervisor: FakeSupervisor, workspace_id: str = "ws_a") -> AppServerHandle:
    """
    The workspace's handle from C{supervisor} (which answers at once).
    """
    handles: list[AppServerHandle] = []
    supervisor.ensure(workspace_id).addCallback(handles.append)
    return handles[0]


def make_conn(
    clock: Clock | None = None,
    supervisor: FakeSupervisor | None = None,
    metrics: AppMetrics | None = None,
    crash_grace: float = 1.0,
) -> tuple[Conn, FakeLink, FakeSupervisor, Clock]:
    """
    An open Conn (handshake done) over a L{FakeLink}.
    """
    clock = clock or Clock()
    supervisor = supervisor or FakeSupervisor()
    connector = FakeConnector()
    opened = open_conn(ensured(supervisor), supervisor, connector, clock, metrics, crash_grace)
    conns: list[Conn] = []
    opened.addCallback(conns.append)
    return conns[0], connector.links[0], supervisor, clock


def failure_of(d: Deferred[Any]) -> BaseException:
    """
    The exception C{d} has failed with (it must have).
    """
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, f"{d!r} has not failed"
    error = failures[0].value
    assert error is not None
    return error


class TransportErrorTests(SynchronousTestCase):
    """
    L{transport_error} and L{end_error}: the §8.3 classification.
    """

    def test_classification(self) -> None:
        """
        Each error type maps to its code and message, first match.
        """
        cases: list[tuple[BaseException, str, str]] = [
            (BrokerTimeout("x"), "brokerTimeout", "x"),
            (CodexRPCError("codex rpc error 1: m"), "codexRPCError", "codex rpc error 1: m"),
            (SpawnCapacityError(3), "capacityExceeded", "spawn capacity reached (3 app-servers live)"),
            (EnsureError("spawn: no banner"), "subprocessCrash", "spawn: no banner"),
            (SupervisorStopping(), "wsDisconnect", "gateway shutting down"),
            (RuntimeError("odd"), "wsDisconnect", "odd"),
            (RuntimeError(), "wsDisconnect", "RuntimeError"),
        ]
        for error, code, message in cases:
            with self.subTest(error=error):
                classified = transport_error(error)
                self.assertEqual((classified.code, classified.message), (code, message))

    def test_end_errors(self) -> None:
        """
        A crash is C{subprocessCrash} with the exit status; a shutdown C{gateway shutting down}; an
        idle stop a plain close.
        """
        crash = end_error(AppServerEnd("crash", "signal 9"))
        self.assertEqual(
            (crash.code, crash.message),
            ("subprocessCrash", "app-server exited (status signal 9) before turn/completed"),
        )
        shutdown = end_error(AppServerEnd("shutdown"))
        self.assertEqual((shutdown.code, shutdown.message), ("wsDisconnect", "gateway shutting down"))
        idle = end_error(AppServerEnd("idle"))
        self.assertEqual(
            (idle.code, idle.message), ("wsDisconnect", "connection closed before turn/completed")
        )


class HandshakeTests(SynchronousTestCase):
    """
    Opening a Conn (acceptance item 52).
    """

    def setUp(self) -> None:
        """
        A handle of a fake supervisor, and a connector whose links do not answer by themselves.
        """
        self.clock = Clock()
        self.supervisor = FakeSupervisor(ws_url="ws://127.0.0.1:4321")
        self.handle = ensured(self.supervisor)
        self.connector = FakeConnector()
        self.connector.auto_initialize = False
        self.metrics = AppMetrics()

    def open(self) -> tuple[Deferred[Conn], FakeLink]:
        """
        Start opening a Conn; return the open's Deferred and its link.
        """
        opened = open_conn(self.handle, self.supervisor, self.connector, self.clock, self.metrics)
        return opened, self.connector.links[-1]

    def test_exact_handshake(self) -> None:
        """
        The Conn dials C{<ws_url>/}, sends C{initialize} with the exact bytes of §8.4, and only after
        its response the C{initialized} notification (no id); the next request id is 2.
        """
        opened, link = self.open()
        self.assertEqual(self.connector.urls, ["ws://127.0.0.1:4321/"])
        self.assertEqual(link.sent, [INITIALIZE_REQUEST])
        self.assertEqual(
            json.loads(INITIALIZE_REQUEST),
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "clientInfo": {
                        "name": "agentserver-codex-broker",
                        "title": None,
                        "version": "0.1.0",
                    },
                    "capabilities": {"experimentalApi": True, "requestAttestation": False},
                },
            },
        )
        self.assertNoResult(opened)
        link.deliver({"jsonrpc": "2.0", "id": 1, "result": {}})
        conn = self.successResultOf(opened)
        self.assertEqual(link.sent[1], INITIALIZED_NOTIFICATION)
        self.assertEqual(link.sent[1], b'{"jsonrpc":"2.0","method":"initialized","params":{}}')
        self.assertTrue(conn.is_open)
        conn.start_thread()
        self.assertEqual(link.messages()[2]["id"], 2)
        self.assertEqual(self.supervisor.attached("ws_a"), [conn])
        self.assertEqual(self.metrics.broker_connections._value.get(), 1)

    def test_others_ignored(self) -> None:
        """
        Notifications, server requests and other responses before the C{initialize} response are
        ignored (not answered).
        """
        opened, link = self.open()
        link.deliver({"jsonrpc": "2.0", "method": "thread/started", "params": {}})
        link.deliver({"jsonrpc": "2.0", "id": 7, "method": "item/tool/call", "params": {}})
        link.deliver({"jsonrpc": "2.0", "id": 2, "result": {}})
        link.deliver(b"not json")
        self.assertNoResult(opened)
        self.assertEqual(link.sent, [INITIALIZE_REQUEST])
        link.deliver({"jsonrpc": "2.0", "id": 1, "result": {}})
        self.successResultOf(opened)

    def test_rpc_error(self) -> None:
        """
        An error response fails with C{subprocessCrash} C{initialize rpc error: <message>} and
        closes the link.
        """
        opened, link = self.open()
        link.deliver({"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "bad"}})
        error = failure_of(opened)
        self.assertIsInstance(error, SubprocessCrash)
        self.assertEqual(str(error), "initialize rpc error: bad")
        self.assertIsNotNone(link.closed)
        self.assertEqual(self.supervisor.attached("ws_a"), [])
        self.assertEqual(self.metrics.broker_connections._value.get(), 0)

    def test_timeout(self) -> None:
        """
        No response within 30 s fails with C{initialize timed out}.
        """
        opened, link = self.open()
        self.clock.advance(29.9)
        self.assertNoResult(opened)
        self.clock.advance(0.1)
        error = failure_of(opened)
        self.assertEqual((type(error), str(error)), (SubprocessCrash, "initialize timed out"))
        self.assertIsNotNone(link.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hang_up(self) -> None:
        """
        The app-server closing the connection during the handshake is a handshake failure.
        """
        opened, link = self.open()
        link.lose(1000, "bye")
        error = failure_of(opened)
        self.assertEqual(
            (type(error), str(error)), (SubprocessCrash, "dial: connection closed during initialize")
        )

    def test_crash_during_handshake(self) -> None:
        """
        The supervisor reporting a crash during the handshake fails it with the crash error.
        """
        opened, _ = self.open()
        self.supervisor.end("ws_a", "crash", "exit code 3")
        error = failure_of(opened)
        self.assertEqual(str(error), "app-server exited (status exit code 3) before turn/completed")

    def test_dial_failure(self) -> None:
        """
        A failed dial is C{subprocessCrash} C{dial: <detail>}.
        """
        self.connector.failure = DialFailed("connection refused")
        opened = open_conn(self.handle, self.supervisor, self.connector, self.clock)
        error = failure_of(opened)
        self.assertEqual((type(error), str(error)), (SubprocessCrash, "dial: connection refused"))

    def test_handle_gone(self) -> None:
        """
        A handle that ended between C{ensure} and the dial cannot be attached to: the dial fails with
        the end's error and the link is closed.
        """
        self.supervisor.end("ws_a", "crash", "signal 9")
        opened = open_conn(self.handle, self.supervisor, self.connector, self.clock)
        error = failure_of(opened)
        self.assertIsInstance(error, SubprocessCrash)
        self.assertEqual(self.connector.links[0].closed, (1000, "gateway closing"))

    def test_cancel(self) -> None:
        """
        Cancelling the open during the handshake closes the link.
        """
        opened, link = self.open()
        opened.cancel()
        self.assertIsInstance(failure_of(opened), CancelledError)
        self.assertIsNotNone(link.closed)


class ThreadTests(SynchronousTestCase):
    """
    L{Conn.start_thread}.
    """

    def test_start(self) -> None:
        """
        C{thread/start} with C{{}}; the thread id is C{result.thread.id} and the thread is attached.
        """
        conn, link, _, _ = make_conn()
        started = conn.start_thread()
        request = link.last("thread/start")
        self.assertEqual(link.sent[-1], b'{"jsonrpc":"2.0","id":2,"method":"thread/start","params":{}}')
        self.assertEqual(request["params"], {})
        link.respond("thread/start", {"thread": {"id": "thr-new", "preview": ""}})
        self.assertEqual(self.successResultOf(started), "thr-new")
        self.assertEqual(conn.attached_threads, {"thr-new"})
        self.assertFalse(conn.busy)

    def test_missing_id(self) -> None:
        """
        A result without C{thread.id} is C{codexRPCError} C{thread/start result missing thread.id}.
        """
        results: list[object] = [{}, {"thread": {}}, {"thread": {"id": 5}}, {"thread": "x"}, None]
        for result in results:
            with self.subTest(result=result):
                conn, link, _, _ = make_conn()
                started = conn.start_thread()
                link.respond("thread/start", result)
                error = failure_of(started)
                self.assertEqual(
                    (type(error), str(error)), (CodexRPCError, "thread/start result missing thread.id")
                )

    def test_error(self) -> None:
        """
        A JSON-RPC error is C{codexRPCError} C{codex rpc error <code>: <message>}.
        """
        conn, link, _, _ = make_conn()
        started = conn.start_thread()
        link.respond_error("thread/start", -32000, "no model")
        error = failure_of(started)
        self.assertEqual((type(error), str(error)), (CodexRPCError, "codex rpc error -32000: no model"))

    def test_timeout(self) -> None:
        """
        No response within 60 s is C{brokerTimeout} C{thread/start timed out after 60s}; with nothing
        else pending the Conn closes with 1000 C{turn timed out}.
        """
        conn, link, _, clock = make_conn()
        started = conn.start_thread()
        clock.advance(59.9)
        self.assertNoResult(started)
        clock.advance(0.1)
        error = failure_of(started)
        self.assertEqual((type(error), str(error)), (BrokerTimeout, "thread/start timed out after 60s"))
        self.assertEqual(link.closed, (1000, "turn timed out"))
        self.assertFalse(conn.is_open)
        # A late answer changes nothing.
        link.deliver({"jsonrpc": "2.0", "id": 2, "result": {"thread": {"id": "t"}}})


def start_turn(
    conn: Conn, link: FakeLink, params: JSON | None = None, timeout: float = 300.0, thread: str = "thr-1"
) -> Deferred[JSON]:
    """
    Start a turn on C{thread}, attached beforehand.
    """
    conn.attached_threads.add(thread)
    return conn.turn(thread, params if params is not None else {"input": []}, timeout)


def notify(link: FakeLink, method: str, params: JSON) -> None:
    """
    The app-server sends a notification.
    """
    link.deliver({"jsonrpc": "2.0", "method": method, "params": params})


class TurnTests(SynchronousTestCase):
    """
    L{Conn.turn} (acceptance items 53–57).
    """

    def test_success(self) -> None:
        """
        The turn's C{items} are replaced by the C{item/completed} items in order; every other key
        keeps its value and place (item 53).
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        link.respond("turn/start", {"turn": {"id": "turn-1", "items": [], "status": "inProgress"}})
        notify(link, "turn/started", {"threadId": "thr-1", "turn": {"id": "turn-1"}})
        notify(link, "item/started", {"threadId": "thr-1", "turnId": "turn-1", "item": {"id": "a"}})
        notify(link, "item/completed", {"threadId": "thr-1", "turnId": "turn-1", "item": {"id": "a"}})
        notify(link, "item/completed", {"threadId": "thr-1", "turnId": "other", "item": {"id": "x"}})
        notify(link, "item/completed", {"threadId": "thr-1", "turnId": "turn-1", "item": {"id": "b"}})
        self.assertNoResult(done)
        final: JSON = {"id": "turn-1", "items": [], "status": "completed", "error": None, "z": 1}
        notify(link, "turn/completed", {"threadId": "thr-1", "turn": final})
        turn = self.successResultOf(done)
        self.assertEqual(list(turn), ["id", "items", "status", "error", "z"])
        self.assertEqual(
            turn,
            {
                "id": "turn-1",
                "items": [{"id": "a"}, {"id": "b"}],
                "status": "completed",
                "error": None,
                "z": 1,
            },
        )
        self.assertFalse(conn.busy)

    def test_no_items(self) -> None:
        """
        Without C{item/completed} the turn is handed over as codex sent it.
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        link.respond("turn/start", {"turn": {"id": "turn-1"}})
        notify(
            link, "turn/completed", {"turn": {"id": "turn-1", "items": [{"k": 1}], "status": "failed"}}
        )
        self.assertEqual(
            self.successResultOf(done), {"id": "turn-1", "items": [{"k": 1}], "status": "failed"}
        )

    def test_params(self) -> None:
        """
        C{turn/start} params are C{threadId} followed by the caller's keys in order.
        """
        conn, link, _, _ = make_conn()
        start_turn(conn, link, {"input": [{"type": "text", "text": "hi"}], "model": "m"})
        self.assertEqual(
            link.sent[-1],
            b'{"jsonrpc":"2.0","id":2,"method":"turn/start","params":{"threadId":"thr-1",'
            b'"input":[{"type":"text","text":"hi"}],"model":"m"}}',
        )

    def test_completed_before_response(self) -> None:
        """
        C{turn/started}, items and C{turn/completed} all before the C{turn/start} response: the turn
        still completes (item 54).
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        notify(link, "turn/started", {"turn": {"id": "turn-1"}})
        notify(link, "item/completed", {"turnId": "turn-1", "item": {"id": "a"}})
        notify(link, "turn/completed", {"turn": {"id": "turn-1", "items": [], "status": "completed"}})
        self.assertNoResult(done)
        link.respond("turn/start", {"turn": {"id": "turn-1", "items": [], "status": "inProgress"}})
        self.assertEqual(
            self.successResultOf(done), {"id": "turn-1", "items": [{"id": "a"}], "status": "completed"}
        )

    def test_buffer_expires(self) -> None:
        """
        A completion nobody asked for is kept for 60 s only.
        """
        conn, link, _, clock = make_conn()
        notify(link, "turn/completed", {"turn": {"id": "turn-1", "status": "completed"}})
        clock.advance(60)
        done = start_turn(conn, link, timeout=1)
        link.respond("turn/start", {"turn": {"id": "turn-1"}})
        self.assertNoResult(done)
        clock.advance(1)
        self.assertIsInstance(failure_of(done), BrokerTimeout)

    def test_resume(self) -> None:
        """
        A thread not attached to the Conn is resumed first; a resumed or started one is not (item 55).
        """
        conn, link, _, _ = make_conn()
        done = conn.turn("thr-old", {"input": []}, 10)
        self.assertEqual(link.methods()[-1], "thread/resume")
        self.assertEqual(link.last("thread/resume")["params"], {"threadId": "thr-old"})
        link.respond("thread/resume", {"thread": {"id": "thr-old"}})
        self.assertEqual(link.methods()[-1], "turn/start")
        link.respond("turn/start", {"turn": {"id": "u1"}})
        notify(link, "turn/completed", {"turn": {"id": "u1"}})
        self.successResultOf(done)
        self.assertIn("thr-old", conn.attached_threads)
        conn.turn("thr-old", {"input": []}, 10)
        self.assertEqual(link.methods().count("thread/resume"), 1)

    def test_resume_error(self) -> None:
        """
        A C{thread/resume} error is C{codexRPCError}; no turn is started.
        """
        conn, link, _, _ = make_conn()
        done = conn.turn("thr-x", {}, 10)
        link.respond_error("thread/resume", -32600, "no rollout found")
        error = failure_of(done)
        self.assertEqual(str(error), "codex rpc error -32600: no rollout found")
        self.assertNotIn("turn/start", link.methods())
        self.assertNotIn("thr-x", conn.attached_threads)

    def test_turn_start_error(self) -> None:
        """
        A JSON-RPC error on C{turn/start} is C{codexRPCError} (item 57).
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        link.respond_error("turn/start", -32602, "invalid input")
        error = failure_of(done)
        self.assertEqual(
            (type(error), str(error)), (CodexRPCError, "codex rpc error -32602: invalid input")
        )
        self.assertTrue(conn.is_open)

    def test_missing_turn_id(self) -> None:
        """
        A C{turn/start} result without C{turn.id} is C{codexRPCError}.
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        link.respond("turn/start", {"turn": {}})
        self.assertEqual(str(failure_of(done)), "turn/start result missing turn.id")

    def test_timeout(self) -> None:
        """
        A turn not completed within its timeout (100 ms) sends C{turn/interrupt} with the next id and
        fails with C{brokerTimeout}; alone on the Conn it closes it with 1000 C{turn timed out}
        (item 56).
        """
        conn, link, _, clock = make_conn()
        done = start_turn(conn, link, timeout=0.1)
        link.respond("turn/start", {"turn": {"id": "turn-9"}})
        clock.advance(0.099)
        self.assertNoResult(done)
        clock.advance(0.001)
        error = failure_of(done)
        self.assertEqual(
            (type(error), str(error)), (BrokerTimeout, "turn timed out (thread=thr-1 turn=turn-9)")
        )
        self.assertEqual(
            link.sent[-1],
            b'{"jsonrpc":"2.0","id":3,"method":"turn/interrupt",'
            b'"params":{"threadId":"thr-1","turnId":"turn-9"}}',
        )
        self.assertEqual(link.closed, (1000, "turn timed out"))
        self.assertFalse(conn.is_open)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout_counts_from_turn_start(self) -> None:
        """
        The timeout starts when C{turn/start} is sent, not when the resume began.
        """
        conn, link, _, clock = make_conn()
        done = conn.turn("thr-old", {}, 1)
        clock.advance(5)
        link.respond("thread/resume", {})
        clock.advance(0.9)
        link.respond("turn/start", {"turn": {"id": "u"}})
        self.assertNoResult(done)
        clock.advance(0.1)
        self.assertIsInstance(failure_of(done), BrokerTimeout)

    def test_timeout_others_pending(self) -> None:
        """
        With another turn pending, a timed-out turn is interrupted but the Conn stays open.
        """
        conn, link, _, clock = make_conn()
        slow = start_turn(conn, link, timeout=10)
        link.respond("turn/start", {"turn": {"id": "slow"}})
        quick = start_turn(conn, link, timeout=1, thread="thr-2")
        link.respond("turn/start", {"turn": {"id": "quick"}})
        clock.advance(1)
        self.assertIsInstance(failure_of(quick), BrokerTimeout)
        self.assertEqual(link.methods()[-1], "turn/interrupt")
        self.assertIsNone(link.closed)
        self.assertTrue(conn.is_open)
        notify(link, "turn/completed", {"turn": {"id": "slow"}})
        self.assertEqual(self.successResultOf(slow), {"id": "slow"})

    def test_timeout_before_response(self) -> None:
        """
        A deadline that passes before the C{turn/start} response names no turn and sends no
        interrupt.
        """
        conn, link, _, clock = make_conn()
        done = start_turn(conn, link, timeout=0.1)
        clock.advance(0.1)
        error = failure_of(done)
        self.assertEqual(str(error), "turn timed out (thread=thr-1 turn=)")
        self.assertNotIn("turn/interrupt", link.methods())
        self.assertEqual(link.closed, (1000, "turn timed out"))

    def test_late_start_interrupted(self) -> None:
        """
        On a Conn kept open by other work, a C{turn/start} response arriving after its caller timed
        out interrupts that turn.
        """
        conn, link, _, clock = make_conn()
        other = start_turn(conn, link, timeout=10, thread="thr-0")
        link.respond("turn/start", {"turn": {"id": "other"}})
        done = start_turn(conn, link, timeout=0.1)
        request = link.last("turn/start")
        clock.advance(0.1)
        self.assertIsInstance(failure_of(done), BrokerTimeout)
        link.deliver({"jsonrpc": "2.0", "id": request["id"], "result": {"turn": {"id": "late"}}})
        self.assertEqual(link.last("turn/interrupt")["params"], {"threadId": "thr-1", "turnId": "late"})
        self.assertNoResult(other)

    def test_response_timeout(self) -> None:
        """
        With a timeout over 60 s, no C{turn/start} response within 60 s is C{brokerTimeout}
        C{turn/start timed out after 60s}.
        """
        conn, link, _, clock = make_conn()
        done = start_turn(conn, link, timeout=300)
        clock.advance(60)
        error = failure_of(done)
        self.assertEqual((type(error), str(error)), (BrokerTimeout, "turn/start timed out after 60s"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_response_in_time(self) -> None:
        """
        A response within 60 s leaves only the turn's own deadline.
        """
        conn, link, _, clock = make_conn()
        done = start_turn(conn, link, timeout=300)
        clock.advance(59)
        link.respond("turn/start", {"turn": {"id": "u"}})
        clock.advance(200)
        self.assertNoResult(done)
        notify(link, "turn/completed", {"turn": {"id": "u"}})
        self.successResultOf(done)

    def test_cancel(self) -> None:
        """
        Cancelling a turn stops the wait: nothing is sent, the Conn is not busy, and the completion is
        dropped.
        """
        conn, link, _, clock = make_conn()
        done = start_turn(conn, link, timeout=1)
        link.respond("turn/start", {"turn": {"id": "u"}})
        sent = len(link.sent)
        done.cancel()
        self.assertIsInstance(failure_of(done), CancelledError)
        self.assertFalse(conn.busy)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(len(link.sent), sent)
        self.assertTrue(conn.is_open)

    def test_after_close(self) -> None:
        """
        A turn on a closed Conn fails at once with its close error.
        """
        conn, link, supervisor, _ = make_conn()
        supervisor.end("ws_a", "shutdown")
        error = failure_of(start_turn(conn, link))
        self.assertEqual((type(error), str(error)), (WSDisconnect, "gateway shutting down"))


class ReaderTests(SynchronousTestCase):
    """
    The reader: server requests, activity, junk (item 58).
    """

    def test_unknown_request(self) -> None:
        """
        A server request with an unknown method gets the exact -32601 broker reply, ids echoed.
        """
        _, link, _, _ = make_conn()
        link.deliver({"jsonrpc": "2.0", "id": 1, "method": "item/tool/call", "params": {}})
        self.assertEqual(
            link.sent[-1],
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,'
            b'"message":"method not implemented by agentserver broker: item/tool/call"}}',
        )
        link.deliver({"jsonrpc": "2.0", "id": "s-1", "method": "x/y"})
        self.assertEqual(
            link.sent[-1],
            b'{"jsonrpc":"2.0","id":"s-1","error":{"code":-32601,'
            b'"message":"method not implemented by agentserver broker: x/y"}}',
        )

    def test_approvals(self) -> None:
        """
        Approval requests get the §7.3 reply and count in C{approvals_auto_replied{path="broker"}};
        the same methods as notifications are ignored.
        """
        metrics = AppMetrics()
        _, link, _, _ = make_conn(metrics=metrics)
        link.deliver({"jsonrpc": "2.0", "id": 1, "method": "item/commandExecution/requestApproval"})
        self.assertEqual(link.sent[-1], b'{"jsonrpc":"2.0","id":1,"result":{"decision":"accept"}}')
        link.deliver({"jsonrpc": "2.0", "id": 2, "method": "mcpServer/elicitation/request"})
        self.assertEqual(
            link.sent[-1],
            b'{"jsonrpc":"2.0","id":2,"result":{"action":"accept","content":null,"_meta":null}}',
        )
        sent = len(link.sent)
        link.deliver({"jsonrpc": "2.0", "method": "applyPatchApproval", "params": {}})
        link.deliver({"jsonrpc": "2.0", "id": None, "method": "applyPatchApproval", "params": {}})
        self.assertEqual(len(link.sent), sent)
        counted = metrics.approvals_auto_replied.labels(path="broker")._value.get()
        self.assertEqual(counted, 2)

    def test_junk(self) -> None:
        """
        Undecodable JSON, non-objects, unknown response ids and non-string methods are ignored.
        """
        conn, link, _, _ = make_conn()
        for junk in (b"{", b"[1,2]", b'"x"', b"\xff", b'{"id":99,"result":{}}', b'{"id":true}'):
            link.deliver(junk)
        link.deliver({"jsonrpc": "2.0", "id": 5, "method": 7})
        link.deliver({"jsonrpc": "2.0", "method": "turn/completed", "params": {"turn": {"id": 1}}})
        link.deliver({"jsonrpc": "2.0", "method": "turn/completed", "params": []})
        link.deliver({"jsonrpc": "2.0", "method": "item/completed", "params": {"turnId": "t"}})
        self.assertEqual(len(link.sent), 2)
        self.assertTrue(conn.is_open)

    def test_activity(self) -> None:
        """
        Every message read or written touches the workspace and sets C{last_activity}.
        """
        clock = Clock()
        clock.advance(100)
        conn, link, supervisor, _ = make_conn(clock=clock)
        before = supervisor.touches["ws_a"]
        clock.advance(5)
        link.deliver(b"junk")
        self.assertEqual(supervisor.touches["ws_a"], before + 1)
        self.assertEqual(conn.last_activity, 105)
        clock.advance(5)
        conn.start_thread()
        self.assertEqual(supervisor.touches["ws_a"], before + 2)
        self.assertEqual(conn.last_activity, 110)


class EndTests(SynchronousTestCase):
    """
    How a Conn ends, and what its waiters get (item 57).
    """

    def test_server_closes(self) -> None:
        """
        The app-server closing the connection mid-turn fails the turn at once with C{wsDisconnect}.
        """
        metrics = AppMetrics()
        conn, link, supervisor, _ = make_conn(metrics=metrics)
        unusable: list[Conn] = []
        conn.when_unusable(unusable.append)
        done = start_turn(conn, link)
        link.respond("turn/start", {"turn": {"id": "u"}})
        link.lose(1001, "going away")
        error = failure_of(done)
        self.assertEqual(
            (type(error), str(error)), (WSDisconnect, "connection closed before turn/completed")
        )
        self.assertEqual(unusable, [conn])
        self.assertEqual(supervisor.attached("ws_a"), [])
        self.assertEqual(metrics.broker_connections._value.get(), 0)

    def test_drop_then_crash(self) -> None:
        """
        A drop (1006) waits for the supervisor's crash notice, which makes it C{subprocessCrash}.
        """
        conn, link, supervisor, clock = make_conn()
        unusable: list[Conn] = []
        conn.when_unusable(unusable.append)
        done = start_turn(conn, link)
        link.lose()
        self.assertEqual(unusable, [conn])
        self.assertFalse(conn.is_open)
        self.assertNoResult(done)
        clock.advance(0.5)
        supervisor.end("ws_a", "crash", "signal 9")
        error = failure_of(done)
        self.assertEqual(
            (type(error), str(error)),
            (SubprocessCrash, "app-server exited (status signal 9) before turn/completed"),
        )
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_drop_without_crash(self) -> None:
        """
        Without a crash notice within the grace, a drop is C{wsDisconnect}.
        """
        conn, link, supervisor, clock = make_conn(crash_grace=1.0)
        done = start_turn(conn, link)
        link.lose()
        clock.advance(0.999)
        self.assertNoResult(done)
        clock.advance(0.001)
        self.assertEqual(str(failure_of(done)), "connection closed before turn/completed")
        self.assertEqual(supervisor.attached("ws_a"), [])

    def test_drop_after_crash_known(self) -> None:
        """
        A drop after the handle is marked ended fails at once with the crash error.
        """
        conn, link, _, _ = make_conn()
        done = start_turn(conn, link)
        conn.handle.ended = AppServerEnd("crash", "exit code 1")
        link.lose()
        self.assertIsInstance(failure_of(done), SubprocessCrash)

    def test_crash_notice_first(self) -> None:
        """
        The supervisor's crash notice before the drop fails the waiters and closes the link.
        """
        conn, link, supervisor, _ = make_conn()
        done = start_turn(conn, link)
        supervisor.end("ws_a", "crash", "signal 9")
        self.assertIsInstance(failure_of(done), SubprocessCrash)
        self.assertEqual(link.closed, (1000, "gateway closing"))

    def test_shutdown(self) -> None:
        """
        A shutdown fails the waiters with C{wsDisconnect} C{gateway shutting down}.
        """
        conn, link, supervisor, _ = make_conn()
        done = start_turn(conn, link)
        supervisor.end("ws_a", "shutdown")
        error = failure_of(done)
        self.assertEqual((type(error), str(error)), (WSDisconnect, "gateway shutting down"))
        self.assertEqual(link.closed, (1000, "gateway closing"))

    def test_close(self) -> None:
        """
        L{Conn.close} fails every waiter with its error, closes the link once and is idempotent;
        C{wait_closed} fires when the link has ended.
        """
        conn, link, _, _ = make_conn()
        link.echo_close = False
        thread = conn.start_thread()
        turn = start_turn(conn, link)
        closed = conn.wait_closed()
        conn.close(1000, "broker idle", WSDisconnect("gateway shutting down"))
        conn.close(1000, "again")
        self.assertEqual(str(failure_of(thread)), "gateway shutting down")
        self.assertEqual(str(failure_of(turn)), "gateway shutting down")
        self.assertEqual(link.closed, (1000, "broker idle"))
        self.assertNoResult(closed)
        link.lose(1000, "broker idle")
        self.successResultOf(closed)
        self.successResultOf(conn.wait_closed())

    def test_attachment(self) -> None:
        """
        A Conn is an L{IAttachment} and an L{IRPCReceiver}.
        """
        conn, _, _, _ = make_conn()
        verifyObject(IAttachment, conn)
        verifyObject(IRPCReceiver, conn)


@implementer(IRPCReceiver)
class RecordingReceiver:
    """
    An L{IRPCReceiver} that records what it is told.
    """

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost: list[tuple[int, str]] = []

    def message_received(self, payload: bytes) -> None:
        """
        Record C{payload}.
        """
        self.messages.append(payload)

    def link_lost(self, code: int, reason: str) -> None:
        """
        Record the end.
        """
        self.lost.append((code, reason))


class RPCLinkTestsMixin:
    """
    What every L{IRPCLink} does; mixed into a test case providing C{make_link} and C{peer_received}.
    """

    receiver: RecordingReceiver

    def make_link(self) -> IRPCLink:
        """
        An open link whose receiver is C{self.receiver}.
        """
        raise NotImplementedError

    def peer_received(self) -> list[bytes]:
        """
        What the far end received so far.
        """
        raise NotImplementedError

    def settle(self) -> None:
        """
        Let in-flight bytes arrive.
        """

    def test_interface(self) -> None:
        """
        The link provides L{IRPCLink}.
        """
        verifyObject(IRPCLink, self.make_link())

    def test_send(self) -> None:
        """
        C{send_text} delivers one message with the exact bytes.
        """
        link = self.make_link()
        link.send_text(b'{"a":1}')
        link.send_text(b'{"b":2}')
        self.settle()
        assert self.peer_received() == [b'{"a":1}', b'{"b":2}'], self.peer_received()

    def test_close(self) -> None:
        """
        C{close} ends the link once with its own code; later sends are dropped.
        """
        link = self.make_link()
        link.close(1000, "turn timed out")
        link.close(1000, "again")
        link.send_text(b"late")
        self.settle()
        assert self.receiver.lost == [(1000, "turn timed out")], self.receiver.lost
        assert self.peer_received() == [], self.peer_received()


class FakeLinkTests(RPCLinkTestsMixin, SynchronousTestCase):
    """
    L{FakeLink} passes the link tests.
    """

    def make_link(self) -> IRPCLink:
        """
        A L{FakeLink}.
        """
        self.receiver = RecordingReceiver()
        self.link = FakeLink(self.receiver)
        return self.link

    def peer_received(self) -> list[bytes]:
        """
        The link's C{sent}.
        """
        return self.link.sent


class _Collector(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Keep C{payload}.
        """
        self.factory.received.append(payload)


class _CollectorFactory(WebSocketServerFactory):
    protocol = _Collector

    def __init__(self, clock: Clock) -> None:
        super().__init__("ws://127.0.0.1:1", reactor=clock)
        self._batched_timer = ReactorTimer(clock)
        self.received: list[bytes] = []
        self.setProtocolOptions(perMessageCompressionAccept=lambda offers: None)


class WebSocketRPCLinkTests(RPCLinkTestsMixin, SynchronousTestCase):
    """
    L{WebSocketRPCLink} passes the link tests against an Autobahn server over an in-memory
    connection, and opens as §8.4 says.
    """

    def make_link(self) -> IRPCLink:
        """
        Connect a link to a collecting server through L{iosim}.
        """
        self.clock = Clock()
        self.receiver = RecordingReceiver()
        server_factory = _CollectorFactory(self.clock)
        self.server_factory = server_factory
        self.client_factory = RPCLinkFactory("ws://127.0.0.1:1/", self.receiver, self.clock)
        server = cast(_Collector, server_factory.buildProtocol(None))
        client = self.client_factory.buildProtocol(None)
        self.server = server
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=self.clock
        )
        link: IRPCLink = self.successResultOf(self.client_factory.opened)
        return link

    def peer_received(self) -> list[bytes]:
        """
        The server's messages.
        """
        return self.server_factory.received

    def settle(self) -> None:
        """
        Pump both ways.
        """
        self.pump.flush()
        self.clock.advance(5)
        self.pump.flush()

    def test_handshake_request(self) -> None:
        """
        The upgrade request carries no C{Origin} and offers no compression.
        """
        self.make_link()
        request = self.server.http_request_data.decode()
        self.assertNotIn("origin:", request.lower())
        self.assertNotIn("sec-websocket-extensions", request.lower())
        self.assertTrue(request.startswith("GET / HTTP/1.1"))

    def test_receive(self) -> None:
        """
        Messages from the server reach the receiver; a close from it is reported with its code.
        """
        self.make_link()
        self.server.sendMessage(b'{"x":1}', isBinary=False)
        self.settle()
        self.assertEqual(self.receiver.messages, [b'{"x":1}'])
        self.server.sendClose(1000, "bye")
        self.settle()
        self.assertEqual(self.receiver.lost, [(1000, "bye")])

    def test_options(self) -> None:
        """
        64 MiB messages, no pings, no compression offer.
        """
        self.make_link()
        factory = self.client_factory
        self.assertEqual(factory.maxMessagePayloadSize, 64 << 20)
        self.assertEqual(factory.autoPingInterval, 0)
        self.assertEqual(factory.perMessageCompressionOffers, [])
        self.assertFalse(factory.failByDrop)
        self.assertIsNone(factory.origin)


class TransportErrorSubclassTests(SynchronousTestCase):
    """
    Every error class carries its code.
    """

    def test_codes(self) -> None:
        """
        Codes of §8.3 by class.
        """
        self.assertEqual(
            [
                c.code
                for c in (BrokerTimeout, CodexRPCError, CapacityExceeded, SubprocessCrash, WSDisconnect)
            ],
            ["brokerTimeout", "codexRPCError", "capacityExceeded", "subprocessCrash", "wsDisconnect"],
        )
        self.assertEqual(TransportError("m").message, "m")
