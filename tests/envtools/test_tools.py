"""
Tests for L{codexgw.envtools.tools} and L{codexgw.envtools.toolset}: the core tools over a scripted
exec-server client (C{envtools.md} §7.3–§7.10, acceptance criteria 12–17).

L{ScriptedClient} is an L{IExecServerClient} whose processes follow the §2.4 output semantics on a
fake clock (per-process sequence numbers, C{afterSeq}/C{maxBytes}/C{waitMs}, exit and close events) and
whose sequence numbers a test can choose, so that skipped and discarded output can be scripted
exactly. The environments are resolved by the real L{Resolver} over a fake source; the pool is a
L{FakePool}. Every tool text of this module is checked not to contain an exe id.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import (
    DEFAULT_CALL_TIMEOUT,
    CallError,
    DialError,
    IBridgePool,
    IExecServerClient,
    IResolverSource,
    ToolResult,
)
from codexgw.envtools.readsteps import ReadSteps
from codexgw.envtools.resolver import Resolver
from codexgw.envtools.toolset import ENV_MCP_TOOLS, SDK_TOOLS, Tool, sdk_tool_named, tool_named
from codexgw.testing.fakeexecserver import FakeExecServer, FakeExecServerClient

EXE_DEV = "exe-dev-5f0c2a"
EXE_OPS = "exe-ops-93b1de"
EXE_DOWN = "exe-down-77aa10"
EXE_IDS = (EXE_DEV, EXE_OPS, EXE_DOWN)
DEFAULT_ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin"}


def b64(data: bytes) -> str:
    """
    Standard base64 of C{data} as text.
    """
    return base64.b64encode(data).decode("ascii")


@dataclass
class Event:
    """
    One numbered event of a scripted process: output (C{stream}, C{data}), C{exit} or C{close}.
    """

    seq: int
    kind: str
    stream: str = ""
    data: bytes = b""


@dataclass
class ScriptedProcess:
    """
    A process of L{ScriptedClient} with the §2.4 output semantics.
    """

    clock: Clock
    counter: int = 1
    events: list[Event] = field(default_factory=list)
    exited: bool = False
    exit_code: int | None = None
    closed: bool = False
    failure: str | None = None
    waiters: list[Callable[[], None]] = field(default_factory=list)

    def _number(self, seq: int | None) -> int:
        number = self.counter if seq is None else seq
        self.counter = number + 1
        return number

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter()

    def output(self, stream: str, data: bytes, seq: int | None = None) -> None:
        """
        Emit a chunk, numbered C{seq} or the next number.
        """
        self.events.append(Event(self._number(seq), "output", stream, data))
        self._wake()

    def exit(self, code: int, seq: int | None = None) -> None:
        """
        The child exits with C{code}.
        """
        self.events.append(Event(self._number(seq), "exit"))
        self.exited = True
        self.exit_code = code
        self._wake()

    def close(self, seq: int | None = None) -> None:
        """
        Every output pipe reached end of file.
        """
        self.events.append(Event(self._number(seq), "close"))
        self.closed = True
        self._wake()

    def finish(self, code: int = 0) -> None:
        """
        Exit with C{code}, then close.
        """
        self.exit(code)
        self.close()

    def _result(self, after: int, max_bytes: int) -> dict[str, Any]:
        chunks: list[dict[str, Any]] = []
        size = 0
        for event in self.events:
            if event.kind != "output" or event.seq <= after:
                continue
            if chunks and size + len(event.data) > max_bytes:
                break
            chunks.append({"seq": event.seq, "stream": event.stream, "chunk": b64(event.data)})
            size += len(event.data)
        return {
            "chunks": chunks,
            "nextSeq": chunks[-1]["seq"] + 1 if chunks else self.counter,
            "exited": self.exited,
            "exitCode": self.exit_code,
            "closed": self.closed,
            "failure": self.failure,
            "sandboxDenied": False,
        }

    def read(self, after_seq: int | None, max_bytes: int, wait_ms: int) -> Deferred[Any]:
        """
        C{process/read}: at once when an event above C{afterSeq} exists or the process is closed,
        else after the first such event or C{waitMs} on the clock.
        """
        after = after_seq or 0
        if wait_ms == 0 or self.closed or any(event.seq > after for event in self.events):
            return succeed(self._result(after, max_bytes))
        answer: Deferred[Any] = Deferred()

        def reply() -> None:
            if not answer.called:
                if timer.active():
                    timer.cancel()
                answer.callback(self._result(after, max_bytes))

        timer = self.clock.callLater(wait_ms / 1000.0, reply)
        self.waiters.append(reply)
        return answer


def rpc_error(method: str, code: int, message: str) -> CallError:
    """
    The L{CallError} a bridge client raises for a JSON-RPC error (§4.5).
    """
    return CallError(f"{method}: {message} (code={code})", code)


@dataclass
class Call:
    """
    One recorded call.
    """

    method: str
    params: Any
    timeout: float


@implementer(IExecServerClient)
class ScriptedClient:
    """
    An L{IExecServerClient} in front of scripted processes and an in-memory file tree.

    @ivar programs: C{argv[0]} → a function run on the new L{ScriptedProcess} right after its start.
    @ivar start_errors: C{argv[0]} → the L{CallError} its C{process/start} fails with.
    @ivar files: file URI → bytes; directories are recorded in C{directories}.
    @ivar overrides: method → a function of the params answering instead of the default behaviour.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ended: str | None = None
        self.calls: list[Call] = []
        self.processes: dict[str, ScriptedProcess] = {}
        self.programs: dict[str, Callable[[ScriptedProcess], None]] = {}
        self.start_errors: dict[str, CallError] = {}
        self.files: dict[str, bytes] = {}
        self.directories: set[str] = set()
        self.overrides: dict[str, Callable[[Any], Any]] = {}
        self.write_status = "accepted"
        self.opened = 0
        self.closed_sessions = 0

    def calls_of(self, method: str) -> list[Call]:
        """
        The recorded calls of C{method}.
        """
        return [call for call in self.calls if call.method == method]

    def call(self, method: str, params: Any, timeout: float = DEFAULT_CALL_TIMEOUT) -> Deferred[Any]:
        """
        See L{IExecServerClient.call}.
        """
        self.calls.append(Call(method, params, timeout))
        if self.ended is not None:
            return fail(CallError(self.ended))
        if method in self.overrides:
            try:
                answer = self.overrides[method](params)
            except CallError as error:
                return fail(error)
            return answer if isinstance(answer, Deferred) else succeed(answer)
        try:
            return self._default(method, params)
        except CallError as error:
            return fail(error)

    def _default(self, method: str, params: Any) -> Deferred[Any]:
        if method == "process/start":
            program = params["argv"][0]
            if program in self.start_errors:
                raise self.start_errors[program]
            process = ScriptedProcess(self.clock)
            self.processes[params["processId"]] = process
            self.programs.get(program, lambda p: None)(process)
            return succeed({"processId": params["processId"], "sandboxType": "none"})
        if method == "process/read":
            # Criterion 2: no envtools call of the unit suite may hold the stream longer.
            assert 0 <= params["waitMs"] <= 250, params
            process = self._process(params["processId"])
            return process.read(params["afterSeq"], params["maxBytes"], params["waitMs"])
        if method == "process/write":
            return succeed({"status": self.write_status})
        if method == "process/terminate":
            target = self.processes.get(params["processId"])
            if target is None or target.exited:
                return succeed({"running": False})
            target.finish(137)
            return succeed({"running": True})
        if method == "fs/readFile":
            if params["path"] not in self.files:
                raise rpc_error(method, -32004, "No such file or directory (os error 2)")
            return succeed({"dataBase64": b64(self.files[params["path"]])})
        if method == "fs/createDirectory":
            self.directories.add(params["path"])
            return succeed({})
        if method == "fs/writeFile":
            self.files[params["path"]] = base64.b64decode(params["dataBase64"])
            return succeed({})
        raise rpc_error(method, -32601, f"exec-server stub does not implement `{method}` yet")

    def _process(self, process_id: str) -> ScriptedProcess:
        if process_id not in self.processes:
            raise rpc_error("process/read", -32600, f"unknown process id {process_id}")
        return self.processes[process_id]

    def session_opened(self) -> None:
        """
        See L{IExecServerClient.session_opened}.
        """
        self.opened += 1

    def session_closed(self) -> None:
        """
        See L{IExecServerClient.session_closed}.
        """
        self.closed_sessions += 1

    def close(self) -> None:
        """
        See L{IExecServerClient.close}.
        """
        if self.ended is None:
            self.ended = "bridge: connection closed"

    def reset(self, reason: str) -> None:
        """
        The gateway reset the stream.
        """
        self.ended = f"relay reset: {reason}"


@implementer(IBridgePool)
class FakePool:
    """
    An L{IBridgePool} handing out prepared clients, or failing dials with prepared texts.
    """

    def __init__(self) -> None:
        self.clients: dict[str, IExecServerClient] = {}
        self.dial_errors: dict[str, str] = {}
        self.gets: list[str] = []
        self.closed = False

    def get(self, exe_id: str) -> Deferred[IExecServerClient]:
        """
        See L{IBridgePool.get}.
        """
        self.gets.append(exe_id)
        if exe_id in self.dial_errors:
            return fail(DialError(self.dial_errors[exe_id]))
        return succeed(self.clients[exe_id])

    def close(self) -> None:
        """
        See L{IBridgePool.close}.
        """
        self.closed = True


@implementer(IResolverSource)
class FakeSource:
    """
    An L{IResolverSource} answering a prepared list, or failing with C{error}.
    """

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.error: Exception | None = None
        self.lists = 0

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """
        See L{IResolverSource.list}.
        """
        self.lists += 1
        if self.error is not None:
            return fail(self.error)
        return succeed(list(self.entries))


def standard_entries() -> list[dict[str, Any]]:
    """
    Three connected executors: C{dev} (default, described), C{ops} and C{down} (whose dial fails).
    """
    return [
        {
            "exe_id": EXE_DEV,
            "name": "dev",
            "description": "laptop",
            "is_default": True,
            "last_seen_at": "2026-05-19T00:00:00Z",
        },
        {"exe_id": EXE_OPS, "name": "ops", "description": "", "is_default": False},
        {"exe_id": EXE_DOWN, "name": "down", "description": "", "is_default": False},
    ]


class ToolTestCase(SynchronousTestCase):
    """
    A context over scripted clients for C{dev} and C{ops}; C{down} refuses the dial.
    """

    def setUp(self) -> None:
        """
        Build the clock, clients, pool, resolver and context.
        """
        self.clock = Clock()
        self.clock.advance(1_000)
        self.dev = ScriptedClient(self.clock)
        self.ops = ScriptedClient(self.clock)
        self.pool = FakePool()
        self.pool.clients = {EXE_DEV: self.dev, EXE_OPS: self.ops}
        self.pool.dial_errors = {EXE_DOWN: "bridge dial: HTTP 503: executor not connected"}
        self.source = FakeSource(standard_entries())
        self.ctx = EnvContext(self.pool, Resolver(self.source, self.clock), self.clock)

    def start(self, name: str, arguments: Mapping[str, Any]) -> Deferred[ToolResult]:
        """
        Start env-mcp's (or the SDK's, for C{write_file}) tool C{name}; the result is not awaited.
        """
        tool = tool_named(name) or sdk_tool_named(name)
        assert tool is not None
        return tool.run(self.ctx, arguments)

    def finished(self, running: Deferred[ToolResult]) -> ToolResult:
        """
        The result of a started tool, checked to name no exe id.
        """
        result = self.successResultOf(running)
        for exe_id in EXE_IDS:
            self.assertNotIn(exe_id, result.text)
        return result

    def run_tool(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """
        Run tool C{name} to completion without advancing the clock.
        """
        return self.finished(self.start(name, arguments))

    def assert_error(self, result: ToolResult, text: str) -> None:
        """
        Assert an isError result with exactly C{text}.
        """
        self.assertEqual((result.text, result.is_error), (text, True))

    def advance_until(self, running: Deferred[ToolResult], step: float = 0.25) -> ToolResult:
        """
        Advance the clock by C{step} until the tool has finished (at most 3000 steps).
        """
        for _ in range(3000):
            if running.called:
                break
            self.clock.advance(step)
        return self.finished(running)


class ToolsetTests(SynchronousTestCase):
    """
    The registries of §1.2.
    """

    def test_env_mcp_order(self) -> None:
        """
        env-mcp serves exactly the nine tools in the §1.2 order.
        """
        self.assertEqual(
            [tool.name for tool in ENV_MCP_TOOLS],
            [
                "list_environments",
                "shell",
                "exec_command",
                "write_stdin",
                "read_output",
                "terminate",
                "read_file",
                "apply_patch",
                "copy_path",
            ],
        )

    def test_sdk_tools(self) -> None:
        """
        The SDK has six tools in its order with its short descriptions.
        """
        self.assertEqual(
            [tool.name for tool in SDK_TOOLS],
            ["shell", "read_file", "write_file", "apply_patch", "copy_path", "exec_command"],
        )
        self.assertEqual(SDK_TOOLS[0].description, "Run a command synchronously.")

    def test_lookup(self) -> None:
        """
        L{tool_named} knows only env-mcp's tools; L{sdk_tool_named} only the SDK's.
        """
        self.assertIsNone(tool_named("write_file"))
        self.assertIsNone(sdk_tool_named("terminate"))
        shell = tool_named("shell")
        assert shell is not None
        self.assertIsInstance(shell, Tool)
        self.assertEqual(shell.listing()["inputSchema"]["required"], ["environment_id", "command"])
        self.assertEqual(list(shell.listing()), ["name", "description", "inputSchema"])

    def test_fakes_provide_interfaces(self) -> None:
        """
        The test doubles implement the interfaces they stand in for.
        """
        clock = Clock()
        self.assertTrue(verifyObject(IExecServerClient, ScriptedClient(clock)))
        self.assertTrue(verifyObject(IBridgePool, FakePool()))
        self.assertTrue(verifyObject(IResolverSource, FakeSource([])))


class EnvironmentTests(ToolTestCase):
    """
    Criterion 12: argument and environment errors.
    """

    def test_timeout_as_string(self) -> None:
        """
        C{timeout_ms:"5"} → the type text, and no exec-server call.
        """
        result = self.run_tool(
            "shell", {"environment_id": "dev", "command": ["true"], "timeout_ms": "5"}
        )
        self.assert_error(result, "invalid arguments: timeout_ms must be integer")
        self.assertEqual(self.dev.calls, [])

    def test_empty_environment(self) -> None:
        """
        An empty C{environment_id} → its exact text, for every tool that takes one.
        """
        for tool in ENV_MCP_TOOLS[1:-1]:
            result = self.run_tool(tool.name, {"environment_id": ""})
            self.assert_error(
                result,
                "environment_id is required; call list_environments to see available names",
            )
        self.assertEqual(self.source.lists, 0)

    def test_unknown_name(self) -> None:
        """
        An unknown name → the resolver's text.
        """
        result = self.run_tool("read_file", {"environment_id": "nope", "path": "/a"})
        self.assert_error(
            result,
            'no environment named "nope" (run list_environments to see what\'s available)',
        )

    def test_refused_dial(self) -> None:
        """
        A refused dial → C{environment "<name>" unavailable: <error>}.
        """
        result = self.run_tool("shell", {"environment_id": "down", "command": ["true"]})
        self.assert_error(
            result, 'environment "down" unavailable: bridge dial: HTTP 503: executor not connected'
        )
        self.assertEqual(self.pool.gets, [EXE_DOWN])

    def test_refresh_failure(self) -> None:
        """
        A failing source with nothing cached → C{refresh: <error>}.
        """
        self.source.error = RuntimeError("HTTP 502: bad gateway")
        result = self.run_tool("read_file", {"environment_id": "dev", "path": "/a"})
        self.assert_error(result, "refresh: HTTP 502: bad gateway")

    def test_session_tools_argument_errors(self) -> None:
        """
        C{terminate} and C{read_output} need C{session_id}, a string.
        """
        for tool in ("terminate", "read_output"):
            self.assert_error(
                self.run_tool(tool, {"environment_id": "dev"}),
                "invalid arguments: session_id is required",
            )
            self.assert_error(
                self.run_tool(tool, {"environment_id": "dev", "session_id": 5}),
                "invalid arguments: session_id must be string",
            )

    def test_list_environments_ignores_arguments(self) -> None:
        """
        C{list_environments} accepts any arguments object.
        """
        self.assertFalse(self.run_tool("list_environments", {"x": [1]}).is_error)

    def test_unknown_session_tools_do_not_dial(self) -> None:
        """
        The session tools resolve the name but do not ask the pool for a client.
        """
        result = self.run_tool("terminate", {"environment_id": "down", "session_id": "x"})
        self.assert_error(result, "no such session for that environment_id")
        self.assertEqual(self.pool.gets, [])


class ListEnvironmentsTests(ToolTestCase):
    """
    Criterion 13: C{list_environments}.
    """

    def test_entries(self) -> None:
        """
        A compact array: C{description} omitted when empty, C{is_default} only when true,
        C{last_seen} from C{last_seen_at}; entries without a name skipped.
        """
        self.source.entries.append({"exe_id": "exe-x", "name": "", "description": "x"})
        self.source.entries.append(
            {"exe_id": "exe-é", "name": "büro", "description": "café", "is_default": False}
        )
        result = self.run_tool("list_environments", {})
        self.assertFalse(result.is_error)
        self.assertEqual(
            result.text,
            '[{"name":"dev","description":"laptop","is_default":true,'
            '"last_seen":"2026-05-19T00:00:00Z"},{"name":"ops"},{"name":"down"},'
            '{"name":"büro","description":"café"}]',
        )

    def test_none(self) -> None:
        """
        No executors → C{[]}.
        """
        self.source.entries = []
        self.assertEqual(self.run_tool("list_environments", {}), ToolResult("[]"))

    def test_failure(self) -> None:
        """
        A failing source → C{list_environments: <error>}.
        """
        self.source.error = RuntimeError("HTTP 500: boom")
        self.assert_error(self.run_tool("list_environments", {}), "list_environments: HTTP 500: boom")

    def test_always_lists(self) -> None:
        """
        Every call refreshes, even while the cache is fresh.
        """
        self.run_tool("list_environments", {})
        self.run_tool("list_environments", {})
        self.assertEqual(self.source.lists, 2)


def echo_hi(process: ScriptedProcess) -> None:
    """
    C{echo hi}: C{hi\\n} on stdout, exit 0.
    """
    process.output("stdout", b"hi\n")
    process.finish(0)


class ShellTests(ToolTestCase):
    """
    Criterion 14: C{shell}'s calls and text.
    """

    def test_echo(self) -> None:
        """
        C{["echo","hi"]} → C{hi\\n\\n[exit_code=0]}, with the exact start params and read params.
        """
        self.dev.programs["echo"] = echo_hi
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["echo", "hi"]})
        self.assertEqual(result, ToolResult("hi\n\n[exit_code=0]"))
        start = self.dev.calls[0]
        self.assertEqual(start.method, "process/start")
        self.assertEqual(
            json.dumps(start.params),
            json.dumps(
                {
                    "processId": "shell-1",
                    "argv": ["echo", "hi"],
                    "cwd": "file:///tmp",
                    "env": DEFAULT_ENV,
                    "tty": False,
                    "pipeStdin": False,
                    "arg0": None,
                }
            ),
        )
        read = self.dev.calls_of("process/read")[0]
        self.assertEqual(list(read.params), ["processId", "afterSeq", "maxBytes", "waitMs"])
        self.assertEqual(read.params["afterSeq"], None)
        self.assertEqual(read.params["maxBytes"], 1048576)
        self.assertEqual(read.params["processId"], "shell-1")

    def test_process_ids_count(self) -> None:
        """
        Each C{shell} takes the next C{shell-<n>}.
        """
        self.dev.programs["echo"] = echo_hi
        for _ in range(2):
            self.run_tool("shell", {"environment_id": "dev", "command": ["echo", "hi"]})
        self.assertEqual(
            [c.params["processId"] for c in self.dev.calls_of("process/start")],
            ["shell-1", "shell-2"],
        )

    def test_cwd_converted(self) -> None:
        """
        C{cwd} is converted to a URI; a relative one is refused without any call.
        """
        self.dev.programs["echo"] = echo_hi
        self.run_tool("shell", {"environment_id": "dev", "command": ["echo"], "cwd": "/h/a b"})
        self.assertEqual(self.dev.calls[0].params["cwd"], "file:///h/a%20b")
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["x"], "cwd": "h"})
        self.assert_error(result, 'path must be absolute: "h"')
        self.assertEqual(len(self.dev.calls_of("process/start")), 1)

    def test_polling_rule(self) -> None:
        """
        Chunks 1, 2, 3 over three reads are each received once; reads send C{afterSeq} null, then
        C{nextSeq − 1}, and never C{waitMs} above 250.
        """
        self.dev.programs["slow"] = lambda p: p.output("stdout", b"a")
        running = self.start("shell", {"environment_id": "dev", "command": ["slow"]})
        process = self.dev.processes["shell-1"]
        self.clock.advance(0.1)
        process.output("stdout", b"b")
        self.clock.advance(0.1)
        process.output("stdout", b"c")
        self.clock.advance(0.1)
        process.finish(0)
        result = self.finished(running)
        self.assertEqual(result, ToolResult("abc\n[exit_code=0]"))
        reads = self.dev.calls_of("process/read")
        # The last step, past the exit, proves that no chunk numbered after the exit is coming.
        self.assertEqual([r.params["afterSeq"] for r in reads], [None, 1, 2, 3, 4])
        self.assertTrue(all(0 <= r.params["waitMs"] <= 250 for r in reads))

    def test_stderr_alone(self) -> None:
        """
        stderr alone has no separator.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stderr", b"oops\n")
            p.finish(1)

        self.dev.programs["bad"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["bad"]})
        self.assert_error(result, "oops\n\n[exit_code=1]")

    def test_stdout_and_stderr(self) -> None:
        """
        stdout and stderr are separated by C{\\n--- stderr ---\\n}; C{pty} counts as stdout.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"a\n")
            p.output("stderr", b"b\n")
            p.output("pty", b"c\r\n")
            p.finish(0)

        self.dev.programs["both"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["both"]})
        self.assertEqual(result, ToolResult("a\nc\r\n\n--- stderr ---\nb\n\n[exit_code=0]"))

    def test_exit_code(self) -> None:
        """
        Exit 3 → isError ending C{[exit_code=3]}.
        """
        self.dev.programs["three"] = lambda p: p.finish(3)
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["three"]})
        self.assert_error(result, "\n[exit_code=3]")

    def test_failure(self) -> None:
        """
        C{failure} C{x} → C{\\n[exec failure: x]} before the exit line, isError even with exit 0.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"out")
            p.failure = "x"
            p.finish(0)

        self.dev.programs["f"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["f"]})
        self.assert_error(result, "out\n[exec failure: x]\n[exit_code=0]")

    def test_start_error(self) -> None:
        """
        A start error → C{[exec failed to start: …]} and no read.
        """
        self.dev.start_errors["nope"] = rpc_error(
            "process/start", -32603, "No such file or directory (os error 2)"
        )
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["nope"]})
        self.assert_error(
            result,
            "[exec failed to start: process/start: No such file or directory (os error 2) "
            "(code=-32603)]",
        )
        self.assertEqual(self.dev.calls_of("process/read"), [])

    def test_invalid_utf8(self) -> None:
        """
        Invalid UTF-8 is replaced by U+FFFD.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"a\xffb")
            p.finish(0)

        self.dev.programs["bin"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["bin"]})
        self.assertEqual(result.text, "a\ufffdb\n[exit_code=0]")

    def test_command_errors(self) -> None:
        """
        A bad C{command} → C{command must be a non-empty array}.
        """
        for command in ([], "ls", [1], None):
            result = self.run_tool("shell", {"environment_id": "dev", "command": command})
            self.assert_error(result, "command must be a non-empty array")
        self.assertEqual(self.dev.calls, [])

    def test_argument_errors(self) -> None:
        """
        Wrong types of C{cwd} and C{timeout_ms}.
        """
        base = {"environment_id": "dev", "command": ["x"]}
        self.assert_error(
            self.run_tool("shell", {**base, "cwd": 5}), "invalid arguments: cwd must be string"
        )
        self.assert_error(
            self.run_tool("shell", {**base, "timeout_ms": 1.5}),
            "invalid arguments: timeout_ms must be integer",
        )


class ShellLimitTests(ToolTestCase):
    """
    Criterion 15: C{shell}'s deadline, truncation and incomplete-output marker.
    """

    def test_timeout(self) -> None:
        """
        C{timeout_ms} 250 on a silent process → one step of 250 ms, a C{process/terminate}, the
        timeout line, isError.
        """
        running = self.start("shell", {"environment_id": "dev", "command": ["sleep"], "timeout_ms": 250})
        self.assertNoResult(running)
        self.clock.advance(0.25)
        result = self.finished(running)
        self.assert_error(result, "\n[exec timed out without exit signal]")
        terminate = self.dev.calls_of("process/terminate")
        self.assertEqual([(c.params, c.timeout) for c in terminate], [({"processId": "shell-1"}, 10.0)])
        self.assertEqual([r.params["waitMs"] for r in self.dev.calls_of("process/read")], [250])

    def test_timeout_clamped_low(self) -> None:
        """
        C{timeout_ms} 1 counts as 250.
        """
        running = self.start("shell", {"environment_id": "dev", "command": ["s"], "timeout_ms": 1})
        self.clock.advance(0.249)
        self.assertNoResult(running)
        self.clock.advance(0.001)
        self.assertTrue(self.finished(running).is_error)

    def test_default_timeout(self) -> None:
        """
        C{timeout_ms} 0 (or absent) means 60 s, read in steps of 250 ms.
        """
        running = self.start("shell", {"environment_id": "dev", "command": ["s"], "timeout_ms": 0})
        self.clock.pump([0.25] * 239)
        self.assertNoResult(running)
        self.clock.advance(0.25)
        result = self.finished(running)
        self.assertTrue(result.text.endswith("[exec timed out without exit signal]"))
        reads = self.dev.calls_of("process/read")
        self.assertEqual(len(reads), 240)
        self.assertTrue(all(r.params["waitMs"] == 250 for r in reads))

    def test_timeout_clamped_high(self) -> None:
        """
        C{timeout_ms} above 600000 counts as 600000.
        """
        running = self.start("shell", {"environment_id": "dev", "command": ["s"], "timeout_ms": 10**9})
        self.clock.pump([0.25] * 2399)
        self.assertNoResult(running)
        self.clock.advance(0.25)
        self.assertTrue(self.finished(running).is_error)

    def test_partial_output_on_timeout(self) -> None:
        """
        Output read before the deadline is kept in front of the timeout line.
        """
        self.dev.programs["s"] = lambda p: p.output("stdout", b"partial\n")
        running = self.start("shell", {"environment_id": "dev", "command": ["s"], "timeout_ms": 500})
        result = self.advance_until(running)
        self.assert_error(result, "partial\n\n[exec timed out without exit signal]")

    def test_exited_output_open(self) -> None:
        """
        A process that exited while a grandchild keeps its output open returns after the first
        read that brings nothing new (one wait of at most 250 ms), not at the deadline.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"top\n")
            p.exit(0)

        self.dev.programs["bg"] = program
        running = self.start("shell", {"environment_id": "dev", "command": ["bg"]})
        self.clock.advance(0.25)
        result = self.finished(running)
        self.assertEqual(result, ToolResult("top\n\n[exit_code=0]"))
        self.assertEqual(self.dev.calls_of("process/terminate"), [])

    def test_truncation(self) -> None:
        """
        1.5 MiB of stdout → the first 1 MiB and C{\\n[… 524288 bytes truncated]}.
        """
        half = 512 * 1024

        def program(p: ScriptedProcess) -> None:
            for letter in b"xyz":
                p.output("stdout", bytes([letter]) * half)
            p.output("stderr", b"e" * (1024 * 1024 + 5))
            p.finish(0)

        self.dev.programs["big"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["big"]})
        stdout, stderr = result.text.split("\n--- stderr ---\n")
        self.assertEqual(stdout, "x" * half + "y" * half + "\n[… 524288 bytes truncated]")
        self.assertEqual(stderr, "e" * 1024 * 1024 + "\n[… 5 bytes truncated]\n[exit_code=0]")

    def test_closed_with_chunks_left(self) -> None:
        """
        A step cut short by C{maxBytes} reports C{closed} while chunks are still retained; the reads
        go on until a step returns none, so stderr after 1 MiB of stdout is not lost.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"o" * 1024 * 1024)
            p.output("stderr", b"err\n")
            p.finish(2)

        self.dev.programs["loud"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["loud"]})
        self.assert_error(result, "o" * 1024 * 1024 + "\n--- stderr ---\nerr\n\n[exit_code=2]")
        reads = self.dev.calls_of("process/read")
        self.assertEqual([r.params["afterSeq"] for r in reads], [None, 1, 2])

    def test_discarded_before_exit(self) -> None:
        """
        Chunk seqs 1, 5 before the exit → the incomplete-output marker.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"a")
            p.output("stdout", b"e", seq=5)

        self.dev.programs["lossy"] = program
        running = self.start("shell", {"environment_id": "dev", "command": ["lossy"]})
        self.clock.advance(0.1)
        self.dev.processes["shell-1"].finish(0)
        result = self.finished(running)
        self.assertEqual(
            result,
            ToolResult(
                "ae\n[exec output incomplete: the environment discarded unread output]\n[exit_code=0]"
            ),
        )

    def test_exit_event_skipped(self) -> None:
        """
        Chunk seqs 1, 3 after an exit (the exit event is number 2) → no marker.
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"top\n")
            p.exit(0)
            p.output("stdout", b"late\n")
            p.close()

        self.dev.programs["late"] = program
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["late"]})
        self.assertEqual(result, ToolResult("top\nlate\n\n[exit_code=0]"))

    def test_discarded_then_exit_unskipped(self) -> None:
        """
        A gap while the process still ran is discarded output, even when the exit event itself is
        never skipped (it is passed by an empty read).
        """

        def program(p: ScriptedProcess) -> None:
            p.output("stdout", b"a")
            p.output("stdout", b"c", seq=3)

        self.dev.programs["gap"] = program
        running = self.start("shell", {"environment_id": "dev", "command": ["gap"]})
        self.clock.advance(0.1)
        self.dev.processes["shell-1"].exit(0)
        self.clock.advance(0.25)
        result = self.finished(running)
        self.assertIn("[exec output incomplete", result.text)

    def test_failing_read(self) -> None:
        """
        A failing step → the partial output and C{[exec read failed: …]}, isError, no terminate.
        """
        self.dev.programs["s"] = lambda p: p.output("stdout", b"part\n")
        running = self.start("shell", {"environment_id": "dev", "command": ["s"]})
        self.dev.reset("idle")
        self.clock.advance(0.25)
        result = self.finished(running)
        self.assert_error(result, "part\n\n[exec read failed: relay reset: idle]")

    def test_failing_read_keeps_stderr(self) -> None:
        """
        The output so far includes stderr with its separator; no exit line follows the failure.
        """
        reads = iter(
            [
                {
                    "chunks": [
                        {"seq": 1, "stream": "stdout", "chunk": b64(b"o")},
                        {"seq": 2, "stream": "stderr", "chunk": b64(b"e")},
                    ],
                    "nextSeq": 3,
                    "exited": False,
                    "exitCode": None,
                    "closed": False,
                    "failure": None,
                    "sandboxDenied": False,
                }
            ]
        )

        def read(params: Any) -> Any:
            try:
                return next(reads)
            except StopIteration:
                raise rpc_error("process/read", -32600, "unknown process id shell-1") from None

        self.dev.overrides["process/read"] = read
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["s"]})
        self.assert_error(
            result,
            "o\n--- stderr ---\ne\n[exec read failed: process/read: unknown process id shell-1 "
            "(code=-32600)]",
        )

    def test_malformed_read(self) -> None:
        """
        A C{process/read} result of the wrong shape fails the step with a malformed-result text.
        """
        self.dev.overrides["process/read"] = lambda params: {"chunks": "no", "nextSeq": 1}
        result = self.run_tool("shell", {"environment_id": "dev", "command": ["s"]})
        self.assert_error(
            result, "\n[exec read failed: process/read: malformed result: chunks must be a list]"
        )

    def test_cancel_terminates(self) -> None:
        """
        Cancelling a running C{shell} sends a best-effort terminate.
        """
        running = self.start("shell", {"environment_id": "dev", "command": ["s"]})
        running.cancel()
        self.failureResultOf(running)
        self.assertEqual(
            [c.params for c in self.dev.calls_of("process/terminate")], [{"processId": "shell-1"}]
        )


def session_id_of(result: ToolResult) -> str:
    """
    The session id of an C{exec_command} result.
    """
    value: str = json.loads(result.text)["session_id"]
    return value


class ExecSessionTests(ToolTestCase):
    """
    Criterion 16: C{exec_command}, C{write_stdin}, C{read_output}, C{terminate}.
    """

    def open_session(self, name: str = "dev", **extra: Any) -> str:
        """
        Run C{exec_command} C{["cat"]} on C{name} and return the session id.
        """
        result = self.run_tool("exec_command", {"environment_id": name, "command": ["cat"], **extra})
        self.assertFalse(result.is_error, result.text)
        return session_id_of(result)

    def test_exec_command(self) -> None:
        """
        C{exec_command} → C{{"session_id":"<uuid4>"}}, C{uexec-1}, the given C{tty}/C{pipeStdin}.
        """
        result = self.run_tool(
            "exec_command",
            {"environment_id": "dev", "command": ["cat"], "tty": True, "pipe_stdin": True},
        )
        session_id = session_id_of(result)
        self.assertEqual(result.text, f'{{"session_id":"{session_id}"}}')
        self.assertEqual(uuid.UUID(session_id).version, 4)
        self.assertEqual(
            self.dev.calls[0].params,
            {
                "processId": "uexec-1",
                "argv": ["cat"],
                "cwd": "file:///tmp",
                "env": DEFAULT_ENV,
                "tty": True,
                "pipeStdin": True,
                "arg0": None,
            },
        )
        self.assertEqual(self.dev.opened, 1)
        self.open_session()
        self.assertEqual(self.dev.calls[-1].params["processId"], "uexec-2")
        self.assertEqual(self.dev.calls[-1].params["tty"], False)
        self.assertEqual(self.dev.calls[-1].params["pipeStdin"], False)

    def test_exec_command_start_error(self) -> None:
        """
        A start error → C{[exec failed to start: …]} and no session.
        """
        self.dev.start_errors["cat"] = rpc_error("process/start", -32603, "Permission denied")
        result = self.run_tool("exec_command", {"environment_id": "dev", "command": ["cat"]})
        self.assert_error(
            result, "[exec failed to start: process/start: Permission denied (code=-32603)]"
        )
        self.assertEqual(len(self.ctx.sessions), 0)
        self.assertEqual(self.dev.opened, 0)

    def test_exec_command_argument_errors(self) -> None:
        """
        C{exec_command}'s argument errors.
        """
        base = {"environment_id": "dev", "command": ["cat"]}
        self.assert_error(
            self.run_tool("exec_command", {**base, "tty": 1}), "invalid arguments: tty must be boolean"
        )
        self.assert_error(
            self.run_tool("exec_command", {"environment_id": "dev"}),
            "command must be a non-empty array",
        )
        self.assert_error(
            self.run_tool("exec_command", {**base, "cwd": "x"}), 'path must be absolute: "x"'
        )

    def test_write_stdin(self) -> None:
        """
        C{write_stdin} sends the base64 of the UTF-8 text with a new UUIDv4 C{writeId} each call and
        answers C{ok}.
        """
        session_id = self.open_session(pipe_stdin=True)
        arguments = {"environment_id": "dev", "session_id": session_id, "chars": "héllo\n"}
        self.assertEqual(self.run_tool("write_stdin", arguments), ToolResult("ok"))
        self.assertEqual(self.run_tool("write_stdin", arguments), ToolResult("ok"))
        writes = self.dev.calls_of("process/write")
        self.assertEqual(list(writes[0].params), ["processId", "chunk", "writeId"])
        self.assertEqual(writes[0].params["processId"], "uexec-1")
        self.assertEqual(writes[0].params["chunk"], b64("héllo\n".encode()))
        ids = [w.params["writeId"] for w in writes]
        self.assertNotEqual(ids[0], ids[1])
        self.assertTrue(all(uuid.UUID(i).version == 4 for i in ids))

    def test_write_stdin_empty(self) -> None:
        """
        Empty C{chars} is written as an empty chunk.
        """
        session_id = self.open_session()
        self.run_tool("write_stdin", {"environment_id": "dev", "session_id": session_id, "chars": ""})
        self.assertEqual(self.dev.calls_of("process/write")[0].params["chunk"], "")

    def test_write_stdin_closed(self) -> None:
        """
        C{stdinClosed} → its exact text.
        """
        session_id = self.open_session()
        self.dev.write_status = "stdinClosed"
        result = self.run_tool(
            "write_stdin", {"environment_id": "dev", "session_id": session_id, "chars": "x"}
        )
        self.assert_error(result, "stdin is closed; start the process with pipe_stdin or tty")

    def test_write_stdin_unknown_process(self) -> None:
        """
        C{unknownProcess} → the session is forgotten and reported lost.
        """
        session_id = self.open_session()
        self.dev.write_status = "unknownProcess"
        arguments = {"environment_id": "dev", "session_id": session_id, "chars": "x"}
        self.assert_error(
            self.run_tool("write_stdin", arguments),
            'session lost: the connection to environment "dev" was reset',
        )
        self.assert_error(
            self.run_tool("write_stdin", arguments), "no such session for that environment_id"
        )
        self.assertEqual(self.dev.closed_sessions, 1)

    def test_write_stdin_call_error(self) -> None:
        """
        A call error → C{write_stdin failed: <error>}; an unexpected status has its own text.
        """
        session_id = self.open_session()
        arguments = {"environment_id": "dev", "session_id": session_id, "chars": "x"}

        def broken(params: Any) -> Any:
            raise rpc_error("process/write", -32603, "failed to write to process stdin")

        self.dev.overrides["process/write"] = broken
        self.assert_error(
            self.run_tool("write_stdin", arguments),
            "write_stdin failed: process/write: failed to write to process stdin (code=-32603)",
        )
        self.dev.overrides["process/write"] = lambda params: {"status": "weird"}
        self.assert_error(
            self.run_tool("write_stdin", arguments),
            'write_stdin failed: process/write: unexpected status "weird"',
        )

    def test_write_stdin_argument_errors(self) -> None:
        """
        C{chars} is required and must be a string.
        """
        self.assert_error(
            self.run_tool("write_stdin", {"environment_id": "dev", "session_id": "s"}),
            "invalid arguments: chars is required",
        )
        self.assert_error(
            self.run_tool("write_stdin", {"environment_id": "dev", "session_id": "s", "chars": 1}),
            "invalid arguments: chars must be string",
        )
        self.assert_error(
            self.run_tool("write_stdin", {"environment_id": "dev", "chars": "x"}),
            "invalid arguments: session_id is required",
        )

    def test_read_output(self) -> None:
        """
        C{after_seq} 2 sends C{afterSeq} 1; the JSON keys come in order, stderr apart.
        """
        session_id = self.open_session()
        process = self.dev.processes["uexec-1"]
        process.output("stdout", b"one\n")
        process.output("stdout", b"two\n")
        process.output("stderr", b"err\n")
        result = self.run_tool(
            "read_output", {"environment_id": "dev", "session_id": session_id, "after_seq": 2}
        )
        read = self.dev.calls_of("process/read")[0]
        self.assertEqual(
            read.params, {"processId": "uexec-1", "afterSeq": 1, "maxBytes": 65536, "waitMs": 250}
        )
        self.assertEqual(
            result.text,
            '{"stdout":"two\\n","stderr":"err\\n","next_seq":4,"exited":false,"exit_code":null,'
            '"closed":false,"failure":null}',
        )
        self.assertFalse(result.is_error)

    def test_read_output_from_start(self) -> None:
        """
        Without C{after_seq} (or with 0) C{afterSeq} is null; C{next_seq} can be passed back.
        """
        session_id = self.open_session()
        process = self.dev.processes["uexec-1"]
        process.output("stdout", b"a")
        first = json.loads(
            self.run_tool(
                "read_output", {"environment_id": "dev", "session_id": session_id, "after_seq": 0}
            ).text
        )
        self.assertEqual((first["stdout"], first["next_seq"]), ("a", 2))
        process.output("stdout", b"b")
        process.finish(5)
        second = json.loads(
            self.run_tool(
                "read_output",
                {"environment_id": "dev", "session_id": session_id, "after_seq": first["next_seq"]},
            ).text
        )
        self.assertEqual(
            second,
            {
                "stdout": "b",
                "stderr": "",
                "next_seq": 3,
                "exited": True,
                "exit_code": 5,
                "closed": True,
                "failure": None,
            },
        )
        self.assertEqual([r.params["afterSeq"] for r in self.dev.calls_of("process/read")], [None, 1])

    def test_read_output_yield(self) -> None:
        """
        C{yield_time_ms} 1000 on a silent process → four steps of 250 ms with the same C{afterSeq}.
        """
        session_id = self.open_session()
        running = self.start(
            "read_output",
            {"environment_id": "dev", "session_id": session_id, "yield_time_ms": 1000},
        )
        result = self.advance_until(running, 0.25)
        reads = self.dev.calls_of("process/read")
        self.assertEqual([r.params["waitMs"] for r in reads], [250, 250, 250, 250])
        self.assertEqual({r.params["afterSeq"] for r in reads}, {None})
        self.assertEqual(json.loads(result.text)["next_seq"], 1)

    def test_read_output_default_wait(self) -> None:
        """
        Without C{yield_time_ms} the wait is 1 s; output arriving meanwhile ends it early.
        """
        session_id = self.open_session()
        running = self.start("read_output", {"environment_id": "dev", "session_id": session_id})
        self.clock.advance(0.3)
        self.dev.processes["uexec-1"].output("stdout", b"x")
        result = self.finished(running)
        self.assertEqual(json.loads(result.text)["stdout"], "x")
        self.assertEqual(len(self.dev.calls_of("process/read")), 2)

    def test_read_output_no_wait(self) -> None:
        """
        C{yield_time_ms} 0 (or negative) → one step with C{waitMs} 0.
        """
        session_id = self.open_session()
        for value in (0, -5):
            self.run_tool(
                "read_output",
                {"environment_id": "dev", "session_id": session_id, "yield_time_ms": value},
            )
        self.assertEqual([r.params["waitMs"] for r in self.dev.calls_of("process/read")], [0, 0])

    def test_read_output_wait_clamped(self) -> None:
        """
        C{yield_time_ms} above 30000 waits 30 s.
        """
        session_id = self.open_session()
        running = self.start(
            "read_output",
            {"environment_id": "dev", "session_id": session_id, "yield_time_ms": 99_999},
        )
        self.clock.pump([0.25] * 119)
        self.assertNoResult(running)
        self.clock.advance(0.25)
        self.finished(running)
        self.assertEqual(len(self.dev.calls_of("process/read")), 120)

    def test_read_output_call_error(self) -> None:
        """
        A call error → C{read_output failed: <error>}.
        """
        session_id = self.open_session()

        def broken(params: Any) -> Any:
            raise CallError("process/read: timed out")

        self.dev.overrides["process/read"] = broken
        result = self.run_tool("read_output", {"environment_id": "dev", "session_id": session_id})
        self.assert_error(result, "read_output failed: process/read: timed out")

    def test_read_output_argument_errors(self) -> None:
        """
        C{after_seq} and C{yield_time_ms} must be integers.
        """
        for name in ("after_seq", "yield_time_ms"):
            self.assert_error(
                self.run_tool("read_output", {"environment_id": "dev", "session_id": "s", name: "1"}),
                f"invalid arguments: {name} must be integer",
            )

    def test_terminate(self) -> None:
        """
        C{terminate} → C{terminated}, a C{process/terminate} (10 s) and the session forgotten.
        """
        session_id = self.open_session()
        arguments = {"environment_id": "dev", "session_id": session_id}
        self.assertEqual(self.run_tool("terminate", arguments), ToolResult("terminated"))
        calls = self.dev.calls_of("process/terminate")
        self.assertEqual([(c.params, c.timeout) for c in calls], [({"processId": "uexec-1"}, 10.0)])
        self.assertEqual(self.dev.closed_sessions, 1)
        self.assert_error(
            self.run_tool("terminate", arguments), "no such session for that environment_id"
        )

    def test_terminate_errors_ignored(self) -> None:
        """
        A failing terminate still answers C{terminated}.
        """
        session_id = self.open_session()

        def broken(params: Any) -> Any:
            raise CallError("process/terminate: timed out")

        self.dev.overrides["process/terminate"] = broken
        result = self.run_tool("terminate", {"environment_id": "dev", "session_id": session_id})
        self.assertEqual(result, ToolResult("terminated"))

    def test_other_environment(self) -> None:
        """
        Another environment's name → C{no such session for that environment_id}, for every
        session tool; the session survives.
        """
        session_id = self.open_session()
        for tool, extra in (("write_stdin", {"chars": "x"}), ("read_output", {}), ("terminate", {})):
            result = self.run_tool(tool, {"environment_id": "ops", "session_id": session_id, **extra})
            self.assert_error(result, "no such session for that environment_id")
        self.assertEqual(len(self.ctx.sessions), 1)
        self.assertEqual(self.ops.calls, [])

    def test_lost_after_reset(self) -> None:
        """
        After the client's Reset → C{session lost: …} for each session tool; the session is then
        forgotten.
        """
        for tool, extra in (("read_output", {}), ("write_stdin", {"chars": "x"}), ("terminate", {})):
            client = ScriptedClient(self.clock)
            self.pool.clients[EXE_DEV] = client
            session_id = self.open_session()
            client.reset("idle")
            arguments = {"environment_id": "dev", "session_id": session_id, **extra}
            self.assert_error(
                self.run_tool(tool, arguments),
                'session lost: the connection to environment "dev" was reset',
            )
            self.assert_error(self.run_tool(tool, arguments), "no such session for that environment_id")
            self.assertEqual([c.method for c in client.calls], ["process/start"])
            self.assertEqual(client.closed_sessions, 1)

    def test_unknown_session(self) -> None:
        """
        An unknown id → C{no such session for that environment_id}.
        """
        result = self.run_tool("read_output", {"environment_id": "dev", "session_id": "nope"})
        self.assert_error(result, "no such session for that environment_id")

    def test_too_many(self) -> None:
        """
        The 65th session → C{too many exec sessions (64); terminate one first}, no start; after a
        terminate there is room again.
        """
        ids = [self.open_session() for _ in range(64)]
        result = self.run_tool("exec_command", {"environment_id": "dev", "command": ["cat"]})
        self.assert_error(result, "too many exec sessions (64); terminate one first")
        self.assertEqual(len(self.dev.calls_of("process/start")), 64)
        self.run_tool("terminate", {"environment_id": "dev", "session_id": ids[0]})
        self.open_session()

    def test_expiry(self) -> None:
        """
        A session unused for 30 min is terminated and forgotten at the next access; a used one
        stays.
        """
        idle = self.open_session()
        used = self.open_session()
        self.clock.advance(1000)
        self.run_tool("read_output", {"environment_id": "dev", "session_id": used, "yield_time_ms": 0})
        self.clock.advance(800)
        result = self.run_tool("read_output", {"environment_id": "dev", "session_id": idle})
        self.assert_error(result, "no such session for that environment_id")
        self.assertEqual(
            [c.params for c in self.dev.calls_of("process/terminate")], [{"processId": "uexec-1"}]
        )
        self.assertEqual(len(self.ctx.sessions), 1)
        self.assertEqual(self.dev.closed_sessions, 1)


class FileTests(ToolTestCase):
    """
    Criterion 17: C{read_file} and C{write_file}.
    """

    def setUp(self) -> None:
        """
        C{/w/f} holds C{abcdef}.
        """
        super().setUp()
        self.dev.files["file:///w/f"] = b"abcdef"

    def read(self, **extra: Any) -> ToolResult:
        """
        C{read_file} of C{/w/f} on C{dev}.
        """
        return self.run_tool("read_file", {"environment_id": "dev", "path": "/w/f", **extra})

    def test_slice(self) -> None:
        """
        offset 2, limit 3 → C{cde}.
        """
        self.assertEqual(self.read(offset=2, limit=3), ToolResult("cde"))
        self.assertEqual(self.dev.calls[0].params, {"path": "file:///w/f"})

    def test_negative_offset(self) -> None:
        """
        offset −1 → from 0.
        """
        self.assertEqual(self.read(offset=-1, limit=2), ToolResult("ab"))

    def test_limit_zero(self) -> None:
        """
        limit 0 (or negative, or absent) → to the end.
        """
        self.assertEqual(self.read(offset=4, limit=0), ToolResult("ef"))
        self.assertEqual(self.read(offset=4, limit=-3), ToolResult("ef"))
        self.assertEqual(self.read(), ToolResult("abcdef"))
        self.assertEqual(self.read(offset=10), ToolResult(""))

    def test_missing(self) -> None:
        """
        A missing file → the exact text.
        """
        result = self.run_tool("read_file", {"environment_id": "dev", "path": "/w/none"})
        self.assert_error(
            result,
            "read_file failed: fs/readFile: No such file or directory (os error 2) (code=-32004)",
        )

    def test_invalid_utf8(self) -> None:
        """
        Bytes that are not UTF-8 are replaced.
        """
        self.dev.files["file:///w/bin"] = b"\xfe\xffok"
        result = self.run_tool("read_file", {"environment_id": "dev", "path": "/w/bin"})
        self.assertEqual(result, ToolResult("\ufffd\ufffdok"))

    def test_read_argument_errors(self) -> None:
        """
        A relative path and a missing path.
        """
        self.assert_error(
            self.run_tool("read_file", {"environment_id": "dev", "path": "w/f"}),
            'path must be absolute: "w/f"',
        )
        self.assert_error(
            self.run_tool("read_file", {"environment_id": "dev"}),
            "invalid arguments: path is required",
        )
        self.assertEqual(self.dev.calls, [])

    def test_malformed_read_result(self) -> None:
        """
        A result without C{dataBase64} is a failure.
        """
        self.dev.overrides["fs/readFile"] = lambda params: {}
        self.assert_error(
            self.read(), "read_file failed: fs/readFile: malformed result: dataBase64 must be a string"
        )

    def test_write(self) -> None:
        """
        C{write_file} creates the parent, then writes, and answers C{ok}.
        """
        content = b64(b"new\n")
        result = self.run_tool(
            "write_file", {"environment_id": "dev", "path": "/w/d e/f", "content_b64": content}
        )
        self.assertEqual(result, ToolResult("ok"))
        self.assertEqual(
            [(c.method, c.params) for c in self.dev.calls],
            [
                ("fs/createDirectory", {"path": "file:///w/d%20e", "recursive": True}),
                ("fs/writeFile", {"path": "file:///w/d%20e/f", "dataBase64": content}),
            ],
        )

    def test_write_invalid_base64(self) -> None:
        """
        C{content_b64} C{!!} → C{content_b64 invalid: …} and no call; so are missing padding and
        non-ASCII text.
        """
        for content in ("!!", "YQ", "é"):
            result = self.run_tool(
                "write_file", {"environment_id": "dev", "path": "/w/f", "content_b64": content}
            )
            self.assertTrue(result.is_error)
            self.assertTrue(result.text.startswith("content_b64 invalid: "), result.text)
        self.assertEqual(self.dev.calls, [])
        self.assertEqual(self.source.lists, 0)

    def test_write_failure(self) -> None:
        """
        A failing call → C{write_file failed: <error>}.
        """

        def broken(params: Any) -> Any:
            raise rpc_error("fs/writeFile", -32603, "Is a directory (os error 21)")

        self.dev.overrides["fs/writeFile"] = broken
        result = self.run_tool("write_file", {"environment_id": "dev", "path": "/w", "content_b64": ""})
        self.assert_error(
            result, "write_file failed: fs/writeFile: Is a directory (os error 21) (code=-32603)"
        )

    def test_write_argument_errors(self) -> None:
        """
        C{content_b64} must be a string and is required.
        """
        self.assert_error(
            self.run_tool("write_file", {"environment_id": "dev", "path": "/a", "content_b64": 1}),
            "invalid arguments: content_b64 must be string",
        )
        self.assert_error(
            self.run_tool("write_file", {"environment_id": "dev", "path": "/a"}),
            "invalid arguments: content_b64 is required",
        )


def read_result(seqs: list[int], next_seq: int, exited: bool = False) -> dict[str, Any]:
    """
    A C{process/read} result with one-byte stdout chunks numbered C{seqs}.
    """
    return {
        "chunks": [{"seq": seq, "stream": "stdout", "chunk": b64(b"x")} for seq in seqs],
        "nextSeq": next_seq,
        "exited": exited,
        "exitCode": 0 if exited else None,
        "closed": False,
        "failure": None,
        "sandboxDenied": False,
    }


class ReadStepsTests(SynchronousTestCase):
    """
    L{ReadSteps}: the §7.2 read step, the §2.4 polling rule and the skipped-number count.
    """

    def setUp(self) -> None:
        """
        A client whose C{process/read} answers from C{self.replies} in order.
        """
        self.client = ScriptedClient(Clock())
        self.replies: list[Any] = []
        self.client.overrides["process/read"] = lambda params: self.replies.pop(0)
        self.steps = ReadSteps(self.client, "p-1", 4096)

    def step(self, wait_ms: float, reply: Any, advance: bool = True) -> dict[str, Any]:
        """
        One step answered with C{reply}.
        """
        self.replies.append(reply)
        return self.successResultOf(Deferred.fromCoroutine(self.steps.step(wait_ms, advance)))

    def test_params(self) -> None:
        """
        The first step sends C{afterSeq} null, the next C{nextSeq − 1}; C{waitMs} is at most 250,
        never negative, rounded up.
        """
        self.step(1000, read_result([1, 2], 3))
        self.step(-4, read_result([], 3))
        self.step(0.2, read_result([], 3))
        params = [c.params for c in self.client.calls]
        self.assertEqual(
            params[0], {"processId": "p-1", "afterSeq": None, "maxBytes": 4096, "waitMs": 250}
        )
        self.assertEqual([p["afterSeq"] for p in params], [None, 2, 2])
        self.assertEqual([p["waitMs"] for p in params], [250, 0, 1])

    def test_keep_after_seq(self) -> None:
        """
        C{advance=False} keeps the same C{afterSeq}; a starting C{after_seq} is used as given.
        """
        steps = ReadSteps(self.client, "p-1", 10, after_seq=4)
        self.steps = steps
        self.step(0, read_result([], 9), advance=False)
        self.step(0, read_result([], 9), advance=False)
        self.assertEqual([c.params["afterSeq"] for c in self.client.calls], [4, 4])
        self.assertEqual(steps.after_seq, 4)

    def test_skipped(self) -> None:
        """
        Numbers skipped between C{afterSeq} and the first chunk and between chunks are counted.
        """
        self.step(0, read_result([2, 3, 6], 7))
        self.assertEqual(self.steps.skipped, 3)
        self.step(0, read_result([9], 10))
        self.assertEqual(self.steps.skipped, 5)
        self.assertEqual(self.steps.discarded, 5)
        self.assertEqual([c.seq for c in self.steps.last_chunks], [9])

    def test_exit_event(self) -> None:
        """
        Of the numbers skipped in steps that report C{exited}, one is the exit event.
        """
        self.step(0, read_result([1], 2))
        self.step(0, read_result([3], 4, exited=True))
        self.assertEqual((self.steps.skipped, self.steps.discarded), (1, 0))
        self.step(0, read_result([6], 7, exited=True))
        self.assertEqual((self.steps.skipped, self.steps.discarded), (3, 2))

    def test_malformed(self) -> None:
        """
        A result of the wrong shape fails the step with L{CallError}.
        """
        for reply, detail in (
            ([], "result must be an object"),
            ({"chunks": [], "nextSeq": "1"}, "nextSeq must be an integer"),
            ({"chunks": [{"seq": True, "stream": "stdout", "chunk": ""}]}, "seq must be an integer"),
            ({"chunks": [{"seq": 1, "stream": "stdout", "chunk": "!"}]}, "chunk: "),
            ({"chunks": [3]}, "chunk must be an object"),
        ):
            self.replies.append(reply)
            failure = self.failureResultOf(Deferred.fromCoroutine(self.steps.step(0)), CallError)
            self.assertTrue(
                str(failure.value).startswith(f"process/read: malformed result: {detail}"),
                failure.value,
            )


class FakeExecServerTests(SynchronousTestCase):
    """
    The tools against L{FakeExecServer} through L{FakeExecServerClient}: the exec-server's own
    handshake, error texts, one-request-at-a-time answering and real files under a temporary root.
    """

    def setUp(self) -> None:
        """
        One fake exec-server for C{dev}, its files under a fresh directory.
        """
        self.clock = Clock()
        self.root = self.mktemp()
        os.makedirs(os.path.join(self.root, "tmp"))
        self.server = FakeExecServer(self.clock, root=self.root)
        self.client = FakeExecServerClient(self.server)
        self.pool = FakePool()
        self.pool.clients = {EXE_DEV: self.client}
        self.ctx = EnvContext(
            self.pool, Resolver(FakeSource(standard_entries()), self.clock), self.clock
        )

    def start(self, name: str, arguments: Mapping[str, Any]) -> Deferred[ToolResult]:
        """
        Start tool C{name} on C{dev}.
        """
        tool = tool_named(name) or sdk_tool_named(name)
        assert tool is not None
        return tool.run(self.ctx, {"environment_id": "dev", **arguments})

    def run_tool(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """
        Run tool C{name} on C{dev}, advancing the clock in 50 ms steps until it has finished.
        """
        running = self.start(name, arguments)
        for _ in range(2000):
            if running.called:
                break
            self.clock.advance(0.05)
        result = self.successResultOf(running)
        self.assertNotIn(EXE_DEV, result.text)
        return result

    def test_echo(self) -> None:
        """
        C{["echo","hi"]} → C{hi\\n\\n[exit_code=0]}; no read waits more than 250 ms.
        """
        result = self.run_tool("shell", {"command": ["echo", "hi"]})
        self.assertEqual(result, ToolResult("hi\n\n[exit_code=0]"))
        self.assertEqual(self.server.wait_violations, [])
        start = self.server.requests_for("process/start")[0]
        self.assertEqual(start["processId"], "shell-1")

    def test_bursts(self) -> None:
        """
        Output in three bursts, stdout and stderr, arrives once each; exit 3 is an error.
        """
        self.server.script_process(
            ["burst"],
            [("stdout", b"a\n"), ("stderr", b"b\n"), ("stdout", b"c\n")],
            exit_code=3,
            interval=0.3,
        )
        result = self.run_tool("shell", {"command": ["burst"]})
        self.assertEqual(result, ToolResult("a\nc\n\n--- stderr ---\nb\n\n[exit_code=3]", True))
        reads = self.server.requests_for("process/read")
        self.assertEqual(reads[0]["afterSeq"], None)
        self.assertTrue(all(r["waitMs"] <= 250 for r in reads))

    def test_exit_with_output_open(self) -> None:
        """
        A process that exits while its output stays open returns after one empty wait.
        """
        self.server.script_process(["bg"], [("stdout", b"top\n")], exit_code=0, close=False)
        running = self.start("shell", {"command": ["bg"]})
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(running), ToolResult("top\n\n[exit_code=0]"))

    def test_timeout(self) -> None:
        """
        C{sleep 5} with C{timeout_ms} 250 is terminated.
        """
        result = self.run_tool("shell", {"command": ["sleep", "5"], "timeout_ms": 250})
        self.assertEqual(result, ToolResult("\n[exec timed out without exit signal]", True))
        self.assertEqual(self.server.requests_for("process/terminate"), [{"processId": "shell-1"}])
        self.assertTrue(self.server.processes["shell-1"].terminated)

    def test_missing_program(self) -> None:
        """
        A missing program fails the start with the OS text.
        """
        result = self.run_tool("shell", {"command": ["no-such-program"]})
        self.assertEqual(
            result,
            ToolResult(
                "[exec failed to start: process/start: No such file or directory (os error 2) "
                "(code=-32603)]",
                True,
            ),
        )

    def test_session_round_trip(self) -> None:
        """
        C{cat} with C{pipe_stdin}: C{write_stdin} C{hello\\n}, C{read_output} shows it, C{terminate}.
        """
        started = self.run_tool("exec_command", {"command": ["cat"], "pipe_stdin": True})
        session_id = session_id_of(started)
        self.assertEqual(self.client.live_sessions, 1)
        self.assertEqual(
            self.run_tool("write_stdin", {"session_id": session_id, "chars": "hello\n"}),
            ToolResult("ok"),
        )
        output = json.loads(self.run_tool("read_output", {"session_id": session_id}).text)
        self.assertEqual(
            output,
            {
                "stdout": "hello\n",
                "stderr": "",
                "next_seq": 2,
                "exited": False,
                "exit_code": None,
                "closed": False,
                "failure": None,
            },
        )
        self.assertEqual(
            self.run_tool("terminate", {"session_id": session_id}), ToolResult("terminated")
        )
        self.assertEqual(self.client.live_sessions, 0)
        self.assertTrue(self.server.processes["uexec-1"].terminated)

    def test_stdin_closed(self) -> None:
        """
        C{sleep} without C{pipe_stdin} → C{stdin is closed; …}.
        """
        session_id = session_id_of(self.run_tool("exec_command", {"command": ["sleep", "5"]}))
        result = self.run_tool("write_stdin", {"session_id": session_id, "chars": "x"})
        self.assertEqual(
            result, ToolResult("stdin is closed; start the process with pipe_stdin or tty", True)
        )

    def test_reset(self) -> None:
        """
        After the client's Reset the session is lost.
        """
        session_id = session_id_of(self.run_tool("exec_command", {"command": ["cat"]}))
        self.client.reset("idle")
        result = self.run_tool("read_output", {"session_id": session_id})
        self.assertEqual(
            result, ToolResult('session lost: the connection to environment "dev" was reset', True)
        )

    def test_files(self) -> None:
        """
        C{write_file} into a missing directory, then C{read_file} slices; a missing file has the
        exec-server's -32004 text.
        """
        content = b64(b"abcdef")
        self.assertEqual(
            self.run_tool("write_file", {"path": "/new/dir/f.txt", "content_b64": content}),
            ToolResult("ok"),
        )
        with open(os.path.join(self.root, "new/dir/f.txt"), "rb") as written:
            self.assertEqual(written.read(), b"abcdef")
        self.assertEqual(
            self.run_tool("read_file", {"path": "/new/dir/f.txt", "offset": 2, "limit": 3}),
            ToolResult("cde"),
        )
        self.assertEqual(
            self.run_tool("read_file", {"path": "/new/none"}),
            ToolResult(
                "read_file failed: fs/readFile: No such file or directory (os error 2) (code=-32004)",
                True,
            ),
        )

    def test_directory_read(self) -> None:
        """
        Reading a directory fails with the exec-server's text.
        """
        os.makedirs(os.path.join(self.root, "d"))
        result = self.run_tool("read_file", {"path": "/d"})
        self.assertEqual(
            result,
            ToolResult("read_file failed: fs/readFile: path `/d` is not a file (code=-32600)", True),
        )
