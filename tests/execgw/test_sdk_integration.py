"""
Integration tests of the SDK REST surface (C{exec-gateway.md} §4.8, §11; acceptance items 72, 74,
75, 77, 79, 81–83 and 85) on the real C{twist codexgw-exec} with real executors: two registered
C{codexgw-executor}s (pinned codex exec-server) bound to one workspace, as the envtools suite runs them
(L{tests.envtools.stack}), called over HTTP at C{/api/sdk/*} and C{/api/connectors/*}. The SDK layer
dials the gateway's own C{/bridge}.

The gateway and executors of a class are shared by its tests; every test uses its own sessions and
files. The executors run on this machine, so what the tools did is checked in the file system under
the test's temporary directory. Every wait is bounded; every process is stopped by pid.

Decisions:
 - The shared stacks authenticate SDK callers locally (C{CXG_INBOUND_HMAC_SECRET}); the remote
   verifier is proven against the fake agentserver served on a socket during its own test, with a
   gateway of its own (a listening socket cannot outlive a test).
 - Item 83 uses a gateway whose bridges are reaped after 2 s idle: the SDK client's heartbeats (60 s)
   do not keep the session's stream alive, so the gateway reaps it and the session is lost.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from codexgw.config import Secret
from codexgw.testing.fakeagentserver import FakeAgentServer
from codexgw.tokens import mint_inbound_token
from tests.envtools.stack import EXECUTOR_NAMES, ExecutorStack, SharedStack
from tests.execgw.gateway import (
    ADMIN_SECRET,
    GatewayHTTP,
    GatewayProcess,
    Reply,
    gateway_env,
    reactor,
)

A, B = EXECUTOR_NAMES
INBOUND_SECRET = "integration-inbound-hmac-secret-0123456789"
SDK_ENV: Mapping[str, str] = {"CXG_INBOUND_HMAC_SECRET": INBOUND_SECRET}
#: How long one tool call may take.
CALL_WAIT = 60.0


def sdk_token(workspace_id: str) -> str:
    """
    An inbound HMAC token for C{workspace_id} under the shared stacks' secret.
    """
    return mint_inbound_token(Secret(INBOUND_SECRET.encode()), workspace_id, "it")


def envelope(code: str, message: str) -> dict[str, Any]:
    """
    An SDK error envelope.
    """
    return {"error": {"code": code, "message": message}}


class SDKStackCase(TestCase):
    """
    A shared gateway (SDK enabled) with two executors bound to one workspace.

    @cvar gateway_extra: variables added to the gateway's environment.
    @cvar relay: whether the gateway's byte relay is enabled.
    """

    timeout = 180
    gateway_extra: ClassVar[Mapping[str, str]] = SDK_ENV
    relay: ClassVar[bool] = False

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's stack (started by its first test) and an HTTP client of its gateway.
        """
        shared = SharedStack.for_class(
            type(self), Path(self.mktemp()).parent.absolute(), self.gateway_extra, self.relay
        )
        self.addCleanup(shared.release)
        self.stack: ExecutorStack = await shared.acquire()
        self.http = GatewayHTTP(self.stack.gateway.base_url)
        self.addCleanup(self.http.close)
        self.token = sdk_token(self.stack.workspace_id)
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir(parents=True)

    async def sdk(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        prefix: str = "/api/sdk",
        timeout: float = CALL_WAIT,
    ) -> Reply:
        """
        One SDK request (JSON body unless C{None}), with the workspace's token by default.
        """
        raw = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        return await self.http.request(method, prefix + path, headers, raw, timeout)

    async def tool(
        self, name: str, tool: str, arguments: Mapping[str, Any], prefix: str = "/api/sdk"
    ) -> tuple[str, bool]:
        """
        A tool call on environment C{name}; its text and C{isError}. No text may contain an exe id.
        """
        reply = await self.sdk(
            "POST",
            f"/envs/{name}/tool/call",
            {"tool": tool, "arguments": dict(arguments)},
            prefix=prefix,
        )
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(reply.header("content-type"), "application/json")
        [content] = reply.json["content"]
        for exe_id in self.stack.exe_ids:
            self.assertNotIn(exe_id, content["text"])
        return content["text"], reply.json["isError"]

    async def exec_command(self, command: list[str], pipe_stdin: bool = False) -> str:
        """
        Start a session on C{box-a}; its id.
        """
        text, is_error = await self.tool(
            A, "exec_command", {"command": command, "pipe_stdin": pipe_stdin}
        )
        self.assertFalse(is_error, text)
        session_id: str = json.loads(text)["session_id"]
        return session_id


class SDKRealExecutorTests(SDKStackCase):
    """
    Items 77, 79, 81, 82 and 85 (relay enabled) on real executors.
    """

    relay = True

    async def test_envs_list(self) -> None:
        """
        Item 77: both connected executors, in binding order, with the six tools and C{last_seen} in
        whole seconds; the alias answers the same.
        """
        replies = [
            await self.sdk("POST", "/envs/list", prefix=p) for p in ("/api/sdk", "/api/connectors")
        ]
        for reply in replies:
            self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(replies[0].json, replies[1].json)
        envs = replies[0].json["envs"]
        self.assertEqual([e["name"] for e in envs], [A, B])
        for entry in envs:
            self.assertEqual(list(entry), ["name", "type", "is_default", "tools", "last_seen"])
            self.assertRegex(entry["last_seen"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertEqual(
                [t["name"] for t in entry["tools"]],
                ["shell", "read_file", "write_file", "apply_patch", "copy_path", "exec_command"],
            )

    async def test_shell(self) -> None:
        """
        Item 79: C{shell} C{["/bin/echo","hi"]} via C{/api/sdk/envs/<name>/tool/call} without
        C{environment_id} → 200, C{hi\\n\\n[exit_code=0]}, isError false; the same through the alias.
        The gateway logs C{sdk.tool_call}.
        """
        gateway = self.stack.gateway
        since = len(gateway.events)
        for prefix in ("/api/sdk", "/api/connectors"):
            answer = await self.tool(A, "shell", {"command": ["/bin/echo", "hi"]}, prefix)
            self.assertEqual(answer, ("hi\n\n[exit_code=0]", False))
        event = await gateway.wait_event("sdk.tool_call", since=since, tool="shell")
        self.assertEqual((event["workspace_id"], event["is_error"]), (self.stack.workspace_id, False))

    async def read_until(self, session_id: str, wanted: bytes) -> dict[str, Any]:
        """
        Output from the start, waiting up to 2 s per call, until C{wanted} was read (at most 10 calls);
        the last answer with every chunk read so far.
        """
        chunks: list[dict[str, Any]] = []
        since = 0
        for _ in range(10):
            reply = await self.sdk("GET", f"/processes/{session_id}/output?since={since}&wait_ms=2000")
            self.assertEqual(reply.status, 200, reply.body)
            body: dict[str, Any] = reply.json
            chunks += body["chunks"]
            data = b"".join(base64.b64decode(c["data_b64"]) for c in chunks)
            if wanted in data:
                return {**body, "chunks": chunks}
            if chunks:
                since = chunks[-1]["seq"]
        raise self.failureException(f"{wanted!r} not read: {chunks!r}")

    async def test_cat_session(self) -> None:
        """
        Item 81: C{exec_command} C{["cat"]} with C{pipe_stdin} → session; stdin C{aGVsbG8K} → 200;
        output returns C{aGVsbG8K} with C{session_alive} true; terminate → 200; output afterwards →
        404.
        """
        sid = await self.exec_command(["cat"], pipe_stdin=True)
        reply = await self.sdk("POST", f"/processes/{sid}/stdin", {"data_b64": "aGVsbG8K"})
        self.assertEqual((reply.status, reply.json), (200, {"ok": True}))
        body = await self.read_until(sid, b"hello\n")
        self.assertEqual([c["data_b64"] for c in body["chunks"]], ["aGVsbG8K"])
        self.assertEqual(body["chunks"][0]["stream"], "stdout")
        self.assertEqual(
            (body["session_alive"], body["exit_code"], body["truncated"], body["lost_bytes"]),
            (True, None, False, 0),
        )
        reply = await self.sdk("POST", f"/processes/{sid}/terminate")
        self.assertEqual((reply.status, reply.json), (200, {"ok": True}))
        reply = await self.sdk("GET", f"/processes/{sid}/output")
        self.assertEqual(
            (reply.status, reply.json), (404, envelope("session_not_found", f"no such session: {sid}"))
        )

    async def test_stdin_closed_and_ownership(self) -> None:
        """
        Item 82: stdin on a session started without C{pipe_stdin} (C{["sleep","5"]}) → 409
        C{stdin_closed}; output for another workspace's session → 403; an unknown sid → 404.
        """
        sid = await self.exec_command(["sleep", "5"])
        reply = await self.sdk("POST", f"/processes/{sid}/stdin", {"data_b64": "eA=="})
        self.assertEqual(
            (reply.status, reply.json), (409, envelope("stdin_closed", "process stdin is closed"))
        )
        other = sdk_token("ws_someone_else")
        reply = await self.sdk("GET", f"/processes/{sid}/output", token=other)
        self.assertEqual(
            (reply.status, reply.json),
            (403, envelope("forbidden", "session belongs to a different workspace")),
        )
        reply = await self.sdk("GET", "/processes/nope/output")
        self.assertEqual(
            (reply.status, reply.json), (404, envelope("session_not_found", "no such session: nope"))
        )
        self.assertEqual((await self.sdk("POST", f"/processes/{sid}/terminate")).status, 200)

    async def test_copy_path_http(self) -> None:
        """
        Item 85: C{copy_path} over C{http} through C{/api/sdk/envs/<name>/tool/call} between the two
        executors creates its ticket in-process for the caller's workspace (C{relay.created} carries
        it) and the file arrives byte-exact.
        """
        gateway = self.stack.gateway
        since = len(gateway.events)
        source = self.root / "src.bin"
        content = os.urandom(300_000)
        source.write_bytes(content)
        destination = self.root / "out" / "dst.bin"
        text, is_error = await self.tool(
            A,
            "copy_path",
            {
                "source_environment_id": A,
                "source_path": str(source),
                "destination_environment_id": B,
                "destination_path": str(destination),
                "transport": "http",
                "timeout_ms": 60_000,
            },
        )
        self.assertFalse(is_error, text)
        self.assertEqual(json.loads(text)["transport"], "http")
        self.assertEqual(destination.read_bytes(), content)
        created = await gateway.wait_event("relay.created", since=since)
        self.assertEqual(created["workspace_id"], self.stack.workspace_id)
        self.assertEqual(
            (created["source_exe_id"], created["dest_exe_id"]),
            (self.stack.executors[A].exe_id, self.stack.executors[B].exe_id),
        )


class SDKIdleTests(SDKStackCase):
    """
    Items 83 and 85 (relay disabled) on a gateway that reaps bridges idle for 2 s.
    """

    gateway_extra: ClassVar[Mapping[str, str]] = {**SDK_ENV, "CXG_BRIDGE_IDLE_TIMEOUT": "2s"}

    async def test_session_lost(self) -> None:
        """
        Item 83: once the bridge stream of a session was reaped, output and stdin → 410
        C{session_lost}; terminate → 200; then the session is gone (404).
        """
        gateway = self.stack.gateway
        since = len(gateway.events)
        sid = await self.exec_command(["sleep", "60"])
        # Only the reap of box-a's stream (the session's) matters; other idle streams may go first.
        await gateway.wait_event(
            "bridge.idle_reaped", timeout=15.0, since=since, exe_id=self.stack.executors[A].exe_id
        )
        # The reset reaches the SDK's client right after the gateway logs the reap.
        lost = envelope("session_lost", "process session lost: executor stream closed")
        for _ in range(20):
            reply = await self.sdk("GET", f"/processes/{sid}/output")
            if reply.status == 410:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual((reply.status, reply.json), (410, lost))
        reply = await self.sdk("POST", f"/processes/{sid}/stdin", {"data_b64": "eA=="})
        self.assertEqual((reply.status, reply.json), (410, lost))
        self.assertEqual((await self.sdk("POST", f"/processes/{sid}/terminate")).status, 200)
        self.assertEqual((await self.sdk("GET", f"/processes/{sid}/output")).status, 404)

    async def copy(self, transport: str) -> tuple[str, bool, Path, bytes]:
        """
        C{copy_path} of a small random file from C{box-a} to C{box-b} with C{transport}.
        """
        source = self.root / f"src-{transport}.bin"
        content = os.urandom(50_000)
        source.write_bytes(content)
        destination = self.root / f"dst-{transport}" / "file.bin"
        text, is_error = await self.tool(
            A,
            "copy_path",
            {
                "source_environment_id": A,
                "source_path": str(source),
                "destination_environment_id": B,
                "destination_path": str(destination),
                "transport": transport,
            },
        )
        return text, is_error, destination, content

    async def test_copy_relay_disabled(self) -> None:
        """
        Item 85: with the relay disabled, C{copy_path} over C{http} fails with C{copy_path failed
        (http): relay not enabled}, and C{auto} copies over ws.
        """
        text, is_error, _, _ = await self.copy("http")
        self.assertEqual((text, is_error), ("copy_path failed (http): relay not enabled", True))
        text, is_error, destination, content = await self.copy("auto")
        self.assertFalse(is_error, text)
        self.assertEqual(json.loads(text)["transport"], "ws")
        self.assertEqual(destination.read_bytes(), content)


class SDKMountTests(TestCase):
    """
    Items 72, 74 and 75 against a gateway of their own (no executors needed).
    """

    timeout = 60

    async def start_gateway(self, extra: Mapping[str, str]) -> GatewayHTTP:
        """
        Start a gateway with C{extra} in its environment (stopped by pid in cleanup); an HTTP client.
        """
        gateway = GatewayProcess(
            gateway_env("sqlite:///var/exec-gateway.sqlite3", extra), Path(self.mktemp()).absolute()
        )
        self.addCleanup(gateway.stop)
        await gateway.start()
        self.gateway = gateway
        http = GatewayHTTP(gateway.base_url)
        self.addCleanup(http.close)
        return http

    async def test_disabled(self) -> None:
        """
        Item 72: neither agentserver URL nor inbound HMAC secret → C{/api/sdk/envs/list} and
        C{/api/connectors/envs/list} → 404.
        """
        http = await self.start_gateway({})
        for prefix in ("/api/sdk", "/api/connectors"):
            reply = await http.request("POST", f"{prefix}/envs/list", {"Authorization": "Bearer x"}, b"")
            self.assertEqual(reply.status, 404, reply.body)

    async def test_remote_verifier(self) -> None:
        """
        Items 74/75: the gateway validates proxy tokens with agentserver (C{X-Internal-Secret},
        C{{"proxy_token":…}}), once for several calls; a rejected token → 401 C{invalid_token};
        missing bearer → 401 C{missing_bearer}. The gateway then stops cleanly (exit 0), its SDK layer
        included, and never logged the proxy token.
        """
        agentserver = FakeAgentServer(ADMIN_SECRET.encode())
        workspace = f"ws_remote_{os.urandom(4).hex()}"
        agentserver.add_token("ast_good", workspace, "usr_1")
        port = reactor.listenTCP(0, Site(agentserver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        http = await self.start_gateway({"CXG_AGENTSERVER_INTERNAL_URL": url})
        for _ in range(3):
            reply = await http.request(
                "POST", "/api/sdk/envs/list", {"Authorization": "Bearer ast_good"}, b""
            )
            self.assertEqual((reply.status, reply.body), (200, b'{"envs":[]}\n'))
        [request] = agentserver.requests
        self.assertEqual(request.secret, ADMIN_SECRET.encode())
        self.assertEqual(request.json, {"proxy_token": "ast_good"})
        reply = await http.request(
            "POST", "/api/sdk/envs/list", {"Authorization": "Bearer ast_bad"}, b""
        )
        self.assertEqual(
            (reply.status, reply.json),
            (401, envelope("invalid_token", "sdk auth: token rejected by agentserver")),
        )
        reply = await http.request("POST", "/api/connectors/envs/list", {}, b"")
        self.assertEqual(
            (reply.status, reply.json),
            (401, envelope("missing_bearer", "Authorization: Bearer <token> required")),
        )
        self.assertEqual(len(agentserver.requests), 2)
        started = self.gateway.named("exec_gateway.started")[0]
        self.assertEqual(started["sdk"], "remote")
        self.assertEqual(await self.gateway.stop(), 0)
        self.assertNotIn("ast_good", self.gateway.output)
