"""
Test support for running the env-mcp tools on real executors: the real exec gateway
(C{twist codexgw-exec}), two registered executors bound to one workspace (the real
C{twist codexgw-executor} with the pinned codex exec-server), a stand-in for the app gateway's loopback
routes, and the real C{codexgw env-mcp} spoken to over its stdin/stdout as an MCP client.

 - L{ExecutorStack} is the gateway and its executors. Its processes run outside the reactor
   (L{tests.execgw.gateway.GatewayProcess} reads their pipes in threads), so L{SharedStack} can share
   one stack between the tests of a class: started by the first test that asks, stopped after the
   class's last test, killed at interpreter exit if a partial run never got there.
 - L{LoopbackStandIn} serves the three C{/internal/*} routes of C{app-gateway.md} §3.2–§3.4 the way the
   app gateway does for one spawn: it checks C{X-Loopback-Token}, lists the workspace's connected
   executors and creates relays through the real exec gateway's internal API with the shared secret,
   and mints cap tokens with the gateway's cap-token secret. L{TrackingSite} lets a test close every
   connection env-mcp left open, so the reactor is clean after the test.
 - L{EnvMcpChild} is one C{codexgw env-mcp} child process (C{spawnProcess}, one per test: a fresh
   envtools context each time) with the MCP handshake and C{tools/call} matched by request id.

Decisions where nothing else decides:
 - The stand-in answers the gateway's body unchanged, as the app gateway does; an unreachable exec
   gateway is C{500 list} for C{/internal/connected} and C{502} for relay/create (§3.2, §3.4).
 - env-mcp's cap token is minted for an hour, so it never renews during a test (renewal is covered by
   the env-mcp suite); C{/internal/captoken} still works if it did.
 - Every tool answer is checked for the executors' exe ids: no tool text may contain one
   (C{envtools.md} §5).
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from codexgw.config import Secret
from codexgw.tokens import mint_cap_token
from tests.execgw.gateway import (
    CAP_SECRET,
    SHARED_SECRET,
    GatewayHTTP,
    GatewayProcess,
    Reply,
    bounded,
    gateway_env,
    reactor,
)
from tests.execgw.test_gateway_integration import free_port
from tests.executor.agent import ExecutorProcess, executor_args, executor_env

#: The installed console script beside the interpreter running the tests.
CODEXGW = str(Path(sys.executable).with_name("codexgw"))
#: The names the two executors are bound with.
EXECUTOR_NAMES = ("box-a", "box-b")
#: The loopback token of env-mcp's (simulated) spawn.
LOOPBACK_TOKEN = "real-executor-loopback-token-0123456789"
#: The variables env-mcp reads its two tokens from.
CAP_VARIABLE = "CAP"
LOOP_VARIABLE = "LOOP"
#: Bound of one MCP exchange that is not a tool call (handshake), and of env-mcp's exit.
MCP_WAIT = 15.0
#: Default bound of one tool call.
CALL_WAIT = 60.0


# -------------------------------------------------------------------------------------------------
# Gateway and executors


@dataclass
class Executor:
    """
    One registered, bound executor.
    """

    name: str
    exe_id: str
    process: ExecutorProcess


class ExecutorStack:
    """
    The real exec gateway with two executors bound to one workspace.

    @ivar workspace_id: the workspace both executors are bound to.
    @ivar executors: by name, in binding order.
    """

    def __init__(self, base: Path, gateway_extra: Mapping[str, str], relay: bool) -> None:
        """
        @param base: a directory for the processes' working and state directories.
        @param gateway_extra: variables added to the gateway's environment.
        @param relay: enable the byte relay: the gateway listens on a port chosen beforehand and
            C{CXG_PUBLIC_HTTPS_BASE_URL} points at it.
        """
        self.base = base
        self.workspace_id = f"ws_real_{os.urandom(5).hex()}"
        self.executors: dict[str, Executor] = {}
        extra = dict(gateway_extra)
        args: Sequence[str] = ("--listen", "tcp:0:interface=127.0.0.1")
        if relay:
            port = free_port()
            args = ("--listen", f"tcp:{port}:interface=127.0.0.1")
            extra["CXG_PUBLIC_HTTPS_BASE_URL"] = f"http://127.0.0.1:{port}"
        self.gateway = GatewayProcess(
            gateway_env("sqlite:///var/exec-gateway.sqlite3", extra), base / "gateway", args
        )

    @property
    def exe_ids(self) -> list[str]:
        """
        The executors' exe ids.
        """
        return [executor.exe_id for executor in self.executors.values()]

    @property
    def bridge_url(self) -> str:
        """
        The gateway's bridge base, as env-mcp's C{--exec-gateway-url}.
        """
        return f"ws://127.0.0.1:{self.gateway.port}/bridge"

    async def start(self) -> None:
        """
        Start the gateway, register and bind the executors, start them and wait until they are
        connected.
        """
        _live_stacks.append(self)
        await self.gateway.start()
        api = GatewayHTTP(self.gateway.base_url)
        try:
            for name in EXECUTOR_NAMES:
                exe_id, token = await api.register()
                bound = await api.bind(self.workspace_id, exe_id, name)
                assert bound.status == 201, bound
                cwd = self.base / name
                cwd.mkdir(parents=True, exist_ok=True)
                process = ExecutorProcess(
                    executor_env(token), cwd, executor_args(self.gateway.base_url, exe_id, cwd / "state")
                )
                self.executors[name] = Executor(name, exe_id, process)
                await process.start()
            connected = await api.connected(self.workspace_id)
            assert sorted(connected) == sorted(self.exe_ids), connected
        finally:
            await api.close()

    async def stop(self) -> None:
        """
        Stop the executors, then the gateway (each by pid: SIGTERM, then SIGKILL after a bound).
        """
        for executor in self.executors.values():
            await executor.process.stop()
        await self.gateway.stop()
        with contextlib.suppress(ValueError):
            _live_stacks.remove(self)

    def kill(self) -> None:
        """
        SIGKILL every process still running (last-resort cleanup; does not wait).
        """
        for executor in self.executors.values():
            executor.process.kill()
        self.gateway.kill()


_live_stacks: list[ExecutorStack] = []


def _kill_leftovers() -> None:
    for stack in _live_stacks:
        stack.kill()


atexit.register(_kill_leftovers)


@dataclass
class SharedStack:
    """
    One L{ExecutorStack} for the tests of one class.

    @ivar remaining: test methods of the class not finished yet.
    """

    base: Path
    gateway_extra: Mapping[str, str]
    relay: bool
    remaining: int
    stack: ExecutorStack | None = None
    _registry: ClassVar[dict[type, SharedStack]] = {}

    @classmethod
    def for_class(
        cls, case_class: type, base: Path, gateway_extra: Mapping[str, str], relay: bool
    ) -> SharedStack:
        """
        The shared stack of C{case_class}, made on first use.
        """
        shared = cls._registry.get(case_class)
        if shared is None:
            tests = [
                n for n in dir(case_class) if n.startswith("test") and callable(getattr(case_class, n))
            ]
            shared = cls._registry[case_class] = cls(base, gateway_extra, relay, len(tests))
        return shared

    async def acquire(self) -> ExecutorStack:
        """
        The running stack (started now, or again after a test left a process dead).
        """
        stack = self.stack
        if stack is not None:
            processes = [stack.gateway, *(e.process for e in stack.executors.values())]
            if all(process.running for process in processes) and len(stack.executors) == 2:
                return stack
            await stack.stop()
        self.stack = ExecutorStack(self.base / os.urandom(3).hex(), self.gateway_extra, self.relay)
        try:
            await self.stack.start()
        except BaseException:
            await self.stack.stop()
            self.stack = None
            raise
        return self.stack

    async def release(self) -> None:
        """
        One test is done; after the last one, stop the stack.
        """
        self.remaining -= 1
        if self.remaining > 0 or self.stack is None:
            return
        stack, self.stack = self.stack, None
        await stack.stop()


# -------------------------------------------------------------------------------------------------
# The app gateway's loopback routes


class _TrackedChannel(HTTPChannel):
    """
    An HTTP channel that tells its L{TrackingSite} when its connection is gone.
    """

    site: TrackingSite

    def connectionMade(self) -> None:
        """
        Tell the site, then let HTTPChannel set up.
        """
        self.site.channels.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Forget the channel, then let HTTPChannel clean up.
        """
        super().connectionLost(reason)
        self.site.lost(self)


class TrackingSite(Site):
    """
    A site that knows its open connections, so a test can close them all at its end.
    """

    # An HTTP/1.1 channel without the HTTP/2 negotiating wrapper (plain HTTP on 127.0.0.1 only).
    protocol = _TrackedChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[_TrackedChannel] = set()
        self._idle: list[Deferred[None]] = []

    def lost(self, channel: _TrackedChannel) -> None:
        """
        A channel's connection ended.
        """
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    async def close_connections(self, timeout: float = MCP_WAIT) -> None:
        """
        Abort every open connection and wait until all are gone.
        """
        if not self.channels:
            return
        done: Deferred[None] = Deferred()
        self._idle.append(done)
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]
        await bounded(done, timeout, "stand-in connections closed")


class LoopbackStandIn(Resource):
    """
    The app gateway's C{/internal/*} routes for one env-mcp spawn of C{workspace_id}.

    @ivar answered: C{(method, path, status)} of every request, in order.
    """

    isLeaf = True

    def __init__(self, upstream: GatewayHTTP, workspace_id: str, loopback_token: str) -> None:
        """
        @param upstream: an HTTP client of the real exec gateway.
        """
        super().__init__()
        self.upstream = upstream
        self.workspace_id = workspace_id
        self._token = loopback_token.encode()
        self.answered: list[tuple[str, str, int]] = []

    def render(self, request: Request) -> bytes | int:
        """
        The loopback gate (§3.1, without the peer-address check: this site listens on 127.0.0.1 only),
        then the route.
        """
        method = request.method.decode("ascii")
        path = request.path.decode("ascii", "replace")
        token = request.requestHeaders.getRawHeaders(b"X-Loopback-Token")
        if token is None:
            return self._text(request, method, path, 401, "missing X-Loopback-Token")
        if not hmac.compare_digest(token[0], self._token):
            return self._text(request, method, path, 401, "bad token")
        if (method, path) == ("GET", "/internal/connected"):
            work = self._connected()
        elif (method, path) == ("POST", "/internal/captoken"):
            return self._json(request, method, path, 200, self._captoken())
        elif (method, path) == ("POST", "/internal/relay/create"):
            assert request.content is not None
            work = self._relay_create(request.content.read())
        else:
            return self._text(request, method, path, 404, "not found")

        def answer(result: tuple[int, bytes]) -> None:
            status, body = result
            if not request.finished and not request._disconnected:
                request.write(self._json(request, method, path, status, body))
                request.finish()

        def failed(failure: Failure) -> None:
            if not request.finished and not request._disconnected:
                request.write(self._json(request, method, path, 500, b'{"error":"stand-in failed"}\n'))
                request.finish()

        Deferred.fromCoroutine(work).addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _text(self, request: Request, method: str, path: str, status: int, message: str) -> bytes:
        self.answered.append((method, path, status))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return message.encode() + b"\n"

    def _json(self, request: Request, method: str, path: str, status: int, body: bytes) -> bytes:
        self.answered.append((method, path, status))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return body

    def _captoken(self) -> bytes:
        now = int(time.time())
        token = mint_cap_token(
            Secret(CAP_SECRET.encode()), "trn_real", self.workspace_id, now, now + 3600
        )
        return json.dumps({"token": token, "exp": now + 3600}).encode() + b"\n"

    async def _connected(self) -> tuple[int, bytes]:
        try:
            reply = await self.upstream.request(
                "GET",
                f"/api/exec-gateway/connected?workspace_id={quote(self.workspace_id)}",
                {"Authorization": f"Bearer {SHARED_SECRET}"},
            )
        except Exception:
            return 500, b"list\n"
        if reply.status != 200:
            return 500, b"list\n"
        entries = json.loads(reply.body)
        return 200, json.dumps(
            [] if entries is None else entries, separators=(",", ":")
        ).encode() + b"\n"

    async def _relay_create(self, body: bytes) -> tuple[int, bytes]:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if (
            not isinstance(parsed, dict)
            or not parsed.get("source_exe_id")
            or not parsed.get("dest_exe_id")
        ):
            return 400, b'{"error":"invalid JSON"}\n'
        parsed["workspace_id"] = self.workspace_id
        try:
            reply: Reply = await self.upstream.request(
                "POST",
                "/api/exec-gateway/relay/create",
                {"Authorization": f"Bearer {SHARED_SECRET}", "Content-Type": "application/json"},
                json.dumps(parsed).encode(),
            )
        except Exception as e:
            return 502, json.dumps({"error": f"exec gateway unreachable: {e}"}).encode()
        return reply.status, reply.body


# -------------------------------------------------------------------------------------------------
# env-mcp


@dataclass(frozen=True)
class ToolAnswer:
    """
    The result of one C{tools/call}.
    """

    text: str
    is_error: bool

    @property
    def json(self) -> Any:
        """
        The text parsed as JSON.
        """
        return json.loads(self.text)


class McpError(AssertionError):
    """
    env-mcp answered a request with a JSON-RPC error, or ended while a request waited.
    """


class EnvMcpChild(ProcessProtocol):
    """
    One C{codexgw env-mcp} child: requests out on stdin, responses matched by id from stdout.

    @ivar stderr: everything it logged so far.
    @ivar status: its exit status once ended.
    """

    def __init__(self, forbidden: Sequence[str]) -> None:
        """
        @param forbidden: strings no tool text may contain (the exe ids).
        """
        self.forbidden = list(forbidden)
        self.stderr = bytearray()
        self.status: int | None = None
        self.ended = False
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}
        self._exit_waiters: list[Deferred[int | None]] = []

    # ProcessProtocol

    def outReceived(self, data: bytes) -> None:
        """
        Hand each complete response line to the request waiting for its id.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            message = json.loads(line)
            request_id = message.get("id") if isinstance(message, dict) else None
            waiter = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            if waiter is not None:
                waiter.callback(message)

    def errReceived(self, data: bytes) -> None:
        """
        Keep the log.
        """
        self.stderr.extend(data)

    def processEnded(self, reason: Failure) -> None:
        """
        Record the exit status; fail whatever still waits.
        """
        value: Any = reason.value
        self.ended = True
        self.status = 0 if isinstance(value, ProcessDone) else value.exitCode
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.errback(McpError(f"env-mcp ended with {self.status}:\n{self.log}"))
        waiters, self._exit_waiters = self._exit_waiters, []
        for d in waiters:
            d.callback(self.status)

    # client

    @property
    def log(self) -> str:
        """
        env-mcp's stderr as text.
        """
        return bytes(self.stderr).decode("utf-8", "replace")

    def send(self, message: Mapping[str, Any]) -> None:
        """
        Write one MCP line.
        """
        assert self.transport is not None
        self.transport.write(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: Mapping[str, Any], timeout: float = MCP_WAIT) -> Any:
        """
        One JSON-RPC request; its C{result}.
        """
        self._next_id += 1
        request_id = self._next_id

        def forget(_: Deferred[dict[str, Any]]) -> None:
            self._pending.pop(request_id, None)

        waiter: Deferred[dict[str, Any]] = Deferred(forget)
        self._pending[request_id] = waiter
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)})
        answer = await bounded(waiter, timeout, f"env-mcp {method}")
        if "error" in answer:
            raise McpError(f"{method}: {answer['error']}")
        return answer["result"]

    async def handshake(self) -> None:
        """
        C{initialize} and C{notifications/initialized}.
        """
        result = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "real-executor-tests", "version": "0"},
            },
        )
        assert result["serverInfo"]["name"] == "agentserver", result
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(
        self, name: str, arguments: Mapping[str, Any], timeout: float = CALL_WAIT
    ) -> ToolAnswer:
        """
        C{tools/call} of tool C{name}; its text and C{isError}. No text may contain an exe id.
        """
        result = await self.request("tools/call", {"name": name, "arguments": dict(arguments)}, timeout)
        [content] = result["content"]
        assert content["type"] == "text", result
        answer = ToolAnswer(content["text"], result["isError"])
        for forbidden in self.forbidden:
            assert forbidden not in answer.text, f"{name} answered an exe id: {answer.text[:2000]}"
        return answer

    async def exit_status(self, timeout: float = MCP_WAIT) -> int | None:
        """
        The exit status, within C{timeout} seconds.
        """
        if self.ended:
            return self.status
        d: Deferred[int | None] = Deferred(self._exit_waiters.remove)
        self._exit_waiters.append(d)
        return await bounded(d, timeout, "env-mcp exit")


@dataclass
class EnvMcpSession:
    """
    What one test runs env-mcp with: the stand-in (its site and records) and the child.
    """

    stand_in: LoopbackStandIn
    child: EnvMcpChild
    site: TrackingSite


async def start_env_mcp(
    case: TestCase, stack: ExecutorStack, extra_env: Mapping[str, str] | None = None
) -> EnvMcpSession:
    """
    Serve the loopback routes on 127.0.0.1 and start C{codexgw env-mcp} for C{stack}'s workspace
    (handshake done). Everything is stopped in C{case}'s cleanup: env-mcp by closing its stdin (then
    SIGKILL by pid after a bound), the stand-in's connections and its port.
    """
    upstream = GatewayHTTP(stack.gateway.base_url)
    case.addCleanup(upstream.close)
    stand_in = LoopbackStandIn(upstream, stack.workspace_id, LOOPBACK_TOKEN)
    site = TrackingSite(stand_in)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    case.addCleanup(site.close_connections)

    now = int(time.time())
    cap = mint_cap_token(Secret(CAP_SECRET.encode()), "trn_real", stack.workspace_id, now, now + 3600)
    env = {"PATH": os.environ.get("PATH", ""), CAP_VARIABLE: cap, LOOP_VARIABLE: LOOPBACK_TOKEN}
    env.update(extra_env or {})
    argv = [
        CODEXGW,
        "env-mcp",
        "--workspace-id",
        stack.workspace_id,
        "--exec-gateway-url",
        stack.bridge_url,
        "--app-gateway-internal",
        f"http://127.0.0.1:{port.getHost().port}",
        "--workspace-token-env",
        CAP_VARIABLE,
        "--loopback-token-env",
        LOOP_VARIABLE,
    ]
    child = EnvMcpChild(stack.exe_ids)
    process = reactor.spawnProcess(child, CODEXGW, argv, env=env)
    pid = process.pid

    async def stop() -> None:
        if child.ended:
            return
        with contextlib.suppress(Exception):
            process.closeStdin()
            await child.exit_status()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await child.exit_status()

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    await child.handshake()
    return EnvMcpSession(stand_in, child, site)
