"""
A fake C{codex app-server}: the stand-in for C{codex app-server --listen ws://127.0.0.1:0} (pinned codex
0.169.0) that the app gateway's unit and integration tests talk to instead of the real binary.

Like codex, one port serves both the websocket (JSON-RPC over text messages, at any path) and
C{GET /readyz} (C{app-gateway.md} §5.4). L{FakeAppServer} runs in-process on any reactor; L{main} runs it
as a process with codex's command line and banner, so the supervisor can spawn it through the script
L{write_fake_codex} writes.

What is copied from the real codex 0.169.0 (checked against the binary, see
C{tests/appgw/test_fakeappserver.py}, whose protocol checks run against both):
 - envelopes carry no C{"jsonrpc"} member: results are C{{"id":..,"result":..}}, errors
   C{{"error":{"code":..,"message":..},"id":..}}, notifications
   C{{"method":..,"params":..,"emittedAtMs":..}};
 - C{initialize} answers C{userAgent}, C{codexHome}, C{platformFamily}, C{platformOs}; a second one is
   C{-32600 Already initialized}; any other request before it is C{-32600 Not initialized};
 - C{thread/start} answers, then sends C{thread/started}; C{thread/resume} of an unknown thread, or of
   one without a turn yet (codex writes the rollout with the first turn), is
   C{-32600 no rollout found for thread id <id>}; C{turn/start} of an unknown thread is
   C{-32600 thread not found: <id>}; a missing C{threadId} is
   C{-32600 Invalid request: missing field `threadId`}; C{turn/interrupt} without such an active turn
   is C{-32600 no active turn to interrupt}, otherwise C{{}} followed by C{turn/completed}
   (C{interrupted});
 - turn, thread and item objects have codex's keys (a subset for threads).

Where the fake deliberately differs from codex 0.169.0 (the tests of the gateway need it so):
 - C{turn/started} is sent I{before} the C{turn/start} response by default (codex 0.169.0 sends it
   right after; the spec requires consumers to accept both):
   L{FakeAppServer.turn_started_before_response} selects codex's order;
 - a turn produces one C{agentMessage} item (C{item/started}, C{item/completed}; no C{userMessage}
   item, no deltas, no status or token-usage notifications) and C{turn/completed} carries
   C{"items":[]} (codex 0.169.0 puts a summary there), so the broker's item collection is exercised;
 - an unknown request method is C{-32601} (codex answers C{-32600 Invalid request: unknown variant});
 - a binary message, or a text message that is not a JSON object, is echoed back unchanged with the
   same type (codex ignores them), so the proxy's byte-exact forwarding can be checked;
 - the C{fake/*} test-control requests (L{FakeAppServer} docstring), accepted before C{initialize} too.

Decisions where the brief is silent:
 - threads live in the server (any connection may resume or use a thread another one started, as with
   codex); L{FakeAppServer.add_thread} makes an id known as if its rollout were on disk;
 - turn notifications go to the connection that started the turn only; ids are C{thr-<uuid4>},
   C{turn-<uuid4>} and C{item-<uuid4>} (unique across fake processes, so a respawned fake never
   mistakes an old id for one of its own);
 - L{FakeAppServer.close_on} applies to notifications too; L{FakeAppServer.errors} to requests only;
   both are checked before anything else, C{fake/*} included;
 - C{fake/emit} paces itself like a real writer that awaits its socket: it hands the next message to
   the transport only while the transport has not paused it, so a long emission never piles up in the
   fake's own buffer; C{{"sent":n}} is answered once every target connection took all C{n} messages
   (or closed). A text message of size C{b} is a JSON string of C{max(b, 2)} bytes (C{"xxx…"}); a
   binary one is C{b} bytes of a repeating C{0x00..0xff} pattern;
 - C{fake/request} without an C{id} sends a notification; the control request is answered C{{}} after
   the message went out;
 - C{/readyz} answers C{ok} with 200 and C{not ready} with any other status; C{/healthz} answers 200;
   any other request that is not a websocket upgrade gets codex's 400
   C{Connection header did not include 'upgrade'};
 - incoming messages are limited to 128 MiB (above the gateway's 64 MiB, so the fake is never the side
   that limits); Autobahn options are all explicit, with no compression, pings or Origin check;
 - L{FakeAppServerConnection.closed} reports our code and reason when the fake closed, the peer's when
   the peer did, and Autobahn's 1006 when the TCP connection just ended;
 - L{FakeAppServerConnection.send} to a connection that is no longer open does nothing;
 - subprocess mode: an environment value the fake does not understand exits with status 2 like a bad
   command line; C{grandchild pid N} is printed before the banner; SIGTERM or SIGINT drops every
   connection and exits 0; C{FAKE_APP_SERVER_EXIT_AFTER_BANNER} leaves with C{os._exit} (no clean-up,
   like a crash).

Only tests import this module; the supervisor's tests run it as a stand-in for the codex binary.
"""

# Autobahn and twisted.web are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import os
import platform
import signal
import stat
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from codexgw.autobahntimers import ReactorTimer
from codexgw.httpio import plain_response
from codexgw.testing.tracking import ConnectionTracker

JSONObject: TypeAlias = dict[str, object]

#: The codex version the fake impersonates.
CODEX_VERSION: Final = "0.169.0"
#: What C{codex --version} prints.
VERSION_LINE: Final = f"codex-cli {CODEX_VERSION}"
#: The only command line (after the program) the fake accepts as a server.
LISTEN_ARGV: Final = ("app-server", "--listen", "ws://127.0.0.1:0")
#: The interface the fake listens on.
LOOPBACK: Final = "127.0.0.1"
#: The host printed by the C{nonloopback} banner mode.
NONLOOPBACK_HOST: Final = "10.1.2.3"

#: The default text of every turn's agent message.
DEFAULT_REPLY_TEXT: Final = "hello from the fake app-server"
#: The C{turn_completion} modes.
AFTER_RESPONSE: Final = "after_response"
BEFORE_RESPONSE: Final = "before_response"
NEVER: Final = "never"
TURN_COMPLETION_MODES: Final = (AFTER_RESPONSE, BEFORE_RESPONSE, NEVER)

#: Largest incoming message (and frame) payload.
MAX_MESSAGE_BYTES: Final = 128 * 1024 * 1024
#: Seconds a client has for its opening handshake, and for the closing one.
OPEN_HANDSHAKE_TIMEOUT: Final = 10
CLOSE_HANDSHAKE_TIMEOUT: Final = 1

#: JSON-RPC error codes.
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

#: The error message of a request without its C{threadId}.
MISSING_THREAD_ID: Final = "Invalid request: missing field `threadId`"

#: What the fake claims about the model and sandbox in thread results.
MODEL: Final = "gpt-5.5"
MODEL_PROVIDER: Final = "fake"

#: Environment variables of subprocess mode (see L{main}).
ENV_BANNER: Final = "FAKE_APP_SERVER_BANNER"
ENV_READYZ: Final = "FAKE_APP_SERVER_READYZ"
ENV_IGNORE_SIGTERM: Final = "FAKE_APP_SERVER_IGNORE_SIGTERM"
ENV_GRANDCHILD: Final = "FAKE_APP_SERVER_GRANDCHILD"
ENV_TURN_COMPLETION: Final = "FAKE_APP_SERVER_TURN_COMPLETION"
ENV_EXIT_AFTER_BANNER: Final = "FAKE_APP_SERVER_EXIT_AFTER_BANNER"
#: The C{FAKE_APP_SERVER_BANNER} values.
BANNER_MODES: Final = ("stderr", "stdout", "none", "nonloopback")
#: Seconds between the banner and the exit C{FAKE_APP_SERVER_EXIT_AFTER_BANNER} asks for.
EXIT_AFTER_BANNER_DELAY: Final = 1.0

_BINARY_PATTERN: Final = bytes(range(256))


class ConnectionClosed(Exception):
    """
    The fake's websocket closed while a test waited for a message on it.
    """


def _encode(message: Mapping[str, object]) -> bytes:
    # Compact, UTF-8, in the order given: how codex (serde_json) writes.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode_object(payload: bytes) -> JSONObject | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def emit_payload(size: int, binary: bool) -> bytes:
    """
    Return the payload C{fake/emit} sends: a JSON string of C{max(size, 2)} bytes for text, or C{size}
    bytes of a repeating C{0x00..0xff} pattern for binary.

    @param size: the requested payload size in bytes.
    @param binary: whether the message is binary.
    """
    if binary:
        whole, rest = divmod(size, len(_BINARY_PATTERN))
        return _BINARY_PATTERN * whole + _BINARY_PATTERN[:rest]
    return b'"' + b"x" * max(size - 2, 0) + b'"'


@dataclass
class _Emission:
    remaining: int
    payload: bytes
    is_binary: bool
    done: Deferred[None] = field(default_factory=Deferred)


@dataclass
class _Thread:
    id: str
    created_at: int
    turns: list[JSONObject] = field(default_factory=list)
    preview: str = ""
    # Whether codex would have a rollout file for it (seeded, or had a turn).
    persisted: bool = False


@dataclass
class _Turn:
    id: str
    thread_id: str
    connection: FakeAppServerConnection
    started_at: float


@implementer(IPushProducer)
class FakeAppServerConnection(WebSocketServerProtocol):
    """
    One accepted websocket of a L{FakeAppServer}: what it received, and the test's handle to talk on it.

    The connection registers itself as the streaming producer of its transport and records how long the
    transport kept it paused (the longest pause is L{max_write_pause_seconds}; C{fake/stats} reports it).

    @ivar request_headers: the handshake request's headers, names lower-cased (repeated ones joined
        with C{", "}).
    @ivar received: every message as C{(payload, is_binary)}, in arrival order.
    @ivar initialized: whether C{initialize} was answered on this connection.
    @ivar initialized_notified: whether the C{initialized} notification arrived.
    """

    transport: Any
    _app: FakeAppServer

    def __init__(self) -> None:
        """
        Start with nothing received.
        """
        super().__init__()
        self.request_headers: dict[str, str] = {}
        self.received: list[tuple[bytes, bool]] = []
        self.initialized = False
        self.initialized_notified = False
        self._objects: list[JSONObject] = []
        self._waiters: list[tuple[Callable[[JSONObject], bool], Deferred[JSONObject]]] = []
        self._closed_with: tuple[int | None, str | None] | None = None
        self._closed_waiters: list[Deferred[tuple[int | None, str | None]]] = []
        self._emissions: deque[_Emission] = deque()
        self._paused_since: float | None = None
        self._longest_pause = 0.0

    # Test API

    def messages(self) -> list[dict[str, object]]:
        """
        Return the text messages received that decode as JSON objects, in order.
        """
        return list(self._objects)

    def wait_for(self, method: str) -> Deferred[dict[str, object]]:
        """
        Wait for the first JSON object, already received or not, whose C{method} is C{method}.

        @param method: a JSON-RPC method.
        @return: fires with the whole message; fails with L{ConnectionClosed} if the connection
            closes first; cancelling it stops the wait.
        """
        return self.wait_for_message(lambda message: message.get("method") == method)

    def wait_for_message(
        self, predicate: Callable[[dict[str, object]], bool]
    ) -> Deferred[dict[str, object]]:
        """
        Wait for the first JSON object, already received or not, that satisfies C{predicate}.

        @param predicate: a test on a received message; an exception fails the wait.
        @return: fires with the message; fails with L{ConnectionClosed} if the connection closes
            first; cancelling it stops the wait.
        """
        for message in self._objects:
            try:
                matched = predicate(message)
            except Exception:
                waiting: Deferred[JSONObject] = Deferred()
                waiting.errback()
                return waiting
            if matched:
                return succeed(message)
        if self._closed_with is not None:
            failed: Deferred[JSONObject] = Deferred()
            failed.errback(ConnectionClosed(f"connection closed: {self._closed_with}"))
            return failed
        entry: tuple[Callable[[JSONObject], bool], Deferred[JSONObject]]

        def forget(_: Deferred[JSONObject]) -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)

        future: Deferred[JSONObject] = Deferred(forget)
        entry = (predicate, future)
        self._waiters.append(entry)
        return future

    def send(self, payload: bytes, is_binary: bool = False) -> None:
        """
        Send one message now, unless the websocket is no longer open.

        @param payload: the message bytes (UTF-8 for text).
        @param is_binary: whether to send a binary message.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=is_binary)

    def send_json(self, message: dict[str, object]) -> None:
        """
        Send C{message} as a compact JSON text message.

        @param message: the JSON object.
        """
        self.send(_encode(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Start the closing handshake with C{code} and C{reason} (any code, 1001 and 1011 included);
        abort a connection still in its opening handshake; nothing once closing.

        @param code: the close code.
        @param reason: the close reason (cut to 123 bytes of UTF-8).
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            # Not sendClose: it refuses every code but 1000 and 3000-4999.
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.drop()

    def drop(self) -> None:
        """
        Abort the TCP connection (no closing handshake).
        """
        if self.transport is not None and self._closed_with is None:
            self.transport.abortConnection()

    @property
    def closed(self) -> Deferred[tuple[int | None, str | None]]:
        """
        A new L{Deferred} that fires with C{(code, reason)} once the websocket is gone (at once when it
        is gone already).
        """
        if self._closed_with is not None:
            return succeed(self._closed_with)
        waiting: Deferred[tuple[int | None, str | None]] = Deferred()
        self._closed_waiters.append(waiting)
        return waiting

    @property
    def max_write_pause_seconds(self) -> float:
        """
        The longest time the transport kept this connection paused, the current pause included.
        """
        longest = self._longest_pause
        if self._paused_since is not None:
            longest = max(longest, self._app.reactor.seconds() - self._paused_since)
        return longest

    @property
    def paused(self) -> bool:
        """
        Whether the transport has paused this connection (its write buffer is full).
        """
        return self._paused_since is not None

    @property
    def websocket_open(self) -> bool:
        """
        Whether the websocket is open (handshake done, no close started).
        """
        return bool(self.state == WebSocketProtocol.STATE_OPEN)

    def respond(self, request_id: object, result: object) -> None:
        """
        Send a JSON-RPC result the way codex does.

        @param request_id: the request's id, echoed.
        @param result: the result value.
        """
        self.send_json({"id": request_id, "result": result})

    def respond_error(self, request_id: object, code: int, message: str) -> None:
        """
        Send a JSON-RPC error the way codex does.

        @param request_id: the request's id, echoed.
        @param code: the error code.
        @param message: the error message.
        """
        self.send_json({"error": {"code": code, "message": message}, "id": request_id})

    def notify(self, method: str, params: Mapping[str, object]) -> None:
        """
        Send a notification the way codex does (with C{emittedAtMs}).

        @param method: the notification method.
        @param params: its parameters.
        """
        self.send(_encode({"method": method, "params": params, "emittedAtMs": self._app.now_ms()}))

    def emit(self, count: int, payload: bytes, is_binary: bool) -> Deferred[None]:
        """
        Send C{payload} C{count} times, each time only while the transport has not paused us.

        @param count: how many messages.
        @param payload: the bytes of each.
        @param is_binary: whether they are binary messages.
        @return: fires once all were handed to the transport, or the connection closed first.
        """
        emission = _Emission(count, payload, is_binary)
        if count <= 0:
            emission.done.callback(None)
            return emission.done
        self._emissions.append(emission)
        self._pump()
        return emission.done

    def _pump(self) -> None:
        while self._emissions and self._paused_since is None and self.websocket_open:
            emission = self._emissions[0]
            emission.remaining -= 1
            if emission.remaining == 0:
                self._emissions.popleft()
            self.sendMessage(emission.payload, isBinary=emission.is_binary)
            if emission.remaining == 0:
                emission.done.callback(None)
        if not self.websocket_open:
            self._end_emissions()

    def _end_emissions(self) -> None:
        emissions, self._emissions = self._emissions, deque()
        for emission in emissions:
            emission.done.callback(None)

    # IPushProducer: the transport says when its write buffer is full and when it drained.

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: hold emissions and start timing the pause.
        """
        if self._paused_since is None:
            self._paused_since = self._app.reactor.seconds()

    def resumeProducing(self) -> None:
        """
        The transport drained its buffer: record the pause and go on with emissions.
        """
        if self._paused_since is not None:
            pause = self._app.reactor.seconds() - self._paused_since
            self._longest_pause = max(self._longest_pause, pause)
            self._paused_since = None
        self._pump()

    def stopProducing(self) -> None:
        """
        The transport is going away; C{onClose} follows.
        """

    # Autobahn callbacks

    def connectionMade(self) -> None:
        """
        Take over write notifications from the HTTP channel that handed us the transport.
        """
        self._app = self.factory.app
        super().connectionMade()
        # The HTTP channel registered itself as the transport's producer; a transport holds only one.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    def onConnect(self, request: ConnectionRequest) -> None:
        """
        Accept every handshake (no subprotocol); keep its headers.

        @param request: the handshake request.
        """
        self.request_headers = dict(request.headers)

    def onOpen(self) -> None:
        """
        The handshake completed: the server lists this connection.
        """
        self._app.accepted(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Record the message; echo it unless it is a text JSON object, which the server handles.

        @param payload: the message bytes.
        @param isBinary: whether it came as a binary message.
        """
        self.received.append((payload, isBinary))
        message = None if isBinary else _decode_object(payload)
        if message is None:
            self.send(payload, isBinary)
            return
        self._objects.append(message)
        for entry in list(self._waiters):
            predicate, waiting = entry
            try:
                matched = predicate(message)
            except Exception:
                self._waiters.remove(entry)
                waiting.errback()
                continue
            if matched:
                self._waiters.remove(entry)
                waiting.callback(message)
        self._app.dispatch(self, message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Fire L{closed}, fail the waits and end the emissions.

        @param wasClean: whether the closing handshake completed.
        @param code: the close code Autobahn reports.
        @param reason: the close reason Autobahn reports.
        """
        if self._closed_with is not None:
            return
        local_code = cast("int | None", self.localCloseCode)
        if self.closedByMe and local_code is not None:
            local_reason = cast("bytes | None", self.localCloseReason)
            code, reason = local_code, (local_reason or b"").decode("utf-8", "replace")
        self._closed_with = (code, reason)
        waiters, self._waiters = self._waiters, []
        for _, waiting in waiters:
            waiting.errback(ConnectionClosed(f"connection closed: {self._closed_with}"))
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        for closed in closed_waiters:
            closed.callback(self._closed_with)
        self._end_emissions()


class FakeAppServerFactory(WebSocketServerFactory):
    """
    Builds the L{FakeAppServerConnection}s of one L{FakeAppServer}, with every Autobahn option explicit
    and Autobahn's timers on the server's reactor. Tests may build protocols from it directly and link
    them to a client in memory (L{twisted.test.iosim}).

    @ivar app: the server the connections belong to.
    """

    protocol = FakeAppServerConnection

    def __init__(self, app: FakeAppServer) -> None:
        """
        @param app: the server the connections belong to.
        """
        super().__init__(reactor=app.reactor)
        self._batched_timer = ReactorTimer(self.reactor)
        self.app = app
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoFragmentSize=0,
            autoPingInterval=0,
            autoPingTimeout=0,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            failByDrop=False,
            webStatus=False,
            utf8validateIncoming=True,
            requireMaskedClientFrames=True,
            applyMask=True,
            perMessageCompressionAccept=lambda offers: None,
            trustXForwardedFor=0,
            allowedOrigins=["*"],
            tcpNoDelay=True,
        )


class _Root(Resource):
    # codex's one port: /readyz, /healthz, and the websocket at every other path.
    isLeaf = True

    def __init__(self, app: FakeAppServer) -> None:
        super().__init__()
        self._app = app
        self._websocket = WebSocketResource(app.factory)

    def render(self, request: Request) -> bytes | int:
        if request.path == b"/readyz":
            status = self._app.readyz_status
            return plain_response(request, status, b"ok" if status == 200 else b"not ready")
        if request.path == b"/healthz":
            return plain_response(request, 200, b"")
        connection = (request.getHeader(b"connection") or b"").lower()
        if b"upgrade" not in [token.strip() for token in connection.split(b",")]:
            return plain_response(request, 400, b"Connection header did not include 'upgrade'")
        # The channel's idle timer would outlive the upgraded connection (its connectionLost is
        # never called once Autobahn owns the transport).
        request.channel.setTimeout(None)
        return cast("bytes | int", self._websocket.render(request))


#: A JSON-RPC method's implementation: C{(connection, request id, params)}.
_Handler: TypeAlias = Callable[[FakeAppServerConnection, object, JSONObject], None]


class FakeAppServer:
    """
    In-process fake of C{codex app-server}: one C{twisted.web} site on 127.0.0.1 serving
    C{GET /readyz} (200 C{ok}, or L{readyz_status}) and the websocket (at C{/} and every other path).

    Behaviour knobs are plain attributes a test may change at any time:

    @ivar readyz_status: the status of C{GET /readyz}.
    @ivar turn_completion: C{"after_response"} (the turn's item and C{turn/completed} follow the
        C{turn/start} response), C{"before_response"} (all of them precede it) or C{"never"} (the turn
        stays in progress until C{turn/interrupt} completes it as C{interrupted}).
    @ivar turn_started_before_response: whether C{turn/started} precedes the C{turn/start} response
        (default) or follows it as in codex 0.169.0 (in C{"before_response"} mode it always precedes).
    @ivar reply_text: the text of every turn's C{agentMessage} item.
    @ivar errors: method → C{(code, message)}: requests with that method get that JSON-RPC error.
    @ivar close_on: method → close code: a message with that method closes the websocket with that
        code (reason empty), unanswered.
    @ivar codex_home: what C{initialize} reports as C{codexHome}.
    @ivar cwd: the working directory thread results report.

    Test-control requests (any id, accepted before C{initialize}):
     - C{fake/emit {"count":n,"size":b,"binary":bool,"all":bool}}: send C{n} messages of C{b} bytes to
       this connection (every open one with C{"all"}), then answer C{{"sent":n}};
     - C{fake/stats {}}: answer C{{"max_write_pause_seconds":float,"paused":bool}} for this connection;
     - C{fake/request {"method":m,"params":p,"id":x}}: send that server→client request (a notification
       without C{"id"}), then answer C{{}}; the client's reply lands in C{received} like any message.

    @ivar reactor: the reactor for listening and time.
    @ivar ws_url: C{ws://127.0.0.1:PORT} once listening (empty before).
    @ivar http_url: C{http://127.0.0.1:PORT} once listening (empty before).
    @ivar connections: every accepted websocket, in order (closed ones stay).
    @ivar factory: the websocket factory (for in-memory connections).
    @ivar site: the HTTP site serving the port.
    @ivar port: the listening port once listening.
    """

    def __init__(self, reactor: Any = None) -> None:
        """
        @param reactor: the reactor to listen on and read time from; L{None} for the global one.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        self.reactor: Any = reactor
        self.readyz_status = 200
        self.turn_completion = AFTER_RESPONSE
        self.turn_started_before_response = True
        self.reply_text = DEFAULT_REPLY_TEXT
        self.errors: dict[str, tuple[int, str]] = {}
        self.close_on: dict[str, int] = {}
        self.codex_home = ""
        self.cwd = os.getcwd()
        self.ws_url = ""
        self.http_url = ""
        self.connections: list[FakeAppServerConnection] = []
        self.port: IListeningPort | None = None
        self.factory = FakeAppServerFactory(self)
        self.site = Site(_Root(self))
        self._tracker = ConnectionTracker(self.site)
        self._next: list[Deferred[FakeAppServerConnection]] = []
        self._threads: dict[str, _Thread] = {}
        self._active_turns: dict[str, _Turn] = {}
        self._stopping: Deferred[None] | None = None
        self._methods: dict[str, _Handler] = {
            "thread/start": self._thread_start,
            "thread/resume": self._thread_resume,
            "turn/start": self._turn_start,
            "turn/interrupt": self._turn_interrupt,
        }
        self._control: dict[str, _Handler] = {
            "fake/emit": self._emit,
            "fake/stats": self._stats,
            "fake/request": self._request,
        }

    # Lifecycle

    def listen(self) -> Deferred[None]:
        """
        Listen on 127.0.0.1 on a port the OS picks; afterwards L{ws_url} and L{http_url} are set.

        @return: fires once listening.
        """

        def listening(port: IListeningPort) -> None:
            self.port = port
            number = port.getHost().port  # type: ignore[attr-defined]
            self.ws_url = f"ws://{LOOPBACK}:{number}"
            self.http_url = f"http://{LOOPBACK}:{number}"

        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface=LOOPBACK)
        ports: Deferred[IListeningPort] = endpoint.listen(self._tracker)
        return ports.addCallback(listening)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and drop every connection. Idempotent.

        @return: fires once the port is closed and every connection is gone.
        """
        if self._stopping is None:

            async def stopping() -> None:
                if self.port is not None:
                    stopped = self.port.stopListening()
                    if stopped is not None:
                        await stopped
                # Connections linked in memory are not in the tracker.
                for connection in self.connections:
                    connection.drop()
                await self._tracker.close_all(abort=True)

            self._stopping = Deferred.fromCoroutine(stopping())
        done: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            done.callback(None)
            return result

        self._stopping.addBoth(relay)
        return done

    def next_connection(self) -> Deferred[FakeAppServerConnection]:
        """
        Wait for the next websocket to be accepted (not one accepted already).

        @return: fires with it; cancelling it stops the wait.
        """

        def forget(waiting: Deferred[FakeAppServerConnection]) -> None:
            if waiting in self._next:
                self._next.remove(waiting)

        waiting: Deferred[FakeAppServerConnection] = Deferred(forget)
        self._next.append(waiting)
        return waiting

    def accepted(self, connection: FakeAppServerConnection) -> None:
        """
        A websocket completed its handshake: list it and fire L{next_connection}.

        @param connection: the new connection.
        """
        self.connections.append(connection)
        waiting, self._next = self._next, []
        for next_one in waiting:
            next_one.callback(connection)

    def build_connection(self, address: Any = None) -> FakeAppServerConnection:
        """
        Build a connection as the port does for an accepted socket, for tests that link it to a client
        in memory (e.g. with L{twisted.test.iosim}); it speaks the websocket handshake itself (no HTTP
        routes) and is listed once its handshake completes.

        @param address: the peer address to report.
        """
        connection = self.factory.buildProtocol(address)
        assert isinstance(connection, FakeAppServerConnection)
        return connection

    def add_thread(self, thread_id: str) -> None:
        """
        Make C{thread_id} a known thread with a rollout (as if it had run a turn before, possibly in
        an earlier process), so that C{thread/resume} and C{turn/start} accept it.

        @param thread_id: the thread id.
        """
        thread = self._threads.setdefault(thread_id, _Thread(thread_id, int(self.reactor.seconds())))
        thread.persisted = True

    def thread_ids(self) -> list[str]:
        """
        Return the known thread ids, in creation order.
        """
        return list(self._threads)

    def now_ms(self) -> int:
        """
        Return the reactor's time in milliseconds (for C{emittedAtMs} and item times).
        """
        return int(self.reactor.seconds() * 1000)

    # JSON-RPC

    def dispatch(self, connection: FakeAppServerConnection, message: JSONObject) -> None:
        """
        Act on one JSON object received on C{connection}.

        @param connection: where it came from.
        @param message: the decoded message.
        """
        method = message.get("method")
        if not isinstance(method, str):
            return  # a response (to fake/request) or junk: recorded, nothing to do
        if method in self.close_on:
            connection.close(self.close_on[method])
            return
        request_id = message.get("id")
        if request_id is None:
            if method == "initialized":
                connection.initialized_notified = True
            return
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        if method in self.errors:
            code, text = self.errors[method]
            connection.respond_error(request_id, code, text)
            return
        control = self._control.get(method)
        if control is not None:
            control(connection, request_id, params)
            return
        if method == "initialize":
            self._initialize(connection, request_id, params)
            return
        if not connection.initialized:
            connection.respond_error(request_id, INVALID_REQUEST, "Not initialized")
            return
        handler = self._methods.get(method)
        if handler is None:
            connection.respond_error(request_id, METHOD_NOT_FOUND, f"method not found: {method}")
            return
        handler(connection, request_id, params)

    def _initialize(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        if connection.initialized:
            connection.respond_error(request_id, INVALID_REQUEST, "Already initialized")
            return
        info = params.get("clientInfo")
        info = info if isinstance(info, dict) else {}
        name, version = str(info.get("name", "")), str(info.get("version", ""))
        connection.initialized = True
        connection.respond(
            request_id,
            {
                "userAgent": (
                    f"{name}/{CODEX_VERSION} (fake; {platform.machine()}) unknown ({name}; {version})"
                ),
                "codexHome": self.codex_home,
                "platformFamily": "unix",
                "platformOs": "linux",
            },
        )

    def _thread_object(self, thread: _Thread, with_turns: bool) -> JSONObject:
        active = any(turn.thread_id == thread.id for turn in self._active_turns.values())
        return {
            "id": thread.id,
            "sessionId": thread.id,
            "forkedFromId": None,
            "preview": thread.preview,
            "ephemeral": False,
            "modelProvider": MODEL_PROVIDER,
            "model": MODEL,
            "createdAt": thread.created_at,
            "updatedAt": int(self.reactor.seconds()),
            "status": {"type": "active", "activeFlags": []} if active else {"type": "idle"},
            "path": None,
            "cwd": self.cwd,
            "cliVersion": CODEX_VERSION,
            "source": "vscode",
            "name": None,
            "turns": list(thread.turns) if with_turns else [],
        }

    def _thread_result(self, thread: _Thread, with_turns: bool) -> JSONObject:
        return {
            "thread": self._thread_object(thread, with_turns),
            "model": MODEL,
            "modelProvider": MODEL_PROVIDER,
            "cwd": self.cwd,
            "approvalPolicy": "never",
            "sandbox": {"type": "readOnly", "networkAccess": False},
            "reasoningEffort": None,
        }

    def _thread_start(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        thread = _Thread(f"thr-{uuid.uuid4()}", int(self.reactor.seconds()))
        self._threads[thread.id] = thread
        connection.respond(request_id, self._thread_result(thread, with_turns=False))
        connection.notify("thread/started", {"thread": self._thread_object(thread, with_turns=False)})

    def _thread_resume(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        thread_id = params.get("threadId")
        if not isinstance(thread_id, str):
            connection.respond_error(request_id, INVALID_REQUEST, MISSING_THREAD_ID)
            return
        thread = self._threads.get(thread_id)
        if thread is None or not thread.persisted:
            message = f"no rollout found for thread id {thread_id}"
            connection.respond_error(request_id, INVALID_REQUEST, message)
            return
        connection.respond(request_id, self._thread_result(thread, with_turns=True))

    def _turn_object(
        self,
        turn: _Turn,
        status: str,
        started: bool,
        finished: bool,
        items: list[JSONObject] | None = None,
    ) -> JSONObject:
        return {
            "id": turn.id,
            "rootTurnId": turn.id,
            "items": items if items is not None else [],
            "itemsView": "full" if items else "notLoaded",
            "status": status,
            "error": None,
            "startedAt": int(turn.started_at) if started else None,
            "completedAt": int(self.reactor.seconds()) if finished else None,
            "durationMs": int((self.reactor.seconds() - turn.started_at) * 1000) if finished else None,
        }

    def _agent_message(
        self, item_id: str, text: str, started_ms: int, completed_ms: int | None
    ) -> JSONObject:
        return {
            "type": "agentMessage",
            "moderation": None,
            "id": item_id,
            "text": text,
            "phase": None,
            "memoryCitation": None,
            "delivery": None,
            "questions": None,
            "startedAtMs": started_ms,
            "completedAtMs": completed_ms,
        }

    def _run_turn(self, turn: _Turn) -> None:
        # The turn's one agent message, then its completion, to the connection that started it.
        connection = turn.connection
        item_id = f"item-{uuid.uuid4()}"
        now = self.now_ms()
        text = self.reply_text
        started = {
            "item": self._agent_message(item_id, "", now, None),
            "threadId": turn.thread_id,
            "turnId": turn.id,
            "startedAtMs": now,
        }
        connection.notify("item/started", started)
        item = self._agent_message(item_id, text, now, now)
        completed = {
            "item": item,
            "threadId": turn.thread_id,
            "turnId": turn.id,
            "contentTokenCount": None,
            "completedAtMs": now,
        }
        connection.notify("item/completed", completed)
        self._finish_turn(turn, "completed", [item])

    def _finish_turn(self, turn: _Turn, status: str, items: list[JSONObject]) -> None:
        thread = self._threads.get(turn.thread_id)
        if thread is not None:
            thread.turns.append(
                self._turn_object(turn, status, started=True, finished=True, items=items)
            )
        turn.connection.notify(
            "turn/completed",
            {
                "threadId": turn.thread_id,
                "turn": self._turn_object(turn, status, started=True, finished=True),
            },
        )

    def _turn_start(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        thread_id = params.get("threadId")
        if not isinstance(thread_id, str):
            connection.respond_error(request_id, INVALID_REQUEST, MISSING_THREAD_ID)
            return
        thread = self._threads.get(thread_id)
        if thread is None:
            connection.respond_error(request_id, INVALID_REQUEST, f"thread not found: {thread_id}")
            return
        mode = self.turn_completion
        if mode not in TURN_COMPLETION_MODES:
            connection.respond_error(
                request_id, INTERNAL_ERROR, f"fake: unknown turn_completion {mode!r}"
            )
            return
        thread.preview = thread.preview or _first_text(params.get("input"))
        thread.persisted = True
        turn = _Turn(f"turn-{uuid.uuid4()}", thread_id, connection, self.reactor.seconds())
        started = {
            "threadId": thread_id,
            "turn": self._turn_object(turn, "inProgress", started=True, finished=False),
        }
        response = {"turn": self._turn_object(turn, "inProgress", started=False, finished=False)}
        if mode == BEFORE_RESPONSE:
            connection.notify("turn/started", started)
            self._run_turn(turn)
            connection.respond(request_id, response)
            return
        if self.turn_started_before_response:
            connection.notify("turn/started", started)
            connection.respond(request_id, response)
        else:
            connection.respond(request_id, response)
            connection.notify("turn/started", started)
        if mode == AFTER_RESPONSE:
            self._run_turn(turn)
        else:
            self._active_turns[turn.id] = turn

    def _turn_interrupt(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        turn_id = params.get("turnId")
        turn = self._active_turns.get(turn_id) if isinstance(turn_id, str) else None
        if turn is None or turn.thread_id != params.get("threadId"):
            connection.respond_error(request_id, INVALID_REQUEST, "no active turn to interrupt")
            return
        del self._active_turns[turn.id]
        connection.respond(request_id, {})
        self._finish_turn(turn, "interrupted", [])

    # Test control

    def _emit(self, connection: FakeAppServerConnection, request_id: object, params: JSONObject) -> None:
        count, size = params.get("count", 1), params.get("size", 0)
        binary, everyone = params.get("binary", False), params.get("all", False)
        if not (
            _is_int(count) and _is_int(size) and isinstance(binary, bool) and isinstance(everyone, bool)
        ):
            connection.respond_error(
                request_id,
                INVALID_PARAMS,
                "fake/emit: count and size must be integers, binary and all booleans",
            )
            return
        assert isinstance(count, int) and isinstance(size, int)
        payload = emit_payload(size, binary)
        targets = [c for c in self.connections if c.websocket_open] if everyone else [connection]
        sending = gatherResults([target.emit(count, payload, binary) for target in targets])
        sending.addCallback(lambda _: connection.respond(request_id, {"sent": count}))

    def _stats(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        connection.respond(
            request_id,
            {
                "max_write_pause_seconds": connection.max_write_pause_seconds,
                "paused": connection.paused,
            },
        )

    def _request(
        self, connection: FakeAppServerConnection, request_id: object, params: JSONObject
    ) -> None:
        method = params.get("method")
        if not isinstance(method, str):
            connection.respond_error(request_id, INVALID_PARAMS, "fake/request: method must be a string")
            return
        outgoing: JSONObject = {}
        if "id" in params:
            outgoing["id"] = params["id"]
        outgoing["method"] = method
        if "params" in params:
            outgoing["params"] = params["params"]
        connection.send_json(outgoing)
        connection.respond(request_id, {})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _first_text(value: object) -> str:
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and isinstance(entry.get("text"), str):
                return str(entry["text"])
    return ""


# Subprocess mode


@dataclass(frozen=True)
class ProcessOptions:
    """
    The subprocess-mode options, read from the environment (see L{main}).

    @ivar banner: one of L{BANNER_MODES}.
    @ivar readyz_status: the status of C{GET /readyz}.
    @ivar ignore_sigterm: whether SIGTERM is ignored.
    @ivar grandchild: whether to start C{sleep 3600} in the fake's own process group.
    @ivar turn_completion: one of L{TURN_COMPLETION_MODES}.
    @ivar exit_after_banner: exit with this status 1 s after the banner, or L{None}.
    """

    banner: str = "stderr"
    readyz_status: int = 200
    ignore_sigterm: bool = False
    grandchild: bool = False
    turn_completion: str = AFTER_RESPONSE
    exit_after_banner: int | None = None


class OptionError(ValueError):
    """
    An environment variable of subprocess mode has a value the fake does not understand.
    """


def options_from_env(env: Mapping[str, str]) -> ProcessOptions:
    """
    Read the subprocess-mode options from C{env}; unset or empty variables take their defaults.

    @param env: the environment.
    @raise OptionError: for a value out of range.
    """

    def integer(name: str) -> int | None:
        raw = env.get(name, "")
        if raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise OptionError(f"{name} must be an integer, not {raw!r}") from None

    banner = env.get(ENV_BANNER, "") or "stderr"
    if banner not in BANNER_MODES:
        raise OptionError(f"{ENV_BANNER} must be one of {', '.join(BANNER_MODES)}, not {banner!r}")
    completion = env.get(ENV_TURN_COMPLETION, "") or AFTER_RESPONSE
    if completion not in TURN_COMPLETION_MODES:
        modes = ", ".join(TURN_COMPLETION_MODES)
        raise OptionError(f"{ENV_TURN_COMPLETION} must be one of {modes}, not {completion!r}")
    readyz = integer(ENV_READYZ)
    return ProcessOptions(
        banner=banner,
        readyz_status=200 if readyz is None else readyz,
        ignore_sigterm=env.get(ENV_IGNORE_SIGTERM, "") == "1",
        grandchild=env.get(ENV_GRANDCHILD, "") == "1",
        turn_completion=completion,
        exit_after_banner=integer(ENV_EXIT_AFTER_BANNER),
    )


def banner_lines(ws_url: str, mode: str) -> tuple[list[str], list[str]]:
    """
    Return the lines to print on stdout and on stderr once listening at C{ws_url}.

    @param ws_url: the address listened on, C{ws://127.0.0.1:PORT}.
    @param mode: one of L{BANNER_MODES}.
    """
    if mode == "none":
        return [], []
    if mode == "stdout":
        return [ws_url], []
    shown = ws_url.replace(LOOPBACK, NONLOOPBACK_HOST) if mode == "nonloopback" else ws_url
    http_url = "http" + ws_url.removeprefix("ws")
    # codex 0.169.0's banner, word for word.
    return [], [
        "codex app-server (WebSockets)",
        f"  listening on: {shown}",
        f"  readyz: {http_url}/readyz",
        f"  healthz: {http_url}/healthz",
        "  note: binds localhost only (use SSH port-forwarding for remote access)",
    ]


def _print(stream: Any, lines: list[str]) -> None:
    for line in lines:
        stream.write(line + "\n")
    stream.flush()


def main(argv: list[str] | None = None) -> None:
    """
    Run the fake as a process: C{--version} prints L{VERSION_LINE}; exactly
    C{app-server --listen ws://127.0.0.1:0} serves until SIGTERM or SIGINT (then returns, exit status 0);
    any other command line exits with status 2.

    Options come from the environment (the supervisor controls argv but passes the environment on):
    C{FAKE_APP_SERVER_BANNER} (C{stderr}: codex's banner on stderr; C{stdout}: the bare URL on stdout;
    C{none}: nothing; C{nonloopback}: codex's banner naming C{10.1.2.3}), C{FAKE_APP_SERVER_READYZ}
    (status of C{/readyz}), C{FAKE_APP_SERVER_IGNORE_SIGTERM=1}, C{FAKE_APP_SERVER_GRANDCHILD=1} (start
    C{sleep 3600} in the fake's process group and print C{grandchild pid N} on stderr, before the
    banner), C{FAKE_APP_SERVER_TURN_COMPLETION}, C{FAKE_APP_SERVER_EXIT_AFTER_BANNER=<status>}.
    C{CODEX_HOME} is reported by C{initialize}.

    @param argv: the arguments after the program name; L{None} for C{sys.argv[1:]}.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        _print(sys.stdout, [VERSION_LINE])
        return
    if tuple(args) != LISTEN_ARGV:
        _print(sys.stderr, [f"fake codex: usage: codex {' '.join(LISTEN_ARGV)} | codex --version"])
        raise SystemExit(2)
    try:
        options = options_from_env(os.environ)
    except OptionError as e:
        _print(sys.stderr, [f"fake codex: {e}"])
        raise SystemExit(2) from None

    from twisted.internet import reactor  # noqa: PLC0415

    app = FakeAppServer(reactor)
    app.readyz_status = options.readyz_status
    app.turn_completion = options.turn_completion
    app.codex_home = os.environ.get("CODEX_HOME", "")
    run: Any = reactor

    async def start() -> None:
        if options.ignore_sigterm:
            # After reactor start-up, which installed Twisted's own SIGTERM handler.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        await app.listen()
        if options.grandchild:
            grandchild = subprocess.Popen(
                ["sleep", "3600"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _print(sys.stderr, [f"grandchild pid {grandchild.pid}"])
        stdout_lines, stderr_lines = banner_lines(app.ws_url, options.banner)
        _print(sys.stdout, stdout_lines)
        _print(sys.stderr, stderr_lines)
        if options.exit_after_banner is not None:
            run.callLater(EXIT_AFTER_BANNER_DELAY, os._exit, options.exit_after_banner)

    def started() -> None:
        def failed(failure: Any) -> None:
            _print(sys.stderr, [f"fake codex: {failure.getErrorMessage()}"])
            os._exit(1)

        Deferred.fromCoroutine(start()).addErrback(failed)

    run.addSystemEventTrigger("before", "shutdown", app.stop)
    run.callWhenRunning(started)
    run.run()


def write_fake_codex(directory: str, python: str = sys.executable) -> str:
    """
    Write an executable C{codex} script into C{directory} that runs L{main} with C{python}, for use as
    C{CXG_CODEX_BIN}.

    @param directory: an existing directory.
    @param python: the interpreter (one that can import C{codexgw}).
    @return: the script's path.
    """
    path = Path(directory) / "codex"
    path.write_text(
        f"#!{python}\nfrom codexgw.testing.fakeappserver import main\n\nmain()\n", encoding="utf-8"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


__all__ = [
    "AFTER_RESPONSE",
    "BEFORE_RESPONSE",
    "CODEX_VERSION",
    "DEFAULT_REPLY_TEXT",
    "LISTEN_ARGV",
    "NEVER",
    "VERSION_LINE",
    "ConnectionClosed",
    "FakeAppServer",
    "FakeAppServerConnection",
    "FakeAppServerFactory",
    "OptionError",
    "ProcessOptions",
    "banner_lines",
    "emit_payload",
    "main",
    "options_from_env",
    "write_fake_codex",
]

if __name__ == "__main__":
    main()
