"""
MCP over stdio (C{app-gateway.md} §9.2): newline-delimited JSON-RPC in, one JSON object and C{\\n} per
response out.

L{McpServer} is a plain Twisted protocol: C{twisted.internet.stdio.StandardIO} drives it in
production, tests drive it with a C{StringTransport} and direct calls of the half-close methods. It
serves the tools it is given (L{ServedTool}), so it knows nothing about environments; the caller binds
the envtools context (L{codexgw.envmcp.cli}).

Lifecycle: stdin EOF (L{McpServer.readConnectionLost}) cancels every call in flight and waits for them
at most L{DRAIN_TIMEOUT} seconds; then L{McpServer.finished} fires with the exit status (0, or 1 after
a failed stdout write). The first failed stdout write (L{McpServer.writeConnectionLost}) is recorded,
cancels the calls in flight and stops the dispatching; what arrives later is read and dropped.

Decisions where the spec is silent:
 - A request is a message with a C{method} and an C{id} that is present and not C{null}; a message
   with C{"id":null} counts as a notification (MCP forbids null ids).
 - A line that is JSON but not an object (a number, an array — MCP has no batches) is dropped with the
   same warning as malformed JSON. An object without C{method} (a response; this server never sends
   requests) is ignored. A C{method} that is not a string gets -32600 C{invalid request: method must be
   a string} when the message has an id.
 - Whitespace around a line (a C{\\r} before the C{\\n} included) is allowed; a line that is only
   whitespace is skipped like an empty one. A last line without C{\\n} before EOF is handled.
 - A line longer than 16 MiB is discarded as soon as it passes the limit (not buffered to its end),
   with one warning per line.
 - C{tools/call}: C{params} absent or not an object → C{invalid params: params must be an object};
   C{name} absent or not a string → C{invalid params: name must be a string}; C{arguments} C{null}
   counts as absent.
 - C{notifications/initialized} and C{notifications/cancelled} never get a response, also when sent
   with an id; any other method without an id is ignored, whatever its name.
 - Two calls in flight with the same id both run; C{notifications/cancelled} cancels every call with
   that id. A cancelled call gets no response even when its tool finishes anyway; an unknown
   C{requestId} is ignored.
 - The calls cancelled at stdin EOF get no response either.
 - Responses are written with non-ASCII characters as themselves; a text that cannot be encoded as
   UTF-8 (a lone surrogate from a C{\\ud800} escape in the input) is written with ASCII escapes
   instead.
 - Requests received before C{initialize} are served normally: nothing dials until a tool runs, and
   codex calls tools only after the handshake, so no network I/O happens before the C{initialize}
   response (§9.1) without this server having to refuse anything.
 - The warning for a malformed line quotes its first 200 bytes, decoded as UTF-8 with replacement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol as StreamProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.envtools.interfaces import ToolResult

#: The longest stdin line accepted, without its C{\\n} (§9.2).
MAX_LINE_BYTES: Final = 16 << 20
#: Seconds the calls cancelled at stdin EOF may take to finish (§9.1).
DRAIN_TIMEOUT: Final = 5.0
#: The most of a malformed line a warning quotes (§9.2).
MAX_QUOTED_BYTES: Final = 200

#: The MCP protocol version and server identity answered to C{initialize} (§9.2).
PROTOCOL_VERSION: Final = "2025-06-18"
SERVER_INFO: Final[Mapping[str, str]] = {"name": "agentserver", "version": "0.2"}

#: JSON-RPC error codes used here.
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
TOOL_EXCEPTION: Final = -32000

#: Methods answered with an empty list under the given key (§9.2).
_EMPTY_LISTS: Final[Mapping[str, str]] = {
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}


class ServedTool(Protocol):
    """
    A tool as this server serves it: its C{tools/list} entry and how to call it.
    """

    @property
    def name(self) -> str:
        """
        The tool name.
        """

    @property
    def description(self) -> str:
        """
        The description advertised in C{tools/list}.
        """

    @property
    def input_schema(self) -> Mapping[str, Any]:
        """
        The JSON schema advertised as C{inputSchema}.
        """

    def call(self, arguments: dict[str, Any]) -> Deferred[ToolResult]:
        """
        Run the tool; the Deferred fires with its result. Cancelling it cancels the call.
        """


class LineSplitter:
    """
    Split a byte stream into lines of at most C{max_line_bytes} bytes (without the C{\\n}); longer
    lines are discarded up to the next C{\\n}.

    @ivar discarded: how many over-long lines were discarded so far.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.discarded = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the complete lines it ended, without their C{\\n}.
        """
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._add(data[start:end])
            if self._discarding:
                self._discarding = False
            else:
                lines.append(b"".join(self._parts))
            self._parts = []
            self._size = 0
            start = end + 1
        self._add(data[start:])
        return lines

    def rest(self) -> bytes | None:
        """
        The unterminated last line at end of input, or C{None} when there is none (or it was
        discarded).
        """
        if self._discarding or not self._parts:
            return None
        line = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return line

    def _add(self, piece: bytes) -> None:
        if self._discarding or not piece:
            return
        self._size += len(piece)
        if self._size > self.max_line_bytes:
            # Already too long: no need to keep it until its end.
            self._discarding = True
            self.discarded += 1
            self._parts = []
            self._size = 0
            return
        self._parts.append(piece)


@dataclass(eq=False)
class _Call:
    """
    One C{tools/call} in flight.

    @ivar request_id: the request id as received (echoed in the response).
    @ivar tool: the tool's name (for the -32000 text).
    @ivar running: the tool's Deferred.
    @ivar done: fires (with C{None}) once the tool's Deferred fired, whatever its outcome.
    @ivar cancelled: the call was cancelled; it gets no response.
    """

    request_id: object
    tool: str
    running: Deferred[ToolResult]
    done: Deferred[None] = field(default_factory=Deferred)
    cancelled: bool = False


def _id_key(request_id: object) -> str:
    # Ids of any JSON type: their canonical JSON text is the key (True and 1 stay apart).
    return json.dumps(request_id, sort_keys=True, separators=(",", ":"))


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    return str(error) or type(error).__name__


@implementer(IHalfCloseableProtocol)
class McpServer(StreamProtocol):
    """
    The MCP server protocol of env-mcp (§9.2).

    @ivar finished: fires with the exit status once stdin ended and the cancelled calls settled (at
        most L{DRAIN_TIMEOUT} seconds): 0, or 1 when a stdout write failed.
    @ivar write_failed: a stdout write failed; nothing more is dispatched or written.
    @ivar stdin_closed: stdin reached its end.
    """

    def __init__(
        self,
        tools: Sequence[ServedTool],
        clock: IReactorTime,
        log: Logger | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        """
        @param tools: the tools, in C{tools/list} order.
        @param clock: times the drain at stdin EOF.
        @param log: where warnings go (stderr in production).
        """
        self._tools = {tool.name: tool for tool in tools}
        self._listing = [
            {"name": tool.name, "description": tool.description, "inputSchema": tool.input_schema}
            for tool in tools
        ]
        self._clock = clock
        self._log = log if log is not None else Logger()
        self._lines = LineSplitter(max_line_bytes)
        self._drain_timeout = drain_timeout
        self._calls: dict[str, list[_Call]] = {}
        self._closing_output = False
        self._output_closed: Deferred[None] = Deferred()
        self.finished: Deferred[int] = Deferred()
        self.write_failed = False
        self.stdin_closed = False

    # -- transport events ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Handle every complete line; drop everything once stdin ended or stdout failed.
        """
        if self.stdin_closed:
            return
        discarded = self._lines.discarded
        lines = self._lines.feed(data)
        for _ in range(self._lines.discarded - discarded):
            self._log.warn(
                "stdin line exceeds {limit} bytes; discarded up to the next newline",
                limit=self._lines.max_line_bytes,
            )
        for line in lines:
            if self.write_failed:
                return
            self._handle_line(line)

    def readConnectionLost(self) -> None:
        """
        stdin ended: handle an unterminated last line, cancel the calls in flight, and fire
        L{finished} once they settled (at most L{DRAIN_TIMEOUT} seconds).
        """
        if self.stdin_closed:
            return
        rest = self._lines.rest()
        if rest is not None and not self.write_failed:
            self._handle_line(rest)
        self.stdin_closed = True
        self._drain()

    def writeConnectionLost(self) -> None:
        """
        stdout failed (or was closed by L{close_output}): record it, cancel the calls in flight and
        stop dispatching.
        """
        if self._closing_output:
            return
        if not self.write_failed:
            self.write_failed = True
            self._log.error("stdout write failed; no more requests are served")
        self._cancel_all()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Both directions are gone. After L{close_output} that is the end it asked for; otherwise it
        counts as a stdout failure and stdin EOF.
        """
        if not self._output_closed.called:
            self._output_closed.callback(None)
        if not self._closing_output and not self.write_failed:
            self.writeConnectionLost()
        self.readConnectionLost()

    def close_output(self) -> Deferred[None]:
        """
        Flush and close stdout (at exit). The Deferred fires once it is closed, at once when stdout
        already failed.
        """
        if self.write_failed or self.transport is None or self._output_closed.called:
            return succeed(None)
        self._closing_output = True
        self.transport.loseConnection()
        return self._output_closed

    # -- dispatch ----------------------------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            self._log.warn(
                "malformed JSON dropped: {excerpt}",
                excerpt=line[:MAX_QUOTED_BYTES].decode("utf-8", "replace"),
            )
            return
        method = message.get("method")
        request_id = message.get("id")
        is_request = request_id is not None
        if method is None:
            return
        if not isinstance(method, str):
            if is_request:
                self._error(request_id, INVALID_REQUEST, "invalid request: method must be a string")
            return
        params = message.get("params")
        if method == "notifications/cancelled":
            self._cancelled(params)
            return
        if method == "notifications/initialized" or not is_request:
            return
        if method == "initialize":
            self._result(
                request_id,
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {"tools": {}},
                    "serverInfo": dict(SERVER_INFO),
                },
            )
        elif method == "ping":
            self._result(request_id, {})
        elif method == "tools/list":
            self._result(request_id, {"tools": self._listing})
        elif method == "tools/call":
            self._call(request_id, params)
        elif method in _EMPTY_LISTS:
            self._result(request_id, {_EMPTY_LISTS[method]: []})
        else:
            self._error(request_id, METHOD_NOT_FOUND, f"method not found: {method}")

    def _call(self, request_id: object, params: object) -> None:
        if not isinstance(params, dict):
            self._error(request_id, INVALID_PARAMS, "invalid params: params must be an object")
            return
        name = params.get("name")
        if not isinstance(name, str):
            self._error(request_id, INVALID_PARAMS, "invalid params: name must be a string")
            return
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            self._error(request_id, INVALID_PARAMS, "invalid params: arguments must be an object")
            return
        tool = self._tools.get(name)
        if tool is None:
            self._error(request_id, METHOD_NOT_FOUND, f"unknown tool: {name}")
            return
        try:
            running = tool.call(arguments)
        except Exception as e:
            self._error(request_id, TOOL_EXCEPTION, f"{name}: {_describe(e)}")
            return
        call = _Call(request_id, name, running)
        key = _id_key(request_id)
        self._calls.setdefault(key, []).append(call)
        running.addBoth(self._call_ended, call, key)

    def _call_ended(self, outcome: object, call: _Call, key: str) -> None:
        calls = self._calls.get(key, [])
        if call in calls:
            calls.remove(call)
            if not calls:
                del self._calls[key]
        if not call.cancelled:
            if isinstance(outcome, ToolResult):
                self._result(call.request_id, outcome.to_json())
            elif isinstance(outcome, Failure):
                self._error(call.request_id, TOOL_EXCEPTION, f"{call.tool}: {_describe(outcome.value)}")
            else:
                self._error(call.request_id, TOOL_EXCEPTION, f"{call.tool}: unexpected tool result")
        call.done.callback(None)

    def _cancelled(self, params: object) -> None:
        if not isinstance(params, dict) or "requestId" not in params:
            return
        for call in list(self._calls.get(_id_key(params["requestId"]), [])):
            self._cancel(call)

    def _cancel(self, call: _Call) -> None:
        if call.cancelled:
            return
        call.cancelled = True
        call.running.cancel()

    def _cancel_all(self) -> None:
        for calls in list(self._calls.values()):
            for call in list(calls):
                self._cancel(call)

    def _drain(self) -> None:
        pending = [call.done for calls in self._calls.values() for call in calls]
        self._cancel_all()
        # The cancelled calls may still be cleaning up (a tool's best-effort terminate, say).
        still = [done for done in pending if not done.called]
        if not still:
            self._finish()
            return
        timer = self._clock.callLater(self._drain_timeout, self._gave_up, len(still))
        settled = gatherResults(still)

        def all_settled(_: object) -> None:
            if timer.active():
                timer.cancel()
            self._finish()

        settled.addCallback(all_settled)

    def _gave_up(self, count: int) -> None:
        self._log.warn(
            "{count} cancelled tool call(s) still running after {timeout}s; exiting anyway",
            count=count,
            timeout=self._drain_timeout,
        )
        self._finish()

    def _finish(self) -> None:
        if not self.finished.called:
            self.finished.callback(1 if self.write_failed else 0)

    # -- output ------------------------------------------------------------------------------------

    def _result(self, request_id: object, result: object) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _error(self, request_id: object, code: int, message: str) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})

    def _send(self, message: dict[str, object]) -> None:
        if self.write_failed or self._closing_output or self.transport is None:
            return
        try:
            line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(message, separators=(",", ":")).encode("ascii")
        # One write per response: a response is never interleaved with another.
        self.transport.write(line + b"\n")
