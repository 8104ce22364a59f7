"""
Tests for L{codexgw.executor.child} and L{codexgw.testing.fakechild}: the L{IExecServerChild} contract.

One interface-test mixin, L{ExecServerChildInterfaceTests}, runs against both implementations:
 - L{FakeExecServerChild}, the in-memory twin the multiplexer tests use;
 - L{ExecServerProcess}, the real child: the pinned C{codex exec-server --listen stdio}
   (C{tests.support.codex_binary()}) spawned through L{ExecServerSpawner}.

L{RealChildTests} adds what only a real process has (its own session and group, its environment, the
commands it leaves behind when SIGKILLed); the remaining classes are unit tests without a process.
"""

from __future__ import annotations

import abc
import base64
import fcntl
import json
import os
import signal
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.executor.child import (
    MAX_STDERR_LINE,
    ExecServerProcess,
    ExecServerSpawner,
    IExecServerChild,
    IExecServerChildReceiver,
    LineBuffer,
    child_environment,
    exit_code,
    session_leader_argv,
)
from codexgw.executor.proctree import ProcessInfo, ProcTable
from codexgw.testing.fakechild import FakeExecServerSpawner
from tests.executor.proctools import FakeProcessTable, alive, process_table
from tests.support import codex_binary

if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object

reactor: Any = global_reactor

MIB = 1 << 20
#: Bound of every wait on a real exec-server.
WAIT = 15.0


def request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    """
    One JSON-RPC request as compact JSON.
    """
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


INITIALIZE = request(1, "initialize", {"clientName": "t"})
INITIALIZED = b'{"jsonrpc":"2.0","method":"initialized","params":{}}'


@implementer(IExecServerChildReceiver)
class RecordingChildReceiver:
    """
    Records what a child reports, and lets a test wait until some condition holds.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.stderr: list[bytes] = []
        self.too_long = 0
        self.exits: list[int] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def line_received(self, line: bytes) -> None:
        """
        Record a stdout line.
        """
        self.lines.append(line)
        self._check()

    def line_too_long(self) -> None:
        """
        Record a line over the limit.
        """
        self.too_long += 1
        self._check()

    def stderr_received(self, line: bytes) -> None:
        """
        Record a stderr line.
        """
        self.stderr.append(line)

    def exited(self, code: int) -> None:
        """
        Record the exit.
        """
        self.exits.append(code)
        self._check()

    def replies(self) -> list[dict[str, Any]]:
        """
        The stdout lines parsed, without the exec-server's notifications.
        """
        parsed = [json.loads(line) for line in self.lines]
        return [message for message in parsed if "id" in message]

    def wait(self, condition: Callable[[], bool], what: str) -> Deferred[None]:
        """
        Fire once C{condition} holds (checked after every report), failing after L{WAIT} seconds.
        """
        if condition():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiters.append((condition, waiting))

        def named(failure: Failure) -> Failure:
            self._waiters[:] = [w for w in self._waiters if w[1] is not waiting]
            if failure.value is not None:
                failure.value.args = (f"{what}: not within {WAIT}s",)
            return failure

        return waiting.addTimeout(WAIT, reactor).addErrback(named)

    def _check(self) -> None:
        for waiter in list(self._waiters):
            condition, waiting = waiter
            if condition():
                self._waiters.remove(waiter)
                waiting.callback(None)


class ChildHarness(abc.ABC):
    """
    One child under test.
    """

    child: IExecServerChild
    receiver: RecordingChildReceiver

    @abc.abstractmethod
    def start(self, max_line_bytes: int = 64 * MIB) -> None:
        """
        Start a child reporting to L{receiver}.
        """

    @abc.abstractmethod
    def add_file(self, name: str, data: bytes) -> str:
        """
        Make a file the child can read with C{fs/readFile}; return its C{file://} URI.
        """

    @abc.abstractmethod
    def output_waiting(self) -> Deferred[None]:
        """
        Fire once the child has written output that was not delivered yet.
        """

    @abc.abstractmethod
    def reaped(self) -> Deferred[None]:
        """
        Fire once the child process is gone, whether or not its end was reported.
        """

    async def handshake(self) -> None:
        """
        C{initialize} and C{initialized}.
        """
        self.child.write_line(INITIALIZE)
        await self.receiver.wait(lambda: len(self.receiver.lines) >= 1, "initialize reply")
        self.child.write_line(INITIALIZED)

    @abc.abstractmethod
    def cleanup(self) -> None:
        """
        Make sure the child is gone at the end of the test.
        """


class FakeHarness(ChildHarness):
    """
    A L{FakeExecServerChild}.
    """

    def start(self, max_line_bytes: int = 64 * MIB) -> None:
        """
        See L{ChildHarness.start}.
        """
        self.receiver = RecordingChildReceiver()
        self.spawner = FakeExecServerSpawner(max_line_bytes)
        self.fake = self.spawner.spawn(self.receiver)
        self.child = self.fake

    def add_file(self, name: str, data: bytes) -> str:
        """
        See L{ChildHarness.add_file}: the fake's in-memory file table.
        """
        uri = f"file:///data/{name}"
        self.fake.files[uri] = data
        return uri

    def output_waiting(self) -> Deferred[None]:
        """
        See L{ChildHarness.output_waiting}: the fake holds its output itself.
        """
        return succeed(None)

    def reaped(self) -> Deferred[None]:
        """
        See L{ChildHarness.reaped}: a fake has no process.
        """
        return succeed(None)

    def cleanup(self) -> None:
        """
        See L{ChildHarness.cleanup}.
        """
        self.fake.resume()
        self.fake.kill_group()


class RealHarness(ChildHarness):
    """
    The pinned C{codex exec-server}, spawned as the executor spawns it, with a private state dir.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.directory = Path(case.mktemp()).absolute()
        self.state_dir = self.directory / "state"
        self.state_dir.mkdir(parents=True, mode=0o700)
        self.protocol: ExecServerProcess | None = None

    def start(self, max_line_bytes: int = 64 * MIB) -> None:
        """
        See L{ChildHarness.start}: the environment carries a C{CXG_*} decoy and a token variable
        that the child must not see.
        """
        self.receiver = RecordingChildReceiver()
        environ = {**os.environ, "CXG_SECRET_THING": "s3cret", "MY_TOKEN": "t0ken"}
        spawner = ExecServerSpawner(
            reactor,
            str(codex_binary()),
            child_environment(environ, self.state_dir, "MY_TOKEN"),
            ProcTable(),
            max_line_bytes,
        )
        self.protocol = spawner.spawn(self.receiver)
        self.child = self.protocol
        self.spawner = spawner

    def add_file(self, name: str, data: bytes) -> str:
        """
        See L{ChildHarness.add_file}: a file in the test's directory.
        """
        path = self.directory / name
        path.write_bytes(data)
        return path.absolute().as_uri()

    async def _poll(self, condition: Callable[[], bool], what: str) -> None:
        # Nothing reports these two conditions, so look at them every 10 ms, for at most WAIT.
        for _ in range(int(WAIT / 0.01)):
            if condition():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"{what}: not within {WAIT}s")

    def output_waiting(self) -> Deferred[None]:
        """
        See L{ChildHarness.output_waiting}: bytes readable in the stdout pipe (C{FIONREAD}).
        """
        assert self.protocol is not None
        stdout = self.protocol.transport.pipes[1].fileno()

        def readable() -> bool:
            count = fcntl.ioctl(stdout, termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(count, sys.byteorder) > 0

        return Deferred.fromCoroutine(self._poll(readable, "output in the pipe"))

    def reaped(self) -> Deferred[None]:
        """
        See L{ChildHarness.reaped}.
        """
        assert self.protocol is not None
        done: Deferred[None] = Deferred()
        self.protocol.reaped.addCallback(lambda _: done.callback(None))
        return done.addTimeout(WAIT, reactor)

    def cleanup(self) -> None:
        """
        See L{ChildHarness.cleanup}: kill the child if it still runs.
        """
        if self.protocol is not None and self.receiver.exits == []:
            self.protocol.resume()
            self.protocol.kill_group()


class ExecServerChildInterfaceTests(_MixinBase):
    """
    The L{IExecServerChild} contract; subclasses say which implementation runs it.
    """

    timeout = 60

    def make_harness(self) -> ChildHarness:
        """
        A harness for the implementation under test.
        """
        raise NotImplementedError

    def harness(self, max_line_bytes: int = 64 * MIB) -> ChildHarness:
        """
        A started child, ended at the end of the test.
        """
        h = self.make_harness()
        h.start(max_line_bytes)

        async def end() -> None:
            h.cleanup()
            await h.receiver.wait(lambda: bool(h.receiver.exits), "child exit at cleanup")

        self.addCleanup(lambda: Deferred.fromCoroutine(end()))
        return h

    async def test_provides(self) -> None:
        """
        The child provides L{IExecServerChild} completely, with a positive pid.
        """
        h = self.harness()
        self.assertTrue(verifyObject(IExecServerChild, h.child))
        self.assertGreater(h.child.pid, 1)

    async def test_handshake(self) -> None:
        """
        C{initialize} is answered with one line: C{id} 1, a C{sessionId} and C{environmentInfo}, and
        no C{jsonrpc} member; a second C{initialize} is an error -32600.
        """
        h = self.harness()
        await h.handshake()
        [reply] = h.receiver.replies()
        self.assertEqual(reply["id"], 1)
        self.assertNotIn("jsonrpc", reply)
        self.assertEqual(set(reply["result"]) >= {"sessionId", "environmentInfo"}, True)
        self.assertEqual(reply["result"]["environmentInfo"]["executorVersion"], "0.169.0")
        h.child.write_line(INITIALIZE)
        await h.receiver.wait(lambda: len(h.receiver.replies()) == 2, "second reply")
        self.assertEqual(
            h.receiver.replies()[1],
            {
                "id": 1,
                "error": {"code": -32600, "message": "initialize may only be sent once per connection"},
            },
        )

    async def test_parse_error(self) -> None:
        """
        A line that is not JSON is answered with an error -32600 whose C{id} is -1.
        """
        h = self.harness()
        h.child.write_line(b"not json")
        await h.receiver.wait(lambda: bool(h.receiver.lines), "parse error")
        reply = json.loads(h.receiver.lines[0])
        self.assertEqual((reply["id"], reply["error"]["code"]), (-1, -32600))
        self.assertTrue(
            reply["error"]["message"].startswith(
                "failed to parse JSON-RPC message from exec-server stdio:"
            )
        )

    async def test_blank_lines_and_unknown_method(self) -> None:
        """
        Empty and blank lines get no answer; an unknown method gets -32601 with the exec-server's
        message.
        """
        h = self.harness()
        await h.handshake()
        for line in (b"", b"   "):
            h.child.write_line(line)
        h.child.write_line(request(2, "no/such", {}))
        await h.receiver.wait(lambda: len(h.receiver.lines) >= 2, "unknown method reply")
        self.assertEqual(
            json.loads(h.receiver.lines[1]),
            {
                "error": {
                    "code": -32601,
                    "message": "exec-server stub does not implement `no/such` yet",
                },
                "id": 2,
            },
        )

    async def test_large_line_intact(self) -> None:
        """
        A 5 MiB C{fs/readFile} answer arrives as one line (about 7 MB) that decodes to the file.
        """
        h = self.harness()
        data = os.urandom(5 * MIB)
        uri = h.add_file("big.bin", data)
        await h.handshake()
        h.child.write_line(request(2, "fs/readFile", {"path": uri}))
        await h.receiver.wait(lambda: len(h.receiver.lines) >= 2, "readFile reply")
        line = h.receiver.lines[1]
        self.assertGreater(len(line), 6_900_000)
        reply = json.loads(line)
        self.assertEqual(reply["id"], 2)
        self.assertEqual(base64.b64decode(reply["result"]["dataBase64"]), data)

    async def test_line_too_long(self) -> None:
        """
        A line over the child's limit is reported once as too long and never delivered; lines before
        it were delivered.
        """
        h = self.harness(max_line_bytes=4096)
        uri = h.add_file("eight.bin", b"z" * 8192)
        await h.handshake()
        h.child.write_line(request(2, "fs/readFile", {"path": uri}))
        await h.receiver.wait(lambda: h.receiver.too_long > 0, "too long")
        self.assertEqual(h.receiver.too_long, 1)
        self.assertEqual(len(h.receiver.lines), 1)
        self.assertTrue(all(len(line) <= 4096 for line in h.receiver.lines))

    async def test_close_stdin_exits_zero(self) -> None:
        """
        Closing stdin makes the exec-server exit with status 0; writes afterwards are dropped and a
        second close is harmless.
        """
        h = self.harness()
        await h.handshake()
        h.child.close_stdin()
        h.child.close_stdin()
        h.child.write_line(INITIALIZE)
        await h.receiver.wait(lambda: bool(h.receiver.exits), "exit")
        self.assertEqual(h.receiver.exits, [0])
        self.assertEqual(len(h.receiver.lines), 1)

    async def test_kill_group(self) -> None:
        """
        C{kill_group} ends the child with 137 (128 + SIGKILL); signalling it afterwards is harmless.
        """
        h = self.harness()
        await h.handshake()
        h.child.kill_group()
        await h.receiver.wait(lambda: bool(h.receiver.exits), "exit")
        self.assertEqual(h.receiver.exits, [137])
        h.child.terminate_group()
        h.child.kill_group()
        self.assertEqual(h.receiver.exits, [137])

    async def test_terminate_then_close(self) -> None:
        """
        After C{terminate_group} the exec-server keeps running until its stdin is closed; then it
        exits with 0.
        """
        h = self.harness()
        await h.handshake()
        h.child.terminate_group()
        self.assertEqual(h.receiver.exits, [])
        h.child.close_stdin()
        await h.receiver.wait(lambda: bool(h.receiver.exits), "exit")
        self.assertEqual(h.receiver.exits, [0])

    async def test_pause_holds_output(self) -> None:
        """
        While paused, written output is not delivered; after C{resume} it is, in order.
        """
        h = self.harness()
        h.child.pause()
        h.child.write_line(INITIALIZE)
        await h.output_waiting()
        self.assertEqual(h.receiver.lines, [])
        h.child.resume()
        await h.receiver.wait(lambda: bool(h.receiver.lines), "reply after resume")
        self.assertEqual(h.receiver.replies()[0]["id"], 1)

    async def test_pause_holds_exit(self) -> None:
        """
        While paused, even the exit is not reported (output may still be in the pipe); after
        C{resume} it is.
        """
        h = self.harness()
        await h.handshake()
        h.child.pause()
        h.child.close_stdin()
        await h.reaped()
        self.assertEqual(h.receiver.exits, [])
        h.child.resume()
        await h.receiver.wait(lambda: bool(h.receiver.exits), "exit after resume")
        self.assertEqual(h.receiver.exits, [0])


class FakeChildInterfaceTests(ExecServerChildInterfaceTests, TestCase):
    """
    The contract, on L{FakeExecServerChild}.
    """

    def make_harness(self) -> ChildHarness:
        """
        A fake child.
        """
        return FakeHarness()


class RealChildInterfaceTests(ExecServerChildInterfaceTests, TestCase):
    """
    The contract, on the real pinned exec-server.
    """

    def make_harness(self) -> ChildHarness:
        """
        A real child.
        """
        return RealHarness(self)


class RealChildTests(TestCase):
    """
    What only a real child has: its session, its environment, its commands.
    """

    timeout = 60

    def harness(self) -> RealHarness:
        """
        A started real child, ended at the end of the test.
        """
        h = RealHarness(self)
        h.start()

        async def end() -> None:
            h.cleanup()
            await h.receiver.wait(lambda: bool(h.receiver.exits), "child exit at cleanup")

        self.addCleanup(lambda: Deferred.fromCoroutine(end()))
        return h

    async def test_own_session_and_group(self) -> None:
        """
        The exec-server leads its own session and process group (pid == pgid == sid), none of them
        the test's.
        """
        h = self.harness()
        await h.handshake()
        pid = h.child.pid
        self.assertEqual((os.getpgid(pid), os.getsid(pid)), (pid, pid))
        self.assertNotEqual(os.getsid(0), pid)

    async def test_environment(self) -> None:
        """
        The exec-server's environment has no C{CXG_*} variable and not the token's variable, and
        C{HOME} and C{CODEX_HOME} are the state dir (its C{userHomeDir} says so too).
        """
        h = self.harness()
        await h.handshake()
        raw = Path(f"/proc/{h.child.pid}/environ").read_bytes()
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        self.assertEqual([name for name in env if name.startswith(b"CXG_")], [])
        self.assertNotIn(b"MY_TOKEN", env)
        self.assertNotIn(b"s3cret", raw)
        self.assertEqual(env[b"HOME"], str(h.state_dir).encode())
        self.assertEqual(env[b"CODEX_HOME"], str(h.state_dir).encode())
        info = h.receiver.replies()[0]["result"]["environmentInfo"]
        self.assertEqual(info["userHomeDir"], h.state_dir.as_uri())

    async def test_kill_group_kills_commands(self) -> None:
        """
        Commands the exec-server started lead sessions of their own, so SIGKILL to its group alone
        would leave them running; C{kill_group} kills them too — a background child, and one that
        started yet another session — checked in C{/proc} by pid and start time.
        """
        h = self.harness()
        await h.handshake()
        script = "sleep 1001 & setsid sleep 1002 & sleep 1003"
        h.child.write_line(
            request(
                2,
                "process/start",
                {
                    "processId": "p",
                    "argv": ["/bin/sh", "-c", script],
                    "cwd": "file:///tmp",
                    "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    "tty": False,
                    "pipeStdin": False,
                    "arg0": None,
                },
            )
        )
        await h.receiver.wait(lambda: len(h.receiver.replies()) >= 2, "process/start reply")

        def sleepers() -> list[ProcessInfo]:
            table = process_table()
            return [
                info
                for info in table.values()
                if _cmdline(info.pid).startswith(b"sleep\x00100") and _descends(table, info, h.child.pid)
            ]

        await _eventually(lambda: len(sleepers()) == 3, "three sleeps running")
        commands = sleepers()
        self.assertTrue(all(info.sid != h.child.pid for info in commands))
        h.child.kill_group()
        await h.receiver.wait(lambda: bool(h.receiver.exits), "exit")
        self.assertEqual(h.receiver.exits, [137])
        # SIGKILL is delivered asynchronously: on a busy machine a killed process can still be
        # listed as running for a moment after the signal was sent.
        await _eventually(lambda: not any(alive(info) for info in commands), "every command dead")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descends(table: dict[int, ProcessInfo], info: ProcessInfo, root: int) -> bool:
    seen = 0
    current: ProcessInfo | None = info
    while current is not None and seen < 64:
        if current.ppid == root:
            return True
        current = table.get(current.ppid)
        seen += 1
    return False


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    # Paced look at a condition nothing reports, bounded by WAIT.
    for _ in range(int(WAIT / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{what}: not within {WAIT}s")


# -------------------------------------------------------------------------------------------------
# Unit tests without a process


class LineBufferTests(SynchronousTestCase):
    """
    L{LineBuffer}: lines out of chunks, with a limit.
    """

    def test_lines_across_chunks(self) -> None:
        """
        Lines split anywhere come out whole, without their C{\\n}; an unfinished line waits.
        """
        buffer = LineBuffer(100)
        self.assertEqual(buffer.feed(b'{"a"'), [])
        self.assertEqual(buffer.feed(b':1}\n{"b":2}\n{"c'), [b'{"a":1}', b'{"b":2}'])
        self.assertEqual(buffer.feed(b'"}\n\n'), [b'{"c"}', b""])

    def test_limit(self) -> None:
        """
        A line of exactly the limit passes; one byte more overflows — already while unfinished — and
        nothing is returned afterwards, while lines before it in the same chunk are.
        """
        buffer = LineBuffer(4)
        self.assertEqual(buffer.feed(b"abcd\n"), [b"abcd"])
        self.assertEqual(buffer.feed(b"ok\nabcde"), [b"ok"])
        self.assertTrue(buffer.overflowed)
        self.assertEqual(buffer.feed(b"\nmore\n"), [])
        whole = LineBuffer(4)
        self.assertEqual(whole.feed(b"ab\nabcde\nx\n"), [b"ab"])
        self.assertTrue(whole.overflowed)

    @given(st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=8), st.data())
    @settings(max_examples=100)
    def test_any_chunking(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        However the stream is cut, the same lines come out.
        """
        stream = b"".join(line + b"\n" for line in lines)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        buffer = LineBuffer(1000)
        out: list[bytes] = []
        start = 0
        for cut in [*cuts, len(stream)]:
            out.extend(buffer.feed(stream[start:cut]))
            start = cut
        self.assertEqual(out, lines)


class EnvironmentTests(SynchronousTestCase):
    """
    L{child_environment} and L{session_leader_argv}.
    """

    def test_environment(self) -> None:
        """
        Every C{CXG_*} variable and the token's variable are left out; C{HOME} and C{CODEX_HOME} are
        the state dir; everything else is kept.
        """
        environ = {
            "PATH": "/bin",
            "CXG_EXECUTOR_TOKEN": "t",
            "CXG_ANYTHING": "x",
            "MY_TOKEN": "t2",
            "HOME": "/root",
            "CODEX_HOME": "/elsewhere",
            "LANG": "C.UTF-8",
            "XCXG_KEEP": "1",
        }
        self.assertEqual(
            child_environment(environ, Path("/state"), "MY_TOKEN"),
            {
                "PATH": "/bin",
                "HOME": "/state",
                "CODEX_HOME": "/state",
                "LANG": "C.UTF-8",
                "XCXG_KEEP": "1",
            },
        )

    def test_trampoline(self) -> None:
        """
        The command line runs this interpreter isolated, which calls C{setsid} and then C{exec}s the
        given command with its arguments.
        """
        argv = session_leader_argv(["/x/codex", "exec-server", "--listen", "stdio"])
        self.assertEqual(argv[:3], [sys.executable, "-I", "-S"])
        self.assertEqual(argv[3], "-c")
        self.assertIn("os.setsid()", argv[4])
        self.assertIn("os.execv(sys.argv[1],sys.argv[1:])", argv[4])
        self.assertEqual(argv[5:], ["/x/codex", "exec-server", "--listen", "stdio"])

    def test_exit_codes(self) -> None:
        """
        A normal exit is its status; a signal is 128 + its number.
        """
        self.assertEqual(exit_code(Failure(ProcessDone(0))), 0)
        self.assertEqual(exit_code(Failure(ProcessTerminated(3))), 3)
        self.assertEqual(exit_code(Failure(ProcessTerminated(None, signal.SIGKILL))), 137)
        self.assertEqual(exit_code(Failure(ProcessTerminated(None, signal.SIGTERM))), 143)


class ProcessTransport:
    """
    What L{ExecServerProcess} uses of Twisted's process transport, recorded.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.stdin_closed = False
        self.paused = False

    def writeSequence(self, data: list[bytes]) -> None:
        """
        Record one write.
        """
        self.written.append(b"".join(data))

    def closeStdin(self) -> None:
        """
        Record the close of stdin.
        """
        self.stdin_closed = True

    def pauseProducing(self) -> None:
        """
        Record that reading paused.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        Record that reading resumed.
        """
        self.paused = False


class ProtocolTests(SynchronousTestCase):
    """
    L{ExecServerProcess} driven without a process: a recorded transport and process table (the pid
    is one no process has, and signalling is never reached for it).
    """

    def setUp(self) -> None:
        """
        A protocol on a recorded transport with pid 0 and a 10-byte line limit.
        """
        self.receiver = RecordingChildReceiver()
        self.table = FakeProcessTable(own_pid=100, own_sid=100)
        self.protocol = ExecServerProcess(self.receiver, self.table, max_line_bytes=10)
        self.transport = ProcessTransport(pid=0)
        self.protocol.makeConnection(self.transport)

    def test_stdout_lines(self) -> None:
        """
        stdout is split into lines; a line over the limit is reported once and ends stdout.
        """
        self.protocol.childDataReceived(1, b"ab\ncd")
        self.protocol.childDataReceived(1, b"\n0123456789AB\nzz\n")
        self.protocol.childDataReceived(1, b"more\n")
        self.assertEqual((self.receiver.lines, self.receiver.too_long), ([b"ab", b"cd"], 1))

    def test_stderr_lines(self) -> None:
        """
        stderr is split into lines; a very long one in pieces of 16 KiB; what is left unfinished is
        delivered when the process ends.
        """
        self.protocol.childDataReceived(2, b"warn 1\nwarn")
        self.protocol.childDataReceived(2, b" 2\n" + b"x" * (MAX_STDERR_LINE + 5))
        self.assertEqual(self.receiver.stderr, [b"warn 1", b"warn 2", b"x" * MAX_STDERR_LINE])
        self.protocol.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(self.receiver.stderr[-1], b"x" * 5)
        self.assertEqual(self.receiver.exits, [0])

    def test_write_and_close(self) -> None:
        """
        Lines are written with their C{\\n}; after stdin is closed, or the process ended, nothing is
        written and nothing is signalled (pid 0 is never signalled).
        """
        self.protocol.write_line(b"{}")
        self.protocol.close_stdin()
        self.protocol.write_line(b"{}")
        self.protocol.terminate_group()
        self.protocol.kill_group()
        self.assertEqual((self.transport.written, self.transport.stdin_closed), ([b"{}\n"], True))
        self.assertEqual(self.table.killed, [])

    def test_pause_resume(self) -> None:
        """
        C{pause} and C{resume} stop and restart reading the pipes; after the end they do nothing.
        """
        self.protocol.pause()
        self.assertTrue(self.transport.paused)
        self.protocol.resume()
        self.assertFalse(self.transport.paused)
        self.protocol.processEnded(Failure(ProcessTerminated(None, signal.SIGKILL)))
        self.protocol.pause()
        self.assertFalse(self.transport.paused)
        self.assertEqual(self.receiver.exits, [137])


class SpawnerTests(TestCase):
    """
    L{ExecServerSpawner} with a real (tiny) process.
    """

    timeout = 30

    async def test_live_pids(self) -> None:
        """
        A spawned child is in C{live_pids} until it has been reaped.
        """
        receiver = RecordingChildReceiver()
        # /bin/sh as "codex": it is asked to run a script called exec-server, which does not exist.
        spawner = ExecServerSpawner(reactor, "/bin/sh", {"PATH": "/bin"}, ProcTable())
        child = spawner.spawn(receiver)
        self.assertEqual(spawner.live_pids, {child.pid})
        await receiver.wait(lambda: bool(receiver.exits), "exit")
        self.assertNotEqual(receiver.exits, [0])
        self.assertEqual(spawner.live_pids, set())
