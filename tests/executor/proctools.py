"""
Process-table helpers for the executor's tests: a recorded L{IProcessTable}, and looks at the real
C{/proc}.
"""

from __future__ import annotations

from pathlib import Path

from zope.interface import implementer

from codexgw.executor.proctree import IProcessTable, ProcessInfo, ProcTable, parse_stat


@implementer(IProcessTable)
class FakeProcessTable:
    """
    An L{IProcessTable} over a dict the test fills; kills and reaps are recorded (a killed process
    becomes a zombie, a reaped zombie disappears).

    @ivar processes: the table, by pid.
    @ivar killed: C{(pid, signal)} of every kill, in order.
    @ivar reaped: every pid reaped, in order.
    """

    def __init__(self, own_pid: int = 100, own_sid: int = 100) -> None:
        self.own_pid = own_pid
        self.own_sid = own_sid
        self.processes: dict[int, ProcessInfo] = {}
        self.killed: list[tuple[int, int]] = []
        self.reaped: list[int] = []

    def add(
        self, pid: int, ppid: int, pgid: int | None = None, sid: int | None = None, state: str = "S"
    ) -> ProcessInfo:
        """
        Put a process in the table (its group and session default to its parent's in the table).
        """
        parent = self.processes.get(ppid)
        info = ProcessInfo(
            pid=pid,
            ppid=ppid,
            pgid=pgid if pgid is not None else (parent.pgid if parent else pid),
            sid=sid if sid is not None else (parent.sid if parent else pid),
            state=state,
            start_time=1000 + pid,
        )
        self.processes[pid] = info
        return info

    def snapshot(self) -> dict[int, ProcessInfo]:
        """
        A copy of the table.
        """
        return dict(self.processes)

    def kill(self, pid: int, signum: int) -> None:
        """
        Record the kill; the process becomes a zombie.
        """
        self.killed.append((pid, signum))
        info = self.processes.get(pid)
        if info is not None:
            self.processes[pid] = ProcessInfo(
                info.pid, info.ppid, info.pgid, info.sid, "Z", info.start_time
            )

    def reap(self, pid: int) -> None:
        """
        Record the reap; a zombie disappears.
        """
        self.reaped.append(pid)
        info = self.processes.get(pid)
        if info is not None and info.state == "Z":
            del self.processes[pid]


def process_table() -> dict[int, ProcessInfo]:
    """
    The machine's processes now, from C{/proc}.
    """
    return ProcTable().snapshot()


def alive(info: ProcessInfo) -> bool:
    """
    Whether the process C{info} describes still runs: same pid, same start time, not a zombie.
    """
    try:
        now = parse_stat(Path(f"/proc/{info.pid}/stat").read_text("utf-8", "replace"))
    except (OSError, ValueError):
        return False
    return now.start_time == info.start_time and now.state != "Z"
