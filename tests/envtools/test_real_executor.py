"""
The "Real executor" acceptance criteria of C{envtools.md} §10 (items 23–27) through a real
C{codexgw env-mcp} process: the real exec gateway, two registered executors bound to one workspace
(C{box-a} and C{box-b}, real C{codexgw-executor}s with the pinned codex exec-server), a stand-in for
the app gateway's loopback routes in front of the real gateway's internal API, and env-mcp spoken to as
an MCP client over its stdin/stdout (L{tests.envtools.stack}). Each of the nine env-mcp tools is
checked at least once here, independently of the SDK surface.

The gateway and executors are shared by the tests of a class; each test gets its own env-mcp (a fresh
envtools context: its own bridge streams, session table and process counters). The executors run on
this machine, so the tests check what the tools did directly in the file system, under the test's
temporary directory. Every wait is bounded; every process is stopped by pid.

Decisions:
 - C{write_file} is an SDK-only tool; criterion 25's "write into a missing directory" is checked with
   C{apply_patch}'s Add File, which creates the parent the same way (C{fs/createDirectory} recursive).
 - Criterion 23's "returns within 1.5 s" is timed after a first C{shell} call on the same env-mcp, so
   the time measured is the tool's, not the bridge dial's.
 - Criterion 26's "no C{codexgw-copy-} file in the source's /tmp": the executors share this machine's
   C{/tmp} with other programs, so the check is that no such name appeared during the copy.
 - Criterion 27 waits 5 s of wall time (the criterion is about elapsed time), asserts that the gateway
   reaped no stream meanwhile, and then shows that the idle timeout was really in force: once the
   session is terminated (no heartbeats any more), the gateway reaps the idle stream.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.envtools.stack import (
    EXECUTOR_NAMES,
    EnvMcpChild,
    EnvMcpSession,
    ExecutorStack,
    SharedStack,
    ToolAnswer,
    start_env_mcp,
)
from tests.execgw.gateway import reactor

A, B = EXECUTOR_NAMES
#: The size of the random file copied: 1 MiB + 3 bytes.
FILE_SIZE = (1 << 20) + 3
#: What C{shell} keeps of one stream.
SHELL_KEEP = 1 << 20
SHELL_OUTPUT = re.compile(
    r"(?P<stdout>a*)"
    r"(?:\n\[… (?P<cut>\d+) bytes truncated\])?"
    r"(?P<incomplete>\n\[exec output incomplete: the environment discarded unread output\])?"
    r"\n\[exit_code=0\]",
    re.DOTALL,
)


class RealExecutorCase(TestCase):
    """
    A shared gateway with two executors; one env-mcp per test.

    @cvar gateway_extra: variables added to the gateway's environment.
    @cvar relay: whether the gateway's byte relay is enabled.
    @cvar env_mcp_extra: variables added to env-mcp's environment.
    """

    timeout = 180
    gateway_extra: ClassVar[Mapping[str, str]] = {}
    relay: ClassVar[bool] = False
    env_mcp_extra: ClassVar[Mapping[str, str]] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's stack (started by its first test) and start env-mcp.
        """
        shared = SharedStack.for_class(
            type(self), Path(self.mktemp()).parent.absolute(), self.gateway_extra, self.relay
        )
        self.addCleanup(shared.release)
        self.stack: ExecutorStack = await shared.acquire()
        self.session: EnvMcpSession = await start_env_mcp(self, self.stack, self.env_mcp_extra)
        self.mcp: EnvMcpChild = self.session.child
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir(parents=True)

    async def call(self, name: str, arguments: dict[str, Any], timeout: float = 60.0) -> ToolAnswer:
        """
        One tool call through env-mcp.
        """
        return await self.mcp.call(name, arguments, timeout)

    async def shell(self, command: list[str], environment: str = A, **more: Any) -> ToolAnswer:
        """
        C{shell} with C{command} on C{environment}.
        """
        return await self.call("shell", {"environment_id": environment, "command": command, **more})

    def assertAnswer(self, answer: ToolAnswer, text: str, is_error: bool = False) -> None:
        """
        C{answer} is exactly C{text} with that C{isError}.
        """
        self.assertEqual((answer.text, answer.is_error), (text, is_error))


class RealExecutorTests(RealExecutorCase):
    """
    Criteria 23–26 and C{list_environments}, on a gateway whose byte relay is enabled.
    """

    relay = True

    async def test_list_environments(self) -> None:
        """
        C{list_environments} lists both executors by name, in binding order, and no exe id (every
        answer of this suite is checked for exe ids).
        """
        answer = await self.call("list_environments", {})
        self.assertFalse(answer.is_error, answer.text)
        entries = answer.json
        self.assertEqual([entry["name"] for entry in entries], [A, B])
        for entry in entries:
            self.assertNotIn("exe_id", entry)
            self.assertLessEqual(set(entry), {"name", "description", "is_default", "last_seen"})

    async def test_shell_outputs(self) -> None:
        """
        Criterion 23: stdout and stderr of a command that exits 3, separated, with the exit line and
        isError.
        """
        answer = await self.shell(
            ["sh", "-c", "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c; exit 3"]
        )
        self.assertAnswer(answer, "a\nc\n\n--- stderr ---\nb\n\n[exit_code=3]", is_error=True)

    async def test_shell_background_child(self) -> None:
        """
        Criterion 23: a command that leaves a background child holding its output returns within
        1.5 s with exit code 0 (not when the child ends).
        """
        self.assertAnswer(await self.shell(["echo", "warm"]), "warm\n\n[exit_code=0]")
        began = time.monotonic()
        answer = await self.shell(["sh", "-c", "echo top; (sleep 2; echo late) &"])
        took = time.monotonic() - began
        self.assertAnswer(answer, "top\n\n[exit_code=0]")
        self.assertLess(took, 1.5)

    async def test_shell_large_output(self) -> None:
        """
        Criterion 23: a command writing 3000000 bytes at once exits 0; at most 1 MiB of stdout is
        returned, and the incomplete-output marker is there whenever fewer than 3000000 bytes were
        received.
        """
        answer = await self.shell(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\000' a"])
        self.assertFalse(answer.is_error, answer.text[-300:])
        match = SHELL_OUTPUT.fullmatch(answer.text)
        assert match is not None, answer.text[-300:]
        kept = len(match["stdout"])
        received = kept + int(match["cut"] or 0)
        self.assertLessEqual(kept, SHELL_KEEP)
        self.assertLessEqual(received, 3_000_000)
        if received < 3_000_000:
            self.assertIsNotNone(match["incomplete"], f"{received} bytes received without the marker")

    async def read_until(self, session_id: str, wanted: str, environment: str = A) -> dict[str, Any]:
        """
        C{read_output} from the start until C{wanted} is in stdout (at most 10 calls); the last
        answer with C{stdout} holding everything read.
        """
        stdout = ""
        arguments: dict[str, Any] = {"environment_id": environment, "session_id": session_id}
        for _ in range(10):
            answer = await self.call("read_output", arguments)
            self.assertFalse(answer.is_error, answer.text)
            result: dict[str, Any] = answer.json
            stdout += result["stdout"]
            if wanted in stdout:
                return {**result, "stdout": stdout}
            arguments["after_seq"] = result["next_seq"]
        raise self.failureException(f"{wanted!r} not read: {stdout!r}")

    async def test_exec_session(self) -> None:
        """
        Criterion 24 and the session tools: C{exec_command} C{cat} with C{pipe_stdin}; C{write_stdin}
        C{hello\\n} → C{ok}; C{read_output} shows C{hello\\n} with its keys in order; another
        environment's name finds no session; C{terminate} → C{terminated}, after which the session
        is gone.
        """
        started = await self.call(
            "exec_command", {"environment_id": A, "command": ["cat"], "pipe_stdin": True}
        )
        self.assertFalse(started.is_error, started.text)
        self.assertEqual(list(started.json), ["session_id"])
        session_id = started.json["session_id"]
        self.assertEqual(str(uuid.UUID(session_id)), session_id)
        session = {"environment_id": A, "session_id": session_id}

        self.assertAnswer(await self.call("write_stdin", {**session, "chars": "hello\n"}), "ok")
        result = await self.read_until(session_id, "hello\n")
        self.assertEqual(
            list(result), ["stdout", "stderr", "next_seq", "exited", "exit_code", "closed", "failure"]
        )
        self.assertEqual(
            (result["stdout"], result["stderr"], result["exited"], result["failure"]),
            ("hello\n", "", False, None),
        )

        elsewhere = {"environment_id": B, "session_id": session_id}
        self.assertAnswer(
            await self.call("read_output", elsewhere), "no such session for that environment_id", True
        )
        self.assertAnswer(await self.call("terminate", session), "terminated")
        self.assertAnswer(
            await self.call("read_output", session), "no such session for that environment_id", True
        )

    async def test_stdin_closed(self) -> None:
        """
        Criterion 24: C{write_stdin} to a process started without C{pipe_stdin} → the stdin-closed
        text.
        """
        started = await self.call("exec_command", {"environment_id": A, "command": ["sleep", "5"]})
        self.assertFalse(started.is_error, started.text)
        session = {"environment_id": A, "session_id": started.json["session_id"]}
        self.assertAnswer(
            await self.call("write_stdin", {**session, "chars": "x"}),
            "stdin is closed; start the process with pipe_stdin or tty",
            is_error=True,
        )
        self.assertAnswer(await self.call("terminate", session), "terminated")

    async def apply_patch(self, patch: str) -> ToolAnswer:
        """
        C{apply_patch} on C{box-a}.
        """
        return await self.call("apply_patch", {"environment_id": A, "patch": patch})

    async def test_files(self) -> None:
        """
        Criterion 25: a file added into a missing directory, read back as a slice; update, move and
        delete leave the expected files; relative paths give the absolute-path text; a missing file
        gives C{read_file}'s exact error.
        """
        added = self.root / "missing" / "deeper" / "notes.txt"
        answer = await self.apply_patch(
            f"*** Begin Patch\n*** Add File: {added}\n+alpha\n+beta\n+gamma\n*** End Patch\n"
        )
        self.assertAnswer(answer, f"{added}: ok")
        self.assertEqual(added.read_bytes(), b"alpha\nbeta\ngamma\n")
        self.assertAnswer(
            await self.call(
                "read_file", {"environment_id": B, "path": str(added), "offset": 6, "limit": 4}
            ),
            "beta",
        )
        self.assertAnswer(
            await self.call("read_file", {"environment_id": A, "path": str(added)}),
            "alpha\nbeta\ngamma\n",
        )

        keep, move, gone = self.root / "keep.txt", self.root / "move-me.txt", self.root / "delete-me.txt"
        keep.write_text("one\ntwo\nthree\n")
        move.write_text("old\n")
        gone.write_text("bye\n")
        moved = self.root / "new-dir" / "moved.txt"
        answer = await self.apply_patch(
            "\n".join(
                [
                    "*** Begin Patch",
                    f"*** Update File: {keep}",
                    "@@",
                    " one",
                    "-two",
                    "+TWO",
                    " three",
                    f"*** Update File: {move}",
                    f"*** Move to: {moved}",
                    "@@",
                    "-old",
                    "+new",
                    f"*** Delete File: {gone}",
                    "*** End Patch",
                ]
            )
        )
        self.assertAnswer(answer, f"{keep}: ok\n{move} -> {moved}: ok\n{gone}: ok")
        self.assertEqual(keep.read_text(), "one\nTWO\nthree\n")
        self.assertEqual(moved.read_text(), "new\n")
        self.assertFalse(move.exists())
        self.assertFalse(gone.exists())

        self.assertAnswer(
            await self.call("read_file", {"environment_id": A, "path": "rel/p"}),
            'path must be absolute: "rel/p"',
            is_error=True,
        )
        self.assertAnswer(
            await self.apply_patch("*** Begin Patch\n*** Add File: rel.txt\n+x\n*** End Patch"),
            'rel.txt: error: path must be absolute: "rel.txt"',
            is_error=True,
        )
        self.assertAnswer(
            await self.call("read_file", {"environment_id": A, "path": str(self.root / "nope")}),
            "read_file failed: fs/readFile: No such file or directory (os error 2) (code=-32004)",
            is_error=True,
        )

    # -- copy_path (criterion 26)

    def make_tree(self, top: Path) -> None:
        """
        A small tree: text and random files, a nested directory, an empty file, an empty directory
        and a name with a space.
        """
        (top / "sub" / "deeper").mkdir(parents=True)
        (top / "empty-dir").mkdir()
        (top / "a.txt").write_text("alpha\n")
        (top / "with space.txt").write_text("spaced\n")
        (top / "sub" / "b.bin").write_bytes(os.urandom(70_000))
        (top / "sub" / "deeper" / "empty").write_bytes(b"")

    def snapshot(self, top: Path) -> dict[str, bytes | None]:
        """
        Every entry below C{top}: a file's bytes, C{None} for a directory.
        """
        entries: dict[str, bytes | None] = {}
        for path in sorted(top.rglob("*")):
            entries[str(path.relative_to(top))] = None if path.is_dir() else path.read_bytes()
        return entries

    def copy_leftovers(self) -> set[str]:
        """
        The C{codexgw-copy-} names in C{/tmp} now.
        """
        return {name for name in os.listdir("/tmp") if name.startswith("codexgw-copy-")}

    def assertNoPartial(self, directory: Path) -> None:
        """
        No C{.partial-} entry in C{directory}.
        """
        self.assertEqual([n for n in os.listdir(directory) if ".partial-" in n], [])

    async def copy(self, transport: str, source: Path, destination: Path, recursive: bool) -> ToolAnswer:
        """
        C{copy_path} from C{box-a} to C{box-b}.
        """
        return await self.call(
            "copy_path",
            {
                "source_environment_id": A,
                "source_path": str(source),
                "destination_environment_id": B,
                "destination_path": str(destination),
                "recursive": recursive,
                "transport": transport,
                "timeout_ms": 60_000,
            },
            timeout=90.0,
        )

    async def copy_file(self, transport: str) -> dict[str, Any]:
        """
        Copy a random file of 1 MiB + 3 bytes into a directory that does not exist yet; it arrives
        byte-exact at exactly the destination path, nothing else is left beside it, and no
        C{codexgw-copy-} file appeared in C{/tmp}. The answer's JSON.
        """
        source = self.root / "src" / "random.bin"
        source.parent.mkdir()
        content = os.urandom(FILE_SIZE)
        source.write_bytes(content)
        destination = self.root / "dst" / "not" / "there" / "copied.bin"
        before = self.copy_leftovers()
        answer = await self.copy(transport, source, destination, recursive=False)
        self.assertFalse(answer.is_error, answer.text)
        self.assertEqual(destination.read_bytes(), content)
        self.assertEqual(os.listdir(destination.parent), ["copied.bin"])
        self.assertEqual(self.copy_leftovers() - before, set())
        result: dict[str, Any] = answer.json
        self.assertEqual(result["transport"], transport)
        self.assertIsInstance(result["duration_ms"], int)
        return result

    async def copy_tree(self, transport: str) -> dict[str, Any]:
        """
        Copy a small tree to a path that does not exist yet; it arrives byte-exact at exactly the
        destination path, no C{.partial-} entry is left beside it, and no C{codexgw-copy-} file
        appeared in C{/tmp}. The answer's JSON.
        """
        source = self.root / "src-tree"
        self.make_tree(source)
        destination = self.root / "dst-parent" / "tree"
        before = self.copy_leftovers()
        answer = await self.copy(transport, source, destination, recursive=True)
        self.assertFalse(answer.is_error, answer.text)
        self.assertEqual(self.snapshot(destination), self.snapshot(source))
        self.assertEqual(os.listdir(destination.parent), ["tree"])
        self.assertNoPartial(destination.parent)
        self.assertEqual(self.copy_leftovers() - before, set())
        result: dict[str, Any] = answer.json
        self.assertEqual(result["transport"], transport)
        self.assertIsInstance(result["duration_ms"], int)
        return result

    async def test_copy_file_ws(self) -> None:
        """
        Criterion 26 over ws: the file arrives exactly, and the answer counts its bytes.
        """
        result = await self.copy_file("ws")
        self.assertEqual(list(result), ["transport", "bytes", "duration_ms"])
        self.assertEqual(result["bytes"], FILE_SIZE)

    async def test_copy_tree_ws(self) -> None:
        """
        Criterion 26 over ws: the tree arrives exactly.
        """
        result = await self.copy_tree("ws")
        self.assertEqual(list(result), ["transport", "bytes", "duration_ms"])
        self.assertGreater(result["bytes"], 0)

    async def test_copy_file_http(self) -> None:
        """
        Criterion 26 over http (the gateway's byte relay, a ticket from the stand-in's
        C{/internal/relay/create}): the file arrives exactly.
        """
        result = await self.copy_file("http")
        self.assertEqual(list(result), ["transport", "duration_ms"])
        self.assertIn(("POST", "/internal/relay/create", 201), self.session.stand_in.answered)

    async def test_copy_tree_http(self) -> None:
        """
        Criterion 26 over http: the tree arrives exactly.
        """
        result = await self.copy_tree("http")
        self.assertEqual(list(result), ["transport", "duration_ms"])
        self.assertIn(("POST", "/internal/relay/create", 201), self.session.stand_in.answered)


class IdleBridgeTests(RealExecutorCase):
    """
    Criterion 27: a gateway that reaps bridge streams idle for 2 s, and env-mcp sending heartbeats
    every second while an exec session lives.
    """

    gateway_extra: ClassVar[Mapping[str, str]] = {"CXG_BRIDGE_IDLE_TIMEOUT": "2s"}
    env_mcp_extra: ClassVar[Mapping[str, str]] = {"CODEXGW_ENV_MCP_HEARTBEAT_SECONDS": "1"}

    async def test_session_outlives_idle_timeout(self) -> None:
        """
        A process started by C{exec_command} is still readable through C{read_output} after 5 s
        without tool calls (its output of before and during the pause included), and the gateway
        reaped no stream meanwhile; once the session is terminated the heartbeats stop and the
        gateway reaps the idle stream.
        """
        gateway = self.stack.gateway
        exe_id = self.stack.executors[A].exe_id
        started = await self.call(
            "exec_command",
            {
                "environment_id": A,
                "command": ["sh", "-c", "echo early; sleep 3; echo late; exec sleep 60"],
            },
        )
        self.assertFalse(started.is_error, started.text)
        session = {"environment_id": A, "session_id": started.json["session_id"]}
        since = len(gateway.events)

        await deferLater(reactor, 5.0, lambda: None)

        answer = await self.call("read_output", session)
        self.assertFalse(answer.is_error, answer.text)
        result = answer.json
        self.assertEqual((result["stdout"], result["exited"]), ("early\nlate\n", False))
        self.assertEqual(
            [e for e in gateway.events[since:] if e.get("event") == "bridge.idle_reaped"], []
        )

        self.assertAnswer(await self.call("terminate", session), "terminated")
        reaped = await gateway.wait_event("bridge.idle_reaped", timeout=10.0, since=since)
        self.assertEqual(reaped["exe_id"], exe_id)
