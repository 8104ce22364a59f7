"""
Tests for L{codexgw.executor.proctree}: process-tree records, sweeps and adopted orphans.

The logic runs on a L{FakeProcessTable}; L{ProcTableTests} reads the real C{/proc} once, and the
subreaper is tried in a child interpreter so that the test process itself never becomes one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw.executor.proctree import (
    IProcessTable,
    OrphanGuard,
    ProcessInfo,
    ProcTable,
    TreeRecord,
    descendants,
    parse_stat,
    sweep,
)
from tests.executor.proctools import FakeProcessTable

EXECUTOR = 100
#: A stat line of the kernel's shape, with a command name full of spaces and parentheses.
STAT = (
    "4242 (we (ird) name) S 17 4242 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 "
    "1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0"
)


def executor_table() -> FakeProcessTable:
    """
    The executor (pid 100, its own session) with one exec-server (pid 200, own session) running two
    commands in sessions of their own (300 with a child 301 in its group, and 400), and an unrelated
    process 500.
    """
    table = FakeProcessTable(own_pid=EXECUTOR, own_sid=EXECUTOR)
    table.add(EXECUTOR, 1, EXECUTOR, EXECUTOR)
    table.add(200, EXECUTOR, 200, 200)
    table.add(300, 200, 300, 300)
    table.add(301, 300)
    table.add(400, 200, 400, 400)
    table.add(500, 1, 500, 500)
    return table


class ParseTests(SynchronousTestCase):
    """
    L{parse_stat} and L{descendants}.
    """

    def test_parse_stat(self) -> None:
        """
        pid, state, ppid, process group, session and start time are read, whatever the command name.
        """
        info = parse_stat(STAT)
        self.assertEqual(
            (info.pid, info.state, info.ppid, info.pgid, info.sid, info.start_time),
            (4242, "S", 17, 4242, 4240, 987654),
        )

    def test_parse_stat_malformed(self) -> None:
        """
        Text without the kernel's shape is refused.
        """
        for text in ("", "12", "12 (x) S 1"):
            with self.assertRaises((ValueError, IndexError)):
                parse_stat(text)

    def test_descendants(self) -> None:
        """
        Every process below a root, parents first; not the root, nothing beside it.
        """
        table = executor_table().snapshot()
        self.assertEqual([i.pid for i in descendants(table, 200)], [300, 400, 301])
        self.assertEqual([i.pid for i in descendants(table, 301)], [])


class TreeRecordTests(SynchronousTestCase):
    """
    L{TreeRecord} and L{sweep}.
    """

    def test_record_and_sweep(self) -> None:
        """
        Once the exec-server is gone, a sweep SIGKILLs its recorded commands, members of their groups
        and sessions that appeared later, but nothing else — not the executor, not pid 1, not an
        unrelated process; adopted ones are reaped.
        """
        table = executor_table()
        record = TreeRecord(200)
        record.record(table.snapshot())
        self.assertEqual(set(record.processes), {300, 301, 400})
        self.assertEqual((record.groups, record.sessions), ({200, 300, 400}, {200, 300, 400}))
        del table.processes[200]
        # The orphans were adopted by the executor; a newcomer joined session 400 meanwhile.
        table.add(300, EXECUTOR, 300, 300)
        table.add(301, 300)
        table.add(401, EXECUTOR, 401, 400)
        self.assertEqual(sweep(record, table), 4)
        self.assertEqual(sorted(table.killed), [(p, signal.SIGKILL) for p in (300, 301, 400, 401)])
        self.assertEqual(sorted(table.reaped), [300, 401])

    def test_recycled_pid_spared(self) -> None:
        """
        A recorded pid now used by another process (another start time, another group and session)
        is not killed.
        """
        table = executor_table()
        record = TreeRecord(200)
        record.record(table.snapshot())
        for pid in (200, 300, 301, 400):
            del table.processes[pid]
        # The same pid, a new process: another start time, group and session.
        table.processes[301] = ProcessInfo(301, 1, 900, 900, "S", 5)
        self.assertEqual(sweep(record, table), 0)
        self.assertEqual(table.killed, [])

    def test_own_group_and_session_spared(self) -> None:
        """
        A recorded group or session that is the executor's own never makes its members victims.
        """
        table = FakeProcessTable(own_pid=EXECUTOR, own_sid=EXECUTOR)
        table.add(EXECUTOR, 1, EXECUTOR, EXECUTOR)
        table.add(200, EXECUTOR, 200, 200)
        record = TreeRecord(200)
        record.groups.add(EXECUTOR)
        record.sessions.add(EXECUTOR)
        table.add(600, EXECUTOR, EXECUTOR, EXECUTOR)
        self.assertEqual([i.pid for i in record.members(table.snapshot(), EXECUTOR, EXECUTOR)], [200])

    def test_zombies_reaped_not_killed(self) -> None:
        """
        A recorded process that is already a zombie child of the executor is reaped, not signalled;
        the exec-server itself is left to whoever reaps it.
        """
        table = executor_table()
        record = TreeRecord(200)
        record.record(table.snapshot())
        del table.processes[200]
        table.add(400, EXECUTOR, 400, 400, state="Z")
        for pid in (300, 301):
            del table.processes[pid]
        self.assertEqual(sweep(record, table), 0)
        self.assertEqual((table.killed, table.reaped), ([], [400]))


class OrphanGuardTests(SynchronousTestCase):
    """
    L{OrphanGuard}: adopted processes of the executor.
    """

    def table(self) -> FakeProcessTable:
        """
        The executor with a managed exec-server 200, an adopted orphan 300 (another session) with a
        child 301, an adopted zombie 310, and a child 700 in the executor's own session.
        """
        table = FakeProcessTable(own_pid=EXECUTOR, own_sid=EXECUTOR)
        table.add(EXECUTOR, 1, EXECUTOR, EXECUTOR)
        table.add(200, EXECUTOR, 200, 200)
        table.add(300, EXECUTOR, 300, 300)
        table.add(301, 300)
        table.add(310, EXECUTOR, 310, 310, state="Z")
        table.add(700, EXECUTOR, EXECUTOR, EXECUTOR)
        return table

    def test_adopted(self) -> None:
        """
        Adopted: children of the executor that it did not spawn and that run in another session,
        with their descendants.
        """
        table = self.table()
        guard = OrphanGuard(table, lambda: {200})
        self.assertEqual(sorted(i.pid for i in guard.adopted(table.snapshot())), [300, 301, 310])

    def test_reap_zombies(self) -> None:
        """
        Only adopted zombies are reaped.
        """
        table = self.table()
        guard = OrphanGuard(table, lambda: {200})
        self.assertEqual(guard.reap_zombies(), 1)
        self.assertEqual((table.reaped, table.killed), ([310], []))

    def test_kill_adopted(self) -> None:
        """
        Every live adopted process is SIGKILLed and the adopted children are reaped; the managed
        exec-server and the executor's own session are left alone.
        """
        table = self.table()
        guard = OrphanGuard(table, lambda: {200})
        self.assertEqual(guard.kill_adopted(), 2)
        self.assertEqual(sorted(table.killed), [(300, signal.SIGKILL), (301, signal.SIGKILL)])
        self.assertEqual(table.reaped, [300])


class ProcTableTests(SynchronousTestCase):
    """
    L{ProcTable} on the real C{/proc}.
    """

    def test_snapshot_sees_this_process(self) -> None:
        """
        The snapshot has this process with its real parent, group and session.
        """
        table = ProcTable()
        self.assertTrue(verifyObject(IProcessTable, table))
        me = table.snapshot()[os.getpid()]
        self.assertEqual(
            (me.ppid, me.pgid, me.sid, table.own_pid, table.own_sid),
            (os.getppid(), os.getpgid(0), os.getsid(0), os.getpid(), os.getsid(0)),
        )

    def test_missing_proc(self) -> None:
        """
        Where there is no C{/proc}, the snapshot is empty; killing and reaping a process that does
        not exist are not errors.
        """
        table = ProcTable(proc=self.mktemp())
        self.assertEqual(table.snapshot(), {})
        table.kill(2**22 + 17, signal.SIGKILL)
        table.reap(2**22 + 17)

    def test_subreaper(self) -> None:
        """
        L{become_subreaper} makes the calling process a child subreaper (checked in a fresh
        interpreter with C{PR_GET_CHILD_SUBREAPER}).
        """
        program = (
            "import ctypes\n"
            "from codexgw.executor.proctree import become_subreaper\n"
            "ok = become_subreaper()\n"
            "value = ctypes.c_int(0)\n"
            "ctypes.CDLL(None).prctl(37, ctypes.byref(value), 0, 0, 0)\n"
            "print(ok, value.value)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
        )
        self.assertEqual(done.stdout.split(), ["True", "1"])
