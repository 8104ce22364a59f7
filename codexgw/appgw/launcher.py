"""
Spawning one C{codex app-server} for a workspace and waiting until it serves (C{app-gateway.md} §5.4).

The supervisor never touches a process directly. It asks an L{IAppServerLauncher} to L{launch
<IAppServerLauncher.launch>} one, hears the pid at once (to write its state record and watch for a
crash, §5.3 step 7, §5.6), and gets back an L{IAppServerProcess} once the app-server announced its
websocket address and answered C{GET /readyz} with 200 — or a L{LaunchError} whose text the supervisor
quotes after C{spawn: }. L{AppServerLauncher} is the real one; L{codexgw.testing.fakelauncher} holds the
in-memory twin, and both pass the same interface tests (C{tests.appgw.test_launcher}).

A launch, step by step:
 1. C{<codex-bin> app-server --listen ws://127.0.0.1:0} is started through the setsid trampoline of
    L{codexgw.executor.child.session_leader_argv}: the pid Twisted tracks is codex itself (the
    trampoline C{exec}s it), the leader of a new session and process group, so pid == pgid and
    C{/proc/<pid>/cmdline} is exactly codex's argv. Its environment is exactly the one given, its
    working directory the one given, stdin C{/dev/null}, stdout and stderr pipes that are always read.
 2. The supervisor's C{spawned} callback runs synchronously with the process, before anything else.
 3. Both streams are split into lines. The first line on either stream containing C{ws://} is the
    banner: the URL runs from C{ws://} to the end of the whitespace-trimmed line and must be
    C{ws://<loopback ip>:<port>}. Every other line is logged at info as C{[codex-subproc] <line>}.
    Both streams at EOF before a banner, or no banner within 10 s of the spawn, fail the launch.
 4. C{GET <http_url>/readyz} is tried at once, then 50 ms after each unsuccessful attempt (each attempt
    limited to 1 s), until a 200 or until 5 s after the banner.
 5. Any failure (and a cancellation) SIGKILLs the process group and waits for the process to end before
    the returned Deferred fails, so a failed launch never leaves a process behind.

Decisions where the spec is silent:
 - A line longer than 64 KiB is cut into pieces of 64 KiB, each handled as a line of its own (logged,
   and searched for the banner). An unterminated last line is handled as a line at EOF. Bytes that are
   not UTF-8 are logged with replacement characters.
 - The URL check is strict: after C{ws://} comes an IPv4 loopback literal (C{127.0.0.0/8}) or a
   bracketed IPv6 loopback literal (C{[::1]}), a colon and a port 1–65535 in ASCII digits, and nothing
   else (no path). The line in C{unexpected listen line "<line>"} is the trimmed line, quoted as a JSON
   string (quotes, backslashes and control characters escaped, as Go's C{%q} would).
 - A non-200 answer is remembered as C{status <code>}, a failed attempt as the failure's text (e.g.
   C{timed out after 1s}); before any attempt finished the last error is C{none}. An attempt still in
   flight at the 5 s deadline (or at a cancellation) is abandoned and its outcome ignored: Twisted may
   report a connection cancelled during name resolution as a DNS lookup error, which is no answer
   of the app-server's. If the process is reaped while readiness is polled, the
   launch fails at once with C{readyz never returned 200: last err=app-server exited (<status>)}
   rather than polling a dead port for the rest of the 5 s.
 - C{spawnProcess} itself failing (no such working directory on some platforms, fd exhaustion) fails
   the launch with C{start process: <error>}. A C{spawned} callback that raises fails the launch with
   that exception, after the kill and the wait like any other failure.
 - L{IAppServerProcess.signal_group} sends to the group even after the process was reaped (the
   supervisor's final SIGKILL after the exit, §5.5 step 2, §5.6, is meant for stragglers such as
   env-mcp). A group that does not exist yet — the trampoline has not called C{setsid} — is handled by
   signalling the (not yet reaped) process alone, which has no descendants yet. "No such process" and
   "not permitted" are both ignored: a signal is best effort.
 - L{exit_status_text} describes a normal exit as C{exit code N} and a death by signal as C{signal N}
   (unlike L{codexgw.executor.child.exit_code}, which folds both into one number).
 - The readiness client is, by default, treq over an C{Agent} with a non-persistent connection pool:
   one probe per launch does not justify keeping a connection to a process that may go away.
 - Launch success and failure are not logged here (the supervisor logs C{app-server spawned} and
   C{spawn failed} with its own context).
 - L{process_start_time} elsewhere than Linux runs C{ps} synchronously; it is called once per spawn
   and at startup recovery, where a blocking call of a few milliseconds is acceptable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import Attribute, Interface, implementer

from codexgw.appgw.loopback import is_loopback_address
from codexgw.executor.child import session_leader_argv
from codexgw.httpclient import ExchangeFailed, HTTPRequester, Reply, exchange, make_http_client

#: The address codex is told to listen on; the OS picks the port (§5.4).
LISTEN_ADDRESS: Final = "ws://127.0.0.1:0"
#: Seconds from the spawn within which the banner must arrive.
BANNER_TIMEOUT: Final = 10.0
#: Seconds from the banner within which C{/readyz} must answer 200.
READY_TIMEOUT: Final = 5.0
#: Seconds between the end of one readiness attempt and the start of the next.
READY_INTERVAL: Final = 0.05
#: Seconds one readiness attempt may take.
READY_ATTEMPT_TIMEOUT: Final = 1.0
#: Longest output line handled in one piece, in bytes.
MAX_OUTPUT_LINE: Final = 64 << 10
#: Prefix of every relayed output line in the gateway log.
RELAY_PREFIX: Final = "[codex-subproc] "

#: Whether C{/proc} holds the start time (§5.8); a variable, so that type checking sees both paths.
ON_LINUX: bool = sys.platform.startswith("linux")

_PORT: Final = re.compile(r"[0-9]{1,5}")
_log = Logger()


class LaunchError(Exception):
    """
    A launch failed. C{str()} is the detail without the supervisor's C{spawn: } prefix, e.g.
    C{read listen line: EOF}, C{read listen line: timeout after 10s},
    C{unexpected listen line "<line>"}, C{readyz never returned 200: last err=<detail>}.
    """


class IAppServerProcess(Interface):
    """
    One spawned C{codex app-server}, the leader of its own process group.
    """

    pid = Attribute("C{int}: the process id, which is also its process group id.")
    ws_url = Attribute('C{str}: C{"ws://127.0.0.1:PORT"} from the banner; empty until known.')
    http_url = Attribute('C{str}: C{"http://127.0.0.1:PORT"}; empty until known.')

    def signal_group(signum: int) -> None:
        """
        Send C{signum} to the process group (C{os.killpg(pid, signum)}); a group that no longer
        exists is ignored.
        """

    def exited() -> Deferred[str]:
        """
        A new Deferred on each call, firing once the process has ended (all its output read, the
        process reaped) with its status text: C{exit code N} or C{signal N}. Cancelling it affects
        no other caller.
        """

    def has_exited() -> bool:
        """
        Whether the process has ended (as L{exited} reports it).
        """


class IAppServerLauncher(Interface):
    """
    Starts C{codex app-server} processes (§5.4).
    """

    def launch(
        workspace_id: str,
        environment: Mapping[str, str],
        cwd: str,
        spawned: Callable[[IAppServerProcess], None],
    ) -> Deferred[IAppServerProcess]:
        """
        Spawn C{<codex-bin> app-server --listen ws://127.0.0.1:0} in its own session and process group
        with exactly C{environment} and C{cwd}, call C{spawned(process)} synchronously once the pid is
        known, then wait for the banner (10 s from the spawn) and for C{/readyz} to answer 200 (5 s
        from the banner).

        @param workspace_id: logged with every relayed output line.
        @return: a Deferred firing with the ready process, or failing with L{LaunchError} once the
            process group was SIGKILLed and the process has ended. Cancelling it kills the group the
            same way and then fails it with C{CancelledError}.
        """


def exit_status_text(reason: Failure) -> str:
    """
    The status text of a C{processEnded} reason: C{exit code N} for a normal exit, C{signal N} for a
    death by signal.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"signal {value.signal}"
        if value.exitCode is not None:
            return f"exit code {value.exitCode}"
    return f"unknown exit ({reason.getErrorMessage()})"


def process_start_time(pid: int) -> str | None:
    """
    An opaque text identifying the instance of process C{pid} (§5.8): on Linux field 22 of
    C{/proc/<pid>/stat} (the start time in clock ticks since boot); elsewhere the output of
    C{ps -o lstart= -p <pid>}. C{None} when there is no such process.
    """
    if pid <= 0:
        return None
    if ON_LINUX:
        return proc_start_time(pid)
    return ps_start_time(pid)


def proc_start_time(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """
    Field 22 of C{<proc_root>/<pid>/stat}, or C{None} when there is no such process.

    The second field (the command name in parentheses) may itself hold spaces and parentheses, so the
    fields are counted after the last C{)}.
    """
    try:
        stat = (proc_root / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After "pid (comm)" comes field 3 (state); field 22 is the 20th from there.
    fields = stat[stat.rfind(b")") + 1 :].split()
    if len(fields) < 20:
        return None
    return fields[19].decode("ascii", "replace")


def ps_start_time(pid: int) -> str | None:
    """
    The output of C{ps -o lstart= -p <pid>} without surrounding whitespace, or C{None} when C{ps}
    finds no such process.
    """
    completed = subprocess.run(
        ["ps", "-o", "lstart=", "-p", str(pid)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    text = completed.stdout.decode("utf-8", "replace").strip()
    if completed.returncode != 0 or not text:
        return None
    return text


def listen_urls(line: str) -> tuple[str, str] | None:
    """
    The websocket and HTTP URLs of a banner line, or C{None} when the line's URL is not
    C{ws://<loopback ip>:<port>}.

    @param line: a whitespace-trimmed line containing C{ws://}.
    """
    ws_url = line[line.index("ws://") :]
    rest = ws_url[len("ws://") :]
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return None
        port = after[1:]
    else:
        host, _, port = rest.rpartition(":")
        if ":" in host:
            # An IPv6 literal must be bracketed.
            return None
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535 or not is_loopback_address(host):
        return None
    return ws_url, "http://" + rest


class OutputLines:
    """
    Split one output stream into lines, cutting a line longer than C{max_line} bytes into pieces.

    Unlike L{codexgw.executor.child.LineBuffer}, which gives up on a stream after an overlong line, a
    log relay keeps going: the pieces are lines of their own.
    """

    def __init__(self, max_line: int = MAX_OUTPUT_LINE) -> None:
        self.max_line = max_line
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the lines (and pieces) it completed, without their C{\\n}.
        """
        *lines, rest = (self._rest + data).split(b"\n")
        pieces: list[bytes] = []
        for line in lines:
            pieces.extend(self._cut(line))
        while len(rest) > self.max_line:
            pieces.append(rest[: self.max_line])
            rest = rest[self.max_line :]
        self._rest = rest
        return pieces

    def close(self) -> list[bytes]:
        """
        The stream ended: return its unterminated last line, if any.
        """
        rest, self._rest = self._rest, b""
        return [rest] if rest else []

    def _cut(self, line: bytes) -> list[bytes]:
        if len(line) <= self.max_line:
            return [line]
        return [line[start : start + self.max_line] for start in range(0, len(line), self.max_line)]


@implementer(IAppServerProcess)
class AppServerProcess(ProcessProtocol):
    """
    The real L{IAppServerProcess}: the C{ProcessProtocol} of one spawned C{codex app-server}.

    It reads both output streams for the life of the process, finds the banner, relays every other line
    to the log, and reports the end.
    """

    transport: Any  # Twisted's process transport is untyped.

    def __init__(
        self,
        workspace_id: str,
        log: Logger,
        killpg: Callable[[int, int], None] = os.killpg,
    ) -> None:
        """
        @param workspace_id: logged with every relayed line.
        @param log: where relayed lines go.
        @param killpg: C{os.killpg}, or a stand-in in unit tests.
        """
        self.pid = 0
        self.ws_url = ""
        self.http_url = ""
        self.workspace_id = workspace_id
        self._log = log
        self._killpg = killpg
        self._streams = {1: OutputLines(), 2: OutputLines()}
        self._banner: Deferred[str] = Deferred()
        self._banner_seen = False
        self._reaped_status: str | None = None
        self._status: str | None = None
        self._waiters: list[Deferred[str]] = []

    # IAppServerProcess

    def signal_group(self, signum: int) -> None:
        """
        See L{IAppServerProcess.signal_group}.
        """
        # pid 0 or 1 would mean our own group or every process we may signal: never.
        if self.pid <= 1:
            return
        try:
            self._killpg(self.pid, signum)
        except ProcessLookupError:
            if self._reaped_status is None:
                # No group yet (setsid not called yet): the process alone, which has no children.
                with contextlib.suppress(ProcessExitedAlready, ProcessLookupError, PermissionError):
                    self.transport.signalProcess(signum)
        except PermissionError:
            pass

    def exited(self) -> Deferred[str]:
        """
        See L{IAppServerProcess.exited}.
        """
        if self._status is not None:
            return succeed(self._status)

        def cancel(d: Deferred[str]) -> None:
            self._waiters.remove(d)

        waiter: Deferred[str] = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter

    def has_exited(self) -> bool:
        """
        See L{IAppServerProcess.has_exited}.
        """
        return self._status is not None

    # what the launcher uses

    def banner(self) -> Deferred[str]:
        """
        The Deferred firing with the (trimmed) banner line, or failing with L{LaunchError}
        C{read listen line: EOF} when both streams end first. Only one caller may use it.
        """
        return self._banner

    def reaped_status(self) -> str | None:
        """
        The exit status text once the process was reaped (its output may still be unread), else
        C{None}.
        """
        return self._reaped_status

    # ProcessProtocol

    def connectionMade(self) -> None:
        """
        Learn the pid as soon as the process exists.
        """
        self.pid = int(self.transport.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Split stdout and stderr into lines.
        """
        stream = self._streams.get(childFD)
        if stream is not None:
            self._lines(stream.feed(data))

    def childConnectionLost(self, childFD: int) -> None:
        """
        One stream ended: handle its last unterminated line; once both ended without a banner, the
        banner will never come.
        """
        stream = self._streams.pop(childFD, None)
        if stream is None:
            return
        self._lines(stream.close())
        if not self._streams and not self._banner_seen and not self._banner.called:
            self._banner.errback(LaunchError("read listen line: EOF"))

    def processExited(self, reason: Failure) -> None:
        """
        The process was reaped; its output may still be in the pipes.
        """
        self._reaped_status = exit_status_text(reason)

    def processEnded(self, reason: Failure) -> None:
        """
        The process was reaped and both streams ended: report the exit to every waiter.
        """
        for fd in list(self._streams):
            self.childConnectionLost(fd)
        self._status = self._reaped_status = exit_status_text(reason)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._status)

    # internals

    def _lines(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not self._banner_seen and "ws://" in line:
                self._banner_seen = True
                if not self._banner.called:
                    self._banner.callback(line.strip())
                continue
            self._log.info(
                RELAY_PREFIX + "{line}", line=line, workspace_id=self.workspace_id, pid=self.pid
            )


@implementer(IAppServerLauncher)
class AppServerLauncher:
    """
    The real L{IAppServerLauncher}: spawns C{codex app-server} processes with the reactor.
    """

    def __init__(
        self,
        reactor: Any,
        codex_bin: str,
        clock: IReactorTime | None = None,
        http: HTTPRequester | None = None,
        log: Logger | None = None,
        killpg: Callable[[int, int], None] = os.killpg,
    ) -> None:
        """
        @param reactor: spawns the processes (C{IReactorProcess}); the default clock and the
            default readiness client's reactor.
        @param codex_bin: absolute path of the codex binary.
        @param clock: the timers of the banner wait (10 s), readiness (5 s, 50 ms between attempts,
            1 s per attempt); the reactor when C{None}.
        @param http: the readiness client; treq over a non-persistent pool when C{None}.
        @param log: where relayed output lines go; this module's logger when C{None}.
        @param killpg: C{os.killpg}, or a stand-in in unit tests (with a reactor that spawns nothing).
        """
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._http = (
            make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
            if http is None
            else http
        )
        self._log = _log if log is None else log
        self._killpg = killpg
        self.argv = session_leader_argv([codex_bin, "app-server", "--listen", LISTEN_ADDRESS])

    def launch(
        self,
        workspace_id: str,
        environment: Mapping[str, str],
        cwd: str,
        spawned: Callable[[IAppServerProcess], None],
    ) -> Deferred[IAppServerProcess]:
        """
        See L{IAppServerLauncher.launch}.
        """
        return Deferred.fromCoroutine(self._launch(workspace_id, environment, cwd, spawned))

    async def _launch(
        self,
        workspace_id: str,
        environment: Mapping[str, str],
        cwd: str,
        spawned: Callable[[IAppServerProcess], None],
    ) -> IAppServerProcess:
        process = AppServerProcess(workspace_id, self._log, self._killpg)
        try:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                transport = self._reactor.spawnProcess(
                    process,
                    self.argv[0],
                    self.argv,
                    env=dict(environment),
                    path=cwd,
                    childFDs={0: devnull, 1: "r", 2: "r"},
                )
            finally:
                os.close(devnull)
        except OSError as e:
            raise LaunchError(f"start process: {e}") from None
        process.pid = int(transport.pid)

        def banner_timeout(result: str | Failure, timeout: float) -> str:
            if isinstance(result, Failure):
                raise LaunchError(f"read listen line: timeout after {timeout:g}s")
            return result

        # The 10 s run from the spawn, so the timer starts before the callback runs.
        banner = process.banner().addTimeout(BANNER_TIMEOUT, self._clock, onTimeoutCancel=banner_timeout)
        try:
            spawned(process)
            line = await banner
            urls = listen_urls(line)
            if urls is None:
                raise LaunchError(f"unexpected listen line {json.dumps(line, ensure_ascii=False)}")
            process.ws_url, process.http_url = urls
            await self._readiness(process)
        except Exception:
            # Still waiting only when the callback raised; either way its outcome no longer matters.
            banner.cancel()
            banner.addErrback(lambda _: None)
            await _kill_and_wait(process)
            raise
        return process

    def _readiness(self, process: AppServerProcess) -> Deferred[None]:
        polling = _Polling()

        def deadline(result: Failure | None, timeout: float) -> None:
            if isinstance(result, Failure):
                raise LaunchError(f"readyz never returned 200: last err={polling.last_err}")
            return result

        d = Deferred.fromCoroutine(self._poll(process, polling))
        return d.addTimeout(READY_TIMEOUT, self._clock, onTimeoutCancel=deadline)

    async def _poll(self, process: AppServerProcess, polling: _Polling) -> None:
        url = process.http_url + "/readyz"
        while True:
            try:
                reply = await self._attempt(url, polling)
            except ExchangeFailed as e:
                if polling.stopped:
                    raise CancelledError() from None
                polling.last_err = str(e)
            else:
                if reply.status == 200:
                    return
                polling.last_err = f"status {reply.status}"
            status = process.reaped_status()
            if status is not None:
                raise LaunchError(f"readyz never returned 200: last err=app-server exited ({status})")
            await deferLater(self._clock, READY_INTERVAL)

    def _attempt(self, url: str, polling: _Polling) -> Deferred[Reply]:
        # A request cancelled while the connection is being made may fail with some other error
        # (e.g. a DNS lookup error for an abandoned resolution) than CancelledError: the flag tells
        # the poller that the attempt was abandoned, not answered.
        attempt = exchange(
            self._http, self._clock, "GET", url, Headers(), None, READY_ATTEMPT_TIMEOUT,
            lambda status: False,
        )  # fmt: skip

        def cancel(d: Deferred[Reply]) -> None:
            polling.stopped = True
            attempt.cancel()

        result: Deferred[Reply] = Deferred(cancel)
        attempt.addCallbacks(result.callback, result.errback)
        return result


@dataclass
class _Polling:
    """
    The state of one readiness wait: the last attempt's error, and whether the wait was stopped
    (deadline or cancellation).
    """

    last_err: str = "none"
    stopped: bool = False


async def _kill_and_wait(process: IAppServerProcess) -> None:
    process.signal_group(signal.SIGKILL)
    while True:
        try:
            await process.exited()
        except CancelledError:
            # Cancelled again while waiting: the process must still be seen to end first.
            continue
        return
