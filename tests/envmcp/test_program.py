"""
Integration tests of the whole env-mcp program (C{app-gateway.md} §9, criteria 61–63, 65, 70): the
installed C{codexgw env-mcp} runs as a child process speaking MCP over real pipes, against a fake app
gateway (the loopback routes and a refusing C{/bridge}) served by a real C{twisted.web} site on
127.0.0.1. Every wait is bounded; every child is killed by pid in cleanup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from codexgw.config import Secret
from codexgw.tokens import mint_cap_token

REACTOR: Any = global_reactor
#: The installed console script.
CODEXGW = os.path.join(os.path.dirname(sys.executable), "codexgw")
#: Seconds any single wait of these tests may take.
WAIT = 15.0
LOOPBACK = "loopback-secret-token"
SECRET = Secret(b"s" * 32)
EXECUTORS = [
    {
        "exe_id": "exe_1",
        "name": "laptop",
        "description": "",
        "is_default": True,
        "last_seen_at": "2030-01-01T00:00:00Z",
    },
    {"exe_id": "exe_slow", "name": "slow", "description": "hangs", "is_default": False},
]


def request(request_id: object, method: str, params: object = None) -> dict[str, object]:
    """
    A JSON-RPC request.
    """
    message: dict[str, object] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


class FakeAppGateway(Resource):
    """
    The app gateway's loopback routes and an exec gateway C{/bridge} that refuses C{exe_1} with 503
    and never answers for C{exe_slow}.

    @ivar requests: C{(method, path, headers)} of every request, in order.
    @ivar renewed: the token C{/internal/captoken} hands out.
    """

    isLeaf = True

    def __init__(self, renewed: str) -> None:
        super().__init__()
        self.renewed = renewed
        self.requests: list[tuple[bytes, bytes, Headers]] = []
        self.hanging: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        """
        Record the request and answer by path.
        """
        path = request.path
        self.requests.append((request.method, path, request.requestHeaders.copy()))
        if path == b"/internal/connected":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(EXECUTORS).encode() + b"\n"
        if path == b"/internal/captoken":
            return json.dumps({"token": self.renewed, "exp": int(time.time()) + 3600}).encode()
        if path == b"/bridge/exe_1":
            request.setResponseCode(503)
            return b"executor not connected\n"
        if path == b"/bridge/exe_slow":
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"not found\n"

    def header(self, index: int, name: bytes) -> list[bytes] | None:
        """
        The values of header C{name} of the request at C{index}.
        """
        values = self.requests[index][2].getRawHeaders(name)
        return None if values is None else list(values)


class EnvMcpChild(ProcessProtocol):
    """
    The env-mcp child: MCP lines out, stderr kept, its exit status.

    @ivar ended: the process has ended, with L{status}.
    """

    def __init__(self) -> None:
        self.messages: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.stderr = b""
        self.ended = False
        self.status: int | None = None
        self._waiters: list[Deferred[int | None]] = []
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        """
        Queue each complete stdout line, decoded.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.messages.put(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        """
        Keep stderr.
        """
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        """
        Fire L{ended} with the exit status.
        """
        value: Any = reason.value
        self.ended = True
        self.status = 0 if isinstance(value, ProcessDone) else value.exitCode
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.status)

    def send(self, message: object) -> None:
        """
        Write one MCP line.
        """
        self.transport.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]

    async def next_message(self) -> dict[str, Any]:
        """
        The next stdout message, within L{WAIT} seconds.
        """
        d = self.messages.get()
        d.addTimeout(WAIT, REACTOR)
        return await d

    async def exit_status(self, within: float = WAIT) -> int | None:
        """
        The exit status, within C{within} seconds.
        """
        if self.ended:
            return self.status
        d: Deferred[int | None] = Deferred()
        self._waiters.append(d)
        d.addTimeout(within, REACTOR)
        return await d


class ProgramTests(TestCase):
    """
    The real C{codexgw env-mcp} process.
    """

    def setUp(self) -> None:
        """
        A fake app gateway on 127.0.0.1; cap tokens: one past 3/4 of its life, and its renewal.
        """
        now = int(time.time())
        self.initial = mint_cap_token(SECRET, "trn_old", "ws_a", now - 900, now + 100)
        self.renewed = mint_cap_token(SECRET, "trn_new", "ws_a", now, now + 3600)
        self.gateway = FakeAppGateway(self.renewed)
        port = REACTOR.listenTCP(0, Site(self.gateway), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"127.0.0.1:{port.getHost().port}"

    def tearDown(self) -> None:
        """
        Finish hanging requests so the site's connections can close.
        """
        for pending in self.gateway.hanging:
            if not pending.finished and not pending._disconnected:
                pending.finish()

    def spawn(self) -> EnvMcpChild:
        """
        Start C{codexgw env-mcp} as codex does; it is killed (by pid) in cleanup if still running.
        """
        child = EnvMcpChild()
        argv = [
            CODEXGW,
            "env-mcp",
            "--workspace-id",
            "ws_a",
            "--exec-gateway-url",
            f"ws://{self.base}/bridge",
            "--app-gateway-internal",
            f"http://{self.base}",
            "--workspace-token-env",
            "CXG_WORKSPACE_TOKEN",
            "--loopback-token-env",
            "CXG_LOOPBACK_TOKEN",
        ]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "CXG_WORKSPACE_TOKEN": self.initial,
            "CXG_LOOPBACK_TOKEN": LOOPBACK,
        }
        process = REACTOR.spawnProcess(child, CODEXGW, argv, env=env)
        pid = process.pid

        async def stop() -> None:
            if not child.ended:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await child.exit_status()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return child

    def assert_no_secrets(self, child: EnvMcpChild) -> None:
        """
        No token appears in the child's logs.
        """
        for secret in (self.initial, self.renewed, LOOPBACK):
            self.assertNotIn(secret.encode(), child.stderr)

    async def handshake(self, child: EnvMcpChild) -> None:
        """
        C{initialize} (exact result, no network I/O before it) and C{notifications/initialized}.
        """
        child.send(request(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}))
        self.assertEqual(
            await child.next_message(),
            {
                "jsonrpc": "2.0",
                "id": 0,
                "result": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "agentserver", "version": "0.2"},
                },
            },
        )
        self.assertEqual(self.gateway.requests, [])
        child.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def test_session(self) -> None:
        """
        A session as codex runs one: the handshake, C{tools/list} (9 tools), C{list_environments}
        through C{GET /internal/connected} with the loopback token (criterion 65), a C{shell} call
        whose dial is preceded by the cap-token renewal and presents the renewed token (criterion
        70), then stdin EOF → exit 0 with the clean-exit log; no token is ever logged.
        """
        child = self.spawn()
        await self.handshake(child)
        child.send(request("t", "tools/list"))
        listing = await child.next_message()
        self.assertEqual(len(listing["result"]["tools"]), 9)
        self.assertEqual(self.gateway.requests, [])

        child.send(request(1, "tools/call", {"name": "list_environments", "arguments": {}}))
        answer = await child.next_message()
        self.assertEqual(
            answer["result"],
            {
                "content": [
                    {
                        "type": "text",
                        "text": '[{"name":"laptop","is_default":true,'
                        '"last_seen":"2030-01-01T00:00:00Z"},{"name":"slow","description":"hangs"}]',
                    }
                ],
                "isError": False,
            },
        )
        self.assertEqual(self.gateway.requests[0][:2], (b"GET", b"/internal/connected"))
        self.assertEqual(self.gateway.header(0, b"X-Loopback-Token"), [LOOPBACK.encode()])
        self.assertEqual(self.gateway.header(0, b"Accept"), [b"application/json"])

        shell = {"environment_id": "laptop", "command": ["echo", "hi"]}
        child.send(request(2, "tools/call", {"name": "shell", "arguments": shell}))
        answer = await child.next_message()
        self.assertEqual(
            answer["result"],
            {
                "content": [
                    {
                        "type": "text",
                        "text": 'environment "laptop" unavailable: bridge dial: HTTP 503: '
                        "executor not connected",
                    }
                ],
                "isError": True,
            },
        )
        paths = [(method, path) for method, path, _ in self.gateway.requests]
        self.assertEqual(
            paths[1:],
            [(b"POST", b"/internal/captoken"), (b"GET", b"/bridge/exe_1")],
        )
        self.assertEqual(self.gateway.header(1, b"X-Loopback-Token"), [LOOPBACK.encode()])
        self.assertEqual(self.gateway.header(2, b"Authorization"), [f"Bearer {self.renewed}".encode()])
        self.assertEqual(self.gateway.header(2, b"User-Agent"), [b"codexgw-env-mcp"])

        child.transport.closeStdin()  # type: ignore[union-attr]
        self.assertEqual(await child.exit_status(), 0)
        self.assertIn(b"env-mcp clean exit (stdin closed)", child.stderr)
        self.assert_no_secrets(child)

    async def test_eof_cancels(self) -> None:
        """
        stdin EOF while a call hangs (its dial is never answered) cancels it: no response, exit 0
        well before the dial's own 10 s limit.
        """
        child = self.spawn()
        await self.handshake(child)
        shell = {"environment_id": "slow", "command": ["true"]}
        child.send(request(1, "tools/call", {"name": "shell", "arguments": shell}))
        child.send(request(2, "ping"))
        self.assertEqual(await child.next_message(), {"jsonrpc": "2.0", "id": 2, "result": {}})
        started = time.monotonic()
        child.transport.closeStdin()  # type: ignore[union-attr]
        self.assertEqual(await child.exit_status(within=8.0), 0)
        self.assertLess(time.monotonic() - started, 8.0)
        self.assertTrue(child.messages.pending == [])
        self.assertIn(b"env-mcp clean exit (stdin closed)", child.stderr)

    async def test_stdout_failure(self) -> None:
        """
        When stdout fails, env-mcp stops serving and exits 1 at stdin EOF.
        """
        child = self.spawn()
        await self.handshake(child)
        child.transport.closeStdout()  # type: ignore[union-attr]
        child.send(request(1, "ping"))
        child.send(request(2, "ping"))
        child.transport.closeStdin()  # type: ignore[union-attr]
        self.assertEqual(await child.exit_status(), 1)
        self.assertIn(b"stdout write failed", child.stderr)
        self.assertIn(b"env-mcp exited with error", child.stderr)

    async def test_signal(self) -> None:
        """
        SIGTERM stops env-mcp with status 1 and a log line.
        """
        child = self.spawn()
        await self.handshake(child)
        try:
            child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        except ProcessExitedAlready:
            self.fail("env-mcp ended before the signal")
        self.assertEqual(await child.exit_status(), 1)
        self.assertIn(b"env-mcp stopped by a signal", child.stderr)
