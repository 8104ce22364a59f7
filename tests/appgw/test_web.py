"""
Tests for L{codexgw.appgw.web}: the app gateway's HTTP routes (C{app-gateway.md} §3, §4, §7.1;
acceptance items 10–17, and the route wiring of item 60).

Two tiers:
 - The unit tier (L{Routes}) runs the real routes in memory: a L{GuardedSite} over
   C{routes.app.resource()} (the production site class and request factory) whose connections are
   L{StringTransport}s with a peer address the test picks, the timers on a L{Clock}. The exec gateway
   and agentserver are the recording in-memory servers of L{tests.appgw.stubhttp} behind the real
   L{ExecGatewayClient} and L{RemoteVerifier}; the TUI proxy is the real L{TUIProxyFactory} (on a
   L{MemoryReactorClock}) over a L{FakeSupervisor} whose C{ensure} never answers, so an accepted
   upgrade shows as a C{101} and an C{ensure} of the identity's workspace.
 - The integration tier (L{LiveGateway}) listens on 127.0.0.1 with the real reactor: the routes, the
   proxy with its real app-server dialer, a L{FakeSupervisor} pointing at an in-process
   L{FakeAppServer}, Autobahn clients as TUIs and, for the RemoteVerifier, a recording agentserver on
   127.0.0.1 reached through treq. Every wait is bounded and every connection is waited for in
   cleanup. The agentserver calls' timers (the RemoteVerifier's 5 s and the routes' session-close 5 s)
   run on a L{Clock}, so a hanging session-close stays hanging until the test advances it.

Decisions where the brief leaves a choice:
 - Requests are raw HTTP/1.1 bytes written into a site's channel rather than C{StubTreq} requests:
   treq's client hides C{Content-Length} (a connection-control header) from the response it gives
   back, and every refusal must be shown to carry one; it also lets a test set the peer address of
   the C{/internal/*} checks. The parser of the answers insists on C{Content-Length} (except for a
   C{101}) and that the body is exactly that long.
 - The fake authenticator (L{ScriptedAuthenticator}) answers from a table and hands any identity it is
   given over as it is, so the routes' own workspace check can be shown; it passes the interface suite
   of C{tests.appgw.test_auth} (which also runs it on the HMAC and remote authenticators) except for
   the unusable-workspace check, which it inverts on purpose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from autobahn.websocket.types import ConnectionResponse
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.appgw import web
from codexgw.appgw.auth import (
    SESSION_CLOSE_PATH,
    SESSION_OPEN_PATH,
    VERIFY_PATH,
    AuthCallError,
    Identity,
    IInboundAuthenticator,
    RemoteVerifier,
    Unauthorized,
    make_authenticator,
)
from codexgw.appgw.brokerpool import BrokerPool
from codexgw.appgw.captoken import CapTokenMinter
from codexgw.appgw.clients import CONNECTED_PATH, RELAY_CREATE_PATH, ExecGatewayClient
from codexgw.appgw.config import AppGatewayConfig
from codexgw.appgw.loopback import LoopbackGate, LoopbackTokens
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.proxy import IChildLink, IChildReceiver, TUIProxyFactory, dial_child
from codexgw.appgw.turns import MAX_BODY_BYTES, TurnAPI
from codexgw.appgw.web import AppGatewayRoutes
from codexgw.config import Secret
from codexgw.httpclient import HTTPRequester, make_http_client
from codexgw.httpio import GuardedSite, bounded_request, json_response, read_body
from codexgw.testing.fakeappserver import FakeAppServer, FakeAppServerConnection
from codexgw.testing.fakesupervisor import FakeSupervisor
from codexgw.tokens import mint_inbound_token, verify_cap_token
from tests.appgw.stubhttp import (
    Answer,
    Drop,
    Hang,
    Recorded,
    RecordingResource,
    RefusingHTTP,
    Script,
    StubServer,
)
from tests.appgw.test_auth import InboundAuthenticatorTestsMixin
from tests.appgw.test_supervisor import gateway_config

reactor: Any = global_reactor

WORKSPACE = "ws_a"
#: C{CXG_AGENTSERVER_INTERNAL_SECRET} of the RemoteVerifier cases.
AGENT_SECRET = "agentserver-internal-secret-0123456789"
AGENT_URL = "http://agentserver:8080"
#: The agentserver token the fakes know, and the session it opens.
AGENT_TOKEN = "ast_1_secret"
SESSION_ID = "sess-1"
#: A codex user agent and what §4.4 derives from it.
USER_AGENT = "codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64) iTerm.app/3.5"
#: The text and JSON content types of §3.
TEXT = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"
#: Seconds any real-reactor wait may take.
WAIT = 10.0

#: Every metric of §12.3 with its type.
METRICS = {
    "codexgw_app_servers": "gauge",
    "codexgw_app_server_spawns_total": "counter",
    "codexgw_app_server_spawn_seconds": "histogram",
    "codexgw_app_server_exits_total": "counter",
    "codexgw_spawn_queue": "gauge",
    "codexgw_codex_home_transfers_total": "counter",
    "codexgw_tui_connections": "gauge",
    "codexgw_tui_messages_total": "counter",
    "codexgw_tui_slow_consumer_closes_total": "counter",
    "codexgw_rpc_blocked_total": "counter",
    "codexgw_approvals_auto_replied_total": "counter",
    "codexgw_broker_connections": "gauge",
    "codexgw_turns_total": "counter",
    "codexgw_turn_seconds": "histogram",
}

#: A relay request of env-mcp.
RELAY_REQUEST = {"source_exe_id": "exe-1", "dest_exe_id": "exe-2", "ttl_seconds": 60, "max_bytes": 4096}

#: The executors the fake exec gateway lists for L{WORKSPACE}.
EXECUTORS = [
    {"exe_id": "exe-1", "name": "laptop", "description": "", "is_default": True,
     "last_seen_at": "2026-01-01T00:00:00Z"},
]  # fmt: skip


def agent_env(url: str) -> dict[str, str]:
    """
    The variables that make the gateway use the RemoteVerifier against C{url}.
    """
    return {"CXG_AGENTSERVER_INTERNAL_URL": url, "CXG_AGENTSERVER_INTERNAL_SECRET": AGENT_SECRET}


def encode(value: object) -> bytes:
    """
    C{value} as compact JSON.
    """
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Raw HTTP over a StringTransport


@dataclass(frozen=True)
class Response:
    """
    One HTTP response as it went over the wire.

    @ivar status: the status code.
    @ivar headers: the response headers.
    @ivar body: exactly C{Content-Length} bytes (nothing for a C{101}).
    """

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """
        The only value of the header C{name}, or C{None} (fails when it appears more than once).
        """
        values = self.headers.getRawHeaders(name)
        if values is None:
            return None
        assert len(values) == 1, (name, values)
        return str(values[0])

    def json(self) -> object:
        """
        The body decoded as JSON.
        """
        return json.loads(self.body)


def parse_response(data: bytes) -> Response | None:
    """
    The first response in C{data}, or C{None} while it is incomplete. Every response but a C{101}
    must carry exactly one C{Content-Length}, and its body must be no longer than that.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    _version, status, _reason = lines[0].split(b" ", 2)
    headers = Headers()
    for line in lines[1:]:
        name, value = line.split(b":", 1)
        headers.addRawHeader(name, value.strip())
    rest = data[end + 4 :]
    if int(status) == 101:
        return Response(101, headers, b"")
    lengths = headers.getRawHeaders(b"Content-Length")
    assert lengths is not None and len(lengths) == 1, f"no single Content-Length in {data!r}"
    length = int(lengths[0])
    if len(rest) < length:
        return None
    assert len(rest) == length, f"more bytes than Content-Length in {data!r}"
    return Response(int(status), headers, rest)


def raw_request(
    method: str, path: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
) -> bytes:
    """
    An HTTP/1.1 request's bytes (with C{Host}, and C{Content-Length} when there is a body).
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8086"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def peer_address(host: str) -> IPv4Address | IPv6Address:
    """
    A TCP peer address for C{host}.
    """
    if ":" in host:
        return IPv6Address("TCP", host, 40000)
    return IPv4Address("TCP", host, 40000)


class Connection:
    """
    One in-memory connection to a site, as a socket would make it.
    """

    def __init__(self, site: Site, peer: str) -> None:
        address = peer_address(peer)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8086), peerAddress=address
        )
        channel = site.buildProtocol(address)
        assert channel is not None
        # Autobahn's upgrade hands the transport over through this attribute, as a TCP transport has.
        self.transport.protocol = channel  # type: ignore[attr-defined]
        channel.makeConnection(self.transport)

    @property
    def protocol(self) -> Any:
        """
        Whoever reads the connection now: the HTTP channel, or the websocket after an upgrade.
        """
        return self.transport.protocol  # type: ignore[attr-defined]

    def send(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        self.protocol.dataReceived(data)

    def response(self) -> Response | None:
        """
        The first response written, if complete.
        """
        return parse_response(self.transport.value())

    def lose(self) -> None:
        """
        The client goes away.
        """
        self.protocol.connectionLost(Failure(ConnectionDone("client gone")))


def upgrade(*extra: tuple[str, str], token: str | None = None) -> list[tuple[str, str]]:
    """
    The headers of a websocket upgrade (offering permessage-deflate and codex's compression header),
    with C{Authorization: Bearer <token>} when C{token} is given, then C{extra}.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("x-codex-app-server-compression", "zstd"),
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers + list(extra)


# --------------------------------------------------------------------------------------------------
# Fakes


@implementer(IInboundAuthenticator)
class ScriptedAuthenticator:
    """
    An L{IInboundAuthenticator} answering from a table: a token maps to the identity it verifies to
    (handed over as it is, even with an unusable workspace), to the exception it fails with, or to
    the Deferred to answer with (a verification in progress); any other token is L{Unauthorized}.

    @ivar tokens: every token asked about, in order.
    """

    def __init__(self, table: Mapping[str, Identity | Exception | Deferred[Identity]]) -> None:
        self.table = dict(table)
        self.tokens: list[str] = []

    def verify(self, token: str) -> Deferred[Identity]:
        """
        See L{IInboundAuthenticator.verify}.
        """
        self.tokens.append(token)
        verdict = self.table.get(token)
        if verdict is None:
            return fail(Unauthorized("unknown token"))
        if isinstance(verdict, Exception):
            return fail(verdict)
        if isinstance(verdict, Deferred):
            return verdict
        return succeed(verdict)


class ScriptedAuthenticatorInterfaceTests(InboundAuthenticatorTestsMixin, SynchronousTestCase):
    """
    L{ScriptedAuthenticator} passes the interface suite of L{IInboundAuthenticator} (the one
    C{tests.appgw.test_auth} runs on L{HMACAuthenticator} and L{RemoteVerifier}), but for the
    unusable workspace, which it hands over on purpose.
    """

    def setUp(self) -> None:
        """
        A fake knowing a good token for C{ws_a} and one for C{../x}.
        """
        self.valid_token = "good"
        self.valid_user = "u1"
        self.invalid_token = "nope"
        self.unusable_token = "dots"
        self.authenticator = ScriptedAuthenticator(
            {"good": Identity("u1", WORKSPACE), "dots": Identity("u2", "../x")}
        )

    def test_unusable_workspace(self) -> None:
        """
        Unlike the real authenticators, the fake verifies an identity with an unusable workspace id as
        scripted: that is what shows the routes' own check.
        """
        identity = self.successResultOf(self.verified("dots"))
        self.assertEqual(identity, Identity("u2", "../x"))

    def test_failure_scripted(self) -> None:
        """
        A token mapped to an exception fails with it; the tokens asked about are recorded.
        """
        self.authenticator.table["broken"] = AuthCallError("verify call: timed out after 5s")
        self.failureResultOf(self.verified("broken"), AuthCallError)
        self.assertEqual(self.authenticator.tokens, ["broken"])


class RecordingTurns:
    """
    The Turn API as the routes mount it (L{web.TurnRoute}): records each request and answers 200.

    @ivar requests: the requests handed over, with the body each carried.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[IRequest, bytes]] = []

    def handle(self, request: IRequest) -> Deferred[bytes]:
        """
        Record C{request} and answer C{{"threadId":"thr-1","turn":{"id":"turn-1"}}}.
        """
        self.requests.append((request, read_body(request)))
        return succeed(json_response(request, 200, {"threadId": "thr-1", "turn": {"id": "turn-1"}}))


def exec_gateway(connected: Script, relay: Script) -> Callable[[Recorded], Script]:
    """
    A fake exec gateway answering C{connected} and relay-create requests as given.
    """

    def script(recorded: Recorded) -> Script:
        path = recorded.uri.decode()
        if path.startswith(CONNECTED_PATH):
            return connected
        if path == RELAY_CREATE_PATH:
            return relay
        return Answer(404, b"not found\n")

    return script


def agentserver(close: Script = Answer(204)) -> Callable[[Recorded], Script]:  # noqa: B008
    """
    A fake agentserver: session-open and verify of L{AGENT_TOKEN} answer C{ws_a} (session
    L{SESSION_ID}), of C{ast_2_dots} the unusable C{../x}, of anything else 401; session-close is
    answered with C{close}.
    """

    def script(recorded: Recorded) -> Script:
        path = recorded.uri.decode()
        if path == SESSION_CLOSE_PATH:
            return close
        token = json.loads(recorded.body).get("token")
        workspaces = {AGENT_TOKEN: WORKSPACE, "ast_2_dots": "../x"}
        if token not in workspaces:
            return Answer(401, b"unknown token")
        answer = {"user_id": "u1", "workspace_id": workspaces[token]}
        if path == SESSION_OPEN_PATH:
            answer["session_id"] = SESSION_ID
        return Answer(200, encode(answer), {b"Content-Type": b"application/json"})

    return script


# --------------------------------------------------------------------------------------------------
# Unit tier harness

AuthenticatorFactory = Callable[[AppGatewayConfig, Clock], IInboundAuthenticator]


def configured_authenticator(config: AppGatewayConfig, clock: Clock) -> IInboundAuthenticator:
    """
    The authenticator the configuration selects (HMAC unless it names an agentserver).
    """
    return make_authenticator(config, RefusingHTTP().http, clock)


class Routes:
    """
    The real routes in memory (see the module docstring).

    @ivar config: the configuration (L{gateway_config} plus the test's variables).
    @ivar clock: the clock of the site, the outbound calls, the minter and the routes.
    @ivar supervisor: its C{ensure} never answers; C{ensures} shows accepted upgrades.
    @ivar exec_server: the in-memory exec gateway.
    @ivar tokens: the live loopback tokens.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        env: Mapping[str, str] | None = None,
        authenticator: AuthenticatorFactory = configured_authenticator,
        connected: Script = Answer(200, encode(EXECUTORS)),  # noqa: B008
        relay: Script = Answer(201, b'{"relay_id": "r1"}'),  # noqa: B008
        exec_http: HTTPRequester | None = None,
    ) -> None:
        tmp = case.mktemp()
        os.makedirs(tmp)
        self.config = gateway_config(tmp, **(env or {}))
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.supervisor = FakeSupervisor()
        self.supervisor.pending = []
        self.metrics = AppMetrics()
        self.tokens = LoopbackTokens()
        self.minter = CapTokenMinter(
            self.config.captoken_hmac_secret, self.config.captoken_ttl, self.clock
        )
        self.exec_server = StubServer(exec_gateway(connected, relay))
        self.stubs = [self.exec_server]
        self.turns = RecordingTurns()
        self.proxies = TUIProxyFactory(
            self.supervisor, self.metrics, MemoryReactorClock(), self.config.client_buffer_bytes
        )
        self.authenticator = authenticator(self.config, self.clock)
        self.routes = AppGatewayRoutes(
            config=self.config,
            authenticator=self.authenticator,
            proxies=self.proxies,
            gate=LoopbackGate(self.tokens),
            minter=self.minter,
            exec_gateway=ExecGatewayClient(
                exec_http or self.exec_server.http,
                self.clock,
                self.config.exec_gateway_internal_url,
                self.config.exec_gateway_internal_secret,
            ),
            turns=self.turns,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.site = GuardedSite(self.routes.app.resource(), reactor=self.clock)
        self.site.requestFactory = bounded_request(MAX_BODY_BYTES)

    def settle(self) -> None:
        """
        Let the in-memory outbound calls run.
        """
        for _ in range(4):
            for stub in self.stubs:
                stub.flush()

    def connect(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        peer: str = "127.0.0.1",
    ) -> Connection:
        """
        Send one request on a new connection from C{peer} and let the outbound calls run.
        """
        connection = Connection(self.site, peer)
        connection.send(raw_request(method, path, headers, body))
        self.settle()
        return connection

    def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        peer: str = "127.0.0.1",
    ) -> Response:
        """
        One request and its complete response; the connection is closed afterwards.
        """
        connection = self.connect(method, path, headers, body, peer)
        response = connection.response()
        assert response is not None, connection.transport.value()
        connection.lose()
        self.settle()
        return response

    def tui(self, *extra: tuple[str, str], token: str | None = None, path: str = "/") -> Response:
        """
        A websocket upgrade on C{path}; the connection is closed afterwards.
        """
        return self.request("GET", path, upgrade(*extra, token=token))

    def hmac_token(self, workspace_id: str = WORKSPACE) -> str:
        """
        An inbound token of the configured HMAC secret.
        """
        secret = self.config.inbound_hmac_secret
        assert secret is not None
        return mint_inbound_token(secret, workspace_id, "tests")


class RoutesCase(SynchronousTestCase):
    """
    Assertions on responses.
    """

    def assertText(self, response: Response, status: int, message: str) -> None:
        """
        C{response} is a §3 plain-text answer: C{status}, body C{message} and a newline,
        C{text/plain; charset=utf-8}, C{nosniff} (C{Content-Length} is checked by the parser).
        """
        self.assertEqual((response.status, response.body), (status, message.encode() + b"\n"))
        self.assertEqual(response.header("Content-Type"), TEXT)
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")

    def assertJSON(self, response: Response, status: int, value: object) -> None:
        """
        C{response} is C{status} with the compact JSON of C{value} and a newline.
        """
        self.assertEqual((response.status, response.body), (status, encode(value) + b"\n"))
        self.assertEqual(response.header("Content-Type"), JSON_TYPE)


# --------------------------------------------------------------------------------------------------
# Health, readiness, metrics, router errors


class HealthTests(RoutesCase):
    """
    C{/healthz}, C{/readyz}, C{/metrics}, unknown paths and wrong methods (§3, item 10).
    """

    def setUp(self) -> None:
        """
        The routes in memory.
        """
        self.gw = Routes(self)

    def test_healthz(self) -> None:
        """
        C{GET /healthz} is 200 with an empty body.
        """
        response = self.gw.request("GET", "/healthz")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.header("Content-Length"), "0")

    def test_readyz(self) -> None:
        """
        C{GET /readyz} is 200 C{ok} until shutdown began, then 503 C{shutting down}.
        """
        self.assertText(self.gw.request("GET", "/readyz"), 200, "ok")
        self.gw.routes.shutting_down = True
        self.assertText(self.gw.request("GET", "/readyz"), 503, "shutting down")
        self.assertEqual(self.gw.request("GET", "/healthz").status, 200)

    def test_metrics(self) -> None:
        """
        C{GET /metrics} is the 0.0.4 text exposition of the routes' metrics, listing every metric of
        §12.3 with its type.
        """
        self.gw.metrics.spawns.labels(result="ok").inc()
        response = self.gw.request("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        lines = response.body.decode().splitlines()
        for name, kind in METRICS.items():
            self.assertIn(f"# TYPE {name} {kind}", lines)
        self.assertIn('codexgw_app_server_spawns_total{result="ok"} 1.0', lines)

    def test_not_found(self) -> None:
        """
        Unknown paths are 404 C{not found}.
        """
        for path in ("/nope", "/internal/nope", "/codex-app", "/codex-app/ws/x", "/api/turns/1"):
            with self.subTest(path=path):
                self.assertText(self.gw.request("GET", path), 404, "not found")

    def test_method_not_allowed(self) -> None:
        """
        Known paths with the wrong method are 405 C{method not allowed}.
        """
        for method, path in [
            ("POST", "/healthz"),
            ("DELETE", "/readyz"),
            ("POST", "/metrics"),
            ("POST", "/"),
            ("PUT", "/codex-app/ws"),
            ("POST", "/internal/connected"),
            ("GET", "/internal/captoken"),
            ("GET", "/internal/relay/create"),
            ("GET", "/api/turns"),
        ]:
            with self.subTest(method=method, path=path):
                self.assertText(self.gw.request(method, path), 405, "method not allowed")
        self.assertEqual(self.gw.turns.requests, [])


# --------------------------------------------------------------------------------------------------
# TUI handshake (§7.1)


class TUIHandshakeTests(RoutesCase):
    """
    The checks of §7.1 before the upgrade, in order, and the upgrade (items 11–13).
    """

    def scripted(self, **env: str) -> ScriptedAuthenticator:
        """
        Routes with a L{ScriptedAuthenticator} knowing C{good} (C{ws_a}) and C{dots} (C{../x}).
        """
        authenticator = ScriptedAuthenticator(
            {"good": Identity("u1", WORKSPACE), "dots": Identity("u2", "../x")}
        )
        self.gw = Routes(self, env, authenticator=lambda config, clock: authenticator)
        return authenticator

    def assertUpgraded(self, response: Response) -> None:
        """
        C{response} accepted the websocket: 101, no extension (the deflate offer declined), no
        subprotocol, no compression header.
        """
        self.assertEqual(response.status, 101)
        self.assertEqual(response.header("Upgrade"), "WebSocket")
        self.assertIsNone(response.header("Sec-WebSocket-Extensions"))
        self.assertIsNone(response.header("Sec-WebSocket-Protocol"))
        self.assertIsNone(response.header("x-codex-app-server-compression"))

    def test_not_an_upgrade(self) -> None:
        """
        A request that is not a websocket upgrade is 400 C{websocket upgrade required} on both paths,
        before anything else is looked at.
        """
        authenticator = self.scripted()
        for path in ("/", "/codex-app/ws"):
            for headers in [
                [],
                [("Authorization", "Bearer good")],
                [("Upgrade", "websocket"), ("Authorization", "Bearer good")],
                [("Connection", "Upgrade"), ("Authorization", "Bearer good")],
                [("Upgrade", "h2c"), ("Connection", "Upgrade"), ("Origin", "https://evil.example")],
            ]:
                with self.subTest(path=path, headers=headers):
                    response = self.gw.request("GET", path, headers)
                    self.assertText(response, 400, "websocket upgrade required")
        self.assertEqual(authenticator.tokens, [])
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_upgrade_header_forms(self) -> None:
        """
        C{Upgrade} is compared ignoring case and C{Connection} may list other tokens.
        """
        self.scripted()
        response = self.gw.request(
            "GET",
            "/",
            [
                ("Upgrade", "WebSocket"),
                ("Connection", "keep-alive, Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
                ("Authorization", "Bearer good"),
            ],
        )
        self.assertEqual(response.status, 101)

    def test_missing_bearer(self) -> None:
        """
        No C{Authorization}, or one not starting with the case-sensitive C{Bearer }, is 401
        C{missing Bearer} without asking the authenticator.
        """
        authenticator = self.scripted()
        self.assertText(self.gw.tui(), 401, "missing Bearer")
        for value in ("bearer good", "BEARER good", "Basic Z29vZA==", "Bearergood", "good"):
            with self.subTest(value=value):
                response = self.gw.tui(("Authorization", value))
                self.assertText(response, 401, "missing Bearer")
        self.assertEqual(authenticator.tokens, [])
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_empty_token(self) -> None:
        """
        C{Bearer } with an empty token goes on to authentication (§7.1 step 3) and fails there with
        401 C{unauthorized}.
        """
        authenticator = self.scripted()
        self.assertText(self.gw.tui(token=""), 401, "unauthorized")
        self.assertEqual(authenticator.tokens, [""])

    def test_bad_token(self) -> None:
        """
        A token the HMAC authenticator refuses is 401 C{unauthorized}; nothing is upgraded.
        """
        self.gw = Routes(self)
        good = self.gw.hmac_token()
        for token in ("x", good[:-1] + ("0" if good[-1] != "0" else "1"), good + ".x", "a.b"):
            with self.subTest(token=token):
                self.assertText(self.gw.tui(token=token), 401, "unauthorized")
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_authenticator_errors(self) -> None:
        """
        Any failure of the authenticator, not only L{Unauthorized}, is 401 C{unauthorized}.
        """
        authenticator = self.scripted()
        authenticator.table["timeout"] = AuthCallError("verify call: timed out after 5s")
        authenticator.table["bug"] = RuntimeError("boom")
        for token in ("timeout", "bug", "unknown"):
            with self.subTest(token=token):
                self.assertText(self.gw.tui(token=token), 401, "unauthorized")
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_unusable_workspace(self) -> None:
        """
        An identity whose workspace id is C{../x} is 401 C{unauthorized}, whatever the authenticator
        said (item 13).
        """
        authenticator = self.scripted()
        self.assertText(self.gw.tui(token="dots"), 401, "unauthorized")
        self.assertEqual(authenticator.tokens, ["dots"])
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_origin_refused(self) -> None:
        """
        With no allowed origins, an upgrade carrying C{Origin} is 403 C{origin not allowed} before
        the token is looked at (item 12).
        """
        authenticator = self.scripted()
        response = self.gw.tui(("Origin", "https://evil.example"), token="good")
        self.assertText(response, 403, "origin not allowed")
        response = self.gw.tui(("Origin", "https://evil.example"))
        self.assertText(response, 403, "origin not allowed")
        self.assertEqual(authenticator.tokens, [])
        self.assertEqual(self.gw.supervisor.ensures, [])

    def test_origin_allowed(self) -> None:
        """
        An origin listed in C{CXG_ALLOWED_ORIGINS} (compared ignoring case) is let through; others
        still are not.
        """
        self.scripted(CXG_ALLOWED_ORIGINS="https://tui.example, https://Evil.Example:443, ")
        response = self.gw.tui(("Origin", "https://evil.example:443"), token="good")
        self.assertUpgraded(response)
        response = self.gw.tui(("Origin", "https://evil.example"), token="good")
        self.assertText(response, 403, "origin not allowed")

    def test_upgrade(self) -> None:
        """
        A valid HMAC token is upgraded on both paths for its workspace: 101 without permessage-deflate
        or the compression header, and the proxy asks for the token's workspace.
        """
        self.gw = Routes(self)
        for path, workspace in (("/", "ws_root"), ("/codex-app/ws", "ws_path")):
            with self.subTest(path=path):
                token = self.gw.hmac_token(workspace)
                self.assertUpgraded(self.gw.tui(token=token, path=path))
        self.assertEqual(self.gw.supervisor.ensures, ["ws_root", "ws_path"])

    def test_upgraded_connection(self) -> None:
        """
        The upgraded connection belongs to the proxy until the TUI leaves: it counts as an open TUI
        in C{/metrics}, and no longer once it is gone.
        """
        self.gw = Routes(self)
        connection = self.gw.connect("GET", "/", upgrade(token=self.gw.hmac_token()))
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 101)
        self.assertEqual(self.gw.proxies.open_connections, 1)
        self.assertIn(b"codexgw_tui_connections 1.0", self.gw.request("GET", "/metrics").body)
        connection.lose()
        self.assertEqual(self.gw.proxies.open_connections, 0)
        self.assertIn(b"codexgw_tui_connections 0.0", self.gw.request("GET", "/metrics").body)

    def test_client_leaves_during_authentication(self) -> None:
        """
        A TUI that leaves while its token is being checked is not upgraded, and nothing is written.
        """
        authenticator = self.scripted()
        cancelled: list[Deferred[Identity]] = []
        authenticator.table["slow"] = Deferred(cancelled.append)
        connection = self.gw.connect("GET", "/", upgrade(token="slow"))
        self.assertEqual(cancelled, [])
        connection.lose()
        self.assertEqual(len(cancelled), 1)  # the verification is given up with the request
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(self.gw.supervisor.ensures, [])


# --------------------------------------------------------------------------------------------------
# RemoteVerifier through the routes (§4.3–§4.5, item 14)


class RemoteVerifierRouteTests(RoutesCase):
    """
    The TUI route with the RemoteVerifier the configuration selects, against an in-memory agentserver.
    """

    def remote(self, script: Callable[[Recorded], Script] | None = None) -> StubServer:
        """
        Routes whose configuration names an agentserver, served by C{script} (L{agentserver}).
        """
        server = StubServer(script or agentserver())
        env = agent_env(AGENT_URL)
        self.gw = Routes(
            self, env, authenticator=lambda config, clock: make_authenticator(config, server.http, clock)
        )
        self.gw.stubs.append(server)
        self.assertIsInstance(self.gw.authenticator, RemoteVerifier)
        return server

    def open_tui(self, token: str = AGENT_TOKEN) -> Connection:
        """
        An upgrade as a codex TUI behind a proxy sends it.
        """
        headers = upgrade(
            ("X-Forwarded-For", " 203.0.113.7 , 10.0.0.1"),
            ("X-Real-IP", "198.51.100.1"),
            ("User-Agent", USER_AGENT),
            token=token,
        )
        return self.gw.connect("GET", "/codex-app/ws", headers, peer="10.9.8.7")

    def test_session_open(self) -> None:
        """
        session-open carries C{X-Internal-Secret}, the token and the client metadata of §4.4
        (C{client_ip} from C{X-Forwarded-For}, version and OS from the user agent); the TUI is
        upgraded for the workspace agentserver named; verify is not called.
        """
        server = self.remote()
        connection = self.open_tui()
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 101)
        self.assertEqual(self.gw.supervisor.ensures, [WORKSPACE])
        recorded = server.only_request()
        self.assertEqual((recorded.method, recorded.uri), (b"POST", SESSION_OPEN_PATH.encode()))
        self.assertEqual(recorded.header(b"X-Internal-Secret"), [AGENT_SECRET.encode()])
        self.assertEqual(recorded.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(
            json.loads(recorded.body),
            {
                "token": AGENT_TOKEN,
                "client_ip": "203.0.113.7",
                "client_ua": USER_AGENT,
                "codex_version": "0.169.0",
                "os": "Darwin",
            },
        )
        connection.lose()

    def test_session_closed_after_tui(self) -> None:
        """
        When the TUI's websocket ends, session-close is called with the session id.
        """
        server = self.remote()
        connection = self.open_tui()
        self.assertEqual(len(server.requests), 1)
        connection.lose()
        self.gw.settle()
        self.assertEqual(len(server.requests), 2)
        recorded = server.requests[1]
        self.assertEqual((recorded.method, recorded.uri), (b"POST", SESSION_CLOSE_PATH.encode()))
        self.assertEqual(recorded.header(b"X-Internal-Secret"), [AGENT_SECRET.encode()])
        self.assertEqual(json.loads(recorded.body), {"session_id": SESSION_ID})

    def test_hanging_session_close(self) -> None:
        """
        A session-close that hangs does not hold the TUI's teardown; it is given up after 5 s.
        """
        server = self.remote(agentserver(close=Hang()))
        connection = self.open_tui()
        connection.lose()
        self.gw.settle()
        self.assertEqual(self.gw.proxies.open_connections, 0)
        self.assertEqual([r.uri for r in server.requests][-1], SESSION_CLOSE_PATH.encode())
        self.assertEqual(len(server.resource.pending), 1)
        self.assertEqual(len(self.gw.clock.getDelayedCalls()), 2)  # both 5 s bounds of the call
        self.gw.clock.advance(web.SESSION_CLOSE_TIMEOUT)
        self.gw.settle()
        self.assertEqual(self.gw.clock.getDelayedCalls(), [])

    def test_refused_session(self) -> None:
        """
        Whatever keeps session-open from naming a usable workspace is 401 C{unauthorized}: a 401 from
        agentserver, another status, an unusable workspace, no answer at all, or no answer within 5 s.
        No session is closed, since none was opened.
        """
        cases: list[tuple[str, Callable[[Recorded], Script]]] = [
            ("ast_9_unknown", agentserver()),
            (AGENT_TOKEN, lambda recorded: Answer(500, b"database down")),
            ("ast_2_dots", agentserver()),
            (AGENT_TOKEN, lambda recorded: Drop()),
            (AGENT_TOKEN, lambda recorded: Answer(200, b"not json")),
        ]
        for token, script in cases:
            with self.subTest(token=token):
                server = self.remote(script)
                self.assertText(self.gw.tui(token=token), 401, "unauthorized")
                self.assertEqual([r.uri for r in server.requests], [SESSION_OPEN_PATH.encode()])
                self.assertEqual(self.gw.supervisor.ensures, [])

    def test_session_open_timeout(self) -> None:
        """
        session-open without an answer for 5 s is 401 C{unauthorized}.
        """
        self.remote(lambda recorded: Hang())
        connection = self.open_tui()
        self.assertIsNone(connection.response())
        self.gw.clock.advance(5)
        self.gw.settle()
        response = connection.response()
        assert response is not None
        self.assertText(response, 401, "unauthorized")
        connection.lose()

    def test_agentserver_down(self) -> None:
        """
        An agentserver that cannot be reached is 401 C{unauthorized}.
        """
        refusing = RefusingHTTP()
        env = agent_env(AGENT_URL)
        self.gw = Routes(
            self,
            env,
            authenticator=lambda config, clock: make_authenticator(config, refusing.http, clock),
        )
        self.assertText(self.gw.tui(token=AGENT_TOKEN), 401, "unauthorized")
        self.assertEqual(refusing.calls, 1)

    def test_empty_token_not_sent(self) -> None:
        """
        C{Bearer } with nothing after it is 401 C{unauthorized} without a call to agentserver.
        """
        server = self.remote()
        self.assertText(self.gw.tui(token=""), 401, "unauthorized")
        self.assertEqual(server.requests, [])


class VerifyOnlyTests(RoutesCase):
    """
    An authenticator that tracks no sessions is asked to C{verify}, and nothing is closed.
    """

    def test_verify_only(self) -> None:
        """
        A RemoteVerifier-like authenticator providing only L{IInboundAuthenticator} gets C{verify}.
        """
        server = StubServer(agentserver())
        verifier = RemoteVerifier(server.http, Clock(), AGENT_URL, Secret(AGENT_SECRET.encode()))

        @implementer(IInboundAuthenticator)
        class VerifyOnly:
            """
            The RemoteVerifier without its sessions.
            """

            def verify(self, token: str) -> Deferred[Identity]:
                """
                See L{IInboundAuthenticator.verify}.
                """
                return verifier.verify(token)

        self.assertTrue(verifyObject(IInboundAuthenticator, VerifyOnly()))
        self.gw = Routes(self, authenticator=lambda config, clock: VerifyOnly())
        self.gw.stubs.append(server)
        connection = self.gw.connect("GET", "/", upgrade(token=AGENT_TOKEN))
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 101)
        connection.lose()
        self.gw.settle()
        self.assertEqual([r.uri for r in server.requests], [VERIFY_PATH.encode()])


# --------------------------------------------------------------------------------------------------
# /internal/* (§3.1–§3.4, items 15 and 17)

INTERNAL = [
    ("GET", "/internal/connected", b""),
    ("POST", "/internal/captoken", b""),
    ("POST", "/internal/relay/create", b'{"source_exe_id":"a","dest_exe_id":"b"}'),
]


class LoopbackGateTests(RoutesCase):
    """
    The loopback gate in front of every C{/internal/*} route.
    """

    def setUp(self) -> None:
        """
        The routes in memory and one live loopback token.
        """
        self.gw = Routes(self)
        self.token = self.gw.tokens.issue(WORKSPACE, "trn_0123456789abcdef")

    def each_route(
        self, headers: list[tuple[str, str]], peer: str = "127.0.0.1"
    ) -> Iterable[tuple[str, Response]]:
        """
        Call every internal route with C{headers} from C{peer}.
        """
        for method, path, body in INTERNAL:
            yield path, self.gw.request(method, path, headers, body, peer=peer)

    def test_peer_not_loopback(self) -> None:
        """
        A peer that is not loopback is 403 C{forbidden}, even with a valid token.
        """
        for peer in ("10.0.0.5", "192.168.0.1", "fe80::1", "::ffff:10.0.0.5"):
            for path, response in self.each_route([("X-Loopback-Token", self.token)], peer=peer):
                with self.subTest(peer=peer, path=path):
                    self.assertText(response, 403, "forbidden")
        self.assertEqual(self.gw.exec_server.requests, [])

    def test_forwarded(self) -> None:
        """
        A loopback peer with a forwarding header is 403 C{forbidden}.
        """
        for name in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            headers = [("X-Loopback-Token", self.token), (name, "127.0.0.1")]
            for path, response in self.each_route(headers):
                with self.subTest(header=name, path=path):
                    self.assertText(response, 403, "forbidden")
        self.assertEqual(self.gw.exec_server.requests, [])

    def test_missing_token(self) -> None:
        """
        No C{X-Loopback-Token} is 401 C{missing X-Loopback-Token}.
        """
        for path, response in self.each_route([]):
            with self.subTest(path=path):
                self.assertText(response, 401, "missing X-Loopback-Token")

    def test_unknown_token(self) -> None:
        """
        A token that is not live is 401 C{bad token}.
        """
        for path, response in self.each_route([("X-Loopback-Token", self.token[:-1] + "x")]):
            with self.subTest(path=path):
                self.assertText(response, 401, "bad token")
        self.assertEqual(self.gw.exec_server.requests, [])

    def test_revoked_token(self) -> None:
        """
        The token of a spawn whose process has exited (revoked) is 401 C{bad token}.
        """
        self.assertEqual(
            self.gw.request("GET", "/internal/connected", [("X-Loopback-Token", self.token)]).status,
            200,
        )
        self.gw.tokens.revoke(self.token)
        for path, response in self.each_route([("X-Loopback-Token", self.token)]):
            with self.subTest(path=path):
                self.assertText(response, 401, "bad token")

    def test_loopback_peers(self) -> None:
        """
        Every loopback form is let through: C{127.x.x.x}, C{::1} and IPv4-mapped C{127.x.x.x}.
        """
        for peer in ("127.0.0.1", "127.5.5.5", "::1", "::ffff:127.0.0.1"):
            with self.subTest(peer=peer):
                response = self.gw.request(
                    "GET", "/internal/connected", [("X-Loopback-Token", self.token)], peer=peer
                )
                self.assertEqual(response.status, 200)


class InternalRouteCase(RoutesCase):
    """
    Calls of the internal routes with a live token for C{ws_a}.
    """

    TURN_ID = "trn_0123456789abcdef"

    def routes(self, **kwargs: Any) -> Routes:
        """
        Routes (with C{kwargs}) and a live token for C{ws_a}.
        """
        self.gw = Routes(self, **kwargs)
        self.token = self.gw.tokens.issue(WORKSPACE, self.TURN_ID)
        return self.gw

    def call(self, method: str, path: str, body: bytes = b"") -> Response:
        """
        One call of an internal route with the live token, from loopback.
        """
        return self.gw.request(method, path, [("X-Loopback-Token", self.token)], body)


class ConnectedTests(InternalRouteCase):
    """
    C{GET /internal/connected} (§3.2).
    """

    def test_listed(self) -> None:
        """
        The exec gateway's list for the token's workspace, as JSON.
        """
        self.routes()
        self.assertJSON(self.call("GET", "/internal/connected"), 200, EXECUTORS)
        recorded = self.gw.exec_server.only_request()
        self.assertEqual(recorded.uri, f"{CONNECTED_PATH}?workspace_id={WORKSPACE}".encode())
        secret = self.gw.config.exec_gateway_internal_secret.value
        self.assertEqual(recorded.header(b"Authorization"), [b"Bearer " + secret])

    def test_null(self) -> None:
        """
        C{null} from the exec gateway is C{[]}.
        """
        self.routes(connected=Answer(200, b"null"))
        self.assertJSON(self.call("GET", "/internal/connected"), 200, [])

    def test_failures(self) -> None:
        """
        Any failure of the exec gateway is 500 C{list}.
        """
        for answer in [Answer(500, b"oops"), Answer(200, b"{not json"), Answer(200, b"{}"), Drop()]:
            with self.subTest(answer=answer):
                self.routes(connected=answer)
                self.assertText(self.call("GET", "/internal/connected"), 500, "list")
        self.routes(exec_http=RefusingHTTP().http)
        self.assertText(self.call("GET", "/internal/connected"), 500, "list")

    def test_timeout(self) -> None:
        """
        An exec gateway that does not answer within 5 s is 500 C{list}.
        """
        self.routes(connected=Hang())
        connection = self.gw.connect("GET", "/internal/connected", [("X-Loopback-Token", self.token)])
        self.assertIsNone(connection.response())
        self.gw.clock.advance(5)
        self.gw.settle()
        response = connection.response()
        assert response is not None
        self.assertText(response, 500, "list")
        connection.lose()


class CapTokenTests(InternalRouteCase):
    """
    C{POST /internal/captoken} (§3.3).
    """

    def test_captoken(self) -> None:
        """
        A fresh cap token for the token's workspace and turn, valid for the configured TTL; the body
        is ignored.
        """
        self.routes(env={"CXG_CAPTOKEN_TTL": "2h"})
        response = self.call("POST", "/internal/captoken", b"{ignored")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), JSON_TYPE)
        answer = response.json()
        assert isinstance(answer, dict)
        self.assertEqual(list(answer), ["token", "exp"])
        now = int(self.gw.clock.seconds())
        self.assertEqual(answer["exp"], now + 7200)
        secret = self.gw.config.captoken_hmac_secret
        claims = verify_cap_token(secret, answer["token"], now)
        self.assertEqual(
            (claims.turn_id, claims.workspace_id, claims.exp), (self.TURN_ID, WORKSPACE, now + 7200)
        )
        self.assertEqual(response.body, encode(answer) + b"\n")
        self.assertEqual(self.gw.minter.last_exp(self.TURN_ID), now + 7200)


class RelayCreateTests(InternalRouteCase):
    """
    C{POST /internal/relay/create} (§3.4).
    """

    def test_forwarded(self) -> None:
        """
        The request goes to the exec gateway with the token's C{workspace_id} (replacing any the caller
        sent); the answer's status and body come back unchanged.
        """
        self.routes()
        response = self.call(
            "POST", "/internal/relay/create", encode({**RELAY_REQUEST, "workspace_id": "ws_evil"})
        )
        self.assertEqual((response.status, response.body), (201, b'{"relay_id": "r1"}'))
        self.assertEqual(response.header("Content-Type"), JSON_TYPE)
        recorded = self.gw.exec_server.only_request()
        self.assertEqual((recorded.method, recorded.uri), (b"POST", RELAY_CREATE_PATH.encode()))
        self.assertEqual(json.loads(recorded.body), {**RELAY_REQUEST, "workspace_id": WORKSPACE})

    def test_status_passed_through(self) -> None:
        """
        The exec gateway's refusals (403, 429, 503) come back as they are.
        """
        for status, body in [
            (429, b'{"error":"too many relays"}'),
            (503, b'{"error":"executor offline"}'),
            (403, b'{"error":"forbidden"}'),
        ]:
            with self.subTest(status=status):
                self.routes(relay=Answer(status, body))
                response = self.call("POST", "/internal/relay/create", encode(RELAY_REQUEST))
                self.assertEqual((response.status, response.body), (status, body))

    def test_invalid(self) -> None:
        """
        A body that is not a JSON object with both ids as non-empty strings is 400
        C{{"error":"invalid JSON"}}, and nothing is asked.
        """
        self.routes()
        for body in [
            b"",
            b"not json",
            b"[]",
            b'"x"',
            b"\xff\xfe",
            encode({"source_exe_id": "a"}),
            encode({"dest_exe_id": "b"}),
            encode({"source_exe_id": "", "dest_exe_id": "b"}),
            encode({"source_exe_id": "a", "dest_exe_id": 5}),
            encode({"source_exe_id": "a", "dest_exe_id": None}),
            encode({**RELAY_REQUEST, "pad": "x" * web.RELAY_CREATE_MAX_BODY}),
        ]:
            with self.subTest(body=body[:40]):
                response = self.call("POST", "/internal/relay/create", body)
                self.assertJSON(response, 400, {"error": "invalid JSON"})
        self.assertEqual(self.gw.exec_server.requests, [])

    def test_unreachable(self) -> None:
        """
        No answer from the exec gateway (refused, dropped, or none within 10 s) is 502
        C{{"error":"exec gateway unreachable: <detail>"}}.
        """
        prefix = "exec gateway unreachable: "

        def detail(response: Response) -> str:
            self.assertEqual(response.status, 502)
            self.assertEqual(response.header("Content-Type"), JSON_TYPE)
            answer = response.json()
            assert isinstance(answer, dict)
            self.assertEqual(list(answer), ["error"])
            error: str = answer["error"]
            self.assertTrue(error.startswith(prefix), error)
            return error[len(prefix) :]

        for routes in [
            lambda: self.routes(exec_http=RefusingHTTP().http),
            lambda: self.routes(relay=Drop()),
        ]:
            routes()
            text = detail(self.call("POST", "/internal/relay/create", encode(RELAY_REQUEST)))
            self.assertNotIn(prefix, text)
            self.assertNotEqual(text, "")
        self.routes(relay=Hang())
        connection = self.gw.connect(
            "POST", "/internal/relay/create", [("X-Loopback-Token", self.token)], encode(RELAY_REQUEST)
        )
        self.gw.clock.advance(9.9)
        self.assertIsNone(connection.response())
        self.gw.clock.advance(0.1)
        self.gw.settle()
        late = connection.response()
        assert late is not None
        self.assertEqual(detail(late), "timed out after 10s")
        connection.lose()


# --------------------------------------------------------------------------------------------------
# The Turn API mount (item 60's routing)


class TurnRouteTests(RoutesCase):
    """
    C{POST /api/turns} reaches the Turn API.
    """

    def test_post_handled(self) -> None:
        """
        A POST reaches C{TurnAPI.handle} with its body; its answer is the response.
        """
        gw = Routes(self)
        body = encode({"workspaceId": WORKSPACE, "params": {"input": []}})
        response = gw.request("POST", "/api/turns", [("X-Internal-Secret", "s")], body)
        self.assertJSON(response, 200, {"threadId": "thr-1", "turn": {"id": "turn-1"}})
        [(request, received)] = gw.turns.requests
        self.assertEqual(received, body)
        self.assertEqual(request.getHeader(b"X-Internal-Secret"), b"s")

    def test_get_refused(self) -> None:
        """
        C{GET /api/turns} is 405 and never reaches the Turn API.
        """
        gw = Routes(self)
        self.assertText(gw.request("GET", "/api/turns"), 405, "method not allowed")
        self.assertEqual(gw.turns.requests, [])

    def test_real_turn_api(self) -> None:
        """
        Mounted, the real L{TurnAPI} answers its own refusals: 401 without the secret, 500 when no
        secret is configured.
        """
        for secret, status, message in [
            (Secret(AGENT_SECRET.encode()), 401, "unauthorized"),
            (None, 500, "internal secret not configured"),
        ]:
            with self.subTest(status=status):
                gw = Routes(self)
                pool = BrokerPool(gw.supervisor, gw.metrics, gw.clock, 300.0)
                gw.routes.turns = TurnAPI(pool, gw.supervisor, gw.metrics, gw.clock, secret)
                response = gw.request("POST", "/api/turns", body=b"{}")
                self.assertText(response, status, message)


# --------------------------------------------------------------------------------------------------
# Integration tier: real sockets on 127.0.0.1


class Waiters:
    """
    Bounded waits for conditions, checked whenever L{changed} is called.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> Deferred[None]:
        """
        Fire once C{condition} holds; fail with C{TimeoutError} after C{timeout} seconds.
        """
        if condition():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        entry = (condition, waiting)
        self._waiting.append(entry)

        def forget(result: object) -> object:
            if entry in self._waiting:
                self._waiting.remove(entry)
            return result

        return waiting.addTimeout(timeout, reactor).addBoth(forget)

    def changed(self) -> None:
        """
        Check every condition waited for.
        """
        for entry in list(self._waiting):
            condition, waiting = entry
            if condition():
                self._waiting.remove(entry)
                waiting.callback(None)


class TrackedFactory(WrappingFactory):
    """
    A server factory that knows its open connections.
    """

    noisy = False

    def __init__(self, wrapped: Any, waiters: Waiters) -> None:
        super().__init__(wrapped)
        self.waiters = waiters

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """
        One connection ended.
        """
        super().unregisterProtocol(p)
        self.waiters.changed()

    @property
    def open(self) -> int:
        """
        The connections not yet ended.
        """
        return len(self.protocols)

    async def drained(self) -> None:
        """
        Wait until no connection is open.
        """
        await self.waiters.until(lambda: self.open == 0)


class TUIClient(WebSocketClientProtocol):
    """
    A TUI: an Autobahn client recording its handshake response, messages and close.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiters = Waiters()
        self.response: ConnectionResponse | None = None
        self.opened: Deferred[None] = Deferred()
        self.messages: list[bytes] = []
        self.close_info: tuple[int | None, str | None] | None = None

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        Keep the handshake response.
        """
        self.response = response

    def onOpen(self) -> None:
        """
        Fire L{opened}.
        """
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Record one message.
        """
        self.messages.append(payload)
        self.waiters.changed()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Record the close.
        """
        self.close_info = (code, reason)
        if not self.opened.called:
            self.opened.errback(ConnectionDone(f"handshake failed: {code} {reason}"))
        self.waiters.changed()

    async def closed(self, timeout: float = WAIT) -> None:
        """
        Wait until the websocket has ended.
        """
        await self.waiters.until(lambda: self.close_info is not None, timeout)


class LiveAgentserver:
    """
    A recording agentserver on 127.0.0.1 (L{agentserver}'s answers).

    @ivar requests: the requests received.
    @ivar resource: the recording resource (C{pending} holds hanging requests).
    """

    def __init__(self, close: Script) -> None:
        self.waiters = Waiters()
        self._script = agentserver(close)
        self.resource = RecordingResource(self._answer)
        self.tracker = TrackedFactory(Site(self.resource), self.waiters)
        self.port: IListeningPort | None = None
        self.url = ""

    def _answer(self, recorded: Recorded) -> Script:
        # Waiters run outside the render call, so a test never acts inside the server's stack.
        reactor.callLater(0, self.waiters.changed)
        return self._script(recorded)

    @property
    def requests(self) -> list[Recorded]:
        """
        The requests received, in order.
        """
        return self.resource.requests

    def paths(self) -> list[str]:
        """
        The paths of the requests received.
        """
        return [r.uri.decode() for r in self.requests]

    async def start(self) -> None:
        """
        Listen on 127.0.0.1.
        """
        self.port = reactor.listenTCP(0, self.tracker, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{cast(Any, self.port).getHost().port}"

    async def stop(self) -> None:
        """
        Drop what is still connected and stop listening.
        """
        for wrapper in list(self.tracker.protocols):
            wrapper.transport.abortConnection()
        await self.tracker.drained()
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)


class LiveGateway:
    """
    The routes on a real port, with the real TUI proxy in front of an in-process L{FakeAppServer}.

    @ivar clock: the clock of the routes and of the agentserver calls (advanced by the test).
    """

    def __init__(
        self, case: TestCase, env: Mapping[str, str], authenticator: AuthenticatorFactory
    ) -> None:
        tmp = case.mktemp()
        os.makedirs(tmp)
        self.config = gateway_config(tmp, **env)
        self.clock = Clock()
        self.app = FakeAppServer(reactor)
        self.supervisor = FakeSupervisor()
        self.metrics = AppMetrics()
        self.waiters = Waiters()
        self.links: list[Any] = []
        self.proxies = TUIProxyFactory(
            self.supervisor,
            self.metrics,
            reactor,
            self.config.client_buffer_bytes,
            dial=self._dial,
        )
        self.routes = AppGatewayRoutes(
            config=self.config,
            authenticator=authenticator(self.config, self.clock),
            proxies=self.proxies,
            gate=LoopbackGate(LoopbackTokens()),
            minter=CapTokenMinter(self.config.captoken_hmac_secret, 3600, self.clock),
            exec_gateway=ExecGatewayClient(
                RefusingHTTP().http,
                self.clock,
                self.config.exec_gateway_internal_url,
                self.config.exec_gateway_internal_secret,
            ),
            turns=RecordingTurns(),
            metrics=self.metrics,
            clock=self.clock,
        )
        site = GuardedSite(self.routes.app.resource(), reactor=reactor)
        site.requestFactory = bounded_request(MAX_BODY_BYTES)
        self.tracker = TrackedFactory(site, self.waiters)
        self.clients: list[TUIClient] = []
        self.port: IListeningPort | None = None

    def _dial(self, url: str, receiver: IChildReceiver) -> Deferred[IChildLink]:
        """
        The production dialer, keeping each link so that cleanup can wait for it to end.
        """

        def opened(link: IChildLink) -> IChildLink:
            self.links.append(link)
            return link

        return dial_child(reactor, url, receiver).addCallback(opened)

    async def start(self) -> None:
        """
        Listen (the fake app-server, then the routes).
        """
        await self.app.listen()
        self.supervisor.ws_url = self.app.ws_url
        self.port = reactor.listenTCP(0, self.tracker, interface="127.0.0.1")

    async def stop(self) -> None:
        """
        End every TUI, wait for the gateway's connections and the app-server links to end, stop the
        fake app-server and the port.
        """
        for client in self.clients:
            if client.close_info is None:
                client.dropConnection(abort=True)
            await client.closed()
        await self.tracker.drained()
        for link in self.links:
            await ended(link)
        await self.app.stop().addTimeout(WAIT, reactor)
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)

    async def tui(
        self,
        path: str = "/",
        token: str | None = None,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
        useragent: str | None = None,
    ) -> TUIClient:
        """
        Open a TUI websocket (offering permessage-deflate and sending codex's compression header).
        """
        port = cast(Any, self.port).getHost().port
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{port}{path}",
            origin=origin,
            useragent=useragent,
            headers={
                **({"Authorization": f"Bearer {token}"} if token is not None else {}),
                "x-codex-app-server-compression": "zstd",
                **(headers or {}),
            },
            reactor=reactor,
        )
        factory.protocol = TUIClient
        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=PerMessageDeflateResponseAccept,
            autoPingInterval=0,
            openHandshakeTimeout=WAIT,
            closeHandshakeTimeout=5,
            serverConnectionDropTimeout=0,
            failByDrop=False,
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
        client = cast(TUIClient, await endpoint.connect(factory).addTimeout(WAIT, reactor))
        self.clients.append(client)
        await client.opened.addTimeout(WAIT, reactor)
        return client

    def hmac_token(self) -> str:
        """
        An inbound token for C{ws_a}.
        """
        secret = self.config.inbound_hmac_secret
        assert secret is not None
        return mint_inbound_token(secret, WORKSPACE, "tests")


async def ended(link: Any) -> None:
    """
    Wait (bounded) until an Autobahn connection has ended.
    """
    done: Deferred[None] = Deferred()
    link.is_closed.addBoth(lambda result: done.callback(None) if not done.called else None)
    await done.addTimeout(WAIT, reactor)


async def initialize_round_trip(case: TestCase, tui: TUIClient, child: FakeAppServerConnection) -> None:
    """
    The TUI's C{initialize} reaches the fake app-server as sent, and its answer comes back.
    """
    request = encode(
        {"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}
    )
    tui.sendMessage(request)
    await child.wait_for("initialize").addTimeout(WAIT, reactor)
    case.assertEqual(child.received[-1], (request, False))
    await tui.waiters.until(lambda: bool(tui.messages))
    answer = json.loads(tui.messages[0])
    case.assertEqual(answer["id"], 1)
    case.assertIn("userAgent", answer["result"])


class IntegrationTests(TestCase):
    """
    The routes on 127.0.0.1 with the real reactor: upgrades reach the fake app-server (items 11, 12,
    14, 19).
    """

    timeout = 60

    async def gateway(
        self,
        env: Mapping[str, str] | None = None,
        authenticator: AuthenticatorFactory = configured_authenticator,
    ) -> LiveGateway:
        """
        A started L{LiveGateway}, stopped in cleanup.
        """
        gateway = LiveGateway(self, env or {}, authenticator)
        await gateway.start()
        self.addCleanup(gateway.stop)
        return gateway

    async def test_upgrade_reaches_app_server(self) -> None:
        """
        A valid token is upgraded on both paths, without permessage-deflate (offered) or the
        compression header, and the websocket reaches the fake app-server both ways.
        """
        gw = await self.gateway()
        for path in ("/", "/codex-app/ws"):
            next_child = self.app_connection(gw)
            tui = await gw.tui(path, token=gw.hmac_token())
            child = await next_child
            assert tui.response is not None
            self.assertEqual(tui.response.extensions, [])
            self.assertIsNone(tui.response.protocol)
            names = {name.lower() for name in tui.response.headers}
            self.assertNotIn("sec-websocket-extensions", names)
            self.assertNotIn("x-codex-app-server-compression", names)
            self.assertNotIn("authorization", child.request_headers)
            await initialize_round_trip(self, tui, child)
            tui.sendClose(1000)
            await tui.closed()
        self.assertEqual(gw.supervisor.ensures, [WORKSPACE, WORKSPACE])

    async def test_allowed_origin(self) -> None:
        """
        With the TUI's origin in C{CXG_ALLOWED_ORIGINS}, an upgrade carrying it succeeds (item 12).
        """
        gw = await self.gateway({"CXG_ALLOWED_ORIGINS": "https://evil.example"})
        next_child = self.app_connection(gw)
        tui = await gw.tui(token=gw.hmac_token(), origin="https://evil.example")
        await initialize_round_trip(self, tui, await next_child)

    def app_connection(self, gw: LiveGateway) -> Deferred[FakeAppServerConnection]:
        """
        The fake app-server's next connection (bounded).
        """
        return gw.app.next_connection().addTimeout(WAIT, reactor)

    async def remote_gateway(self, close: Script) -> tuple[LiveGateway, LiveAgentserver]:
        """
        A gateway whose RemoteVerifier (treq over a pool closed in cleanup) calls a live agentserver
        answering session-close with C{close}.
        """
        agent = LiveAgentserver(close)
        await agent.start()
        self.addCleanup(agent.stop)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        http = make_http_client(reactor, pool)
        env = agent_env(agent.url)
        gw = await self.gateway(env, lambda config, clock: make_authenticator(config, http, clock))
        self.assertIsInstance(gw.routes.authenticator, RemoteVerifier)
        return gw, agent

    async def remote_tui(self, gw: LiveGateway) -> tuple[TUIClient, FakeAppServerConnection]:
        """
        A TUI as codex behind a proxy opens it, and its app-server connection.
        """
        next_child = self.app_connection(gw)
        tui = await gw.tui(
            "/",
            token=AGENT_TOKEN,
            headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"},
            useragent=USER_AGENT,
        )
        return tui, await next_child

    async def test_remote_session(self) -> None:
        """
        session-open gets the secret, the token and the client's metadata; the TUI reaches the fake
        app-server; session-close follows the TUI's close (item 14).
        """
        gw, agent = await self.remote_gateway(Answer(204))
        tui, child = await self.remote_tui(gw)
        self.assertEqual(agent.paths(), [SESSION_OPEN_PATH])
        opened = agent.requests[0]
        self.assertEqual(opened.header(b"X-Internal-Secret"), [AGENT_SECRET.encode()])
        self.assertEqual(
            json.loads(opened.body),
            {
                "token": AGENT_TOKEN,
                "client_ip": "203.0.113.7",
                "client_ua": USER_AGENT,
                "codex_version": "0.169.0",
                "os": "Darwin",
            },
        )
        await initialize_round_trip(self, tui, child)
        tui.sendClose(1000)
        await tui.closed()
        await agent.waiters.until(lambda: len(agent.requests) == 2)
        closed = agent.requests[1]
        self.assertEqual(closed.uri.decode(), SESSION_CLOSE_PATH)
        self.assertEqual(closed.header(b"X-Internal-Secret"), [AGENT_SECRET.encode()])
        self.assertEqual(json.loads(closed.body), {"session_id": SESSION_ID})

    async def test_hanging_session_close(self) -> None:
        """
        A session-close that hangs (10 s on the calls' clock) does not delay the TUI's teardown: the
        TUI's close completes and the gateway lets go of the connection while it is still pending.
        """
        gw, agent = await self.remote_gateway(Hang())
        tui, _child = await self.remote_tui(gw)
        tui.sendClose(1000)
        await tui.closed(timeout=3)
        await gw.tracker.drained()
        await agent.waiters.until(lambda: len(agent.requests) == 2)
        self.assertEqual(agent.paths()[1], SESSION_CLOSE_PATH)
        self.assertEqual(gw.proxies.open_connections, 0)
        [pending] = agent.resource.pending
        self.assertFalse(pending.finished)
        # The hang runs out on the calls' clock: both 5 s bounds give up the request.
        gw.clock.advance(10)
        await agent.tracker.drained()
        self.assertEqual(gw.clock.getDelayedCalls(), [])
