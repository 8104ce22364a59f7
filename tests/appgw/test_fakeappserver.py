"""
Tests for L{codexgw.testing.fakeappserver}, the fake C{codex app-server} the app gateway's tests use.

 - L{AppServerProtocolTests} is the protocol subset the gateway relies on (initialize, thread/start,
   turn/start → turn/completed with an C{agentMessage} item, thread/resume, turn/interrupt, codex's
   envelopes and errors). It runs against the real pinned codex 0.169.0 (with the fake model provider)
   and against the in-process fake in each turn mode, so the fake is proven against the real thing.
   The order of C{turn/started} and the C{turn/start} response is not checked: codex sends the
   response first, the fake by default the notification first, and consumers must accept both.
 - L{FakeAppServerTests}: the fake's own behaviour over real loopback sockets (HTTP routes, echo,
   knobs, test-control requests, handshake details).
 - L{FakeAppServerPacingTests}: C{fake/emit} pacing and the write-pause accounting, in memory on a
   fake clock.
 - L{FakeCodexProcessTests}: subprocess mode through the script L{write_fake_codex} writes.

Every wait on the network or a process is bounded; servers, connections and processes started by a test
are stopped in its cleanup (processes by their process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from autobahn.websocket.types import ConnectionResponse
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from codexgw.autobahntimers import ReactorTimer
from codexgw.executor.child import session_leader_argv
from codexgw.testing.fakeappserver import (
    CODEX_VERSION,
    ENV_BANNER,
    ENV_EXIT_AFTER_BANNER,
    ENV_GRANDCHILD,
    ENV_IGNORE_SIGTERM,
    ENV_READYZ,
    ENV_TURN_COMPLETION,
    LISTEN_ARGV,
    VERSION_LINE,
    ConnectionClosed,
    FakeAppServer,
    FakeAppServerConnection,
    emit_payload,
    write_fake_codex,
)
from codexgw.testing.fakemodel import BrokenStream, ModelScript, TextReply, listen_model_provider
from tests.codexclient import (
    AppServerConnection,
    AppServerExited,
    AppServerProcess,
    JsonRpcError,
    initialize,
    prepare_homes,
    provider_config,
    spawn_app_server,
)
from tests.codexclient import ConnectionClosed as ClientConnectionClosed
from tests.execgw.test_peer import ServerTransport
from tests.support import codex_binary

#: Deadlines, in seconds, for each step that waits.
STARTUP_SECONDS = 30
RPC_SECONDS = 20
TURN_SECONDS = 60

#: The agent message every server under test answers with.
REPLY = "Hello from the protocol tests."

#: The client name the tests present in C{initialize}.
CLIENT_NAME = "codexgw-tests"

#: A well-formed thread id that no server knows.
UNKNOWN_THREAD = "00000000-0000-0000-0000-000000000000"

#: Message limit of the test client (the 60 MiB messages of the proxy tests fit).
CLIENT_MAX_BYTES = 64 * 1024 * 1024

JSONObject = dict[str, object]


def member(value: object, *path: str) -> object:
    """
    Return C{value[path[0]][path[1]]...}, failing the test when a step is not an object holding that key.

    @param value: a decoded JSON value.
    @param path: the keys to follow.
    """
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise AssertionError(f"no {key!r} in {json.dumps(value)[:500]}")
        value = value[key]
    return value


def dig(value: object, *path: str) -> object:
    """
    Return C{value[path[0]][path[1]]...}, or L{None} where a step is not an object holding that key.

    @param value: a decoded JSON value.
    @param path: the keys to follow.
    """
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def as_object(value: object) -> JSONObject:
    """
    Return C{value}, failing the test unless it is a JSON object.

    @param value: a decoded JSON value.
    """
    if not isinstance(value, dict):
        raise AssertionError(f"not an object: {json.dumps(value)[:500]}")
    return value


async def rpc_error(
    case: TestCase, client: AppServerConnection, method: str, params: object
) -> JsonRpcError:
    """
    Send a request that must fail with a JSON-RPC error (within L{RPC_SECONDS}), and return the error.

    @param case: the running test.
    @param client: the connection.
    @param method: the method.
    @param params: its parameters.
    """
    answer: Deferred[Any] = client.request(method, params).addTimeout(RPC_SECONDS, reactor)
    error = await case.assertFailure(answer, JsonRpcError)
    assert isinstance(error, JsonRpcError)
    return error


class RecordingConnection(AppServerConnection):
    """
    The test client of L{tests.codexclient} that also keeps every message as received, the handshake
    response and how the websocket closed.

    @ivar raw: every message as C{(payload, is_binary)}, in order.
    @ivar response: the server's handshake response.
    @ivar close_info: C{(was_clean, code, reason)} once closed.
    """

    def __init__(self) -> None:
        """
        Start with nothing received.
        """
        super().__init__()
        self.raw: list[tuple[bytes, bool]] = []
        self.response: ConnectionResponse | None = None
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self._raw_waiters: list[tuple[Callable[[bytes, bool], bool], Deferred[tuple[bytes, bool]]]] = []

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        Keep the handshake response.

        @param response: the server's handshake response.
        """
        self.response = response

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Keep the message, fire the waits it matches, then handle it as JSON-RPC.

        @param payload: the message bytes.
        @param isBinary: whether it is a binary message.
        """
        self.raw.append((payload, isBinary))
        for entry in list(self._raw_waiters):
            if entry[0](payload, isBinary):
                self._raw_waiters.remove(entry)
                entry[1].callback((payload, isBinary))
        super().onMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Keep how it closed and fail the raw waits.

        @param wasClean: whether the closing handshake completed.
        @param code: the close code.
        @param reason: the close reason.
        """
        self.close_info = (wasClean, code, reason)
        waiters, self._raw_waiters = self._raw_waiters, []
        for _, waiting in waiters:
            waiting.errback(ConnectionClosed(f"closed: {self.close_info}"))
        super().onClose(wasClean, code, reason)

    def next_raw(self, predicate: Callable[[bytes, bool], bool]) -> Deferred[tuple[bytes, bool]]:
        """
        Wait for the first message, already received or not, that satisfies C{predicate}.

        @param predicate: a test on C{(payload, is_binary)}.
        """
        for payload, is_binary in self.raw:
            if predicate(payload, is_binary):
                return succeed((payload, is_binary))
        waiting: Deferred[tuple[bytes, bool]] = Deferred()
        self._raw_waiters.append((predicate, waiting))
        return waiting

    def objects(self) -> list[JSONObject]:
        """
        Return the text messages received that are JSON objects, decoded, in order.
        """
        found = []
        for payload, is_binary in self.raw:
            if not is_binary:
                with contextlib.suppress(ValueError):
                    value = json.loads(payload)
                    if isinstance(value, dict):
                        found.append(value)
        return found

    def index_of(self, predicate: Callable[[JSONObject], bool]) -> int:
        """
        Return the position, among L{objects}, of the first one satisfying C{predicate}.

        @param predicate: a test on a decoded message.
        """
        for index, value in enumerate(self.objects()):
            if predicate(value):
                return index
        raise AssertionError("no such message")


def connect(
    url: str, headers: Mapping[str, str] | None = None, offer_deflate: bool = False
) -> Deferred[RecordingConnection]:
    """
    Open a L{RecordingConnection} to C{url} on the global reactor.

    @param url: a C{ws://127.0.0.1:PORT} address.
    @param headers: extra handshake request headers.
    @param offer_deflate: whether to offer permessage-deflate.
    """
    factory = WebSocketClientFactory(url, headers=dict(headers or {}))
    factory.protocol = RecordingConnection
    factory.setProtocolOptions(
        maxFramePayloadSize=CLIENT_MAX_BYTES,
        maxMessagePayloadSize=CLIENT_MAX_BYTES,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        autoPingInterval=0,
        perMessageCompressionOffers=[PerMessageDeflateOffer()] if offer_deflate else [],
        perMessageCompressionAccept=PerMessageDeflateResponseAccept,
    )
    endpoint = clientFromString(reactor, f"tcp:host={factory.host}:port={factory.port}:timeout=10")
    connecting: Deferred[RecordingConnection] = endpoint.connect(factory)
    return connecting.addCallback(lambda connection: connection.opened).addTimeout(RPC_SECONDS, reactor)


def handshake(client: AppServerConnection) -> Deferred[object]:
    """
    C{initialize} as L{CLIENT_NAME}, then C{initialized}, within L{RPC_SECONDS}.

    @param client: a freshly opened connection.
    """
    return Deferred.fromCoroutine(initialize(client, CLIENT_NAME)).addTimeout(RPC_SECONDS, reactor)


async def http_get(url: str) -> tuple[int, bytes]:
    """
    C{GET url} on a connection that closes after the response.

    @param url: the URL.
    @return: the status and body.
    """
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", url.encode("ascii"), Headers()).addTimeout(
        RPC_SECONDS, reactor
    )
    body = await readBody(response).addTimeout(RPC_SECONDS, reactor)
    return response.code, body


if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object


class AppServerProtocolTests(_MixinBase):
    """
    The protocol subset of C{codex app-server} the gateway relies on; subclasses (with L{TestCase}) say
    which server runs it.
    """

    async def start_server(self) -> str:
        """
        Start a server whose turns answer L{REPLY} and arrange for it to stop in cleanup.

        @return: its C{ws://127.0.0.1:PORT} address.
        """
        raise NotImplementedError

    def hold_next_turn(self) -> None:
        """
        Make the next turn stay in progress until it is interrupted (call before L{start_server}).
        """
        raise NotImplementedError

    async def connected(self, initialized: bool = True) -> RecordingConnection:
        """
        Start the server, connect to it (closed in cleanup) and, unless told otherwise, initialize.

        @param initialized: whether to do the C{initialize}/C{initialized} handshake.
        """
        url = await self.start_server()
        client = await connect(url)
        self.addCleanup(client.close)
        if initialized:
            await Deferred.fromCoroutine(initialize(client, CLIENT_NAME)).addTimeout(
                RPC_SECONDS, reactor
            )
        return client

    async def call(self, client: AppServerConnection, method: str, params: object) -> JSONObject:
        """
        Send a request and return its result, which must be an object.

        @param client: the connection.
        @param method: the method.
        @param params: its parameters.
        """
        return as_object(await client.request(method, params).addTimeout(RPC_SECONDS, reactor))

    async def call_error(self, client: AppServerConnection, method: str, params: object) -> JsonRpcError:
        """
        Send a request that must fail with a JSON-RPC error, and return the error.

        @param client: the connection.
        @param method: the method.
        @param params: its parameters.
        """
        return await rpc_error(self, client, method, params)

    async def start_thread(self, client: AppServerConnection) -> str:
        """
        C{thread/start {}} and return the thread id.

        @param client: an initialized connection.
        """
        thread_id = member(await self.call(client, "thread/start", {}), "thread", "id")
        assert isinstance(thread_id, str)
        return thread_id

    async def start_turn(self, client: AppServerConnection, thread_id: str) -> str:
        """
        C{turn/start} with a text input and return the turn id.

        @param client: an initialized connection.
        @param thread_id: the thread.
        """
        params = {"threadId": thread_id, "input": [{"type": "text", "text": "Say hello."}]}
        result = await self.call(client, "turn/start", params)
        self.assertEqual(member(result, "turn", "status"), "inProgress")
        turn_id = member(result, "turn", "id")
        assert isinstance(turn_id, str)
        return turn_id

    async def turn_completed(self, client: AppServerConnection, turn_id: str) -> JSONObject:
        """
        Wait for the C{turn/completed} of C{turn_id} and return its params.

        @param client: the connection the turn runs on.
        @param turn_id: the turn.
        """
        return await client.notification(
            "turn/completed", lambda params: member(params, "turn", "id") == turn_id
        ).addTimeout(TURN_SECONDS, reactor)

    async def test_initialize(self) -> None:
        """
        C{initialize} answers C{userAgent} (beginning with the client name and codex's version),
        C{codexHome}, C{platformFamily} and C{platformOs}, all strings.
        """
        url = await self.start_server()
        client = await connect(url)
        self.addCleanup(client.close)
        result = as_object(await Deferred.fromCoroutine(initialize(client, CLIENT_NAME)))
        self.assertLessEqual({"userAgent", "codexHome", "platformFamily", "platformOs"}, set(result))
        self.assertTrue(all(isinstance(value, str) for value in result.values()), result)
        self.assertTrue(str(result["userAgent"]).startswith(f"{CLIENT_NAME}/{CODEX_VERSION} "), result)

    async def test_initialize_twice(self) -> None:
        """
        A second C{initialize} is C{-32600 Already initialized}.
        """
        client = await self.connected()
        error = await self.call_error(
            client, "initialize", {"clientInfo": {"name": "x", "version": "1"}}
        )
        self.assertEqual((error.code, error.message), (-32600, "Already initialized"))

    async def test_request_before_initialize(self) -> None:
        """
        A request before C{initialize} is C{-32600 Not initialized}.
        """
        client = await self.connected(initialized=False)
        error = await self.call_error(client, "thread/start", {})
        self.assertEqual((error.code, error.message), (-32600, "Not initialized"))

    async def test_envelopes(self) -> None:
        """
        Results are C{{"id","result"}}, errors C{{"error":{"code","message"},"id"}} and notifications
        C{{"method","params","emittedAtMs"}}, in that key order and without C{"jsonrpc"}.
        """
        client = await self.connected(initialized=False)
        await self.call_error(client, "thread/start", {})
        await Deferred.fromCoroutine(initialize(client, CLIENT_NAME)).addTimeout(RPC_SECONDS, reactor)
        thread_id = await self.start_thread(client)
        await client.notification(
            "thread/started", lambda params: member(params, "thread", "id") == thread_id
        ).addTimeout(RPC_SECONDS, reactor)
        objects = client.objects()
        error = objects[client.index_of(lambda message: message.get("id") == 1)]
        self.assertEqual(list(error), ["error", "id"])
        self.assertEqual(list(as_object(error["error"])), ["code", "message"])
        result = objects[client.index_of(lambda message: message.get("id") == 2)]
        self.assertEqual(list(result), ["id", "result"])
        started = objects[client.index_of(lambda message: message.get("method") == "thread/started")]
        self.assertEqual(list(started), ["method", "params", "emittedAtMs"])
        self.assertIsInstance(started["emittedAtMs"], int)

    async def test_thread_start(self) -> None:
        """
        C{thread/start} answers a thread with a string id, then announces it with C{thread/started}.
        """
        client = await self.connected()
        thread_id = await self.start_thread(client)
        self.assertTrue(thread_id)
        started = await client.notification("thread/started").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(started, "thread", "id"), thread_id)
        response = client.index_of(lambda message: dig(message, "result", "thread", "id") == thread_id)
        notified = client.index_of(lambda message: message.get("method") == "thread/started")
        self.assertLess(response, notified)

    async def test_turn(self) -> None:
        """
        C{turn/start} answers an in-progress turn; C{turn/started}, then C{item/started} and
        C{item/completed} of an C{agentMessage} item with the reply, then C{turn/completed} with
        C{status} C{completed} and no error follow (the response may come before or after
        C{turn/started}).
        """
        client = await self.connected()
        thread_id = await self.start_thread(client)
        turn_id = await self.start_turn(client, thread_id)
        completed = await self.turn_completed(client, turn_id)
        self.assertEqual(completed["threadId"], thread_id)
        turn = as_object(completed["turn"])
        self.assertEqual((turn["status"], turn["error"]), ("completed", None))

        def of_turn(method: str) -> Callable[[JSONObject], bool]:
            path = ("params", "turnId") if method.startswith("item/") else ("params", "turn", "id")
            return lambda message: message.get("method") == method and dig(message, *path) == turn_id

        agent_messages = [
            as_object(member(message, "params", "item"))
            for message in client.objects()
            if of_turn("item/completed")(message)
            and dig(message, "params", "item", "type") == "agentMessage"
        ]
        self.assertEqual([item["text"] for item in agent_messages], [REPLY])
        item_id = agent_messages[0]["id"]

        def item_event(method: str) -> Callable[[JSONObject], bool]:
            return lambda message: (
                of_turn(method)(message) and dig(message, "params", "item", "id") == item_id
            )

        order = [
            client.index_of(of_turn("turn/started")),
            client.index_of(item_event("item/started")),
            client.index_of(item_event("item/completed")),
            client.index_of(of_turn("turn/completed")),
        ]
        self.assertEqual(order, sorted(order))
        client.index_of(lambda message: dig(message, "result", "turn", "id") == turn_id)

    async def test_thread_resume(self) -> None:
        """
        C{thread/resume} of a thread with a finished turn answers that thread, its turns included.
        """
        client = await self.connected()
        thread_id = await self.start_thread(client)
        turn_id = await self.start_turn(client, thread_id)
        await self.turn_completed(client, turn_id)
        resumed = await self.call(client, "thread/resume", {"threadId": thread_id})
        self.assertEqual(member(resumed, "thread", "id"), thread_id)
        turns = member(resumed, "thread", "turns")
        assert isinstance(turns, list)
        self.assertIn((turn_id, "completed"), [(member(t, "id"), member(t, "status")) for t in turns])

    async def test_resume_unknown_thread(self) -> None:
        """
        C{thread/resume} of an unknown thread is C{-32600 no rollout found for thread id <id>}.
        """
        client = await self.connected()
        error = await self.call_error(client, "thread/resume", {"threadId": UNKNOWN_THREAD})
        self.assertEqual(
            (error.code, error.message), (-32600, f"no rollout found for thread id {UNKNOWN_THREAD}")
        )

    async def test_resume_fresh_thread(self) -> None:
        """
        C{thread/resume} of a thread without a turn yet (no rollout written) is
        C{-32600 no rollout found for thread id <id>}.
        """
        client = await self.connected()
        thread_id = await self.start_thread(client)
        error = await self.call_error(client, "thread/resume", {"threadId": thread_id})
        expected = f"no rollout found for thread id {thread_id}"
        self.assertEqual((error.code, error.message), (-32600, expected))

    async def test_turn_errors(self) -> None:
        """
        C{turn/start} of an unknown thread is C{-32600 thread not found: <id>}; without C{threadId} it
        is C{-32600 Invalid request: missing field `threadId`}.
        """
        client = await self.connected()
        error = await self.call_error(client, "turn/start", {"threadId": UNKNOWN_THREAD, "input": []})
        self.assertEqual((error.code, error.message), (-32600, f"thread not found: {UNKNOWN_THREAD}"))
        error = await self.call_error(client, "turn/start", {"input": []})
        expected = "Invalid request: missing field `threadId`"
        self.assertEqual((error.code, error.message), (-32600, expected))

    async def test_interrupt(self) -> None:
        """
        C{turn/interrupt} of a turn in progress answers C{{}}, then C{turn/completed} reports it
        C{interrupted}.
        """
        self.hold_next_turn()
        client = await self.connected()
        thread_id = await self.start_thread(client)
        turn_id = await self.start_turn(client, thread_id)
        await client.notification(
            "turn/started", lambda params: member(params, "turn", "id") == turn_id
        ).addTimeout(RPC_SECONDS, reactor)
        result = await self.call(client, "turn/interrupt", {"threadId": thread_id, "turnId": turn_id})
        self.assertEqual(result, {})
        completed = await self.turn_completed(client, turn_id)
        self.assertEqual(member(completed, "turn", "status"), "interrupted")

    async def test_interrupt_without_turn(self) -> None:
        """
        C{turn/interrupt} naming no active turn is C{-32600 no active turn to interrupt}.
        """
        client = await self.connected()
        thread_id = await self.start_thread(client)
        params = {"threadId": thread_id, "turnId": UNKNOWN_THREAD}
        error = await self.call_error(client, "turn/interrupt", params)
        self.assertEqual((error.code, error.message), (-32600, "no active turn to interrupt"))


class RealCodexProtocolTests(AppServerProtocolTests, TestCase):
    """
    The protocol subset against the real pinned codex app-server, whose model is the fake provider.
    """

    timeout = 120

    def setUp(self) -> None:
        """
        Script the fake provider to answer L{REPLY} unless another reply is queued.
        """
        self.script = ModelScript(lambda request: TextReply(REPLY))

    async def start_server(self) -> str:
        """
        Start the fake provider and codex using it.
        """
        listener = await listen_model_provider(reactor, "tcp:0:interface=127.0.0.1", self.script)
        self.addCleanup(listener.stop)
        root = Path(self.mktemp()).resolve()
        home, codex_home = prepare_homes(root, provider_config(listener.base_url))
        process = spawn_app_server(reactor, codex_binary(), home, codex_home)
        self.addCleanup(process.kill, reactor)
        url: str = await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        return url

    def hold_next_turn(self) -> None:
        """
        Queue a model reply that streams a little and then hangs until the provider stops.
        """
        self.script.enqueue(BrokenStream("partial", release=Deferred()))


class FakeProtocolTests(AppServerProtocolTests, TestCase):
    """
    The protocol subset against the in-process fake in its default mode.
    """

    timeout = 60
    hold = False

    def configure(self, fake: FakeAppServer) -> None:
        """
        Set the fake's knobs for this class.

        @param fake: the fake about to listen.
        """

    async def start_server(self) -> str:
        """
        Start an in-process fake on the global reactor.
        """
        fake = FakeAppServer(reactor)
        fake.reply_text = REPLY
        if self.hold:
            fake.turn_completion = "never"
        self.configure(fake)
        await fake.listen()
        self.addCleanup(fake.stop)
        return fake.ws_url

    def hold_next_turn(self) -> None:
        """
        Run the fake in C{never} mode.
        """
        self.hold = True


class FakeCodexOrderProtocolTests(FakeProtocolTests):
    """
    The protocol subset against the fake sending C{turn/started} after the response, as codex does.
    """

    def configure(self, fake: FakeAppServer) -> None:
        """
        Use codex's order.

        @param fake: the fake about to listen.
        """
        fake.turn_started_before_response = False


class FakeBeforeResponseProtocolTests(FakeProtocolTests):
    """
    The protocol subset against the fake finishing turns before the C{turn/start} response.
    """

    def configure(self, fake: FakeAppServer) -> None:
        """
        Finish turns before answering (unless the test holds them).

        @param fake: the fake about to listen.
        """
        if fake.turn_completion != "never":
            fake.turn_completion = "before_response"


class FakeAppServerTests(TestCase):
    """
    The fake's own behaviour, over real sockets on 127.0.0.1.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]  # trial awaits a coroutine setUp
        """
        Start a fake on the global reactor (stopped in cleanup).
        """
        self.fake = FakeAppServer(reactor)
        await self.fake.listen()
        self.addCleanup(self.fake.stop)

    async def open(
        self,
        initialized: bool = True,
        headers: Mapping[str, str] | None = None,
        offer_deflate: bool = False,
    ) -> tuple[RecordingConnection, FakeAppServerConnection]:
        """
        Connect a client (closed in cleanup) and return it with the fake's side of the connection.

        @param initialized: whether to do the C{initialize} handshake.
        @param headers: extra handshake headers.
        @param offer_deflate: whether the client offers permessage-deflate.
        """
        accepted = self.fake.next_connection().addTimeout(RPC_SECONDS, reactor)
        client = await connect(self.fake.ws_url, headers, offer_deflate)
        self.addCleanup(client.close)
        server = await accepted
        if initialized:
            await Deferred.fromCoroutine(initialize(client, CLIENT_NAME)).addTimeout(
                RPC_SECONDS, reactor
            )
        return client, server

    async def call(self, client: AppServerConnection, method: str, params: object) -> object:
        """
        Send a request and return its result.

        @param client: the connection.
        @param method: the method.
        @param params: its parameters.
        """
        return await client.request(method, params).addTimeout(RPC_SECONDS, reactor)

    async def test_urls(self) -> None:
        """
        After C{listen}, C{ws_url} and C{http_url} name the bound loopback port.
        """
        port = self.fake.port.getHost().port  # type: ignore[union-attr]
        self.assertEqual(self.fake.ws_url, f"ws://127.0.0.1:{port}")
        self.assertEqual(self.fake.http_url, f"http://127.0.0.1:{port}")

    async def test_readyz(self) -> None:
        """
        C{/readyz} answers 200 C{ok}, or the configured status; C{/healthz} answers 200.
        """
        self.assertEqual(await http_get(self.fake.http_url + "/readyz"), (200, b"ok"))
        self.fake.readyz_status = 503
        self.assertEqual(await http_get(self.fake.http_url + "/readyz"), (503, b"not ready"))
        self.assertEqual(await http_get(self.fake.http_url + "/healthz"), (200, b""))

    async def test_not_upgrade(self) -> None:
        """
        A plain C{GET /} gets codex's 400.
        """
        self.assertEqual(
            await http_get(self.fake.http_url + "/"),
            (400, b"Connection header did not include 'upgrade'"),
        )

    async def test_handshake(self) -> None:
        """
        The fake lists accepted connections in order with their request headers (names lower-cased) and
        declines permessage-deflate.
        """
        client, server = await self.open(headers={"X-Test-Header": "one"}, offer_deflate=True)
        self.assertEqual(self.fake.connections, [server])
        self.assertEqual(server.request_headers["x-test-header"], "one")
        self.assertIn("permessage-deflate", server.request_headers["sec-websocket-extensions"])
        assert client.response is not None
        self.assertEqual(client.response.extensions, [])
        self.assertNotIn("sec-websocket-extensions", client.response.headers)
        _, second = await self.open()
        self.assertEqual(self.fake.connections, [server, second])

    async def test_echo(self) -> None:
        """
        Binary messages, and text messages that are not JSON objects, come back unchanged with their
        type, up to 60 MiB; all are recorded in C{received}, and only text JSON objects in
        C{messages()}.
        """
        client, server = await self.open(initialized=False)
        big = emit_payload(60 * 1024 * 1024, binary=True)
        big_text = emit_payload(60 * 1024 * 1024, binary=False)
        sent = [
            (b"not json", False),
            (b"[1,2]", False),
            (b'"a string"', False),
            ('{"h\u00e9":"\u2603"}'.encode(), True),
            (b"\x00\xff", True),
            (big, True),
            (big_text, False),
        ]
        for payload, is_binary in sent:
            client.sendMessage(payload, isBinary=is_binary)
        await client.next_raw(lambda payload, is_binary: payload == big_text).addTimeout(
            RPC_SECONDS, reactor
        )
        self.assertEqual(client.raw, sent)
        client.sendMessage(b'{"method":"x/notify"}', isBinary=False)
        await server.wait_for("x/notify").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(server.received, [*sent, (b'{"method":"x/notify"}', False)])
        self.assertEqual(server.messages(), [{"method": "x/notify"}])

    async def test_wait_for(self) -> None:
        """
        C{wait_for} and C{wait_for_message} find past and future messages; waits still pending when the
        connection closes fail with L{ConnectionClosed}.
        """
        client, server = await self.open()
        past = await server.wait_for("initialize").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(past, "params", "clientInfo", "name"), CLIENT_NAME)
        self.assertEqual(member(await server.wait_for("initialized"), "method"), "initialized")
        future = server.wait_for_message(lambda message: message.get("id") == "later")
        client.sendMessage(b'{"id":"later","method":"x/y"}')
        self.assertEqual(member(await future.addTimeout(RPC_SECONDS, reactor), "method"), "x/y")
        never = server.wait_for("never/sent")
        await client.close()
        await self.assertFailure(never.addTimeout(RPC_SECONDS, reactor), ConnectionClosed)
        await self.assertFailure(server.wait_for("never/sent"), ConnectionClosed)

    async def test_unknown_method(self) -> None:
        """
        A request for a method the fake does not implement is C{-32601}; a notification is ignored.
        """
        client, _ = await self.open()
        client.notify("x/notification")
        error = await rpc_error(self, client, "thread/list", {})
        self.assertEqual((error.code, error.message), (-32601, "method not found: thread/list"))

    async def test_errors_knob(self) -> None:
        """
        A method in C{errors} is answered with that error, C{initialize} included.
        """
        self.fake.errors["initialize"] = (-32000, "no init today")
        client, _ = await self.open(initialized=False)
        error = await rpc_error(self, client, "initialize", {"clientInfo": {"name": "x"}})
        self.assertEqual((error.code, error.message), (-32000, "no init today"))
        del self.fake.errors["initialize"]
        self.fake.errors["turn/start"] = (-32001, "turn refused")
        await Deferred.fromCoroutine(initialize(client, CLIENT_NAME)).addTimeout(RPC_SECONDS, reactor)
        thread = await self.call(client, "thread/start", {})
        params = {"threadId": member(thread, "thread", "id"), "input": []}
        error = await rpc_error(self, client, "turn/start", params)
        self.assertEqual((error.code, error.message), (-32001, "turn refused"))

    async def test_close_on(self) -> None:
        """
        A method in C{close_on} closes the websocket with that code, unanswered; C{closed} reports it.
        """
        self.fake.close_on["turn/start"] = 1011
        client, server = await self.open()
        thread = await self.call(client, "thread/start", {})
        answer = client.request("turn/start", {"threadId": member(thread, "thread", "id"), "input": []})
        await self.assertFailure(answer.addTimeout(RPC_SECONDS, reactor), ClientConnectionClosed)
        self.assertEqual(await server.closed.addTimeout(RPC_SECONDS, reactor), (1011, ""))
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], 1011)
        self.assertEqual([dig(message, "result", "turn") for message in client.objects()], [None] * 3)

    async def test_server_side_close_and_drop(self) -> None:
        """
        C{close} sends any code (1001 included) with its reason; C{drop} aborts the connection, which
        C{closed} reports as 1006.
        """
        client, server = await self.open(initialized=False)
        server.close(1001, "going away")
        self.assertEqual(await server.closed.addTimeout(RPC_SECONDS, reactor), (1001, "going away"))
        await client.closed.addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(client.close_info, (True, 1001, "going away"))

        other, other_server = await self.open(initialized=False)
        other_server.drop()
        code, _ = await other_server.closed.addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(code, 1006)
        await other.closed.addTimeout(RPC_SECONDS, reactor)
        assert other.close_info is not None
        self.assertEqual(other.close_info[:2], (False, 1006))
        other_server.send(b"ignored once closed")

    async def test_send(self) -> None:
        """
        C{send} and C{send_json} deliver text and binary messages (JSON compact).
        """
        client, server = await self.open(initialized=False)
        server.send(b"\x01\x02", is_binary=True)
        server.send_json({"method": "x/y", "params": {"a": [1, 2]}})
        await client.next_raw(lambda payload, _: payload.startswith(b"{")).addTimeout(
            RPC_SECONDS, reactor
        )
        self.assertEqual(
            client.raw, [(b"\x01\x02", True), (b'{"method":"x/y","params":{"a":[1,2]}}', False)]
        )

    async def turn_messages(self, client: RecordingConnection, thread_id: str) -> tuple[str, list[str]]:
        """
        Run C{turn/start} and wait for its C{turn/completed}; return the turn id and the sequence of
        messages from C{turn/started} on (methods, and C{"response"} for the C{turn/start} answer).

        @param client: an initialized connection.
        @param thread_id: the thread.
        """
        first = len(client.raw)
        result = await self.call(
            client, "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "hi"}]}
        )
        turn_id = member(result, "turn", "id")
        assert isinstance(turn_id, str)
        await client.notification(
            "turn/completed", lambda params: member(params, "turn", "id") == turn_id
        ).addTimeout(RPC_SECONDS, reactor)
        sequence = []
        for payload, _ in client.raw[first:]:
            message = as_object(json.loads(payload))
            sequence.append(str(message.get("method", "response")))
        return turn_id, sequence

    async def test_turn_modes(self) -> None:
        """
        C{after_response}: C{turn/started}, the response, the item, C{turn/completed} (C{items} empty);
        with C{turn_started_before_response} false the response comes first; C{before_response}:
        everything, then the response.
        """
        client, _ = await self.open()
        thread = as_object(await self.call(client, "thread/start", {}))
        thread_id = str(member(thread, "thread", "id"))
        await client.notification("thread/started").addTimeout(RPC_SECONDS, reactor)
        turn_id, sequence = await self.turn_messages(client, thread_id)
        self.assertEqual(
            sequence, ["turn/started", "response", "item/started", "item/completed", "turn/completed"]
        )
        completed = await client.notification("turn/completed").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(completed, "turn", "items"), [])
        self.assertEqual(member(completed, "turn", "id"), turn_id)

        self.fake.turn_started_before_response = False
        _, sequence = await self.turn_messages(client, thread_id)
        self.assertEqual(
            sequence, ["response", "turn/started", "item/started", "item/completed", "turn/completed"]
        )

        self.fake.turn_completion = "before_response"
        _, sequence = await self.turn_messages(client, thread_id)
        self.assertEqual(
            sequence, ["turn/started", "item/started", "item/completed", "turn/completed", "response"]
        )

    async def test_never_mode(self) -> None:
        """
        In C{never} mode a turn stays in progress (no item, no completion) until C{turn/interrupt}, which
        answers C{{}} and then completes it as C{interrupted}; a second interrupt finds no active turn.
        """
        self.fake.turn_completion = "never"
        self.fake.reply_text = "never sent"
        client, _ = await self.open()
        thread = as_object(await self.call(client, "thread/start", {}))
        thread_id = member(thread, "thread", "id")
        result = await self.call(client, "turn/start", {"threadId": thread_id, "input": []})
        turn_id = member(result, "turn", "id")
        interrupt = {"threadId": thread_id, "turnId": turn_id}
        before = [str(message.get("method", "response")) for message in client.objects()]
        self.assertEqual(await self.call(client, "turn/interrupt", interrupt), {})
        completed = await client.notification("turn/completed").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(completed, "turn", "status"), "interrupted")
        self.assertNotIn("item/completed", before)
        self.assertNotIn("turn/completed", before)
        self.assertNotIn(b"never sent", b"".join(payload for payload, _ in client.raw))
        error = await rpc_error(self, client, "turn/interrupt", interrupt)
        self.assertEqual(error.message, "no active turn to interrupt")

    async def test_threads_shared(self) -> None:
        """
        Threads belong to the server: once it ran a turn, another connection resumes one (turns
        included) and runs turns on it, whose notifications go to that connection only; C{add_thread}
        makes an id known; unknown ids fail C{turn/start}.
        """
        first, _ = await self.open()
        thread = as_object(await self.call(first, "thread/start", {}))
        thread_id = str(member(thread, "thread", "id"))
        self.assertTrue(thread_id.startswith("thr-"))
        self.assertEqual(self.fake.thread_ids(), [thread_id])
        first_turn, _ = await self.turn_messages(first, thread_id)
        second, _ = await self.open()
        resumed = await self.call(second, "thread/resume", {"threadId": thread_id})
        self.assertEqual(member(resumed, "thread", "id"), thread_id)
        turns = member(resumed, "thread", "turns")
        assert isinstance(turns, list)
        self.assertEqual([member(turn, "id") for turn in turns], [first_turn])
        self.assertEqual(member(turns[0], "status"), "completed")
        items = member(turns[0], "items")
        assert isinstance(items, list)
        self.assertEqual([member(item, "text") for item in items], [self.fake.reply_text])
        await self.turn_messages(second, thread_id)
        completions = [
            message for message in first.objects() if message.get("method") == "turn/completed"
        ]
        self.assertEqual([dig(message, "params", "turn", "id") for message in completions], [first_turn])

        self.fake.add_thread("thr-seeded")
        resumed = await self.call(second, "thread/resume", {"threadId": "thr-seeded"})
        self.assertEqual(member(resumed, "thread", "turns"), [])
        error = await rpc_error(self, second, "turn/start", {"threadId": "thr-none", "input": []})
        self.assertEqual((error.code, error.message), (-32600, "thread not found: thr-none"))

    async def test_emit(self) -> None:
        """
        C{fake/emit} sends C{count} messages of C{size} bytes (text: a JSON string; binary: bytes) to
        this connection, or to every connection with C{all}, then answers C{{"sent":n}}; it works
        before C{initialize}.
        """
        client, _ = await self.open(initialized=False)
        other, _ = await self.open(initialized=False)
        result = await self.call(client, "fake/emit", {"count": 2, "size": 10})
        self.assertEqual(result, {"sent": 2})
        self.assertEqual(client.raw[:2], [(b'"xxxxxxxx"', False)] * 2)
        result = await self.call(
            client, "fake/emit", {"count": 3, "size": 300, "binary": True, "all": True}
        )
        self.assertEqual(result, {"sent": 3})
        expected = [(bytes(range(256)) + bytes(range(44)), True)] * 3
        self.assertEqual([m for m in client.raw if m[1]], expected)
        await other.next_raw(lambda _, is_binary: is_binary and len(other.raw) >= 3).addTimeout(
            RPC_SECONDS, reactor
        )
        self.assertEqual(other.raw, expected)
        error = await rpc_error(self, client, "fake/emit", {"count": "x"})
        self.assertEqual(error.code, -32602)

    async def test_stats(self) -> None:
        """
        C{fake/stats} answers this connection's longest write pause and whether it is paused now.
        """
        client, server = await self.open(initialized=False)
        result = as_object(await self.call(client, "fake/stats", {}))
        self.assertEqual(list(result), ["max_write_pause_seconds", "paused"])
        self.assertIsInstance(result["max_write_pause_seconds"], float)
        self.assertIs(result["paused"], False)
        self.assertIsInstance(server.max_write_pause_seconds, float)

    async def test_request(self) -> None:
        """
        C{fake/request} sends the server→client request (then answers C{{}}), and the client's reply is
        recorded; without an id it sends a notification.
        """
        client, server = await self.open(initialized=False)
        params = {"method": "item/commandExecution/requestApproval", "params": {"x": 1}, "id": 41}
        self.assertEqual(await self.call(client, "fake/request", params), {})
        self.assertEqual(
            client.server_requests,
            [{"id": 41, "method": "item/commandExecution/requestApproval", "params": {"x": 1}}],
        )
        reply = await server.wait_for_message(lambda message: message.get("id") == 41).addTimeout(
            RPC_SECONDS, reactor
        )
        self.assertEqual(reply["result"], {"decision": "accept"})
        await self.call(client, "fake/request", {"method": "execCommandApproval", "params": {}})
        self.assertEqual(
            [n for n in client.notifications if n.get("method") == "execCommandApproval"],
            [{"method": "execCommandApproval", "params": {}}],
        )

    async def test_stop(self) -> None:
        """
        C{stop} drops every connection and stops listening; a second C{stop} is fine.
        """
        client, server = await self.open()
        await self.fake.stop().addTimeout(RPC_SECONDS, reactor)
        await client.closed.addTimeout(RPC_SECONDS, reactor)
        code, _ = await server.closed
        self.assertEqual(code, 1006)
        await self.fake.stop().addTimeout(RPC_SECONDS, reactor)
        await self.assertFailure(connect(self.fake.ws_url), ConnectionRefusedError)


def memory_client_factory(clock: MemoryReactorClock) -> WebSocketClientFactory:
    """
    A client factory for in-memory connections that schedules nothing (every timeout off).

    @param clock: the fake clock.
    """
    factory = WebSocketClientFactory("ws://127.0.0.1:1/", reactor=clock)
    factory._batched_timer = ReactorTimer(clock)
    factory.protocol = RecordingConnection
    factory.setProtocolOptions(
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        serverConnectionDropTimeout=0,
        autoPingInterval=0,
    )
    return factory


class FakeAppServerPacingTests(SynchronousTestCase):
    """
    C{fake/emit} sends only while the transport has not paused the connection, and the pause is timed
    on the fake's reactor; an in-memory pump links the fake to an Autobahn client on a fake clock.
    """

    def setUp(self) -> None:
        """
        Link a connection of a fake on a fake clock to a client; the fake's transport pauses it once more
        than 1 KiB is unread.
        """
        self.clock = MemoryReactorClock()
        self.fake = FakeAppServer(self.clock)
        self.server = self.fake.build_connection()
        self.server_io: Any = ServerTransport(self.server)
        client: Any = memory_client_factory(self.clock).buildProtocol(None)
        self.client: RecordingConnection = client
        client_io = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(self.server, self.server_io, self.client, client_io, clock=self.clock)
        self.pump.flush()

    def request(self, method: str, params: object) -> Deferred[object]:
        """
        Send a request and deliver everything that can be delivered.

        @param method: the method.
        @param params: its parameters.
        """
        answer = self.client.request(method, params)
        self.pump.flush()
        return answer

    def test_emit_waits_while_paused(self) -> None:
        """
        While the client does not read, the fake hands one message to the transport and waits; the
        pause is timed by the fake's clock, and the rest follows once the client reads.
        """
        self.assertEqual(self.fake.connections, [self.server])
        self.server_io.remote_reading = False
        answer = self.request("fake/emit", {"count": 3, "size": 4096, "binary": True})
        self.assertTrue(self.server.paused)
        waiting = sum(len(chunk) for chunk in self.server_io.stream)
        self.assertTrue(4096 < waiting < 8192, waiting)
        self.clock.advance(2.5)
        self.assertEqual(self.server.max_write_pause_seconds, 2.5)
        self.assertNoResult(answer)
        self.server_io.remote_reading = True
        self.pump.flush()
        self.assertEqual(self.successResultOf(answer), {"sent": 3})
        self.assertEqual([len(payload) for payload, _ in self.client.raw[:3]], [4096] * 3)
        stats = self.successResultOf(self.request("fake/stats", {}))
        self.assertEqual(stats, {"max_write_pause_seconds": 2.5, "paused": False})

    def test_emit_ends_when_closed(self) -> None:
        """
        An emission waiting on a paused transport ends when the connection closes.
        """
        self.server_io.remote_reading = False
        answer = self.request("fake/emit", {"count": 5, "size": 4096, "binary": True})
        emission = self.server.emit(1, b"x", False)
        self.assertNoResult(emission)
        self.server.drop()
        self.pump.flush()
        self.successResultOf(emission)
        self.failureResultOf(answer, ClientConnectionClosed)
        self.assertEqual(self.successResultOf(self.server.closed)[0], 1006)


class FakeCodexProcess(AppServerProcess):
    """
    L{AppServerProcess} that can also wait for any output line.
    """

    def __init__(self) -> None:
        """
        Start with no output.
        """
        super().__init__()
        self._line_waiters: list[tuple[re.Pattern[bytes], bool, Deferred[re.Match[bytes]]]] = []

    def outReceived(self, data: bytes) -> None:
        """
        Keep stdout and fire the waits it satisfies.

        @param data: bytes written on stdout.
        """
        super().outReceived(data)
        self._check()

    def errReceived(self, data: bytes) -> None:
        """
        Keep stderr and fire the waits it satisfies.

        @param data: bytes written on stderr.
        """
        super().errReceived(data)
        self._check()

    def output(self, pattern: bytes, stderr: bool = True) -> Deferred[re.Match[bytes]]:
        """
        Wait until C{pattern} matches the output of one stream so far.

        @param pattern: a regular expression.
        @param stderr: which stream (else stdout).
        """
        waiting: Deferred[re.Match[bytes]] = Deferred()
        self._line_waiters.append((re.compile(pattern), stderr, waiting))
        self._check()
        return waiting.addTimeout(STARTUP_SECONDS, reactor)

    def _check(self) -> None:
        for entry in list(self._line_waiters):
            pattern, stderr, waiting = entry
            found = pattern.search(bytes(self.stderr if stderr else self.stdout))
            if found is not None:
                self._line_waiters.remove(entry)
                waiting.callback(found)


class FakeCodexProcessTests(TestCase):
    """
    Subprocess mode, through the C{codex} script L{write_fake_codex} writes.
    """

    timeout = 60

    def setUp(self) -> None:
        """
        Write the script into a fresh directory.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.codex_home = str(directory)
        self.script = write_fake_codex(str(directory))

    def spawn(
        self, args: list[str], env: Mapping[str, str] | None = None, banner: bool = True
    ) -> FakeCodexProcess:
        """
        Start the script with C{args} as the leader of a new process group (killed in cleanup).

        @param args: the arguments after the program.
        @param banner: whether a banner on stderr is expected (else the process may end without one).
        @param env: C{FAKE_APP_SERVER_*} variables to set.
        """
        process = FakeCodexProcess()
        if not banner:
            process.listening.addErrback(lambda failure: failure.trap(AppServerExited) and "")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_APP_SERVER_")}
        environment.update(env or {}, CODEX_HOME=self.codex_home)
        argv = session_leader_argv([self.script, *args])
        reactor.spawnProcess(process, argv[0], argv, env=environment)
        self.addCleanup(process.kill, reactor, 2.0)
        return process

    async def ended(self, process: FakeCodexProcess) -> Exception:
        """
        Wait (bounded) for C{process} to end and return the reason.

        @param process: the process.
        """
        ending: Deferred[Exception] = Deferred()

        def relay(reason: Exception) -> Exception:
            ending.callback(reason)
            return reason

        process.ended.addCallback(relay)
        return await ending.addTimeout(STARTUP_SECONDS, reactor)

    def test_write_fake_codex(self) -> None:
        """
        The script is executable and runs L{main} with the given interpreter.
        """
        path = Path(write_fake_codex(str(Path(self.script).parent), python="/opt/python"))
        self.assertEqual(path.name, "codex")
        self.assertTrue(os.access(path, os.X_OK))
        self.assertEqual(path.read_text().splitlines()[0], "#!/opt/python")
        self.assertIn("from codexgw.testing.fakeappserver import main", path.read_text())

    async def test_version(self) -> None:
        """
        C{--version} prints C{codex-cli 0.169.0} and exits 0.
        """
        process = self.spawn(["--version"], banner=False)
        self.assertIsInstance(await self.ended(process), ProcessDone)
        self.assertEqual(bytes(process.stdout), f"{VERSION_LINE}\n".encode())
        self.assertEqual(VERSION_LINE, "codex-cli 0.169.0")

    async def test_argv_checked(self) -> None:
        """
        Anything but codex's exact command line (or C{--version}) exits with status 2.
        """
        for args in (
            [],
            ["app-server"],
            ["app-server", "--listen", "ws://127.0.0.1:8080"],
            ["exec-server", "--listen", "ws://127.0.0.1:0"],
            [*LISTEN_ARGV, "--extra"],
        ):
            reason = await self.ended(self.spawn(args, banner=False))
            assert isinstance(reason, ProcessTerminated), args
            self.assertEqual(reason.exitCode, 2, args)

    async def test_bad_option(self) -> None:
        """
        An option value the fake does not understand exits with status 2.
        """
        reason = await self.ended(self.spawn(list(LISTEN_ARGV), {ENV_READYZ: "soon"}, banner=False))
        assert isinstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 2)

    async def test_stderr_banner(self) -> None:
        """
        By default codex's banner goes to stderr; C{/readyz} answers 200; C{initialize} reports
        C{CODEX_HOME}; SIGTERM ends the process with status 0.
        """
        process = self.spawn(list(LISTEN_ARGV))
        url = await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        self.assertRegex(url, r"^ws://127\.0\.0\.1:[0-9]+$")
        self.assertIn(f"codex app-server (WebSockets)\n  listening on: {url}\n".encode(), process.stderr)
        self.assertNotIn(b"ws://", process.stdout)
        http_url = "http" + url.removeprefix("ws")
        self.assertEqual(await http_get(http_url + "/readyz"), (200, b"ok"))
        client = await connect(url)
        self.addCleanup(client.close)
        result = await Deferred.fromCoroutine(initialize(client)).addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(result, "codexHome"), self.codex_home)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        self.assertIsInstance(await self.ended(process), ProcessDone)

    async def test_stdout_banner(self) -> None:
        """
        C{FAKE_APP_SERVER_BANNER=stdout} prints the bare URL on stdout and nothing with C{ws://} on
        stderr.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_BANNER: "stdout"}, banner=False)
        found = await process.output(rb"^(ws://127\.0\.0\.1:([0-9]+))\n", stderr=False)
        self.assertNotIn(b"ws://", process.stderr)
        self.assertEqual(
            await http_get(f"http://127.0.0.1:{found.group(2).decode()}/readyz"), (200, b"ok")
        )

    async def test_nonloopback_banner_and_readyz(self) -> None:
        """
        C{nonloopback} names C{10.1.2.3} in the banner while listening on 127.0.0.1;
        C{FAKE_APP_SERVER_READYZ} sets the status of C{/readyz}.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_BANNER: "nonloopback", ENV_READYZ: "503"})
        found = await process.output(rb"  listening on: ws://10\.1\.2\.3:([0-9]+)\n")
        self.assertEqual(
            await http_get(f"http://127.0.0.1:{found.group(1).decode()}/readyz"), (503, b"not ready")
        )

    async def test_no_banner_and_grandchild(self) -> None:
        """
        C{none} prints no address; C{FAKE_APP_SERVER_GRANDCHILD=1} starts C{sleep 3600} in the fake's
        own process group and prints its pid.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_BANNER: "none", ENV_GRANDCHILD: "1"}, banner=False)
        found = await process.output(rb"grandchild pid ([0-9]+)\n")
        grandchild = int(found.group(1))
        self.addCleanup(self.kill_quietly, grandchild)
        assert process.pid is not None
        self.assertEqual(os.getpgid(grandchild), process.pid)
        self.assertEqual(Path(f"/proc/{grandchild}/cmdline").read_bytes(), b"sleep\x003600\x00")
        os.kill(process.pid, signal.SIGTERM)
        self.assertIsInstance(await self.ended(process), ProcessDone)
        self.assertNotIn(b"ws://", process.stdout + process.stderr)

    def kill_quietly(self, pid: int) -> None:
        """
        SIGKILL C{pid} unless it is gone.

        @param pid: a process id.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def test_ignore_sigterm(self) -> None:
        """
        With C{FAKE_APP_SERVER_IGNORE_SIGTERM=1}, SIGTERM leaves the fake serving; SIGKILL ends it.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_IGNORE_SIGTERM: "1"})
        url = await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        http_url = "http" + url.removeprefix("ws")
        self.assertEqual(await http_get(http_url + "/readyz"), (200, b"ok"))
        self.assertEqual(await http_get(http_url + "/readyz"), (200, b"ok"))
        self.assertFalse(process.ended.called)
        os.killpg(process.pid, signal.SIGKILL)
        reason = await self.ended(process)
        assert isinstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)

    async def test_exit_after_banner(self) -> None:
        """
        C{FAKE_APP_SERVER_EXIT_AFTER_BANNER=3} exits with status 3 about a second after the banner.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_EXIT_AFTER_BANNER: "3"})
        await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        reason = await self.ended(process)
        assert isinstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 3)

    async def test_turn_completion_option(self) -> None:
        """
        C{FAKE_APP_SERVER_TURN_COMPLETION=never} holds turns until interrupted.
        """
        process = self.spawn(list(LISTEN_ARGV), {ENV_TURN_COMPLETION: "never"})
        url = await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        client = await connect(url)
        self.addCleanup(client.close)
        await Deferred.fromCoroutine(initialize(client)).addTimeout(RPC_SECONDS, reactor)
        thread = await client.request("thread/start", {}).addTimeout(RPC_SECONDS, reactor)
        thread_id = member(thread, "thread", "id")
        turn = await client.request("turn/start", {"threadId": thread_id, "input": []})
        turn_id = member(turn, "turn", "id")
        await client.request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}).addTimeout(
            RPC_SECONDS, reactor
        )
        completed = await client.notification("turn/completed").addTimeout(RPC_SECONDS, reactor)
        self.assertEqual(member(completed, "turn", "status"), "interrupted")
        self.assertEqual([n["method"] for n in client.notifications].count("turn/completed"), 1)

    async def test_python_module(self) -> None:
        """
        C{python -m codexgw.testing.fakeappserver} runs the same L{main}.
        """
        process = FakeCodexProcess()
        process.listening.addErrback(lambda failure: failure.trap(AppServerExited) and "")
        argv = session_leader_argv([sys.executable, "-m", "codexgw.testing.fakeappserver", "--version"])
        reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ))
        self.addCleanup(process.kill, reactor, 2.0)
        self.assertIsInstance(await self.ended(process), ProcessDone)
        self.assertEqual(bytes(process.stdout), f"{VERSION_LINE}\n".encode())
