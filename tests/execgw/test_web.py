"""
Unit tests of the exec gateway's HTTP routes (L{codexgw.execgw.web}; C{exec-gateway.md} §3, §4.1–§4.6;
acceptance items 8, 14–26, 28, 34–40, 55–58 and 96).

Every request goes over the wire format for real, in memory: raw HTTP bytes into the gateway's own
L{Site} (same request class and body cap as the service) over a L{StringTransport}, and the raw
response bytes parsed back, so status lines, C{Content-Length}, chunking and header values are seen
exactly as a client would see them. The clock is a L{MemoryReactorClock}, the store a L{FakeStore},
bcrypt runs on a synchronous fake thread pool, and the websocket upgrade itself is replaced by a
recording resource (the relay logic has its own tests): nothing here does real I/O or waits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from codexgw import relayframe, tokens
from codexgw.config import Secret
from codexgw.execgw import web
from codexgw.execgw.bridge import BridgeSession
from codexgw.execgw.config import ExecGatewayConfig, load_config
from codexgw.execgw.inbound import InboundSession
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.passwords import TokenHasher
from codexgw.execgw.peer import FrameFactory
from codexgw.execgw.service import make_site
from codexgw.execgw.store import ExecutorRecord, StoreUnavailable, utc_now
from codexgw.execgw.switchboard import Switchboard
from codexgw.execgw.timestamps import format_timestamp
from codexgw.execgw.web import ExecGatewayRoutes
from codexgw.httpio import redacted_access_log
from codexgw.testing.fakepeer import FakeFramePeer
from codexgw.testing.fakestore import FakeStore
from codexgw.tokens import UsedTickets
from tests.execgw.test_passwords import ImmediatePool, ImmediateReactor

#: The fake clock's "now" at the start of every test (whole Unix seconds).
NOW = 1_779_000_000
CAP_SECRET = "cap-token-hmac-secret-0123456789abcdef"
SHARED_SECRET = "internal-shared-secret-0123456789abcdef"
ADMIN_SECRET = "agentserver-internal-secret-0123456789ab"
BASE_ENV = {
    "CXG_CAPTOKEN_HMAC_SECRET": CAP_SECRET,
    "CXG_INTERNAL_SHARED_SECRET": SHARED_SECRET,
    "CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN_SECRET,
}
#: A registration token and a cheap (cost 4) bcrypt hash of it: the gateway checks any cost.
REG_TOKEN = "0f1e2d3c4b5a6978" * 4
REG_HASH = bcrypt.hashpw(REG_TOKEN.encode("ascii"), bcrypt.gensalt(rounds=4)).decode("ascii")
EXE = "exe_11111111-2222-4333-8444-555555555555"
OTHER_EXE = "exe_66666666-7777-4888-9999-aaaaaaaaaaaa"
WS = "ws_1"
TURN = "trn_test"
MIB = 1 << 20
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"
EXE_ID_PATTERN = re.compile(r"^exe_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOKEN_PATTERN = re.compile(r"^[0-9a-f]{64}$")
#: Every metric name of §10.2.
METRIC_NAMES = (
    "cxg_exec_inbound_connected",
    "cxg_exec_inbound_connections_total",
    "cxg_exec_bridges_active",
    "cxg_exec_bridge_dials_total",
    "cxg_exec_bridge_closed_total",
    "cxg_exec_frames_total",
    "cxg_exec_frame_bytes_total",
    "cxg_exec_frames_dropped_total",
    "cxg_exec_relays_active",
    "cxg_exec_relays_total",
    "cxg_exec_relay_bytes_total",
    "cxg_exec_sdk_requests_total",
    "cxg_exec_store_seconds",
    "cxg_exec_store_errors_total",
    "cxg_exec_revoked_turns",
)

Headers = Sequence[tuple[str, str | bytes]]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def settled(d: Deferred[Any]) -> Any:
    """
    Return the result of a Deferred that has already fired (the fake store answers at once).
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@dataclass
class Reply:
    """
    One HTTP response as it went over the wire.

    @ivar headers: header values by lowercased name, in order.
    """

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """
        The single value of header C{name}, or C{None}; fails if it was sent twice.
        """
        values = self.headers.get(name.lower(), [])
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    @property
    def json(self) -> Any:
        """
        The body parsed as JSON.
        """
        return json.loads(self.body)

    def without_date(self) -> tuple[int, dict[str, list[str]], bytes]:
        """
        Everything but the C{Date} header, for comparing two replies.
        """
        headers = {k: v for k, v in self.headers.items() if k != "date"}
        return self.status, headers, self.body


def parse_reply(raw: bytes) -> Reply:
    """
    Parse one complete HTTP/1.1 response; fail if it was chunked or its length is wrong.
    """
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"incomplete response head: {raw[:200]!r}"
    lines = head.decode("iso-8859-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    assert "transfer-encoding" not in headers, f"chunked response: {raw[:300]!r}"
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"][0]), f"bad length: {raw[:300]!r}"
    return Reply(int(status), headers, body)


class Exchange:
    """
    One request in flight on its own connection (every request asks for C{Connection: close}).
    """

    def __init__(self, protocol: HTTPChannel, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    @property
    def answered(self) -> bool:
        """
        Whether the whole response was written (the gateway then closes the connection).
        """
        return bool(self.transport.disconnecting)

    def reply(self) -> Reply:
        """
        The response; fails if it is not complete yet.
        """
        assert self.answered, f"no complete response yet: {self.transport.value()[:200]!r}"
        return parse_reply(self.transport.value())

    def drop(self) -> None:
        """
        The client goes away before the response.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that says it is TLS (so C{request.isSecure()} holds).
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Accept the HTTP channel's socket tuning.
        """

    def getTcpNoDelay(self) -> bool:
        """
        Always on.
        """
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Accept socket tuning.
        """

    def getTcpKeepAlive(self) -> bool:
        """
        Always on.
        """
        return True

    def loseWriteConnection(self) -> None:
        """
        Half-close: close.
        """
        self.loseConnection()

    def getPeerCertificate(self) -> None:
        """
        No client certificate.
        """


class Upgraded(Resource):
    """
    Stands in for Autobahn's C{WebSocketResource}: answers 200 C{upgraded} so a test sees that a
    request passed every pre-upgrade check; the factory it was given is kept by the harness.
    """

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        """
        Answer in place of the websocket handshake.
        """
        return b"upgraded"


class FailingPool(ThreadPool):
    """
    A thread pool whose work always fails (bcrypt or the OS random source broke).
    """

    def callInThreadWithCallback(  # type: ignore[override]
        self,
        onResult: Callable[[bool, object], object] | None,
        func: Callable[..., object],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Report a failure without running C{func}.
        """
        if onResult is not None:
            onResult(False, RuntimeError("no bcrypt today"))


@implementer(ILogObserver)
class LogCapture:
    """
    Every log event emitted while a test runs, to check what is (and is not) logged.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        """
        Keep one event.
        """
        self.events.append(event)

    def named(self, event: str) -> list[dict[str, Any]]:
        """
        The events whose C{event} field is C{event}.
        """
        return [e for e in self.events if e.get("event") == event]

    def text(self) -> str:
        """
        Everything logged, formatted, with every field's value.
        """
        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)


class RouteHarness:
    """
    One exec gateway's routes wired to fakes: clock, store, switchboard, hasher, metrics.

    @ivar upgrades: the websocket factories of requests that passed every pre-upgrade check.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        env: Mapping[str, str] | None = None,
        *,
        fake_upgrade: bool = True,
        pool: ThreadPool | None = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.config: ExecGatewayConfig = load_config({**BASE_ENV, **(env or {})})
        self.store = FakeStore(self.clock)
        self.metrics = ExecMetrics()
        self.switchboard = Switchboard(
            self.clock,
            self.store,
            self.metrics,
            max_streams_per_executor=self.config.max_streams_per_executor,
            buffer_bytes=self.config.bridge_buffer_bytes,
            idle_timeout=self.config.bridge_idle_timeout,
        )
        self.pool = pool if pool is not None else ImmediatePool()
        self.used_tickets = UsedTickets()
        self.routes = ExecGatewayRoutes(
            self.config,
            self.store,
            self.switchboard,
            TokenHasher(ImmediateReactor(), self.pool),
            self.metrics,
            self.clock,
            self.used_tickets,
            reactor=self.clock,
        )
        # The same site as the service builds, with its access log on (into the global log).
        self.site = make_site(self.routes.app.resource(), self.config, reactor=self.clock)
        self.site.startFactory()
        case.addCleanup(self.site.stopFactory)
        self.upgrades: list[FrameFactory] = []
        if fake_upgrade:
            case.patch(web, "WebSocketResource", self._upgrade)

    def _upgrade(self, factory: FrameFactory) -> Resource:
        self.upgrades.append(factory)
        return Upgraded()

    # -- HTTP

    def send(
        self,
        method: str,
        path: str | bytes,
        headers: Headers = (),
        body: bytes | None = None,
        *,
        host: str | None = "gw.test",
        secure: bool = False,
    ) -> Exchange:
        """
        Send one raw HTTP/1.1 request on a new connection.
        """
        lines = [method.encode("ascii") + b" " + _bytes(path) + b" HTTP/1.1"]
        if host is not None:
            lines.append(b"Host: " + host.encode("ascii"))
        lines.append(b"Connection: close")
        lines.extend(_bytes(name) + b": " + _bytes(value) for name, value in headers)
        if body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(peer)
        kind = TLSStringTransport if secure else StringTransport
        transport = kind(hostAddress=IPv4Address("TCP", "127.0.0.1", 6060), peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        return Exchange(protocol, transport)

    def fetch(
        self,
        method: str,
        path: str | bytes,
        headers: Headers = (),
        body: bytes | None = None,
        *,
        host: str | None = "gw.test",
        secure: bool = False,
    ) -> Reply:
        """
        Send a request and return its (already complete) response.
        """
        return self.send(method, path, headers, body, host=host, secure=secure).reply()

    # -- fixtures

    def add_executor(self, exe_id: str = EXE, token_hash: str = REG_HASH) -> None:
        """
        Register an executor directly in the store.
        """
        record = ExecutorRecord(
            exe_id=exe_id,
            user_id="usr_1",
            display_name="",
            description="",
            default_cwd="",
            registered_at=utc_now(self.clock),
            last_seen_at=None,
        )
        settled(self.store.create_executor(record, token_hash))

    def bind(self, exe_id: str = EXE, wid: str = WS, name: str = "box") -> None:
        """
        Bind an executor to a workspace directly in the store.
        """
        settled(self.store.bind_workspace_executor(wid, exe_id, name, "", False))

    def connect(self, exe_id: str = EXE) -> tuple[InboundSession, FakeFramePeer]:
        """
        Give C{exe_id} a live inbound connection (as a finished upgrade would).
        """
        peer = FakeFramePeer()
        inbound = self.switchboard.new_inbound(exe_id, peer)
        peer.attach(inbound)
        return inbound, peer

    def cap(self, workspace_id: str = WS, turn_id: str = TURN, exp: int = NOW + 3600) -> str:
        """
        A cap token signed with the gateway's secret.
        """
        return tokens.mint_cap_token(Secret(CAP_SECRET.encode()), turn_id, workspace_id, NOW - 10, exp)

    def ready_executor(self, exe_id: str = EXE, wid: str = WS) -> tuple[InboundSession, FakeFramePeer]:
        """
        An executor that is registered, bound to C{wid} and connected.
        """
        self.add_executor(exe_id)
        self.bind(exe_id, wid, name=f"box-{exe_id[-4:]}")
        return self.connect(exe_id)

    def open_bridge(self, factory: FrameFactory) -> tuple[BridgeSession, FakeFramePeer]:
        """
        Complete the websocket handshake of an upgraded bridge request, in memory.
        """
        peer = FakeFramePeer()
        bridge = factory.make_receiver(peer)
        assert isinstance(bridge, BridgeSession)
        peer.attach(bridge)
        return bridge, peer


def admin(extra: Headers = ()) -> list[tuple[str, str | bytes]]:
    """
    Headers of an authenticated admin call.
    """
    return [("X-Internal-Secret", ADMIN_SECRET), *extra]


def bearer(token: str | bytes) -> list[tuple[str, str | bytes]]:
    """
    An C{Authorization: Bearer} header.
    """
    return [("Authorization", b"Bearer " + _bytes(token))]


def json_bytes(value: object) -> bytes:
    """
    C{value} as a JSON request body.
    """
    return json.dumps(value).encode("utf-8")


#: Bodies that are "invalid JSON" for every JSON route (§3), whatever its fields.
NOT_JSON_OBJECTS = (
    b"",
    b"[]",
    b"{",
    b"null",
    b'"text"',
    b"42",
    b"NaN",
    b"\xff\xfe{}",
    b'{"a":1}{"b":2}',
)


class ReplyAssertions(SynchronousTestCase):
    """
    Assertions on the two body styles of §3.
    """

    def assertText(self, reply: Reply, status: int, message: str) -> None:
        """
        C{reply} is the text body C{message}: status, body with newline, and the text headers.
        """
        self.assertEqual((reply.status, reply.body), (status, message.encode() + b"\n"))
        self.assertEqual(reply.header("Content-Type"), TEXT_TYPE)
        self.assertEqual(reply.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(reply.header("Content-Length"), str(len(reply.body)))

    def assertJSON(self, reply: Reply, status: int, value: object) -> None:
        """
        C{reply} is the compact JSON body of C{value}, keys in order, with a newline.
        """
        expected = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        self.assertEqual((reply.status, reply.body), (status, expected))
        self.assertEqual(reply.header("Content-Type"), JSON_TYPE)
        self.assertEqual(reply.header("Content-Length"), str(len(reply.body)))

    def assertJSONError(self, reply: Reply, status: int, message: str) -> None:
        """
        C{reply} is C{{"error":"<message>"}}.
        """
        self.assertJSON(reply, status, {"error": message})

    def assertEmpty(self, reply: Reply) -> None:
        """
        C{reply} is 204 without a body.
        """
        self.assertEqual((reply.status, reply.body), (204, b""))


class HealthTests(ReplyAssertions):
    """
    C{/healthz}, C{/readyz} and C{/metrics} (§4.1, acceptance item 8).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)

    def test_healthz_without_store(self) -> None:
        """
        C{/healthz} answers 200 C{ok} (no newline) with the store down, and never calls it.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        reply = self.gw.fetch("GET", "/healthz")
        self.assertEqual((reply.status, reply.body), (200, b"ok"))
        self.assertEqual(reply.header("Content-Type"), TEXT_TYPE)
        self.assertEqual(reply.header("Content-Length"), "2")
        self.assertEqual(self.gw.store.calls, [])

    def test_readyz_ready(self) -> None:
        """
        C{/readyz} pings the store and answers 200 C{ready} (no newline).
        """
        reply = self.gw.fetch("GET", "/readyz")
        self.assertEqual((reply.status, reply.body), (200, b"ready"))
        self.assertEqual(reply.header("Content-Length"), "5")
        self.assertEqual(self.gw.store.calls, ["ping"])

    def test_readyz_store_error(self) -> None:
        """
        A failing ping → 503 text C{store unavailable}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertText(self.gw.fetch("GET", "/readyz"), 503, "store unavailable")

    def test_readyz_deadline(self) -> None:
        """
        A ping that never answers → 503 C{store unavailable} exactly at the 2 s deadline, not before.
        """
        self.gw.store.stalled = True
        exchange = self.gw.send("GET", "/readyz")
        self.gw.clock.advance(1.999)
        self.assertFalse(exchange.answered)
        self.gw.clock.advance(0.001)
        self.assertText(exchange.reply(), 503, "store unavailable")

    def test_metrics(self) -> None:
        """
        C{/metrics} is the Prometheus text exposition with every metric name of §10.2.
        """
        reply = self.gw.fetch("GET", "/metrics")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(reply.header("Content-Length"), str(len(reply.body)))
        text = reply.body.decode("utf-8")
        for name in METRIC_NAMES:
            self.assertIn(f"\n# TYPE {name} ", "\n" + text)

    def test_metrics_revoked_turns(self) -> None:
        """
        The revoked-turn gauge follows the revoked set.
        """
        self.gw.switchboard.revoked.add("trn_a", NOW + 60)
        self.gw.switchboard.revoked.add("trn_b", NOW + 60)
        text = self.gw.fetch("GET", "/metrics").body.decode("utf-8")
        self.assertIn("\ncxg_exec_revoked_turns 2.0\n", text)


class ConventionTests(ReplyAssertions):
    """
    The HTTP conventions of §3: 404/405, and no 5xx or traceback for client mistakes (item 96).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)

    def test_unknown_paths(self) -> None:
        """
        Paths outside the route table → 404.
        """
        for path in (
            "/",
            "/nope",
            "/codex-exec",
            "/bridge",
            "/api/codex-exec/executors",
            "/api/exec-gateway/unknown",
            "/api/sdk/envs/list",
            "/cloud/executor/exe_1",
            "/healthz/extra",
        ):
            self.assertEqual(self.gw.fetch("GET", path).status, 404, path)

    def test_wrong_methods(self) -> None:
        """
        A known path with a method it does not serve → 405.
        """
        for method, path in (
            ("POST", "/healthz"),
            ("DELETE", "/readyz"),
            ("POST", "/metrics"),
            ("POST", "/codex-exec/exe_1"),
            ("PUT", "/bridge/exe_1"),
            ("GET", "/cloud/executor/exe_1/register"),
            ("GET", "/cloud/environment/exe_1/register"),
            ("GET", "/api/codex-exec/register"),
            ("POST", "/api/codex-exec/executors/exe_1"),
            ("PUT", "/api/codex-exec/workspaces/w/executors"),
            ("POST", "/api/codex-exec/workspaces/w/executors/exe_1"),
            ("POST", "/api/exec-gateway/connected"),
            ("GET", "/api/exec-gateway/revoke-turn"),
        ):
            self.assertEqual(self.gw.fetch(method, path, body=b"").status, 405, (method, path))

    def _mistakes(self) -> Iterator[tuple[str, str | bytes, Headers, bytes | None]]:
        big = b"{" + b" " * MIB + b"}"
        weird: Headers = [("Authorization", b"Bearer \xff\xfe.\x00"), ("X-User-Id", b"\xff")]
        wrong_admin: Headers = [("X-Internal-Secret", b"\xff" * 40), ("X-User-Id", "u")]
        for body in (*NOT_JSON_OBJECTS, big, b'{"display_name":1}', b'{"exe_id":[],"name":{}}'):
            for headers in (admin([("X-User-Id", "u")]), wrong_admin, weird, ()):
                yield "POST", "/api/codex-exec/register", headers, body
                yield "POST", "/api/codex-exec/workspaces/w/executors", headers, body
                yield "POST", "/api/exec-gateway/revoke-turn", bearer(SHARED_SECRET), body
                yield "POST", "/api/exec-gateway/revoke-turn", headers, body
                yield "GET", "/api/exec-gateway/connected?workspace_id=w", headers, body
                yield "POST", "/cloud/executor/exe_1/register", headers, body
        for headers in (weird, bearer(b"\xff.\xff.\xff"), bearer(b"a" * 100), bearer(".."), ()):
            yield "GET", "/bridge/exe_1", headers, None
            yield "GET", "/bridge/%ff%00", headers, None
            yield "POST", "/cloud/executor/%ff/register", headers, b""
            yield "GET", "/api/exec-gateway/connected?workspace_id=%ff", headers, None
            yield "GET", "/codex-exec/exe_1?token=%ff%fe", headers, None
            yield "GET", "/codex-exec/exe_1?token=a.b.c&token=x", headers, None
            yield "GET", "/codex-exec/exe_1?token=" + "9" * 5000, headers, None
            yield "GET", "/codex-exec/exe_1?token=exe_1.99999999999999999999999.AAAA", headers, None
            yield "GET", b"/codex-exec/\xff?token=x", headers, None
            yield "DELETE", "/api/codex-exec/executors/%ff", admin(), None

    def test_client_mistakes_never_5xx(self) -> None:
        """
        Malformed JSON, wrong types, oversized bodies, odd bytes in headers, paths and query strings,
        and wrong auth on every route never yield a 5xx or a traceback in the response.
        """
        self.gw.add_executor("exe_1")
        for method, path, headers, body in self._mistakes():
            reply = self.gw.fetch(method, path, headers, body)
            self.assertLess(reply.status, 500, (method, path, headers, body and body[:40], reply))
            self.assertNotIn(b"Traceback", reply.body)
        # Klein logs the paths that are not UTF-8 (answered 400) as errors.
        self.flushLoggedErrors(UnicodeDecodeError)

    def test_text_and_json_headers(self) -> None:
        """
        Text bodies carry C{text/plain; charset=utf-8}, C{nosniff} and a length; JSON bodies are
        compact with a newline and a length; neither is chunked.
        """
        text = self.gw.fetch("GET", "/bridge/exe_1")
        self.assertText(text, 401, "missing Bearer")
        data = self.gw.fetch("POST", "/cloud/executor/exe_1/register")
        self.assertJSONError(data, 401, "missing bearer")
        self.assertEqual(data.body, b'{"error":"missing bearer"}\n')


#: One request per admin route, with a body the route accepts.
ADMIN_ROUTES: tuple[tuple[str, str, bytes | None], ...] = (
    ("POST", "/api/codex-exec/register", b"{}"),
    ("DELETE", f"/api/codex-exec/executors/{EXE}", None),
    ("POST", "/api/codex-exec/workspaces/w1/executors", json_bytes({"exe_id": EXE, "name": "n"})),
    ("POST", "/api/codex-exec/workspaces/w1/executors/", json_bytes({"exe_id": EXE, "name": "n"})),
    ("GET", "/api/codex-exec/workspaces/w1/executors", None),
    ("GET", "/api/codex-exec/workspaces/w1/executors/", None),
    ("DELETE", f"/api/codex-exec/workspaces/w1/executors/{EXE}", None),
)


class AdminAuthTests(ReplyAssertions):
    """
    C{X-Internal-Secret} and the 1 MiB body limit on every admin route (§4.5, §3; item 14).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)
        self.gw.add_executor()
        self.gw.store.calls.clear()

    def test_missing_or_wrong_secret(self) -> None:
        """
        Missing, wrong, truncated, extended or differently cased secrets → 401 text C{unauthorized},
        before anything else (even a missing user) and without a store call.
        """
        for method, path, body in ADMIN_ROUTES:
            for headers in (
                [],
                [("X-Internal-Secret", "")],
                [("X-Internal-Secret", "x" * len(ADMIN_SECRET))],
                [("X-Internal-Secret", ADMIN_SECRET[:-1])],
                [("X-Internal-Secret", ADMIN_SECRET + "x")],
                [("X-Internal-Secret", ADMIN_SECRET.upper())],
                [("X-Internal-Secret", b"\xff" * 40)],
                [("Authorization", f"Bearer {ADMIN_SECRET}")],
            ):
                reply = self.gw.fetch(method, path, headers, body)
                self.assertText(reply, 401, "unauthorized")
        self.assertEqual(self.gw.store.calls, [])

    def test_header_name_case_insensitive(self) -> None:
        """
        The secret's header name matches in any case, as HTTP header names do.
        """
        reply = self.gw.fetch(
            "GET", "/api/codex-exec/workspaces/w1/executors", [("x-internal-secret", ADMIN_SECRET)]
        )
        self.assertJSON(reply, 200, [])

    def test_oversized_body_first(self) -> None:
        """
        A body over 1 MiB → 413 C{{"error":"request body too large"}} on every admin route, before
        the secret is checked and without a store call.
        """
        for method, path, _ in ADMIN_ROUTES:
            for headers in ([], admin([("X-User-Id", "usr_1")])):
                reply = self.gw.fetch(method, path, headers, b" " * (MIB + 1))
                self.assertJSONError(reply, 413, "request body too large")
        self.assertEqual(self.gw.store.calls, [])

    def test_oversized_body_over_site_cap(self) -> None:
        """
        When the site keeps at most 1 MiB (C{CXG_MAX_FRAME_BYTES} ≤ 1 MiB), a larger body is still
        answered 413, by the same rule.
        """
        gw = RouteHarness(self, {"CXG_MAX_FRAME_BYTES": str(MIB)})
        for method, path, _ in ADMIN_ROUTES:
            reply = gw.fetch(method, path, admin(), b"{" + b" " * MIB + b"}")
            self.assertJSONError(reply, 413, "request body too large")

    def test_body_of_exactly_one_mib(self) -> None:
        """
        A body of exactly 1 MiB is within the limit.
        """
        for env in ({}, {"CXG_MAX_FRAME_BYTES": str(MIB)}):
            gw = RouteHarness(self, env)
            prefix = b'{"display_name":"'
            body = prefix + b"d" * (MIB - len(prefix) - 2) + b'"}'
            self.assertEqual(len(body), MIB)
            reply = gw.fetch("POST", "/api/codex-exec/register", admin([("X-User-Id", "u")]), body)
            self.assertEqual(reply.status, 201, env)


class AdminRegisterTests(ReplyAssertions):
    """
    C{POST /api/codex-exec/register} (§4.5; items 15, 16).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self)

    def register(self, body: bytes | None = b"{}", user: str | None = "usr_1") -> Reply:
        """
        Call the route with the admin secret and C{X-User-Id: user}.
        """
        extra: Headers = [] if user is None else [("X-User-Id", user)]
        return self.gw.fetch("POST", "/api/codex-exec/register", admin(extra), body)

    def test_missing_user(self) -> None:
        """
        No or an empty C{X-User-Id} → 401 C{{"error":"missing user"}}, checked before the body.
        """
        for user in (None, ""):
            for body in (b"{}", b"", b"[]"):
                self.assertJSONError(self.register(body, user), 401, "missing user")
        self.assertEqual(self.gw.store.calls, [])

    def test_invalid_json(self) -> None:
        """
        Empty, non-object, non-UTF-8 bodies and a non-string C{display_name} → 400
        C{{"error":"invalid JSON"}}; nothing is created.
        """
        for body in (
            *NOT_JSON_OBJECTS,
            b'{"display_name":1}',
            b'{"display_name":true}',
            b'{"display_name":["x"]}',
            b'{"display_name":{}}',
        ):
            self.assertJSONError(self.register(body), 400, "invalid JSON")
        self.assertEqual(self.gw.store.calls, [])

    def test_register(self) -> None:
        """
        201 with a fresh C{exe_…} UUIDv4 id and a 64-hex token, in that key order; the store keeps the
        user, the display name, the clock's time and a bcrypt hash that verifies the token; the token
        is never logged.
        """
        reply = self.register(b'{"display_name":"Build box","extra":[1]}')
        self.assertEqual(reply.status, 201)
        self.assertEqual(list(reply.json), ["exe_id", "registration_token"])
        exe_id, token = reply.json["exe_id"], reply.json["registration_token"]
        self.assertRegex(exe_id, EXE_ID_PATTERN)
        self.assertRegex(token, TOKEN_PATTERN)
        self.assertJSON(reply, 201, {"exe_id": exe_id, "registration_token": token})
        stored = settled(self.gw.store.get_registration_token_hash(exe_id))
        self.assertTrue(stored.startswith("$2b$10$"))
        self.assertTrue(bcrypt.checkpw(token.encode(), stored.encode()))
        record = settled(self.gw.store.get_executor(exe_id))
        self.assertEqual(
            (record.user_id, record.display_name, record.registered_at, record.last_seen_at),
            ("usr_1", "Build box", utc_now(self.gw.clock), None),
        )
        self.assertEqual(len(self.log.named("admin.executor_registered")), 1)
        self.assertNotIn(token, self.log.text())

    def test_null_display_name(self) -> None:
        """
        C{"display_name": null} means absent.
        """
        reply = self.register(b'{"display_name":null}')
        self.assertEqual(reply.status, 201)
        self.assertEqual(settled(self.gw.store.get_executor(reply.json["exe_id"])).display_name, "")

    def test_fresh_ids(self) -> None:
        """
        Two registrations get different ids and tokens.
        """
        first, second = self.register().json, self.register().json
        self.assertNotEqual(first["exe_id"], second["exe_id"])
        self.assertNotEqual(first["registration_token"], second["registration_token"])

    def test_store_error(self) -> None:
        """
        The store refusing the insert → 500 C{{"error":"create executor"}}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.register(), 500, "create executor")

    def test_hash_failure(self) -> None:
        """
        bcrypt failing → 500 C{{"error":"internal"}}, and nothing is stored.
        """
        gw = RouteHarness(self, pool=FailingPool())
        reply = gw.fetch("POST", "/api/codex-exec/register", admin([("X-User-Id", "u")]), b"{}")
        self.assertJSONError(reply, 500, "internal")
        self.assertEqual(gw.store.calls, [])
        self.flushLoggedErrors(RuntimeError)


class AdminBindingTests(ReplyAssertions):
    """
    Binding, listing and unbinding executors of a workspace (§4.5; items 17–20).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)
        self.gw.add_executor(OTHER_EXE)

    def bind(self, body: object, wid: str = "w1", slash: str = "") -> Reply:
        """
        POST a binding (C{body} is encoded as JSON unless it is bytes).
        """
        raw = body if isinstance(body, bytes) else json_bytes(body)
        return self.gw.fetch("POST", f"/api/codex-exec/workspaces/{wid}/executors{slash}", admin(), raw)

    def listing(self, wid: str = "w1", slash: str = "") -> Reply:
        """
        GET the bindings of C{wid}.
        """
        return self.gw.fetch("GET", f"/api/codex-exec/workspaces/{wid}/executors{slash}", admin())

    def test_bind_list_unbind(self) -> None:
        """
        Bind → 201 C{{"status":"ok"}}; GET lists it with the five keys in order; DELETE → 204; GET →
        C{[]}.
        """
        settled(self.gw.store.update_last_seen(EXE))
        seen = format_timestamp(utc_now(self.gw.clock))
        body = {"exe_id": EXE, "name": "box", "description": "the box", "is_default": True}
        self.assertJSON(self.bind(body), 201, {"status": "ok"})
        expected = {
            "exe_id": EXE,
            "name": "box",
            "description": "the box",
            "is_default": True,
            "last_seen_at": seen,
        }
        reply = self.listing()
        self.assertJSON(reply, 200, [expected])
        self.assertEqual(list(reply.json[0]), list(expected))
        unbind = self.gw.fetch("DELETE", f"/api/codex-exec/workspaces/w1/executors/{EXE}", admin())
        self.assertEmpty(unbind)
        self.assertJSON(self.listing(), 200, [])

    def test_defaults_and_null_last_seen(self) -> None:
        """
        C{description} defaults to C{""} and is always listed; C{is_default} to false; a null
        C{last_seen_at} is left out; C{null} fields mean absent.
        """
        self.assertEqual(self.bind({"exe_id": EXE, "name": "box", "description": None}).status, 201)
        expected = [{"exe_id": EXE, "name": "box", "description": "", "is_default": False}]
        self.assertJSON(self.listing(), 200, expected)

    def test_trailing_slash(self) -> None:
        """
        Both bind and list also answer with a trailing C{/}.
        """
        self.assertEqual(self.bind({"exe_id": EXE, "name": "box"}, slash="/").status, 201)
        self.assertEqual([b["exe_id"] for b in self.listing(slash="/").json], [EXE])

    def test_invalid_json(self) -> None:
        """
        Bodies that are not objects or have wrongly typed fields → 400 C{{"error":"invalid JSON"}}.
        """
        for body in (
            *NOT_JSON_OBJECTS,
            {"exe_id": 5, "name": "n"},
            {"exe_id": EXE, "name": True},
            {"exe_id": EXE, "name": "n", "description": 1},
            {"exe_id": EXE, "name": "n", "is_default": "yes"},
            {"exe_id": EXE, "name": "n", "is_default": 1},
            {"exe_id": [EXE], "name": "n"},
        ):
            self.assertJSONError(self.bind(body), 400, "invalid JSON")
        self.assertNotIn("bind_workspace_executor", self.gw.store.calls)

    def test_required_fields(self) -> None:
        """
        A missing or empty C{exe_id} → 400 C{exe_id required} (checked first); a missing, empty or
        null C{name} → 400 C{name required}.
        """
        for body, message in (
            ({}, "exe_id required"),
            ({"name": "n"}, "exe_id required"),
            ({"exe_id": "", "name": "n"}, "exe_id required"),
            ({"exe_id": None, "name": "n"}, "exe_id required"),
            ({"exe_id": EXE}, "name required"),
            ({"exe_id": EXE, "name": ""}, "name required"),
            ({"exe_id": EXE, "name": None}, "name required"),
        ):
            self.assertJSONError(self.bind(body), 400, message)
        self.assertNotIn("bind_workspace_executor", self.gw.store.calls)

    def test_conflicts(self) -> None:
        """
        A name used by another executor of the workspace, or an unknown executor → 409 with the exact
        message; the store down → 500 C{{"error":"bind"}}.
        """
        message = "bind failed (name may already be taken in this workspace)"
        self.assertEqual(self.bind({"exe_id": EXE, "name": "box"}).status, 201)
        self.assertJSONError(self.bind({"exe_id": OTHER_EXE, "name": "box"}), 409, message)
        self.assertJSONError(self.bind({"exe_id": "exe_unknown", "name": "other"}), 409, message)
        self.assertEqual(self.bind({"exe_id": OTHER_EXE, "name": "box"}, wid="w2").status, 201)
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.bind({"exe_id": OTHER_EXE, "name": "new"}), 500, "bind")

    def test_rebind_keeps_position(self) -> None:
        """
        Re-binding an executor under a new name updates it in place: it keeps its place in the order.
        """
        self.bind({"exe_id": EXE, "name": "first"})
        self.gw.clock.advance(1)
        self.bind({"exe_id": OTHER_EXE, "name": "second"})
        self.gw.clock.advance(1)
        self.assertEqual(self.bind({"exe_id": EXE, "name": "renamed", "is_default": True}).status, 201)
        listed = self.listing().json
        self.assertEqual(
            [(b["exe_id"], b["name"]) for b in listed], [(EXE, "renamed"), (OTHER_EXE, "second")]
        )
        self.assertTrue(listed[0]["is_default"])

    def test_list_store_error(self) -> None:
        """
        The store down → 500 C{{"error":"list"}}; an unknown workspace lists C{[]}.
        """
        self.assertJSON(self.listing("nobody"), 200, [])
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.listing(), 500, "list")

    def test_unbind_absent_and_store_error(self) -> None:
        """
        Unbinding what is not bound → 204; the store down → 500 C{{"error":"unbind"}}.
        """
        path = f"/api/codex-exec/workspaces/w1/executors/{EXE}"
        self.assertEmpty(self.gw.fetch("DELETE", path, admin()))
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.gw.fetch("DELETE", path, admin()), 500, "unbind")


class AdminDeleteTests(ReplyAssertions):
    """
    C{DELETE /api/codex-exec/executors/{exe_id}} (§4.5; item 21).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)
        self.gw.bind(EXE, "w1", "box")
        self.gw.bind(EXE, "w2", "box")

    def delete(self, exe_id: str = EXE) -> Reply:
        """
        Delete an executor.
        """
        return self.gw.fetch("DELETE", f"/api/codex-exec/executors/{exe_id}", admin())

    def test_delete(self) -> None:
        """
        204; the executor and all its bindings are gone; deleting again → 204.
        """
        self.assertEmpty(self.delete())
        self.assertIsNone(settled(self.gw.store.get_executor(EXE)))
        for wid in ("w1", "w2"):
            listing = self.gw.fetch("GET", f"/api/codex-exec/workspaces/{wid}/executors", admin())
            self.assertJSON(listing, 200, [])
        self.assertEmpty(self.delete())

    def test_delete_closes_live_inbound(self) -> None:
        """
        A live inbound of the deleted executor is closed with 1008 C{executor deleted}, its bridges
        with 1000 C{bridge session closed}.
        """
        inbound, executor = self.gw.connect(EXE)
        slot = self.gw.switchboard.slots.reserve(EXE)
        assert slot is not None
        claims = tokens.CapClaims(turn_id=TURN, workspace_id="w1", exp=NOW + 60)
        client = FakeFramePeer()
        client.attach(self.gw.switchboard.new_bridge(inbound, claims, slot, client))
        client.receive(relayframe.resume_frame("s1"))
        self.assertEmpty(self.delete())
        self.assertEqual(executor.closed_with, (1008, "executor deleted"))
        self.assertEqual(client.closed_with, (1000, "bridge session closed"))

    def test_delete_store_error(self) -> None:
        """
        The store down → 500 C{{"error":"delete"}}, and a live inbound stays open.
        """
        _, executor = self.gw.connect(EXE)
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.delete(), 500, "delete")
        self.assertIsNone(executor.closed_with)


class CloudRegisterTests(ReplyAssertions):
    """
    C{POST /cloud/executor/{exe_id}/register} and its C{/cloud/environment} alias (§4.4; items
    22–25).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)
        self.gw.store.calls.clear()

    def register(
        self,
        exe_id: str = EXE,
        headers: Headers | None = None,
        kind: str = "executor",
        *,
        secure: bool = False,
        gw: RouteHarness | None = None,
    ) -> Reply:
        """
        Register with the right token unless other C{headers} are given.
        """
        harness = gw or self.gw
        return harness.fetch(
            "POST",
            f"/cloud/{kind}/{exe_id}/register",
            bearer(REG_TOKEN) if headers is None else headers,
            b"ignored: not JSON",
            secure=secure,
        )

    def ticket_of(self, url: str) -> str:
        """
        The C{token} query value of a registration URL.
        """
        query = parse_qs(urlsplit(url).query, strict_parsing=True)
        self.assertEqual(list(query), ["token"])
        return query["token"][0]

    def test_register(self) -> None:
        """
        The right token → 200 with C{id}, C{executor_id}, C{environment_id} (equal, in that order)
        and a C{url} whose token is a ws ticket for this executor, valid for C{CXG_WS_TICKET_TTL};
        the raw token appears neither in the body nor in the logs. (The second registration in the
        same second gets an expiry one second later, so its ticket differs.)
        """
        for index, kind in enumerate(("executor", "environment")):
            reply = self.register(kind=kind)
            self.assertEqual(reply.status, 200, kind)
            self.assertEqual(list(reply.json), ["id", "executor_id", "environment_id", "url"])
            url = reply.json["url"]
            self.assertJSON(
                reply, 200, {"id": EXE, "executor_id": EXE, "environment_id": EXE, "url": url}
            )
            self.assertTrue(url.startswith(f"ws://gw.test/codex-exec/{EXE}?token="), url)
            ticket = self.ticket_of(url)
            self.assertEqual(ticket.split(".")[1], str(NOW + 300 + index))
            tokens.verify_ws_ticket(
                Secret(SHARED_SECRET.encode()), ticket, EXE, NOW + 299, UsedTickets()
            )
            self.assertNotIn(REG_TOKEN.encode(), reply.body)
        self.assertNotIn(REG_TOKEN, self.log.text())

    def test_url_quoting(self) -> None:
        """
        The exe_id is percent-encoded as a path segment and the ticket as a query value.
        """
        exe_id = "exe a+b&c?d"
        self.gw.add_executor(exe_id)
        reply = self.register("exe%20a+b&c%3Fd")
        url = reply.json["url"]
        self.assertTrue(
            url.startswith("ws://gw.test/codex-exec/exe%20a%2Bb%26c%3Fd?token=exe%20a%2Bb%26c%3Fd."), url
        )
        ticket = self.ticket_of(url)
        tokens.verify_ws_ticket(Secret(SHARED_SECRET.encode()), ticket, exe_id, NOW, UsedTickets())

    def test_missing_bearer(self) -> None:
        """
        No C{Bearer } header, another scheme, lowercase C{bearer}, or an empty token → 401
        C{{"error":"missing bearer"}}, without a store call.
        """
        for headers in (
            [],
            [("Authorization", "")],
            [("Authorization", f"bearer {REG_TOKEN}")],
            [("Authorization", f"Token {REG_TOKEN}")],
            [("Authorization", f"Bearer{REG_TOKEN}")],
            [("Authorization", "Bearer ")],
        ):
            self.assertJSONError(self.register(headers=headers), 401, "missing bearer")
        self.assertEqual(self.gw.store.calls, [])

    def test_wrong_token_and_unknown_exe_identical(self) -> None:
        """
        A wrong token and an unknown executor get the identical 401 C{{"error":"unauthorized"}},
        both after a bcrypt check.
        """
        wrong = self.register(headers=bearer("f" * 64))
        unknown = self.register("exe_unknown")
        self.assertJSONError(wrong, 401, "unauthorized")
        self.assertEqual(wrong.without_date(), unknown.without_date())
        self.assertEqual(self.gw.pool.calls, 2)  # type: ignore[attr-defined]

    def test_overlong_token(self) -> None:
        """
        A token longer than bcrypt reads, starting with the right one, is refused.
        """
        self.assertJSONError(self.register(headers=bearer(REG_TOKEN + "0" * 20)), 401, "unauthorized")

    def test_invalid_exe_id(self) -> None:
        """
        An exe_id with C{.} → 400 C{{"error":"invalid exe_id"}} (before the bearer check); an empty
        one → 400 C{{"error":"exe_id required"}}.
        """
        self.assertJSONError(self.register("exe.1", headers=[]), 400, "invalid exe_id")
        self.assertJSONError(self.register("exe.1"), 400, "invalid exe_id")
        self.assertJSONError(self.register("", headers=[]), 400, "exe_id required")
        self.assertJSONError(self.register("", kind="environment"), 400, "exe_id required")
        self.assertEqual(self.gw.store.calls, [])

    def test_store_error(self) -> None:
        """
        The store down → 500 C{{"error":"internal"}}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.register(), 500, "internal")

    def test_store_deadline(self) -> None:
        """
        A store call that never answers → 500 C{{"error":"internal"}} after 5 s.
        """
        self.gw.store.stalled = True
        exchange = self.gw.send("POST", f"/cloud/executor/{EXE}/register", bearer(REG_TOKEN))
        self.gw.clock.advance(4.999)
        self.assertFalse(exchange.answered)
        self.gw.clock.advance(0.001)
        self.assertJSONError(exchange.reply(), 500, "internal")

    def test_ws_base(self) -> None:
        """
        The url base is C{ws://<Host>}, C{wss://<Host>} over TLS or with C{X-Forwarded-Proto: https},
        and C{CXG_PUBLIC_WS_BASE_URL} (without its trailing C{/}) when set.
        """
        prefix = f"/codex-exec/{EXE}?token="
        cases: list[tuple[Headers, bool, str]] = [
            ([], False, "ws://gw.test"),
            ([("X-Forwarded-Proto", "https")], False, "wss://gw.test"),
            ([("X-Forwarded-Proto", "HTTPS")], False, "wss://gw.test"),
            ([("X-Forwarded-Proto", "http")], False, "ws://gw.test"),
            ([], True, "wss://gw.test"),
        ]
        for extra, secure, base in cases:
            url = self.register(headers=[*bearer(REG_TOKEN), *extra], secure=secure).json["url"]
            self.assertTrue(url.startswith(base + prefix), (extra, secure, url))
        gw = RouteHarness(self, {"CXG_PUBLIC_WS_BASE_URL": "wss://codex-exec.example.com/"})
        gw.add_executor(EXE)
        url = self.register(headers=[*bearer(REG_TOKEN), ("X-Forwarded-Proto", "http")], gw=gw).json[
            "url"
        ]
        self.assertTrue(url.startswith("wss://codex-exec.example.com" + prefix), url)

    def test_same_second_registrations_get_distinct_tickets(self) -> None:
        """
        Three registrations of one executor within one second get three different tickets (the
        expiry moves on a second each time), and each connects once.
        """
        tickets = [self.ticket_of(self.register().json["url"]) for _ in range(3)]
        self.assertEqual([t.split(".")[1] for t in tickets], [str(NOW + 300 + i) for i in range(3)])
        for ticket in tickets:
            reply = self.gw.fetch("GET", f"/codex-exec/{EXE}?token={ticket}", [])
            self.assertEqual(reply.body, b"upgraded")

    def test_ticket_ttl(self) -> None:
        """
        The ticket expires C{CXG_WS_TICKET_TTL} after registration.
        """
        gw = RouteHarness(self, {"CXG_WS_TICKET_TTL": "90s"})
        gw.add_executor(EXE)
        ticket = self.ticket_of(self.register(gw=gw).json["url"])
        self.assertEqual(ticket.split(".")[1], str(NOW + 90))


class InboundTests(ReplyAssertions):
    """
    The pre-upgrade checks of C{GET /codex-exec/{exe_id}} (§4.2; items 26, 28).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)
        self.gw.store.calls.clear()

    def dial(self, query: str, exe_id: str = EXE) -> Reply:
        """
        Dial the inbound route of C{exe_id} with a raw query string.
        """
        return self.gw.fetch("GET", f"/codex-exec/{exe_id}{query}")

    def ticket(self, exe_id: str = EXE, exp: int = NOW + 60) -> str:
        """
        A ws ticket as registration mints them.
        """
        return tokens.mint_ws_ticket(Secret(SHARED_SECRET.encode()), exe_id, exp)

    def reasons(self) -> list[str]:
        """
        The reasons logged by refused dials.
        """
        return [e["reason"] for e in self.log.named("inbound.unauthorized")]

    def test_missing_parameters(self) -> None:
        """
        No or an empty token, or an empty exe_id → 400 text C{missing parameters}.
        """
        for query in ("", "?token=", "?other=1", "?token"):
            self.assertText(self.dial(query), 400, "missing parameters")
        self.assertText(self.dial("?token=x", exe_id=""), 400, "missing parameters")
        self.assertEqual((self.gw.store.calls, self.gw.upgrades), ([], []))

    def test_dotted_exe_id(self) -> None:
        """
        An exe_id with C{.} → 401 C{unauthorized} (reason C{bad_exe_id}), without a store call.
        """
        self.assertText(self.dial(f"?token={REG_TOKEN}", exe_id="exe.1"), 401, "unauthorized")
        self.assertEqual(self.reasons(), ["bad_exe_id"])
        self.assertEqual(self.gw.store.calls, [])

    def test_raw_token_refused(self) -> None:
        """
        A wrong raw token and an unknown executor → identical 401 C{unauthorized} before any
        upgrade, each after one bcrypt check (reasons C{bad_token}, C{unknown_exe_id}).
        """
        wrong = self.dial("?token=" + "f" * 64)
        unknown = self.dial(f"?token={REG_TOKEN}", exe_id="exe_unknown")
        self.assertText(wrong, 401, "unauthorized")
        self.assertEqual(wrong.without_date(), unknown.without_date())
        self.assertEqual(self.reasons(), ["bad_token", "unknown_exe_id"])
        self.assertEqual(self.gw.pool.calls, 2)  # type: ignore[attr-defined]
        self.assertEqual(self.gw.upgrades, [])

    def test_raw_token_upgrades(self) -> None:
        """
        The right raw token passes the checks; the upgraded connection registers the executor and
        notes it as seen.
        """
        self.assertEqual(self.dial(f"?token={REG_TOKEN}").body, b"upgraded")
        [factory] = self.gw.upgrades
        peer = FakeFramePeer()
        inbound = factory.make_receiver(peer)
        self.assertIsInstance(inbound, InboundSession)
        peer.attach(inbound)
        self.assertIs(self.gw.switchboard.registry.lookup(EXE), inbound)
        self.assertIsNotNone(settled(self.gw.store.get_executor(EXE)).last_seen_at)

    def test_ticket_without_store(self) -> None:
        """
        A ws ticket is checked without any store call, so it works with the store down; the same
        ticket again → 401 (reason C{ticket_replayed}).
        """
        self.gw.store.failure = StoreUnavailable("database down")
        ticket = self.ticket()
        self.assertEqual(self.dial(f"?token={ticket}").body, b"upgraded")
        self.assertText(self.dial(f"?token={ticket}"), 401, "unauthorized")
        self.assertEqual(self.reasons(), ["ticket_replayed"])
        self.assertEqual(self.gw.store.calls, [])
        self.assertEqual(self.gw.pool.calls, 0)  # type: ignore[attr-defined]

    def test_head_does_not_consume_a_ticket(self) -> None:
        """
        HEAD (which the router allows wherever GET is) is refused with 405 and leaves the ticket
        usable; HEAD on C{/bridge} is refused too.
        """
        ticket = self.ticket()
        for path in (f"/codex-exec/{EXE}?token={ticket}", f"/bridge/{EXE}"):
            sent = self.gw.send("HEAD", path, [], None)
            self.assertTrue(sent.transport.value().startswith(b"HTTP/1.1 405 "), path)
        self.assertEqual(self.dial(f"?token={ticket}").body, b"upgraded")

    def test_bad_tickets(self) -> None:
        """
        Expired, foreign, malformed and forged tickets → 401 with their log reasons; a ticket never
        falls back to the bcrypt path.
        """
        good = self.ticket()
        forged = good[:-1] + ("A" if good[-1] != "A" else "B")
        for token, reason in (
            (self.ticket(exp=NOW), "ticket_expired"),
            (self.ticket(exe_id=OTHER_EXE), "bad_ticket"),
            (forged, "bad_ticket"),
            (f"{EXE}.12a.AAAA", "bad_ticket"),
            (f"{EXE}.{NOW + 60}", "bad_ticket"),
            (REG_TOKEN + ".", "bad_ticket"),
        ):
            self.assertText(self.dial(f"?token={token}"), 401, "unauthorized")
            self.assertEqual(self.reasons()[-1], reason, token)
        self.assertEqual((self.gw.store.calls, self.gw.pool.calls), ([], 0))  # type: ignore[attr-defined]

    def test_store_error(self) -> None:
        """
        The store failing or not answering within 5 s on the raw-token path → 500 text
        C{internal error}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertText(self.dial(f"?token={REG_TOKEN}"), 500, "internal error")
        self.gw.store.failure = None
        self.gw.store.stalled = True
        exchange = self.gw.send("GET", f"/codex-exec/{EXE}?token={REG_TOKEN}")
        self.gw.clock.advance(4.999)
        self.assertFalse(exchange.answered)
        self.gw.clock.advance(0.001)
        self.assertText(exchange.reply(), 500, "internal error")

    def test_factory_options(self) -> None:
        """
        The websocket factory carries the options of §9.2 from the configuration.
        """
        gw = RouteHarness(
            self,
            {"CXG_MAX_FRAME_BYTES": "1000", "CXG_PING_INTERVAL": "3s", "CXG_PING_TIMEOUT": "4s"},
        )
        gw.fetch("GET", f"/codex-exec/{EXE}?token={self.ticket()}")
        [factory] = gw.upgrades
        self.assertEqual((factory.maxMessagePayloadSize, factory.maxFramePayloadSize), (1000, 1000))
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (3.0, 4.0))
        self.assertEqual((factory.openHandshakeTimeout, factory.closeHandshakeTimeout), (5, 1))
        self.assertFalse(factory.failByDrop)
        self.assertIsNone(factory.perMessageCompressionAccept([object()]))


class NeverStore(FakeStore):
    """
    A store whose ownership check never answers and cannot be cancelled: only the caller's own
    deadline ends the wait.
    """

    def owns_executor(self, workspace_id: str, exe_id: str) -> Deferred[bool]:
        """
        Never fire.
        """
        self.calls.append("owns_executor")
        return Deferred()


class BridgeTests(ReplyAssertions):
    """
    The pre-upgrade checks of C{GET /bridge/{exe_id}}, in the spec's order (§4.3; items 34–40).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self, {"CXG_MAX_STREAMS_PER_EXECUTOR": "2"})
        self.inbound, self.executor = self.gw.ready_executor(EXE, WS)
        self.gw.store.calls.clear()

    def dial(self, headers: Headers | None = None, exe_id: str = EXE) -> Reply:
        """
        Dial a bridge with a valid cap token for C{WS} unless other C{headers} are given.
        """
        return self.gw.fetch(
            "GET", f"/bridge/{exe_id}", bearer(self.gw.cap()) if headers is None else headers
        )

    def test_missing_bearer(self) -> None:
        """
        No C{Authorization}, C{Token x}, C{bearer x} → 401 C{missing Bearer}; C{Bearer } → 400
        C{missing parameters}; a query-string token is not looked at.
        """
        for headers in (
            [],
            [("Authorization", f"Token {self.gw.cap()}")],
            [("Authorization", f"bearer {self.gw.cap()}")],
            [("Authorization", "")],
        ):
            self.assertText(self.dial(headers), 401, "missing Bearer")
        reply = self.gw.fetch("GET", f"/bridge/{EXE}?token={self.gw.cap()}")
        self.assertText(reply, 401, "missing Bearer")
        self.assertText(self.dial([("Authorization", "Bearer ")]), 400, "missing parameters")
        self.assertText(self.dial(exe_id=""), 400, "missing parameters")
        self.assertEqual(self.gw.store.calls, [])

    def test_bad_tokens(self) -> None:
        """
        Garbage and tokens signed with another secret → 401 C{unauthorized}; expired → 401
        C{token expired} (valid through its C{exp} second); none of it touches the store.
        """
        other = tokens.mint_cap_token(Secret(b"o" * 32), TURN, WS, NOW, NOW + 60)
        for token in ("garbage", "a.b.c", other, self.gw.cap()[:-1]):
            self.assertText(self.dial(bearer(token)), 401, "unauthorized")
        self.assertText(self.dial(bearer(self.gw.cap(exp=NOW - 1))), 401, "token expired")
        self.assertEqual(self.gw.store.calls, [])
        self.assertEqual(self.dial(bearer(self.gw.cap(exp=NOW))).body, b"upgraded")

    def test_revoked(self) -> None:
        """
        A revoked turn → 401 C{turn revoked} with the executor bound and connected, without a store
        call; other turns still pass.
        """
        self.gw.switchboard.revoked.add(TURN, NOW + 60)
        self.assertText(self.dial(), 401, "turn revoked")
        self.assertEqual(self.gw.store.calls, [])
        self.assertEqual(self.dial(bearer(self.gw.cap(turn_id="trn_other"))).body, b"upgraded")

    def test_not_in_workspace(self) -> None:
        """
        An executor not bound to the token's workspace → 403 C{exe_id not in workspace}.
        """
        self.assertText(self.dial(bearer(self.gw.cap("ws_2"))), 403, "exe_id not in workspace")
        self.assertEqual(self.gw.store.calls, ["owns_executor"])

    def test_ownership_store_error(self) -> None:
        """
        A failing ownership check → 500 C{ownership check failed}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertText(self.dial(), 500, "ownership check failed")
        self.assertEqual([e["why"] for e in self.log.named("bridge.rejected")], ["store_error"])

    def test_ownership_deadline(self) -> None:
        """
        An ownership check that never answers → 500 C{ownership check failed} at 2 s, not before —
        for a store that fails cancelled calls and for one that ignores cancellation.
        """
        self.gw.store.stalled = True
        stores: list[FakeStore] = [self.gw.store, NeverStore(self.gw.clock)]
        for store in stores:
            self.gw.routes.store = store
            exchange = self.gw.send("GET", f"/bridge/{EXE}", bearer(self.gw.cap()))
            self.gw.clock.advance(1.999)
            self.assertFalse(exchange.answered)
            self.gw.clock.advance(0.001)
            self.assertText(exchange.reply(), 500, "ownership check failed")
            self.assertEqual(self.gw.switchboard.slots.count(EXE), 0)

    def test_offline(self) -> None:
        """
        No live inbound → 503 C{executor not connected}, also once its connection closed its bridges.
        """
        self.gw.add_executor(OTHER_EXE)
        self.gw.bind(OTHER_EXE, WS, "other")
        self.assertText(self.dial(exe_id=OTHER_EXE), 503, "executor not connected")
        self.inbound.close(1000, "inbound closed")
        self.assertText(self.dial(), 503, "executor not connected")
        self.assertEqual(self.gw.upgrades, [])

    def test_stream_limit(self) -> None:
        """
        With every slot taken → 503 C{executor stream limit reached} with C{Retry-After: 30}, before
        any upgrade; once a bridge ends, a new dial passes.
        """
        self.assertEqual(self.dial().body, b"upgraded")
        self.assertEqual(self.dial().body, b"upgraded")
        _, first = self.gw.open_bridge(self.gw.upgrades[0])
        self.gw.open_bridge(self.gw.upgrades[1])
        refused = self.dial()
        self.assertText(refused, 503, "executor stream limit reached")
        self.assertEqual(refused.header("Retry-After"), "30")
        self.assertEqual(len(self.gw.upgrades), 2)
        first.lose(1000, "done")
        self.assertEqual(self.dial().body, b"upgraded")
        self.assertEqual(self.gw.switchboard.slots.count(EXE), 2)

    def test_slot_held_from_check_to_end(self) -> None:
        """
        The slot is reserved at the check, before the handshake completes, and released exactly once
        when the bridge ends, whatever stage it reached.
        """
        self.dial()
        self.dial()
        self.assertEqual(self.gw.switchboard.slots.count(EXE), 2)
        peer = FakeFramePeer()
        bridge = self.gw.upgrades[0].make_receiver(peer)
        peer.attach(bridge, open_now=False)
        peer.lose()  # the handshake never completed
        self.assertEqual(self.gw.switchboard.slots.count(EXE), 1)

    def test_check_order(self) -> None:
        """
        With several problems at once, the first in the spec's order answers.
        """
        self.gw.switchboard.revoked.add(TURN, NOW + 60)
        expired = self.gw.cap("ws_2", exp=NOW - 1)
        self.assertText(self.dial(bearer(expired), exe_id="exe_unknown"), 401, "token expired")
        self.assertText(self.dial(bearer(self.gw.cap("ws_2")), exe_id="exe_x"), 401, "turn revoked")
        fresh = self.gw.cap("ws_2", turn_id="trn_2")
        self.assertText(self.dial(bearer(fresh), exe_id="exe_x"), 403, "exe_id not in workspace")

    def test_upgrade_builds_bridge(self) -> None:
        """
        A dial that passes builds a bridge on the executor's live connection with the token's claims;
        its Resume reaches the executor.
        """
        self.dial(bearer(self.gw.cap(turn_id="trn_9")))
        bridge, client = self.gw.open_bridge(self.gw.upgrades[0])
        self.assertIs(bridge.inbound, self.inbound)
        self.assertEqual((bridge.claims.turn_id, bridge.claims.workspace_id), ("trn_9", WS))
        client.receive(relayframe.resume_frame("s1"))
        self.assertEqual(self.executor.sent, [relayframe.resume_frame("s1")])

    def test_client_gone_during_ownership_check(self) -> None:
        """
        A client that hangs up while the ownership check runs costs no stream slot, and is neither
        counted nor logged as a store failure.
        """
        gw = RouteHarness(self, {"CXG_MAX_STREAMS_PER_EXECUTOR": "1"}, fake_upgrade=False)
        gw.ready_executor(EXE, WS)
        gw.store.stalled = True
        exchange = gw.send("GET", f"/bridge/{EXE}", bearer(gw.cap()))
        exchange.drop()
        gw.store.resume()
        self.assertEqual(gw.switchboard.slots.count(EXE), 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((self.log.named("store.error"), self.log.named("bridge.rejected")), ([], []))
        self.assertNotIn(
            'cxg_exec_store_errors_total{op="owns_executor"}', gw.fetch("GET", "/metrics").body.decode()
        )


class ConnectedTests(ReplyAssertions):
    """
    C{GET /api/exec-gateway/connected} with the shared secret or a cap token (§4.6; items 55–57).
    """

    def setUp(self) -> None:
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)
        self.gw.add_executor(OTHER_EXE)
        self.gw.bind(EXE, WS, "first")
        self.gw.clock.advance(1)
        self.gw.bind(OTHER_EXE, WS, "second")

    def connected(self, headers: Headers, query: str = f"?workspace_id={WS}") -> Reply:
        """
        Ask which executors are connected.
        """
        return self.gw.fetch("GET", f"/api/exec-gateway/connected{query}", headers)

    def names(self, reply: Reply) -> list[str]:
        """
        The names listed by a 200 reply.
        """
        self.assertEqual(reply.status, 200, reply)
        return [item["name"] for item in reply.json]

    def test_unauthorized(self) -> None:
        """
        No C{Bearer } header, a wrong bearer, a lowercase scheme, garbage and foreign cap tokens →
        401 text C{unauthorized}.
        """
        foreign = tokens.mint_cap_token(Secret(b"o" * 32), TURN, WS, NOW, NOW + 60)
        for headers in (
            [],
            [("Authorization", f"bearer {SHARED_SECRET}")],
            [("Authorization", f"Token {SHARED_SECRET}")],
            bearer(""),
            bearer(SHARED_SECRET + "x"),
            bearer(ADMIN_SECRET),
            bearer("a.b.c"),
            bearer(foreign),
        ):
            self.assertText(self.connected(headers), 401, "unauthorized")
        self.assertEqual(self.gw.store.calls.count("connected_executors_for_workspace"), 0)

    def test_shared_secret_requires_workspace(self) -> None:
        """
        Shared-secret mode without a (non-empty) C{workspace_id} → 400
        C{{"error":"workspace_id required"}}.
        """
        for query in ("", "?workspace_id=", "?other=ws_1"):
            reply = self.connected(bearer(SHARED_SECRET), query)
            self.assertJSONError(reply, 400, "workspace_id required")

    def test_shared_secret_lists_connected(self) -> None:
        """
        Only bound executors with a live inbound are listed, in binding order; none → C{[]}.
        """
        self.assertJSON(self.connected(bearer(SHARED_SECRET)), 200, [])
        self.gw.connect(OTHER_EXE)
        reply = self.connected(bearer(SHARED_SECRET))
        self.assertEqual(self.names(reply), ["second"])
        self.assertEqual(
            list(reply.json[0]), ["exe_id", "name", "description", "is_default", "last_seen_at"]
        )
        self.gw.connect(EXE)
        self.assertEqual(self.names(self.connected(bearer(SHARED_SECRET))), ["first", "second"])
        self.assertJSON(self.connected(bearer(SHARED_SECRET), "?workspace_id=ws_2"), 200, [])

    def test_cap_token_mode(self) -> None:
        """
        With a cap token the workspace is the token's: a different C{workspace_id} query is ignored.
        """
        self.gw.connect(EXE)
        reply = self.connected(bearer(self.gw.cap(WS)), "?workspace_id=ws_2")
        self.assertEqual(self.names(reply), ["first"])
        self.assertEqual(self.names(self.connected(bearer(self.gw.cap(WS)), "")), ["first"])
        self.assertJSON(self.connected(bearer(self.gw.cap("ws_2")), f"?workspace_id={WS}"), 200, [])

    def test_cap_token_refused(self) -> None:
        """
        A revoked turn's or an expired cap token → 401 text C{unauthorized}.
        """
        self.gw.connect(EXE)
        self.assertText(self.connected(bearer(self.gw.cap(exp=NOW - 1))), 401, "unauthorized")
        self.gw.switchboard.revoked.add(TURN, NOW + 60)
        self.assertText(self.connected(bearer(self.gw.cap())), 401, "unauthorized")

    def test_store_error(self) -> None:
        """
        The store failing or silent for 5 s → 500 C{{"error":"list"}}.
        """
        self.gw.store.failure = StoreUnavailable("database down")
        self.assertJSONError(self.connected(bearer(SHARED_SECRET)), 500, "list")
        self.gw.store.failure = None
        self.gw.store.stalled = True
        exchange = self.gw.send(
            "GET", f"/api/exec-gateway/connected?workspace_id={WS}", bearer(SHARED_SECRET)
        )
        self.gw.clock.advance(4.999)
        self.assertFalse(exchange.answered)
        self.gw.clock.advance(0.001)
        self.assertJSONError(exchange.reply(), 500, "list")

    def test_oversized_body(self) -> None:
        """
        A body over 1 MiB → 413, before the credentials are looked at.
        """
        reply = self.gw.fetch(
            "GET", f"/api/exec-gateway/connected?workspace_id={WS}", [], b"x" * (MIB + 1)
        )
        self.assertJSONError(reply, 413, "request body too large")


class RevokeTurnTests(ReplyAssertions):
    """
    C{POST /api/exec-gateway/revoke-turn} (§4.6; item 58).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self)

    def revoke(self, body: bytes, headers: Headers | None = None) -> Reply:
        """
        Revoke with the shared secret unless other C{headers} are given.
        """
        return self.gw.fetch(
            "POST",
            "/api/exec-gateway/revoke-turn",
            bearer(SHARED_SECRET) if headers is None else headers,
            body,
        )

    def test_unauthorized(self) -> None:
        """
        Anything but the shared secret as bearer (a cap token included) → 401 text C{unauthorized}.
        """
        for headers in (
            [],
            bearer(self.gw.cap()),
            bearer(""),
            [("Authorization", f"bearer {SHARED_SECRET}")],
            admin(),
        ):
            self.assertText(self.revoke(b'{"turn_id":"t"}', headers), 401, "unauthorized")
        self.assertEqual(len(self.gw.switchboard.revoked), 0)

    def test_revoke(self) -> None:
        """
        → 204; the turn is revoked with the given C{exp}, and new bridge dials with it fail.
        """
        self.assertEmpty(self.revoke(b'{"turn_id":"trn_test","exp":1779000100,"other":1}'))
        self.assertTrue(self.gw.switchboard.revoked.contains(TURN))
        [added] = self.log.named("revoke.added")
        self.assertEqual((added["turn_id"], added["exp"]), (TURN, 1779000100))
        self.assertText(
            self.gw.fetch("GET", f"/bridge/{EXE}", bearer(self.gw.cap())), 401, "turn revoked"
        )

    def test_default_exp(self) -> None:
        """
        Without C{exp} (absent, null or 0) the entry lives until now + 3600: kept by the pruner at
        that second, gone after it.
        """
        for index, body in enumerate(
            (b'{"turn_id":"t0"}', b'{"turn_id":"t1","exp":null}', b'{"turn_id":"t2","exp":0}')
        ):
            self.assertEmpty(self.revoke(body))
            self.assertEqual(self.log.named("revoke.added")[index]["exp"], NOW + 3600)
        self.gw.clock.advance(3600)
        self.assertEqual(self.gw.switchboard.revoked.prune(), 0)
        self.gw.clock.advance(1)
        self.assertEqual(self.gw.switchboard.revoked.prune(), 3)

    def test_invalid_json(self) -> None:
        """
        Bodies that are not objects or have a wrongly typed field → 400 C{{"error":"invalid JSON"}}.
        """
        for body in (
            *NOT_JSON_OBJECTS,
            b'{"turn_id":5}',
            b'{"turn_id":"t","exp":"60"}',
            b'{"turn_id":"t","exp":true}',
            b'{"turn_id":"t","exp":1.5}',
        ):
            self.assertJSONError(self.revoke(body), 400, "invalid JSON")
        self.assertEqual(len(self.gw.switchboard.revoked), 0)

    def test_turn_id_required(self) -> None:
        """
        A missing, null or empty C{turn_id} → 400 C{{"error":"turn_id required"}}.
        """
        for body in (b"{}", b'{"turn_id":""}', b'{"turn_id":null,"exp":5}'):
            self.assertJSONError(self.revoke(body), 400, "turn_id required")

    def test_oversized_body(self) -> None:
        """
        A body over 1 MiB → 413 before the credentials are looked at.
        """
        reply = self.revoke(b"{" + b" " * MIB + b"}", [])
        self.assertJSONError(reply, 413, "request body too large")


class AccessLogTests(ReplyAssertions):
    """
    The site's access log never carries tokens or tickets (§10.1).
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.gw = RouteHarness(self)
        self.gw.add_executor(EXE)

    def access_lines(self) -> list[str]:
        """
        The access log lines written so far.
        """
        return [formatEvent(e) for e in self.log.events if "log_io" in e]

    def test_query_strings_left_out(self) -> None:
        """
        Refused inbound dials are logged by path only: neither the raw registration token nor the
        ws ticket of the query string reaches the log.
        """
        ticket = tokens.mint_ws_ticket(Secret(SHARED_SECRET.encode()), EXE, NOW + 60)
        self.gw.fetch("GET", f"/codex-exec/{EXE}?token={ticket}")
        self.gw.fetch("GET", f"/codex-exec/{EXE}?token={ticket}")
        self.gw.fetch("GET", f"/codex-exec/{EXE}?token={REG_TOKEN[::-1]}")
        lines = self.access_lines()
        self.assertEqual(len(lines), 3)
        self.assertIn(f'"GET /codex-exec/{EXE} HTTP/1.1" 401', lines[1])
        self.assertNotIn(ticket.split(".")[-1], self.log.text())
        self.assertNotIn(REG_TOKEN[::-1], self.log.text())

    def test_relay_tickets_redacted(self) -> None:
        """
        A C{/relay/<ticket>} path is logged with the ticket replaced.
        """
        self.gw.fetch("GET", "/relay/rly_secretticket", bearer("rly_secretticket"))
        [line] = self.access_lines()
        self.assertIn('"GET /relay/<redacted> HTTP/1.1"', line)
        self.assertNotIn("secretticket", self.log.text())

    def test_formatter(self) -> None:
        """
        The formatter keeps Twisted's combined format, with the path instead of the URI.
        """
        request: Any = DummyRequest([b"codex-exec", b"exe_1"])
        request.uri = b"/codex-exec/exe_1?token=abc"
        request.path = b"/codex-exec/exe_1"
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 401
        request.sentLength = 13
        line = redacted_access_log()("[ts]", request)
        self.assertEqual(line, '"-" - - [ts] "GET /codex-exec/exe_1 HTTP/1.1" 401 13 "-" "-"')
