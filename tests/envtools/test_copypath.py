"""
Tests for L{codexgw.envtools.copypath}: the C{copy_path} tool between two in-memory exec-servers
(L{tests.envtools.test_applypatch.MemoryExecServer}) on a fake clock, with a fake relay creator
(C{envtools.md} §7.12, acceptance criteria 20–22).

The processes of a copy are scripted by their role (the last part of C{copy-<n>-<role>}); the scripts
of the ws transport also carry out the file moves on the fake trees, so that a test sees the
destination appear where the real commands would put it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.envtools import copypath
from codexgw.envtools.copypath import copy_path_tool
from codexgw.envtools.interfaces import (
    CallError,
    IRelayCreator,
    RelayError,
    RelayTicket,
    RelayUnavailable,
    ToolResult,
)
from codexgw.testing.fakeexecserver import FakeExecServer, FakeExecServerClient, FakeProcess
from tests.envtools.test_applypatch import (
    NOENT,
    MemoryExecServer,
    MemoryProcess,
    b64,
    make_context,
    rpc_error,
)

X = "0123456789abcdef0123456789abcdef"
TICKET = RelayTicket(
    "tkt_AbC-123", "https://gw.example/relay/t/up?x=1", "https://gw.example/relay/t/down?x=1"
)
AUTH = "'Authorization: Bearer tkt_AbC-123'"
DEFAULT_ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin"}
EXE_SRC = "exe-src-11aa22"
EXE_DST = "exe-dst-33bb44"

Script = Callable[[MemoryExecServer, MemoryProcess], None]


@implementer(IRelayCreator)
class FakeRelayCreator:
    """
    Hands out L{TICKET}, or fails with C{error}; records its calls.
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, int, int]] = []

    def create_relay(
        self, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int
    ) -> Deferred[RelayTicket]:
        """
        See L{IRelayCreator.create_relay}.
        """
        self.calls.append((source_exe_id, dest_exe_id, ttl_seconds, max_bytes))
        if self.error is not None:
            return fail(self.error)
        return succeed(TICKET)


def exits(code: int, stderr: bytes = b"", after: float = 0.0) -> Script:
    """
    A process that writes C{stderr} and exits with C{code}, C{after} seconds after its start.
    """

    def script(server: MemoryExecServer, process: MemoryProcess) -> None:
        def end() -> None:
            if stderr:
                process.output("stderr", stderr)
            process.finish(code)

        if after:
            server.clock.callLater(after, end)
        else:
            end()

    return script


def runs_forever(server: MemoryExecServer, process: MemoryProcess) -> None:
    """
    A process that only ends when terminated.
    """


def refuses(message: str = NOENT) -> Script:
    """
    A process whose C{process/start} fails with the OS text.
    """

    def script(server: MemoryExecServer, process: MemoryProcess) -> None:
        raise rpc_error("process/start", -32603, message)

    return script


def move_file(server: MemoryExecServer, process: MemoryProcess) -> None:
    """
    C{mv -f TMP DST}.
    """
    _, _, tmp, dst = process.argv
    server.files[dst] = server.files.pop(tmp)
    process.finish(0)


def pack(server: MemoryExecServer, process: MemoryProcess) -> None:
    """
    C{tar czf /tmp/codexgw-copy-X.tar.gz -C SRC .}: a stand-in archive of the tree.
    """
    server.add_tree({process.argv[2]: b"TAR:" + process.argv[4].encode()})
    process.finish(0)


def unpack(server: MemoryExecServer, process: MemoryProcess) -> None:
    """
    The ws finalize script: the archive becomes the directory C{DST} with one file.
    """
    archive = f"/dst/tree.partial-{X}.tar.gz"
    data = server.files.pop(archive)
    server.add_tree({"/dst/tree/content": data})
    process.finish(0)


def clean(server: MemoryExecServer, process: MemoryProcess) -> None:
    """
    C{rm -rf TMP TMP.tar.gz}.
    """
    for path in process.argv[2:]:
        server.files.pop(path, None)
    process.finish(0)


def by_role(server: MemoryExecServer, scripts: Mapping[str, Script]) -> Callable[[MemoryProcess], None]:
    """
    A program of C{server} that runs the script of the process's role; C{clean…} defaults to
    L{clean}, any other role runs forever.
    """

    def program(process: MemoryProcess) -> None:
        role = process.process_id.split("-", 2)[2]
        script = scripts.get(role, clean if role.startswith("clean") else runs_forever)
        script(server, process)

    return program


def raising(error: CallError) -> Callable[[Any], Any]:
    """
    An override that fails with C{error}.
    """

    def answer(params: Any) -> Any:
        raise error

    return answer


def start_params(process_id: str, argv: list[str]) -> dict[str, Any]:
    """
    The C{process/start} params of a copy process.
    """
    return {
        "processId": process_id,
        "argv": argv,
        "cwd": "file:///",
        "env": DEFAULT_ENV,
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
    }


class CopyPathTestCase(SynchronousTestCase):
    """
    Environments C{src} and C{dst} on two servers, C{down} that cannot be dialled, a relay creator.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.src = MemoryExecServer(self.clock)
        self.dst = MemoryExecServer(self.clock)
        self.src.add_tree({"/data/f.bin": b"\x00payload\xff", "/data/tree/a": b"a"})
        self.dst.add_tree({"/dst/keep": b"", "/dst/dir/x": b""})
        self.relay = FakeRelayCreator()
        self.patch(copypath, "random_hex", lambda: X)
        self.ctx = self.context(self.relay)

    def context(self, relay: IRelayCreator | None) -> Any:
        """
        A context over the two servers with C{relay} as relay creator.
        """
        return make_context(
            self.clock,
            {"src": (EXE_SRC, self.src), "dst": (EXE_DST, self.dst), "down": ("exe-down", None)},
            relay,
        )

    def programs(self, source: Mapping[str, Script], destination: Mapping[str, Script]) -> None:
        """
        Script the processes of both sides by role.
        """
        self.src.program = by_role(self.src, source)
        self.dst.program = by_role(self.dst, destination)

    def copy(self, **arguments: Any) -> ToolResult:
        """
        Run C{copy_path} from C{src:/data/f.bin} to C{dst:/dst/out.bin} (unless overridden), advancing
        the clock in steps of 0.25 s until it answers; its text never names an exe id.
        """
        full = {
            "source_environment_id": "src",
            "source_path": "/data/f.bin",
            "destination_environment_id": "dst",
            "destination_path": "/dst/out.bin",
            **arguments,
        }
        running = ensureDeferred(copy_path_tool(self.ctx, full))
        for _ in range(10_000):
            if running.called:
                break
            self.clock.advance(0.25)
        result = self.successResultOf(running)
        self.assertNotIn("exe-", result.text)
        return result

    def copy_tree(self, **arguments: Any) -> ToolResult:
        """
        Run C{copy_path} of the tree C{src:/data/tree} to C{dst:/dst/tree}.
        """
        tree = {"source_path": "/data/tree", "destination_path": "/dst/tree", "recursive": True}
        return self.copy(**tree, **arguments)

    def assertError(self, result: ToolResult, text: str) -> None:
        """
        C{result} is an error with C{text}.
        """
        self.assertEqual((result.text, result.is_error), (text, True))

    def started(self, server: MemoryExecServer) -> list[str]:
        """
        The process ids started on C{server}, in order.
        """
        return [params["processId"] for params in server.params_of("process/start")]


class PreparationTests(CopyPathTestCase):
    """
    Criterion 20: argument and pre-check errors with their exact texts.
    """

    def test_fakes(self) -> None:
        """
        The fake relay creator provides L{IRelayCreator}.
        """
        self.assertTrue(verifyObject(IRelayCreator, self.relay))

    def test_paths_must_be_absolute(self) -> None:
        """
        A relative path or C{/} alone → the POSIX-paths text, without any call.
        """
        for source, destination in [("rel/f", "/d"), ("/data/f.bin", "d"), ("/", "/d"), ("/a", "///")]:
            result = self.copy(source_path=source, destination_path=destination)
            self.assertError(result, "copy_path requires absolute POSIX paths")
        self.assertEqual(self.src.calls + self.dst.calls, [])

    def test_transport_values(self) -> None:
        """
        C{ftp} is refused; C{HTTP} is accepted in any letter case.
        """
        self.assertError(
            self.copy(transport="ftp"), 'invalid arguments: transport must be "auto", "http" or "ws"'
        )
        self.programs({"src": exits(0)}, {"dst": exits(0)})
        self.assertEqual(self.copy(transport="HTTP").text, '{"transport":"http","duration_ms":0}')

    def test_argument_types(self) -> None:
        """
        The common argument rules apply.
        """
        self.assertError(self.copy(timeout_ms="5"), "invalid arguments: timeout_ms must be integer")
        self.assertError(
            self.copy(destination_environment_id=""),
            "destination_environment_id is required; call list_environments to see available names",
        )

    def test_environments(self) -> None:
        """
        Resolution failures are prefixed by their side; a refused dial names the environment.
        """
        self.assertError(
            self.copy(source_environment_id="nope"),
            'source: no environment named "nope" (run list_environments to see what\'s available)',
        )
        self.assertError(
            self.copy(destination_environment_id="nope"),
            'destination: no environment named "nope" (run list_environments to see what\'s available)',
        )
        self.assertError(
            self.copy(destination_environment_id="down"),
            'environment "down" unavailable: bridge dial: HTTP 503: executor not connected',
        )

    def test_source_missing(self) -> None:
        """
        A missing source, its plain path named (trailing C{/} removed).
        """
        self.assertError(
            self.copy(source_path="/data/none//"), "copy_path: source not found: /data/none"
        )
        self.assertEqual(self.src.calls, [("fs/getMetadata", {"path": "file:///data/none"})])

    def test_directory_without_recursive(self) -> None:
        """
        A directory source needs C{recursive}.
        """
        self.assertError(
            self.copy(source_path="/data/tree"), "copy_path: source is a directory; set recursive=true"
        )

    def test_file_with_recursive(self) -> None:
        """
        C{recursive} needs a directory source.
        """
        self.assertError(
            self.copy(recursive=True), "copy_path: source is not a directory; set recursive=false"
        )

    def test_recursive_destination_exists(self) -> None:
        """
        A recursive copy never merges into an existing destination.
        """
        result = self.copy(source_path="/data/tree", destination_path="/dst/keep", recursive=True)
        self.assertError(result, "copy_path: destination exists: /dst/keep")

    def test_file_onto_directory(self) -> None:
        """
        A file copy onto a directory is refused.
        """
        self.assertError(
            self.copy(destination_path="/dst/dir/"), "copy_path: destination is a directory: /dst/dir"
        )
        self.assertEqual(self.started(self.dst), [])

    def test_other_metadata_error(self) -> None:
        """
        Another call error → C{copy_path: <error>}.
        """
        denied = rpc_error("fs/getMetadata", -32603, "Permission denied (os error 13)")
        self.dst.overrides["fs/getMetadata"] = raising(denied)
        self.assertError(
            self.copy(), "copy_path: fs/getMetadata: Permission denied (os error 13) (code=-32603)"
        )


TMP = f"/dst/out.bin.partial-{X}"


class HttpTests(CopyPathTestCase):
    """
    Criterion 21: the http transport.
    """

    def test_file(self) -> None:
        """
        A file: the relay for both exe ids with ttl C{ceil(timeout/1 s) + 30} and C{max_bytes} 0,
        the destination started first, both argvs exact, then the http result.
        """
        self.programs({"src": exits(0, after=0.5)}, {"dst": exits(0, after=0.75)})
        result = self.copy(timeout_ms=1500, transport="http")
        self.assertEqual(
            (result.text, result.is_error), ('{"transport":"http","duration_ms":750}', False)
        )
        self.assertEqual(self.relay.calls, [(EXE_SRC, EXE_DST, 32, 0)])
        self.assertEqual(
            self.dst.params_of("process/start"),
            [
                start_params(
                    "copy-1-dst",
                    [
                        "sh",
                        "-c",
                        f"mkdir -p '/dst' && curl -fsS -H {AUTH} -o '{TMP}'"
                        " 'https://gw.example/relay/t/down?x=1' && mv -f"
                        f" '{TMP}' '/dst/out.bin'",
                    ],
                )
            ],
        )
        self.assertEqual(
            self.src.params_of("process/start"),
            [
                start_params(
                    "copy-1-src",
                    [
                        "sh",
                        "-c",
                        f"curl -fsS -T '/data/f.bin' -H {AUTH} 'https://gw.example/relay/t/up?x=1'",
                    ],
                )
            ],
        )
        reads = self.src.params_of("process/read") + self.dst.params_of("process/read")
        self.assertTrue(all(read["maxBytes"] == 65536 and read["waitMs"] <= 250 for read in reads))
        self.assertEqual(self.dst.params_of("process/terminate"), [])

    def test_tree(self) -> None:
        """
        A tree: tar over curl on both sides under C{bash} with C{pipefail}; paths quoted.
        """
        self.src.add_tree({"/data/it's/f": b""})
        self.programs({"src": exits(0)}, {"dst": exits(0)})
        result = self.copy(source_path="/data/it's", destination_path="/dst/tree", recursive=True)
        self.assertEqual(result.text, '{"transport":"http","duration_ms":0}')
        self.assertEqual(self.relay.calls, [(EXE_SRC, EXE_DST, 630, 0)])
        tmp = f"/dst/tree.partial-{X}"
        self.assertEqual(
            self.dst.params_of("process/start")[0]["argv"],
            [
                "bash",
                "-c",
                f"set -o pipefail; test ! -e '/dst/tree' && mkdir -p '{tmp}' && curl -fsS -H {AUTH}"
                f" 'https://gw.example/relay/t/down?x=1' | tar xzf - -C '{tmp}' && mv '{tmp}'"
                " '/dst/tree'",
            ],
        )
        self.assertEqual(
            self.src.params_of("process/start")[0]["argv"],
            [
                "bash",
                "-c",
                "set -o pipefail; tar czf - -C '/data/it'\\''s' . | curl -fsS -T - -H"
                f" {AUTH} 'https://gw.example/relay/t/up?x=1'",
            ],
        )

    def test_destination_fails(self) -> None:
        """
        The destination exiting 22 → the source is terminated at once, C{rm -rf} cleans up on the
        destination, and the text names both exit codes and stderrs.
        """
        curl = b"curl: (22) The requested URL returned error: 404\n"
        self.programs({"src": runs_forever}, {"dst": exits(22, curl, after=1.0)})
        result = self.copy()
        self.assertError(
            result,
            'copy_path failed (http): source exit 137, destination exit 22: source stderr "",'
            ' destination stderr "curl: (22) The requested URL returned error: 404\\n"',
        )
        self.assertEqual(self.src.params_of("process/terminate"), [{"processId": "copy-1-src"}])
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-1-clean"])
        self.assertEqual(
            self.dst.params_of("process/start")[1],
            start_params("copy-1-clean", ["rm", "-rf", TMP, TMP + ".tar.gz"]),
        )

    def test_stderr_kept_last_2k(self) -> None:
        """
        Only the last 2 KiB of a side's stderr are kept.
        """
        self.programs({"src": exits(3, b"x" * 3000 + b"END")}, {"dst": runs_forever})
        result = self.copy(transport="http")
        self.assertIn('source stderr "' + "x" * 2045 + 'END"', result.text)
        self.assertIn("source exit 3, destination exit 137", result.text)

    def test_start_failure_without_fallback(self) -> None:
        """
        With C{http}, a source that cannot start ends the copy: its start error is its stderr, the
        destination is terminated.
        """
        self.programs({"src": refuses()}, {"dst": runs_forever})
        result = self.copy(transport="http")
        self.assertError(
            result,
            "copy_path failed (http): source exit none, destination exit 137: source stderr"
            ' "process/start: No such file or directory (os error 2) (code=-32603)",'
            ' destination stderr ""',
        )
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-dst"}])

    def test_destination_start_failure(self) -> None:
        """
        With C{http}, a destination that cannot start: the source is never started.
        """
        self.programs({}, {"dst": refuses("Permission denied (os error 13)")})
        result = self.copy(transport="http")
        self.assertError(
            result,
            'copy_path failed (http): source exit none, destination exit none: source stderr "",'
            ' destination stderr "process/start: Permission denied (os error 13) (code=-32603)"',
        )
        self.assertEqual(self.started(self.src), [])

    def test_relay_not_enabled(self) -> None:
        """
        C{http} with the relay unavailable (or no relay creator at all) → C{relay not enabled}, and
        nothing is started.
        """
        self.ctx = self.context(FakeRelayCreator(RelayUnavailable()))
        self.assertError(self.copy(transport="http"), "copy_path failed (http): relay not enabled")
        self.ctx = self.context(None)
        self.assertError(self.copy(transport="http"), "copy_path failed (http): relay not enabled")
        self.assertEqual(self.started(self.src) + self.started(self.dst), [])

    def test_relay_error(self) -> None:
        """
        Another relay failure is final, also with C{auto}.
        """
        self.ctx = self.context(FakeRelayCreator(RelayError("relay quota exceeded")))
        self.assertError(self.copy(), "copy_path failed (http): relay quota exceeded")
        self.assertEqual(self.started(self.src) + self.started(self.dst), [])

    def test_read_failure(self) -> None:
        """
        A failing read step fails the transport with the call's error; the other process is
        terminated by the cleanup.
        """
        self.programs({"src": runs_forever}, {"dst": runs_forever})
        self.dst.overrides["process/read"] = raising(CallError("relay reset: idle"))
        result = self.copy(transport="http")
        self.assertError(result, "copy_path failed (http): relay reset: idle")
        self.assertEqual(self.src.params_of("process/terminate"), [{"processId": "copy-1-src"}])
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-dst"}])

    def test_deadline(self) -> None:
        """
        Both sides still running at the deadline: both terminated, cleanup, the timeout text.
        """
        self.programs({"src": runs_forever}, {"dst": runs_forever})
        result = self.copy(timeout_ms=1000)
        self.assertError(result, "copy_path failed (http): timed out after 1000 ms")
        self.assertEqual(self.src.params_of("process/terminate"), [{"processId": "copy-1-src"}])
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-dst"}])
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-1-clean"])

    def test_cancelled_by_front_end(self) -> None:
        """
        A call cancelled by its caller ends with the cancellation; the cleanup still runs.
        """
        self.programs({"src": runs_forever}, {"dst": runs_forever})
        arguments = {
            "source_environment_id": "src",
            "source_path": "/data/f.bin",
            "destination_environment_id": "dst",
            "destination_path": "/dst/out.bin",
        }
        running = ensureDeferred(copy_path_tool(self.ctx, arguments))
        self.clock.advance(0.5)
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.assertEqual(self.src.params_of("process/terminate"), [{"processId": "copy-1-src"}])
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-dst"}])
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-1-clean"])

    def test_same_environment(self) -> None:
        """
        Source and destination may be one environment: both processes on one stream.
        """
        self.src.add_tree({"/dst/x": b""})
        self.src.program = by_role(self.src, {"src": exits(0), "dst": exits(0)})
        result = self.copy(destination_environment_id="src")
        self.assertEqual(result.text, '{"transport":"http","duration_ms":0}')
        self.assertEqual(self.relay.calls, [(EXE_SRC, EXE_SRC, 630, 0)])
        self.assertEqual(self.started(self.src), ["copy-1-dst", "copy-1-src"])


def ws_file_scripts() -> tuple[dict[str, Script], dict[str, Script]]:
    """
    Source and destination scripts of a ws file copy that succeeds.
    """
    return {}, {"fin": move_file}


class AutoTests(CopyPathTestCase):
    """
    Criterion 21: C{auto} falls back to ws.
    """

    def assertWs(self, result: ToolResult) -> None:
        """
        The copy went over ws and the file arrived.
        """
        self.assertFalse(result.is_error, result.text)
        self.assertTrue(
            result.text.startswith('{"transport":"ws","bytes":9,"duration_ms":'), result.text
        )
        self.assertEqual(self.dst.files["/dst/out.bin"], b"\x00payload\xff")
        self.assertNotIn(TMP, self.dst.files)

    def test_relay_unavailable(self) -> None:
        """
        Relay unavailable → ws without any http process and without cleanup.
        """
        self.ctx = self.context(FakeRelayCreator(RelayUnavailable()))
        self.programs(*ws_file_scripts())
        self.assertWs(self.copy())
        self.assertEqual(self.started(self.dst), ["copy-1-fin"])

    def test_no_relay_creator(self) -> None:
        """
        A context without relay creator goes straight to ws.
        """
        self.ctx = self.context(None)
        self.programs(*ws_file_scripts())
        self.assertWs(self.copy(transport="auto"))

    def test_exit_127(self) -> None:
        """
        A side exiting 127 (no curl) → the other is terminated, cleanup, then ws.
        """
        self.programs(
            {"src": exits(127, b"sh: curl: not found\n")}, {"dst": runs_forever, "fin": move_file}
        )
        self.assertWs(self.copy())
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-1-clean", "copy-1-fin"])
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-dst"}])

    def test_start_failure(self) -> None:
        """
        A side that fails to start → cleanup, then ws.
        """
        self.programs({}, {"dst": refuses(), "fin": move_file})
        self.assertWs(self.copy())
        self.assertEqual(self.started(self.src), [])
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-1-clean", "copy-1-fin"])

    def test_second_cleanup_has_its_own_id(self) -> None:
        """
        ws failing after an http fallback cleans up again under C{copy-<n>-clean2}.
        """
        self.programs({"src": refuses()}, {"dst": runs_forever, "fin": exits(1, b"mv: failed\n")})
        result = self.copy()
        self.assertError(
            result,
            'copy_path failed (ws): source exit none, destination exit 1: source stderr "",'
            ' destination stderr "mv: failed\\n"',
        )
        self.assertEqual(
            self.started(self.dst), ["copy-1-dst", "copy-1-clean", "copy-1-fin", "copy-1-clean2"]
        )

    def test_counter(self) -> None:
        """
        Every call takes the next copy number.
        """
        self.programs({"src": exits(0)}, {"dst": exits(0)})
        self.copy()
        self.copy()
        self.assertEqual(self.started(self.dst), ["copy-1-dst", "copy-2-dst"])


class WsTests(CopyPathTestCase):
    """
    Criterion 22: the ws transport.
    """

    def test_file(self) -> None:
        """
        A file: C{fs/readFile} on the source; C{fs/createDirectory}, C{fs/writeFile} of the
        C{.partial-} path and C{mv -f} on the destination.
        """
        self.programs(*ws_file_scripts())
        self.dst.directories.discard("/dst/new")
        result = self.copy(destination_path="/dst/new/out.bin", transport="ws")
        self.assertEqual(
            (result.text, result.is_error), ('{"transport":"ws","bytes":9,"duration_ms":0}', False)
        )
        tmp = f"/dst/new/out.bin.partial-{X}"
        self.assertEqual(
            self.src.calls,
            [
                ("fs/getMetadata", {"path": "file:///data/f.bin"}),
                ("fs/readFile", {"path": "file:///data/f.bin"}),
            ],
        )
        self.assertEqual(
            [call for call in self.dst.calls if call[0] != "process/read"],
            [
                ("fs/getMetadata", {"path": "file:///dst/new/out.bin"}),
                ("fs/createDirectory", {"path": "file:///dst/new", "recursive": True}),
                (
                    "fs/writeFile",
                    {
                        "path": f"file:///dst/new/out.bin.partial-{X}",
                        "dataBase64": b64(b"\x00payload\xff"),
                    },
                ),
                ("process/start", start_params("copy-1-fin", ["mv", "-f", tmp, "/dst/new/out.bin"])),
            ],
        )
        self.assertEqual(self.dst.files["/dst/new/out.bin"], b"\x00payload\xff")

    def test_tree(self) -> None:
        """
        A tree: pack on the source, C{fs/getMetadata} and C{fs/readFile} of the tarball, its removal,
        then C{fs/writeFile} of C{TMP.tar.gz} and the finalize script on the destination.
        """
        self.programs({"pack": pack}, {"fin": unpack})
        result = self.copy_tree(transport="ws")
        archive = b"TAR:/data/tree"
        self.assertEqual(result.text, f'{{"transport":"ws","bytes":{len(archive)},"duration_ms":0}}')
        tarball = f"/tmp/codexgw-copy-{X}.tar.gz"
        self.assertEqual(
            [call for call in self.src.calls if call[0] != "process/read"],
            [
                ("fs/getMetadata", {"path": "file:///data/tree"}),
                (
                    "process/start",
                    start_params("copy-1-pack", ["tar", "czf", tarball, "-C", "/data/tree", "."]),
                ),
                ("fs/getMetadata", {"path": f"file://{tarball}"}),
                ("fs/readFile", {"path": f"file://{tarball}"}),
                ("fs/remove", {"path": f"file://{tarball}", "recursive": False, "force": True}),
            ],
        )
        tmp = f"/dst/tree.partial-{X}"
        self.assertEqual(
            [call for call in self.dst.calls if call[0] != "process/read"],
            [
                ("fs/getMetadata", {"path": "file:///dst/tree"}),
                ("fs/createDirectory", {"path": "file:///dst", "recursive": True}),
                ("fs/writeFile", {"path": f"file://{tmp}.tar.gz", "dataBase64": b64(archive)}),
                (
                    "process/start",
                    start_params(
                        "copy-1-fin",
                        [
                            "sh",
                            "-c",
                            f"test ! -e '/dst/tree' && mkdir -p '{tmp}' && tar xzf '{tmp}.tar.gz'"
                            f" -C '{tmp}' && rm -f '{tmp}.tar.gz' && mv '{tmp}' '/dst/tree'",
                        ],
                    ),
                ),
            ],
        )
        self.assertEqual(self.dst.files["/dst/tree/content"], archive)
        self.assertNotIn(tarball, self.src.files)

    def test_source_too_large(self) -> None:
        """
        A source above 32 MiB → the exact text, nothing read and no cleanup.
        """
        self.src.overrides["fs/getMetadata"] = lambda params: {"isDirectory": False, "size": 33554433}
        result = self.copy(transport="ws")
        self.assertError(result, 'copy_path: source larger than 33554432 bytes; use transport "http"')
        self.assertEqual(self.src.methods(), ["fs/getMetadata"])
        self.assertEqual(self.started(self.dst), [])

    def test_exactly_32_mib_is_fine(self) -> None:
        """
        33554432 bytes are within the limit.
        """
        self.src.overrides["fs/getMetadata"] = lambda params: {"isDirectory": False, "size": 33554432}
        self.programs(*ws_file_scripts())
        self.assertFalse(self.copy(transport="ws").is_error)

    def test_tarball_too_large(self) -> None:
        """
        A tarball above 32 MiB → the same text; the tarball is removed and not read.
        """
        self.programs({"pack": pack}, {})
        tarball_uri = f"file:///tmp/codexgw-copy-{X}.tar.gz"
        sizes = {tarball_uri: 40_000_000}
        plain = self.src._fs_getMetadata

        def metadata(params: Any) -> Any:
            if params["path"] in sizes:
                return {"isDirectory": False, "size": sizes[params["path"]]}
            return plain("fs/getMetadata", params)

        self.src.overrides["fs/getMetadata"] = metadata
        result = self.copy_tree(transport="ws")
        self.assertError(result, 'copy_path: source larger than 33554432 bytes; use transport "http"')
        self.assertNotIn("fs/readFile", self.src.methods())
        self.assertEqual(
            self.src.params_of("fs/remove"), [{"path": tarball_uri, "recursive": False, "force": True}]
        )

    def test_pack_fails(self) -> None:
        """
        A failing pack: the failure text with the pack as source, the tarball removed, cleanup.
        """
        self.programs({"pack": exits(2, b"tar: ./x: Cannot open: Permission denied\n")}, {})
        result = self.copy_tree(transport="ws")
        self.assertError(
            result,
            "copy_path failed (ws): source exit 2, destination exit none: source stderr"
            ' "tar: ./x: Cannot open: Permission denied\\n", destination stderr ""',
        )
        self.assertEqual(len(self.src.params_of("fs/remove")), 1)
        self.assertEqual(self.started(self.dst), ["copy-1-clean"])

    def test_finalize_fails(self) -> None:
        """
        A failing finalize: source exit C{none} for a file, the finalize's exit and stderr, cleanup
        removes the partial file.
        """
        self.programs({}, {"fin": exits(1, b"mv: cannot move\n")})
        result = self.copy(transport="ws")
        self.assertError(
            result,
            'copy_path failed (ws): source exit none, destination exit 1: source stderr "",'
            ' destination stderr "mv: cannot move\\n"',
        )
        self.assertEqual(self.started(self.dst), ["copy-1-fin", "copy-1-clean"])
        self.assertNotIn(TMP, self.dst.files)

    def test_call_failure(self) -> None:
        """
        A failing call → C{copy_path failed (ws): <error>} and cleanup.
        """
        self.dst.overrides["fs/writeFile"] = raising(
            rpc_error("fs/writeFile", -32603, "No space left on device (os error 28)")
        )
        result = self.copy(transport="ws")
        self.assertError(
            result,
            "copy_path failed (ws): fs/writeFile: No space left on device (os error 28) (code=-32603)",
        )
        self.assertEqual(self.started(self.dst), ["copy-1-clean"])

    def test_deadline_while_reading(self) -> None:
        """
        A finalize that never ends: at the deadline it is terminated, cleanup runs, and the text
        names the timeout.
        """
        self.programs({}, {"fin": runs_forever})
        result = self.copy(transport="ws", timeout_ms=1000)
        self.assertError(result, "copy_path failed (ws): timed out after 1000 ms")
        self.assertEqual(self.dst.params_of("process/terminate"), [{"processId": "copy-1-fin"}])
        self.assertEqual(self.started(self.dst), ["copy-1-fin", "copy-1-clean"])
        self.assertTrue(all(read["waitMs"] <= 250 for read in self.dst.params_of("process/read")))

    def test_deadline_during_a_call(self) -> None:
        """
        A call that never answers is cut off at the deadline (timeout clamped to at least 1 s).
        """
        self.programs({}, {})
        self.src.overrides["fs/readFile"] = lambda params: Deferred()
        result = self.copy(transport="ws", timeout_ms=5)
        self.assertError(result, "copy_path failed (ws): timed out after 1000 ms")
        self.assertEqual(self.clock.seconds(), 1001.0)
        self.assertEqual(self.started(self.dst), ["copy-1-clean"])

    def test_deadline_in_pre_checks(self) -> None:
        """
        A pre-check that never answers also ends at the deadline, naming the first transport.
        """
        self.src.overrides["fs/getMetadata"] = lambda params: Deferred()
        self.assertError(self.copy(timeout_ms=2000), "copy_path failed (http): timed out after 2000 ms")
        self.assertEqual(self.started(self.dst), [])

    def test_cleanup_is_bounded(self) -> None:
        """
        A cleanup C{rm -rf} that does not end is given up after 5 s.
        """
        self.programs({}, {"fin": exits(1), "clean": runs_forever})
        result = self.copy(transport="ws")
        self.assertTrue(result.is_error)
        self.assertEqual(self.clock.seconds(), 1005.0)
        self.assertEqual(self.started(self.dst), ["copy-1-fin", "copy-1-clean"])


class FakeExecServerTests(SynchronousTestCase):
    """
    C{copy_path} between two shared L{FakeExecServer}s (real fs semantics in temporary roots); the
    copy commands are played by programs acting on those roots.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.roots = {side: self.mktemp() for side in ("src", "dst")}
        for root in self.roots.values():
            os.makedirs(os.path.join(root, "data"))
        self.servers = {side: FakeExecServer(self.clock, root=root) for side, root in self.roots.items()}
        with open(self.local("src", "/data/f.bin"), "wb") as f:
            f.write(b"\x01" * 70_000)
        self.patch(copypath, "random_hex", lambda: X)
        self.relay = FakeRelayCreator()
        clients = {side: FakeExecServerClient(server) for side, server in self.servers.items()}
        self.ctx = make_context(
            self.clock, {"src": (EXE_SRC, clients["src"]), "dst": (EXE_DST, clients["dst"])}, self.relay
        )

    def local(self, side: str, path: str) -> str:
        """
        Where C{path} of environment C{side} is on this machine.
        """
        return os.path.join(self.roots[side], path.lstrip("/"))

    def copy(self, **arguments: Any) -> ToolResult:
        """
        Run C{copy_path} of C{src:/data/f.bin} to C{dst:/data/out/f.bin} to its end.
        """
        full = {
            "source_environment_id": "src",
            "source_path": "/data/f.bin",
            "destination_environment_id": "dst",
            "destination_path": "/data/out/f.bin",
            **arguments,
        }
        running = ensureDeferred(copy_path_tool(self.ctx, full))
        for _ in range(1000):
            if running.called:
                break
            self.clock.advance(0.25)
        return self.successResultOf(running)

    def test_ws_file(self) -> None:
        """
        The file arrives at exactly the destination; no C{.partial-} entry remains.
        """

        def move(process: FakeProcess) -> None:
            _, _, tmp, dst = process.argv
            os.replace(self.local("dst", tmp), self.local("dst", dst))
            process.exit(0)

        self.servers["dst"].add_program(lambda argv: argv[0] == "mv", move)
        result = self.copy(transport="ws")
        self.assertEqual(result.text, '{"transport":"ws","bytes":70000,"duration_ms":0}')
        with open(self.local("dst", "/data/out/f.bin"), "rb") as f:
            self.assertEqual(f.read(), b"\x01" * 70_000)
        self.assertEqual(os.listdir(self.local("dst", "/data/out")), ["f.bin"])

    def test_http_destination_fails(self) -> None:
        """
        The destination's curl exiting 22: the source is terminated (137), cleanup runs.
        """
        self.servers["dst"].script_process(
            lambda argv: argv[0] == "sh", [("stderr", b"curl: (22) 404\n")], 22, interval=0.5
        )
        self.servers["dst"].script_process(lambda argv: argv[0] == "rm", [], 0)
        self.servers["src"].script_process(lambda argv: argv[0] == "sh", [], None)
        result = self.copy(transport="http")
        self.assertEqual(
            (result.text, result.is_error),
            (
                'copy_path failed (http): source exit 137, destination exit 22: source stderr "",'
                ' destination stderr "curl: (22) 404\\n"',
                True,
            ),
        )
        self.assertTrue(self.servers["src"].processes["copy-1-src"].terminated)
        self.assertIn("copy-1-clean", self.servers["dst"].processes)
