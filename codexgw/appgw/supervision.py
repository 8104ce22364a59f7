"""
What the app gateway's edges (the TUI proxy, the Turn API broker, the C{/internal} routes) need from
the supervisor of C{codex app-server} processes (C{app-gateway.md} §5), and nothing more.

The edges never see a process. They ask L{ISupervisor.ensure} for a workspace's L{AppServerHandle}
(the loopback URLs of its live app-server), attach themselves to it as an L{IAttachment} so that the
supervisor can end them when the process goes away (§5.5 step 1, §5.6), and report activity
(L{ISupervisor.touch}) and in-flight work (L{ISupervisor.pin}) for the idle reaper (§5.11).

L{codexgw.appgw.supervisor.Supervisor} is the real implementation;
L{codexgw.testing.fakesupervisor.FakeSupervisor} is its in-memory twin for unit tests of the edges;
both pass C{tests.appgw.test_supervision.SupervisorInterfaceTests}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from twisted.internet.defer import Deferred
from zope.interface import Interface

#: Why a workspace's app-server went away (§5.5 C{reason}).
EndReason = Literal["idle", "shutdown", "crash"]

#: §7.5: the TUI close code and reason for each way an app-server ends.
TUI_CLOSE_FOR_END: Final[dict[str, tuple[int, str]]] = {
    "idle": (1001, "app-server stopped"),
    "shutdown": (1001, "gateway shutting down"),
    "crash": (1011, "app-server connection lost"),
}


class SpawnCapacityError(Exception):
    """
    §5.7: no process slot is free. C{str()} is C{spawn capacity reached (<n> app-servers live)}.
    """

    def __init__(self, live: int) -> None:
        super().__init__(f"spawn capacity reached ({live} app-servers live)")
        self.live = live


class EnsureError(Exception):
    """
    C{ensure} failed for any reason other than capacity (§5.3). C{str()} is the spec's text:
    C{config builder: …}, C{object store download: …}, C{restore: …}, C{write config: …} or
    C{spawn: …}.
    """


class SupervisorStopping(EnsureError):
    """
    C{ensure} was called after shutdown began; C{str()} is C{gateway shutting down}.
    """

    def __init__(self) -> None:
        super().__init__("gateway shutting down")


@dataclass(frozen=True)
class AppServerEnd:
    """
    How an app-server ended, as told to its attachments.

    @ivar reason: C{idle}, C{shutdown} or C{crash}.
    @ivar exit_status: for a crash, the process's exit status as text (C{exit code 3},
        C{signal 9}); C{None} when the supervisor stopped it.
    """

    reason: EndReason
    exit_status: str | None = None

    def tui_close(self) -> tuple[int, str]:
        """
        The close code and reason a TUI gets for this end (§7.5).
        """
        return TUI_CLOSE_FOR_END[self.reason]


@dataclass(eq=False)
class AppServerHandle:
    """
    One live app-server process of a workspace, as the edges see it.

    @ivar workspace_id: its workspace.
    @ivar pid: the codex process id (also its process group id).
    @ivar ws_url: C{ws://127.0.0.1:<port>} from its banner (no trailing C{/}).
    @ivar http_url: C{http://127.0.0.1:<port>}.
    @ivar ended: C{None} while the process is live; the L{AppServerEnd} once it is going away.
    """

    workspace_id: str
    pid: int
    ws_url: str
    http_url: str
    ended: AppServerEnd | None = field(default=None)


class IAttachment(Interface):
    """
    A connection that lives on a workspace's app-server: one TUI proxy pair or the broker's Conn.
    """

    def app_server_ended(end: AppServerEnd) -> None:
        """
        The app-server this attachment is attached to is being stopped or has crashed: close now
        (a TUI with L{AppServerEnd.tui_close}). Called at most once, before the process is
        signalled (§5.5 step 1) or right after a crash was seen (§5.6). Must not raise.
        """


class ISupervisor(Interface):
    """
    The supervisor as the edges use it (§5).
    """

    def ensure(workspace_id: str) -> Deferred[AppServerHandle]:
        """
        The workspace's live app-server, spawning it if needed (§5.3). Counts as activity.

        Cancelling the returned Deferred (the caller went away) gives up the caller's place in
        the spawn queue; a spawn already under way still completes for later callers.

        @return: a Deferred failing with L{SpawnCapacityError} or L{EnsureError}.
        """

    def attach(handle: AppServerHandle, attachment: IAttachment) -> bool:
        """
        Register C{attachment} on C{handle}'s app-server (a TUI connection or the broker Conn).

        @return: C{True}; C{False} when C{handle} is no longer the workspace's live process (it
            ended between C{ensure} and now) — the caller then treats the app-server as gone.
        """

    def detach(handle: AppServerHandle, attachment: IAttachment) -> None:
        """
        Forget C{attachment} (its connection ended on its own). Unknown attachments are ignored.
        """

    def touch(workspace_id: str) -> None:
        """
        Record activity on the workspace (§5.11): resets its idle clock. Unknown workspaces are
        ignored.
        """

    def pin(workspace_id: str) -> Callable[[], None]:
        """
        Hold the workspace against idle reaping until the returned function is called (once; more
        calls are ignored). Pins may be taken before the workspace has a process.
        """


@dataclass(frozen=True)
class SupervisorCounts:
    """
    What C{/metrics} shows of the supervisor at one instant.

    @ivar live: processes that exist (§5.7 slots in use).
    @ivar queued: ensures waiting for a spawn-concurrency slot.
    """

    live: int
    queued: int
