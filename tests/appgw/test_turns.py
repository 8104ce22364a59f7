"""
Tests for L{codexgw.appgw.turns}: C{POST /api/turns} (C{app-gateway.md} §8.1–§8.3; acceptance items
52–60).

L{TurnAPITests} and friends drive L{TurnAPI.handle} with L{DummyRequest}s over a pool of fake links
on a L{Clock}. L{FakeAppServerTests} run the whole route — Klein, HTTP on 127.0.0.1, the pool's real
websockets — against the in-process L{FakeAppServer} on the real reactor, every wait bounded.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import treq
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from codexgw.appgw import turns
from codexgw.appgw.broker import Conn
from codexgw.appgw.brokerpool import BrokerPool
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.supervision import SpawnCapacityError
from codexgw.appgw.turns import (
    MAX_BODY_BYTES,
    InvalidTurnRequest,
    TurnAPI,
    TurnRequest,
    parse_turn_request,
)
from codexgw.config import Secret
from codexgw.httpio import bounded_request
from codexgw.testing.fakeappserver import BEFORE_RESPONSE, NEVER, FakeAppServer
from codexgw.testing.fakemodel import ModelScript, TextReply, listen_model_provider
from codexgw.testing.fakesupervisor import FakeSupervisor
from tests.appgw.stubhttp import LogCollector
from tests.appgw.test_broker import FakeConnector, failure_of
from tests.codexclient import prepare_homes, provider_config, spawn_app_server
from tests.support import codex_binary

SECRET = b"s" * 32
JSON = dict[str, Any]
#: A turn's input.
INPUT = [{"type": "text", "text": "hi"}]
#: The C{timeoutMs} type error.
NOT_INTEGER = "invalid json: timeoutMs must be an integer"
#: Seconds any real-reactor wait may take.
WAIT = 5.0


def post(body: bytes | JSON, secret: bytes | None = SECRET) -> Any:
    """
    A C{POST /api/turns} (a L{DummyRequest}) with C{body} (JSON-encoded unless bytes) and C{secret}.
    """
    request: Any = DummyRequest([b"api", b"turns"])
    request.method = b"POST"
    request.content = BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    if secret is not None:
        request.requestHeaders.setRawHeaders(b"X-Internal-Secret", [secret])
    return request


class ParseTests(SynchronousTestCase):
    """
    L{parse_turn_request}: §8.1 validation, in order (acceptance item 60).
    """

    def test_valid(self) -> None:
        """
        A full body parses; C{params} keeps its key order; C{timeoutMs} becomes seconds.
        """
        parsed = parse_turn_request(
            b'{"workspaceId":"ws_a","threadId":"t","params":{"input":[],"model":"m"},"timeoutMs":1500}'
        )
        self.assertEqual(parsed, TurnRequest("ws_a", "t", {"input": [], "model": "m"}, 1.5))
        self.assertEqual(list(parsed.params), ["input", "model"])

    def test_defaults(self) -> None:
        """
        No thread (absent, C{null} or C{""}) is C{""}; a timeout absent, C{null}, 0 or negative is
        300 s; a huge one is capped.
        """
        for extra in ({}, {"threadId": None, "timeoutMs": None}, {"threadId": "", "timeoutMs": 0}):
            with self.subTest(extra=extra):
                parsed = parse_turn_request(
                    json.dumps({"workspaceId": "w", "params": {}, **extra}).encode()
                )
                self.assertEqual((parsed.thread_id, parsed.timeout), ("", 300.0))
        negative = parse_turn_request(b'{"workspaceId":"w","params":{},"timeoutMs":-5}')
        self.assertEqual(negative.timeout, 300.0)
        huge = parse_turn_request(b'{"workspaceId":"w","params":{},"timeoutMs":1' + b"0" * 400 + b"}")
        self.assertEqual(huge.timeout, 10**9)

    def test_errors(self) -> None:
        """
        Each invalid body gets its exact text; the first failing rule wins.
        """
        cases = [
            (b"", "invalid json: Expecting value: line 1 column 1 (char 0)"),
            (b"\xff", "invalid json: 'utf-8' codec can't decode byte 0xff in position 0: "
                       "invalid start byte"),
            (b'{"workspaceId":NaN}', "invalid json: NaN is not valid JSON"),
            (b"[]", "invalid json: body must be a JSON object"),
            (b'"x"', "invalid json: body must be a JSON object"),
            (b'{"workspaceId":5,"params":{}}', "invalid json: workspaceId must be a string"),
            (b'{"workspaceId":"w","threadId":5,"params":{}}', "invalid json: threadId must be a string"),
            (b'{"workspaceId":"w","timeoutMs":"5","params":{}}', NOT_INTEGER),
            (b'{"workspaceId":"w","timeoutMs":1.5,"params":{}}', NOT_INTEGER),
            (b'{"workspaceId":"w","timeoutMs":true,"params":{}}', NOT_INTEGER),
            (b'{"threadId":5}', "invalid json: threadId must be a string"),
            (b'{"params":{}}', "workspaceId required"),
            (b'{"workspaceId":"","params":{}}', "workspaceId required"),
            (b'{"workspaceId":null,"params":{}}', "workspaceId required"),
            (b'{"workspaceId":"../x","params":{}}', "invalid workspaceId"),
            (b'{"workspaceId":"' + b"a" * 129 + b'","params":{}}', "invalid workspaceId"),
            (b'{"workspaceId":"w"}', "params required"),
            (b'{"workspaceId":"w","params":null}', "params required"),
            (b'{"workspaceId":"w","params":[]}', "params must be a JSON object"),
            (b'{"workspaceId":"w","params":"x"}', "params must be a JSON object"),
            (b'{"workspaceId":"w","params":{"threadId":"t"}}', "params must not include threadId"),
        ]  # fmt: skip
        for body, message in cases:
            with self.subTest(body=body):
                with self.assertRaises(InvalidTurnRequest) as raised:
                    parse_turn_request(body)
                self.assertEqual(str(raised.exception), message)


class TurnAPITestCase(SynchronousTestCase):
    """
    A L{TurnAPI} over fake links and a fake supervisor, on a clock.
    """

    def setUp(self) -> None:
        """
        A Turn API over fake links, with its log collected.
        """
        self.clock = Clock()
        self.supervisor = FakeSupervisor()
        self.connector = FakeConnector()
        self.metrics = AppMetrics()
        self.pool = BrokerPool(self.supervisor, self.metrics, self.clock, 300, connector=self.connector)
        self.logs = LogCollector()
        self.patch(turns, "log", self.logs.log)
        self.api = TurnAPI(self.pool, self.supervisor, self.metrics, self.clock, Secret(SECRET))
        self.addCleanup(self.api.shutdown)

    def respond(self, method: str, result: object) -> None:
        """
        The app-server answers the last C{method} request.
        """
        self.connector.links[-1].respond(method, result)

    def complete(self, turn: JSON) -> None:
        """
        The app-server sends C{turn/completed}.
        """
        self.connector.links[-1].deliver({"method": "turn/completed", "params": {"turn": turn}})

    def result(self, request: DummyRequest, answer: Deferred[bytes]) -> JSON:
        """
        The JSON of a 200 answer.
        """
        body = self.successResultOf(answer)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Content-Length"), [b"%d" % len(body)])
        self.assertTrue(body.endswith(b"}\n"))
        value: JSON = json.loads(body)
        return value

    def counted(self, result: str) -> float:
        """
        C{codexgw_turns_total{result}}.
        """
        value: float = self.metrics.turns.labels(result=result)._value.get()
        return value


class AuthTests(TurnAPITestCase):
    """
    The secret and the body limit (acceptance item 60).
    """

    def refusal(self, request: Any) -> tuple[int, bytes]:
        """
        The status and body of a refused request.
        """
        body = self.successResultOf(self.api.handle(request))
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"Content-Type"), [b"text/plain; charset=utf-8"]
        )
        return request.responseCode, body

    def test_secret(self) -> None:
        """
        No header → 401, a wrong one → 401, the right one passes (here to validation).
        """
        self.assertEqual(self.refusal(post({}, secret=None)), (401, b"unauthorized\n"))
        self.assertEqual(self.refusal(post({}, secret=b"t" * 32)), (401, b"unauthorized\n"))
        self.assertEqual(self.refusal(post({}, secret=SECRET[:-1])), (401, b"unauthorized\n"))
        self.assertEqual(self.refusal(post({})), (400, b"workspaceId required\n"))
        self.assertEqual(self.supervisor.ensures, [])

    def test_not_configured(self) -> None:
        """
        Without a configured secret every request is 500 C{internal secret not configured}.
        """
        api = TurnAPI(self.pool, self.supervisor, self.metrics, self.clock, None)
        request = post({})
        body = self.successResultOf(api.handle(request))
        self.assertEqual((request.responseCode, body), (500, b"internal secret not configured\n"))

    def test_too_large(self) -> None:
        """
        A 17 MiB body is 413 C{request body too large}; 16 MiB exactly is read.
        """
        big = post(b" " * (17 << 20))
        self.assertEqual(self.refusal(big), (413, b"request body too large\n"))
        exact = post(b" " * MAX_BODY_BYTES)
        self.assertEqual(self.refusal(exact)[0], 400)

    def test_validation(self) -> None:
        """
        A validation failure is 400 with its text.
        """
        self.assertEqual(
            self.refusal(post({"workspaceId": "w", "params": {"threadId": "x"}})),
            (400, b"params must not include threadId\n"),
        )


class FlowTests(TurnAPITestCase):
    """
    The flow of §8.2 and the responses of §8.1 (acceptance items 53, 55–57).
    """

    def test_new_thread(self) -> None:
        """
        Without C{threadId}: C{thread/start}, then the turn; 200 with the thread id and the turn; the
        workspace is pinned for the whole request; counted and logged.
        """
        request = post({"workspaceId": "ws_a", "params": {"input": [{"type": "text", "text": "hi"}]}})
        answer = self.api.handle(request)
        link = self.connector.links[0]
        self.assertEqual(self.supervisor.pins["ws_a"], 1)
        self.respond("thread/start", {"thread": {"id": "thr-new"}})
        self.assertEqual(
            link.last("turn/start")["params"],
            {"threadId": "thr-new", "input": [{"type": "text", "text": "hi"}]},
        )
        self.respond("turn/start", {"turn": {"id": "u1", "items": [], "status": "inProgress"}})
        self.clock.advance(2)
        link.deliver(
            {"method": "item/completed", "params": {"turnId": "u1", "item": {"type": "agentMessage"}}}
        )
        self.complete({"id": "u1", "items": [], "status": "completed"})
        self.assertEqual(
            self.successResultOf(answer),
            b'{"threadId":"thr-new","turn":{"id":"u1","items":[{"type":"agentMessage"}],'
            b'"status":"completed"}}\n',
        )
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(self.supervisor.pins["ws_a"], 0)
        self.assertEqual(self.counted("completed"), 1)
        self.assertEqual(self.metrics.turn_seconds._sum.get(), 2)
        self.assertIn("turn finished", self.logs.messages())
        event = self.logs.events[-1]
        self.assertEqual(
            (event["code"], event["duration"], event["workspace_id"]), ("completed", 2, "ws_a")
        )

    def test_existing_thread(self) -> None:
        """
        With a C{threadId} not attached to the Conn, C{thread/resume} precedes C{turn/start}.
        """
        answer = self.api.handle(post({"workspaceId": "ws_a", "threadId": "thr-old", "params": {}}))
        link = self.connector.links[0]
        self.respond("thread/resume", {"thread": {"id": "thr-old"}})
        self.respond("turn/start", {"turn": {"id": "u1"}})
        self.complete({"id": "u1", "status": "interrupted"})
        self.assertEqual(link.methods()[-2:], ["thread/resume", "turn/start"])
        self.assertEqual(
            json.loads(self.successResultOf(answer)),
            {"threadId": "thr-old", "turn": {"id": "u1", "status": "interrupted"}},
        )

    def test_capacity(self) -> None:
        """
        Capacity → C{capacityExceeded}, C{threadId} C{""}; the pin is released.
        """
        self.supervisor.failures.append(SpawnCapacityError(64))
        request = post({"workspaceId": "ws_a", "params": {}})
        self.assertEqual(
            self.result(request, self.api.handle(request)),
            {
                "threadId": "",
                "transport": {
                    "code": "capacityExceeded",
                    "message": "spawn capacity reached (64 app-servers live)",
                },
            },
        )
        self.assertEqual(self.supervisor.pins["ws_a"], 0)
        self.assertEqual(self.counted("capacityExceeded"), 1)

    def test_turn_error(self) -> None:
        """
        A JSON-RPC error on C{turn/start} → C{codexRPCError} with the started thread's id.
        """
        request = post({"workspaceId": "ws_a", "params": {}})
        answer = self.api.handle(request)
        self.respond("thread/start", {"thread": {"id": "thr-new"}})
        self.connector.links[0].respond_error("turn/start", -32600, "bad input")
        self.assertEqual(
            self.result(request, answer),
            {
                "threadId": "thr-new",
                "transport": {"code": "codexRPCError", "message": "codex rpc error -32600: bad input"},
            },
        )

    def test_timeout(self) -> None:
        """
        C{timeoutMs} 100 → C{brokerTimeout} after 100 ms with the thread and turn ids, no C{turn}.
        """
        request = post({"workspaceId": "ws_a", "threadId": "t", "params": {}, "timeoutMs": 100})
        answer = self.api.handle(request)
        self.respond("thread/resume", {})
        self.respond("turn/start", {"turn": {"id": "u"}})
        self.clock.advance(0.1)
        self.assertEqual(
            self.result(request, answer),
            {
                "threadId": "t",
                "transport": {"code": "brokerTimeout", "message": "turn timed out (thread=t turn=u)"},
            },
        )
        self.assertEqual(self.connector.links[0].methods()[-1], "turn/interrupt")

    def test_default_timeout(self) -> None:
        """
        Without C{timeoutMs} the turn may take 300 s.
        """
        answer = self.api.handle(post({"workspaceId": "ws_a", "threadId": "t", "params": {}}))
        self.respond("thread/resume", {})
        self.respond("turn/start", {"turn": {"id": "u"}})
        self.clock.advance(299.9)
        self.assertNoResult(answer)
        self.clock.advance(0.1)
        self.assertIn(b"brokerTimeout", self.successResultOf(answer))

    def test_crash(self) -> None:
        """
        The app-server crashing mid-turn → C{subprocessCrash}.
        """
        request = post({"workspaceId": "ws_a", "threadId": "t", "params": {}})
        answer = self.api.handle(request)
        self.supervisor.end("ws_a", "crash", "signal 9")
        self.assertEqual(
            self.result(request, answer)["transport"],
            {
                "code": "subprocessCrash",
                "message": "app-server exited (status signal 9) before turn/completed",
            },
        )

    def test_client_gone(self) -> None:
        """
        A client that disconnects stops the wait: nothing is written or sent (no interrupt), the pin
        is released, the Conn is no longer busy, nothing is counted.
        """
        request = post({"workspaceId": "ws_a", "threadId": "t", "params": {}})
        answer = self.api.handle(request)
        self.respond("thread/resume", {})
        self.respond("turn/start", {"turn": {"id": "u"}})
        link = self.connector.links[0]
        sent = len(link.sent)
        request.processingFailed(Failure(ConnectionDone()))
        self.assertIsInstance(failure_of(answer), CancelledError)
        self.assertEqual(self.supervisor.pins["ws_a"], 0)
        self.assertEqual(len(link.sent), sent)
        conn = self.pool.conn("ws_a")
        assert conn is not None
        self.assertFalse(conn.busy)
        self.assertTrue(conn.is_open)
        self.assertIsNone(request.responseCode)
        self.assertEqual(request.written, [])
        self.assertEqual(self.metrics.turns.labels(result="wsDisconnect")._value.get(), 0)
        self.assertEqual(self.counted("completed"), 0)
        self.assertIn("turn abandoned by client", self.logs.messages())

    def test_cancelled_by_klein(self) -> None:
        """
        Klein cancelling the answer (its reaction to a disconnect) has the same effect.
        """
        answer = self.api.handle(post({"workspaceId": "ws_a", "params": {}}))
        answer.cancel()
        failure_of(answer)
        self.assertEqual(self.supervisor.pins["ws_a"], 0)


class ShutdownTests(TurnAPITestCase):
    """
    L{TurnAPI.shutdown}.
    """

    def test_pending(self) -> None:
        """
        Pending requests are answered with C{wsDisconnect} C{gateway shutting down}; the pool is closed;
        new requests get the same answer.
        """
        first = post({"workspaceId": "ws_a", "params": {}})
        waiting_first = self.api.handle(first)
        self.respond("thread/start", {"thread": {"id": "thr-1"}})
        second = post({"workspaceId": "ws_b", "threadId": "t2", "params": {}})
        waiting_second = self.api.handle(second)
        done = self.api.shutdown()
        self.successResultOf(done)
        self.assertEqual(
            self.result(first, waiting_first),
            {
                "threadId": "thr-1",
                "transport": {"code": "wsDisconnect", "message": "gateway shutting down"},
            },
        )
        self.assertEqual(self.result(second, waiting_second)["threadId"], "t2")
        self.assertEqual([link.closed for link in self.connector.links], [(1000, "gateway closing")] * 2)
        self.assertEqual(self.supervisor.pins, {"ws_a": 0, "ws_b": 0})
        late = post({"workspaceId": "ws_a", "params": {}})
        self.assertEqual(
            self.result(late, self.api.handle(late))["transport"],
            {"code": "wsDisconnect", "message": "gateway shutting down"},
        )
        self.assertEqual(self.counted("wsDisconnect"), 3)


class _Routes:
    """
    The route as the gateway mounts it.
    """

    app = Klein()

    def __init__(self, api: TurnAPI) -> None:
        self.api = api

    @app.route("/api/turns", methods=["POST"])
    def turns(self, request: IRequest) -> Deferred[bytes]:
        """
        C{POST /api/turns}.
        """
        return self.api.handle(request)


class FakeAppServerTests(TestCase):
    """
    The Turn API over HTTP against the in-process fake app-server (real reactor, 127.0.0.1).
    """

    async def start(self, idle_ttl: float = 300.0) -> None:
        """
        Start the fake app-server, the pool, the route on 127.0.0.1 and an HTTP client; cleanups stop
        them again.
        """
        self.reactor: Any = global_reactor
        self.fake = FakeAppServer(self.reactor)
        await self.fake.listen()
        self.addCleanup(self.fake.stop)
        self.supervisor = FakeSupervisor(ws_url=self.fake.ws_url)
        self.metrics = AppMetrics()
        self.pool = BrokerPool(self.supervisor, self.metrics, self.reactor, idle_ttl, crash_grace=0.2)
        self.api = TurnAPI(self.pool, self.supervisor, self.metrics, self.reactor, Secret(SECRET))
        self.addCleanup(self.api.shutdown)
        site = Site(_Routes(self.api).app.resource())
        site.requestFactory = bounded_request(MAX_BODY_BYTES)
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(site)
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/api/turns"  # type: ignore[attr-defined]
        http_pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.http = HTTPClient(Agent(self.reactor, pool=http_pool))
        self.addCleanup(http_pool.closeCachedConnections)

    async def call(self, body: JSON | bytes, secret: bytes = SECRET) -> tuple[int, Any]:
        """
        POST C{body}; return the status and the JSON (or text) answer.
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await self.http.post(
            self.url, data=data, headers=Headers({b"X-Internal-Secret": [secret]})
        ).addTimeout(WAIT, self.reactor)
        content: bytes = await treq.content(response).addTimeout(WAIT, self.reactor)
        if response.headers.getRawHeaders(b"Content-Type") == [b"application/json"]:
            return response.code, json.loads(content)
        return response.code, content

    def bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        C{d} with the test's time limit.
        """
        return d.addTimeout(WAIT, self.reactor)

    async def test_turn(self) -> None:
        """
        The handshake is C{initialize} with the exact params, then C{initialized} without id, before
        anything else (item 52); the answer is 200 with the new thread and the turn whose C{items} are
        the C{item/completed} items, every other key kept in order (item 53).
        """
        await self.start()
        status, answer = await self.call({"workspaceId": "ws_a", "params": {"input": INPUT}})
        self.assertEqual(status, 200)
        [connection] = self.fake.connections
        messages = connection.messages()
        self.assertEqual(connection.received[0], (turns_initialize(), False))
        self.assertEqual(messages[1], {"jsonrpc": "2.0", "method": "initialized", "params": {}})
        self.assertEqual([m.get("method") for m in messages[2:]], ["thread/start", "turn/start"])
        self.assertTrue(answer["threadId"])
        self.assertEqual(messages[3]["params"], {"threadId": answer["threadId"], "input": INPUT})
        turn = answer["turn"]
        self.assertEqual(
            list(turn),
            [
                "id",
                "rootTurnId",
                "items",
                "itemsView",
                "status",
                "error",
                "startedAt",
                "completedAt",
                "durationMs",
            ],
        )
        self.assertEqual(turn["status"], "completed")
        self.assertEqual([item["type"] for item in turn["items"]], ["agentMessage"])
        self.assertEqual(turn["items"][0]["text"], self.fake.reply_text)
        self.assertEqual(self.metrics.turns.labels(result="completed")._value.get(), 1)

    async def test_completed_before_response(self) -> None:
        """
        Notifications and C{turn/completed} before the C{turn/start} response → still completes
        (item 54).
        """
        await self.start()
        self.fake.turn_completion = BEFORE_RESPONSE
        status, answer = await self.call({"workspaceId": "ws_a", "params": {"input": []}})
        self.assertEqual((status, answer["turn"]["status"]), (200, "completed"))
        self.assertEqual(len(answer["turn"]["items"]), 1)

    async def test_resume(self) -> None:
        """
        A given C{threadId} not attached to the Conn → C{thread/resume} precedes C{turn/start}; three
        turns use one dial (items 55, 59).
        """
        await self.start()
        self.fake.add_thread("thr-old")
        for _ in range(3):
            status, answer = await self.call(
                {"workspaceId": "ws_a", "threadId": "thr-old", "params": {}}
            )
            self.assertEqual((status, answer["threadId"]), (200, "thr-old"))
            self.assertEqual(answer["turn"]["status"], "completed")
        [connection] = self.fake.connections
        methods = [m.get("method") for m in connection.messages()[2:]]
        self.assertEqual(methods, ["thread/resume", "turn/start", "turn/start", "turn/start"])

    async def test_timeout(self) -> None:
        """
        Timeout 100 ms → C{brokerTimeout} with the turn id, no C{turn}; C{turn/interrupt
        {threadId, turnId}} reaches the fake; the next request dials again (item 56).
        """
        await self.start()
        self.fake.turn_completion = NEVER
        status, answer = await self.call({"workspaceId": "ws_a", "params": {}, "timeoutMs": 100})
        self.assertEqual(status, 200)
        self.assertNotIn("turn", answer)
        [connection] = self.fake.connections
        interrupt = await self.bounded(connection.wait_for("turn/interrupt"))
        start = next(m for m in connection.messages() if m.get("method") == "turn/start")
        thread_id = answer["threadId"]
        self.assertEqual(interrupt["params"]["threadId"], thread_id)
        turn_id = interrupt["params"]["turnId"]
        self.assertEqual(
            answer["transport"],
            {"code": "brokerTimeout", "message": f"turn timed out (thread={thread_id} turn={turn_id})"},
        )
        self.assertEqual(start["params"], {"threadId": thread_id})
        self.assertEqual(await self.bounded(connection.closed), (1000, "turn timed out"))
        self.fake.turn_completion = "after_response"
        status, answer = await self.call({"workspaceId": "ws_a", "threadId": thread_id, "params": {}})
        self.assertEqual(answer["turn"]["status"], "completed")
        self.assertEqual(len(self.fake.connections), 2)

    async def test_server_closes(self) -> None:
        """
        The fake closing the connection mid-turn → C{wsDisconnect}, no hang (item 57).
        """
        await self.start()
        self.fake.turn_completion = NEVER
        connecting = self.fake.next_connection()
        answering = Deferred.fromCoroutine(self.call({"workspaceId": "ws_a", "params": {}}))
        connection = await self.bounded(connecting)
        await self.bounded(connection.wait_for("turn/start"))
        connection.close(1000, "bye")
        _, answer = await self.bounded(answering)
        self.assertEqual(
            answer["transport"],
            {"code": "wsDisconnect", "message": "connection closed before turn/completed"},
        )

    async def test_dropped(self) -> None:
        """
        A dropped connection without a crash is C{wsDisconnect} after the grace.
        """
        await self.start()
        self.fake.turn_completion = NEVER
        connecting = self.fake.next_connection()
        answering = Deferred.fromCoroutine(self.call({"workspaceId": "ws_a", "params": {}}))
        connection = await self.bounded(connecting)
        await self.bounded(connection.wait_for("turn/start"))
        connection.drop()
        _, answer = await self.bounded(answering)
        self.assertEqual(answer["transport"]["code"], "wsDisconnect")

    async def test_crash(self) -> None:
        """
        The process killed mid-turn (its socket drops, then the supervisor sees the exit) →
        C{subprocessCrash} (item 57).
        """
        await self.start()
        self.fake.turn_completion = NEVER
        connecting = self.fake.next_connection()
        answering = Deferred.fromCoroutine(self.call({"workspaceId": "ws_a", "params": {}}))
        connection = await self.bounded(connecting)
        await self.bounded(connection.wait_for("turn/start"))
        connection.drop()
        await self.bounded(connection.closed)
        self.supervisor.end("ws_a", "crash", "signal 9")
        _, answer = await self.bounded(answering)
        self.assertEqual(
            answer["transport"],
            {
                "code": "subprocessCrash",
                "message": "app-server exited (status signal 9) before turn/completed",
            },
        )

    async def test_rpc_error(self) -> None:
        """
        A JSON-RPC error on C{turn/start} → C{codexRPCError} (item 57).
        """
        await self.start()
        self.fake.errors["turn/start"] = (-32600, "bad turn")
        _, answer = await self.call({"workspaceId": "ws_a", "params": {}})
        self.assertEqual(
            answer["transport"], {"code": "codexRPCError", "message": "codex rpc error -32600: bad turn"}
        )
        self.assertTrue(answer["threadId"])

    async def test_capacity(self) -> None:
        """
        Capacity → C{capacityExceeded} (item 57).
        """
        await self.start()
        self.supervisor.failures.append(SpawnCapacityError(2))
        status, answer = await self.call({"workspaceId": "ws_a", "params": {}})
        self.assertEqual(
            (status, answer),
            (
                200,
                {
                    "threadId": "",
                    "transport": {
                        "code": "capacityExceeded",
                        "message": "spawn capacity reached (2 app-servers live)",
                    },
                },
            ),
        )

    async def test_server_requests(self) -> None:
        """
        C{item/tool/call} gets the exact -32601 broker reply; an approval request the §7.3 reply
        (item 58).
        """
        await self.start()
        await self.call({"workspaceId": "ws_a", "params": {}})
        [connection] = self.fake.connections
        connection.send_json({"id": 41, "method": "item/tool/call", "params": {}})
        connection.send_json({"id": "a-1", "method": "item/fileChange/requestApproval", "params": {}})
        await self.bounded(connection.wait_for_message(lambda m: m.get("id") == "a-1"))
        replies = [payload for payload, _ in connection.received[-2:]]
        self.assertEqual(
            replies,
            [
                b'{"jsonrpc":"2.0","id":41,"error":{"code":-32601,'
                b'"message":"method not implemented by agentserver broker: item/tool/call"}}',
                b'{"jsonrpc":"2.0","id":"a-1","result":{"decision":"accept"}}',
            ],
        )

    async def test_idle_redial(self) -> None:
        """
        With an idle TTL of 100 ms the pool closes the idle Conn and the next turn dials again
        (item 59).
        """
        await self.start(idle_ttl=0.1)
        await self.call({"workspaceId": "ws_a", "params": {}})
        [connection] = self.fake.connections
        self.assertEqual(await self.bounded(connection.closed), (1000, "broker idle"))
        _, answer = await self.call({"workspaceId": "ws_a", "params": {}})
        self.assertEqual(answer["turn"]["status"], "completed")
        self.assertEqual(len(self.fake.connections), 2)

    async def test_dial_refused(self) -> None:
        """
        An app-server that does not accept the connection → C{subprocessCrash} C{dial: …}.
        """
        await self.start()
        await self.fake.stop()
        status, answer = await self.call({"workspaceId": "ws_a", "params": {}})
        self.assertEqual((status, answer["threadId"]), (200, ""))
        self.assertEqual(answer["transport"]["code"], "subprocessCrash")
        self.assertTrue(answer["transport"]["message"].startswith("dial: "), answer)

    async def test_http_limits(self) -> None:
        """
        Over HTTP: no or a wrong secret → 401; a 17 MiB body → 413 (item 60).
        """
        await self.start()
        self.assertEqual(await self.call({}, secret=b"x" * 32), (401, b"unauthorized\n"))
        status, body = await self.call(b" " * (17 << 20))
        self.assertEqual((status, body), (413, b"request body too large\n"))


def turns_initialize() -> bytes:
    """
    The exact C{initialize} request of §8.4.
    """
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientInfo":'
        b'{"name":"agentserver-codex-broker","title":null,"version":"0.1.0"},'
        b'"capabilities":{"experimentalApi":true,"requestAttestation":false}}}'
    )


class RealCodexTests(TestCase):
    """
    The Turn API against the pinned real codex app-server with the fake model provider (what the
    fake app-server stands in for; acceptance item 73 without the gateway process around it).
    """

    timeout = 120

    async def test_turn_then_resume(self) -> None:
        """
        A turn without C{threadId} completes with the model's message among its items; after the pool
        connection expired, a second turn with the returned C{threadId} resumes the thread on a new
        connection and completes too.
        """
        script = ModelScript()
        script.enqueue(TextReply("first answer"), TextReply("second answer"))
        listener = await listen_model_provider(global_reactor, "tcp:0:interface=127.0.0.1", script)
        self.addCleanup(listener.stop)
        root = Path(self.mktemp()).resolve()
        home, codex_home = prepare_homes(root, provider_config(listener.base_url))
        process = spawn_app_server(global_reactor, codex_binary(), home, codex_home)
        self.addCleanup(process.kill, global_reactor)
        url = await process.listening.addTimeout(30, global_reactor)
        supervisor = FakeSupervisor(ws_url=url)
        pool = BrokerPool(supervisor, AppMetrics(), global_reactor, 0.2)
        api = TurnAPI(pool, supervisor, AppMetrics(), global_reactor, Secret(SECRET))
        self.addCleanup(api.shutdown)

        first = await self.call(api, {"workspaceId": "ws_a", "params": {"input": INPUT}})
        self.assertEqual(first["turn"]["status"], "completed", first)
        texts = [item.get("text") for item in first["turn"]["items"] if item["type"] == "agentMessage"]
        self.assertEqual(texts, ["first answer"])
        conn = pool.conn("ws_a")
        assert conn is not None
        await self.until_closed(conn)

        body = {"workspaceId": "ws_a", "threadId": first["threadId"], "params": {"input": INPUT}}
        second = await self.call(api, body)
        self.assertEqual(second["threadId"], first["threadId"])
        self.assertEqual(second["turn"]["status"], "completed", second)
        texts = [item.get("text") for item in second["turn"]["items"] if item["type"] == "agentMessage"]
        self.assertEqual(texts, ["second answer"])

    async def call(self, api: TurnAPI, body: JSON) -> JSON:
        """
        Run one request through L{TurnAPI.handle}; return its JSON.
        """
        answer: bytes = await api.handle(post(body)).addTimeout(60, global_reactor)
        value: JSON = json.loads(answer)
        return value

    async def until_closed(self, conn: Conn) -> None:
        """
        Wait (bounded) for the pool's reaper to close C{conn}.
        """
        closed: Deferred[None] = Deferred()
        conn.when_unusable(lambda _: closed.callback(None))
        await closed.addTimeout(10, global_reactor)
        await conn.wait_closed().addTimeout(10, global_reactor)
