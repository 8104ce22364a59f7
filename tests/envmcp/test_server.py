"""
Tests for L{codexgw.envmcp.server}: MCP over newline-delimited JSON-RPC (C{app-gateway.md} §9.2,
criteria 62 and 63) with fake tools, a C{StringTransport} and a fake clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from codexgw.envmcp.server import MAX_LINE_BYTES, LineSplitter, McpServer, ServedTool
from codexgw.envtools.interfaces import ToolResult
from tests.appgw.stubhttp import LogCollector

#: The exact C{initialize} result (§9.2).
INITIALIZE_RESULT = {
    "protocolVersion": "2025-06-18",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "agentserver", "version": "0.2"},
}


@dataclass
class FakeTool:
    """
    A tool whose calls are answered by C{behaviour(arguments)}; every call is recorded.
    """

    name: str
    behaviour: Callable[[dict[str, Any]], Deferred[ToolResult]]
    description: str = "a fake tool"
    input_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    calls: list[dict[str, Any]] = field(default_factory=list)

    def call(self, arguments: dict[str, Any]) -> Deferred[ToolResult]:
        """
        Record the arguments and behave.
        """
        self.calls.append(arguments)
        return self.behaviour(arguments)


class SlowTool:
    """
    A tool whose calls wait until the test fires them; cancellation is observed.

    @ivar pending: the Deferred of each call, in order.
    @ivar cancelled: how many calls were cancelled.
    @ivar cleanup: when set, a cancelled call finishes only when this Deferred fires (a tool that
        cleans up after a cancellation).
    """

    name = "slow"
    description = "waits"
    input_schema: Mapping[str, Any] = {"type": "object", "properties": {}}

    def __init__(self) -> None:
        self.pending: list[Deferred[ToolResult]] = []
        self.cancelled = 0
        self.cleanup: Deferred[None] | None = None

    def call(self, arguments: dict[str, Any]) -> Deferred[ToolResult]:
        """
        Return a Deferred the test fires.
        """
        inner: Deferred[ToolResult] = Deferred(self._cancel)
        self.pending.append(inner)
        return Deferred.fromCoroutine(self._run(inner))

    def _cancel(self, d: Deferred[ToolResult]) -> None:
        self.cancelled += 1

    async def _run(self, inner: Deferred[ToolResult]) -> ToolResult:
        try:
            return await inner
        except CancelledError:
            if self.cleanup is not None:
                await self.cleanup
            raise


def echo(arguments: dict[str, Any]) -> Deferred[ToolResult]:
    """
    A result whose text is the compact JSON of the arguments.
    """
    return succeed(ToolResult(json.dumps(arguments, separators=(",", ":"))))


class Harness:
    """
    A server over a C{StringTransport}, a fake clock and a log collector.
    """

    def __init__(self, tools: list[ServedTool], max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.clock = Clock()
        self.logs = LogCollector()
        self.transport = StringTransport()
        self.server = McpServer(tools, self.clock, self.logs.log, max_line_bytes=max_line_bytes)
        self.server.makeConnection(self.transport)

    def send(self, *messages: object) -> None:
        """
        Send each message as one line (bytes are sent as they are).
        """
        for message in messages:
            if isinstance(message, bytes):
                self.server.dataReceived(message)
            else:
                self.server.dataReceived(json.dumps(message).encode() + b"\n")

    def responses(self) -> list[dict[str, Any]]:
        """
        The responses written since the last call, decoded; each is exactly one line.
        """
        raw = self.transport.value()
        self.transport.clear()
        if not raw:
            return []
        assert raw.endswith(b"\n"), raw
        return [json.loads(line) for line in raw[:-1].split(b"\n")]

    def only(self) -> dict[str, Any]:
        """
        The one response written since the last call.
        """
        [response] = self.responses()
        return response


def request(request_id: object, method: str, params: object = None) -> dict[str, object]:
    """
    A JSON-RPC request (C{params} left out when C{None}).
    """
    message: dict[str, object] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def call(request_id: object, name: str, arguments: object = None) -> dict[str, object]:
    """
    A C{tools/call} request.
    """
    params: dict[str, object] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return request(request_id, "tools/call", params)


def error(request_id: object, code: int, message: str) -> dict[str, object]:
    """
    The JSON-RPC error response expected.
    """
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def result(request_id: object, value: object) -> dict[str, object]:
    """
    The JSON-RPC result response expected.
    """
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


class ProtocolTests(SynchronousTestCase):
    """
    Criterion 62: the MCP methods and their exact answers.
    """

    def setUp(self) -> None:
        """
        A server with the tools C{echo} and C{other}.
        """
        self.echo = FakeTool("echo", echo, "echoes", {"type": "object", "properties": {"a": {}}})
        self.other = FakeTool("other", echo)
        self.h = Harness([self.echo, self.other])

    def test_initialize(self) -> None:
        """
        C{initialize} gets the exact result, whatever the client offers, as one compact line.
        """
        self.h.send(
            request(
                1,
                "initialize",
                {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "c"}},
            )
        )
        raw = self.h.transport.value()
        self.assertEqual(
            raw,
            b'{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":'
            b'{"tools":{}},"serverInfo":{"name":"agentserver","version":"0.2"}}}\n',
        )
        self.assertEqual(self.h.only(), result(1, INITIALIZE_RESULT))

    def test_notifications_unanswered(self) -> None:
        """
        C{notifications/initialized} and any notification get no response.
        """
        self.h.send(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "method": "notifications/initialized", "id": 5},
            {"jsonrpc": "2.0", "method": "whatever/else", "params": {}},
            {"jsonrpc": "2.0", "method": "ping", "id": None},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}},
        )
        self.assertEqual(self.h.responses(), [])

    def test_ping_and_empty_lists(self) -> None:
        """
        C{ping} → C{{}}; prompts, resources and resource templates are empty lists.
        """
        self.h.send(
            request(1, "ping"),
            request(2, "prompts/list"),
            request(3, "resources/list", {}),
            request(4, "resources/templates/list"),
        )
        self.assertEqual(
            self.h.responses(),
            [
                result(1, {}),
                result(2, {"prompts": []}),
                result(3, {"resources": []}),
                result(4, {"resourceTemplates": []}),
            ],
        )

    def test_tools_list(self) -> None:
        """
        C{tools/list} lists name, description and input schema of each tool in order.
        """
        self.h.send(request(7, "tools/list", {}))
        self.assertEqual(
            self.h.only(),
            result(
                7,
                {
                    "tools": [
                        {
                            "name": "echo",
                            "description": "echoes",
                            "inputSchema": {"type": "object", "properties": {"a": {}}},
                        },
                        {
                            "name": "other",
                            "description": "a fake tool",
                            "inputSchema": {"type": "object", "properties": {}},
                        },
                    ]
                },
            ),
        )

    def test_ids_echoed(self) -> None:
        """
        Request ids of any JSON type come back unchanged.
        """
        ids: list[object] = ["abc", "", 0, -3, 2.5, 10**20, {"k": [1]}, [1, "x"], True]
        for request_id in ids:
            with self.subTest(request_id=request_id):
                self.h.send(request(request_id, "ping"))
                self.assertEqual(self.h.only(), result(request_id, {}))

    def test_unknown_method(self) -> None:
        """
        Another method with an id → -32601 C{method not found: <method>}; without one → nothing.
        """
        self.h.send(request("x", "sampling/createMessage", {}), {"method": "sampling/createMessage"})
        self.assertEqual(self.h.only(), error("x", -32601, "method not found: sampling/createMessage"))

    def test_method_not_string(self) -> None:
        """
        A C{method} that is not a string is an invalid request when the message has an id.
        """
        self.h.send({"id": 1, "method": 5}, {"method": 5})
        self.assertEqual(self.h.only(), error(1, -32600, "invalid request: method must be a string"))

    def test_call(self) -> None:
        """
        C{tools/call} runs the named tool with its arguments; the result is the tool's result with
        C{isError} always present.
        """
        self.h.send(call(3, "echo", {"a": 1, "b": [True]}))
        self.assertEqual(
            self.h.only(),
            result(3, {"content": [{"type": "text", "text": '{"a":1,"b":[true]}'}], "isError": False}),
        )
        self.assertEqual(self.echo.calls, [{"a": 1, "b": [True]}])

    def test_call_error_result(self) -> None:
        """
        A tool result with C{is_error} is a result with C{isError: true}, not a JSON-RPC error.
        """
        tool = FakeTool("bad", lambda arguments: succeed(ToolResult("nope", is_error=True)))
        h = Harness([tool])
        h.send(call(1, "bad"))
        self.assertEqual(
            h.only(), result(1, {"content": [{"type": "text", "text": "nope"}], "isError": True})
        )

    def test_arguments_absent(self) -> None:
        """
        Absent or C{null} arguments mean C{{}}.
        """
        self.h.send(call(1, "echo"), request(2, "tools/call", {"name": "echo", "arguments": None}))
        self.assertEqual(len(self.h.responses()), 2)
        self.assertEqual(self.echo.calls, [{}, {}])

    def test_bad_params(self) -> None:
        """
        params not an object, a name that is not a string, or arguments not an object → -32602.
        """
        self.h.send(
            request(1, "tools/call"),
            request(2, "tools/call", [1]),
            request(3, "tools/call", {"arguments": {}}),
            request(4, "tools/call", {"name": 7}),
            call(5, "echo", [1, 2]),
            call(6, "echo", "x"),
        )
        self.assertEqual(
            self.h.responses(),
            [
                error(1, -32602, "invalid params: params must be an object"),
                error(2, -32602, "invalid params: params must be an object"),
                error(3, -32602, "invalid params: name must be a string"),
                error(4, -32602, "invalid params: name must be a string"),
                error(5, -32602, "invalid params: arguments must be an object"),
                error(6, -32602, "invalid params: arguments must be an object"),
            ],
        )
        self.assertEqual(self.echo.calls, [])

    def test_unknown_tool(self) -> None:
        """
        An unknown tool → -32601 C{unknown tool: <name>}.
        """
        self.h.send(call("q", "write_file", {}))
        self.assertEqual(self.h.only(), error("q", -32601, "unknown tool: write_file"))

    def test_tool_exception(self) -> None:
        """
        An unexpected exception in a tool, raised or as a failed Deferred → -32000
        C{<name>: <error>}.
        """

        def raises(arguments: dict[str, Any]) -> Deferred[ToolResult]:
            raise RuntimeError("boom")

        h = Harness(
            [
                FakeTool("raises", raises),
                FakeTool("fails", lambda arguments: fail(KeyError("k"))),
                FakeTool("odd", lambda arguments: succeed("text")),  # type: ignore[arg-type]
                FakeTool("blank", lambda arguments: fail(ValueError())),
            ]
        )
        h.send(call(1, "raises"), call(2, "fails"), call(3, "odd"), call(4, "blank"))
        self.assertEqual(
            h.responses(),
            [
                error(1, -32000, "raises: boom"),
                error(2, -32000, "fails: 'k'"),
                error(3, -32000, "odd: unexpected tool result"),
                error(4, -32000, "blank: ValueError"),
            ],
        )

    def test_responses_to_client_ignored(self) -> None:
        """
        A message without C{method} (a response) is ignored.
        """
        self.h.send({"jsonrpc": "2.0", "id": 1, "result": {}})
        self.assertEqual(self.h.responses(), [])
        self.assertEqual(self.h.logs.events, [])

    def test_non_ascii(self) -> None:
        """
        Non-ASCII text is written as itself; a lone surrogate falls back to ASCII escapes.
        """
        self.h.send(call("é", "echo", {"t": "ü"}))
        raw = self.h.transport.value()
        self.assertIn('"id":"é"'.encode(), raw)
        self.h.responses()
        self.h.send(b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}\n')
        raw = self.h.transport.value()
        self.assertEqual(raw, b'{"jsonrpc":"2.0","id":"\\ud800","result":{}}\n')


class FramingTests(SynchronousTestCase):
    """
    Lines: empty, malformed, split across reads, over the limit.
    """

    def test_split_and_joined(self) -> None:
        """
        Lines split across reads and several lines in one read are each handled once; C{\\r\\n}
        works.
        """
        h = Harness([])
        line = json.dumps(request(1, "ping")).encode()
        h.send(line[:5], line[5:] + b"\r\n" + json.dumps(request(2, "ping")).encode() + b"\n")
        self.assertEqual(h.responses(), [result(1, {}), result(2, {})])

    def test_empty_lines(self) -> None:
        """
        Empty and blank lines are skipped without a warning.
        """
        h = Harness([])
        h.send(b"\n\n  \r\n\t\n")
        self.assertEqual((h.responses(), h.logs.events), ([], []))

    def test_malformed(self) -> None:
        """
        Malformed JSON and JSON that is not an object are dropped with a warning quoting at most
        200 bytes; the next line is served.
        """
        h = Harness([])
        h.send(b"{" + b"x" * 300 + b"\n", b"[1,2]\n", b"\xff\xfe\n", request(1, "ping"))
        self.assertEqual(h.only(), result(1, {}))
        self.assertEqual(h.logs.levels(), ["warn"] * 3)
        first = h.logs.messages()[0]
        self.assertIn("{" + "x" * 199, first)
        self.assertNotIn("x" * 200, first)

    def test_long_line(self) -> None:
        """
        A line over the limit is discarded up to the next newline with a warning, also when it
        arrives in pieces; a line of exactly the limit is served.
        """
        ping = json.dumps(request(1, "ping")).encode()
        h = Harness([], max_line_bytes=len(ping))
        h.send(b"[" + b" " * 30, b" " * 30, b"]\n" + ping + b"\n")
        self.assertEqual(h.only(), result(1, {}))
        self.assertEqual(h.logs.levels(), ["warn"])
        h.send(ping + b" \n", ping + b"\n")
        self.assertEqual(h.only(), result(1, {}))
        self.assertEqual(h.logs.levels(), ["warn"] * 2)
        h.send(b"x" * 100 + b"\n" + b"y" * 100 + b"\n")
        self.assertEqual(h.logs.levels(), ["warn"] * 4)

    def test_splitter_limit(self) -> None:
        """
        The real limit: a line of 16 MiB is kept, one byte more is discarded.
        """
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a" * MAX_LINE_BYTES + b"\nb\n"), [b"a" * MAX_LINE_BYTES, b"b"])
        self.assertEqual(splitter.feed(b"a" * (MAX_LINE_BYTES + 1) + b"\nc\n"), [b"c"])
        self.assertEqual(splitter.discarded, 1)
        self.assertEqual(MAX_LINE_BYTES, 16 * 1024 * 1024)

    def test_splitter_rest(self) -> None:
        """
        The unterminated rest is returned once; a discarded rest is not.
        """
        splitter = LineSplitter(4)
        self.assertEqual(splitter.feed(b"ab"), [])
        self.assertEqual(splitter.rest(), b"ab")
        self.assertIsNone(splitter.rest())
        splitter.feed(b"abcdef")
        self.assertIsNone(splitter.rest())


class ConcurrencyTests(SynchronousTestCase):
    """
    Criterion 63: concurrent calls and cancellation.
    """

    def setUp(self) -> None:
        """
        A server with a slow and a fast tool.
        """
        self.slow = SlowTool()
        self.fast = FakeTool("fast", echo)
        self.h = Harness([self.slow, self.fast])

    def test_slow_does_not_delay_fast(self) -> None:
        """
        A slow call does not delay a fast one; the slow one is answered when it finishes.
        """
        self.h.send(call(1, "slow"), call(2, "fast", {"x": 1}))
        self.assertEqual([r["id"] for r in self.h.responses()], [2])
        self.slow.pending[0].callback(ToolResult("done"))
        self.assertEqual(
            self.h.only(), result(1, {"content": [{"type": "text", "text": "done"}], "isError": False})
        )

    def test_cancelled(self) -> None:
        """
        C{notifications/cancelled} cancels that call; no response is sent for it, then or later.
        """
        self.h.send(call("a", "slow"), call("b", "slow"))
        self.h.send({"method": "notifications/cancelled", "params": {"requestId": "a"}})
        self.assertEqual(self.slow.cancelled, 1)
        self.assertEqual(self.h.responses(), [])
        self.slow.pending[1].callback(ToolResult("b done"))
        self.assertEqual(self.h.only()["id"], "b")
        self.assertEqual(self.h.server.finished.called, False)

    def test_cancelled_then_finishes(self) -> None:
        """
        A cancelled call whose tool still produces a result gets no response.
        """
        self.slow.cleanup = Deferred()
        self.h.send(call(1, "slow"))
        self.h.send({"method": "notifications/cancelled", "params": {"requestId": 1, "reason": "x"}})
        self.slow.cleanup.callback(None)
        self.assertEqual(self.h.responses(), [])

    def test_cancel_unknown(self) -> None:
        """
        A cancellation of an unknown or finished id, or without params, is ignored.
        """
        self.h.send(call(1, "fast"))
        self.h.responses()
        self.h.send(
            {"method": "notifications/cancelled", "params": {"requestId": 1}},
            {"method": "notifications/cancelled", "params": {"requestId": "1"}},
            {"method": "notifications/cancelled"},
            {"method": "notifications/cancelled", "params": {}},
        )
        self.assertEqual(self.h.responses(), [])

    def test_cancel_id_types(self) -> None:
        """
        Ids of different JSON types never match: cancelling C{"1"} does not cancel C{1}.
        """
        self.h.send(call(1, "slow"), call(True, "slow"))
        self.h.send({"method": "notifications/cancelled", "params": {"requestId": "1"}})
        self.assertEqual(self.slow.cancelled, 0)
        self.h.send({"method": "notifications/cancelled", "params": {"requestId": 1}})
        self.assertEqual(self.slow.cancelled, 1)


class LifecycleTests(SynchronousTestCase):
    """
    Criterion 63: stdin EOF and stdout failure.
    """

    def setUp(self) -> None:
        """
        A server with a slow and a fast tool.
        """
        self.slow = SlowTool()
        self.h = Harness([self.slow, FakeTool("fast", echo)])

    def test_eof_idle(self) -> None:
        """
        stdin EOF with nothing in flight: L{McpServer.finished} fires with 0 at once.
        """
        self.h.server.readConnectionLost()
        self.assertEqual(self.successResultOf(self.h.server.finished), 0)
        self.assertTrue(self.h.server.stdin_closed)

    def test_eof_last_line(self) -> None:
        """
        A last line without C{\\n} is served before the end.
        """
        self.h.send(json.dumps(request(4, "ping")).encode())
        self.assertEqual(self.h.responses(), [])
        self.h.server.readConnectionLost()
        self.assertEqual(self.h.only(), result(4, {}))
        self.assertEqual(self.successResultOf(self.h.server.finished), 0)

    def test_eof_cancels(self) -> None:
        """
        stdin EOF cancels the calls in flight, without responses, and finishes with 0 once they
        settled; later input is ignored.
        """
        self.slow.cleanup = Deferred()
        self.h.send(call(1, "slow"), call(2, "slow"))
        self.h.server.readConnectionLost()
        self.assertEqual(self.slow.cancelled, 2)
        self.assertNoResult(self.h.server.finished)
        self.slow.cleanup.callback(None)
        self.assertEqual(self.successResultOf(self.h.server.finished), 0)
        self.assertEqual(self.h.responses(), [])
        self.h.send(request(3, "ping"))
        self.assertEqual(self.h.responses(), [])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_eof_wait_bounded(self) -> None:
        """
        Calls that do not settle within 5 s are given up with a warning.
        """
        self.slow.cleanup = Deferred()
        self.h.send(call(1, "slow"))
        self.h.server.readConnectionLost()
        self.h.clock.advance(4.9)
        self.assertNoResult(self.h.server.finished)
        self.h.clock.advance(0.1)
        self.assertEqual(self.successResultOf(self.h.server.finished), 0)
        self.assertEqual(self.h.logs.levels(), ["warn"])
        self.slow.cleanup.callback(None)
        self.assertEqual(self.h.responses(), [])

    def test_stdout_failure(self) -> None:
        """
        A failed stdout write cancels the calls in flight and stops dispatching; the exit status at
        stdin EOF is 1.
        """
        self.h.send(call(1, "slow"))
        self.h.server.writeConnectionLost()
        self.assertTrue(self.h.server.write_failed)
        self.assertEqual(self.slow.cancelled, 1)
        self.assertEqual(self.h.logs.levels(), ["error"])
        self.h.send(call(2, "slow"), request(3, "ping"))
        self.assertEqual(len(self.slow.pending), 1)
        self.assertEqual(self.h.responses(), [])
        self.assertNoResult(self.h.server.finished)
        self.h.server.readConnectionLost()
        self.assertEqual(self.successResultOf(self.h.server.finished), 1)

    def test_close_output(self) -> None:
        """
        L{McpServer.close_output} closes the transport and fires once the connection is gone; that
        closing is not a write failure.
        """
        self.h.server.readConnectionLost()
        closed = self.h.server.close_output()
        self.assertTrue(self.h.transport.disconnecting)
        self.assertNoResult(closed)
        self.h.server.connectionLost()
        self.successResultOf(closed)
        self.assertFalse(self.h.server.write_failed)
        self.assertEqual(self.successResultOf(self.h.server.finished), 0)

    def test_close_output_after_failure(self) -> None:
        """
        After a stdout failure there is nothing to close.
        """
        self.h.server.writeConnectionLost()
        self.successResultOf(self.h.server.close_output())

    def test_connection_lost(self) -> None:
        """
        Losing both directions unexpectedly counts as a stdout failure and stdin EOF.
        """
        self.h.send(call(1, "slow"))
        self.h.server.connectionLost()
        self.assertEqual(self.slow.cancelled, 1)
        self.assertEqual(self.successResultOf(self.h.server.finished), 1)
