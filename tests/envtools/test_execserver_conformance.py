"""
The exec-server protocol of C{envtools.md} §2, checked against the real C{codex exec-server --listen
stdio} (pinned 0.169.0) and against L{codexgw.testing.fakeexecserver.FakeExecServer} by one suite
(§10 criteria 1 and 2).

L{ExecServerConformanceMixin} talks to an exec-server through an L{ExecServerStream}: JSON-RPC
messages written as lines, replies matched by id, notifications and id C{-1} errors recorded. Two
cases run it:
 - L{RealExecServerTests}: the binary of C{tests.support.codex_binary()}, spawned as the executor
   spawns it (its own session and process group) with an environment of only C{PATH} and fresh
   C{HOME} and C{CODEX_HOME} directories; every wait is bounded, and the child is ended (stdin EOF,
   then SIGKILL of its group) at cleanup.
 - L{FakeExecServerTests}: the fake on a L{Clock}. Its stream drives the clock to the next delayed
   call whenever the test waits for a reply, so the same timings (bursts 0.3 s apart, a read waiting
   1 s) run at once and deterministically.

Processes: the real exec-server runs real programs; the fake plays built-in C{/bin/echo}, C{cat} and
C{sleep}, and the case scripts the three shell commands the suite uses (L{BURSTS}, L{GRANDCHILD},
L{FLOOD}) with the same output and timing. The filesystem checks run on a temporary directory of the
local filesystem for both (the fake's fs methods act on the local filesystem).

The remaining classes are unit tests of the fake alone: its base64 decoder and URI parser against
values measured on the binary, its scripting and test controls, and L{FakeExecServerClient}.
"""

from __future__ import annotations

import abc
import base64
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.envtools.interfaces import CallError, IExecServerClient
from codexgw.executor.child import ExecServerProcess, ExecServerSpawner, IExecServerChildReceiver
from codexgw.executor.proctree import ProcTable
from codexgw.testing import fakeexecserver
from codexgw.testing.fakeexecserver import (
    Base64Error,
    FakeExecServer,
    FakeExecServerClient,
    FakeProcess,
    UriError,
    decode_base64,
    parse_path_uri,
)
from tests.support import codex_binary

if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object

reactor: Any = global_reactor

#: Bound of every wait on a real exec-server, in seconds.
WAIT = 15.0
#: The default environment of envtools' processes (§7.1).
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin"}
#: Output in three bursts 0.3 s apart.
BURSTS = ["sh", "-c", "printf a; sleep 0.3; printf b; sleep 0.3; printf c"]
#: A process that exits while a grandchild keeps its output open and writes later.
GRANDCHILD = ["sh", "-c", "echo top; (sleep 0.5; echo late) &"]
#: 3000000 bytes at once: more than the exec-server retains.
FLOOD = ["sh", "-c", "head -c 3000000 /dev/zero"]
#: A process that writes nothing for longer than any test runs.
SILENT = ["sleep", "30"]
#: What the real exec-server's reads are made of (the pipe reads it does, at most).
FLOOD_CHUNK = 8192


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _ReplyRouter:
    """
    Parses the exec-server's lines: replies fire the request waiting for their id; everything is
    recorded in arrival order with the time it arrived.
    """

    def __init__(self, now: Any) -> None:
        self._now = now
        self.pending: dict[Any, Deferred[dict[str, Any]]] = {}
        self.replies: list[dict[str, Any]] = []
        self.arrivals: dict[Any, float] = {}
        self.notifications: list[dict[str, Any]] = []
        self.orphans: list[dict[str, Any]] = []

    def line(self, data: bytes) -> None:
        message = json.loads(data)
        if "id" not in message:
            self.notifications.append(message)
            return
        self.replies.append(message)
        self.arrivals[message["id"]] = self._now()
        waiting = self.pending.pop(message["id"], None)
        if waiting is None:
            self.orphans.append(message)
        else:
            waiting.callback(message)


class ExecServerStream(abc.ABC):
    """
    One connection to an exec-server under test.
    """

    router: _ReplyRouter

    def __init__(self) -> None:
        self._next_id = 1

    @abc.abstractmethod
    def send(self, line: bytes) -> None:
        """
        Write one line (without its line end).
        """

    @abc.abstractmethod
    def wait(self, waiting: Deferred[Any]) -> Deferred[Any]:
        """
        Fire with C{waiting}'s result once it has fired, within a bound.
        """

    @abc.abstractmethod
    def now(self) -> float:
        """
        The exec-server's time, in seconds.
        """

    @abc.abstractmethod
    def exited(self) -> Deferred[int]:
        """
        Fire with the exec-server's exit status once it has ended (bounded by L{wait}).
        """

    @abc.abstractmethod
    async def exited_within(self, seconds: float) -> bool:
        """
        Whether the exec-server has exited, waiting at most C{seconds} for it.
        """

    @abc.abstractmethod
    async def end(self) -> None:
        """
        End the exec-server (stdin EOF) and everything it started.
        """

    def notify(self, method: str, params: Any = None) -> None:
        """
        Send a notification.
        """
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def request(
        self, method: str, params: Any = ..., request_id: Any = None
    ) -> Deferred[dict[str, Any]]:
        """
        Send a request (C{params} left out when C{...}); fire with its reply object, without
        waiting for it (see L{wait}).
        """
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not ...:
            message["params"] = params
        reply: Deferred[dict[str, Any]] = Deferred()
        self.router.pending[request_id] = reply
        self.send(json.dumps(message, separators=(",", ":")).encode("utf-8"))
        return reply

    async def call(self, method: str, params: Any = ...) -> dict[str, Any]:
        """
        Send a request and wait for its reply object.
        """
        reply: dict[str, Any] = await self.wait(self.request(method, params))
        return reply

    async def result(self, method: str, params: Any = ...) -> Any:
        """
        Send a request and return its C{result}, failing the test on an error reply.
        """
        reply = await self.call(method, params)
        if "result" not in reply:
            raise AssertionError(f"{method} {params!r}: {reply}")
        return reply["result"]

    async def handshake(self) -> None:
        """
        C{initialize} and C{initialized}.
        """
        await self.result("initialize", {"clientName": "conformance"})
        self.notify("initialized", {})


class _ExitWatch:
    """
    Fires every waiter with the exec-server's exit status, also those that come after the exit.
    """

    def __init__(self) -> None:
        self.code: int | None = None
        self._waiters: list[Deferred[int]] = []

    def exited(self, code: int) -> None:
        self.code = code
        waiters, self._waiters = self._waiters, []
        for waiting in waiters:
            waiting.callback(code)

    def watch(self) -> Deferred[int]:
        if self.code is not None:
            return succeed(self.code)
        waiting: Deferred[int] = Deferred()
        self._waiters.append(waiting)
        return waiting


@implementer(IExecServerChildReceiver)
class _Recorder:
    """
    The receiver of a real child: lines go to the router, the exit to an L{_ExitWatch}.
    """

    def __init__(self, router: _ReplyRouter) -> None:
        self.router = router
        self.exit = _ExitWatch()

    def line_received(self, line: bytes) -> None:
        """
        A stdout line: a message of the exec-server.
        """
        self.router.line(line)

    def line_too_long(self) -> None:
        """
        Never expected.
        """
        raise AssertionError("the exec-server wrote a line over 64 MiB")

    def stderr_received(self, line: bytes) -> None:
        """
        Warnings; not checked.
        """

    def exited(self, code: int) -> None:
        """
        The child has ended.
        """
        self.exit.exited(code)


class RealStream(ExecServerStream):
    """
    The real exec-server as a child process.
    """

    def __init__(self, case: TestCase) -> None:
        super().__init__()
        home = Path(case.mktemp()).absolute()
        codex_home = home / "codex-home"
        codex_home.mkdir(parents=True, mode=0o700)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        env["CODEX_HOME"] = str(codex_home)
        self.router = _ReplyRouter(reactor.seconds)
        self._recorder = _Recorder(self.router)
        spawner = ExecServerSpawner(reactor, str(codex_binary()), env, ProcTable())
        self._child: ExecServerProcess = spawner.spawn(self._recorder)

    def send(self, line: bytes) -> None:
        """
        See L{ExecServerStream.send}.
        """
        self._child.write_line(line)

    def wait(self, waiting: Deferred[Any]) -> Deferred[Any]:
        """
        See L{ExecServerStream.wait}: at most L{WAIT} seconds of the real reactor.
        """
        return waiting.addTimeout(WAIT, reactor)

    def now(self) -> float:
        """
        See L{ExecServerStream.now}.
        """
        return float(reactor.seconds())

    def exited(self) -> Deferred[int]:
        """
        See L{ExecServerStream.exited}.
        """
        return self.wait(self._recorder.exit.watch())

    async def exited_within(self, seconds: float) -> bool:
        """
        See L{ExecServerStream.exited_within}.
        """
        try:
            await self._recorder.exit.watch().addTimeout(seconds, reactor)
        except DeferredTimeout:
            return False
        return True

    async def end(self) -> None:
        """
        See L{ExecServerStream.end}: stdin EOF (the exec-server kills its processes and exits);
        SIGKILL of its group and tree if it has not exited within L{WAIT}.
        """
        if self._recorder.exit.code is not None:
            return
        self._child.close_stdin()
        try:
            await self.exited()
        except Exception:
            self._child.kill_group()
            await self.exited()


class FakeStream(ExecServerStream):
    """
    A L{FakeExecServer} on a L{Clock}, with the suite's shell commands scripted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.router = _ReplyRouter(self.clock.seconds)
        self.server = FakeExecServer(self.clock, on_reply=self.router.line)
        # The suite waits 1000 ms on purpose (criterion 2).
        self.server.wait_limit_ms = None
        self._exit = _ExitWatch()
        self.server.on_exit = lambda: self._exit.exited(0)
        self.server.script_process(
            BURSTS, [("stdout", b"a"), ("stdout", b"b"), ("stdout", b"c")], 0, interval=0.3
        )

        async def grandchild(process: FakeProcess) -> None:
            process.output(b"top\n")
            process.exit(0, close=False)
            await self.clock_sleep(0.5)
            process.output(b"late\n")
            process.close_output()

        self.server.add_program(GRANDCHILD, grandchild)

        def flood(process: FakeProcess) -> None:
            left = 3000000
            while left:
                size = min(FLOOD_CHUNK, left)
                process.output(b"\0" * size)
                left -= size
            process.exit(0)

        self.server.add_program(FLOOD, flood)

    def clock_sleep(self, seconds: float) -> Deferred[None]:
        """
        Fire after C{seconds} of the fake clock (outliving the process that waits).
        """
        sleeping: Deferred[None] = Deferred()
        self.clock.callLater(seconds, sleeping.callback, None)
        return sleeping

    def send(self, line: bytes) -> None:
        """
        See L{ExecServerStream.send}.
        """
        self.server.handle(line)

    def wait(self, waiting: Deferred[Any]) -> Deferred[Any]:
        """
        See L{ExecServerStream.wait}: advance the clock to each next delayed call until
        C{waiting} fires; fail if nothing is left that could fire it.
        """
        fired: list[bool] = []

        def mark(result: object) -> object:
            fired.append(True)
            return result

        waiting.addBoth(mark)
        for _ in range(100000):
            if fired:
                return waiting
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            step = min(call.getTime() for call in calls) - self.clock.seconds()
            self.clock.advance(max(step, 0))
        if fired:
            return waiting
        waiting.cancel()
        return waiting

    def now(self) -> float:
        """
        See L{ExecServerStream.now}.
        """
        return float(self.clock.seconds())

    def exited(self) -> Deferred[int]:
        """
        See L{ExecServerStream.exited}.
        """
        return self.wait(self._exit.watch())

    async def exited_within(self, seconds: float) -> bool:
        """
        See L{ExecServerStream.exited_within}: the fake exits synchronously.
        """
        return self._exit.code is not None

    async def end(self) -> None:
        """
        See L{ExecServerStream.end}.
        """
        self.server.close()


class ExecServerConformanceMixin(_MixinBase):
    """
    §2 as the pinned exec-server implements it; subclasses say which exec-server runs it.
    """

    timeout = 60

    def make_stream(self) -> ExecServerStream:
        """
        A new connection to the exec-server under test.
        """
        raise NotImplementedError

    def stream(self) -> ExecServerStream:
        """
        A new connection, ended at cleanup.
        """
        stream = self.make_stream()
        self.addCleanup(lambda: Deferred.fromCoroutine(_end(stream)))
        return stream

    async def ready(self) -> ExecServerStream:
        """
        A new connection after the handshake.
        """
        stream = self.stream()
        await stream.handshake()
        return stream

    def directory(self) -> Path:
        """
        A fresh directory of the local filesystem.
        """
        path = Path(self.mktemp()).absolute()
        path.mkdir(parents=True)
        return path

    async def start(
        self, stream: ExecServerStream, process_id: str, argv: list[str], **fields: Any
    ) -> dict[str, Any]:
        """
        C{process/start} with all seven fields (envtools' defaults unless given); its reply object.
        """
        params: dict[str, Any] = {
            "processId": process_id,
            "argv": argv,
            "cwd": "file:///tmp",
            "env": ENV,
            "tty": False,
            "pipeStdin": False,
            "arg0": None,
        }
        params.update(fields)
        return await stream.call("process/start", params)

    async def read_to_end(
        self, stream: ExecServerStream, process_id: str, max_bytes: int = 65536
    ) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        """
        Read with the polling rule (C{afterSeq} null, then C{nextSeq − 1}; C{waitMs} 250) until the
        process is closed. Return every chunk, the last result and the number of reads.

        Not "until exited and a read returned no chunk": the real exec-server may number the exit
        event before output still in the pipe, and a read then returns at once with C{exited} and
        no chunk although output follows (seen with C{echo hi} and the bursts).
        """
        after: int | None = None
        chunks: list[dict[str, Any]] = []
        for reads in range(1, 400):
            result = await stream.result(
                "process/read",
                {"processId": process_id, "afterSeq": after, "maxBytes": max_bytes, "waitMs": 250},
            )
            chunks.extend(result["chunks"])
            after = result["nextSeq"] - 1
            if result["closed"]:
                return chunks, result, reads
        raise AssertionError(f"{process_id}: still running after 400 reads")

    def assertError(self, reply: dict[str, Any], code: int, message: str) -> None:
        """
        C{reply} is the error C{code} C{message}, without a C{jsonrpc} member.
        """
        self.assertEqual(reply.get("error"), {"code": code, "message": message}, reply)
        self.assertNotIn("jsonrpc", reply)
        self.assertNotIn("result", reply)

    # -- handshake -----------------------------------------------------------------------------

    async def test_handshake(self) -> None:
        """
        Process and fs methods before C{initialize} and before C{initialized} are -32600 with their
        texts; params are checked first; C{initialize} needs C{clientName} and answers a
        C{sessionId} and C{environmentInfo} without C{jsonrpc}; a second one is refused; after
        C{initialized} the methods work.
        """
        stream = self.stream()
        read = {"processId": "p", "afterSeq": None, "maxBytes": 1, "waitMs": 0}
        path = {"path": "file:///tmp"}
        self.assertError(
            await stream.call("process/read", read),
            -32600,
            "client must call initialize before using exec methods",
        )
        self.assertError(
            await stream.call("fs/getMetadata", path),
            -32600,
            "client must call initialize before using filesystem methods",
        )
        self.assertError(await stream.call("process/start", {}), -32602, "missing field `processId`")
        self.assertError(await stream.call("initialize", {}), -32602, "missing field `clientName`")
        reply = await stream.call("initialize", {"clientName": "codex-env-mcp"})
        self.assertEqual(list(reply), ["id", "result"])
        self.assertEqual(reply["id"], 5)
        result = reply["result"]
        self.assertEqual(str(uuid.UUID(result["sessionId"])), result["sessionId"])
        info = result["environmentInfo"]
        self.assertEqual(info["executorVersion"], "0.169.0")
        self.assertEqual(info["platformOs"], "linux")
        self.assertTrue(info["cwd"].startswith("file:///"))
        self.assertIsInstance(info["capabilities"], dict)
        self.assertError(
            await stream.call("process/read", read),
            -32600,
            "client must send initialized before using exec methods",
        )
        self.assertError(
            await stream.call("fs/getMetadata", path),
            -32600,
            "client must send initialized before using filesystem methods",
        )
        self.assertError(
            await stream.call("initialize", {"clientName": "again"}),
            -32600,
            "initialize may only be sent once per connection",
        )
        stream.notify("initialized", {})
        self.assertTrue((await stream.result("fs/getMetadata", path))["isDirectory"])
        self.assertError(
            await stream.call("initialize", {"clientName": "again"}),
            -32600,
            "initialize may only be sent once per connection",
        )
        self.assertEqual(stream.router.orphans, [])

    async def test_envelopes(self) -> None:
        """
        An unknown method is -32601; a string id is echoed; a line that is not JSON, or not a
        JSON-RPC object, is answered with id -1; blank lines are not answered.
        """
        stream = await self.ready()
        self.assertError(
            await stream.call("fs/nosuch", {}),
            -32601,
            "exec-server stub does not implement `fs/nosuch` yet",
        )
        reply = await stream.wait(stream.request("nosuch", {}, request_id="abc"))
        self.assertEqual(reply["id"], "abc")
        prefix = "failed to parse JSON-RPC message from exec-server stdio: "
        for line, detail in [
            (b"garbage", "expected value at line 1 column 1"),
            (b'{"id":10,"method":"nosuch"', "EOF while parsing an object at line 1 column 26"),
            (b"nul", "EOF while parsing a value at line 1 column 3"),
            (b'{"id":15,"method":"x"}  {"id":16}', "trailing characters at line 1 column 25"),
            (b"[1,2]", "expected a JSON-RPC object"),
            (b'{"id":3}', "missing field `error`"),
            (b'{"id":null,"method":"x"}', "data did not match any variant of untagged enum RequestId"),
        ]:
            stream.send(b"   ")
            stream.send(line)
            # The reply to the request sent behind it proves the line was answered before it.
            await stream.call("nosuch", {})
            parse_error = stream.router.orphans.pop()
            self.assertEqual(
                parse_error, {"error": {"code": -32600, "message": prefix + detail}, "id": -1}
            )
        self.assertEqual(stream.router.orphans, [])

    async def test_stray_notification_ends_it(self) -> None:
        """
        After a notification other than C{initialized} the exec-server answers nothing more and
        exits with status 0 the next time it reads its stdin (here: blank lines, sent until it
        has exited).
        """
        stream = await self.ready()
        stream.notify("nosuch", {})
        unanswered = stream.request("fs/getMetadata", {"path": "file:///"})
        for _ in range(50):
            stream.send(b"")
            if await stream.exited_within(0.2):
                break
        self.assertEqual(await stream.exited(), 0)
        self.assertFalse(unanswered.called)
        self.assertEqual(stream.router.replies[1:], [])

    # -- processes ------------------------------------------------------------------------------

    async def test_echo(self) -> None:
        """
        C{/bin/echo hi} → C{{"processId","sandboxType":"none"}}, one chunk C{aGkK} on stdout, exit
        code 0. The chunk, the exit event and the close event take seqs 1 to 3 (the real
        exec-server sometimes numbers the exit before the chunk), so an empty read after them
        reports C{nextSeq} 4.
        """
        stream = await self.ready()
        reply = await self.start(stream, "echo-1", ["/bin/echo", "hi"])
        self.assertEqual(
            reply, {"id": reply["id"], "result": {"processId": "echo-1", "sandboxType": "none"}}
        )
        chunks, last, _ = await self.read_to_end(stream, "echo-1")
        [chunk] = chunks
        self.assertEqual((chunk["stream"], chunk["chunk"]), ("stdout", "aGkK"))
        self.assertIn(chunk["seq"], (1, 2))
        self.assertEqual(
            {k: last[k] for k in ("exited", "exitCode", "failure", "sandboxDenied")},
            {"exited": True, "exitCode": 0, "failure": None, "sandboxDenied": False},
        )
        later = await stream.result(
            "process/read", {"processId": "echo-1", "afterSeq": 3, "maxBytes": 65536, "waitMs": 250}
        )
        self.assertEqual(
            later,
            {
                "chunks": [],
                "nextSeq": 4,
                "exited": True,
                "exitCode": 0,
                "closed": True,
                "failure": None,
                "sandboxDenied": False,
            },
        )
        again = await stream.result(
            "process/read", {"processId": "echo-1", "afterSeq": 0, "maxBytes": 0, "waitMs": 0}
        )
        self.assertEqual(again["chunks"], chunks)
        self.assertEqual(again["nextSeq"], chunk["seq"] + 1)

    async def test_bursts(self) -> None:
        """
        Output in three bursts, read with the polling rule, arrives once each, in order: seqs 1,
        2, then 3 (or 4 when the exit event was numbered first).
        """
        stream = await self.ready()
        await self.start(stream, "bursts", BURSTS)
        chunks, last, reads = await self.read_to_end(stream, "bursts")
        self.assertEqual(
            [(c["stream"], base64.b64decode(c["chunk"])) for c in chunks],
            [("stdout", b"a"), ("stdout", b"b"), ("stdout", b"c")],
        )
        self.assertEqual([c["seq"] for c in chunks[:2]], [1, 2])
        self.assertIn(chunks[2]["seq"], (3, 4))
        self.assertGreater(reads, 2)
        self.assertEqual(last["exitCode"], 0)
        whole = await stream.result("process/read", {"processId": "bursts", "afterSeq": None})
        self.assertEqual(whole["chunks"], chunks)
        sliced = await stream.result(
            "process/read", {"processId": "bursts", "afterSeq": 0, "maxBytes": 2, "waitMs": 0}
        )
        self.assertEqual(sliced["chunks"], chunks[:2])
        self.assertEqual(sliced["nextSeq"], 3)

    async def test_empty_read(self) -> None:
        """
        A silent process: a read with C{waitMs} 0 returns at once, no chunk, C{nextSeq} 1.
        """
        stream = await self.ready()
        await self.start(stream, "silent", SILENT)
        result = await stream.result(
            "process/read", {"processId": "silent", "afterSeq": None, "maxBytes": 65536, "waitMs": 0}
        )
        self.assertEqual(
            result,
            {
                "chunks": [],
                "nextSeq": 1,
                "exited": False,
                "exitCode": None,
                "closed": False,
                "failure": None,
                "sandboxDenied": False,
            },
        )

    async def test_write(self) -> None:
        """
        C{process/write}: a missing C{writeId} is -32602, an empty one too; a repeated C{writeId}
        is C{accepted} and written once; a process without C{pipeStdin} answers C{stdinClosed}; an
        unknown id C{unknownProcess}; invalid base64 is -32602 with the decoder's text.
        """
        stream = await self.ready()
        await self.start(stream, "cat", ["cat"], pipeStdin=True)
        await self.start(stream, "silent", SILENT)

        def write(process_id: str, data: bytes, write_id: str) -> Any:
            params = {"processId": process_id, "chunk": _b64(data), "writeId": write_id}
            return stream.call("process/write", params)

        self.assertError(
            await stream.call("process/write", {"processId": "cat", "chunk": _b64(b"x")}),
            -32602,
            "missing field `writeId`",
        )
        self.assertError(await write("cat", b"x", ""), -32602, "writeId must not be empty")
        self.assertError(
            await stream.call("process/write", {"processId": "cat", "chunk": "!!", "writeId": "w"}),
            -32602,
            "Invalid symbol 33, offset 0.",
        )
        self.assertEqual((await write("cat", b"one\n", "w1"))["result"], {"status": "accepted"})
        self.assertEqual((await write("cat", b"TWICE\n", "w1"))["result"], {"status": "accepted"})
        self.assertEqual((await write("cat", b"two\n", "w2"))["result"], {"status": "accepted"})
        self.assertEqual((await write("silent", b"x", "w3"))["result"], {"status": "stdinClosed"})
        self.assertEqual((await write("nope", b"x", "w4"))["result"], {"status": "unknownProcess"})
        received = b""
        after: int | None = None
        for _ in range(40):
            result = await stream.result(
                "process/read", {"processId": "cat", "afterSeq": after, "maxBytes": 65536, "waitMs": 250}
            )
            received += b"".join(base64.b64decode(c["chunk"]) for c in result["chunks"])
            after = result["nextSeq"] - 1
            if received == b"one\ntwo\n":
                break
        self.assertEqual(received, b"one\ntwo\n")

    async def test_terminate(self) -> None:
        """
        C{process/terminate} of a running process answers C{running} true; reads then report exit
        code 137 and closed; a second terminate, or one of an unknown id, answers C{running} false;
        a write to the killed process fails with -32603.
        """
        stream = await self.ready()
        await self.start(stream, "cat", ["cat"], pipeStdin=True)
        self.assertEqual(
            await stream.result("process/terminate", {"processId": "cat"}), {"running": True}
        )
        _, last, _ = await self.read_to_end(stream, "cat")
        self.assertEqual((last["exited"], last["exitCode"], last["closed"]), (True, 137, True))
        self.assertEqual(
            await stream.result("process/terminate", {"processId": "cat"}), {"running": False}
        )
        self.assertEqual(
            await stream.result("process/terminate", {"processId": "x"}), {"running": False}
        )
        self.assertError(
            await stream.call(
                "process/write", {"processId": "cat", "chunk": _b64(b"x"), "writeId": "late"}
            ),
            -32603,
            "failed to write to process stdin",
        )

    async def test_start_errors(self) -> None:
        """
        A process id stays taken (also C{""}); an unknown id is -32600 for reads; an empty argv,
        a missing field and a plain-path cwd are -32602; a missing cwd or program is -32603 with
        the OS text and leaves no process.
        """
        stream = await self.ready()
        await self.start(stream, "", ["/bin/echo", "hi"])
        self.assertError(
            await self.start(stream, "", ["/bin/echo", "hi"]), -32600, "process  already exists"
        )
        self.assertError(
            await stream.call("process/read", {"processId": "nope"}), -32600, "unknown process id nope"
        )
        self.assertError(await self.start(stream, "e", []), -32602, "argv must not be empty")
        self.assertError(
            await self.start(stream, "e", ["true"], cwd="/tmp"),
            -32602,
            "invalid URI: relative URL without a base",
        )
        self.assertError(
            await self.start(stream, "e", ["true"], cwd="file://elsewhere/tmp"),
            -32602,
            "cwd URI `file://elsewhere/tmp` is not valid on this exec-server host: "
            "'file://elsewhere/tmp' is invalid on 'linux'",
        )
        self.assertError(
            await stream.call("process/start", {"processId": "e", "argv": ["true"], "cwd": "file:///"}),
            -32602,
            "missing field `env`",
        )
        self.assertError(
            await self.start(stream, "e", ["true"], tty="yes"),
            -32602,
            'invalid type: string "yes", expected a boolean',
        )
        missing = self.directory() / "missing"
        self.assertError(
            await self.start(stream, "e", ["true"], cwd=missing.as_uri()),
            -32603,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await self.start(stream, "e", ["no-such-program-xyz"]),
            -32603,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await stream.call("process/read", {"processId": "e"}), -32600, "unknown process id e"
        )

    async def test_tty(self) -> None:
        """
        With C{tty} the output is one C{pty} stream with CRLF line ends.
        """
        stream = await self.ready()
        await self.start(stream, "t", ["/bin/echo", "hi"], tty=True)
        chunks, last, _ = await self.read_to_end(stream, "t")
        self.assertEqual({c["stream"] for c in chunks}, {"pty"})
        self.assertEqual(b"".join(base64.b64decode(c["chunk"]) for c in chunks), b"hi\r\n")
        self.assertEqual(last["exitCode"], 0)

    async def test_grandchild(self) -> None:
        """
        A grandchild holding the output keeps C{closed} false after C{exited}; its later output
        still arrives, then the process is closed.
        """
        stream = await self.ready()
        await self.start(stream, "g", GRANDCHILD)
        after: int | None = None
        seen_open_exit = False
        chunks: list[dict[str, Any]] = []
        for _ in range(40):
            result = await stream.result(
                "process/read", {"processId": "g", "afterSeq": after, "maxBytes": 65536, "waitMs": 250}
            )
            seen_open_exit = seen_open_exit or (result["exited"] and not result["closed"])
            chunks.extend(result["chunks"])
            after = result["nextSeq"] - 1
            if result["closed"]:
                break
        self.assertTrue(seen_open_exit)
        self.assertEqual([c["chunk"] for c in chunks], [_b64(b"top\n"), _b64(b"late\n")])
        # "top" and the exit event took 1 and 2 (in either order), "late" 3, the close event 4.
        self.assertEqual(chunks[1]["seq"], 3)

    async def test_retention(self) -> None:
        """
        A child writing faster than the client reads loses its oldest chunks: after 3000000 bytes
        the retained chunks hold at most 1 MiB (within one pipe read of it) and start above seq 1.
        """
        stream = await self.ready()
        await self.start(stream, "flood", FLOOD)
        for _ in range(80):
            state = await stream.result(
                "process/read", {"processId": "flood", "afterSeq": 1 << 40, "maxBytes": 0, "waitMs": 250}
            )
            if state["closed"]:
                break
        whole = await stream.result("process/read", {"processId": "flood", "afterSeq": None})
        sizes = [len(base64.b64decode(c["chunk"])) for c in whole["chunks"]]
        self.assertLessEqual(sum(sizes), 1 << 20)
        self.assertGreater(sum(sizes), (1 << 20) - FLOOD_CHUNK)
        self.assertGreater(whole["chunks"][0]["seq"], 1)
        self.assertLess(whole["chunks"][-1]["seq"], state["nextSeq"] - 1)
        self.assertEqual(whole["exitCode"], 0)

    async def test_answered_in_order(self) -> None:
        """
        Criterion 2: an C{fs/getMetadata} sent behind a C{process/read} with C{waitMs} 1000 on a
        silent process is answered only after that read, about 1 s later.
        """
        stream = await self.ready()
        await self.start(stream, "silent", SILENT)
        sent = stream.now()
        read = stream.request(
            "process/read", {"processId": "silent", "afterSeq": None, "maxBytes": 65536, "waitMs": 1000}
        )
        metadata = stream.request("fs/getMetadata", {"path": "file:///tmp"})
        read_reply = await stream.wait(read)
        metadata_reply = await stream.wait(metadata)
        self.assertEqual(read_reply["result"]["chunks"], [])
        self.assertTrue(metadata_reply["result"]["isDirectory"])
        order = [reply["id"] for reply in stream.router.replies]
        self.assertLess(order.index(read_reply["id"]), order.index(metadata_reply["id"]))
        self.assertGreaterEqual(stream.router.arrivals[metadata_reply["id"]] - sent, 0.9)

    # -- filesystem -----------------------------------------------------------------------------

    async def test_fs_read_write(self) -> None:
        """
        C{fs/writeFile} creates and rewrites in place (mode kept); C{fs/readFile} returns the
        whole file; missing parent or file → -32004; a directory → -32600 C{is not a file} for a
        read and -32603 C{Is a directory} for a write; invalid base64 → -32600; a plain path →
        -32602.
        """
        stream = await self.ready()
        base = self.directory()
        target = base / "a b.txt"
        self.assertEqual(
            await stream.result("fs/writeFile", {"path": target.as_uri(), "dataBase64": _b64(b"hello")}),
            {},
        )
        target.chmod(0o751)
        await stream.result("fs/writeFile", {"path": target.as_uri(), "dataBase64": _b64(b"hi")})
        self.assertEqual(target.read_bytes(), b"hi")
        self.assertEqual(target.stat().st_mode & 0o777, 0o751)
        self.assertEqual(
            await stream.result("fs/readFile", {"path": target.as_uri()}), {"dataBase64": _b64(b"hi")}
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": (base / "nope").as_uri()}),
            -32004,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": base.as_uri()}),
            -32600,
            f"path `{base}` is not a file",
        )
        self.assertError(
            await stream.call("fs/writeFile", {"path": (base / "no" / "x").as_uri(), "dataBase64": ""}),
            -32004,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await stream.call("fs/writeFile", {"path": base.as_uri(), "dataBase64": ""}),
            -32603,
            "Is a directory (os error 21)",
        )
        self.assertError(
            await stream.call("fs/writeFile", {"path": target.as_uri(), "dataBase64": "aGk"}),
            -32600,
            "fs/writeFile requires valid base64 dataBase64: Invalid padding",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": str(target)}),
            -32602,
            "invalid URI: relative URL without a base",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": "http://x/y"}),
            -32602,
            "unsupported path URI scheme `http`",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": target.as_uri() + "?q"}),
            -32602,
            "query parameters are not allowed in path URIs",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": target.as_uri() + "#f"}),
            -32602,
            "fragments are not allowed in path URIs",
        )
        self.assertError(
            await stream.call("fs/readFile", {"path": "file:///C:/x"}),
            -32600,
            "'file:///C:/x' is invalid on 'linux'",
        )
        self.assertEqual(
            await stream.result("fs/readFile", {"path": "FILE://localhost" + target.as_uri()[7:]}),
            {"dataBase64": _b64(b"hi")},
        )
        self.assertError(await stream.call("fs/readFile", {}), -32602, "missing field `path`")

    async def test_fs_create_directory(self) -> None:
        """
        C{fs/createDirectory}: recursive by default (parents made, an existing directory is fine);
        non-recursive needs the parent (-32004) and refuses an existing entry (-32603 C{File
        exists}); a file at the path is C{File exists} either way.
        """
        stream = await self.ready()
        base = self.directory()
        deep = base / "x" / "y"
        self.assertEqual(await stream.result("fs/createDirectory", {"path": deep.as_uri()}), {})
        self.assertTrue(deep.is_dir())
        self.assertEqual(await stream.result("fs/createDirectory", {"path": deep.as_uri()}), {})
        self.assertError(
            await stream.call("fs/createDirectory", {"path": deep.as_uri(), "recursive": False}),
            -32603,
            "File exists (os error 17)",
        )
        self.assertError(
            await stream.call(
                "fs/createDirectory", {"path": (base / "p" / "q").as_uri(), "recursive": False}
            ),
            -32004,
            "No such file or directory (os error 2)",
        )
        (base / "f").write_bytes(b"")
        for recursive in (True, False):
            self.assertError(
                await stream.call(
                    "fs/createDirectory", {"path": (base / "f").as_uri(), "recursive": recursive}
                ),
                -32603,
                "File exists (os error 17)",
            )
        self.assertError(
            await stream.call("fs/createDirectory", {"path": (base / "f" / "x").as_uri()}),
            -32603,
            "Not a directory (os error 20)",
        )

    async def test_fs_remove(self) -> None:
        """
        C{fs/remove}: a missing path is success unless C{force} is false (-32004); non-recursive
        removes a file or an empty directory, a non-empty one is -32603 C{Directory not empty};
        recursive removes a tree; a symlink is removed, never its target.
        """
        stream = await self.ready()
        base = self.directory()
        self.assertEqual(await stream.result("fs/remove", {"path": (base / "nope").as_uri()}), {})
        self.assertError(
            await stream.call("fs/remove", {"path": (base / "nope").as_uri(), "force": False}),
            -32004,
            "No such file or directory (os error 2)",
        )
        tree = base / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "f").write_bytes(b"x")
        self.assertError(
            await stream.call("fs/remove", {"path": tree.as_uri(), "recursive": False}),
            -32603,
            "Directory not empty (os error 39)",
        )
        (base / "empty").mkdir()
        await stream.result(
            "fs/remove", {"path": (base / "empty").as_uri(), "recursive": False, "force": False}
        )
        self.assertFalse((base / "empty").exists())
        target = base / "target"
        target.mkdir()
        (target / "keep").write_bytes(b"k")
        (base / "link").symlink_to(target)
        await stream.result("fs/remove", {"path": (base / "link").as_uri()})
        self.assertFalse((base / "link").is_symlink())
        self.assertEqual((target / "keep").read_bytes(), b"k")
        await stream.result("fs/remove", {"path": tree.as_uri()})
        self.assertFalse(tree.exists())

    async def test_fs_copy(self) -> None:
        """
        C{fs/copy}: C{recursive} is required (-32602); a file overwrites a file with the source's
        mode; a file onto a directory is -32603 C{Is a directory}; a directory without recursive is
        -32600; a directory is merged into an existing one; a missing source or destination parent
        is -32004.
        """
        stream = await self.ready()
        base = self.directory()
        source = base / "src.txt"
        source.write_bytes(b"new")
        source.chmod(0o640)
        destination = base / "dst.txt"
        destination.write_bytes(b"old content")
        self.assertError(
            await stream.call(
                "fs/copy", {"sourcePath": source.as_uri(), "destinationPath": destination.as_uri()}
            ),
            -32602,
            "missing field `recursive`",
        )

        def copy(src: Path, dst: Path, recursive: bool) -> Any:
            params = {
                "sourcePath": src.as_uri(),
                "destinationPath": dst.as_uri(),
                "recursive": recursive,
            }
            return stream.call("fs/copy", params)

        self.assertEqual((await copy(source, destination, False))["result"], {})
        self.assertEqual(destination.read_bytes(), b"new")
        self.assertEqual(destination.stat().st_mode & 0o777, 0o640)
        self.assertError(await copy(source, base, False), -32603, "Is a directory (os error 21)")
        tree = base / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "f").write_bytes(b"f")
        (tree / "top").write_bytes(b"t")
        self.assertError(
            await copy(tree, base / "t2", False),
            -32600,
            "fs/copy requires recursive: true when sourcePath is a directory",
        )
        merged = base / "merged"
        merged.mkdir()
        (merged / "top").write_bytes(b"old")
        (merged / "mine").write_bytes(b"m")
        self.assertEqual((await copy(tree, merged, True))["result"], {})
        self.assertEqual(
            sorted(str(p.relative_to(merged)) for p in merged.rglob("*")),
            ["mine", "sub", "sub/f", "top"],
        )
        self.assertEqual((merged / "top").read_bytes(), b"t")
        self.assertError(
            await copy(tree, tree / "sub" / "inside", True),
            -32600,
            "fs/copy cannot copy a directory to itself or one of its descendants",
        )
        self.assertError(
            await copy(base / "nope", base / "x", False),
            -32004,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await copy(source, base / "no" / "x", False),
            -32004,
            "No such file or directory (os error 2)",
        )

    async def test_fs_metadata_and_directory(self) -> None:
        """
        C{fs/getMetadata} has the six members, describing the symlink target except C{isSymlink};
        C{fs/readDirectory} lists C{fileName}, C{isDirectory}, C{isFile}; missing → -32004; a file
        listed → -32603 C{Not a directory}.
        """
        stream = await self.ready()
        base = self.directory()
        (base / "f").write_bytes(b"12345")
        (base / "d").mkdir()
        (base / "l").symlink_to(base / "f")
        meta = await stream.result("fs/getMetadata", {"path": (base / "l").as_uri()})
        self.assertEqual(
            list(meta), ["isDirectory", "isFile", "isSymlink", "size", "createdAtMs", "modifiedAtMs"]
        )
        self.assertEqual(
            (meta["isDirectory"], meta["isFile"], meta["isSymlink"], meta["size"]),
            (False, True, True, 5),
        )
        self.assertEqual(meta["createdAtMs"], 0)
        self.assertEqual(meta["modifiedAtMs"], (base / "f").stat().st_mtime_ns // 1_000_000)
        meta = await stream.result("fs/getMetadata", {"path": (base / "d").as_uri()})
        self.assertEqual((meta["isDirectory"], meta["isFile"], meta["isSymlink"]), (True, False, False))
        self.assertError(
            await stream.call("fs/getMetadata", {"path": (base / "nope").as_uri()}),
            -32004,
            "No such file or directory (os error 2)",
        )
        listing = await stream.result("fs/readDirectory", {"path": base.as_uri()})
        self.assertEqual(list(listing), ["entries"])
        self.assertEqual(
            sorted(listing["entries"], key=lambda e: e["fileName"]),
            [
                {"fileName": "d", "isDirectory": True, "isFile": False},
                {"fileName": "f", "isDirectory": False, "isFile": True},
                {"fileName": "l", "isDirectory": False, "isFile": True},
            ],
        )
        self.assertError(
            await stream.call("fs/readDirectory", {"path": (base / "nope").as_uri()}),
            -32004,
            "No such file or directory (os error 2)",
        )
        self.assertError(
            await stream.call("fs/readDirectory", {"path": (base / "f").as_uri()}),
            -32603,
            "Not a directory (os error 20)",
        )


async def _end(stream: ExecServerStream) -> None:
    await stream.end()


class RealExecServerTests(ExecServerConformanceMixin, TestCase):
    """
    The suite against the pinned C{codex exec-server --listen stdio}.
    """

    def make_stream(self) -> ExecServerStream:
        """
        See L{ExecServerConformanceMixin.make_stream}.
        """
        return RealStream(self)


class FakeExecServerTests(ExecServerConformanceMixin, TestCase):
    """
    The suite against L{FakeExecServer}.
    """

    def make_stream(self) -> ExecServerStream:
        """
        See L{ExecServerConformanceMixin.make_stream}.
        """
        return FakeStream()


# -------------------------------------------------------------------------------------------------
# The fake alone

#: C{process/write} chunks and what the real exec-server answered (measured on 0.169.0).
MEASURED_BASE64 = [
    ("", b""),
    ("aA==", b"h"),
    ("aGVsbG8K", b"hello\n"),
    ("a", "Invalid input length: 1"),
    ("aGkKa", "Invalid input length: 5"),
    ("aGl=", "Invalid last symbol 108, offset 2."),
    ("aB==", "Invalid last symbol 66, offset 1."),
    ("aGk=aGk=", "Invalid symbol 61, offset 3."),
    ("=aGk", "Invalid symbol 61, offset 0."),
    ("a=Gk", "Invalid symbol 61, offset 1."),
    ("aG=k", "Invalid symbol 61, offset 2."),
    ("aGk=\n", "Invalid symbol 10, offset 4."),
    ("aGk=a", "Invalid symbol 61, offset 3."),
    ("aGkK====", "Invalid symbol 61, offset 4."),
    ("aGkK=", "Invalid symbol 61, offset 4."),
    ("a===", "Invalid symbol 61, offset 1."),
    ("aa=a", "Invalid symbol 61, offset 2."),
    ("aG k=", "Invalid symbol 32, offset 2."),
    ("!!", "Invalid symbol 33, offset 0."),
    ("YQ", "Invalid padding"),
    ("YQ=", "Invalid padding"),
    ("Y===", "Invalid symbol 61, offset 1."),
    ("==", "Invalid symbol 61, offset 0."),
]

#: Path URIs and what the real exec-server made of them (measured on 0.169.0): the local path,
#: C{("local", text)} for the -32600 host error, C{("params", text)} for a -32602 error.
MEASURED_URIS: list[tuple[str, Any]] = [
    ("file:///tmp/a%20b", "/tmp/a b"),
    ("FiLe://LOCALHOST/tmp/f", "/tmp/f"),
    ("file:tmp/f", "/tmp/f"),
    ("file:/tmp/f", "/tmp/f"),
    ("file:\\\\\\tmp\\f", "/tmp/f"),
    (" file:///tmp/f ", "/tmp/f"),
    ("file:///tmp/x/../f", "/tmp/f"),
    ("file:///tmp/x/%2e%2e/f", "/tmp/f"),
    ("file:///tmp/%2566", "/tmp/%66"),
    ("file:///tmp/f%", "/tmp/f%"),
    ("file:///c|/x", "/c|/x"),
    ("file:///C:x", "/C:x"),
    ("file://", "/"),
    ("file://localhost", "/"),
    ("file:///a b", "/a b"),
    ("FILE://HOST/x", ("local", "'file://host/x' is invalid on 'linux'")),
    ("file://host", ("local", "'file://host/' is invalid on 'linux'")),
    ("file://[::1]/x", ("local", "'file://[::1]/x' is invalid on 'linux'")),
    ("file://127.0.0.1/x", ("local", "'file://127.0.0.1/x' is invalid on 'linux'")),
    ("file:///C:/x", ("local", "'file:///C:/x' is invalid on 'linux'")),
    ("file://C:/x", ("local", "'file:///C:/x' is invalid on 'linux'")),
    ("file://x:/y", ("local", "'file:///X:/y' is invalid on 'linux'")),
    ("file:///C:", ("local", "'file:///C:' is invalid on 'linux'")),
    ("file:///tmp/%00x", ("local", "'file:///tmp/%00x' is invalid on 'linux'")),
    ("", ("params", "invalid URI: relative URL without a base")),
    ("/abs", ("params", "invalid URI: relative URL without a base")),
    ("1x:/y", ("params", "invalid URI: relative URL without a base")),
    ("C:\\x", ("params", "unsupported path URI scheme `c`")),
    ("http://x/y?a#b", ("params", "unsupported path URI scheme `http`")),
    ("http://", ("params", "invalid URI: empty host")),
    ("file://ho st/x", ("params", "invalid URI: invalid international domain name")),
    ("file:///tmp/x?a#b", ("params", "query parameters are not allowed in path URIs")),
    ("file:///tmp/f?", ("params", "query parameters are not allowed in path URIs")),
    ("file:///tmp/x#", ("params", "fragments are not allowed in path URIs")),
]


class DecoderTests(SynchronousTestCase):
    """
    The fake's base64 decoder and URI parser agree with values measured on the real binary.
    """

    def test_base64(self) -> None:
        """
        Every measured chunk decodes to the same bytes or fails with the same text.
        """
        for text, expected in MEASURED_BASE64:
            if isinstance(expected, bytes):
                self.assertEqual(decode_base64(text), expected, text)
            else:
                with self.assertRaises(Base64Error, msg=text) as caught:
                    decode_base64(text)
                self.assertEqual(str(caught.exception), expected, text)

    def test_uris(self) -> None:
        """
        Every measured URI gives the same path or the same error.
        """
        for text, expected in MEASURED_URIS:
            if isinstance(expected, str):
                self.assertEqual(parse_path_uri(text).local_path(), expected, text)
            elif expected[0] == "params":
                with self.assertRaises(UriError, msg=text) as caught:
                    parse_path_uri(text)
                self.assertEqual(str(caught.exception), expected[1], text)
            else:
                with self.assertRaises(ValueError, msg=text) as caught_local:
                    parse_path_uri(text).local_path()
                self.assertEqual(str(caught_local.exception), expected[1], text)


class _Wire:
    """
    A fake exec-server on a clock, with helpers to send and read.
    """

    def __init__(self, root: str | None = None) -> None:
        self.clock = Clock()
        self.server = FakeExecServer(self.clock, root=root)
        self._id = 0

    def request(self, method: str, params: Any = ...) -> int:
        self._id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params is not ...:
            message["params"] = params
        self.server.handle(json.dumps(message).encode())
        return self._id

    def handshake(self) -> None:
        self.request("initialize", {"clientName": "t"})
        self.server.handle(b'{"jsonrpc":"2.0","method":"initialized","params":{}}')
        self.take()

    def take(self) -> list[dict[str, Any]]:
        messages = [json.loads(m) for m in self.server.sent]
        self.server.sent.clear()
        return messages

    def replies(self) -> list[dict[str, Any]]:
        return [m for m in self.take() if "id" in m]

    def reply(self, method: str, params: Any = ...) -> dict[str, Any]:
        request_id = self.request(method, params)
        [reply] = [m for m in self.replies() if m["id"] == request_id]
        return reply

    def start(self, process_id: str, argv: list[str], **fields: Any) -> dict[str, Any]:
        params = {"processId": process_id, "argv": argv, "cwd": "file:///", "env": ENV, "tty": False}
        params.update(fields)
        return self.reply("process/start", params)

    def read(self, process_id: str, after: int | None = None, max_bytes: int = 65536) -> dict[str, Any]:
        params = {"processId": process_id, "afterSeq": after, "maxBytes": max_bytes, "waitMs": 0}
        result: dict[str, Any] = self.reply("process/read", params)["result"]
        return result


class FakeExecServerScriptingTests(SynchronousTestCase):
    """
    The fake's scripting, test controls and the behaviour the real one shows only by timing.
    """

    def test_script_process(self) -> None:
        """
        L{FakeExecServer.script_process}: chunks C{interval} apart on the clock, then the failure
        text and the exit code.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.script_process(
            ["x"], [("stdout", b"a"), ("stderr", b"b")], 3, interval=0.5, failure="boom"
        )
        self.assertEqual(wire.start("p", ["x"])["result"], {"processId": "p", "sandboxType": "none"})
        first = wire.read("p")
        self.assertEqual([c["seq"] for c in first["chunks"]], [1])
        self.assertFalse(first["exited"])
        wire.clock.advance(0.5)
        last = wire.read("p", 1)
        self.assertEqual(last["chunks"], [{"seq": 2, "stream": "stderr", "chunk": _b64(b"b")}])
        self.assertEqual(
            (last["exited"], last["exitCode"], last["closed"], last["failure"]), (True, 3, True, "boom")
        )
        self.assertEqual(wire.read("p", 2)["nextSeq"], 5)

    def test_running_until_terminated(self) -> None:
        """
        C{exit_code} C{None} keeps the process running (silent) until C{process/terminate}.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.script_process(["srv"], [("stdout", b"up\n")], None)
        wire.start("p", ["srv"])
        wire.clock.advance(3600)
        self.assertTrue(wire.server.processes["p"].running)
        self.assertEqual(
            wire.reply("process/terminate", {"processId": "p"})["result"], {"running": True}
        )
        self.assertTrue(wire.server.processes["p"].terminated)
        self.assertEqual(wire.read("p", 1)["exitCode"], 137)

    def test_program_controls(self) -> None:
        """
        A program may skip numbers (discarded output), exit before its last output and close
        later; a custom predicate match wins over a built-in.
        """
        wire = _Wire()
        wire.handshake()

        def program(process: FakeProcess) -> None:
            process.output(b"1")
            process.discard(3)
            process.output(b"5")
            process.exit(0, close=False)
            process.output(b"late")

        wire.server.add_program(lambda argv: argv[0] == "echo", program)
        wire.start("p", ["echo", "ignored"])
        result = wire.read("p")
        self.assertEqual([c["seq"] for c in result["chunks"]], [1, 5, 7])
        self.assertEqual((result["exited"], result["closed"]), (True, False))
        wire.server.processes["p"].close_output()
        self.assertEqual(wire.read("p", 7)["nextSeq"], 9)
        with self.assertRaises(RuntimeError):
            wire.server.processes["p"].output(b"after the end")

    def test_refuse_start(self) -> None:
        """
        L{FakeExecServer.refuse_start} answers -32603 with the given text and no process exists;
        an unknown program is C{No such file or directory}.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.refuse_start(["curl", "-V"], "Permission denied (os error 13)")
        self.assertEqual(
            wire.start("p", ["curl", "-V"])["error"],
            {"code": -32603, "message": "Permission denied (os error 13)"},
        )
        self.assertEqual(
            wire.start("p", ["nonexistent"])["error"],
            {"code": -32603, "message": "No such file or directory (os error 2)"},
        )
        self.assertEqual(wire.server.processes, {})

    def test_builtins(self) -> None:
        """
        C{echo -n}, C{true}, C{false} and C{sleep} behave as the programs do; C{cat} echoes writes
        and a tty echoes them too, with CRLF.
        """
        wire = _Wire()
        wire.handshake()
        wire.start("e", ["/usr/bin/echo", "-n", "a", "b"])
        self.assertEqual(wire.read("e")["chunks"][0]["chunk"], _b64(b"a b"))
        wire.start("t", ["true"])
        wire.start("f", ["false"])
        self.assertEqual((wire.read("t")["exitCode"], wire.read("f")["exitCode"]), (0, 1))
        wire.start("s", ["sleep", "2"])
        wire.clock.advance(1.9)
        self.assertFalse(wire.read("s")["exited"])
        wire.clock.advance(0.1)
        self.assertEqual(wire.read("s")["exitCode"], 0)
        wire.start("c", ["cat"], tty=True)
        write = {"processId": "c", "chunk": _b64(b"hi\n"), "writeId": "1"}
        self.assertEqual(wire.reply("process/write", write)["result"], {"status": "accepted"})
        chunks = wire.read("c")["chunks"]
        self.assertEqual([(c["stream"], c["chunk"]) for c in chunks], [("pty", _b64(b"hi\r\n"))] * 2)
        self.assertEqual(bytes(wire.server.processes["c"].stdin), b"hi\n")

    def test_notifications(self) -> None:
        """
        C{process/output}, C{process/exited} and C{process/closed} follow the start reply, unless
        turned off.
        """
        wire = _Wire()
        wire.handshake()
        wire.request(
            "process/start",
            {"processId": "p", "argv": ["/bin/echo", "hi"], "cwd": "file:///", "env": {}, "tty": False},
        )
        messages = wire.take()
        self.assertEqual(
            [m.get("method") for m in messages],
            [None, "process/output", "process/exited", "process/closed"],
        )
        self.assertEqual(
            messages[2]["params"], {"processId": "p", "seq": 2, "exitCode": 0, "sandboxDenied": False}
        )
        wire.server.send_notifications = False
        wire.start("q", ["true"])
        self.assertEqual(wire.take(), [])

    def test_retention(self) -> None:
        """
        Output beyond L{FakeExecServer.retained_bytes} drops the oldest chunks; the numbers of the
        dropped ones never appear.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.retained_bytes = 10
        wire.server.script_process(["x"], [("stdout", b"aaaa")] * 5)
        wire.start("p", ["x"])
        self.assertEqual([c["seq"] for c in wire.read("p")["chunks"]], [4, 5])

    def test_wait_and_order(self) -> None:
        """
        A waiting read holds every later message (a parse error too) until output arrives or the
        wait ends.
        """
        wire = _Wire()
        wire.handshake()
        wire.start("c", ["cat"], pipeStdin=True)
        wire.request("process/read", {"processId": "c", "afterSeq": None, "waitMs": 200})
        wire.server.handle(b"garbage")
        wire.request("fs/getMetadata", {"path": "file:///"})
        self.assertEqual(wire.take(), [])
        wire.clock.advance(0.2)
        self.assertEqual([m["id"] for m in wire.take()], [3, -1, 4])
        wire.request("process/read", {"processId": "c", "afterSeq": None, "waitMs": 200})
        wire.request("process/write", {"processId": "c", "chunk": _b64(b"x"), "writeId": "w"})
        self.assertEqual(wire.take(), [])
        wire.server.processes["c"].output(b"y")
        replies = wire.replies()
        self.assertEqual([m["id"] for m in replies], [5, 6])
        self.assertEqual(replies[0]["result"]["chunks"][0]["chunk"], _b64(b"y"))
        self.assertEqual(wire.clock.getDelayedCalls(), [])

    def test_wait_limit(self) -> None:
        """
        A read with C{waitMs} above 250 is answered but logged as an error (it fails the test that
        sent it) and recorded.
        """
        wire = _Wire()
        wire.handshake()
        wire.start("t", ["true"])
        self.assertTrue(
            wire.reply("process/read", {"processId": "t", "waitMs": 1000})["result"]["closed"]
        )
        self.assertEqual(wire.server.wait_violations, [1000])
        self.assertEqual(len(self.flushLoggedErrors(AssertionError)), 1)
        wire.reply("process/read", {"processId": "t", "waitMs": 250})
        self.assertEqual(wire.server.wait_violations, [1000])

    def test_test_controls(self) -> None:
        """
        L{FakeExecServer.fail_next} answers the next requests of a method with an error before any
        check; L{FakeExecServer.drop_next} never answers them and does not hold the queue.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.fail_next("fs/readFile", -32603, "disk on fire", count=2)
        wire.server.drop_next("fs/getMetadata")
        for _ in range(2):
            self.assertEqual(
                wire.reply("fs/readFile", {})["error"], {"code": -32603, "message": "disk on fire"}
            )
        self.assertEqual(wire.reply("fs/readFile", {})["error"]["message"], "missing field `path`")
        wire.request("fs/getMetadata", {"path": "file:///"})
        self.assertEqual(wire.take(), [])
        self.assertTrue(wire.reply("fs/getMetadata", {"path": "file:///"})["result"]["isDirectory"])
        self.assertEqual(wire.server.requests_for("fs/getMetadata"), [{"path": "file:///"}] * 2)

    def test_close(self) -> None:
        """
        L{FakeExecServer.close} kills running processes, drops the waiting read, tells
        L{FakeExecServer.on_exit}, and ignores later messages.
        """
        wire = _Wire()
        wire.handshake()
        exits: list[bool] = []
        wire.server.on_exit = lambda: exits.append(True)
        wire.start("s", SILENT)
        wire.request("process/read", {"processId": "s", "waitMs": 100})
        wire.server.close()
        wire.server.close()
        self.assertEqual(exits, [True])
        self.assertEqual(wire.server.processes["s"].exit_code, 137)
        wire.clock.advance(1)
        wire.request("fs/getMetadata", {"path": "file:///"})
        self.assertEqual(wire.take(), [])

    def test_stopped_by_a_response(self) -> None:
        """
        A response sent to the exec-server stops it; it exits at the next message.
        """
        wire = _Wire()
        wire.handshake()
        wire.server.handle(b'{"id":7,"result":{}}')
        self.assertFalse(wire.server.ended)
        wire.request("fs/getMetadata", {"path": "file:///"})
        self.assertTrue(wire.server.ended)
        self.assertEqual(wire.take(), [])

    def test_program_failure_is_logged(self) -> None:
        """
        A program that raises is a logged error (the test fails unless it expects it).
        """
        wire = _Wire()
        wire.handshake()

        def broken(process: FakeProcess) -> None:
            raise ValueError("bug in a test program")

        wire.server.add_program(["b"], broken)
        self.assertIn("result", wire.start("p", ["b"]))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_root(self) -> None:
        """
        With C{root}, paths (fs methods and cwd) are taken under that directory and messages name
        the paths as the client sent them.
        """
        root = Path(self.mktemp()).absolute()
        (root / "work").mkdir(parents=True)
        wire = _Wire(root=str(root))
        wire.handshake()
        write = {"path": "file:///work/a.txt", "dataBase64": _b64(b"x")}
        self.assertEqual(wire.reply("fs/writeFile", write)["result"], {})
        self.assertEqual((root / "work" / "a.txt").read_bytes(), b"x")
        self.assertEqual(
            wire.reply("fs/readFile", {"path": "file:///work"})["error"]["message"],
            "path `/work` is not a file",
        )
        self.assertIn("result", wire.start("p", ["true"], cwd="file:///work"))
        self.assertEqual(
            wire.start("q", ["true"], cwd="file:///elsewhere")["error"]["message"],
            "No such file or directory (os error 2)",
        )

    def test_params(self) -> None:
        """
        Params are read as serde reads them: member order for type errors, declaration order for
        missing fields, numbers, optional members and the struct's own errors.
        """
        wire = _Wire()
        wire.handshake()
        cases: list[tuple[str, Any, str]] = [
            ("process/start", {"tty": 5, "processId": 3}, "invalid type: number, expected a boolean"),
            ("process/start", {"processId": 3, "tty": 5}, "invalid type: number, expected a string"),
            ("process/start", {"argv": [], "processId": "q"}, "missing field `cwd`"),
            ("process/start", {"processId": True}, "invalid type: boolean `true`, expected a string"),
            (
                "process/start",
                {"processId": "p", "argv": "x"},
                'invalid type: string "x", expected a sequence',
            ),
            ("process/start", {"processId": "p", "env": []}, "invalid type: sequence, expected a map"),
            (
                "process/start",
                {"processId": "p", "pipeStdin": None},
                "invalid type: null, expected a boolean",
            ),
            ("process/start", [], "invalid length 0, expected struct WireExecParams with 14 elements"),
            ("process/start", None, "invalid type: null, expected struct WireExecParams"),
            ("process/start", ..., "invalid type: null, expected struct WireExecParams"),
            (
                "process/terminate",
                [],
                "invalid length 0, expected struct TerminateParams with 1 element",
            ),
            ("process/read", {"processId": "a", "afterSeq": -1}, "invalid number"),
            ("process/read", {"processId": "a", "maxBytes": 1.0}, "invalid number"),
            ("process/read", {"processId": "a", "maxBytes": 1 << 64}, "invalid number"),
            (
                "process/read",
                {"processId": "a", "afterSeq": "1"},
                'invalid type: string "1", expected u64',
            ),
            (
                "process/read",
                {"processId": "a", "maxBytes": True},
                "invalid type: boolean `true`, expected usize",
            ),
            (
                "process/read",
                {"processId": "a", "afterSeq": None, "maxBytes": None},
                "unknown process id a",
            ),
            ("process/write", {"processId": "a", "chunk": "aGk"}, "Invalid padding"),
            ("process/write", {"processId": "a", "chunk": ""}, "missing field `writeId`"),
            (
                "fs/copy",
                {"sourcePath": "file:///", "destinationPath": "file:///", "recursive": None},
                "invalid type: null, expected a boolean",
            ),
            ("fs/remove", {"force": 5}, "invalid type: number, expected a boolean"),
        ]
        for method, params, message in cases:
            self.assertEqual(wire.reply(method, params)["error"]["message"], message, (method, params))

    def test_parse_errors(self) -> None:
        """
        JSON syntax errors are reported in serde_json's words with its line and column (each
        measured on the real binary).
        """
        wire = _Wire()
        prefix = "failed to parse JSON-RPC message from exec-server stdio: "
        for line, detail in [
            (b"nulx", "expected ident at line 1 column 4"),
            (b'{"a" 1}', "expected `:` at line 1 column 6"),
            (b'{"a":1 "b":2}', "expected `,` or `}` at line 1 column 8"),
            (b"[1 2]", "expected `,` or `]` at line 1 column 4"),
            (b"{1:2}", "key must be a string at line 1 column 2"),
            (b'{"a":"b', "EOF while parsing a string at line 1 column 7"),
            (b"[1,", "EOF while parsing a value at line 1 column 3"),
            (b"NaN", "expected value at line 1 column 1"),
            (b'{"a":1,', "EOF while parsing a value at line 1 column 7"),
            (b'{"a', "EOF while parsing a string at line 1 column 3"),
            (b'{"a":"\\q"}', "invalid escape at line 1 column 8"),
            (
                b'{"a":"x\ty"}',
                "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 8",
            ),
        ]:
            wire.server.handle(line)
            [message] = wire.take()
            self.assertEqual(message, {"error": {"code": -32600, "message": prefix + detail}, "id": -1})


class FakeExecServerClientTests(SynchronousTestCase):
    """
    L{FakeExecServerClient}: the JSON-RPC side of a bridge client over a fake exec-server.
    """

    def client(self) -> tuple[FakeExecServer, FakeExecServerClient, Clock]:
        """
        A fake exec-server and a client that did the handshake.
        """
        clock = Clock()
        server = FakeExecServer(clock)
        return server, FakeExecServerClient(server), clock

    def test_interface_and_handshake(self) -> None:
        """
        The client provides L{IExecServerClient}; it sends C{initialize} C{{"clientName":
        "codex-env-mcp"}} with id 1 and then C{initialized}, after which process methods work.
        """
        server, client, _ = self.client()
        self.assertTrue(verifyObject(IExecServerClient, client))
        self.assertIsNone(client.ended)
        self.assertEqual(server.requests[0]["id"], 1)
        self.assertEqual(server.requests_for("initialize"), [{"clientName": "codex-env-mcp"}])
        self.assertEqual(
            server.notifications, [{"jsonrpc": "2.0", "method": "initialized", "params": {}}]
        )
        result = self.successResultOf(client.call("process/terminate", {"processId": "x"}))
        self.assertEqual(result, {"running": False})
        self.assertEqual(server.requests[-1]["id"], 2)
        self.assertEqual(client.calls[-1], ("process/terminate", {"processId": "x"}))

    def test_error(self) -> None:
        """
        An error reply fails the call with C{<method>: <message> (code=<code>)}.
        """
        _, client, _ = self.client()
        failure = self.failureResultOf(client.call("fs/readFile", {"path": "file:///nope/x"}), CallError)
        self.assertEqual(
            str(failure.value), "fs/readFile: No such file or directory (os error 2) (code=-32004)"
        )
        self.assertEqual(failure.value.code, -32004)

    def test_timeout(self) -> None:
        """
        No reply within the timeout (fake clock) → C{<method>: timed out}; the client stays usable.
        """
        server, client, clock = self.client()
        server.drop_next("fs/getMetadata")
        pending = client.call("fs/getMetadata", {"path": "file:///"}, timeout=5)
        clock.advance(4.9)
        self.assertNoResult(pending)
        clock.advance(0.1)
        self.assertEqual(
            str(self.failureResultOf(pending, CallError).value), "fs/getMetadata: timed out"
        )
        self.assertTrue(
            self.successResultOf(client.call("fs/getMetadata", {"path": "file:///"}))["isDirectory"]
        )

    def test_waiting_read(self) -> None:
        """
        A read that waits completes when the clock reaches its C{waitMs}.
        """
        _, client, clock = self.client()
        client.call(
            "process/start",
            {"processId": "s", "argv": SILENT, "cwd": "file:///", "env": {}, "tty": False},
        )
        pending = client.call("process/read", {"processId": "s", "afterSeq": None, "waitMs": 250})
        self.assertNoResult(pending)
        clock.advance(0.25)
        self.assertEqual(self.successResultOf(pending)["nextSeq"], 1)

    def test_too_large(self) -> None:
        """
        A request above the message limit fails locally and is not sent.
        """
        server, client, _ = self.client()
        self.patch(fakeexecserver, "MAX_MESSAGE_BYTES", 100)
        failure = self.failureResultOf(client.call("fs/writeFile", {"data": "x" * 200}), CallError)
        self.assertRegex(str(failure.value), r"^fs/writeFile: message too large \(\d+ bytes > 100\)$")
        self.assertEqual(server.requests_for("fs/writeFile"), [])

    def test_close(self) -> None:
        """
        C{close()} fails pending calls with C{bridge: connection closed}, ends the exec-server
        (its processes die), makes later calls fail at once, and may be called twice.
        """
        server, client, _ = self.client()
        client.call(
            "process/start",
            {"processId": "s", "argv": SILENT, "cwd": "file:///", "env": {}, "tty": False},
        )
        server.drop_next("fs/getMetadata")
        pending = client.call("fs/getMetadata", {"path": "file:///"})
        client.close()
        client.close()
        self.assertEqual(
            str(self.failureResultOf(pending, CallError).value), "bridge: connection closed"
        )
        self.assertTrue(server.ended)
        self.assertEqual(server.processes["s"].exit_code, 137)
        later = client.call("fs/getMetadata", {"path": "file:///"})
        self.assertEqual(str(self.failureResultOf(later, CallError).value), "bridge: connection closed")

    def test_reset_and_server_exit(self) -> None:
        """
        L{FakeExecServerClient.reset} ends the client with C{relay reset: <reason>}; the
        exec-server exiting ends it with C{bridge: connection closed}.
        """
        _, client, _ = self.client()
        client.reset("idle")
        client.reset("again")
        self.assertEqual(client.ended, "relay reset: idle")
        failure = self.failureResultOf(client.call("fs/getMetadata", {"path": "file:///"}), CallError)
        self.assertEqual(str(failure.value), "relay reset: idle")
        server, client, _ = self.client()
        server.handle(b'{"jsonrpc":"2.0","method":"nosuch"}')
        pending = client.call("fs/getMetadata", {"path": "file:///"})
        self.assertEqual(
            str(self.failureResultOf(pending, CallError).value), "bridge: connection closed"
        )
        self.assertEqual(client.ended, "bridge: connection closed")

    def test_sessions(self) -> None:
        """
        C{session_opened} and C{session_closed} are counted.
        """
        _, client, _ = self.client()
        client.session_opened()
        client.session_opened()
        client.session_closed()
        self.assertEqual(
            (client.live_sessions, client.sessions_opened, client.sessions_closed), (1, 2, 1)
        )
