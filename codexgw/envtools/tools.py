"""
The core tools of envtools (C{envtools.md} §7.3–§7.10): C{list_environments}, C{shell},
C{exec_command}, C{write_stdin}, C{read_output}, C{terminate}, C{read_file} and C{write_file}.

Each tool is an C{async} function C{(ctx, arguments) -> ToolResult} that never raises for argument or
remote problems: those become results with C{is_error} (§7.1). Only cancellation and programming errors
propagate. The functions check their arguments with L{codexgw.envtools.args.check_arguments}, convert
paths with L{codexgw.envtools.paths.to_uri}, resolve the environment and get its client through the
L{EnvContext}, and read process output only through L{ReadSteps} (§7.2).

Decisions where the spec is silent:
 - Argument problems, path conversion and C{content_b64} are checked before the environment is resolved,
   in the order the tool's section lists them.
 - C{shell} reads until C{exited} (or C{closed}) comes with a step that returned no chunks, or the
   deadline. §7.4 step 3 also ends the reads as soon as C{closed} is true, but C{closed} is the
   process's state, not the reader's: codex 0.169.0 reports C{closed: true} on a step that
   C{maxBytes} cut short while later chunks are still retained (observed: 600 kB of output read in
   64 KiB steps all say C{closed: true}). Stopping there would lose that output — for example
   all of stderr after 1 MiB of stdout — without any marker. A closed process's read returns at
   once, so the extra step costs one round trip. After an exit without C{closed} (a background
   child keeps the output open), the reads also go on until a step brings no new event at all:
   codex 0.169.0 sometimes numbers the exit event before the last output chunk (measured: about 1
   run in 10 of C{echo a; …; echo c; exit 3}), and §7.4's literal rule then drops that chunk
   without a marker. This costs at most one more step (≤ 250 ms).
 - C{shell}: the start of the call (the base of the deadline) is taken before the environment is
   resolved; a call cancelled by the front-end (env-mcp's C{notifications/cancelled}) sends a
   best-effort C{process/terminate} without waiting for it; a failing read step sends none (the failure
   is usually the end of the stream, which ends the process anyway). C{failure} is the latest non-null
   value reported; an exit code reported as C{null} is written C{null}.
 - C{write_stdin}: a C{status} other than the three of §2.3 → isError C{write_stdin failed:
   process/write: unexpected status <json>}; lone surrogates in C{chars} are written with their
   (invalid) UTF-8 form, as C{surrogatepass} encodes them.
 - The session tools (C{write_stdin}, C{read_output}, C{terminate}) only resolve the name: the process
   runs on the session's own client (§6), so the pool is not asked.
 - C{read_file}: a C{dataBase64} that is not base64 → isError C{read_file failed: fs/readFile:
   malformed result: <detail>}.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from twisted.internet.defer import CancelledError

from codexgw.envtools.args import ArgumentError, check_arguments
from codexgw.envtools.context import EnvContext, ToolFailure
from codexgw.envtools.interfaces import IExecServerClient, ToolResult, compact_json
from codexgw.envtools.paths import PathError, parent_uri, to_uri
from codexgw.envtools.readsteps import ReadSteps
from codexgw.envtools.sessions import SessionError, best_effort_terminate, lost_text

#: The whole environment of every process the tools start (§7.1).
DEFAULT_ENV: Final[Mapping[str, str]] = {"PATH": "/usr/bin:/bin:/usr/local/bin"}
#: The C{cwd} of C{shell} and C{exec_command} when none is given (§7.4).
DEFAULT_CWD: Final = "/tmp"  # noqa: S108 - the spec's default cwd, not a temp file

#: C{shell}'s default time limit and its bounds, in milliseconds (§7.4).
SHELL_DEFAULT_TIMEOUT_MS: Final = 60_000
SHELL_MIN_TIMEOUT_MS: Final = 250
SHELL_MAX_TIMEOUT_MS: Final = 600_000
#: C{shell}'s C{maxBytes} per read step and the bytes kept per stream (§7.4).
SHELL_READ_BYTES: Final = 1_048_576
SHELL_KEEP_BYTES: Final = 1_048_576

#: C{read_output}'s default wait, its maximum and its C{maxBytes} (§7.7).
READ_OUTPUT_DEFAULT_WAIT_MS: Final = 1_000
READ_OUTPUT_MAX_WAIT_MS: Final = 30_000
READ_OUTPUT_BYTES: Final = 65_536

ToolFunction = Callable[[EnvContext, Mapping[str, Any]], Coroutine[Any, Any, ToolResult]]


def tool_function(function: ToolFunction) -> ToolFunction:
    """
    Turn the texted exceptions of a tool (L{ArgumentError}, L{ToolFailure}, L{SessionError},
    L{PathError}) into isError results.
    """

    @functools.wraps(function)
    async def guarded(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
        try:
            return await function(ctx, arguments)
        except (ArgumentError, ToolFailure, SessionError, PathError) as error:
            return ToolResult(str(error), is_error=True)

    return guarded


def process_start_params(
    process_id: str, argv: list[str], cwd: str, tty: bool = False, pipe_stdin: bool = False
) -> dict[str, Any]:
    """
    The C{process/start} params of §7.4/§7.5, all seven fields, in the specified order.
    """
    return {
        "processId": process_id,
        "argv": argv,
        "cwd": cwd,
        "env": dict(DEFAULT_ENV),
        "tty": tty,
        "pipeStdin": pipe_stdin,
        "arg0": None,
    }


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------
# list_environments (§7.3)


@tool_function
async def list_environments_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    The connected environments as a compact JSON array (§7.3).
    """
    check_arguments("list_environments", arguments)
    try:
        entries = await ctx.resolver.refresh()
    except CancelledError:
        raise
    except Exception as error:
        return ToolResult(f"list_environments: {error}", is_error=True)
    listed: list[dict[str, Any]] = []
    for entry in entries:
        if not entry.name:
            continue
        item: dict[str, Any] = {"name": entry.name}
        if entry.description:
            item["description"] = entry.description
        if entry.is_default:
            item["is_default"] = True
        if entry.last_seen_at is not None:
            item["last_seen"] = entry.last_seen_at
        listed.append(item)
    return ToolResult(compact_json(listed))


# ---------------------------------------------------------------------------------------------------
# shell (§7.4)


def _shell_timeout_ms(value: int | None) -> int:
    if value is None or value <= 0:
        return SHELL_DEFAULT_TIMEOUT_MS
    return min(SHELL_MAX_TIMEOUT_MS, max(SHELL_MIN_TIMEOUT_MS, value))


class _KeptStream:
    """
    The first C{limit} bytes of one output stream, and how many more were cut.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.kept = bytearray()
        self.cut = 0

    def add(self, data: bytes) -> None:
        room = max(0, self._limit - len(self.kept))
        self.kept += data[:room]
        self.cut += max(0, len(data) - room)

    def text(self) -> str:
        text = _decode(self.kept)
        if self.cut:
            text += f"\n[… {self.cut} bytes truncated]"
        return text


class ShellOutcome:
    """
    What the read steps of one C{shell} process gathered; builds the §7.4 text.

    @ivar exited: whether a step reported C{exited}.
    @ivar exit_code: the C{exitCode} reported with C{exited}.
    @ivar failure: the latest non-null C{failure}.
    @ivar discarded: the sequence numbers of discarded output (§7.4 step 5).
    @ivar read_error: the error of a failing step, or C{None}.
    """

    def __init__(self, keep_bytes: int = SHELL_KEEP_BYTES) -> None:
        self.stdout = _KeptStream(keep_bytes)
        self.stderr = _KeptStream(keep_bytes)
        self.exited = False
        self.exit_code: int | None = None
        self.failure: str | None = None
        self.discarded = 0
        self.read_error: str | None = None

    def text(self) -> str:
        """
        The tool's text, parts in the order of §7.4.
        """
        text = self.stdout.text()
        if self.stderr.kept or self.stderr.cut:
            if text:
                text += "\n--- stderr ---\n"
            text += self.stderr.text()
        if self.read_error is not None:
            return text + f"\n[exec read failed: {self.read_error}]"
        if self.discarded > 0:
            text += "\n[exec output incomplete: the environment discarded unread output]"
        if self.failure is not None:
            text += f"\n[exec failure: {self.failure}]"
        if self.exited:
            code = "null" if self.exit_code is None else str(self.exit_code)
            text += f"\n[exit_code={code}]"
        else:
            text += "\n[exec timed out without exit signal]"
        return text

    def is_error(self) -> bool:
        """
        C{failure} non-null, an exit code other than 0, no exit, or a failed step (§7.4).
        """
        return (
            self.read_error is not None
            or self.failure is not None
            or not self.exited
            or self.exit_code != 0
        )


async def _read_shell_output(
    ctx: EnvContext, client: IExecServerClient, process_id: str, deadline: float
) -> ShellOutcome:
    outcome = ShellOutcome()
    steps = ReadSteps(client, process_id, SHELL_READ_BYTES)
    while True:
        before = steps.after_seq or 0
        try:
            result = await steps.step((deadline - ctx.clock.seconds()) * 1000)
        except CancelledError:
            raise
        except Exception as error:
            outcome.read_error = str(error)
            break
        for chunk in steps.last_chunks:
            (outcome.stderr if chunk.stream == "stderr" else outcome.stdout).add(chunk.data)
        if result.get("exited"):
            outcome.exited = True
            code = result.get("exitCode")
            outcome.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        failure = result.get("failure")
        if failure is not None:
            outcome.failure = str(failure)
        outcome.discarded = steps.discarded
        # Only an empty step proves nothing is left: "closed" is the process's state, and a step
        # limited by maxBytes reports it while retained chunks are still unread. After an exit
        # without "closed", the step must also have moved past no event at all: the exec-server
        # may number the exit before the last output chunk, which then arrives a step later.
        if not steps.last_chunks and (
            result.get("closed") or (result.get("exited") and (steps.after_seq or 0) == before)
        ):
            break
        if ctx.clock.seconds() >= deadline:
            break
    return outcome


@tool_function
async def shell_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Run a command and wait for it to finish (§7.4).
    """
    started = ctx.clock.seconds()
    args = check_arguments("shell", arguments)
    command: list[str] = args["command"]
    cwd = to_uri(args.get("cwd", DEFAULT_CWD))
    timeout_ms = _shell_timeout_ms(args.get("timeout_ms"))
    _, client = await ctx.client_for(args["environment_id"])
    process_id = ctx.next_process_id("shell")
    try:
        await client.call("process/start", process_start_params(process_id, command, cwd))
    except CancelledError:
        raise
    except Exception as error:
        return ToolResult(f"[exec failed to start: {error}]", is_error=True)
    deadline = started + timeout_ms / 1000.0
    try:
        outcome = await _read_shell_output(ctx, client, process_id, deadline)
    except CancelledError:
        # Cancelled: nobody waits for the output any more, so the process should not outlive the call.
        best_effort_terminate(client, process_id)
        raise
    if outcome.read_error is None and not outcome.exited:
        await best_effort_terminate(client, process_id)
    return ToolResult(outcome.text(), is_error=outcome.is_error())


# ---------------------------------------------------------------------------------------------------
# exec sessions (§7.5–§7.8)


@tool_function
async def exec_command_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Start a long-running process and answer its session id (§7.5).
    """
    args = check_arguments("exec_command", arguments)
    command: list[str] = args["command"]
    cwd = to_uri(args.get("cwd", DEFAULT_CWD))
    tty: bool = args.get("tty", False)
    pipe_stdin: bool = args.get("pipe_stdin", False)
    name: str = args["environment_id"]
    exe_id, client = await ctx.client_for(name)
    ctx.sessions.reserve()
    process_id = ctx.next_process_id("uexec")
    try:
        await client.call(
            "process/start", process_start_params(process_id, command, cwd, tty, pipe_stdin)
        )
    except CancelledError:
        # The start may have happened: the process must not run on without a session.
        ctx.sessions.release()
        best_effort_terminate(client, process_id)
        raise
    except Exception as error:
        ctx.sessions.release()
        return ToolResult(f"[exec failed to start: {error}]", is_error=True)
    session = ctx.sessions.add(exe_id, name, process_id, client, reserved=True)
    return ToolResult(compact_json({"session_id": session.session_id}))


@tool_function
async def write_stdin_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Write text to a session's stdin (§7.6).
    """
    args = check_arguments("write_stdin", arguments)
    exe_id = await ctx.resolve(args["environment_id"])
    session = ctx.sessions.lookup(args["session_id"], exe_id)
    chars: str = args["chars"]
    params = {
        "processId": session.process_id,
        "chunk": base64.b64encode(chars.encode("utf-8", "surrogatepass")).decode("ascii"),
        "writeId": str(uuid.uuid4()),
    }
    try:
        result = await session.client.call("process/write", params)
    except CancelledError:
        raise
    except Exception as error:
        return ToolResult(f"write_stdin failed: {error}", is_error=True)
    status = result.get("status") if isinstance(result, dict) else None
    if status == "accepted":
        return ToolResult("ok")
    if status == "stdinClosed":
        return ToolResult("stdin is closed; start the process with pipe_stdin or tty", is_error=True)
    if status == "unknownProcess":
        ctx.sessions.forget(session.session_id)
        return ToolResult(lost_text(session.name), is_error=True)
    return ToolResult(
        f"write_stdin failed: process/write: unexpected status {json.dumps(status)}", is_error=True
    )


def _read_output_wait_ms(value: int | None) -> int:
    if value is None:
        return READ_OUTPUT_DEFAULT_WAIT_MS
    return min(READ_OUTPUT_MAX_WAIT_MS, max(0, value))


@tool_function
async def read_output_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Read new output of a session's process (§7.7).
    """
    args = check_arguments("read_output", arguments)
    exe_id = await ctx.resolve(args["environment_id"])
    session = ctx.sessions.lookup(args["session_id"], exe_id)
    after: int | None = args.get("after_seq")
    wait_ms = _read_output_wait_ms(args.get("yield_time_ms"))
    steps = ReadSteps(
        session.client,
        session.process_id,
        READ_OUTPUT_BYTES,
        after_seq=after - 1 if after is not None and after >= 1 else None,
    )
    deadline = ctx.clock.seconds() + wait_ms / 1000.0
    while True:
        try:
            result = await steps.step((deadline - ctx.clock.seconds()) * 1000, advance=False)
        except CancelledError:
            raise
        except Exception as error:
            return ToolResult(f"read_output failed: {error}", is_error=True)
        if steps.last_chunks or result.get("exited") or result.get("closed"):
            break
        if ctx.clock.seconds() >= deadline:
            break
    stdout = b"".join(c.data for c in steps.last_chunks if c.stream != "stderr")
    stderr = b"".join(c.data for c in steps.last_chunks if c.stream == "stderr")
    ctx.sessions.touch(session)
    return ToolResult(
        compact_json(
            {
                "stdout": _decode(stdout),
                "stderr": _decode(stderr),
                "next_seq": result.get("nextSeq"),
                "exited": bool(result.get("exited")),
                "exit_code": result.get("exitCode"),
                "closed": bool(result.get("closed")),
                "failure": result.get("failure"),
            }
        )
    )


@tool_function
async def terminate_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Forget a session and terminate its process (§7.8).
    """
    args = check_arguments("terminate", arguments)
    exe_id = await ctx.resolve(args["environment_id"])
    session = ctx.sessions.lookup(args["session_id"], exe_id)
    ctx.sessions.forget(session.session_id)
    await best_effort_terminate(session.client, session.process_id)
    return ToolResult("terminated")


# ---------------------------------------------------------------------------------------------------
# files (§7.9, §7.10)


@tool_function
async def read_file_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Read a byte range of a file (§7.9).
    """
    args = check_arguments("read_file", arguments)
    uri = to_uri(args["path"])
    offset = max(0, args.get("offset", 0))
    limit: int = args.get("limit", 0)
    _, client = await ctx.client_for(args["environment_id"])
    try:
        result = await client.call("fs/readFile", {"path": uri})
        encoded = result.get("dataBase64") if isinstance(result, dict) else None
        if not isinstance(encoded, str):
            return ToolResult(
                "read_file failed: fs/readFile: malformed result: dataBase64 must be a string",
                is_error=True,
            )
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            return ToolResult(f"read_file failed: fs/readFile: malformed result: {error}", is_error=True)
    except CancelledError:
        raise
    except Exception as error:
        return ToolResult(f"read_file failed: {error}", is_error=True)
    piece = data[offset : offset + limit] if limit > 0 else data[offset:]
    return ToolResult(_decode(piece))


def strict_base64(text: str) -> bytes:
    """
    Decode strict standard base64: alphabet C{A–Z a–z 0–9 + /}, padding required (§7.10).

    @raise ValueError: C{text} is not; C{str()} is the decoder's detail.
    """
    return base64.b64decode(text.encode("ascii"), validate=True)


@tool_function
async def write_file_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Write a whole file, creating its parent directory (§7.10).
    """
    args = check_arguments("write_file", arguments)
    content: str = args["content_b64"]
    try:
        strict_base64(content)
    except (UnicodeEncodeError, binascii.Error, ValueError) as error:
        return ToolResult(f"content_b64 invalid: {error}", is_error=True)
    uri = to_uri(args["path"])
    _, client = await ctx.client_for(args["environment_id"])
    try:
        await client.call("fs/createDirectory", {"path": parent_uri(uri), "recursive": True})
        await client.call("fs/writeFile", {"path": uri, "dataBase64": content})
    except CancelledError:
        raise
    except Exception as error:
        return ToolResult(f"write_file failed: {error}", is_error=True)
    return ToolResult("ok")
