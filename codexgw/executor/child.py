"""
The exec-server child of one stream: C{codex exec-server --listen stdio} (C{executor.md} §3–§4).

The stream multiplexer never touches a process. It talks to an L{IExecServerChild} — write a line,
close stdin, signal the process group, pause and resume reading — and hears back through an
L{IExecServerChildReceiver}: complete stdout lines, a line over the limit, stderr lines, the exit.
L{ExecServerProcess} is the real child, a C{ProcessProtocol}; L{codexgw.testing.fakechild} holds the
in-memory twin, and both pass the same interface tests (C{tests.executor.test_child}).

How the child becomes its own process group. Twisted's C{spawnProcess} (C{posix_spawn} or fork+exec)
has no hook that runs in the child before C{exec}. The child is therefore started through a two-line
Python trampoline (L{session_leader_argv}) that calls C{os.setsid()} and then C{exec}s codex in the
same process: the pid Twisted tracks is the leader of a new session and process group (pid == pgid ==
sid) before codex runs a single instruction, so before any grandchild can exist. Alternatives were
weighed: C{setsid(1)} is util-linux only and forks when its caller already leads a group (the pid we
hold would then be a process that exits at once); C{usePTY} makes a session too but puts a terminal
between us and JSON-RPC. A new I{session} rather than only a new group also detaches the child from
the executor's controlling terminal, so a Ctrl-C meant for C{twist} never reaches an exec-server
directly: the executor ends its sessions in its own order. The trampoline costs about 10 ms per stream
(the exec-server itself needs about 120 ms to answer C{initialize}).

Ending a child (the ladder of C{executor.md} §4 is run by the multiplexer): the pinned exec-server
exits within milliseconds of stdin EOF and kills its commands first; on SIGTERM it kills its commands
but keeps running until stdin EOF; only SIGKILL leaves its commands behind (they lead sessions of
their own). L{codexgw.executor.proctree} explains how the commands are still accounted for: every
action on the child first records its process tree, and whatever of that tree is alive once the child
is gone is killed.

What the pinned exec-server does on stdio (codex 0.169.0, measured with the binary; these shapes agree
with C{envtools.md} §2):
 - One JSON-RPC message per line, C{\\n}-terminated, compact JSON. Replies carry C{id} and C{result} or
   C{error} and no C{jsonrpc} member; notifications (C{process/output}, C{process/exited},
   C{process/closed}) carry C{method} and C{params}.
 - C{initialize} C{{"clientName":"t"}} → C{{"id":1,"result":{"sessionId":"<uuid>","environmentInfo":{
   "shell":{"name":"bash","path":"/bin/bash"},"executorVersion":"0.169.0","providerId":"sha256:…",
   "cwd":"file:///…","userHomeDir":"file:///<HOME>","platformOs":"linux","prependPathDirs":[…],
   "temporaryDirectories":[],"tempDir":"file:///tmp","capabilities":{…}}}}}; then the notification
   C{initialized}. A second C{initialize} → -32600 C{initialize may only be sent once per connection};
   an fs method before C{initialized} → -32600 C{client must send initialized before using filesystem
   methods}; params are checked before the handshake state (C{process/start} C{{}} before
   C{initialize} → -32602 C{missing field `processId`}).
 - C{process/start} C{{"processId":"p1","argv":["/bin/echo","hi"],"cwd":"file:///tmp","env":{…},
   "tty":false,"pipeStdin":false,"arg0":null}} → C{{"id":2,"result":{"processId":"p1",
   "sandboxType":"none"}}}; the notification C{{"method":"process/output","params":{"processId":"p1",
   "seq":1,"stream":"stdout","chunk":"aGkK"}}} follows at once, then C{process/exited}
   C{{"processId":"p1","seq":2,"exitCode":0,"sandboxDenied":false}} and C{process/closed}
   C{{"processId":"p1","seq":3}}.
 - C{process/read} C{{"processId":"p1","afterSeq":null,"maxBytes":65536,"waitMs":1000}} →
   C{{"chunks":[{"seq":1,"stream":"stdout","chunk":"aGkK"}],"nextSeq":2,"exited":false,
   "exitCode":null,"closed":false,"failure":null,"sandboxDenied":false}}: it returns as soon as one
   chunk is there, so the exit is seen by a later read (C{afterSeq} = C{nextSeq} − 1).
 - C{fs/readFile} C{{"path":"file:///…"}} → C{{"dataBase64":"…"}}: a 5 MiB file answers with one line of
   6 990 544 bytes. A plain path → -32602 C{invalid URI: relative URL without a base}; a missing file →
   -32004 C{No such file or directory (os error 2)}.
 - A line that is not JSON → C{{"error":{"code":-32600,"message":"failed to parse JSON-RPC message from
   exec-server stdio: expected value at line 1 column 1"},"id":-1}}; empty and blank lines are ignored
   (no answer); an unknown method → -32601 C{exec-server stub does not implement `<method>` yet}.
 - Commands run as leaders of their own sessions (pid == pgid == sid), C{tty} true or false.
 - Stdin EOF: it kills every command's process group (also when the group leader already exited) and
   exits with status 0 in about 5–20 ms, dropping requests in progress (a waiting C{process/read} gets
   no answer). SIGTERM: it kills the commands' groups but does not exit while stdin stays open.
 - stderr carries warnings such as C{WARNING: proceeding, even though we could not create PATH
   aliases: …} (a CODEX_HOME under C{/tmp}).

Decisions where the spec is silent:
 - The exit code reported for a child killed by a signal is 128 + the signal number (as shells and the
   exec-server's own C{exitCode} do), so a SIGKILLed child reports C{exec-server exited: 137}.
 - stderr lines are logged up to 16 KiB each; a longer line is logged in pieces of 16 KiB.
 - The child's working directory is the executor's (requests name their own cwd as a URI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from codexgw.executor.proctree import IProcessTable, TreeRecord, sweep

#: Longest stdout line (one JSON-RPC message) relayed, in bytes (C{executor.md} §3).
MAX_LINE_BYTES: Final = 64 << 20
#: Longest stderr line logged in one piece.
MAX_STDERR_LINE: Final = 16 << 10

#: Runs in the child: become a session (and process group) leader, then become codex.
_TRAMPOLINE: Final = "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"


class IExecServerChild(Interface):
    """
    One exec-server child, as the stream multiplexer drives it.
    """

    pid = Attribute("C{int}: the child's pid, which is also its process group and session id.")

    def write_line(line: bytes) -> None:
        """
        Write C{line} and a C{\\n} to the child's stdin (dropped once stdin is closed).
        """

    def close_stdin() -> None:
        """
        Close the child's stdin: the exec-server's signal to end. Idempotent.
        """

    def terminate_group() -> None:
        """
        Send SIGTERM to the child's process group (nothing once the child has exited).
        """

    def kill_group() -> None:
        """
        Send SIGKILL to the child's process group and to every process recorded of its tree (nothing
        once the child has exited).
        """

    def pause() -> None:
        """
        Stop reading the child's output: nothing is delivered until L{resume}.
        """

    def resume() -> None:
        """
        Read the child's output again, first what waited.
        """


class IExecServerChildReceiver(Interface):
    """
    What the multiplexer hears from one child. After L{exited}, nothing more is delivered.
    """

    def line_received(line: bytes) -> None:
        """
        One complete stdout line, without its C{\\n}.
        """

    def line_too_long() -> None:
        """
        A stdout line grew past the limit; nothing more of stdout is delivered.
        """

    def stderr_received(line: bytes) -> None:
        """
        One stderr line (or a piece of a very long one), without its C{\\n}.
        """

    def exited(code: int) -> None:
        """
        The child has ended and all its output was delivered; C{code} is its exit status, or 128 + the
        signal number when a signal ended it.
        """


class LineBuffer:
    """
    Split a byte stream into C{\\n}-terminated lines of at most C{max_line_bytes} bytes.

    Long lines are collected as a list of chunks and joined once, so a line of many MiB costs one copy.

    @ivar overflowed: a line grew past the limit; from then on nothing more is returned.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.overflowed = False
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the lines it completed (without C{\\n}), up to a line over the limit.
        """
        lines: list[bytes] = []
        if self.overflowed:
            return lines
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            if self._parts:
                self._parts.append(piece)
                line = b"".join(self._parts)
                self._parts = []
                self._size = 0
            else:
                line = piece
            if len(line) > self.max_line_bytes:
                self._overflow()
                return lines
            lines.append(line)
            start = end + 1
        if start < len(data):
            self._parts.append(data[start:])
            self._size += len(data) - start
            if self._size > self.max_line_bytes:
                # No need to wait for the end of the line: it is already too long.
                self._overflow()
        return lines

    def _overflow(self) -> None:
        self.overflowed = True
        self._parts = []
        self._size = 0


def _overflowed(buffer: LineBuffer) -> bool:
    # A call, so that the check after feeding is not narrowed away by the one before it.
    return buffer.overflowed


def child_environment(environ: Mapping[str, str], state_dir: Path, token_env: str) -> dict[str, str]:
    """
    The exec-server's environment: the executor's own, minus every C{CXG_*} variable and the variable
    that holds the registration token (whatever its name), with C{CODEX_HOME} and C{HOME} set to the
    state dir (C{executor.md} §3, §5).
    """
    env = {
        name: value
        for name, value in environ.items()
        if not name.startswith("CXG_") and name != token_env
    }
    env["CODEX_HOME"] = str(state_dir)
    env["HOME"] = str(state_dir)
    return env


def session_leader_argv(argv: list[str]) -> list[str]:
    """
    The command line that runs C{argv} (whose first item is an absolute path) as the leader of a new
    session and process group, in the process Twisted spawns (see the module docstring).
    """
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, *argv]


def exit_code(reason: Failure) -> int:
    """
    The exit status a C{processEnded} reason stands for (128 + signal number for a signal).
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.exitCode is not None:
            return int(value.exitCode)
        if value.signal is not None:
            return 128 + int(value.signal)
    return -1


@implementer(IExecServerChild)
class ExecServerProcess(ProcessProtocol):
    """
    The real exec-server child: a C{ProcessProtocol} for one spawned C{codex exec-server}.

    @ivar reaped: fires with the exit status as soon as the process has been reaped, which may be
        before its output was read (tests use it to prove output waits while paused).
    """

    transport: Any  # Twisted's process transport is untyped.

    def __init__(
        self,
        receiver: IExecServerChildReceiver,
        processes: IProcessTable,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.receiver = receiver
        self.pid = 0
        self.reaped: Deferred[int] = Deferred()
        self._processes = processes
        self._stdout = LineBuffer(max_line_bytes)
        self._stderr = b""
        self._stdin_open = True
        self._gone = False
        self._ended = False
        self._record: TreeRecord | None = None

    # IExecServerChild

    def write_line(self, line: bytes) -> None:
        """
        See L{IExecServerChild.write_line}.
        """
        if self._stdin_open and not self._ended:
            # writeSequence: a line of many MiB is not copied to append one byte.
            self.transport.writeSequence([line, b"\n"])

    def close_stdin(self) -> None:
        """
        See L{IExecServerChild.close_stdin}.
        """
        if not self._stdin_open:
            return
        self._stdin_open = False
        self._record_tree()
        if not self._ended:
            self.transport.closeStdin()

    def terminate_group(self) -> None:
        """
        See L{IExecServerChild.terminate_group}.
        """
        self._record_tree()
        self._signal_group(signal.SIGTERM)

    def kill_group(self) -> None:
        """
        See L{IExecServerChild.kill_group}.
        """
        self._record_tree()
        if not self._gone and self._record is not None and self.pid > 1:
            # The exec-server's commands lead sessions of their own: kill them now, while the tree
            # still says whose they are, together with the group.
            sweep(self._record, self._processes)
        self._signal_group(signal.SIGKILL)

    def pause(self) -> None:
        """
        See L{IExecServerChild.pause}.
        """
        if not self._ended:
            self.transport.pauseProducing()

    def resume(self) -> None:
        """
        See L{IExecServerChild.resume}.
        """
        if not self._ended:
            self.transport.resumeProducing()

    # ProcessProtocol

    def connectionMade(self) -> None:
        """
        Learn the pid as soon as the process exists.
        """
        self.pid = int(self.transport.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Split stdout into lines for the receiver; log stderr line by line.
        """
        if childFD == 1:
            self._stdout_received(data)
        elif childFD == 2:
            self._stderr_received(data)

    def processExited(self, reason: Failure) -> None:
        """
        The process was reaped: from now on its pid may belong to someone else, so never signal it.
        """
        self._gone = True
        self.reaped.callback(exit_code(reason))

    def processEnded(self, reason: Failure) -> None:
        """
        The process was reaped and its pipes are closed: sweep what is left of its tree, then report.
        """
        self._gone = True
        self._ended = True
        if self._stderr:
            self.receiver.stderr_received(self._stderr)
            self._stderr = b""
        if self.pid > 1:
            if self._record is None:
                self._record = TreeRecord(self.pid)
            sweep(self._record, self._processes)
        self.receiver.exited(exit_code(reason))

    # internals

    def _stdout_received(self, data: bytes) -> None:
        buffer = self._stdout
        if buffer.overflowed:
            return
        for line in buffer.feed(data):
            self.receiver.line_received(line)
        if _overflowed(buffer):
            self.receiver.line_too_long()

    def _stderr_received(self, data: bytes) -> None:
        *lines, rest = (self._stderr + data).split(b"\n")
        while len(rest) > MAX_STDERR_LINE:
            lines.append(rest[:MAX_STDERR_LINE])
            rest = rest[MAX_STDERR_LINE:]
        self._stderr = rest
        for line in lines:
            for start in range(0, max(len(line), 1), MAX_STDERR_LINE):
                self.receiver.stderr_received(line[start : start + MAX_STDERR_LINE])

    def _record_tree(self) -> None:
        if self._gone or self.pid <= 1:
            return
        if self._record is None:
            self._record = TreeRecord(self.pid)
        self._record.record(self._processes.snapshot())

    def _signal_group(self, signum: int) -> None:
        # pid 0 or 1 would mean our own group or every process we may signal: never.
        if self._gone or self.pid <= 1:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            # No such group yet: the trampoline has not called setsid (the session ended within
            # milliseconds of its start). The process is ours and not reaped, so signal it alone;
            # it has no descendants yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)
        except PermissionError:
            pass


class ExecServerSpawner:
    """
    Starts exec-server children: C{<codex> exec-server --listen stdio}, each the leader of its own
    session and process group, with the environment of L{child_environment}.

    @ivar live_pids: the pids of the children started and not ended yet.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        codex_bin: str,
        env: Mapping[str, str],
        processes: IProcessTable,
        max_line_bytes: int = MAX_LINE_BYTES,
        extra_args: Iterable[str] = (),
    ) -> None:
        """
        @param codex_bin: absolute path of the codex binary.
        @param env: the children's whole environment.
        @param extra_args: more arguments after C{exec-server --listen stdio} (none in production).
        """
        self._reactor = reactor
        self._argv = session_leader_argv([codex_bin, "exec-server", "--listen", "stdio", *extra_args])
        self._env = dict(env)
        self._processes = processes
        self._max_line_bytes = max_line_bytes
        self.live_pids: set[int] = set()

    def spawn(self, receiver: IExecServerChildReceiver) -> ExecServerProcess:
        """
        Start one child reporting to C{receiver}.

        @raise OSError: when the process cannot be started.
        """
        protocol = ExecServerProcess(receiver, self._processes, self._max_line_bytes)
        transport = self._reactor.spawnProcess(
            protocol,
            self._argv[0],
            self._argv,
            env=self._env,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        pid = protocol.pid = int(transport.pid)
        self.live_pids.add(pid)
        # Reaped means the pid may be recycled from now on: it is no longer ours.
        protocol.reaped.addBoth(lambda _: self.live_pids.discard(pid))
        return protocol
