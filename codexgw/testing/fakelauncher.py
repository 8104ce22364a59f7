"""
An in-memory L{IAppServerLauncher} for unit tests of the supervisor: no process, no socket, no time.

L{FakeLauncher.launch} behaves as the real launcher does from the outside: it calls C{spawned}
synchronously with a L{FakeAppServerProcess} (a fresh pid), then waits — for the test. A test finds
the waiting launch in L{FakeLauncher.launches} and decides its outcome with L{PendingLaunch.succeed}
or L{PendingLaunch.fail}; with L{FakeLauncher.auto_succeed} every launch succeeds at once with a fresh
C{ws://127.0.0.1:<n>} URL. A failed or cancelled launch first SIGKILLs its process (recorded in
L{FakeAppServerProcess.signals}; the process exits with C{signal 9}), as the real one does.

A fake process records every signal sent to its group and ends the way a real app-server does: on
SIGKILL with C{signal 9}; on SIGTERM with C{signal 15}, unless told to ignore SIGTERM (a hung
app-server). A test ends it any other way with L{FakeAppServerProcess.exit} (a crash: C{exit code 1},
C{signal 9}, …). Both pass the same interface tests as the real ones (C{tests.appgw.test_launcher}).

Decisions:
 - L{FakeLauncher.launches} holds only the launches still waiting (a decided or cancelled one leaves
   it); L{FakeLauncher.history} keeps every launch in order, for assertions on what was asked.
 - Signals are recorded also after the exit (the supervisor's final SIGKILL after the exit is real
   behaviour worth asserting); they change nothing then.
 - A C{spawned} callback that raises fails the launch with that exception after the kill, as in the
   real launcher.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Final

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from codexgw.appgw.launcher import IAppServerLauncher, IAppServerProcess, LaunchError

#: The first pid a fake launcher hands out.
FIRST_PID: Final = 40000
#: The first port of the URLs a fake launcher makes up.
FIRST_PORT: Final = 41000


@implementer(IAppServerProcess)
class FakeAppServerProcess:
    """
    One fake app-server process.

    @ivar signals: every signal sent to its group, in order.
    @ivar exits_on_sigterm: whether SIGTERM ends it (C{False}: it ignores SIGTERM).
    @ivar status: its exit status text once it exited, else C{None}.
    """

    def __init__(self, pid: int, exits_on_sigterm: bool = True) -> None:
        """
        @param pid: its pid (and process group id).
        @param exits_on_sigterm: see L{exits_on_sigterm}.
        """
        self.pid = pid
        self.ws_url = ""
        self.http_url = ""
        self.exits_on_sigterm = exits_on_sigterm
        self.signals: list[int] = []
        self.status: str | None = None
        self._waiters: list[Deferred[str]] = []

    def signal_group(self, signum: int) -> None:
        """
        See L{IAppServerProcess.signal_group}: recorded; SIGKILL ends the process, SIGTERM too unless
        it ignores SIGTERM.
        """
        self.signals.append(signum)
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and self.exits_on_sigterm):
            self.exit(f"signal {signum}")

    def exited(self) -> Deferred[str]:
        """
        See L{IAppServerProcess.exited}.
        """
        if self.status is not None:
            return succeed(self.status)

        def cancel(d: Deferred[str]) -> None:
            self._waiters.remove(d)

        waiter: Deferred[str] = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter

    def has_exited(self) -> bool:
        """
        See L{IAppServerProcess.has_exited}.
        """
        return self.status is not None

    def exit(self, status_text: str) -> None:
        """
        End the process with C{status_text} (e.g. C{exit code 1}, C{signal 9}) and tell every waiter;
        nothing happens when it has already ended.
        """
        if self.status is not None:
            return
        self.status = status_text
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(status_text)


class PendingLaunch:
    """
    One call of L{FakeLauncher.launch}, waiting for the test to decide its outcome.

    @ivar workspace_id: as passed to C{launch}.
    @ivar environment: a copy of the environment passed to C{launch}.
    @ivar cwd: as passed to C{launch}.
    @ivar process: the fake process handed to C{spawned}.
    @ivar result: the Deferred C{launch} returned.
    @ivar done: whether the launch succeeded, failed or was cancelled.
    """

    def __init__(
        self,
        launcher: FakeLauncher,
        workspace_id: str,
        environment: Mapping[str, str],
        cwd: str,
        process: FakeAppServerProcess,
    ) -> None:
        self._launcher = launcher
        self.workspace_id = workspace_id
        self.environment = dict(environment)
        self.cwd = cwd
        self.process = process
        self.done = False
        self.result: Deferred[IAppServerProcess] = Deferred(self._cancel)

    def succeed(self, ws_url: str | None = None) -> None:
        """
        The app-server announced C{ws_url} (a fresh C{ws://127.0.0.1:<n>} when C{None}) and is ready.
        """
        if ws_url is None:
            ws_url = self._launcher.fresh_ws_url()
        self._finish()
        self.process.ws_url = ws_url
        self.process.http_url = "http://" + ws_url.removeprefix("ws://")
        self.result.callback(self.process)

    def fail(self, detail: str) -> None:
        """
        The launch failed with C{LaunchError(detail)}: the process is SIGKILLed first.
        """
        self._finish()
        self.process.signal_group(signal.SIGKILL)
        self.result.errback(LaunchError(detail))

    def _finish(self) -> None:
        if self.done:
            raise RuntimeError(f"launch for {self.workspace_id} was already decided")
        self.done = True
        self._launcher.launches.remove(self)

    def _cancel(self, d: Deferred[IAppServerProcess]) -> None:
        # The fake process dies at once, so the Deferred may fail with CancelledError right away.
        self._finish()
        self.process.signal_group(signal.SIGKILL)


@implementer(IAppServerLauncher)
class FakeLauncher:
    """
    An L{IAppServerLauncher} whose launches the test decides.

    @ivar launches: the launches still waiting for a decision, oldest first.
    @ivar history: every launch made, oldest first.
    @ivar auto_succeed: when true, every launch succeeds at once with a fresh URL.
    @ivar exits_on_sigterm: whether new processes end on SIGTERM (C{False}: they ignore it).
    """

    def __init__(self, auto_succeed: bool = False, exits_on_sigterm: bool = True) -> None:
        self.launches: list[PendingLaunch] = []
        self.history: list[PendingLaunch] = []
        self.auto_succeed = auto_succeed
        self.exits_on_sigterm = exits_on_sigterm
        self._next_pid = FIRST_PID
        self._next_port = FIRST_PORT

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
        process = FakeAppServerProcess(self._next_pid, self.exits_on_sigterm)
        self._next_pid += 1
        pending = PendingLaunch(self, workspace_id, environment, cwd, process)
        self.launches.append(pending)
        self.history.append(pending)
        try:
            spawned(process)
        except Exception as e:
            pending._finish()
            process.signal_group(signal.SIGKILL)
            pending.result.errback(e)
            return pending.result
        if self.auto_succeed:
            pending.succeed()
        return pending.result

    def fresh_ws_url(self) -> str:
        """
        A C{ws://127.0.0.1:<n>} URL not handed out before by this launcher.
        """
        port = self._next_port
        self._next_port += 1
        return f"ws://127.0.0.1:{port}"

    def processes(self) -> list[FakeAppServerProcess]:
        """
        Every process launched, oldest first.
        """
        return [launch.process for launch in self.history]
