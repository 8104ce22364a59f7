"""
Tests for L{codexgw.appgw.launcher} and L{codexgw.testing.fakelauncher}: spawning one C{codex
app-server} (C{app-gateway.md} §5.4, §13 items 29–31).

 - L{LauncherInterfaceTests} is the contract of L{IAppServerLauncher} and L{IAppServerProcess}, run
   against L{FakeLauncher} (in memory) and against L{AppServerLauncher} with real processes of the
   fake app-server script (C{codexgw.testing.fakeappserver}).
 - L{LaunchStepTests} drives L{AppServerLauncher} without any process: a fake reactor records the
   spawn, the test plays the process's output and end, a C{Clock} runs the timers and a stub HTTP
   server answers C{/readyz}.
 - L{RealLauncherTests} checks what only real processes show (banner on either stream, timeouts with
   the group really killed, a grandchild gone with the group, EOF, log relay), with a C{Clock} for the
   launcher's timers where timeouts are tested and bounded waits on the real reactor otherwise.
 - L{RealCodexTests} launches the pinned codex binary itself.
 - The remaining classes test the small helpers and the fake's own knobs.
"""

from __future__ import annotations

import abc
import os
import select
import signal
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import (
    DNSLookupError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ResponseDone
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.appgw import launcher as launcher_module
from codexgw.appgw.launcher import (
    BANNER_TIMEOUT,
    LISTEN_ADDRESS,
    MAX_OUTPUT_LINE,
    READY_TIMEOUT,
    AppServerLauncher,
    AppServerProcess,
    IAppServerLauncher,
    IAppServerProcess,
    LaunchError,
    OutputLines,
    exit_status_text,
    listen_urls,
    proc_start_time,
    process_start_time,
    ps_start_time,
)
from codexgw.executor.child import session_leader_argv
from codexgw.httpclient import HTTPRequester, make_http_client
from codexgw.testing.fakelauncher import FIRST_PID, FakeAppServerProcess, FakeLauncher
from tests.appgw.stubhttp import Answer, Drop, Hang, RefusingHTTP, StubServer
from tests.codexclient import DUMMY_API_KEY, alive
from tests.support import codex_binary

if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object

reactor: Any = global_reactor

#: Bound of every wait on a real process.
WAIT = 20.0
WORKSPACE = "ws_a"


def bounded(d: Deferred[Any], what: str) -> Deferred[Any]:
    """
    C{d}, failing with an C{AssertionError} naming C{what} after L{WAIT} seconds of the real reactor.
    """

    def named(failure: Failure) -> None:
        failure.trap(TimeoutError)
        raise AssertionError(f"{what}: not within {WAIT}s")

    return d.addTimeout(WAIT, reactor).addErrback(named)


@implementer(ILogObserver)
class WatchedLog:
    """
    A logger whose events are kept, with waits for an event to appear.

    @ivar log: the logger to hand to the launcher.
    @ivar events: every event logged.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.log = Logger(observer=self)
        self._waiters: list[tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []

    def __call__(self, event: LogEvent) -> None:
        """
        Keep one event and wake whoever waits for it.
        """
        self.events.append(event)
        for waiter in list(self._waiters):
            matches, waiting = waiter
            if matches(event):
                self._waiters.remove(waiter)
                waiting.callback(event)

    def messages(self) -> list[str]:
        """
        The formatted text of every event.
        """
        return [formatEvent(event) for event in self.events]

    def wait_for(self, matches: Callable[[LogEvent], bool], what: str) -> Deferred[LogEvent]:
        """
        The first event (logged or to come) for which C{matches} holds, within L{WAIT} seconds.
        """
        for event in self.events:
            if matches(event):
                return succeed(event)
        waiting: Deferred[LogEvent] = Deferred()
        self._waiters.append((matches, waiting))
        return bounded(waiting, what)


# ---------------------------------------------------------------------------------------------
# The fake app-server script and real launches


def fake_codex_path(directory: Path) -> str:
    """
    Write the fake app-server script into C{directory}; return its path.
    """
    from codexgw.testing.fakeappserver import write_fake_codex  # noqa: PLC0415

    directory.mkdir(parents=True)
    return write_fake_codex(str(directory.resolve()))


def base_environment(test: SynchronousTestCase, **knobs: str) -> tuple[dict[str, str], str]:
    """
    A clean environment (C{PATH}, a fresh C{HOME} and C{CODEX_HOME}) plus C{knobs}, and a working
    directory.
    """
    root = Path(test.mktemp()).resolve()
    home = root / "home"
    codex_home = root / "codex-home"
    home.mkdir(parents=True)
    codex_home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        **knobs,
    }
    return env, str(home)


def group_members(pgid: int) -> list[int]:
    """
    The processes of process group C{pgid} that are alive (zombies do not count: this container's
    init may be slow to reap re-parented processes, or never reap them).
    """
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat_text[stat_text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_at_cleanup(test: TestCase, spawned: list[IAppServerProcess]) -> None:
    """
    At cleanup, SIGKILL the group of every process in C{spawned} and wait (bounded) for each to end.
    """

    async def cleanup() -> None:
        for process in spawned:
            process.signal_group(signal.SIGKILL)
            await bounded(process.exited(), "exit at cleanup")
            process.signal_group(signal.SIGKILL)

    test.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))


def real_http() -> HTTPRequester:
    """
    A readiness client on the real reactor that leaves no connection behind.
    """
    return make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))


# ---------------------------------------------------------------------------------------------
# The interface tests


class LauncherHarness(abc.ABC):
    """
    One launcher under test.

    @ivar spawned: every process handed to the C{spawned} callback, in order.
    """

    #: The status text of a process ended by SIGTERM to its group.
    sigterm_status = "signal 15"

    def __init__(self) -> None:
        self.spawned: list[IAppServerProcess] = []

    @abc.abstractmethod
    def launcher(self) -> IAppServerLauncher:
        """
        The launcher.
        """

    @abc.abstractmethod
    def launch_ready(self) -> Deferred[IAppServerProcess]:
        """
        A launch that will succeed (by itself or helped by the harness).
        """

    @abc.abstractmethod
    def launch_waiting(self) -> Deferred[IAppServerProcess]:
        """
        A launch that will wait until cancelled (no banner).
        """

    @abc.abstractmethod
    def launch_failing(self) -> tuple[Deferred[IAppServerProcess], str]:
        """
        A launch that will fail, and how the failure's text starts.
        """

    @abc.abstractmethod
    def wait(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        C{d}, bounded in time where real processes are involved.
        """

    def record(self, process: IAppServerProcess) -> None:
        """
        The C{spawned} callback.
        """
        self.spawned.append(process)


class LauncherInterfaceTests(_MixinBase):
    """
    The L{IAppServerLauncher} and L{IAppServerProcess} contract.
    """

    harness: LauncherHarness

    @abc.abstractmethod
    def make_harness(self) -> LauncherHarness:
        """
        A fresh harness.
        """

    def setUp(self) -> None:
        """
        A harness.
        """
        self.harness = self.make_harness()

    async def ready(self) -> IAppServerProcess:
        """
        A launched, ready process.
        """
        return cast(IAppServerProcess, await self.harness.wait(self.harness.launch_ready(), "launch"))

    def test_provides(self) -> None:
        """
        The launcher provides L{IAppServerLauncher}.
        """
        self.assertTrue(verifyObject(IAppServerLauncher, self.harness.launcher()))

    async def test_launch(self) -> None:
        """
        A successful launch hands the same process to C{spawned} and to the result: a pid above 1,
        and loopback C{ws://} and C{http://} URLs for the same port; the process is alive.
        """
        process = await self.ready()
        self.assertTrue(verifyObject(IAppServerProcess, process))
        self.assertEqual(self.harness.spawned, [process])
        self.assertGreater(process.pid, 1)
        self.assertRegex(process.ws_url, r"^ws://127\.0\.0\.1:[0-9]+$")
        self.assertEqual(process.http_url, "http://" + process.ws_url.removeprefix("ws://"))
        self.assertFalse(process.has_exited())

    async def test_sigterm(self) -> None:
        """
        SIGTERM to the group ends the process; L{IAppServerProcess.exited} fires with its status
        (C{signal 15} for the fake process; the fake app-server script exits with status 0).
        """
        process = await self.ready()
        ended = process.exited()
        self.assertFalse(ended.called)
        process.signal_group(signal.SIGTERM)
        self.assertEqual(await self.harness.wait(ended, "exit"), self.harness.sigterm_status)
        self.assertTrue(process.has_exited())

    async def test_exited_after_exit(self) -> None:
        """
        After the exit, each L{IAppServerProcess.exited} call returns a new Deferred that has
        already fired; signalling the group still does not raise.
        """
        process = await self.ready()
        process.signal_group(signal.SIGKILL)
        self.assertEqual(await self.harness.wait(process.exited(), "exit"), "signal 9")
        first, second = process.exited(), process.exited()
        self.assertIsNot(first, second)
        self.assertEqual(self.successResultOf(first), "signal 9")
        self.assertEqual(self.successResultOf(second), "signal 9")
        process.signal_group(signal.SIGKILL)
        process.signal_group(signal.SIGTERM)

    async def test_exited_cancel_isolated(self) -> None:
        """
        Cancelling one caller's L{IAppServerProcess.exited} Deferred leaves the others waiting and
        firing normally.
        """
        process = await self.ready()
        cancelled, kept = process.exited(), process.exited()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        process.signal_group(signal.SIGKILL)
        self.assertEqual(await self.harness.wait(kept, "exit"), "signal 9")

    async def test_cancel(self) -> None:
        """
        Cancelling a launch kills the process group; the Deferred fails with C{CancelledError} once
        the process has ended.
        """
        d = self.harness.launch_waiting()
        [process] = self.harness.spawned
        d.cancel()
        await self.assertFailure(self.harness.wait(d, "cancelled launch"), CancelledError)
        self.assertTrue(process.has_exited())
        self.assertEqual(self.successResultOf(process.exited()), "signal 9")

    async def test_failure(self) -> None:
        """
        A failed launch fails with L{LaunchError} only once its process group was killed and the
        process has ended.
        """
        d, expected = self.harness.launch_failing()
        error = await self.assertFailure(self.harness.wait(d, "failed launch"), LaunchError)
        self.assertTrue(str(error).startswith(expected), str(error))
        [process] = self.harness.spawned
        self.assertTrue(process.has_exited())
        self.assertEqual(self.successResultOf(process.exited()), "signal 9")


class FakeHarness(LauncherHarness):
    """
    A L{FakeLauncher}; the harness decides the launches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeLauncher()

    def launcher(self) -> IAppServerLauncher:
        """
        See L{LauncherHarness.launcher}.
        """
        return self.fake

    def launch_ready(self) -> Deferred[IAppServerProcess]:
        """
        See L{LauncherHarness.launch_ready}.
        """
        d = self.fake.launch(WORKSPACE, {}, "/tmp", self.record)
        self.fake.launches[-1].succeed()
        return d

    def launch_waiting(self) -> Deferred[IAppServerProcess]:
        """
        See L{LauncherHarness.launch_waiting}.
        """
        return self.fake.launch(WORKSPACE, {}, "/tmp", self.record)

    def launch_failing(self) -> tuple[Deferred[IAppServerProcess], str]:
        """
        See L{LauncherHarness.launch_failing}.
        """
        d = self.fake.launch(WORKSPACE, {}, "/tmp", self.record)
        self.fake.launches[-1].fail('unexpected listen line "ws://10.0.0.1:80"')
        return d, "unexpected listen line"

    def wait(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        See L{LauncherHarness.wait}: the fake does everything at once.
        """
        assert d.called, what
        return d


class FakeLauncherInterfaceTests(LauncherInterfaceTests, TestCase):
    """
    L{LauncherInterfaceTests} for L{FakeLauncher}.
    """

    def make_harness(self) -> LauncherHarness:
        """
        A L{FakeHarness}.
        """
        return FakeHarness()


class RealHarness(LauncherHarness):
    """
    An L{AppServerLauncher} on the real reactor, launching the fake app-server script.
    """

    sigterm_status = "exit code 0"

    def __init__(self, test: TestCase) -> None:
        super().__init__()
        self.test = test
        self.real = AppServerLauncher(reactor, fake_codex_path(Path(test.mktemp())), http=real_http())
        kill_at_cleanup(test, self.spawned)

    def launcher(self) -> IAppServerLauncher:
        """
        See L{LauncherHarness.launcher}.
        """
        return self.real

    def launch_with(self, **knobs: str) -> Deferred[IAppServerProcess]:
        """
        A launch of the fake app-server with C{knobs} in its environment.
        """
        env, cwd = base_environment(self.test, **knobs)
        return self.real.launch(WORKSPACE, env, cwd, self.record)

    def launch_ready(self) -> Deferred[IAppServerProcess]:
        """
        See L{LauncherHarness.launch_ready}.
        """
        return self.launch_with()

    def launch_waiting(self) -> Deferred[IAppServerProcess]:
        """
        See L{LauncherHarness.launch_waiting}.
        """
        return self.launch_with(FAKE_APP_SERVER_BANNER="none")

    def launch_failing(self) -> tuple[Deferred[IAppServerProcess], str]:
        """
        See L{LauncherHarness.launch_failing}.
        """
        return self.launch_with(FAKE_APP_SERVER_BANNER="nonloopback"), 'unexpected listen line "'

    def wait(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        """
        See L{LauncherHarness.wait}.
        """
        return bounded(d, what)


class RealLauncherInterfaceTests(LauncherInterfaceTests, TestCase):
    """
    L{LauncherInterfaceTests} for L{AppServerLauncher} with real processes.
    """

    def make_harness(self) -> LauncherHarness:
        """
        A L{RealHarness}.
        """
        return RealHarness(self)


# ---------------------------------------------------------------------------------------------
# The launcher step by step, without processes


class FakeProcessTransport:
    """
    What the launcher uses of a Twisted process transport.

    @ivar signals: the signals sent to the process alone.
    @ivar gone: whether the process was reaped (then signalling it raises).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.gone = False

    def signalProcess(self, signum: int) -> None:
        """
        Record a signal for the process alone.
        """
        if self.gone:
            raise ProcessExitedAlready()
        self.signals.append(signum)


class FakeProcessReactor:
    """
    A reactor whose C{spawnProcess} records the call and connects the protocol to a
    L{FakeProcessTransport}; no process is started.

    @ivar spawns: the keyword arguments of every call, with C{protocol}, C{executable} and C{args}.
    @ivar error: raised by the next C{spawnProcess} when set.
    """

    def __init__(self) -> None:
        self.spawns: list[dict[str, Any]] = []
        self.transports: list[FakeProcessTransport] = []
        self.error: OSError | None = None

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], **kwargs: Any
    ) -> FakeProcessTransport:
        """
        Record the spawn; make the transport.
        """
        if self.error is not None:
            raise self.error
        self.spawns.append({"protocol": protocol, "executable": executable, "args": args, **kwargs})
        transport = FakeProcessTransport(5000 + len(self.spawns))
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return transport


class ResolvingHTTP:
    """
    A readiness client that answers with a status until told to hang: then each request hangs
    "resolving the name", and cancelling it fails it with C{DNSLookupError}, as Twisted's endpoint
    does.

    @ivar calls: the requests made.
    @ivar hang: whether new requests hang.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.calls = 0
        self.hang = False

    def request(self, method: str, url: str, **kwargs: object) -> Deferred[Any]:
        """
        Answer, or hang.
        """
        self.calls += 1
        if not self.hang:
            return succeed(StatusOnly(self.status))
        return Deferred(lambda d: d.errback(DNSLookupError("Couldn't find the hostname '127.0.0.1'")))

    @property
    def http(self) -> HTTPRequester:
        """
        This client, typed as the launcher takes it.
        """
        return cast(HTTPRequester, self)


class StatusOnly:
    """
    A response with a status and an empty body.
    """

    def __init__(self, code: int) -> None:
        self.code = code

    def deliverBody(self, protocol: Any) -> None:
        """
        Deliver the empty body.
        """
        protocol.makeConnection(None)
        protocol.connectionLost(Failure(ResponseDone()))


class LaunchStepTests(SynchronousTestCase):
    """
    L{AppServerLauncher} driven step by step: fake reactor, C{Clock}, stub HTTP server.
    """

    def setUp(self) -> None:
        """
        A launcher over a fake reactor whose C{/readyz} answers 200, and a launch in progress.
        """
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.server = StubServer(Answer(200, b"ok"))
        self.watched = WatchedLog()
        self.killed: list[tuple[int, int]] = []
        self.kill_error: type[OSError] | None = None
        self.spawned: list[IAppServerProcess] = []

    def killpg(self, pgid: int, signum: int) -> None:
        """
        Record a signal to a group (or raise L{kill_error}).
        """
        if self.kill_error is not None:
            raise self.kill_error()
        self.killed.append((pgid, signum))

    def make_launcher(self, http: HTTPRequester | None = None) -> AppServerLauncher:
        """
        An L{AppServerLauncher} over the fakes.
        """
        return AppServerLauncher(
            self.reactor,
            "/opt/codex/bin/codex",
            clock=self.clock,
            http=self.server.http if http is None else http,
            log=self.watched.log,
            killpg=self.killpg,
        )

    def start(
        self,
        http: HTTPRequester | None = None,
        spawned: Callable[[IAppServerProcess], None] | None = None,
    ) -> tuple[Deferred[IAppServerProcess], AppServerProcess]:
        """
        Start a launch; return its Deferred and its process protocol.
        """
        launcher = self.make_launcher(http)
        d = launcher.launch(
            WORKSPACE, {"CODEX_HOME": "/h", "PATH": "/bin"}, "/work", spawned or self.spawned.append
        )
        return d, self.reactor.spawns[-1]["protocol"]

    def banner(
        self, protocol: AppServerProcess, line: bytes = b"  listening on: ws://127.0.0.1:4321\n"
    ) -> None:
        """
        The process prints C{line} on stderr; the stub server answers.
        """
        protocol.childDataReceived(2, line)
        self.server.flush()

    def end(self, protocol: AppServerProcess, reason: Failure | None = None) -> None:
        """
        The process ends (by default killed by SIGKILL): both streams close, it is reaped.
        """
        if reason is None:
            reason = Failure(ProcessTerminated(signal=signal.SIGKILL))
        protocol.childConnectionLost(1)
        protocol.childConnectionLost(2)
        protocol.processExited(reason)
        protocol.processEnded(reason)

    def assert_killed_then_fails(
        self, d: Deferred[IAppServerProcess], protocol: AppServerProcess, error: type[Exception]
    ) -> Exception:
        """
        The group was SIGKILLed and C{d} waits for the exit; once the process ends, C{d} fails with
        C{error}, which is returned.
        """
        self.assertIn((protocol.pid, signal.SIGKILL), self.killed)
        self.assertNoResult(d)
        self.end(protocol)
        value = self.failureResultOf(d, error).value
        assert isinstance(value, Exception)
        return value

    def relayed(self) -> list[str]:
        """
        The messages of the relayed output lines.
        """
        return [m for m in self.watched.messages() if m.startswith("[codex-subproc] ")]

    def test_spawn(self) -> None:
        """
        codex is spawned through the setsid trampoline with C{app-server --listen
        ws://127.0.0.1:0}, exactly the given environment and working directory, stdin from a file
        descriptor (C{/dev/null}) and both output streams piped.
        """
        self.start()
        [spawn] = self.reactor.spawns
        argv = session_leader_argv(["/opt/codex/bin/codex", "app-server", "--listen", LISTEN_ADDRESS])
        self.assertEqual((spawn["executable"], spawn["args"]), (argv[0], argv))
        self.assertEqual(
            argv[-4:], ["/opt/codex/bin/codex", "app-server", "--listen", "ws://127.0.0.1:0"]
        )
        self.assertEqual(spawn["env"], {"CODEX_HOME": "/h", "PATH": "/bin"})
        self.assertEqual(spawn["path"], "/work")
        self.assertIsInstance(spawn["childFDs"][0], int)
        self.assertEqual((spawn["childFDs"][1], spawn["childFDs"][2]), ("r", "r"))

    def test_spawned_first(self) -> None:
        """
        C{spawned} is called synchronously with the process, whose pid is known and URLs are not.
        """
        d, protocol = self.start()
        self.assertEqual(self.spawned, [protocol])
        self.assertEqual(protocol.pid, self.reactor.transports[0].pid)
        self.assertEqual((protocol.ws_url, protocol.http_url), ("", ""))
        self.assertNoResult(d)

    def test_banner_stderr(self) -> None:
        """
        The banner on stderr gives the URLs (from C{ws://} to the end of the trimmed line); one
        C{GET /readyz} answered 200 completes the launch.
        """
        d, protocol = self.start()
        self.banner(protocol, b"  listening on: ws://127.0.0.1:4321 \r\n")
        self.assertIs(self.successResultOf(d), protocol)
        self.assertEqual(protocol.ws_url, "ws://127.0.0.1:4321")
        self.assertEqual(protocol.http_url, "http://127.0.0.1:4321")
        recorded = self.server.only_request()
        self.assertEqual((recorded.method, recorded.uri), (b"GET", b"/readyz"))
        self.assertIsNone(recorded.header(b"Origin"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.killed, [])

    def test_banner_stdout_in_pieces(self) -> None:
        """
        A bare URL on stdout works too, also when it arrives in pieces.
        """
        d, protocol = self.start()
        protocol.childDataReceived(1, b"ws://127.0.")
        protocol.childDataReceived(1, b"0.1:80")
        self.assertNoResult(d)
        protocol.childDataReceived(1, b"\n")
        self.server.flush()
        self.assertEqual(self.successResultOf(d).ws_url, "ws://127.0.0.1:80")

    def test_banner_first_wins(self) -> None:
        """
        The first line containing C{ws://} is the banner; every other line of either stream is
        relayed to the log with the workspace id, the banner line is not.
        """
        d, protocol = self.start()
        protocol.childDataReceived(2, b"WARNING: something\n")
        protocol.childDataReceived(1, b"hello {not a field}\n")
        self.banner(protocol, b"listening on: ws://127.0.0.1:4321\nws://127.0.0.1:9999\n")
        protocol.childDataReceived(2, b"later\xff line\n")
        self.assertEqual(self.successResultOf(d).ws_url, "ws://127.0.0.1:4321")
        self.assertEqual(
            self.relayed(),
            [
                "[codex-subproc] WARNING: something",
                "[codex-subproc] hello {not a field}",
                "[codex-subproc] ws://127.0.0.1:9999",
                "[codex-subproc] later\ufffd line",
            ],
        )
        for event in self.watched.events:
            self.assertEqual(event["workspace_id"], WORKSPACE)
            self.assertEqual(event["pid"], protocol.pid)
            self.assertEqual(event["log_level"].name, "info")

    def test_relay_after_launch(self) -> None:
        """
        Output is read and relayed for the life of the process; an unterminated last line is
        relayed at EOF.
        """
        d, protocol = self.start()
        self.banner(protocol)
        self.successResultOf(d)
        protocol.childDataReceived(2, b"env-mcp: started\npartial")
        self.end(protocol, Failure(ProcessDone(0)))
        self.assertEqual(self.relayed(), ["[codex-subproc] env-mcp: started", "[codex-subproc] partial"])
        self.assertEqual(self.successResultOf(protocol.exited()), "exit code 0")

    def test_long_line_cut(self) -> None:
        """
        A line longer than 64 KiB is relayed in pieces of 64 KiB.
        """
        d, protocol = self.start()
        protocol.childDataReceived(2, b"a" * (MAX_OUTPUT_LINE + 10))
        protocol.childDataReceived(2, b"\n")
        lines = [event["line"] for event in self.watched.events]
        self.assertEqual(lines, ["a" * MAX_OUTPUT_LINE, "a" * 10])
        self.assertNoResult(d)

    def test_unexpected_listen_line(self) -> None:
        """
        A banner URL that is not loopback fails the launch with C{unexpected listen line "<line>"}
        (the trimmed line, quoted), after the kill and the exit; no readiness request is made.
        """
        d, protocol = self.start()
        protocol.childDataReceived(2, b'  listening on: ws://10.0.0.1:80 "x"  \n')
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), 'unexpected listen line "listening on: ws://10.0.0.1:80 \\"x\\""')
        self.assertEqual(self.server.requests, [])

    def test_eof(self) -> None:
        """
        Both streams ending before a banner fail the launch with C{read listen line: EOF}; one
        stream ending is not enough.
        """
        d, protocol = self.start()
        protocol.childConnectionLost(1)
        self.assertNoResult(d)
        self.assertEqual(self.killed, [])
        protocol.childConnectionLost(2)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), "read listen line: EOF")

    def test_banner_timeout(self) -> None:
        """
        No banner within 10 s of the spawn fails the launch with C{read listen line: timeout after
        10s}, after the kill and the exit.
        """
        d, protocol = self.start()
        self.clock.advance(BANNER_TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.assertEqual(self.killed, [])
        self.clock.advance(0.001)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), "read listen line: timeout after 10s")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readiness_retries(self) -> None:
        """
        C{/readyz} is asked again 50 ms after each unsuccessful attempt (a non-200 status, a dropped
        connection) until it answers 200.
        """
        answers: list[Answer | Drop] = [Answer(503), Drop(), Answer(200)]
        self.server = StubServer(lambda recorded: answers.pop(0))
        d, protocol = self.start()
        self.banner(protocol)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.049)
        self.server.flush()
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.001)
        self.server.flush()
        self.assertEqual(len(self.server.requests), 2)
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.server.flush()
        self.assertEqual(len(self.server.requests), 3)
        self.assertIs(self.successResultOf(d), protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def poll_until(self, when: float) -> None:
        """
        Advance the clock in steps of at most 50 ms (moving HTTP bytes after each) to C{when}.
        """
        while self.clock.seconds() < when:
            self.clock.advance(min(0.05, when - self.clock.seconds()))
            self.server.flush()

    def test_readiness_deadline(self) -> None:
        """
        No 200 within 5 s of the banner fails the launch with C{readyz never returned 200: last
        err=status <code>}, after the kill and the exit.
        """
        self.server = StubServer(Answer(503, b"not yet"))
        d, protocol = self.start()
        self.banner(protocol)
        self.poll_until(READY_TIMEOUT - 0.01)
        self.assertNoResult(d)
        self.poll_until(READY_TIMEOUT)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), "readyz never returned 200: last err=status 503")
        self.assertGreater(len(self.server.requests), 50)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readiness_attempt_timeout(self) -> None:
        """
        Each attempt is limited to 1 s; a hanging server's last error is the attempt's timeout.
        """
        self.server = StubServer(Hang())
        d, protocol = self.start()
        self.banner(protocol)
        self.clock.advance(1.0)
        self.server.flush()
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.05)
        self.server.flush()
        self.assertEqual(len(self.server.requests), 2)
        self.poll_until(READY_TIMEOUT)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), "readyz never returned 200: last err=timed out after 1s")

    def test_readiness_refused(self) -> None:
        """
        A refused connection is the last error's text.
        """
        refusing = RefusingHTTP()
        d, protocol = self.start(http=refusing.http)
        self.banner(protocol)
        self.poll_until(READY_TIMEOUT)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertTrue(str(error).startswith("readyz never returned 200: last err="), str(error))
        self.assertIn("refused", str(error))
        self.assertGreater(refusing.calls, 90)

    def test_abandoned_attempt_not_an_answer(self) -> None:
        """
        An attempt abandoned at the deadline that fails with some other error than
        C{CancelledError} (as a connection attempt cancelled during name resolution does) neither
        replaces the last error nor keeps the polling going.
        """
        http = ResolvingHTTP(503)
        d, protocol = self.start(http=http.http)
        self.banner(protocol)
        self.poll_until(READY_TIMEOUT - 0.5)
        http.hang = True
        self.poll_until(READY_TIMEOUT - 0.45)
        calls = http.calls
        self.clock.advance(0.45)
        error = self.assert_killed_then_fails(d, protocol, LaunchError)
        self.assertEqual(str(error), "readyz never returned 200: last err=status 503")
        self.assertEqual(http.calls, calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_abandoned_attempt(self) -> None:
        """
        Cancelling the launch during such an attempt ends the polling and the launch fails with
        C{CancelledError}.
        """
        http = ResolvingHTTP(503)
        http.hang = True
        d, protocol = self.start(http=http.http)
        self.banner(protocol)
        d.cancel()
        self.assertNoResult(d)
        self.end(protocol)
        self.failureResultOf(d, CancelledError)
        self.assertEqual(http.calls, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readiness_exit(self) -> None:
        """
        A process reaped while readiness is polled fails the launch at the next unsuccessful
        attempt, without waiting for the 5 s.
        """
        refusing = RefusingHTTP()
        d, protocol = self.start(http=refusing.http)
        self.banner(protocol)
        protocol.processExited(Failure(ProcessTerminated(exitCode=3)))
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.assertIn((protocol.pid, signal.SIGKILL), self.killed)
        self.end(protocol, Failure(ProcessTerminated(exitCode=3)))
        error = self.failureResultOf(d, LaunchError).value
        self.assertEqual(
            str(error), "readyz never returned 200: last err=app-server exited (exit code 3)"
        )

    def test_cancel_waiting_for_banner(self) -> None:
        """
        Cancelling the launch kills the group; the Deferred fails with C{CancelledError} only once
        the process has ended, even when cancelled again meanwhile.
        """
        d, protocol = self.start()
        d.cancel()
        self.assertEqual(self.killed, [(protocol.pid, signal.SIGKILL)])
        self.assertNoResult(d)
        d.cancel()
        self.assertNoResult(d)
        self.end(protocol)
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_during_readiness(self) -> None:
        """
        Cancelling while C{/readyz} is polled abandons the attempt and kills the group.
        """
        self.server = StubServer(Hang())
        d, protocol = self.start()
        self.banner(protocol)
        d.cancel()
        self.assertEqual(self.killed, [(protocol.pid, signal.SIGKILL)])
        self.assertNoResult(d)
        self.end(protocol)
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spawned_raises(self) -> None:
        """
        A C{spawned} callback that raises fails the launch with its exception after the kill and
        the exit.
        """

        def broken(process: IAppServerProcess) -> None:
            raise RuntimeError("state record: disk full")

        d, protocol = self.start(spawned=broken)
        error = self.assert_killed_then_fails(d, protocol, RuntimeError)
        self.assertEqual(str(error), "state record: disk full")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spawn_error(self) -> None:
        """
        C{spawnProcess} failing fails the launch with C{start process: <error>}; C{spawned} is not
        called.
        """
        self.reactor.error = OSError(24, "Too many open files")
        d = self.make_launcher().launch(WORKSPACE, {}, "/work", self.spawned.append)
        error = self.failureResultOf(d, LaunchError).value
        self.assertEqual(str(error), "start process: [Errno 24] Too many open files")
        self.assertEqual(self.spawned, [])

    def test_signal_group(self) -> None:
        """
        L{AppServerProcess.signal_group} signals the group; a missing group means the process alone
        (until it was reaped); "not permitted" is ignored.
        """
        _, protocol = self.start()
        transport = self.reactor.transports[0]
        protocol.signal_group(signal.SIGTERM)
        self.assertEqual(self.killed, [(protocol.pid, signal.SIGTERM)])
        self.kill_error = ProcessLookupError
        protocol.signal_group(signal.SIGTERM)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        self.kill_error = PermissionError
        protocol.signal_group(signal.SIGTERM)
        self.kill_error = ProcessLookupError
        protocol.processExited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        transport.gone = True
        protocol.signal_group(signal.SIGKILL)
        self.assertEqual(transport.signals, [signal.SIGTERM])

    def test_signal_group_after_exit(self) -> None:
        """
        After the exit, the group is still signalled (for stragglers such as env-mcp).
        """
        _, protocol = self.start()
        self.banner(protocol)
        self.end(protocol, Failure(ProcessTerminated(exitCode=1)))
        protocol.signal_group(signal.SIGKILL)
        self.assertEqual(self.killed, [(protocol.pid, signal.SIGKILL)])
        self.assertTrue(protocol.has_exited())

    def test_signal_group_never_own_group(self) -> None:
        """
        A pid of 0 or 1 (not known) is never signalled.
        """
        process = AppServerProcess(WORKSPACE, self.watched.log, self.killpg)
        process.signal_group(signal.SIGKILL)
        process.pid = 1
        process.signal_group(signal.SIGKILL)
        self.assertEqual(self.killed, [])

    def test_exited(self) -> None:
        """
        L{AppServerProcess.exited} fires at C{processEnded} (not at the reap) with the status text.
        """
        _, protocol = self.start()
        self.banner(protocol)
        waiting = protocol.exited()
        reason = Failure(ProcessTerminated(exitCode=2))
        protocol.processExited(reason)
        self.assertNoResult(waiting)
        self.assertFalse(protocol.has_exited())
        protocol.processEnded(reason)
        self.assertEqual(self.successResultOf(waiting), "exit code 2")
        self.assertTrue(protocol.has_exited())


# ---------------------------------------------------------------------------------------------
# Real processes


class ObservedHTTP:
    """
    A readiness client that tells when a response body was read to its end.

    @ivar answered: the status of every response whose body was read.
    """

    def __init__(self, inner: HTTPRequester) -> None:
        self.inner = inner
        self.answered: list[int] = []
        self._waiters: list[Deferred[None]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """
        Forward the request; watch its response's body.
        """
        return self.inner.request(method, url, **kwargs).addCallback(self._watch)

    def next_answer(self) -> Deferred[None]:
        """
        Fire once the next response was read to its end (and the launcher has handled it).
        """
        waiting: Deferred[None] = Deferred()
        self._waiters.append(waiting)
        return bounded(waiting, "readyz answer")

    def _watch(self, response: Any) -> Any:
        observed = self

        class Watched(Protocol):
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def makeConnection(self, transport: Any) -> None:
                self.inner.makeConnection(transport)

            def dataReceived(self, data: bytes) -> None:
                self.inner.dataReceived(data)

            def connectionLost(self, reason: Failure | None = None) -> None:
                # The launcher's reading ends inside this call, so once it returns the launcher
                # has judged the answer.
                self.inner.connectionLost(reason)
                observed.answered.append(response.code)
                waiters, observed._waiters = observed._waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        deliver = response.deliverBody
        response.deliverBody = lambda protocol: deliver(Watched(protocol))
        return response


class RealLauncherTests(TestCase):
    """
    L{AppServerLauncher} with real processes of the fake app-server script.
    """

    def setUp(self) -> None:
        """
        The fake app-server script and a log to watch.
        """
        self.codex = fake_codex_path(Path(self.mktemp()))
        self.watched = WatchedLog()
        self.spawned: list[IAppServerProcess] = []
        kill_at_cleanup(self, self.spawned)

    def make_launcher(
        self, codex: str | None = None, clock: Clock | None = None, http: HTTPRequester | None = None
    ) -> AppServerLauncher:
        """
        An L{AppServerLauncher} on the real reactor (and C{clock} for its timers, when given).
        """
        return AppServerLauncher(
            reactor,
            self.codex if codex is None else codex,
            clock=clock,
            http=real_http() if http is None else http,
            log=self.watched.log,
        )

    def launch(self, launcher: AppServerLauncher, **knobs: str) -> Deferred[IAppServerProcess]:
        """
        Launch with C{knobs} in a clean environment.
        """
        env, cwd = base_environment(self, **knobs)
        return launcher.launch(WORKSPACE, env, cwd, self.spawned.append)

    async def assert_launches(self, stream: str) -> None:
        """
        With the banner on C{stream} the launch succeeds and the process answers C{/readyz}.
        """
        process = await bounded(
            self.launch(self.make_launcher(), FAKE_APP_SERVER_BANNER=stream), "launch"
        )
        self.assertRegex(process.ws_url, r"^ws://127\.0\.0\.1:[0-9]+$")
        self.assertEqual(os.getpgid(process.pid), process.pid)
        self.assertFalse(process.has_exited())
        self.assertNotIn(process.ws_url, "\n".join(self.watched.messages()))

    async def test_banner_stderr(self) -> None:
        """
        The banner on stderr (as real codex prints it) works.
        """
        await self.assert_launches("stderr")

    async def test_banner_stdout(self) -> None:
        """
        A banner on stdout works too.
        """
        await self.assert_launches("stdout")

    async def test_no_banner(self) -> None:
        """
        No banner within 10 s (of a C{Clock}) fails the launch with C{read listen line: timeout
        after 10s} once the process group is gone.
        """
        clock = Clock()
        d = self.launch(self.make_launcher(clock=clock), FAKE_APP_SERVER_BANNER="none")
        [process] = self.spawned
        clock.advance(BANNER_TIMEOUT - 0.001)
        self.assertNoResult(d)
        clock.advance(0.001)
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertEqual(str(error), "read listen line: timeout after 10s")
        self.assertEqual(self.successResultOf(process.exited()), "signal 9")
        self.assertEqual(group_members(process.pid), [])

    async def test_readyz_never_200(self) -> None:
        """
        A C{/readyz} that never answers 200 fails the launch 5 s (of a C{Clock}) after the banner
        with the last status, once the process group is gone.
        """
        clock = Clock()
        http = ObservedHTTP(real_http())
        first = http.next_answer()
        d = self.launch(
            self.make_launcher(clock=clock, http=cast(HTTPRequester, http)), FAKE_APP_SERVER_READYZ="503"
        )
        [process] = self.spawned
        await first
        self.assertEqual(http.answered, [503])
        self.assertNoResult(d)
        clock.advance(READY_TIMEOUT)
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertEqual(str(error), "readyz never returned 200: last err=status 503")
        self.assertEqual(group_members(process.pid), [])

    async def test_nonloopback(self) -> None:
        """
        A banner URL that is not loopback fails with C{unexpected listen line}.
        """
        d = self.launch(self.make_launcher(), FAKE_APP_SERVER_BANNER="nonloopback")
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertTrue(str(error).startswith('unexpected listen line "'), str(error))
        self.assertNotIn("127.0.0.1", str(error))
        [process] = self.spawned
        self.assertEqual(group_members(process.pid), [])

    def write_script(self, body: str) -> str:
        """
        An executable shell script standing in for codex.
        """
        path = Path(self.mktemp()).resolve()
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    async def test_eof(self) -> None:
        """
        Both streams closed before a banner fail with C{read listen line: EOF}, the process (still
        running) is killed, and what it printed was relayed to the log with the workspace id.
        """
        codex = self.write_script('echo "out: $1"\necho "err line" >&2\nexec 1>&- 2>&-\nexec sleep 60\n')
        d = self.launch(self.make_launcher(codex=codex))
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertEqual(str(error), "read listen line: EOF")
        [process] = self.spawned
        self.assertEqual(self.successResultOf(process.exited()), "signal 9")
        self.assertEqual(
            sorted(m for m in self.watched.messages()),
            ["[codex-subproc] err line", "[codex-subproc] out: app-server"],
        )
        self.assertEqual({event["workspace_id"] for event in self.watched.events}, {WORKSPACE})

    async def test_exit_before_banner(self) -> None:
        """
        A process that exits before a banner fails with C{read listen line: EOF}; its status is
        kept.
        """
        codex = self.write_script("echo bye >&2\nexit 3\n")
        d = self.launch(self.make_launcher(codex=codex))
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertEqual(str(error), "read listen line: EOF")
        self.assertEqual(self.successResultOf(self.spawned[0].exited()), "exit code 3")
        self.assertEqual(self.watched.messages(), ["[codex-subproc] bye"])

    async def test_grandchild_killed(self) -> None:
        """
        SIGKILL to the group ends the fake app-server's grandchild (started in its group) too.
        """
        d = self.launch(self.make_launcher(), FAKE_APP_SERVER_GRANDCHILD="1")
        process = await bounded(d, "launch")
        [event] = [e for e in self.watched.events if str(e["line"]).startswith("grandchild pid ")]
        grandchild = int(str(event["line"]).split()[-1])
        self.assertTrue(alive(grandchild))
        self.assertEqual(os.getpgid(grandchild), process.pid)
        # Readable once the grandchild has ended: its end is an event, not a guess.
        pidfd = os.pidfd_open(grandchild)
        self.addCleanup(os.close, pidfd)
        process.signal_group(signal.SIGKILL)
        self.assertEqual(await bounded(process.exited(), "exit"), "signal 9")
        readable, _, _ = select.select([pidfd], [], [], WAIT)
        self.assertEqual(readable, [pidfd])
        self.assertFalse(alive(grandchild))
        self.assertEqual(group_members(process.pid), [])

    async def test_exit_after_banner(self) -> None:
        """
        A process that exits after its banner and before it is ready fails the launch at the next
        readiness attempt, without waiting for the 5 s deadline (of a C{Clock}).
        """
        clock = Clock()
        d = self.launch(
            self.make_launcher(clock=clock),
            FAKE_APP_SERVER_READYZ="503",
            FAKE_APP_SERVER_EXIT_AFTER_BANNER="4",
        )
        [process] = self.spawned
        self.assertEqual(await bounded(process.exited(), "exit"), "exit code 4")
        clock.advance(0.05)
        error = await self.assertFailure(bounded(d, "failed launch"), LaunchError)
        self.assertEqual(
            str(error), "readyz never returned 200: last err=app-server exited (exit code 4)"
        )
        self.assertEqual(clock.getDelayedCalls(), [])


class RealCodexTests(TestCase):
    """
    L{AppServerLauncher} with the pinned codex binary.
    """

    async def test_real_codex(self) -> None:
        """
        codex runs with exactly C{<bin> app-server --listen ws://127.0.0.1:0} as its command line,
        leads its own session and process group, has C{CODEX_HOME} from the given environment, the
        given working directory and stdin from C{/dev/null}, announces its address, answers
        C{/readyz}, and ends on SIGTERM to its group.
        """
        codex = str(codex_binary())
        env, cwd = base_environment(self, CODEX_API_KEY=DUMMY_API_KEY)
        spawned: list[IAppServerProcess] = []
        kill_at_cleanup(self, spawned)
        watched = WatchedLog()
        launcher = AppServerLauncher(reactor, codex, http=real_http(), log=watched.log)
        process = await bounded(launcher.launch(WORKSPACE, env, cwd, spawned.append), "launch")
        self.assertEqual(spawned, [process])
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        self.assertEqual(
            cmdline.split(b"\0")[:-1], [codex.encode(), b"app-server", b"--listen", b"ws://127.0.0.1:0"]
        )
        self.assertEqual(os.getpgid(process.pid), process.pid)
        self.assertEqual(os.getsid(process.pid), process.pid)
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        self.assertIn(f"CODEX_HOME={env['CODEX_HOME']}".encode(), environ)
        self.assertEqual(os.readlink(f"/proc/{process.pid}/cwd"), cwd)
        self.assertEqual(os.readlink(f"/proc/{process.pid}/fd/0"), "/dev/null")
        self.assertRegex(process.ws_url, r"^ws://127\.0\.0\.1:[0-9]+$")
        self.assertFalse(any("listening on" in m for m in watched.messages()))
        process.signal_group(signal.SIGTERM)
        status = await bounded(process.exited(), "codex exit on SIGTERM")
        self.assertIn(status, ("signal 15", "exit code 0"))
        self.assertTrue(process.has_exited())


# ---------------------------------------------------------------------------------------------
# Helpers


class ListenURLTests(SynchronousTestCase):
    """
    L{listen_urls}.
    """

    def test_accepted(self) -> None:
        """
        IPv4 loopback literals and bracketed IPv6 loopback with a port 1–65535.
        """
        cases = {
            "listening on: ws://127.0.0.1:4321": ("ws://127.0.0.1:4321", "http://127.0.0.1:4321"),
            "ws://127.5.5.5:65535": ("ws://127.5.5.5:65535", "http://127.5.5.5:65535"),
            "ws://[::1]:1": ("ws://[::1]:1", "http://[::1]:1"),
        }
        for line, urls in cases.items():
            self.assertEqual(listen_urls(line), urls, line)

    def test_refused(self) -> None:
        """
        Anything else: other addresses, names, missing or bad ports, paths, unbracketed IPv6.
        """
        for line in [
            "ws://10.0.0.1:80",
            "ws://0.0.0.0:80",
            "ws://localhost:80",
            "ws://127.0.0.1",
            "ws://127.0.0.1:",
            "ws://127.0.0.1:0",
            "ws://127.0.0.1:65536",
            "ws://127.0.0.1:080800",
            "ws://127.0.0.1:+80",
            "ws://127.0.0.1:\u0663",
            "ws://127.0.0.1:80/",
            "ws://127.0.0.1:80 extra",
            "ws://::1:80",
            "ws://[::1]",
            "ws://[::1]80",
            "ws://[fe80::1]:80",
            "ws://user@127.0.0.1:80",
            "ws://127.1:80",
        ]:
            self.assertIsNone(listen_urls(line), line)


class OutputLinesTests(SynchronousTestCase):
    """
    L{OutputLines}.
    """

    def test_lines(self) -> None:
        """
        Lines across chunks, empty lines kept, the unterminated rest given at close.
        """
        lines = OutputLines()
        self.assertEqual(lines.feed(b"a\nb"), [b"a"])
        self.assertEqual(lines.feed(b"c\n\nd"), [b"bc", b""])
        self.assertEqual(lines.close(), [b"d"])
        self.assertEqual(lines.close(), [])

    def test_cut(self) -> None:
        """
        Lines longer than the limit are cut into pieces of the limit; exactly the limit is one line.
        """
        lines = OutputLines(4)
        self.assertEqual(lines.feed(b"abcd\n"), [b"abcd"])
        self.assertEqual(lines.feed(b"abcdefghij\nxy"), [b"abcd", b"efgh", b"ij"])
        self.assertEqual(lines.feed(b"zabcdef"), [b"xyza", b"bcde"])
        self.assertEqual(lines.feed(b"\n"), [b"f"])


class ExitStatusTextTests(SynchronousTestCase):
    """
    L{exit_status_text}.
    """

    def test_texts(self) -> None:
        """
        C{exit code N} for an exit, C{signal N} for a signal.
        """
        self.assertEqual(exit_status_text(Failure(ProcessDone(0))), "exit code 0")
        self.assertEqual(exit_status_text(Failure(ProcessTerminated(exitCode=3))), "exit code 3")
        self.assertEqual(exit_status_text(Failure(ProcessTerminated(signal=9))), "signal 9")
        self.assertEqual(exit_status_text(Failure(ProcessTerminated(exitCode=137))), "exit code 137")
        self.assertTrue(exit_status_text(Failure(RuntimeError("x"))).startswith("unknown exit"))


class StartTimeTests(SynchronousTestCase):
    """
    L{process_start_time} and its two sources.
    """

    def test_proc(self) -> None:
        """
        Field 22 of C{/proc/<pid>/stat}, counted after the last C{)} (a command name may hold
        spaces and parentheses).
        """
        root = Path(self.mktemp())
        (root / "77").mkdir(parents=True)
        fields = " ".join(str(n) for n in range(3, 53))
        (root / "77" / "stat").write_text(f"77 (a) b (c) {fields}\n")
        self.assertEqual(proc_start_time(77, root), "22")
        self.assertIsNone(proc_start_time(78, root))
        (root / "79").mkdir()
        (root / "79" / "stat").write_text("79 (x) S 1 2\n")
        self.assertIsNone(proc_start_time(79, root))

    def test_own_process(self) -> None:
        """
        On Linux, the own process has a stable numeric start time; a pid that cannot exist has none.
        """
        if not launcher_module.ON_LINUX:
            raise self.skipTest("Linux only")
        first = process_start_time(os.getpid())
        assert first is not None
        self.assertTrue(first.isdigit(), first)
        self.assertEqual(process_start_time(os.getpid()), first)
        self.assertIsNone(process_start_time(2**31 - 1))
        self.assertIsNone(process_start_time(0))

    def test_ps(self) -> None:
        """
        Elsewhere, C{ps -o lstart=}: a date text for the own process, C{None} for no process.
        """
        self.patch(launcher_module, "ON_LINUX", False)
        text = process_start_time(os.getpid())
        assert text is not None
        self.assertEqual(text, ps_start_time(os.getpid()))
        self.assertRegex(text, r"[0-9]{2}:[0-9]{2}:[0-9]{2}")
        self.assertIsNone(process_start_time(2**31 - 1))


# ---------------------------------------------------------------------------------------------
# The fake's own knobs


class FakeLauncherTests(SynchronousTestCase):
    """
    What L{FakeLauncher} offers beyond the interface.
    """

    def test_pending(self) -> None:
        """
        A launch waits in C{launches} with what was asked; deciding it removes it from there (not
        from C{history}); deciding twice is an error.
        """
        launcher = FakeLauncher()
        spawned: list[IAppServerProcess] = []
        env: Mapping[str, str] = {"CODEX_HOME": "/h"}
        d = launcher.launch(WORKSPACE, env, "/work", spawned.append)
        [pending] = launcher.launches
        self.assertEqual(
            (pending.workspace_id, pending.environment, pending.cwd), (WORKSPACE, env, "/work")
        )
        self.assertEqual(spawned, [pending.process])
        self.assertEqual(pending.process.pid, FIRST_PID)
        self.assertNoResult(d)
        pending.succeed("ws://127.0.0.1:5555")
        process = self.successResultOf(d)
        self.assertEqual(
            (process.ws_url, process.http_url), ("ws://127.0.0.1:5555", "http://127.0.0.1:5555")
        )
        self.assertEqual(launcher.launches, [])
        self.assertEqual(launcher.history, [pending])
        self.assertRaises(RuntimeError, pending.fail, "late")

    def test_fail(self) -> None:
        """
        C{fail} SIGKILLs the process, then fails the launch with the given detail.
        """
        launcher = FakeLauncher()
        d = launcher.launch(WORKSPACE, {}, "/work", lambda p: None)
        launcher.launches[0].fail("read listen line: EOF")
        self.assertEqual(str(self.failureResultOf(d, LaunchError).value), "read listen line: EOF")
        [process] = launcher.processes()
        self.assertEqual(process.signals, [signal.SIGKILL])
        self.assertEqual(process.status, "signal 9")

    def test_auto_succeed(self) -> None:
        """
        With C{auto_succeed}, each launch succeeds at once with a fresh URL and pid.
        """
        launcher = FakeLauncher(auto_succeed=True)
        first = self.successResultOf(launcher.launch("a", {}, "/", lambda p: None))
        second = self.successResultOf(launcher.launch("b", {}, "/", lambda p: None))
        self.assertNotEqual(first.ws_url, second.ws_url)
        self.assertNotEqual(first.pid, second.pid)
        self.assertRegex(first.ws_url, r"^ws://127\.0\.0\.1:[0-9]+$")
        self.assertEqual(launcher.launches, [])

    def test_ignore_sigterm(self) -> None:
        """
        A process that ignores SIGTERM records it and lives on; SIGKILL ends it.
        """
        launcher = FakeLauncher(auto_succeed=True, exits_on_sigterm=False)
        process = self.successResultOf(launcher.launch("a", {}, "/", lambda p: None))
        assert isinstance(process, FakeAppServerProcess)
        ended = process.exited()
        process.signal_group(signal.SIGTERM)
        self.assertNoResult(ended)
        process.signal_group(signal.SIGKILL)
        self.assertEqual(self.successResultOf(ended), "signal 9")
        process.signal_group(signal.SIGKILL)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL, signal.SIGKILL])

    def test_exit(self) -> None:
        """
        C{exit} ends the process with any status once; later exits change nothing.
        """
        process = FakeAppServerProcess(7)
        ended = process.exited()
        process.exit("exit code 1")
        process.exit("signal 9")
        self.assertEqual(self.successResultOf(ended), "exit code 1")
        self.assertEqual(self.successResultOf(process.exited()), "exit code 1")
        self.assertTrue(process.has_exited())

    def test_spawned_raises(self) -> None:
        """
        A C{spawned} callback that raises fails the launch with its exception, the process killed.
        """
        launcher = FakeLauncher(auto_succeed=True)

        def broken(process: IAppServerProcess) -> None:
            raise RuntimeError("disk full")

        d = launcher.launch("a", {}, "/", broken)
        self.assertEqual(str(self.failureResultOf(d, RuntimeError).value), "disk full")
        self.assertEqual(launcher.processes()[0].status, "signal 9")
        self.assertEqual(launcher.launches, [])

    def test_cancel(self) -> None:
        """
        Cancelling a pending launch kills its process and removes it from C{launches}.
        """
        launcher = FakeLauncher()
        d = launcher.launch("a", {}, "/", lambda p: None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(launcher.launches, [])
        self.assertEqual(launcher.processes()[0].signals, [signal.SIGKILL])
