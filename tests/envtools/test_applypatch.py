"""
Tests for L{codexgw.envtools.applypatch}: the C{apply_patch} tool over an in-memory exec-server
(C{envtools.md} §7.11, acceptance criteria 18–19).

L{MemoryExecServer} is an L{IExecServerClient} in front of an in-memory file tree with the §2.5
semantics and error codes of the fs methods, and of scripted processes with the §2.4 output semantics
on a fake clock (used by C{tests.envtools.test_copypath}). L{FakeResolver} and L{FakePool} stand in
for the name resolver and the bridge pool.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.envtools.applypatch import apply_patch_tool
from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import (
    DEFAULT_CALL_TIMEOUT,
    CallError,
    DialError,
    ExecutorEntry,
    IBridgePool,
    IExecServerClient,
    IRelayCreator,
    IResolver,
    ResolveError,
    ToolResult,
)
from codexgw.testing.fakeexecserver import FakeExecServer, FakeExecServerClient

NOENT = "No such file or directory (os error 2)"


def b64(data: bytes) -> str:
    """
    Standard base64 of C{data}.
    """
    return base64.b64encode(data).decode("ascii")


def rpc_error(method: str, code: int, message: str) -> CallError:
    """
    The L{CallError} of a JSON-RPC error reply (§4.5).
    """
    return CallError(f"{method}: {message} (code={code})", code)


@dataclass
class MemoryProcess:
    """
    A scripted process of L{MemoryExecServer} (§2.4): numbered output, exit and close events.

    @ivar argv: the C{argv} it was started with.
    """

    clock: Clock
    process_id: str
    argv: list[str]
    counter: int = 1
    outputs: list[tuple[int, str, bytes]] = field(default_factory=list)
    exit_code: int | None = None
    closed: bool = False
    waiters: list[Callable[[], None]] = field(default_factory=list)

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter()

    def output(self, stream: str, data: bytes) -> None:
        """
        A chunk on C{stream} takes the next number.
        """
        self.outputs.append((self.counter, stream, data))
        self.counter += 1
        self._wake()

    def finish(self, code: int) -> None:
        """
        The process exits with C{code} and its pipes close (two more numbers).
        """
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.closed = True
        self.counter += 2
        self._wake()

    @property
    def exited(self) -> bool:
        """
        Whether the process exited.
        """
        return self.exit_code is not None

    def result(self, after: int, max_bytes: int) -> dict[str, Any]:
        """
        The C{process/read} result for C{afterSeq} C{after}.
        """
        chunks: list[dict[str, Any]] = []
        size = 0
        for seq, stream, data in self.outputs:
            if seq <= after:
                continue
            if chunks and size + len(data) > max_bytes:
                break
            chunks.append({"seq": seq, "stream": stream, "chunk": b64(data)})
            size += len(data)
        return {
            "chunks": chunks,
            "nextSeq": chunks[-1]["seq"] + 1 if chunks else self.counter,
            "exited": self.exited,
            "exitCode": self.exit_code,
            "closed": self.closed,
            "failure": None,
            "sandboxDenied": False,
        }

    def read(self, after_seq: int | None, max_bytes: int, wait_ms: int) -> Deferred[Any]:
        """
        At once when an event above C{afterSeq} exists or the process is closed, else at the first
        such event or after C{waitMs} on the clock.
        """
        after = after_seq or 0
        if self.closed or self.counter - 1 > after:
            return succeed(self.result(after, max_bytes))
        answer: Deferred[Any] = Deferred()

        def reply() -> None:
            if not answer.called:
                if timer.active():
                    timer.cancel()
                answer.callback(self.result(after, max_bytes))

        timer = self.clock.callLater(wait_ms / 1000.0, reply)
        self.waiters.append(reply)
        return answer


@implementer(IExecServerClient)
class MemoryExecServer:
    """
    An exec-server stream in memory: fs methods over L{files} and L{directories}, scripted processes.

    @ivar calls: every call as C{(method, params)}.
    @ivar files: POSIX path → content.
    @ivar directories: POSIX paths of the directories (C{/} always).
    @ivar program: run on every new process right after its start; it scripts the process, or
        raises L{CallError} to fail the start. The default leaves the process running.
    @ivar overrides: method → a function of the params answering instead (a value, a L{Deferred}, or
        raising L{CallError}).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ended: str | None = None
        self.calls: list[tuple[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.directories: set[str] = {"/"}
        self.processes: dict[str, MemoryProcess] = {}
        self.program: Callable[[MemoryProcess], None] = lambda process: None
        self.overrides: dict[str, Callable[[Any], Any]] = {}

    def methods(self) -> list[str]:
        """
        The methods called, in order.
        """
        return [method for method, _ in self.calls]

    def params_of(self, method: str) -> list[Any]:
        """
        The params of every call of C{method}.
        """
        return [params for called, params in self.calls if called == method]

    def add_tree(self, files: Mapping[str, bytes]) -> None:
        """
        Create C{files} and their parent directories.
        """
        for path, data in files.items():
            self.files[path] = data
            parent = posixpath.dirname(path)
            while parent not in self.directories:
                self.directories.add(parent)
                parent = posixpath.dirname(parent)

    def call(self, method: str, params: Any, timeout: float = DEFAULT_CALL_TIMEOUT) -> Deferred[Any]:
        """
        See L{IExecServerClient.call}.
        """
        self.calls.append((method, params))
        if self.ended is not None:
            return fail(CallError(self.ended))
        try:
            if method in self.overrides:
                answer = self.overrides[method](params)
            else:
                handler = getattr(self, "_" + method.replace("/", "_"))
                answer = handler(method, params)
        except CallError as error:
            return fail(error)
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def session_opened(self) -> None:
        """
        See L{IExecServerClient.session_opened}.
        """

    def session_closed(self) -> None:
        """
        See L{IExecServerClient.session_closed}.
        """

    def close(self) -> None:
        """
        See L{IExecServerClient.close}.
        """
        self.ended = self.ended or "bridge: connection closed"

    # fs methods (§2.5)

    def _path(self, method: str, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme.lower() != "file":
            raise rpc_error(method, -32602, "invalid URI: relative URL without a base")
        return posixpath.normpath(unquote(parts.path)) if parts.path != "/" else "/"

    def _missing(self, method: str) -> CallError:
        return rpc_error(method, -32004, NOENT)

    def _fs_readFile(self, method: str, params: Any) -> Any:
        path = self._path(method, params["path"])
        if path in self.directories:
            raise rpc_error(method, -32600, f"path `{path}` is not a file")
        if path not in self.files:
            raise self._missing(method)
        return {"dataBase64": b64(self.files[path])}

    def _fs_writeFile(self, method: str, params: Any) -> Any:
        path = self._path(method, params["path"])
        try:
            data = base64.b64decode(params["dataBase64"], validate=True)
        except binascii.Error as error:
            detail = f"fs/writeFile requires valid base64 dataBase64: {error}"
            raise rpc_error(method, -32600, detail) from error
        if path in self.directories:
            raise rpc_error(method, -32603, "Is a directory (os error 21)")
        if posixpath.dirname(path) not in self.directories:
            raise self._missing(method)
        self.files[path] = data
        return {}

    def _fs_createDirectory(self, method: str, params: Any) -> Any:
        path = self._path(method, params["path"])
        if path in self.files:
            raise rpc_error(method, -32603, "File exists (os error 17)")
        if not params.get("recursive", True):
            if path in self.directories:
                raise rpc_error(method, -32603, "File exists (os error 17)")
            if posixpath.dirname(path) not in self.directories:
                raise self._missing(method)
        while path not in self.directories:
            self.directories.add(path)
            path = posixpath.dirname(path)
        return {}

    def _fs_remove(self, method: str, params: Any) -> Any:
        path = self._path(method, params["path"])
        if path in self.files:
            del self.files[path]
            return {}
        if path not in self.directories:
            if params.get("force", True):
                return {}
            raise self._missing(method)
        inside = [p for p in (*self.files, *self.directories) if p.startswith(path.rstrip("/") + "/")]
        if inside and not params.get("recursive", True):
            raise rpc_error(method, -32603, "Directory not empty (os error 39)")
        for item in inside:
            self.files.pop(item, None)
            self.directories.discard(item)
        self.directories.discard(path)
        return {}

    def _fs_getMetadata(self, method: str, params: Any) -> Any:
        path = self._path(method, params["path"])
        if path in self.directories:
            return {"isDirectory": True, "isFile": False, "isSymlink": False, "size": 4096}
        if path in self.files:
            size = len(self.files[path])
            return {"isDirectory": False, "isFile": True, "isSymlink": False, "size": size}
        raise self._missing(method)

    # process methods (§2.3)

    def _process_start(self, method: str, params: Any) -> Any:
        process_id = params["processId"]
        if process_id in self.processes:
            raise rpc_error(method, -32600, f"process {process_id} already exists")
        process = MemoryProcess(self.clock, process_id, list(params["argv"]))
        self.program(process)
        self.processes[process_id] = process
        return {"processId": process_id, "sandboxType": "none"}

    def _process(self, method: str, params: Any) -> MemoryProcess:
        process_id = params["processId"]
        if process_id not in self.processes:
            raise rpc_error(method, -32600, f"unknown process id {process_id}")
        return self.processes[process_id]

    def _process_read(self, method: str, params: Any) -> Any:
        assert params["waitMs"] <= 250
        process = self._process(method, params)
        return process.read(params["afterSeq"], params["maxBytes"], params["waitMs"])

    def _process_terminate(self, method: str, params: Any) -> Any:
        process = self.processes.get(params["processId"])
        if process is None or process.exited:
            return {"running": False}
        process.finish(137)
        return {"running": True}


@implementer(IResolver)
class FakeResolver:
    """
    Names → exe ids from a fixed table (§5 texts).
    """

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = dict(names)
        self.resolved: list[str] = []

    def resolve(self, name: str) -> Deferred[str]:
        """
        See L{IResolver.resolve}.
        """
        self.resolved.append(name)
        if not name:
            return fail(ResolveError("env name required"))
        if name not in self.names:
            return fail(
                ResolveError(
                    f'no environment named "{name}" (run list_environments to see what\'s available)'
                )
            )
        return succeed(self.names[name])

    def refresh(self) -> Deferred[list[ExecutorEntry]]:
        """
        See L{IResolver.refresh}.
        """
        entries = [ExecutorEntry(exe, name, "", False, None, {}) for name, exe in self.names.items()]
        return succeed(entries)


@implementer(IBridgePool)
class FakePool:
    """
    Exe ids → clients; an exe id without a client fails to dial.
    """

    def __init__(self, clients: Mapping[str, IExecServerClient]) -> None:
        self.clients = dict(clients)

    def get(self, exe_id: str) -> Deferred[IExecServerClient]:
        """
        See L{IBridgePool.get}.
        """
        if exe_id not in self.clients:
            return fail(DialError("bridge dial: HTTP 503: executor not connected"))
        return succeed(self.clients[exe_id])

    def close(self) -> None:
        """
        See L{IBridgePool.close}.
        """


def make_context(
    clock: Clock,
    environments: Mapping[str, tuple[str, IExecServerClient | None]],
    relay_creator: IRelayCreator | None = None,
) -> EnvContext:
    """
    A context whose environment names map to exe ids and clients (C{None}: the dial fails).
    """
    resolver = FakeResolver({name: exe for name, (exe, _) in environments.items()})
    pool = FakePool({exe: client for exe, client in environments.values() if client is not None})
    return EnvContext(pool, resolver, clock, relay_creator)


class FakesTests(SynchronousTestCase):
    """
    The fakes provide the interfaces they stand in for.
    """

    def test_interfaces(self) -> None:
        """
        L{MemoryExecServer}, L{FakeResolver}, L{FakePool}.
        """
        clock = Clock()
        server = MemoryExecServer(clock)
        self.assertTrue(verifyObject(IExecServerClient, server))
        self.assertTrue(verifyObject(IResolver, FakeResolver({})))
        self.assertTrue(verifyObject(IBridgePool, FakePool({})))

    def test_fs_errors(self) -> None:
        """
        The fake's fs errors carry the §2.5 codes.
        """
        server = MemoryExecServer(Clock())
        failure = self.failureResultOf(server.call("fs/readFile", {"path": "file:///nope"}), CallError)
        self.assertEqual(failure.value.code, -32004)
        server.add_tree({"/d/f": b"x"})
        removing = server.call("fs/remove", {"path": "file:///d", "recursive": False, "force": False})
        self.assertEqual(
            str(self.failureResultOf(removing).value),
            "fs/remove: Directory not empty (os error 39) (code=-32603)",
        )


EXE = "exe-box-4be0c1"


class ApplyPatchTestCase(SynchronousTestCase):
    """
    One environment C{box} on a L{MemoryExecServer}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = MemoryExecServer(self.clock)
        self.ctx = make_context(self.clock, {"box": (EXE, self.server), "down": ("exe-down", None)})

    def run_patch(self, patch: str, environment: str = "box") -> ToolResult:
        """
        Run C{apply_patch} to its end; its text never names an exe id.
        """
        arguments = {"environment_id": environment, "patch": patch}
        result = self.successResultOf(ensureDeferred(apply_patch_tool(self.ctx, arguments)))
        self.assertNotIn("exe-", result.text)
        return result

    def assertResult(self, result: ToolResult, text: str, is_error: bool = False) -> None:
        """
        C{result} has C{text} and C{is_error}.
        """
        self.assertEqual((result.text, result.is_error), (text, is_error))


def patch(*lines: str) -> str:
    """
    A patch of C{lines} between the markers.
    """
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"])


class CallsTests(ApplyPatchTestCase):
    """
    Criterion 18: exactly the calls of §7.11 per operation, and the per-operation text.
    """

    def test_add(self) -> None:
        """
        Add → C{fs/createDirectory} of the parent (recursive), C{fs/writeFile}.
        """
        result = self.run_patch(patch("*** Add File: /tmp/a b/new.txt", "+hello", "+wörld"))
        self.assertResult(result, "/tmp/a b/new.txt: ok")
        self.assertEqual(
            self.server.calls,
            [
                ("fs/createDirectory", {"path": "file:///tmp/a%20b", "recursive": True}),
                (
                    "fs/writeFile",
                    {"path": "file:///tmp/a%20b/new.txt", "dataBase64": b64("hello\nwörld\n".encode())},
                ),
            ],
        )
        self.assertEqual(self.server.files["/tmp/a b/new.txt"], "hello\nwörld\n".encode())

    def test_add_replaces_and_empty(self) -> None:
        """
        An Add without lines writes the empty file, replacing an existing one.
        """
        self.server.add_tree({"/w/e.txt": b"old"})
        self.assertResult(self.run_patch(patch("*** Add File: /w/e.txt")), "/w/e.txt: ok")
        self.assertEqual(self.server.files["/w/e.txt"], b"")
        self.assertEqual(
            self.server.params_of("fs/writeFile"), [{"path": "file:///w/e.txt", "dataBase64": ""}]
        )

    def test_update(self) -> None:
        """
        Update → C{fs/readFile}, C{fs/writeFile} of the result.
        """
        self.server.add_tree({"/w/u.txt": b"a\nb\nc"})
        result = self.run_patch(patch("*** Update File: /w/u.txt", "@@", " a", "-b", "+B"))
        self.assertResult(result, "/w/u.txt: ok")
        self.assertEqual(
            self.server.calls,
            [
                ("fs/readFile", {"path": "file:///w/u.txt"}),
                ("fs/writeFile", {"path": "file:///w/u.txt", "dataBase64": b64(b"a\nB\nc\n")}),
            ],
        )

    def test_move(self) -> None:
        """
        Update with Move → read the old path, create the new parent, write the new path, remove the
        old path with C{recursive} and C{force} false.
        """
        self.server.add_tree({"/w/old.txt": b"x\n"})
        result = self.run_patch(
            patch("*** Update File: /w/old.txt", "*** Move to: /v/new.txt", "-x", "+y")
        )
        self.assertResult(result, "/w/old.txt -> /v/new.txt: ok")
        self.assertEqual(
            self.server.calls,
            [
                ("fs/readFile", {"path": "file:///w/old.txt"}),
                ("fs/createDirectory", {"path": "file:///v", "recursive": True}),
                ("fs/writeFile", {"path": "file:///v/new.txt", "dataBase64": b64(b"y\n")}),
                ("fs/remove", {"path": "file:///w/old.txt", "recursive": False, "force": False}),
            ],
        )
        self.assertEqual(self.server.files, {"/v/new.txt": b"y\n"})

    def test_move_without_hunks_keeps_bytes(self) -> None:
        """
        A Move without hunks writes the content unchanged, UTF-8 or not.
        """
        self.server.add_tree({"/w/bin": b"\xff\x00no newline"})
        result = self.run_patch(patch("*** Update File: /w/bin", "*** Move to: /w/bin2"))
        self.assertResult(result, "/w/bin -> /w/bin2: ok")
        self.assertEqual(self.server.files, {"/w/bin2": b"\xff\x00no newline"})

    def test_move_to_same_path(self) -> None:
        """
        A Move onto the same URI is a plain Update: the file is not removed.
        """
        self.server.add_tree({"/w/s": b"1\n"})
        result = self.run_patch(patch("*** Update File: /w/s", "*** Move to: /w/./s", "-1", "+2"))
        self.assertResult(result, "/w/s -> /w/./s: ok")
        self.assertEqual(self.server.methods(), ["fs/readFile", "fs/writeFile"])
        self.assertEqual(self.server.files, {"/w/s": b"2\n"})

    def test_delete(self) -> None:
        """
        Delete → C{fs/remove} with C{recursive} and C{force} false.
        """
        self.server.add_tree({"/w/d.txt": b""})
        self.assertResult(self.run_patch(patch("*** Delete File: /w/d.txt")), "/w/d.txt: ok")
        self.assertEqual(
            self.server.calls,
            [("fs/remove", {"path": "file:///w/d.txt", "recursive": False, "force": False})],
        )
        self.assertEqual(self.server.files, {})

    def test_all_in_order(self) -> None:
        """
        One line per operation, in patch order, joined with C{\\n}.
        """
        self.server.add_tree({"/w/u": b"k\n", "/w/d": b"", "/w/m": b"m\n"})
        result = self.run_patch(
            patch(
                "*** Add File: /w/a",
                "+new",
                "*** Update File: /w/u",
                "+added",
                "*** Update File: /w/m",
                "*** Move to: /w/n",
                "*** Delete File: /w/d",
            )
        )
        self.assertResult(result, "/w/a: ok\n/w/u: ok\n/w/m -> /w/n: ok\n/w/d: ok")
        self.assertEqual(self.server.files, {"/w/a": b"new\n", "/w/u": b"k\nadded\n", "/w/n": b"m\n"})

    def test_errors_do_not_stop_the_next(self) -> None:
        """
        A failed operation is reported as C{<path>: error: <message>} and the next one still runs;
        the result is an error.
        """
        self.server.add_tree({"/w/u": b"a\n", "/w/latin1": "café\n".encode("latin-1")})
        result = self.run_patch(
            patch(
                "*** Update File: /w/missing",
                "+x",
                "*** Delete File: /w/gone",
                "*** Update File: rel/path",
                "+x",
                "*** Update File: /w/u",
                "-zzz",
                "*** Update File: /w/latin1",
                "+x",
                "*** Add File: /w/ok",
                "+fine",
            )
        )
        self.assertResult(
            result,
            "/w/missing: error: fs/readFile: No such file or directory (os error 2) (code=-32004)\n"
            "/w/gone: error: fs/remove: No such file or directory (os error 2) (code=-32004)\n"
            'rel/path: error: path must be absolute: "rel/path"\n'
            "/w/u: error: hunk 1: context not found\n"
            "/w/latin1: error: not valid UTF-8\n"
            "/w/ok: ok",
            is_error=True,
        )
        self.assertEqual(self.server.files["/w/ok"], b"fine\n")
        self.assertEqual(self.server.files["/w/u"], b"a\n")
        self.assertEqual(
            self.server.params_of("fs/writeFile"),
            [{"path": "file:///w/ok", "dataBase64": b64(b"fine\n")}],
        )

    def test_move_target_relative(self) -> None:
        """
        A Move whose new path does not convert fails before any call.
        """
        self.server.add_tree({"/w/m": b"m\n"})
        result = self.run_patch(patch("*** Update File: /w/m", "*** Move to: there"))
        self.assertResult(result, '/w/m -> there: error: path must be absolute: "there"', is_error=True)
        self.assertEqual(self.server.calls, [])

    def test_write_failure(self) -> None:
        """
        A failing C{fs/writeFile} is the operation's error, with the call's text.
        """
        self.server.directories.add("/w/dir")
        result = self.run_patch(patch("*** Add File: /w/dir", "+x"))
        self.assertResult(
            result,
            "/w/dir: error: fs/writeFile: Is a directory (os error 21) (code=-32603)",
            is_error=True,
        )

    def test_file_uri_and_windows_paths(self) -> None:
        """
        Paths are converted by §3.1: a C{file://} URI goes unchanged.
        """
        self.run_patch(patch("*** Delete File: file:///w/x%20y", "*** Delete File: C:\\w\\z"))
        self.assertEqual(
            [p["path"] for p in self.server.params_of("fs/remove")],
            ["file:///w/x%20y", "file:///C:/w/z"],
        )


class ParsingTests(ApplyPatchTestCase):
    """
    Criterion 19: parsing and matching through the tool.
    """

    def test_missing_markers(self) -> None:
        """
        A missing begin or end marker → C{invalid patch: … (line <n>)} and no call at all, not even
        the environment's resolution.
        """
        result = self.run_patch("*** Add File: /w/a\n+x\n*** End Patch")
        self.assertResult(
            result, 'invalid patch: first line must be "*** Begin Patch" (line 1)', is_error=True
        )
        result = self.run_patch("*** Begin Patch\n*** Add File: /w/a\n+x\n", environment="nowhere")
        self.assertResult(
            result, 'invalid patch: last line must be "*** End Patch" (line 3)', is_error=True
        )
        self.assertEqual(self.server.calls, [])
        assert isinstance(self.ctx.resolver, FakeResolver)
        self.assertEqual(self.ctx.resolver.resolved, [])

    def test_matching(self) -> None:
        """
        Anchors, whitespace tolerance, an end-of-file hunk and a pure insertion apply as specified;
        the result ends with C{\\n}.
        """
        self.server.add_tree({"/w/f.py": b"def a():\n    return 1   \ndef b():\n    return 1\n  tail"})
        result = self.run_patch(
            patch(
                "*** Update File: /w/f.py",
                "@@ def b():",
                "-return 1",
                "+    return 2",
                "@@",
                "-tail",
                "+end",
                "*** End of File",
                "@@",
                "+# appended",
            )
        )
        self.assertResult(result, "/w/f.py: ok")
        self.assertEqual(
            self.server.files["/w/f.py"],
            b"def a():\n    return 1   \ndef b():\n    return 2\nend\n# appended\n",
        )

    def test_trailing_whitespace_tolerance(self) -> None:
        """
        Context with trailing whitespace in the file (a CRLF file) matches; the matched lines are
        replaced by the hunk's own context and added lines.
        """
        self.server.add_tree({"/w/crlf": b"one\r\ntwo  \r\n"})
        result = self.run_patch(patch("*** Update File: /w/crlf", " one", "-two", "+2"))
        self.assertResult(result, "/w/crlf: ok")
        self.assertEqual(self.server.files["/w/crlf"], b"one\n2\n")

    def test_context_not_found(self) -> None:
        """
        Context absent from the file → C{hunk <k>: context not found}, the file unchanged.
        """
        self.server.add_tree({"/w/c": b"a\nb\n"})
        result = self.run_patch(patch("*** Update File: /w/c", "-a", "+A", "@@ nope", "+x"))
        self.assertResult(result, "/w/c: error: hunk 2: context not found", is_error=True)
        self.assertEqual(self.server.files["/w/c"], b"a\nb\n")
        self.assertEqual(self.server.methods(), ["fs/readFile"])

    def test_not_utf8(self) -> None:
        """
        A non-UTF-8 file cannot be updated.
        """
        self.server.add_tree({"/w/b": b"\xc3\x28\n"})
        result = self.run_patch(patch("*** Update File: /w/b", "+x"))
        self.assertResult(result, "/w/b: error: not valid UTF-8", is_error=True)

    def test_malformed_read(self) -> None:
        """
        An C{fs/readFile} answer without base64 is the operation's error.
        """
        self.server.overrides["fs/readFile"] = lambda params: {"dataBase64": "!!"}
        result = self.run_patch(patch("*** Update File: /w/b", "+x"))
        self.assertTrue(result.is_error)
        self.assertTrue(
            result.text.startswith("/w/b: error: fs/readFile: malformed result: "), result.text
        )

    def test_no_operations(self) -> None:
        """
        A patch without operations answers the empty text.
        """
        self.assertResult(self.run_patch(patch()), "")


class ArgumentTests(ApplyPatchTestCase):
    """
    Arguments and the environment.
    """

    def test_arguments(self) -> None:
        """
        Missing C{patch}, a wrong type, an empty environment.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"environment_id": "box"}, "invalid arguments: patch is required"),
            ({"environment_id": "box", "patch": 5}, "invalid arguments: patch must be string"),
            (
                {"environment_id": "", "patch": patch()},
                "environment_id is required; call list_environments to see available names",
            ),
        ]
        for arguments, text in cases:
            result = self.successResultOf(ensureDeferred(apply_patch_tool(self.ctx, arguments)))
            self.assertResult(result, text, is_error=True)

    def test_environment_failures(self) -> None:
        """
        An unknown name → the resolver's text; a refused dial → C{environment "<name>" unavailable}.
        """
        self.assertResult(
            self.run_patch(patch(), environment="nowhere"),
            'no environment named "nowhere" (run list_environments to see what\'s available)',
            is_error=True,
        )
        self.assertResult(
            self.run_patch(patch(), environment="down"),
            'environment "down" unavailable: bridge dial: HTTP 503: executor not connected',
            is_error=True,
        )


class FakeExecServerTests(SynchronousTestCase):
    """
    The same tool over the shared L{FakeExecServer} (real fs semantics in a temporary root).
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(os.path.join(self.root, "w"))
        clock = Clock()
        self.server = FakeExecServer(clock, root=self.root)
        client = FakeExecServerClient(self.server)
        self.ctx = make_context(clock, {"box": (EXE, client)})

    def local(self, path: str) -> str:
        """
        Where C{path} of the environment is on this machine.
        """
        return os.path.join(self.root, path.lstrip("/"))

    def test_operations_leave_the_expected_files(self) -> None:
        """
        Add into a missing directory, update, move and delete leave the expected files.
        """
        for name, content in [("u.txt", b"one\ntwo\n"), ("m.txt", b"m\n"), ("d.txt", b"d")]:
            with open(self.local(f"/w/{name}"), "wb") as f:
                f.write(content)
        arguments = {
            "environment_id": "box",
            "patch": patch(
                "*** Add File: /w/sub/new.txt",
                "+fresh",
                "*** Update File: /w/u.txt",
                " one",
                "-two",
                "+2",
                "*** Update File: /w/m.txt",
                "*** Move to: /v/moved.txt",
                "@@",
                "+appended",
                "*** Delete File: /w/d.txt",
                "*** Delete File: /w/never.txt",
            ),
        }
        result = self.successResultOf(ensureDeferred(apply_patch_tool(self.ctx, arguments)))
        self.assertEqual(
            (result.text, result.is_error),
            (
                "/w/sub/new.txt: ok\n/w/u.txt: ok\n/w/m.txt -> /v/moved.txt: ok\n/w/d.txt: ok\n"
                "/w/never.txt: error: fs/remove: No such file or directory (os error 2)"
                " (code=-32004)",
                True,
            ),
        )
        contents = {}
        for path in ["/w/sub/new.txt", "/w/u.txt", "/v/moved.txt"]:
            with open(self.local(path), "rb") as f:
                contents[path] = f.read()
        self.assertEqual(
            contents,
            {"/w/sub/new.txt": b"fresh\n", "/w/u.txt": b"one\n2\n", "/v/moved.txt": b"m\nappended\n"},
        )
        self.assertFalse(os.path.exists(self.local("/w/m.txt")))
        self.assertFalse(os.path.exists(self.local("/w/d.txt")))
