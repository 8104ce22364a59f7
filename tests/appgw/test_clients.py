"""
Tests for L{codexgw.appgw.clients}: the outbound clients of C{app-gateway.md} §11 — the exec gateway's
C{connected}, relay and revoke calls and agentserver's workspace token — their exact requests, time
limits, body limits and error texts, against an in-memory server (acceptance items 15, 17). An
interface suite for L{IExecGatewayClient} is run against the real client here; fakes reuse it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw.appgw.clients import (
    CONNECTED_PATH,
    RELAY_CREATE_PATH,
    REVOKE_TURN_PATH,
    WORKSPACE_TOKEN_PATH,
    ExecGatewayClient,
    ExecGatewayError,
    ExecGatewayUnreachable,
    IExecGatewayClient,
    IWorkspaceTokenSource,
    RelayAnswer,
    WorkspaceTokenClient,
    WorkspaceTokenError,
)
from codexgw.config import Secret
from tests.appgw.stubhttp import (
    Answer,
    Drop,
    Hang,
    LogCollector,
    Recorded,
    RefusingHTTP,
    Script,
    StubServer,
)

EXEC_SECRET = Secret(b"exec-gateway-internal-shared-secret!")
AGENT_SECRET = Secret(b"agentserver-internal-secret-0123456789")
EXEC_URL = "http://exec-gateway:6060"
AGENT_URL = "http://agentserver:8080"
REFUSED = "Connection was refused by other side: connection refused."

#: Executors the fake exec gateway lists for C{ws_a}.
EXECUTORS = [
    {"exe_id": "exe_1", "name": "laptop", "description": "", "is_default": True,
     "last_seen_at": "2026-01-01T00:00:00Z", "labels": {"os": "linux"}},
    {"exe_id": "exe_2", "name": "ci", "description": "runner", "is_default": False,
     "last_seen_at": "2026-01-01T00:00:01Z"},
]  # fmt: skip


def exec_gateway(recorded: Recorded) -> Script:
    """
    A fake exec gateway: C{connected} lists L{EXECUTORS} for C{ws_a} and nothing (C{null}) for
    others; relay create answers 201 with a ticket echoing the request; revoke answers 204.
    """
    path = recorded.uri.decode()
    if path.startswith(CONNECTED_PATH):
        listed = EXECUTORS if path.endswith("workspace_id=ws_a") else None
        return Answer(200, json.dumps(listed).encode(), {b"Content-Type": b"application/json"})
    if path == RELAY_CREATE_PATH:
        request = json.loads(recorded.body)
        return Answer(201, json.dumps({"relay_id": "r1", "request": request}).encode())
    if path == REVOKE_TURN_PATH:
        return Answer(204)
    return Answer(404, b"not found\n")


class ExecGatewayClientTestsMixin:
    """
    What every L{IExecGatewayClient} does. Cases provide L{client} (knowing L{EXECUTORS} for C{ws_a}
    and none elsewhere, answering relay requests 201, confirming revocations) and L{settle}.
    """

    client: Any

    def settle(self) -> None:
        """
        Let pending in-memory I/O happen.
        """

    def test_provides_interface(self) -> None:
        """
        The client provides L{IExecGatewayClient}.
        """
        case: Any = self
        case.assertTrue(verifyObject(IExecGatewayClient, self.client))

    def test_connected(self) -> None:
        """
        The executors of a workspace, unchanged; none for another workspace.
        """
        case: Any = self
        d = self.client.connected("ws_a")
        other = self.client.connected("ws_b")
        self.settle()
        case.assertEqual(case.successResultOf(d), EXECUTORS)
        case.assertEqual(case.successResultOf(other), [])

    def test_connected_needs_workspace(self) -> None:
        """
        An empty workspace id fails with C{execgwclient: workspaceID required}.
        """
        case: Any = self
        failure = case.failureResultOf(self.client.connected(""), ExecGatewayError)
        case.assertEqual(str(failure.value), "execgwclient: workspaceID required")

    def test_relay(self) -> None:
        """
        A relay request is answered with a status and a body.
        """
        case: Any = self
        d = self.client.create_relay("ws_a", {"source_exe_id": "a", "dest_exe_id": "b"})
        self.settle()
        answer = case.successResultOf(d)
        case.assertIsInstance(answer, RelayAnswer)
        case.assertEqual(answer.status, 201)

    def test_revoke(self) -> None:
        """
        A revocation is confirmed.
        """
        case: Any = self
        d = self.client.revoke_turn("trn_0000000000000001", 1_700_000_000)
        self.settle()
        case.assertIs(case.successResultOf(d), True)


class RealExecGatewayInterfaceTests(ExecGatewayClientTestsMixin, SynchronousTestCase):
    """
    L{ExecGatewayClient} passes the interface suite against the fake exec gateway.
    """

    def setUp(self) -> None:
        """
        A client over the in-memory exec gateway.
        """
        self.server = StubServer(exec_gateway)
        self.client = ExecGatewayClient(self.server.http, Clock(), EXEC_URL, EXEC_SECRET)

    def settle(self) -> None:
        """
        Flush the in-memory connection.
        """
        self.server.flush()


class ClientCase(SynchronousTestCase):
    """
    Clients over in-memory servers scripted per test.
    """

    def setUp(self) -> None:
        """
        A clock and a log collector.
        """
        self.clock = Clock()
        self.logs = LogCollector()

    def exec_client(self, script: Any, base_url: str = EXEC_URL) -> tuple[ExecGatewayClient, StubServer]:
        """
        An exec gateway client whose server follows C{script}.
        """
        server = StubServer(script)
        return ExecGatewayClient(server.http, self.clock, base_url, EXEC_SECRET, self.logs.log), server

    def refusing_exec_client(self) -> tuple[ExecGatewayClient, RefusingHTTP]:
        """
        An exec gateway client whose every connection is refused.
        """
        refusing = RefusingHTTP()
        client = ExecGatewayClient(refusing.http, self.clock, EXEC_URL, EXEC_SECRET, self.logs.log)
        return client, refusing

    def assert_exec_headers(self, recorded: Recorded) -> None:
        """
        The Bearer secret and no C{Origin} or C{X-Internal-Secret}.
        """
        self.assertEqual(recorded.header(b"Authorization"), [b"Bearer " + EXEC_SECRET.value])
        self.assertIsNone(recorded.header(b"Origin"))
        self.assertIsNone(recorded.header(b"X-Internal-Secret"))


class ConnectedTests(ClientCase):
    """
    C{GET …/api/exec-gateway/connected?workspace_id=<wid>}.
    """

    def test_request(self) -> None:
        """
        The exact request: GET, the path and query, Bearer, C{Accept: application/json}, no body.
        """
        client, server = self.exec_client(exec_gateway)
        d = client.connected("ws_a")
        server.flush()
        self.assertEqual(self.successResultOf(d), EXECUTORS)
        recorded = server.only_request()
        self.assertEqual(recorded.method, b"GET")
        self.assertEqual(recorded.uri, b"/api/exec-gateway/connected?workspace_id=ws_a")
        self.assert_exec_headers(recorded)
        self.assertEqual(recorded.header(b"Accept"), [b"application/json"])
        self.assertEqual(recorded.body, b"")

    def test_query_escaped(self) -> None:
        """
        The workspace id is escaped in the query; a base URL's path is kept.
        """
        client, server = self.exec_client(Answer(200, b"[]"), base_url="http://gw/prefix")
        d = client.connected("a b&c=d")
        server.flush()
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(
            server.only_request().uri, b"/prefix/api/exec-gateway/connected?workspace_id=a+b%26c%3Dd"
        )

    def test_null(self) -> None:
        """
        C{null} becomes C{[]}; any array is passed on unchanged.
        """
        for body, expected in (
            (b"null", []),
            (b" null\n", []),
            (b'[1,"x",{"a":[]}]', [1, "x", {"a": []}]),
        ):
            with self.subTest(body=body):
                client, server = self.exec_client(Answer(200, body))
                d = client.connected("ws")
                server.flush()
                self.assertEqual(self.successResultOf(d), expected)

    def test_status(self) -> None:
        """
        A status other than 200 fails with the status and the first KiB of the body.
        """
        for status, body, quoted in (
            (500, b"db down", "db down"), (401, b"", ""), (204, b"", ""),
            (503, b"x" * 5000, "x" * 1024),
        ):  # fmt: skip
            with self.subTest(status=status):
                client, server = self.exec_client(Answer(status, body))
                d = client.connected("ws")
                server.flush()
                failure = self.failureResultOf(d, ExecGatewayError)
                self.assertEqual(
                    str(failure.value), f"execgwclient: connected: status={status} body={quoted}"
                )

    def test_decode(self) -> None:
        """
        A 200 that is not a JSON array (or C{null}) fails with a decode error.
        """
        for body, detail in (
            (b"{}", "not a JSON array"), (b'"x"', "not a JSON array"),
            (b"[", "Expecting value: line 1 column 2 (char 1)"),
        ):  # fmt: skip
            with self.subTest(body=body):
                client, server = self.exec_client(Answer(200, body))
                d = client.connected("ws")
                server.flush()
                failure = self.failureResultOf(d, ExecGatewayError)
                self.assertEqual(str(failure.value), f"execgwclient: connected: decode: {detail}")

    def test_body_limit(self) -> None:
        """
        A body of exactly 1 MiB is read; one byte more fails.
        """
        exact = b"[" + b" " * ((1 << 20) - 2) + b"]"
        client, server = self.exec_client(Answer(200, exact))
        d = client.connected("ws")
        server.flush()
        self.assertEqual(self.successResultOf(d), [])
        client, server = self.exec_client(Answer(200, exact + b" "))
        d = client.connected("ws")
        server.flush()
        failure = self.failureResultOf(d, ExecGatewayError)
        self.assertEqual(
            str(failure.value), "execgwclient: connected: response body exceeds 1048576 bytes"
        )

    def test_timeout(self) -> None:
        """
        No complete answer within 5 s fails; nothing happens before.
        """
        for script in (Hang(), Hang(b"[")):
            with self.subTest(script=script):
                client, server = self.exec_client(script)
                d = client.connected("ws")
                server.flush()
                self.clock.advance(4.75)
                self.assertNoResult(d)
                self.clock.advance(0.25)
                failure = self.failureResultOf(d, ExecGatewayError)
                self.assertEqual(str(failure.value), "execgwclient: connected: timed out after 5s")

    def test_network(self) -> None:
        """
        A refused connection fails with its reason; the empty workspace makes no call.
        """
        client, refusing = self.refusing_exec_client()
        failure = self.failureResultOf(client.connected("ws"), ExecGatewayError)
        self.assertEqual(str(failure.value), f"execgwclient: connected: {REFUSED}")
        self.failureResultOf(client.connected(""), ExecGatewayError)
        self.assertEqual(refusing.calls, 1)


class RelayTests(ClientCase):
    """
    C{POST …/api/exec-gateway/relay/create}.
    """

    request: ClassVar[dict[str, object]] = {
        "source_exe_id": "exe_1",
        "dest_exe_id": "exe_2",
        "ttl_seconds": 60,
        "max_bytes": 1024,
    }

    def test_request(self) -> None:
        """
        The exact request: the caller's fields in order plus the gateway's C{workspace_id}, Bearer,
        JSON content type.
        """
        client, server = self.exec_client(Answer(201, b'{"relay_id":"r1"}\n'))
        d = client.create_relay("ws_a", self.request)
        server.flush()
        self.assertEqual(self.successResultOf(d), RelayAnswer(201, b'{"relay_id":"r1"}\n'))
        recorded = server.only_request()
        self.assertEqual(recorded.method, b"POST")
        self.assertEqual(recorded.uri, b"/api/exec-gateway/relay/create")
        self.assert_exec_headers(recorded)
        self.assertEqual(recorded.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(
            recorded.body,
            b'{"source_exe_id":"exe_1","dest_exe_id":"exe_2","ttl_seconds":60,"max_bytes":1024,'
            b'"workspace_id":"ws_a"}',
        )

    def test_workspace_replaced(self) -> None:
        """
        A C{workspace_id} sent by the caller is replaced by the gateway's.
        """
        client, server = self.exec_client(Answer(201))
        d = client.create_relay("ws_a", {"workspace_id": "ws_evil", "source_exe_id": "a"})
        server.flush()
        self.successResultOf(d)
        self.assertEqual(
            json.loads(server.only_request().body), {"source_exe_id": "a", "workspace_id": "ws_a"}
        )

    def test_pass_through(self) -> None:
        """
        Every status is passed through with its whole body.
        """
        for status, body in (
            (201, b'{"relay_id":"r"}'), (429, b'{"error":"too many relays"}\n'),
            (503, b'{"error":"relay disabled"}\n'), (403, b'{"error":"forbidden"}'),
            (500, b"x" * 4096), (400, b""),
        ):  # fmt: skip
            with self.subTest(status=status):
                client, server = self.exec_client(Answer(status, body))
                d = client.create_relay("ws_a", self.request)
                server.flush()
                self.assertEqual(self.successResultOf(d), RelayAnswer(status, body))

    def test_unreachable(self) -> None:
        """
        A refused connection, a dropped one, a 10 s timeout or an oversized body raise
        L{ExecGatewayUnreachable} with the 502 text of §3.4.
        """
        client, _ = self.refusing_exec_client()
        failure = self.failureResultOf(client.create_relay("ws_a", self.request), ExecGatewayUnreachable)
        self.assertEqual(str(failure.value), f"exec gateway unreachable: {REFUSED}")
        client, server = self.exec_client(Drop())
        d = client.create_relay("ws_a", self.request)
        server.flush()
        failure = self.failureResultOf(d, ExecGatewayUnreachable)
        self.assertTrue(str(failure.value).startswith("exec gateway unreachable: "))
        client, server = self.exec_client(Hang())
        d = client.create_relay("ws_a", self.request)
        server.flush()
        self.clock.advance(9.75)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        failure = self.failureResultOf(d, ExecGatewayUnreachable)
        self.assertEqual(str(failure.value), "exec gateway unreachable: timed out after 10s")
        client, server = self.exec_client(Answer(201, b" " * ((1 << 20) + 1)))
        d = client.create_relay("ws_a", self.request)
        server.flush()
        failure = self.failureResultOf(d, ExecGatewayUnreachable)
        self.assertEqual(
            str(failure.value), "exec gateway unreachable: response body exceeds 1048576 bytes"
        )

    def test_needs_workspace(self) -> None:
        """
        An empty workspace id fails before any call.
        """
        client, refusing = self.refusing_exec_client()
        failure = self.failureResultOf(client.create_relay("", self.request), ExecGatewayError)
        self.assertEqual(str(failure.value), "execgwclient: workspaceID required")
        self.assertEqual(refusing.calls, 0)


class RevokeTests(ClientCase):
    """
    C{POST …/api/exec-gateway/revoke-turn}: never fails.
    """

    def test_request(self) -> None:
        """
        The exact request; 204 is success, silently.
        """
        client, server = self.exec_client(Answer(204))
        d = client.revoke_turn("trn_0123456789abcdef", 1_700_086_400)
        server.flush()
        self.assertIs(self.successResultOf(d), True)
        recorded = server.only_request()
        self.assertEqual(recorded.method, b"POST")
        self.assertEqual(recorded.uri, b"/api/exec-gateway/revoke-turn")
        self.assert_exec_headers(recorded)
        self.assertEqual(recorded.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(recorded.body, b'{"turn_id":"trn_0123456789abcdef","exp":1700086400}')
        self.assertEqual(self.logs.events, [])

    def test_other_status(self) -> None:
        """
        Any status but 204 is a failure logged at warning with the turn id and at most 1 KiB of the
        body, never the secret; the Deferred fires with C{False}.
        """
        for status, body, quoted in ((200, b"ok", "ok"), (500, b"e" * 3000, "e" * 1024), (401, b"", "")):
            with self.subTest(status=status):
                self.logs.events.clear()
                client, server = self.exec_client(Answer(status, body))
                d = client.revoke_turn("trn_1", 5)
                server.flush()
                self.assertIs(self.successResultOf(d), False)
                self.assertEqual(self.logs.levels(), ["warn"])
                self.assertEqual(
                    self.logs.messages(),
                    [f"revoke-turn failed for trn_1: status={status} body={quoted}"],
                )
                self.assertNotIn(EXEC_SECRET.value.decode(), self.logs.messages()[0])

    def test_network_and_timeout(self) -> None:
        """
        A refused connection or a 5 s timeout is logged and the Deferred fires with C{False}.
        """
        client, _ = self.refusing_exec_client()
        self.assertIs(self.successResultOf(client.revoke_turn("trn_1", 5)), False)
        client, server = self.exec_client(Hang())
        d = client.revoke_turn("trn_2", 5)
        server.flush()
        self.clock.advance(4.75)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(
            self.logs.messages(),
            [
                f"revoke-turn failed for trn_1: {REFUSED}",
                "revoke-turn failed for trn_2: timed out after 5s",
            ],
        )
        self.assertEqual(self.logs.levels(), ["warn", "warn"])

    def test_empty_turn(self) -> None:
        """
        An empty turn id is logged and not sent.
        """
        client, refusing = self.refusing_exec_client()
        self.assertIs(self.successResultOf(client.revoke_turn("", 5)), False)
        self.assertEqual(refusing.calls, 0)
        self.assertEqual(self.logs.levels(), ["warn"])

    def test_caller_cancels(self) -> None:
        """
        A caller cancelling its own wait gets C{CancelledError} (nothing else ever fails it).
        """
        client, server = self.exec_client(Hang())
        d = client.revoke_turn("trn_1", 5)
        server.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WorkspaceTokenTests(ClientCase):
    """
    C{POST <agentserver>/internal/workspace-token}.
    """

    def client(self, script: Any) -> tuple[WorkspaceTokenClient, StubServer]:
        """
        A client whose agentserver follows C{script}.
        """
        server = StubServer(script)
        return WorkspaceTokenClient(server.http, self.clock, AGENT_URL, AGENT_SECRET), server

    def test_request(self) -> None:
        """
        The exact request: POST, path, C{{"workspace_id"}}, JSON content type and
        C{X-Internal-Secret}, no Bearer, no C{Origin}; 200 C{{"token"}} gives the token.
        """
        client, server = self.client(Answer(200, b'{"token":"wt-123","expires_at":"x"}'))
        self.assertTrue(verifyObject(IWorkspaceTokenSource, client))
        d = client.fetch("ws_a")
        server.flush()
        self.assertEqual(self.successResultOf(d), "wt-123")
        recorded = server.only_request()
        self.assertEqual(recorded.method, b"POST")
        self.assertEqual(recorded.uri, WORKSPACE_TOKEN_PATH.encode())
        self.assertEqual(recorded.body, b'{"workspace_id":"ws_a"}')
        self.assertEqual(recorded.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(recorded.header(b"X-Internal-Secret"), [AGENT_SECRET.value])
        self.assertIsNone(recorded.header(b"Authorization"))
        self.assertIsNone(recorded.header(b"Origin"))

    def test_failures(self) -> None:
        """
        Any other answer is an error with its exact text.
        """
        for script, message in (
            (Answer(401, b"nope"), "workspace-token: status=401 body=nope"),
            (Answer(201, b'{"token":"t"}'), 'workspace-token: status=201 body={"token":"t"}'),
            (Answer(500, b"z" * 2000), "workspace-token: status=500 body=" + "z" * 1024),
            (Answer(200, b"x"), "workspace-token: decode: Expecting value: line 1 column 1 (char 0)"),
            (Answer(200, b"[]"), "workspace-token: decode: no token in the answer"),
            (Answer(200, b'{"token":""}'), "workspace-token: decode: no token in the answer"),
            (Answer(200, b'{"token":7}'), "workspace-token: decode: no token in the answer"),
            (Answer(200, b"{}"), "workspace-token: decode: no token in the answer"),
        ):
            with self.subTest(script=script):
                client, server = self.client(script)
                d = client.fetch("ws_a")
                server.flush()
                self.assertEqual(str(self.failureResultOf(d, WorkspaceTokenError).value), message)

    def test_network_and_timeout(self) -> None:
        """
        A refused connection and a 5 s timeout are errors; an empty workspace makes no call.
        """
        refusing = RefusingHTTP()
        client = WorkspaceTokenClient(refusing.http, self.clock, AGENT_URL, AGENT_SECRET)
        failure = self.failureResultOf(client.fetch("ws_a"), WorkspaceTokenError)
        self.assertEqual(str(failure.value), f"workspace-token: {REFUSED}")
        failure = self.failureResultOf(client.fetch(""), WorkspaceTokenError)
        self.assertEqual(str(failure.value), "workspace-token: workspaceID required")
        self.assertEqual(refusing.calls, 1)
        hanging, server = self.client(Hang())
        d = hanging.fetch("ws_a")
        server.flush()
        self.clock.advance(5)
        failure = self.failureResultOf(d, WorkspaceTokenError)
        self.assertEqual(str(failure.value), "workspace-token: timed out after 5s")
