"""
An in-memory L{IExecServerChild} for unit tests of the executor's stream multiplexer.

L{FakeExecServerChild} plays a small part of the pinned exec-server on its "stdin": the handshake
(C{initialize}, C{initialized}), C{fs/readFile} from an in-memory file table, the parse error for a
line that is not JSON, the error for an unknown method, and silence for blank lines — with the exact
shapes and messages the real one uses (C{codexgw.executor.child} records them). It ends the way the
real one does: at stdin EOF with status 0; not on SIGTERM; on SIGKILL with 137. A test can also make it
print any line, print on stderr, exit with any status, or ignore stdin EOF (a hung exec-server).

While paused it holds its output, and its exit, until resumed, as a real pipe would. It passes the
same interface tests as L{codexgw.executor.child.ExecServerProcess} (C{tests.executor.test_child}).
"""

from __future__ import annotations

import base64
import json
import signal
import uuid
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from codexgw.executor.child import MAX_LINE_BYTES, IExecServerChild, IExecServerChildReceiver

#: The real exec-server's answer to a line that is not JSON (for a line starting with a non-JSON byte).
PARSE_ERROR = (
    "failed to parse JSON-RPC message from exec-server stdio: expected value at line 1 column 1"
)
#: What the fake's C{initialize} answers in C{environmentInfo} (a subset of the real shape).
ENVIRONMENT_INFO: dict[str, Any] = {
    "shell": {"name": "bash", "path": "/bin/bash"},
    "executorVersion": "0.169.0",
    "platformOs": "linux",
}


@implementer(IExecServerChild)
class FakeExecServerChild:
    """
    One fake exec-server.

    @ivar written: every line written to its stdin, in order.
    @ivar signals: the signals sent to its process group, in order.
    @ivar stdin_closed: whether its stdin was closed.
    @ivar paused: whether reading its output is paused.
    @ivar exit_code: its exit status once it exited (reported or not), else C{None}.
    @ivar exits_on_eof: whether closing stdin makes it exit (C{False}: a hung exec-server).
    @ivar files: the files C{fs/readFile} can read, by C{file://} URI.
    """

    def __init__(
        self,
        receiver: IExecServerChildReceiver,
        pid: int,
        max_line_bytes: int = MAX_LINE_BYTES,
        files: dict[str, bytes] | None = None,
    ) -> None:
        self.receiver = receiver
        self.pid = pid
        self.max_line_bytes = max_line_bytes
        self.files = files if files is not None else {}
        self.written: list[bytes] = []
        self.signals: list[int] = []
        self.stdin_closed = False
        self.paused = False
        self.exit_code: int | None = None
        self.exits_on_eof = True
        self._held: list[Callable[[], None]] = []
        self._overflowed = False
        self._initialize_done = False
        self._initialized = False
        self._reported = False

    # IExecServerChild

    def write_line(self, line: bytes) -> None:
        """
        Take one line on stdin and answer it as the exec-server would.
        """
        if self.stdin_closed or self.exit_code is not None:
            return
        self.written.append(line)
        self._answer(line)

    def close_stdin(self) -> None:
        """
        Close stdin; the fake then exits with 0 unless L{exits_on_eof} is false.
        """
        if self.stdin_closed:
            return
        self.stdin_closed = True
        if self.exits_on_eof:
            self.exit(0)

    def terminate_group(self) -> None:
        """
        Record SIGTERM; like the real exec-server, the fake keeps running.
        """
        if self.exit_code is None:
            self.signals.append(signal.SIGTERM)

    def kill_group(self) -> None:
        """
        Record SIGKILL and exit with 137.
        """
        if self.exit_code is None:
            self.signals.append(signal.SIGKILL)
            self.exit(128 + signal.SIGKILL)

    def pause(self) -> None:
        """
        Hold output (and the exit) from now on.
        """
        self.paused = True

    def resume(self) -> None:
        """
        Deliver what was held, in order.
        """
        self.paused = False
        while self._held and not self.paused:
            self._held.pop(0)()

    # playing the exec-server

    def emit(self, line: bytes) -> None:
        """
        Print one stdout line (a line over the limit is reported as too long, and ends stdout).
        """
        if self.exit_code is not None or self._overflowed:
            return
        if len(line) > self.max_line_bytes:
            self._overflowed = True
            self._deliver(self.receiver.line_too_long)
        else:
            self._deliver(lambda: self.receiver.line_received(line))

    def emit_json(self, message: dict[str, Any]) -> None:
        """
        Print one JSON-RPC message as compact JSON.
        """
        self.emit(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def emit_stderr(self, line: bytes) -> None:
        """
        Print one stderr line.
        """
        if self.exit_code is None:
            self._deliver(lambda: self.receiver.stderr_received(line))

    def exit(self, code: int) -> None:
        """
        Exit with C{code}; the receiver hears of it after everything printed before.
        """
        if self.exit_code is not None:
            return
        self.exit_code = code
        self._deliver(self._report_exit)

    # internals

    def _deliver(self, event: Callable[[], None]) -> None:
        if self.paused or self._held:
            self._held.append(event)
        else:
            event()

    def _report_exit(self) -> None:
        if not self._reported:
            self._reported = True
            assert self.exit_code is not None
            self.receiver.exited(self.exit_code)

    def _answer(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._error(-1, -32600, PARSE_ERROR)
            return
        method = message.get("method")
        request_id = message.get("id")
        raw_params = message.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if request_id is None:
            if method == "initialized" and self._initialize_done:
                self._initialized = True
            return
        if method == "initialize":
            self._initialize(request_id, params)
        elif method == "fs/readFile":
            self._read_file(request_id, params)
        else:
            self._error(request_id, -32601, f"exec-server stub does not implement `{method}` yet")

    def _initialize(self, request_id: object, params: dict[str, Any]) -> None:
        if "clientName" not in params:
            self._error(request_id, -32602, "missing field `clientName`")
        elif self._initialize_done:
            self._error(request_id, -32600, "initialize may only be sent once per connection")
        else:
            self._initialize_done = True
            result = {"sessionId": str(uuid.uuid4()), "environmentInfo": ENVIRONMENT_INFO}
            self.emit_json({"id": request_id, "result": result})

    def _read_file(self, request_id: object, params: dict[str, Any]) -> None:
        path = params.get("path")
        if not isinstance(path, str):
            self._error(request_id, -32602, "missing field `path`")
        elif not path.startswith("file://"):
            # Params are checked before the handshake state, as the real one does.
            self._error(request_id, -32602, "invalid URI: relative URL without a base")
        elif not self._initialize_done:
            self._error(
                request_id, -32600, "client must call initialize before using filesystem methods"
            )
        elif not self._initialized:
            self._error(
                request_id, -32600, "client must send initialized before using filesystem methods"
            )
        elif path not in self.files:
            self._error(request_id, -32004, "No such file or directory (os error 2)")
        else:
            data = base64.b64encode(self.files[path]).decode("ascii")
            self.emit_json({"id": request_id, "result": {"dataBase64": data}})

    def _error(self, request_id: object, code: int, message: str) -> None:
        self.emit_json({"error": {"code": code, "message": message}, "id": request_id})


class FakeExecServerSpawner:
    """
    Makes L{FakeExecServerChild}ren with pids from 1000 on.

    @ivar children: every child made, in order.
    @ivar fail_with: when set, the next spawn raises it (once).
    @ivar live_pids: the pids of the children that have not exited.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.children: list[FakeExecServerChild] = []
        self.fail_with: Exception | None = None
        self.files: dict[str, bytes] = {}

    @property
    def live_pids(self) -> set[int]:
        """
        The pids of the children that have not exited.
        """
        return {child.pid for child in self.children if child.exit_code is None}

    def spawn(self, receiver: IExecServerChildReceiver) -> FakeExecServerChild:
        """
        Make one child reporting to C{receiver}.

        @raise Exception: L{fail_with}, once, when set.
        """
        if self.fail_with is not None:
            failure, self.fail_with = self.fail_with, None
            raise failure
        child = FakeExecServerChild(receiver, 1000 + len(self.children), self.max_line_bytes, self.files)
        self.children.append(child)
        return child
