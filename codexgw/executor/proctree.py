"""
Process-tree bookkeeping that keeps exec-server children from leaking processes (C{executor.md} §4:
"No child or grandchild survives its session").

Why a process group is not enough. The executor starts each exec-server as the leader of a new session
and process group (pid == pgid == sid), and ends it by closing its stdin, then signalling that group.
But the pinned exec-server starts every command it runs as the leader of a I{new session} of its own
(measured with codex 0.169.0, C{tty} true or false: the command's pid == pgid == sid), so a signal to
the exec-server's group never reaches the commands. The exec-server cleans up after itself when it
can: on stdin EOF it kills each command's process group and exits within milliseconds, and on SIGTERM
it kills them too (and then waits for stdin EOF before exiting). A SIGKILLed exec-server cleans up
nothing, and a command that started its own session again (C{setsid}, a daemon's double fork) escapes
even the exec-server's cleanup. Two measures close those gaps:

 - L{TreeRecord}: whenever the executor acts on a child (closes its stdin, signals it), it first
   records the child's descendants from C{/proc} — pid, start time, process group and session. Once the
   child is gone, L{sweep} SIGKILLs everything still alive that was recorded (same pid I{and} start
   time, so a recycled pid is never hit) or that lives in a recorded process group or session.
 - L{OrphanGuard}: the executor makes itself a child subreaper (Linux C{PR_SET_CHILD_SUBREAPER}), so a
   process whose parent died is re-parented to the executor instead of to init and can never escape
   its bookkeeping. Such I{adopted} processes are reaped when they exit (no zombies pile up), and
   killed together with their descendants whenever no session is left that could own them (the
   executor is idle, or stopping).

Adopted processes are told apart from the executor's own children by what only they can be: a child
of the executor that it did not spawn itself and that runs in another session than the executor (every
process descending from an exec-server does, since each exec-server starts its own session).

Everything reads C{/proc}; where it does not exist (not Linux) the records stay empty, the subreaper
is unavailable, and the executor falls back to signalling process groups only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

#: C{prctl} option that makes the caller a child subreaper (C{<linux/prctl.h>}).
PR_SET_CHILD_SUBREAPER: Final = 36

log = Logger()


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """
    One process as C{/proc/<pid>/stat} describes it.

    @ivar state: the one-letter state (C{Z} for a zombie).
    @ivar start_time: clock ticks after boot at which it started; with the pid it names a process
        uniquely (pids are recycled, start times of one pid never repeat).
    """

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start_time: int


def parse_stat(text: str) -> ProcessInfo:
    """
    Parse the content of C{/proc/<pid>/stat}.

    @raise ValueError: when it does not have the kernel's shape.
    """
    # The command name sits in parentheses and may itself contain spaces and parentheses; everything
    # after the last ")" is space-separated numbers, starting with field 3 (state).
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    fields = text[close_paren + 2 :].split()
    return ProcessInfo(
        pid=int(text[:open_paren]),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        state=fields[0],
        start_time=int(fields[19]),
    )


def descendants(table: Mapping[int, ProcessInfo], root: int) -> list[ProcessInfo]:
    """
    Every process below C{root} in C{table} (not C{root} itself), parents before children.
    """
    children: dict[int, list[ProcessInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    found: list[ProcessInfo] = []
    queue = [root]
    seen = {root}
    while queue:
        for child in children.get(queue.pop(0), []):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                queue.append(child.pid)
    return found


class IProcessTable(Interface):
    """
    The operating system's processes, as the executor's bookkeeping needs them.
    """

    own_pid = Attribute("C{int}: the executor's pid.")
    own_sid = Attribute("C{int}: the executor's session id.")

    def snapshot() -> dict[int, ProcessInfo]:
        """
        Every process that can be seen now, by pid (empty where processes cannot be listed).
        """

    def kill(pid: int, signum: int) -> None:
        """
        Send C{signum} to C{pid}; a process that is already gone is not an error.
        """

    def reap(pid: int) -> None:
        """
        Collect the exit status of C{pid} if it is the executor's child and has exited; never blocks.
        """


@implementer(IProcessTable)
class ProcTable:
    """
    L{IProcessTable} on C{/proc}.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self.own_pid = os.getpid()
        self.own_sid = os.getsid(0)

    def snapshot(self) -> dict[int, ProcessInfo]:
        """
        See L{IProcessTable.snapshot}.
        """
        table: dict[int, ProcessInfo] = {}
        try:
            entries = os.listdir(self._proc)
        except OSError:
            return table
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(
                    os.path.join(self._proc, entry, "stat"), encoding="utf-8", errors="replace"
                ) as f:
                    info = parse_stat(f.read())
            except (OSError, ValueError, IndexError):
                continue  # it exited while we looked, or is not readable
            table[info.pid] = info
        return table

    def kill(self, pid: int, signum: int) -> None:
        """
        See L{IProcessTable.kill}.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)

    def reap(self, pid: int) -> None:
        """
        See L{IProcessTable.reap}.
        """
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


class TreeRecord:
    """
    What has been seen of one child's process tree (see the module docstring).
    """

    def __init__(self, root: int) -> None:
        """
        @param root: the child's pid; it leads its own process group and session.
        """
        self.root = root
        self.processes: dict[int, ProcessInfo] = {}
        self.groups: set[int] = {root}
        self.sessions: set[int] = {root}

    def record(self, table: Mapping[int, ProcessInfo]) -> None:
        """
        Add the child's current descendants.
        """
        for info in descendants(table, self.root):
            self.processes[info.pid] = info
            self.groups.add(info.pgid)
            self.sessions.add(info.sid)

    def members(self, table: Mapping[int, ProcessInfo], own_pid: int, own_sid: int) -> list[ProcessInfo]:
        """
        The processes of C{table} (zombies included) that belong to this tree: recorded ones (same
        start time) and members of recorded process groups and sessions — never the executor, its
        process group or its session.
        """
        own = table.get(own_pid)
        own_group = own.pgid if own is not None else own_pid
        found = []
        for info in table.values():
            if info.pid == own_pid or info.pid <= 1:
                continue
            known = self.processes.get(info.pid)
            recorded = known is not None and known.start_time == info.start_time
            in_group = info.pgid in self.groups and info.pgid != own_group
            in_session = info.sid in self.sessions and info.sid != own_sid
            if recorded or in_group or in_session:
                found.append(info)
        return found


def sweep(record: TreeRecord, processes: IProcessTable) -> int:
    """
    SIGKILL every live process of C{record}, then reap those that are the executor's children.

    @return: how many processes were signalled.
    """
    members = record.members(processes.snapshot(), processes.own_pid, processes.own_sid)
    victims = [info for info in members if info.state != "Z"]
    for info in victims:
        processes.kill(info.pid, signal.SIGKILL)
    for info in members:
        # Adopted members are ours to reap; the root is reaped by whoever spawned it.
        if info.ppid == processes.own_pid and info.pid != record.root:
            processes.reap(info.pid)
    return len(victims)


def become_subreaper() -> bool:
    """
    Make this process a child subreaper (Linux only).

    @return: whether it worked.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class OrphanGuard:
    """
    The executor-wide half of the bookkeeping: processes adopted as a subreaper.
    """

    def __init__(self, processes: IProcessTable, managed: Callable[[], Iterable[int]]) -> None:
        """
        @param managed: the pids of the children the executor spawned itself and still tracks.
        """
        self._processes = processes
        self._managed = managed

    def adopted(self, table: Mapping[int, ProcessInfo]) -> list[ProcessInfo]:
        """
        The adopted children in C{table} and all their descendants.
        """
        managed = set(self._managed())
        roots = [
            info
            for info in table.values()
            if info.ppid == self._processes.own_pid
            and info.pid not in managed
            and info.sid != self._processes.own_sid
        ]
        found = list(roots)
        for root in roots:
            found.extend(descendants(table, root.pid))
        return found

    def reap_zombies(self) -> int:
        """
        Collect the exit status of every adopted child that has exited.

        @return: how many were reaped.
        """
        zombies = [
            info
            for info in self.adopted(self._processes.snapshot())
            if info.state == "Z" and info.ppid == self._processes.own_pid
        ]
        for info in zombies:
            self._processes.reap(info.pid)
        return len(zombies)

    def kill_adopted(self) -> int:
        """
        SIGKILL every adopted process and its descendants (only when no session can own them), then
        reap the adopted children among them.

        @return: how many live processes were signalled.
        """
        victims = [info for info in self.adopted(self._processes.snapshot()) if info.state != "Z"]
        for info in victims:
            self._processes.kill(info.pid, signal.SIGKILL)
        if victims:
            log.warn(
                "killed {count} process(es) left behind by ended sessions",
                event="executor.orphans_killed",
                count=len(victims),
                pids=[info.pid for info in victims],
            )
        for info in victims:
            if info.ppid == self._processes.own_pid:
                self._processes.reap(info.pid)
        return len(victims)
