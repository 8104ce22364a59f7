"""
The C{copy_path} tool (C{envtools.md} §7.12): copy a file or a directory tree from one environment to
another (or within one), so that the destination appears atomically.

Two transports:
 - B{http}: the front-end's relay creator (§1.3) hands out a one-shot byte relay; the destination runs
   C{curl} to download into a temporary name and renames it, the source runs C{curl} to upload (a tree
   goes as a C{tar czf} stream). No size limit, but it needs C{curl} (and C{bash}, C{tar} for trees) on
   both sides.
 - B{ws}: the bytes travel through the bridge itself, with the exec-server's fs methods (C{fs/readFile}
   on the source, C{fs/writeFile} on the destination, a C{tar} on each side for a tree); at most 32 MiB.

C{auto} tries http and falls back to ws when the relay is not enabled, or when a side cannot run the
http commands (a start failure or exit 127). After any transport failure the copy processes still
running are terminated and C{rm -rf} removes the temporary names on the destination (best effort, 5 s).
One deadline, on the context's clock, bounds everything after the clients are obtained: when it passes,
the call in flight is cancelled, the cleanup runs, and the text is C{copy_path failed (<transport>):
timed out after <timeout_ms> ms}.

Decisions where the spec is silent:
 - The deadline also bounds the pre-checks (§7.12 step 3); a deadline passing there names the transport
   that would run first (C{http} for C{http}, and for C{auto} when the context has a relay creator;
   C{ws} otherwise).
 - A context without a relay creator counts as "relay unavailable".
 - http: the destination is started first; when it fails to start, the source is not started (its exit
   is C{none}). A side that ends in any way other than exit 0 (also a start failure) terminates the other
   side at once; the terminated side is still read to its end, so its exit code (137) is reported.
 - Cleanup runs for a failure of a transport once it has done anything: not after a failed
   C{create_relay} (nothing was started) nor after the ws size check of a file (nothing was read). A
   second cleanup in one call (ws failing after an http fallback) names its process C{copy-<n>-clean2},
   since a process id stays taken on its stream. The cleanup also removes a pending source tarball of
   the ws transport (C{fs/remove} with C{force}), and terminations are best-effort with 10 s each.
 - A failing read step of a copy process fails the transport with C{copy_path failed (<transport>):
   <error>}; the other process of the pair stops being read, and the cleanup terminates it.
 - ws bytes: the decoded length of the data read (the tarball's for a tree). A C{dataBase64} that is not
   base64 fails the transport with C{fs/readFile: malformed result: <detail>}. A failing C{fs/remove}
   of the source tarball is ignored.
 - A pre-check C{fs/getMetadata} result that is not an object counts as an object without members; a
   missing C{size} skips the 32 MiB check of a file.
 - C{duration_ms} is rounded to the nearest millisecond; the call begins when the tool is entered.
 - A call cancelled by the front-end (env-mcp's C{notifications/cancelled}) starts the cleanup without
   waiting for it and ends with the cancellation.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import posixpath
import secrets
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime

from codexgw.envtools.args import check_arguments
from codexgw.envtools.context import EnvContext, ToolFailure
from codexgw.envtools.interfaces import (
    CallError,
    IExecServerClient,
    RelayTicket,
    RelayUnavailable,
    ToolResult,
    compact_json,
)
from codexgw.envtools.paths import parent_uri, shell_quote, to_uri
from codexgw.envtools.readsteps import ReadSteps
from codexgw.envtools.sessions import best_effort_terminate
from codexgw.envtools.tools import process_start_params, tool_function

#: C{timeout_ms}: default and maximum, and minimum (§7.12).
DEFAULT_TIMEOUT_MS: Final = 600_000
MIN_TIMEOUT_MS: Final = 1_000
#: The most bytes the ws transport carries (§7.12, §9).
WS_MAX_BYTES: Final = 33_554_432
#: The stderr bytes kept per copy process, and the C{maxBytes} of their read steps.
STDERR_KEEP_BYTES: Final = 2_048
READ_BYTES: Final = 65_536
#: The limit of the cleanup's C{rm -rf}, in seconds.
CLEANUP_SECONDS: Final = 5.0
#: The relay lives this much longer than the copy may take, in seconds.
RELAY_TTL_EXTRA_SECONDS: Final = 30
#: The cwd of every copy process.
ROOT_URI: Final = "file:///"

_TRANSPORTS: Final = ("auto", "http", "ws")


def random_hex() -> str:
    """
    The C{x} of §7.12 step 4: 32 random lowercase hex digits.
    """
    return secrets.token_hex(16)


def _timeout_ms(value: int | None) -> int:
    if value is None or value <= 0:
        return DEFAULT_TIMEOUT_MS
    return min(DEFAULT_TIMEOUT_MS, max(MIN_TIMEOUT_MS, value))


def _plain_path(path: str) -> str | None:
    """
    §7.12 preparation step 1: the path without trailing C{/}, or C{None} when it is not acceptable.
    """
    if not path.startswith("/"):
        return None
    return path.rstrip("/") or None


class _DeadlinePassed(Exception):
    """
    A copy process was to be read after the deadline.
    """


class _CopyProcess:
    """
    One copy process: where it runs, how it ended, its kept stderr.

    @ivar start_sent: C{process/start} was sent (the process may exist).
    @ivar start_failed: C{process/start} failed; the process never existed.
    @ivar ended: its reads are over (closed, or exited with an empty step).
    @ivar exit_code: the exit code once C{exited}, else C{None}.
    """

    def __init__(self, client: IExecServerClient, process_id: str) -> None:
        self.client = client
        self.process_id = process_id
        self.start_sent = False
        self.start_failed = False
        self.ended = False
        self.terminated = False
        self.exit_code: int | None = None
        self._stderr = bytearray()

    @property
    def running(self) -> bool:
        """
        Whether the process may still run.
        """
        return self.start_sent and not self.start_failed and not self.ended

    def keep_stderr(self, data: bytes) -> None:
        """
        Append to the kept stderr, keeping only its last 2 KiB.
        """
        self._stderr += data
        del self._stderr[:-STDERR_KEEP_BYTES]

    @property
    def stderr(self) -> str:
        """
        The kept stderr as text.
        """
        return bytes(self._stderr).decode("utf-8", "replace")

    @property
    def exit_text(self) -> str:
        """
        The exit code as the failure text writes it.
        """
        return "none" if self.exit_code is None else str(self.exit_code)


def _process_failure(
    transport: str, source: _CopyProcess | None, destination: _CopyProcess | None
) -> ToolResult:
    def exit_of(proc: _CopyProcess | None) -> str:
        return "none" if proc is None else proc.exit_text

    def stderr_of(proc: _CopyProcess | None) -> str:
        return compact_json("" if proc is None else proc.stderr)

    return ToolResult(
        f"copy_path failed ({transport}): source exit {exit_of(source)}, destination exit"
        f" {exit_of(destination)}: source stderr {stderr_of(source)}, destination stderr"
        f" {stderr_of(destination)}",
        is_error=True,
    )


def _decoded_length(encoded: object) -> int:
    if not isinstance(encoded, str):
        raise CallError("fs/readFile: malformed result: dataBase64 must be a string")
    try:
        return len(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as error:
        raise CallError(f"fs/readFile: malformed result: {error}") from error


class _Copy:
    """
    One C{copy_path} call after its preparation steps 1–2.
    """

    def __init__(
        self,
        ctx: EnvContext,
        began: float,
        deadline: float,
        timeout_ms: int,
        transport: str,
        recursive: bool,
        source: tuple[str, str, IExecServerClient],
        destination: tuple[str, str, IExecServerClient],
    ) -> None:
        """
        @param source: the plain path, exe id and client of the source; C{destination} likewise.
        """
        self.ctx = ctx
        self.clock = ctx.clock
        self.began = began
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.requested = transport
        self.recursive = recursive
        self.src, self.src_exe, self.src_client = source
        self.dst, self.dst_exe, self.dst_client = destination
        self.src_uri = to_uri(self.src)
        self.dst_uri = to_uri(self.dst)
        first_http = transport == "http" or (transport == "auto" and ctx.relay_creator is not None)
        #: The transport running (named by failure texts).
        self.transport = "http" if first_http else "ws"
        self.source_size: int | None = None
        self.number = 0
        self.nonce = ""
        self.tmp = ""
        self.tarball: str | None = None
        self.procs: list[_CopyProcess] = []
        self.failure: str | None = None
        #: Whether a failure now needs the cleanup.
        self.active = False
        self.cleanups = 0

    # ------------------------------------------------------------------------------------------
    # the whole call

    async def run(self) -> ToolResult:
        """
        Pre-checks and transfer under the deadline, then the cleanup after a failure.
        """
        timed_out = False
        work = Deferred.fromCoroutine(self._work())

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            work.cancel()

        timer = self.clock.callLater(max(0.0, self.deadline - self.clock.seconds()), expire)
        result: ToolResult
        try:
            result = await work
        except Exception as error:
            if not timed_out and _is_cancellation(error):
                # Cancelled by the front-end: clean up without making it wait.
                if self.active:
                    Deferred.fromCoroutine(self._cleanup()).addErrback(lambda _: None)
                raise CancelledError() from error
            result = ToolResult(f"copy_path failed ({self.transport}): {error}", is_error=True)
        finally:
            if timer.active():
                timer.cancel()
        if timed_out or (result.is_error and self.clock.seconds() >= self.deadline):
            result = ToolResult(
                f"copy_path failed ({self.transport}): timed out after {self.timeout_ms} ms",
                is_error=True,
            )
        if result.is_error and self.active:
            await self._cleanup()
        return result

    async def _work(self) -> ToolResult:
        refusal = await self._pre_checks()
        if refusal is not None:
            return refusal
        self.number = self.ctx.next_number("copy")
        self.nonce = random_hex()
        self.tmp = f"{self.dst}.partial-{self.nonce}"
        if self.transport == "http":
            outcome = await self._http()
            if outcome is not None:
                return outcome
            # auto: relay unavailable, or a side cannot run the http commands.
            if self.active:
                await self._cleanup()
                self.active = False
            self.transport = "ws"
        return await self._ws()

    def _duration_ms(self) -> int:
        return round((self.clock.seconds() - self.began) * 1000)

    # ------------------------------------------------------------------------------------------
    # preparation step 3

    async def _pre_checks(self) -> ToolResult | None:
        def refuse(text: str) -> ToolResult:
            return ToolResult(text, is_error=True)

        try:
            source = await self.src_client.call("fs/getMetadata", {"path": self.src_uri})
        except CallError as error:
            if error.code == -32004:
                return refuse(f"copy_path: source not found: {self.src}")
            return refuse(f"copy_path: {error}")
        source = source if isinstance(source, dict) else {}
        if not self.recursive and source.get("isDirectory"):
            return refuse("copy_path: source is a directory; set recursive=true")
        if self.recursive and not source.get("isDirectory"):
            return refuse("copy_path: source is not a directory; set recursive=false")
        size = source.get("size")
        self.source_size = size if isinstance(size, int) and not isinstance(size, bool) else None
        try:
            destination = await self.dst_client.call("fs/getMetadata", {"path": self.dst_uri})
        except CallError as error:
            if error.code == -32004:
                return None
            return refuse(f"copy_path: {error}")
        destination = destination if isinstance(destination, dict) else {}
        if self.recursive:
            return refuse(f"copy_path: destination exists: {self.dst}")
        if destination.get("isDirectory"):
            return refuse(f"copy_path: destination is a directory: {self.dst}")
        return None

    # ------------------------------------------------------------------------------------------
    # processes

    def _proc(self, client: IExecServerClient, role: str) -> _CopyProcess:
        return _CopyProcess(client, f"copy-{self.number}-{role}")

    async def _start(self, proc: _CopyProcess, argv: list[str]) -> bool:
        """
        C{process/start} with cwd C{file:///} and the default env; a start error is kept as stderr.
        """
        self.procs.append(proc)
        proc.start_sent = True
        try:
            await proc.client.call(
                "process/start", process_start_params(proc.process_id, argv, ROOT_URI)
            )
        except CallError as error:
            proc.start_failed = True
            proc.keep_stderr(str(error).encode("utf-8", "replace"))
            return False
        return True

    async def _terminate(self, proc: _CopyProcess) -> None:
        if proc.running and not proc.terminated:
            proc.terminated = True
            await best_effort_terminate(proc.client, proc.process_id)

    async def _follow(
        self, proc: _CopyProcess, other: _CopyProcess | None, deadline: float, main: bool = True
    ) -> None:
        """
        Read C{proc} until it is closed, or exited with a step returning no chunks; then, when it did
        not exit 0, terminate C{other}.

        @param main: a process of the transfer: a failing step is the transfer's failure and stops the
            other reader; C{False} for the cleanup's process, whose failure is ignored.
        @raise _DeadlinePassed: the deadline passed before the process ended.
        """
        steps = ReadSteps(proc.client, proc.process_id, READ_BYTES)
        while not (main and self.failure is not None):
            left_ms = (deadline - self.clock.seconds()) * 1000
            if left_ms <= 0:
                raise _DeadlinePassed()
            try:
                result = await steps.step(left_ms)
            except CallError as error:
                if main and self.failure is None:
                    self.failure = str(error)
                return
            for chunk in steps.last_chunks:
                if chunk.stream == "stderr":
                    proc.keep_stderr(chunk.data)
            if result.get("exited"):
                code = result.get("exitCode")
                proc.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
            if result.get("closed") or (result.get("exited") and not steps.last_chunks):
                break
        else:
            return
        proc.ended = True
        if other is not None and proc.exit_code != 0:
            await self._terminate(other)

    async def _run_to_end(self, proc: _CopyProcess, argv: list[str]) -> None:
        if await self._start(proc, argv):
            await self._follow(proc, None, self.deadline)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise CallError(self.failure)

    # ------------------------------------------------------------------------------------------
    # http transport

    async def _http(self) -> ToolResult | None:
        """
        The http transport.

        @return: the result, or C{None} when C{auto} falls back to ws.
        """
        auto = self.requested == "auto"
        ticket: RelayTicket
        try:
            if self.ctx.relay_creator is None:
                raise RelayUnavailable()
            ttl = math.ceil(self.timeout_ms / 1000) + RELAY_TTL_EXTRA_SECONDS
            ticket = await self.ctx.relay_creator.create_relay(self.src_exe, self.dst_exe, ttl, 0)
        except RelayUnavailable:
            if auto:
                return None
            return ToolResult("copy_path failed (http): relay not enabled", is_error=True)
        except CancelledError:
            raise
        except Exception as error:
            return ToolResult(f"copy_path failed (http): {error}", is_error=True)
        self.active = True
        dst = self._proc(self.dst_client, "dst")
        src = self._proc(self.src_client, "src")
        if await self._start(dst, self._download_argv(ticket)) and not await self._start(
            src, self._upload_argv(ticket)
        ):
            await self._terminate(dst)
        readers = [
            Deferred.fromCoroutine(self._follow(proc, other, self.deadline))
            for proc, other in ((dst, src), (src, dst))
            if proc.start_sent and not proc.start_failed
        ]
        await gatherResults(readers, consumeErrors=True)
        self._raise_failure()
        if auto and (dst.start_failed or src.start_failed or 127 in (dst.exit_code, src.exit_code)):
            return None
        if dst.exit_code == 0 and src.exit_code == 0:
            return ToolResult(compact_json({"transport": "http", "duration_ms": self._duration_ms()}))
        return _process_failure("http", src, dst)

    def _download_argv(self, ticket: RelayTicket) -> list[str]:
        q = shell_quote
        auth = q(f"Authorization: Bearer {ticket.ticket}")
        url = q(ticket.download_url)
        tmp, dst = q(self.tmp), q(self.dst)
        if self.recursive:
            return [
                "bash",
                "-c",
                f"set -o pipefail; test ! -e {dst} && mkdir -p {tmp} && curl -fsS -H {auth} {url}"
                f" | tar xzf - -C {tmp} && mv {tmp} {dst}",
            ]
        folder = q(posixpath.dirname(self.dst))
        return [
            "sh",
            "-c",
            f"mkdir -p {folder} && curl -fsS -H {auth} -o {tmp} {url} && mv -f {tmp} {dst}",
        ]

    def _upload_argv(self, ticket: RelayTicket) -> list[str]:
        q = shell_quote
        auth = q(f"Authorization: Bearer {ticket.ticket}")
        url = q(ticket.upload_url)
        if self.recursive:
            return [
                "bash",
                "-c",
                f"set -o pipefail; tar czf - -C {q(self.src)} . | curl -fsS -T - -H {auth} {url}",
            ]
        return ["sh", "-c", f"curl -fsS -T {q(self.src)} -H {auth} {url}"]

    # ------------------------------------------------------------------------------------------
    # ws transport

    def _too_large(self) -> ToolResult:
        return ToolResult(
            f'copy_path: source larger than {WS_MAX_BYTES} bytes; use transport "http"', is_error=True
        )

    async def _ws(self) -> ToolResult:
        """
        The ws transport.
        """
        pack: _CopyProcess | None = None
        if not self.recursive:
            if self.source_size is not None and self.source_size > WS_MAX_BYTES:
                return self._too_large()
            self.active = True
            read = await self.src_client.call("fs/readFile", {"path": self.src_uri})
        else:
            self.active = True
            tarball = f"/tmp/codexgw-copy-{self.nonce}.tar.gz"  # noqa: S108 - the spec's name
            self.tarball = to_uri(tarball)
            pack = self._proc(self.src_client, "pack")
            try:
                await self._run_to_end(pack, ["tar", "czf", tarball, "-C", self.src, "."])
                if pack.exit_code != 0:
                    await self._remove_tarball()
                    return _process_failure("ws", pack, None)
                meta = await self.src_client.call("fs/getMetadata", {"path": self.tarball})
                size = meta.get("size") if isinstance(meta, dict) else None
                if isinstance(size, int) and size > WS_MAX_BYTES:
                    await self._remove_tarball()
                    return self._too_large()
                read = await self.src_client.call("fs/readFile", {"path": self.tarball})
            except (CancelledError, _DeadlinePassed):
                raise  # the cleanup removes the tarball
            except Exception:
                await self._remove_tarball()
                raise
            await self._remove_tarball()
        encoded = read.get("dataBase64") if isinstance(read, dict) else None
        transferred = _decoded_length(encoded)
        assert isinstance(encoded, str)
        written = self.tmp + ".tar.gz" if self.recursive else self.tmp
        await self.dst_client.call(
            "fs/createDirectory", {"path": parent_uri(self.dst_uri), "recursive": True}
        )
        await self.dst_client.call("fs/writeFile", {"path": to_uri(written), "dataBase64": encoded})
        fin = self._proc(self.dst_client, "fin")
        await self._run_to_end(fin, self._finish_argv())
        if fin.exit_code != 0:
            return _process_failure("ws", pack, fin)
        return ToolResult(
            compact_json({"transport": "ws", "bytes": transferred, "duration_ms": self._duration_ms()})
        )

    def _finish_argv(self) -> list[str]:
        if not self.recursive:
            return ["mv", "-f", self.tmp, self.dst]
        q = shell_quote
        tmp, archive, dst = q(self.tmp), q(self.tmp + ".tar.gz"), q(self.dst)
        return [
            "sh",
            "-c",
            f"test ! -e {dst} && mkdir -p {tmp} && tar xzf {archive} -C {tmp} && rm -f {archive}"
            f" && mv {tmp} {dst}",
        ]

    async def _remove_tarball(self) -> None:
        if self.tarball is None:
            return
        with contextlib.suppress(CallError):
            await self.src_client.call(
                "fs/remove", {"path": self.tarball, "recursive": False, "force": True}
            )
        self.tarball = None

    # ------------------------------------------------------------------------------------------
    # cleanup

    async def _cleanup(self) -> None:
        """
        Terminate the copy processes still running, remove a pending source tarball and run
        C{copy-<n>-clean} C{rm -rf TMP TMP.tar.gz} on the destination (best effort, 5 s).
        """
        for proc in self.procs:
            await self._terminate(proc)
        await _bounded(self.clock, CLEANUP_SECONDS, self._remove_tarball)
        self.cleanups += 1
        role = "clean" if self.cleanups == 1 else f"clean{self.cleanups}"
        proc = self._proc(self.dst_client, role)
        argv = ["rm", "-rf", self.tmp, self.tmp + ".tar.gz"]

        async def remove() -> None:
            if await self._start(proc, argv):
                await self._follow(proc, None, self.clock.seconds() + CLEANUP_SECONDS, main=False)

        await _bounded(self.clock, CLEANUP_SECONDS, remove)


def _is_cancellation(error: Exception) -> bool:
    """
    Whether C{error} is a cancellation, also as the first error of a L{gatherResults}.
    """
    if isinstance(error, FirstError):
        return bool(error.subFailure.check(CancelledError))
    return isinstance(error, CancelledError)


async def _bounded(
    clock: IReactorTime, seconds: float, action: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """
    Run C{action} for at most C{seconds}, ignoring its failures (best effort).
    """
    running = Deferred.fromCoroutine(action())
    running.addTimeout(seconds, clock)
    # Best effort: the outcome does not change the tool's text.
    with contextlib.suppress(Exception):
        await running


async def _resolved(ctx: EnvContext, name: str, field: str, side: str) -> str:
    try:
        return await ctx.resolve(name, field)
    except ToolFailure as failure:
        raise ToolFailure(f"{side}: {failure}") from failure


@tool_function
async def copy_path_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Copy a file or a directory tree between environments (§7.12).

    @param arguments: C{source_environment_id}*, C{source_path}*, C{destination_environment_id}*,
        C{destination_path}*, C{recursive}, C{timeout_ms}, C{transport}.
    @return: C{{"transport":"http","duration_ms":…}} or C{{"transport":"ws","bytes":…,
        "duration_ms":…}}; otherwise an isError result with the spec's text.
    """
    began = ctx.clock.seconds()
    args = check_arguments("copy_path", arguments)
    transport = str(args.get("transport", "auto")).lower()
    assert transport in _TRANSPORTS
    recursive = bool(args.get("recursive", False))
    timeout_ms = _timeout_ms(args.get("timeout_ms"))
    src = _plain_path(args["source_path"])
    dst = _plain_path(args["destination_path"])
    if src is None or dst is None:
        return ToolResult("copy_path requires absolute POSIX paths", is_error=True)
    src_name: str = args["source_environment_id"]
    dst_name: str = args["destination_environment_id"]
    src_exe = await _resolved(ctx, src_name, "source_environment_id", "source")
    dst_exe = await _resolved(ctx, dst_name, "destination_environment_id", "destination")
    src_client = await ctx.client_of(src_name, src_exe)
    dst_client = await ctx.client_of(dst_name, dst_exe)
    deadline = ctx.clock.seconds() + timeout_ms / 1000
    copy = _Copy(
        ctx,
        began,
        deadline,
        timeout_ms,
        transport,
        recursive,
        (src, src_exe, src_client),
        (dst, dst_exe, dst_client),
    )
    return await copy.run()
