"""
Unit tests of the SDK REST surface (L{codexgw.execgw.sdk}; C{exec-gateway.md} §4.8, §5.6, §7.5, §11;
acceptance items 72–78, 82–85 and the unit side of 79 and 81).

The routes are mounted the way the gateway mounts them (Klein branch routes at C{/api/sdk/} and
C{/api/connectors/}) in the gateway's own site, and every request goes over the wire format in memory
(raw HTTP into the site over a L{StringTransport}). Behind them: a L{MemoryReactorClock}, a
L{FakeStore}, a L{ConnRegistry} with stand-in connections, the relay registry, and the fake exec
gateway of C{codexgw.testing.fakebridge} with a fake exec-server per bridge stream
(C{codexgw.testing.fakeexecserver}), so the envtools contexts dial, run and read processes for real
in memory. Nothing waits for real time.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface.verify import verifyObject

from codexgw.config import Secret
from codexgw.envtools.interfaces import (
    ICapTokenProvider,
    IRelayCreator,
    IResolverSource,
    RelayError,
    RelayUnavailable,
    ToolResult,
)
from codexgw.envtools.schemas import SCHEMAS
from codexgw.envtools.toolset import Tool
from codexgw.execgw import sdk as sdk_module
from codexgw.execgw.config import load_config
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.registry import ConnRegistry
from codexgw.execgw.relay import RelayRegistry
from codexgw.execgw.sdk import (
    SDK_TURN_ID,
    USER_AGENT,
    InProcessRelayCreator,
    SDKCapTokens,
    SDKRoutes,
    StoreResolverSource,
    self_bridge_base,
)
from codexgw.execgw.sdkauth import HMACTokenAuth, ISDKAuthenticator, ProxyTokenAuth
from codexgw.execgw.service import make_site
from codexgw.execgw.store import ExecutorRecord, StoreUnavailable, utc_now
from codexgw.execgw.timestamps import format_timestamp, format_timestamp_seconds
from codexgw.httpclient import HTTPRequester
from codexgw.httpio import text_response
from codexgw.testing.fakeagentserver import FakeAgentServer
from codexgw.testing.fakebridge import FAKE_BRIDGE_BASE, FakeExecGateway
from codexgw.testing.fakeexecserver import FakeExecServer
from codexgw.testing.fakestore import FakeStore
from codexgw.tokens import mint_inbound_token, verify_cap_token
from tests.execgw.test_web import Exchange, LogCapture, Reply, parse_reply, settled

NOW = 1_779_000_000
CAP_SECRET = "cap-token-hmac-secret-0123456789abcdef"
INBOUND_SECRET = "inbound-hmac-secret-0123456789abcdef"
INTERNAL_SECRET = "agentserver-internal-secret-0123456789ab"
BASE_ENV = {
    "CXG_CAPTOKEN_HMAC_SECRET": CAP_SECRET,
    "CXG_INTERNAL_SHARED_SECRET": "internal-shared-secret-0123456789abcdef",
    "CXG_AGENTSERVER_INTERNAL_SECRET": INTERNAL_SECRET,
    "CXG_INBOUND_HMAC_SECRET": INBOUND_SECRET,
}
WS = "ws_1"
#: The §6.3 vector: workspace C{ws_1}.
TOKEN = "ws_1.thr_1.14f80fbc41c70149340d984b5d068cbbd8fca09b20a4780aae3c43577ca8734a"
OTHER_TOKEN = mint_inbound_token(Secret(INBOUND_SECRET.encode()), "ws_2", "thr_2")
EXE_A = "exe_aaaaaaaa-1111-4111-8111-111111111111"
EXE_B = "exe_bbbbbbbb-2222-4222-8222-222222222222"
PREFIXES = ("/api/sdk", "/api/connectors")
#: The IPv4 wildcard address, as a listening socket reports it.
WILDCARD = "0.0.0.0"  # noqa: S104 - an address to recognise, not to bind
#: The six tool entries of C{envs/list}, in order (§4.8.2).
TOOL_ENTRIES = [
    {"name": "shell", "description": "Run a command synchronously.", "kind": "core"},
    {"name": "read_file", "description": "Read a file by path.", "kind": "core"},
    {"name": "write_file", "description": "Write a file by path.", "kind": "core"},
    {
        "name": "apply_patch",
        "description": "Apply a patch in the *** Begin Patch format.",
        "kind": "core",
    },
    {"name": "copy_path", "description": "Upload or download a file.", "kind": "core"},
    {
        "name": "exec_command",
        "description": "Start a long-running process (returns session_id).",
        "kind": "core",
    },
]
SESSION_LOST = {
    "error": {"code": "session_lost", "message": "process session lost: executor stream closed"}
}


def envelope(code: str, message: str) -> bytes:
    """
    The exact bytes of an error envelope.
    """
    return (
        json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode() + b"\n"
    )


class Mounted:
    """
    The gateway's mount of the SDK surface: both prefixes, as Klein branch routes.
    """

    app = Klein()

    def __init__(self, sdk: SDKRoutes | None) -> None:
        self.sdk = sdk

    @app.route("/api/sdk/", branch=True)
    @app.route("/api/connectors/", branch=True)
    def sdk_routes(self, request: IRequest) -> bytes | IResource:
        """
        The SDK's resource, or 404 when the surface is disabled.
        """
        if self.sdk is None:
            return text_response(request, 404, "not found")
        return self.sdk.resource()


class SDKHarness:
    """
    The SDK routes wired to fakes.

    @ivar gateway: the fake exec gateway the SDK's bridge pools dial.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        env: Mapping[str, str] | None = None,
        *,
        relay: bool = False,
        authenticator: ISDKAuthenticator | None = None,
        bridge_base: str | None = FAKE_BRIDGE_BASE,
        max_per_workspace: int = 16,
    ) -> None:
        self.case = case
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.config = load_config({**BASE_ENV, **(env or {})})
        self.store = FakeStore(self.clock)
        self.registry: ConnRegistry[object] = ConnRegistry()
        self.metrics = ExecMetrics()
        self.gateway = FakeExecGateway(lambda: FakeExecServer(self.clock))
        self.relays = (
            RelayRegistry(self.clock, "https://relay.test", 300.0, max_per_workspace, self.metrics)
            if relay
            else None
        )
        assert self.config.inbound_hmac_secret is not None
        if authenticator is None:
            authenticator = HMACTokenAuth(self.config.inbound_hmac_secret)
        self.sdk = SDKRoutes(
            self.config,
            self.store,
            self.registry,
            self.metrics,
            self.clock,
            authenticator,
            relays=self.relays,
            bridge_base=bridge_base,
            connect=self.gateway.connect,
        )
        case.addCleanup(self.sdk.stop)
        self.site = make_site(Mounted(self.sdk).app.resource(), self.config, reactor=self.clock)
        self.site.startFactory()
        case.addCleanup(self.site.stopFactory)

    # HTTP

    def send(
        self,
        method: str,
        path: str,
        token: str | None = TOKEN,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Exchange:
        """
        One raw HTTP/1.1 request on its own connection.
        """
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: gw.test", b"Connection: close"]
        if token is not None:
            lines.append(b"Authorization: Bearer " + token.encode())
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode())
        if body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 6060), peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        return Exchange(protocol, transport)

    def fetch(
        self,
        method: str,
        path: str,
        token: str | None = TOKEN,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """
        A request whose response is complete at once.
        """
        return self.send(method, path, token, body, headers).reply()

    def tool(
        self,
        name: str,
        tool: str,
        arguments: object = None,
        token: str = TOKEN,
        prefix: str = "/api/sdk",
    ) -> Reply:
        """
        C{POST …/envs/<name>/tool/call} with C{{"tool","arguments"}} (arguments left out when
        C{None}).
        """
        body: dict[str, object] = {"tool": tool}
        if arguments is not None:
            body["arguments"] = arguments
        return self.fetch("POST", f"{prefix}/envs/{name}/tool/call", token, json.dumps(body).encode())

    def text(self, reply: Reply) -> tuple[str, bool]:
        """
        The text and C{isError} of a 200 tool result.
        """
        self.case.assertEqual(reply.status, 200, reply.body)
        [content] = reply.json["content"]
        return content["text"], reply.json["isError"]

    def exec_command(
        self, command: list[str], pipe_stdin: bool = False, name: str = "box-a", token: str = TOKEN
    ) -> str:
        """
        Start a session; its id.
        """
        text, is_error = self.text(
            self.tool(name, "exec_command", {"command": command, "pipe_stdin": pipe_stdin}, token)
        )
        self.case.assertFalse(is_error, text)
        session_id: str = json.loads(text)["session_id"]
        return session_id

    def output(self, sid: str, query: str = "", token: str = TOKEN) -> Exchange:
        """
        C{GET …/processes/<sid>/output<query>}.
        """
        return self.send("GET", f"/api/sdk/processes/{sid}/output{query}", token)

    def stdin(self, sid: str, body: object, token: str = TOKEN) -> Exchange:
        """
        C{POST …/processes/<sid>/stdin} with C{body} (JSON unless bytes).
        """
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.send("POST", f"/api/sdk/processes/{sid}/stdin", token, raw)

    def terminate(self, sid: str, token: str = TOKEN) -> Exchange:
        """
        C{POST …/processes/<sid>/terminate}.
        """
        return self.send("POST", f"/api/sdk/processes/{sid}/terminate", token, b"")

    # fixtures

    def executor(
        self, exe_id: str, name: str, wid: str = WS, connected: bool = True, is_default: bool = False
    ) -> None:
        """
        Register, bind and (when C{connected}) connect an executor.
        """
        record = ExecutorRecord(exe_id, "usr_1", "", "", "", utc_now(self.clock), None)
        settled(self.store.create_executor(record, "hash"))
        settled(self.store.bind_workspace_executor(wid, exe_id, name, "", is_default))
        if connected:
            self.registry.register(exe_id, object())
            self.gateway.add_executor(exe_id, name)

    def server(self, index: int = -1) -> FakeExecServer:
        """
        The fake exec-server of a bridge stream (the latest by default).
        """
        backend = self.gateway.streams[index].backend
        assert isinstance(backend, FakeExecServer)
        return backend

    def advance(self, seconds: float, step: float = 60.0) -> None:
        """
        Move the clock on by C{seconds}, in steps (so periodic calls run at each step).
        """
        while seconds > 0:
            delta = min(step, seconds)
            self.clock.advance(delta)
            seconds -= delta

    def requests(self, route: str, status: int) -> float:
        """
        The value of C{cxg_exec_sdk_requests_total{route,status}}.
        """
        value = self.metrics.registry.get_sample_value(
            "cxg_exec_sdk_requests_total", {"route": route, "status": str(status)}
        )
        return value or 0.0


def ok_json(case: SynchronousTestCase, reply: Reply) -> Any:
    """
    The JSON of a 200 reply, which must have the JSON content type.
    """
    case.assertEqual(reply.status, 200, reply.body)
    case.assertEqual(reply.header("content-type"), "application/json")
    return reply.json


# -------------------------------------------------------------------------------------------------
# Mounting and authentication


class MountTests(SynchronousTestCase):
    """
    The surface answers under both prefixes; disabled, it answers 404 (item 72).
    """

    def test_disabled(self) -> None:
        """
        Item 72 (mount side): without an authenticator the mount answers 404 on both prefixes.
        """
        config = load_config({k: v for k, v in BASE_ENV.items() if k != "CXG_INBOUND_HMAC_SECRET"})
        self.assertEqual(config.sdk_mode, "disabled")
        clock = MemoryReactorClock()
        site = make_site(Mounted(None).app.resource(), config, reactor=clock)
        for prefix in PREFIXES:
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(
                f"POST {prefix}/envs/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            self.assertEqual(parse_reply(transport.value()).status, 404)

    def test_both_prefixes(self) -> None:
        """
        C{/api/connectors} answers exactly as C{/api/sdk}.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        replies = [h.fetch("POST", f"{prefix}/envs/list", body=b"") for prefix in PREFIXES]
        self.assertEqual(replies[0].without_date(), replies[1].without_date())
        texts = [
            h.text(h.tool("box-a", "shell", {"command": ["echo", "hi"]}, prefix=p)) for p in PREFIXES
        ]
        self.assertEqual(texts, [("hi\n\n[exit_code=0]", False)] * 2)

    def test_unknown_paths(self) -> None:
        """
        Unknown paths under the prefixes are 404, a wrong method 405; a name spanning two segments is
        an unknown path.
        """
        h = SDKHarness(self)
        self.assertEqual(h.fetch("POST", "/api/sdk/envs/nope", body=b"").status, 404)
        self.assertEqual(h.fetch("GET", "/api/sdk/envs/list").status, 405)
        self.assertEqual(h.fetch("POST", "/api/sdk/envs/a/b/tool/call", body=b"{}").status, 404)
        self.assertEqual(h.fetch("POST", "/api/sdk/processes/a/b/stdin", body=b"{}").status, 404)
        head = h.send("HEAD", "/api/sdk/processes/x/output")
        self.assertTrue(head.transport.value().startswith(b"HTTP/1.1 405 "))


class AuthTests(SynchronousTestCase):
    """
    The bearer and its verification on every route (items 73, 75, 76).
    """

    ROUTES = (
        ("POST", "/envs/list"),
        ("POST", "/envs/box/tool/call"),
        ("POST", "/processes/sid/stdin"),
        ("GET", "/processes/sid/output"),
        ("POST", "/processes/sid/terminate"),
    )

    def test_missing_bearer(self) -> None:
        """
        Item 73: no C{Authorization}, C{bearer x} or C{Token x} → 401 C{missing_bearer} on every
        route of both prefixes.
        """
        h = SDKHarness(self)
        expected = envelope("missing_bearer", "Authorization: Bearer <token> required")
        for prefix in PREFIXES:
            for method, path in self.ROUTES:
                for header in (None, "bearer x", "Token x", "Bearerx"):
                    headers = {} if header is None else {"Authorization": header}
                    reply = h.fetch(method, prefix + path, None, b"{}", headers)
                    self.assertEqual((reply.status, reply.body), (401, expected), (path, header))
                    self.assertEqual(reply.header("content-type"), "application/json")

    def test_invalid_token(self) -> None:
        """
        Item 76 (route side): a tampered HMAC token and the empty bearer → 401 C{invalid_token}
        C{sdk auth: invalid token}, logged as C{sdk.auth_failed}.
        """
        h = SDKHarness(self)
        logs = LogCapture(self)
        expected = envelope("invalid_token", "sdk auth: invalid token")
        for token in (TOKEN[:-1] + "0", ""):
            for method, path in self.ROUTES:
                reply = h.fetch(method, "/api/sdk" + path, token, b"{}")
                self.assertEqual((reply.status, reply.body), (401, expected), (path, token))
        events = logs.named("sdk.auth_failed")
        self.assertEqual(len(events), 10)
        self.assertEqual(events[0]["error"], "sdk auth: invalid token")
        self.assertEqual(events[0]["log_level"].name, "warn")
        self.assertNotIn(TOKEN[:-1], logs.text())

    def test_vector_accepted(self) -> None:
        """
        Item 76: the §6.3 vector is workspace C{ws_1}: its executors are listed.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b", wid="ws_2")
        listed = ok_json(self, h.fetch("POST", "/api/sdk/envs/list", body=b""))
        self.assertEqual([e["name"] for e in listed["envs"]], ["box-a"])

    def test_remote_verifier(self) -> None:
        """
        Items 74/75 (route side): with the remote verifier, a known proxy token is its workspace (one
        agentserver call for several requests); an unknown one → 401 C{invalid_token} C{sdk auth:
        token rejected by agentserver}; agentserver failing → 401 C{invalid_token} C{sdk auth:
        agentserver returned 500}: never a 5xx.
        """
        agentserver = FakeAgentServer(INTERNAL_SECRET.encode())
        agentserver.add_token("ast_good", WS, "usr_1")
        clock = MemoryReactorClock()
        auth = ProxyTokenAuth(
            cast(HTTPRequester, StubTreq(agentserver)),
            clock,
            "http://agentserver.test",
            Secret(INTERNAL_SECRET.encode()),
        )
        h = SDKHarness(
            self, {"CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver.test"}, authenticator=auth
        )
        h.executor(EXE_A, "box-a")
        for _ in range(3):
            listed = ok_json(self, h.fetch("POST", "/api/sdk/envs/list", "ast_good", b""))
            self.assertEqual([e["name"] for e in listed["envs"]], ["box-a"])
        self.assertEqual(len(agentserver.requests), 1)
        reply = h.fetch("POST", "/api/sdk/envs/list", "ast_bad", b"")
        self.assertEqual(
            (reply.status, reply.body),
            (401, envelope("invalid_token", "sdk auth: token rejected by agentserver")),
        )
        agentserver.status = 500
        reply = h.fetch("POST", "/api/sdk/envs/list", "ast_other", b"")
        self.assertEqual(
            (reply.status, reply.body),
            (401, envelope("invalid_token", "sdk auth: agentserver returned 500")),
        )

    def test_body_limit_first(self) -> None:
        """
        A body over C{CXG_MAX_FRAME_BYTES} → 413 C{too_large} before authentication, on every route;
        a body of exactly the limit passes the check.
        """
        h = SDKHarness(self, {"CXG_MAX_FRAME_BYTES": "1000"})
        expected = envelope("too_large", "request body too large")
        for method, path in self.ROUTES:
            reply = h.fetch(method, "/api/sdk" + path, None, b"x" * 1001)
            self.assertEqual((reply.status, reply.body), (413, expected), path)
        reply = h.fetch("POST", "/api/sdk/envs/list", None, b"x" * 1000)
        self.assertEqual(reply.status, 401)


# -------------------------------------------------------------------------------------------------
# envs/list


class EnvsListTests(SynchronousTestCase):
    """
    C{POST …/envs/list} (item 77).
    """

    def test_connected_only(self) -> None:
        """
        Item 77: connected bindings only, in binding order, each with the six tools in order;
        C{last_seen} in whole seconds, omitted when null; the alias answers the same; the body is
        ignored.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a", is_default=True)
        h.executor(EXE_B, "box-b")
        h.executor("exe_cccccccc-3333-4333-8333-333333333333", "box-c", connected=False)
        h.clock.advance(0.75)
        settled(h.store.update_last_seen(EXE_B))
        seen = format_timestamp_seconds(datetime.fromtimestamp(NOW, UTC))
        for prefix in PREFIXES:
            reply = h.fetch("POST", f"{prefix}/envs/list", body=b"not even json")
            body = ok_json(self, reply)
            self.assertEqual(
                body,
                {
                    "envs": [
                        {"name": "box-a", "type": "executor", "is_default": True, "tools": TOOL_ENTRIES},
                        {
                            "name": "box-b",
                            "type": "executor",
                            "is_default": False,
                            "tools": TOOL_ENTRIES,
                            "last_seen": seen,
                        },
                    ]
                },
            )
            self.assertEqual(list(body["envs"][1]), ["name", "type", "is_default", "tools", "last_seen"])
            self.assertTrue(reply.body.startswith(b'{"envs":[{"name":"box-a","type":"executor"'))
        self.assertEqual(h.sdk.workspaces.contexts, {})

    def test_none(self) -> None:
        """
        No connected binding → C{{"envs":[]}}.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a", connected=False)
        self.assertEqual(h.fetch("POST", "/api/sdk/envs/list", body=b"").body, b'{"envs":[]}\n')

    def test_store_error(self) -> None:
        """
        A failing store → 500 C{registry_error} with its text; a store that does not answer within
        5 s → the same with the cancellation's text.
        """
        h = SDKHarness(self)
        h.store.failure = StoreUnavailable("database down")
        reply = h.fetch("POST", "/api/sdk/envs/list", body=b"")
        self.assertEqual((reply.status, reply.body), (500, envelope("registry_error", "database down")))
        h.store.failure = None
        h.store.stalled = True
        exchange = h.send("POST", "/api/sdk/envs/list", body=b"")
        h.clock.advance(4.9)
        self.assertFalse(exchange.answered)
        h.clock.advance(0.1)
        reply = exchange.reply()
        self.assertEqual(
            (reply.status, reply.body), (500, envelope("registry_error", "store call cancelled"))
        )

    def test_client_gone(self) -> None:
        """
        A client that hangs up while the store call waits gets nothing written, and no store error
        is logged.
        """
        h = SDKHarness(self)
        h.store.stalled = True
        logs = LogCapture(self)
        exchange = h.send("POST", "/api/sdk/envs/list", body=b"")
        exchange.drop()
        h.clock.advance(5)
        self.assertEqual(exchange.transport.value(), b"")
        self.assertEqual(logs.named("store.error"), [])


# -------------------------------------------------------------------------------------------------
# tool/call


class ToolCallTests(SynchronousTestCase):
    """
    C{POST …/envs/{name}/tool/call} (items 78, 79 with the fake exec-server).
    """

    def test_shell_uses_url_name(self) -> None:
        """
        Item 79 (fake): C{shell} C{["/bin/echo","hi"]} without C{environment_id} runs on the URL's
        environment → C{hi\\n\\n[exit_code=0]}; the bridge is dialled with the SDK's User-Agent.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        reply = h.tool("box-a", "shell", {"command": ["/bin/echo", "hi"]})
        self.assertEqual(
            reply.json, {"content": [{"type": "text", "text": "hi\n\n[exit_code=0]"}], "isError": False}
        )
        self.assertEqual(list(reply.json), ["content", "isError"])
        [dial] = h.gateway.dials
        self.assertEqual((dial.exe_id, dial.user_agent), (EXE_A, USER_AGENT))
        self.assertEqual(dial.url, f"{FAKE_BRIDGE_BASE}/{EXE_A}")
        [start] = h.server().requests_for("process/start")
        assert isinstance(start, dict)
        self.assertEqual((start["processId"], start["argv"]), ("shell-1", ["/bin/echo", "hi"]))

    def test_explicit_environment(self) -> None:
        """
        An C{environment_id} in the arguments wins over the URL's name; an empty one is replaced.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b")
        h.tool("box-a", "shell", {"command": ["echo"], "environment_id": "box-b"})
        h.tool("box-b", "shell", {"command": ["echo"], "environment_id": ""})
        self.assertEqual([d.exe_id for d in h.gateway.dials], [EXE_B])

    def test_encoded_name(self) -> None:
        """
        The name is one percent-decoded path segment (C{%20} and C{%2F} included).
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box a")
        h.executor(EXE_B, "box/b")
        self.assertEqual(
            h.text(h.tool("box%20a", "shell", {"command": ["echo", "1"]})), ("1\n\n[exit_code=0]", False)
        )
        self.assertEqual(
            h.text(h.tool("box%2Fb", "shell", {"command": ["echo", "2"]})), ("2\n\n[exit_code=0]", False)
        )
        self.assertEqual([d.exe_id for d in h.gateway.dials], [EXE_A, EXE_B])

    def test_unknown_environment(self) -> None:
        """
        Item 78: an unknown environment → 200 isError with the resolver's text.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        self.assertEqual(
            h.text(h.tool("nope", "shell", {"command": ["echo"]})),
            ('no environment named "nope" (run list_environments to see what\'s available)', True),
        )

    def test_request_errors(self) -> None:
        """
        Item 78: bad JSON → 400 C{bad_request} C{invalid JSON}; a missing or non-string C{tool} →
        C{tool must be a string}; an unknown tool → 400 C{unknown_tool} (checked before the
        arguments); C{arguments} not an object → 400 C{bad_arguments}; C{null} arguments are C{{}}.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        path = "/api/sdk/envs/box-a/tool/call"
        cases = [
            (b"", 400, envelope("bad_request", "invalid JSON")),
            (b"nope", 400, envelope("bad_request", "invalid JSON")),
            (b"[]", 400, envelope("bad_request", "invalid JSON")),
            (b"{}", 400, envelope("bad_request", "tool must be a string")),
            (b'{"tool":5}', 400, envelope("bad_request", "tool must be a string")),
            (b'{"tool":null}', 400, envelope("bad_request", "tool must be a string")),
            (b'{"tool":"nope","arguments":[]}', 400, envelope("unknown_tool", "no such tool: nope")),
            (
                b'{"tool":"list_environments"}',
                400,
                envelope("unknown_tool", "no such tool: list_environments"),
            ),
            (
                b'{"tool":"shell","arguments":[]}',
                400,
                envelope("bad_arguments", "arguments must be an object"),
            ),
            (
                b'{"tool":"shell","arguments":"x"}',
                400,
                envelope("bad_arguments", "arguments must be an object"),
            ),
        ]
        for body, status, expected in cases:
            reply = h.fetch("POST", path, TOKEN, body)
            self.assertEqual((reply.status, reply.body), (status, expected), body)
        text, is_error = h.text(h.fetch("POST", path, TOKEN, b'{"tool":"shell","arguments":null}'))
        self.assertEqual((text, is_error), ("command must be a non-empty array", True))

    def test_copy_path_not_defaulted(self) -> None:
        """
        C{copy_path} takes no C{environment_id}: the URL's name is not put into its arguments.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        text, is_error = h.text(
            h.tool("box-a", "copy_path", {"source_path": "/a", "destination_path": "/b"})
        )
        self.assertEqual(
            (text, is_error),
            ("source_environment_id is required; call list_environments to see available names", True),
        )

    def test_workspace_init(self) -> None:
        """
        A context that cannot be built → 500 C{workspace_init}, before the body is looked at; once
        the gateway listens, the bridge base is known and calls go on.
        """
        h = SDKHarness(self, bridge_base=None)
        h.executor(EXE_A, "box-a")
        reply = h.fetch("POST", "/api/sdk/envs/box-a/tool/call", TOKEN, b"garbage")
        self.assertEqual(
            (reply.status, reply.body),
            (
                500,
                envelope(
                    "workspace_init", "sdk: bridge base unknown (the gateway is not listening yet)"
                ),
            ),
        )
        h.sdk.listening_on(IPv4Address("TCP", WILDCARD, 6060))
        self.assertEqual(h.sdk.bridge_base, "ws://127.0.0.1:6060/bridge")

    def test_tool_error(self) -> None:
        """
        A tool that raises instead of returning a result → 500 C{tool_error} with its text.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")

        async def boom(ctx: object, arguments: object) -> ToolResult:
            raise RuntimeError("boom")

        raising = Tool("shell", "d", SCHEMAS["shell"], boom)
        self.patch(sdk_module, "sdk_tool_named", lambda name: raising)
        logs = LogCapture(self)
        reply = h.tool("box-a", "shell", {"command": ["echo"]})
        self.assertEqual((reply.status, reply.body), (500, envelope("tool_error", "boom")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(logs.named("sdk.tool_raised")), 1)

    def test_log_and_metrics(self) -> None:
        """
        A tool call logs C{sdk.tool_call} with the workspace, the tool, C{is_error} and the duration;
        every answer counts in C{cxg_exec_sdk_requests_total{route,status}}.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        logs = LogCapture(self)
        h.tool("box-a", "shell", {"command": ["false"]})
        [event] = logs.named("sdk.tool_call")
        self.assertEqual(
            (event["workspace_id"], event["tool"], event["is_error"], event["log_level"].name),
            (WS, "shell", True, "info"),
        )
        self.assertEqual(event["duration_ms"], 0)
        exchange = h.send(
            "POST",
            "/api/sdk/envs/box-a/tool/call",
            TOKEN,
            b'{"tool":"shell","arguments":{"command":["sleep","1.5"]}}',
        )
        h.advance(1.5, step=0.25)
        self.assertEqual(h.text(exchange.reply()), ("\n[exit_code=0]", False))
        self.assertEqual(logs.named("sdk.tool_call")[1]["duration_ms"], 1500)
        h.fetch("POST", "/api/sdk/envs/list", None, b"")
        h.fetch("POST", "/api/connectors/envs/list", TOKEN, b"")
        self.assertEqual(h.requests("envs/{name}/tool/call", 200), 2)
        self.assertEqual(h.requests("envs/list", 401), 1)
        self.assertEqual(h.requests("envs/list", 200), 1)
        text = h.metrics.render()[0].decode()
        self.assertNotIn(WS, text)
        self.assertNotIn("box-a", text)

    def test_contexts_per_workspace(self) -> None:
        """
        Each workspace gets its own context (its own pool and counters); a workspace cannot reach
        another's executor by name.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b", wid="ws_2")
        h.tool("box-a", "shell", {"command": ["echo"]})
        h.tool("box-b", "shell", {"command": ["echo"]}, token=OTHER_TOKEN)
        self.assertEqual(sorted(h.sdk.workspaces.contexts), [WS, "ws_2"])
        self.assertEqual(
            [s.backend.requests_for("process/start")[0]["processId"] for s in h.gateway.streams],  # type: ignore[attr-defined]
            ["shell-1", "shell-1"],
        )
        self.assertTrue(h.text(h.tool("box-b", "shell", {"command": ["echo"]}))[1])


# -------------------------------------------------------------------------------------------------
# Process endpoints


class ProcessTests(SynchronousTestCase):
    """
    The process endpoints (items 81–83 with the fake exec-server).
    """

    def setUp(self) -> None:
        self.h = SDKHarness(self)
        self.h.executor(EXE_A, "box-a")

    def test_cat_session(self) -> None:
        """
        Item 81 (fake): C{exec_command} C{["cat"]} with C{pipe_stdin} → session; stdin C{aGVsbG8K} →
        200 C{{"ok":true}} (a C{process/write} with a new UUIDv4 C{writeId}); output returns
        C{aGVsbG8K} with C{session_alive} true; terminate → 200; output afterwards → 404.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        self.assertEqual(str(uuid.UUID(sid)), sid)
        reply = h.stdin(sid, {"data_b64": "aGVsbG8K"}).reply()
        self.assertEqual((reply.status, reply.body), (200, b'{"ok":true}\n'))
        [write] = h.server().requests_for("process/write")
        assert isinstance(write, dict)
        self.assertEqual(list(write), ["processId", "chunk", "writeId"])
        self.assertEqual((write["processId"], write["chunk"]), ("uexec-1", "aGVsbG8K"))
        self.assertEqual(uuid.UUID(str(write["writeId"])).version, 4)
        reply = h.output(sid, "?since=0").reply()
        self.assertEqual(
            reply.body,
            b'{"chunks":[{"stream":"stdout","data_b64":"aGVsbG8K","seq":1}],"exit_code":null,'
            b'"session_alive":true,"truncated":false,"lost_bytes":0}\n',
        )
        [read] = h.server().requests_for("process/read")
        self.assertEqual(
            read, {"processId": "uexec-1", "afterSeq": None, "maxBytes": 1048576, "waitMs": 0}
        )
        reply = h.terminate(sid).reply()
        self.assertEqual((reply.status, reply.body), (200, b'{"ok":true}\n'))
        self.assertEqual(h.server().requests_for("process/terminate"), [{"processId": "uexec-1"}])
        reply = h.output(sid).reply()
        self.assertEqual(
            (reply.status, reply.body), (404, envelope("session_not_found", f"no such session: {sid}"))
        )
        self.assertEqual(h.terminate(sid).reply().status, 404)
        self.assertEqual(h.sdk.workspaces.session_count(), 0)

    def test_alias_prefix(self) -> None:
        """
        A session started under C{/api/sdk} is served under C{/api/connectors} too.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        reply = h.fetch("GET", f"/api/connectors/processes/{sid}/output")
        self.assertEqual(ok_json(self, reply)["session_alive"], True)

    def test_output_waits(self) -> None:
        """
        C{wait_ms} 500 on a silent process: read steps of 250 ms with the same C{afterSeq}, answered
        after 500 ms with no chunks; C{since} is the C{afterSeq}.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        exchange = h.output(sid, "?since=3&wait_ms=500")
        h.clock.advance(0.25)
        self.assertFalse(exchange.answered)
        h.clock.advance(0.25)
        body = ok_json(self, exchange.reply())
        self.assertEqual((body["chunks"], body["session_alive"]), ([], True))
        reads = h.server().requests_for("process/read")
        self.assertEqual(
            [(r["afterSeq"], r["waitMs"]) for r in reads],
            [(3, 250), (3, 250)],
        )

    def test_output_returns_on_chunk(self) -> None:
        """
        A step that returns chunks ends the wait at once. A write sent meanwhile waits for the
        current read step (the exec-server answers one request at a time), never for the whole wait.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        exchange = h.output(sid, "?wait_ms=10000")
        h.clock.advance(0.1)
        write = h.stdin(sid, {"data_b64": "aGkK"})
        self.assertFalse(write.answered)
        h.clock.advance(0.15)
        self.assertEqual(write.reply().status, 200)
        self.assertTrue(exchange.answered)
        self.assertEqual(ok_json(self, exchange.reply())["chunks"][0]["data_b64"], "aGkK")

    def test_output_parameters(self) -> None:
        """
        Missing or invalid C{since} → C{afterSeq} null; C{wait_ms} missing, invalid or negative →
        one step with C{waitMs} 0; C{wait_ms} above 10000 → 10000.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        for query in (
            "",
            "?since=-3&wait_ms=-5",
            "?since=x&wait_ms=abc",
            "?since=0&wait_ms=0",
            "?since=1.5",
        ):
            ok_json(self, h.output(sid, query).reply())
        reads = h.server().requests_for("process/read")
        self.assertEqual(
            [(r["afterSeq"], r["waitMs"]) for r in reads],
            [(None, 0)] * 5,
        )
        exchange = h.output(sid, "?wait_ms=99999")
        h.advance(9.75, step=0.25)
        self.assertFalse(exchange.answered)
        h.advance(0.25, step=0.25)
        self.assertTrue(exchange.answered)
        self.assertEqual(len(h.server().requests_for("process/read")), 5 + 40)

    def test_output_exit(self) -> None:
        """
        An exited, closed process: C{exit_code} is its status, C{session_alive} false.
        """
        h = self.h
        h.exec_command(["true"])  # the session's stream is dialled: script the server
        h.server().script_process(["prog"], [("stdout", b"hi\n")], exit_code=3)
        sid = h.exec_command(["prog"])
        body = ok_json(self, h.output(sid).reply())
        self.assertEqual(
            body,
            {
                "chunks": [{"stream": "stdout", "data_b64": "aGkK", "seq": 1}],
                "exit_code": 3,
                "session_alive": False,
                "truncated": False,
                "lost_bytes": 0,
            },
        )

    def test_output_errors(self) -> None:
        """
        C{unknown process id} (-32600) → 410 C{session_lost}; another error → 502
        C{executor_error} with the call's text; no reply within 30 s → 502 C{process/read: timed out}.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        server = h.server()
        server.fail_next("process/read", -32600, "unknown process id uexec-1")
        reply = h.output(sid).reply()
        self.assertEqual((reply.status, reply.json), (410, SESSION_LOST))
        server.fail_next("process/read", -32603, "boom")
        reply = h.output(sid).reply()
        self.assertEqual(
            (reply.status, reply.body),
            (502, envelope("executor_error", "process/read: boom (code=-32603)")),
        )
        server.drop_next("process/read")
        exchange = h.output(sid)
        h.clock.advance(29.9)
        self.assertFalse(exchange.answered)
        h.clock.advance(0.1)
        reply = exchange.reply()
        self.assertEqual(
            (reply.status, reply.body), (502, envelope("executor_error", "process/read: timed out"))
        )

    def test_stdin_errors(self) -> None:
        """
        stdin: invalid JSON → 400 C{bad_request}; C{data_b64} missing → C{data_b64 required}; not
        strict base64 → 400 C{bad_base64} with the decoder's text.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        cases = [
            (b"nope", 400, envelope("bad_request", "invalid JSON")),
            (b"", 400, envelope("bad_request", "invalid JSON")),
            (b'{"data_b64":5}', 400, envelope("bad_request", "invalid JSON")),
            (b"{}", 400, envelope("bad_request", "data_b64 required")),
            (b'{"data_b64":null}', 400, envelope("bad_request", "data_b64 required")),
            (b'{"data_b64":"aGk"}', 400, envelope("bad_base64", "Incorrect padding")),
            (b'{"data_b64":"a b="}', 400, envelope("bad_base64", "Only base64 data is allowed")),
            (b'{"data_b64":"_-8="}', 400, envelope("bad_base64", "Only base64 data is allowed")),
        ]
        for body, status, expected in cases:
            reply = h.stdin(sid, body).reply()
            self.assertEqual((reply.status, reply.body), (status, expected), body)
        self.assertEqual(h.server().requests_for("process/write"), [])
        self.assertEqual(h.stdin(sid, {"data_b64": ""}).reply().status, 200)

    def test_stdin_statuses(self) -> None:
        """
        Item 82: a process without C{pipe_stdin} → 409 C{stdin_closed}; C{unknownProcess} → 410
        C{session_lost}; a JSON-RPC error → 502 C{process/write: <message> (code=<code>)}; no reply
        within 30 s → 502 C{process/write: timed out}.
        """
        h = self.h
        sid = h.exec_command(["sleep", "5"])
        reply = h.stdin(sid, {"data_b64": "eA=="}).reply()
        self.assertEqual(
            (reply.status, reply.body), (409, envelope("stdin_closed", "process stdin is closed"))
        )
        server = h.server()
        server.fail_next("process/write", -32603, "failed to write to process stdin")
        reply = h.stdin(sid, {"data_b64": "eA=="}).reply()
        self.assertEqual(
            (reply.status, reply.body),
            (
                502,
                envelope(
                    "executor_error", "process/write: failed to write to process stdin (code=-32603)"
                ),
            ),
        )
        server.drop_next("process/write")
        exchange = h.stdin(sid, {"data_b64": "eA=="})
        h.clock.advance(30)
        reply = exchange.reply()
        self.assertEqual(
            (reply.status, reply.body), (502, envelope("executor_error", "process/write: timed out"))
        )
        found = h.sdk.workspaces.find_session(sid)
        assert found is not None
        found[1].process_id = "uexec-99"
        reply = h.stdin(sid, {"data_b64": "eA=="}).reply()
        self.assertEqual((reply.status, reply.json), (410, SESSION_LOST))

    def test_not_found_and_forbidden(self) -> None:
        """
        Item 82: an unknown sid → 404 on every process endpoint (also for another workspace's
        token); another workspace's session → 403, which neither forgets nor touches it.
        """
        h = self.h
        sid = h.exec_command(["sleep", "5"])
        for token in (TOKEN, OTHER_TOKEN):
            for exchange in (
                h.output("nope", token=token),
                h.stdin("nope", {}, token),
                h.terminate("nope", token),
            ):
                reply = exchange.reply()
                self.assertEqual(
                    (reply.status, reply.body),
                    (404, envelope("session_not_found", "no such session: nope")),
                )
        forbidden = envelope("forbidden", "session belongs to a different workspace")
        for exchange in (
            h.output(sid, token=OTHER_TOKEN),
            h.stdin(sid, b"junk", OTHER_TOKEN),
            h.terminate(sid, OTHER_TOKEN),
        ):
            reply = exchange.reply()
            self.assertEqual((reply.status, reply.body), (403, forbidden))
        self.assertEqual(h.output(sid).reply().status, 200)
        self.assertEqual(h.server().requests_for("process/terminate"), [])

    def test_session_lost(self) -> None:
        """
        Item 83 (fake): once the session's bridge stream was reaped, output and stdin → 410
        C{session_lost} (before the body is looked at); terminate → 200 without a
        C{process/terminate}, and the session is gone.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100"])
        server = h.server()
        h.gateway.streams[-1].reset("idle-timeout")
        for exchange in (h.output(sid), h.stdin(sid, b"junk"), h.stdin(sid, {"data_b64": "eA=="})):
            reply = exchange.reply()
            self.assertEqual((reply.status, reply.json), (410, SESSION_LOST))
        self.assertEqual(h.terminate(sid).reply().status, 200)
        self.assertEqual(server.requests_for("process/terminate"), [])
        self.assertEqual(h.output(sid).reply().status, 404)
        # The next tool call dials a new stream.
        self.assertEqual(
            h.text(h.tool("box-a", "shell", {"command": ["echo"]})), ("\n\n[exit_code=0]", False)
        )
        self.assertEqual(len(h.gateway.streams), 2)

    def test_terminate_failure_logged(self) -> None:
        """
        A failing C{process/terminate} is logged as C{sdk.terminate_failed}; the answer is still 200
        and the session forgotten.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100"])
        h.server().fail_next("process/terminate", -32603, "nope")
        logs = LogCapture(self)
        self.assertEqual(h.terminate(sid).reply().status, 200)
        [event] = logs.named("sdk.terminate_failed")
        self.assertEqual(
            (event["workspace_id"], event["session_id"], event["error"]),
            (WS, sid, "process/terminate: nope (code=-32603)"),
        )
        self.assertEqual(h.output(sid).reply().status, 404)

    def test_terminate_waits_bounded(self) -> None:
        """
        An unanswered C{process/terminate} is given up after 10 s; then 200.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100"])
        h.server().drop_next("process/terminate")
        exchange = h.terminate(sid)
        h.clock.advance(9.9)
        self.assertFalse(exchange.answered)
        h.clock.advance(0.1)
        self.assertEqual(exchange.reply().status, 200)

    def test_metrics_routes(self) -> None:
        """
        The process endpoints count under their own route labels.
        """
        h = self.h
        sid = h.exec_command(["cat"], pipe_stdin=True)
        h.stdin(sid, {"data_b64": "eA=="}).reply()
        h.output(sid).reply()
        h.terminate(sid).reply()
        h.output(sid).reply()
        self.assertEqual(
            [
                h.requests("processes/{sid}/stdin", 200),
                h.requests("processes/{sid}/output", 200),
                h.requests("processes/{sid}/terminate", 200),
                h.requests("processes/{sid}/output", 404),
            ],
            [1, 1, 1, 1],
        )


# -------------------------------------------------------------------------------------------------
# The sweep


class SweepTests(SynchronousTestCase):
    """
    Session expiry and context dropping every 60 s (§4.8.3, §7.5).
    """

    def setUp(self) -> None:
        self.h = SDKHarness(self)
        self.h.executor(EXE_A, "box-a")
        self.h.sdk.start()

    def test_idle_session_expired(self) -> None:
        """
        A session idle for 30 min is terminated and forgotten by the sweep; its endpoints then
        answer 404.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100000"])
        server = h.server()
        h.advance(29 * 60)
        self.assertIsNotNone(h.sdk.workspaces.find_session(sid))
        h.advance(60)
        self.assertEqual(server.requests_for("process/terminate"), [{"processId": "uexec-1"}])
        self.assertEqual(h.output(sid).reply().status, 404)
        self.assertEqual(h.sdk.workspaces.session_count(), 0)

    def test_activity_keeps_session(self) -> None:
        """
        Every process-endpoint call counts as activity: a session read every 20 min lives on.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100000"])
        for _ in range(4):
            h.advance(20 * 60)
            self.assertEqual(h.output(sid).reply().status, 200)
        self.assertEqual(h.server().requests_for("process/terminate"), [])

    def test_idle_context_dropped(self) -> None:
        """
        A context without tool calls for 1 h and without sessions is dropped and its bridges closed;
        the next tool call builds a new one.
        """
        h = self.h
        h.tool("box-a", "shell", {"command": ["echo"]})
        stream = h.gateway.streams[-1]
        h.advance(59 * 60)
        self.assertIn(WS, h.sdk.workspaces.contexts)
        self.assertIsNone(stream.ended)
        h.advance(60)
        self.assertNotIn(WS, h.sdk.workspaces.contexts)
        self.assertIsNotNone(stream.ended)
        h.tool("box-a", "shell", {"command": ["echo"]})
        self.assertEqual(len(h.gateway.dials), 2)

    def test_live_session_keeps_context(self) -> None:
        """
        A context with a live session is kept past 1 h without tool calls; once the session is
        terminated, the next sweep drops it.
        """
        h = self.h
        sid = h.exec_command(["sleep", "100000"])
        for _ in range(6):
            h.advance(20 * 60)
            h.output(sid).reply()
        self.assertIn(WS, h.sdk.workspaces.contexts)
        h.terminate(sid).reply()
        h.advance(60)
        self.assertNotIn(WS, h.sdk.workspaces.contexts)

    def test_stop(self) -> None:
        """
        Stopping the surface stops the sweep and closes every context's bridges; later tool calls
        fail with C{workspace_init}.
        """
        h = self.h
        h.tool("box-a", "shell", {"command": ["echo"]})
        stream = h.gateway.streams[-1]
        self.successResultOf(h.sdk.stop())
        self.assertIsNotNone(stream.ended)
        # Only the site's own clock of log dates is left.
        left = [call for call in h.clock.getDelayedCalls() if "_updateLogDateTime" not in repr(call)]
        self.assertEqual(left, [])
        reply = h.tool("box-a", "shell", {"command": ["echo"]})
        self.assertEqual((reply.status, reply.json["error"]["code"]), (500, "workspace_init"))


# -------------------------------------------------------------------------------------------------
# The hooks


class CapTokenTests(SynchronousTestCase):
    """
    The SDK's own cap tokens (§4.8.3, item 84).
    """

    def test_provider(self) -> None:
        """
        Tokens are minted with turn C{sdk}, the workspace, C{iat} now and C{exp} now + 24 h;
        C{token(False)} keeps the token while at least 1 h is left; C{token(True)} always mints.
        """
        clock = MemoryReactorClock()
        clock.advance(NOW)
        provider = SDKCapTokens(Secret(CAP_SECRET.encode()), WS, clock)
        self.assertTrue(verifyObject(ICapTokenProvider, provider))
        first = self.successResultOf(provider.token(False))
        claims = verify_cap_token(Secret(CAP_SECRET.encode()), first, NOW)
        self.assertEqual(
            (claims.turn_id, claims.workspace_id, claims.exp), (SDK_TURN_ID, WS, NOW + 86400)
        )
        clock.advance(23 * 3600)
        self.assertEqual(self.successResultOf(provider.token(False)), first)
        clock.advance(1)
        second = self.successResultOf(provider.token(False))
        self.assertNotEqual(second, first)
        self.assertEqual(
            verify_cap_token(Secret(CAP_SECRET.encode()), second, NOW).exp, NOW + 23 * 3600 + 1 + 86400
        )
        clock.advance(1)
        third = self.successResultOf(provider.token(True))
        self.assertEqual(
            verify_cap_token(Secret(CAP_SECRET.encode()), third, NOW).exp, NOW + 23 * 3600 + 2 + 86400
        )
        self.assertNotIn(first, repr(provider))

    def test_remint_on_dial(self) -> None:
        """
        Item 84: 23 h 30 min after the first dial, the next dial presents a token with a later
        C{exp}; the bridge opened earlier stays open and in use.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b")
        h.tool("box-a", "shell", {"command": ["echo"]})
        h.clock.advance(23 * 3600 + 30 * 60)
        h.tool("box-b", "shell", {"command": ["echo"]})
        secret = Secret(CAP_SECRET.encode())
        now = int(h.clock.seconds())
        first, second = (verify_cap_token(secret, d.token, now) for d in h.gateway.dials)
        self.assertEqual((first.turn_id, first.workspace_id, first.exp), ("sdk", WS, NOW + 86400))
        self.assertEqual(second.exp, now + 86400)
        self.assertIsNone(h.gateway.streams[0].ended)
        h.tool("box-a", "shell", {"command": ["echo"]})
        self.assertEqual(len(h.gateway.dials), 2)


class ResolverSourceTests(SynchronousTestCase):
    """
    The SDK's resolver source (§4.8.3).
    """

    def test_connected_in_binding_order(self) -> None:
        """
        The connected executors of the workspace, as ConnectedExecutor objects, in binding order.
        """
        h = SDKHarness(self)
        h.executor(EXE_B, "box-b")
        h.clock.advance(1)
        h.executor(EXE_A, "box-a", is_default=True)
        h.executor("exe_cccccccc-3333-4333-8333-333333333333", "box-c", connected=False)
        settled(h.store.update_last_seen(EXE_A))
        source = StoreResolverSource(h.store, h.registry, WS, h.clock)
        self.assertTrue(verifyObject(IResolverSource, source))
        seen = format_timestamp(datetime.fromtimestamp(NOW + 1, UTC))
        self.assertEqual(
            self.successResultOf(source.list()),
            [
                {"exe_id": EXE_B, "name": "box-b", "description": "", "is_default": False},
                {
                    "exe_id": EXE_A,
                    "name": "box-a",
                    "description": "",
                    "is_default": True,
                    "last_seen_at": seen,
                },
            ],
        )

    def test_deadline(self) -> None:
        """
        A store that does not answer within 5 s fails the listing.
        """
        h = SDKHarness(self)
        h.store.stalled = True
        d = StoreResolverSource(h.store, h.registry, WS, h.clock).list()
        h.clock.advance(5)
        self.assertEqual(str(self.failureResultOf(d, StoreUnavailable).value), "store call cancelled")


class RelayCreatorTests(SynchronousTestCase):
    """
    The in-process relay creator (§11.3, item 85).
    """

    def test_disabled(self) -> None:
        """
        Without a relay registry → relay unavailable.
        """
        h = SDKHarness(self)
        creator = InProcessRelayCreator(None, h.store, WS)
        self.assertTrue(verifyObject(IRelayCreator, creator))
        self.failureResultOf(creator.create_relay(EXE_A, EXE_B, 60, 0), RelayUnavailable)

    def test_created_for_workspace(self) -> None:
        """
        A ticket is created in-process for the caller's workspace (C{relay.created} carries it), with
        the registry's URLs.
        """
        h = SDKHarness(self, relay=True)
        assert h.relays is not None
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b")
        logs = LogCapture(self)
        ticket = self.successResultOf(
            InProcessRelayCreator(h.relays, h.store, WS).create_relay(EXE_A, EXE_B, 90, 0)
        )
        self.assertTrue(ticket.ticket.startswith("rly_"))
        self.assertEqual(ticket.upload_url, f"https://relay.test/relay/{ticket.ticket}")
        self.assertEqual(ticket.download_url, ticket.upload_url)
        self.assertEqual(h.relays.active(WS), 1)
        [event] = logs.named("relay.created")
        self.assertEqual(
            (event["workspace_id"], event["source_exe_id"], event["dest_exe_id"]), (WS, EXE_A, EXE_B)
        )

    def test_refusals(self) -> None:
        """
        Any refusal is C{relay/create: <error text>}: an executor of another workspace (403) and the
        workspace cap (429).
        """
        h = SDKHarness(self, relay=True, max_per_workspace=1)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b", wid="ws_2")
        creator = InProcessRelayCreator(h.relays, h.store, WS)
        failure = self.failureResultOf(creator.create_relay(EXE_A, EXE_B, 60, 0), RelayError)
        self.assertEqual(str(failure.value), f"relay/create: executor not in workspace: {EXE_B}")
        self.successResultOf(creator.create_relay(EXE_A, EXE_A, 60, 0))
        failure = self.failureResultOf(creator.create_relay(EXE_A, EXE_A, 60, 0), RelayError)
        self.assertEqual(
            str(failure.value), "relay/create: relay: workspace concurrent relay cap reached"
        )

    def copy(self, h: SDKHarness, transport: str) -> tuple[str, bool]:
        """
        C{copy_path} of a real local file from C{box-a} to C{box-b} through the route.
        """
        source = os.path.abspath(self.mktemp())
        with open(source, "wb") as f:
            f.write(b"payload")
        destination = os.path.abspath(self.mktemp())
        return h.text(
            h.tool(
                "box-a",
                "copy_path",
                {
                    "source_environment_id": "box-a",
                    "source_path": source,
                    "destination_environment_id": "box-b",
                    "destination_path": destination,
                    "transport": transport,
                },
            )
        )

    def test_copy_path_http_disabled(self) -> None:
        """
        Item 85: with the relay disabled, C{copy_path} over C{http} → C{copy_path failed (http):
        relay not enabled}.
        """
        h = SDKHarness(self)
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b")
        self.assertEqual(self.copy(h, "http"), ("copy_path failed (http): relay not enabled", True))

    def test_copy_path_http_ticket(self) -> None:
        """
        Item 85: with the relay enabled, C{copy_path} over C{http} creates its ticket in-process for
        the caller's workspace. (The fake exec-server cannot run C{sh}, so the transfer itself fails.)
        """
        h = SDKHarness(self, relay=True)
        assert h.relays is not None
        h.executor(EXE_A, "box-a")
        h.executor(EXE_B, "box-b")
        logs = LogCapture(self)
        text, is_error = self.copy(h, "http")
        self.assertTrue(is_error)
        self.assertTrue(
            text.startswith("copy_path failed (http): source exit none, destination exit none"), text
        )
        [event] = logs.named("relay.created")
        self.assertEqual(
            (event["workspace_id"], event["source_exe_id"], event["dest_exe_id"]), (WS, EXE_A, EXE_B)
        )
        self.assertEqual(h.relays.active(WS), 1)


class BridgeBaseTests(SynchronousTestCase):
    """
    The SDK's bridge base (§4.8.3).
    """

    def test_self_base_url(self) -> None:
        """
        C{CXG_SELF_HTTP_BASE_URL} with C{http}→C{ws} and C{https}→C{wss}, plus C{/bridge}.
        """
        self.assertEqual(
            self_bridge_base("https://gw.example.com", None, None), "wss://gw.example.com/bridge"
        )
        self.assertEqual(
            self_bridge_base("http://10.0.0.1:6060/x", "h", 1), "ws://10.0.0.1:6060/x/bridge"
        )

    def test_listening_address(self) -> None:
        """
        Without it, the listening address, with a wildcard host replaced by loopback.
        """
        self.assertEqual(self_bridge_base(None, WILDCARD, 6060), "ws://127.0.0.1:6060/bridge")
        self.assertEqual(self_bridge_base(None, "::", 6060), "ws://[::1]:6060/bridge")
        self.assertEqual(self_bridge_base(None, "127.0.0.1", 7), "ws://127.0.0.1:7/bridge")
        self.assertEqual(self_bridge_base(None, "fe80::1", 7), "ws://[fe80::1]:7/bridge")
        self.assertIsNone(self_bridge_base(None, None, None))

    def test_routes(self) -> None:
        """
        L{SDKRoutes} takes C{CXG_SELF_HTTP_BASE_URL} first; else it learns the listening address.
        """
        h = SDKHarness(self, {"CXG_SELF_HTTP_BASE_URL": "https://gw.example.com/"}, bridge_base=None)
        self.assertEqual(h.sdk.bridge_base, "wss://gw.example.com/bridge")
        h.sdk.listening_on(IPv4Address("TCP", WILDCARD, 1))
        self.assertEqual(h.sdk.bridge_base, "wss://gw.example.com/bridge")
        h = SDKHarness(self, bridge_base=None)
        h.sdk.listening_on(IPv6Address("TCP", "::", 6060))
        self.assertEqual(h.sdk.bridge_base, "ws://[::1]:6060/bridge")
