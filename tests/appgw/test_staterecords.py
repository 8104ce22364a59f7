"""
Tests for L{codexgw.appgw.staterecords}: state records, the root lock, orphan discovery and killing,
and the startup cleaning of the root (C{app-gateway.md} §5.8).

Record, lock and cleaning tests work on directories under trial's temporary directory. Orphan tests
use a fake C{/proc} tree and fake signal functions on a L{Clock} for the logic and timing, and real
process groups (a Python trampoline that calls C{setsid()} and then C{exec}s C{sleep}) for the
behaviour against the kernel; every process started is SIGKILLed and reaped in cleanup.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from codexgw.appgw.codexhome import CodexHomeError, HomeDirs, InvalidWorkspaceId
from codexgw.appgw.staterecords import (
    LOCK_FILE,
    POLL_INTERVAL,
    Orphan,
    RootInUse,
    RootLock,
    StateRecord,
    StateRecords,
    clean_root,
    find_orphans,
    group_alive,
    kill_orphans,
    live_process_groups,
    prune_homes,
    remove_leftovers,
    rfc3339,
)
from codexgw.executor.proctree import parse_stat
from tests.support import REPO_ROOT

#: The fixed wall clock of the record tests.
NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
#: A pid no process can have (above Linux's largest C{pid_max}).
NO_SUCH_GROUP = 2**30 - 1
#: How long a bounded wait on a real process may take before the test fails.
PROCESS_TIMEOUT = 10.0

#: Runs as the child: lead a new session, optionally ignore SIGTERM (which survives C{exec}), say
#: so on stdout, then become the command in argv[2:].
TRAMPOLINE = (
    "import os, signal, sys\n"
    "os.setsid()\n"
    "if sys.argv[1] == 'ignore-term':\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n')\n"
    "sys.stdout.flush()\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

#: Runs as the child: try the root lock; exit 1 with the message on stderr when it is held,
#: otherwise say C{locked} and hold it until stdin closes.
LOCK_SCRIPT = (
    "import sys\n"
    "from codexgw.appgw.staterecords import RootInUse, RootLock\n"
    "lock = RootLock(sys.argv[1])\n"
    "try:\n"
    "    lock.acquire()\n"
    "except RootInUse as e:\n"
    "    sys.stderr.write(str(e) + '\\n')\n"
    "    sys.exit(1)\n"
    "sys.stdout.write('locked\\n')\n"
    "sys.stdout.flush()\n"
    "sys.stdin.read()\n"
)


def capture_events(case: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect every event logged by L{codexgw.appgw.staterecords} until C{case} ends.
    """
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "codexgw.appgw.staterecords":
            events.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def make_root(case: SynchronousTestCase) -> HomeDirs:
    """
    A fresh, existing root under trial's temporary directory.
    """
    homes = HomeDirs(os.path.abspath(case.mktemp()))
    homes.ensure_root()
    return homes


def start_time_of(pid: int) -> str | None:
    """
    The test's own reader of field 22 of C{/proc/<pid>/stat} (the launcher's is not used here).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return str(parse_stat(f.read()).start_time)
    except (OSError, ValueError):
        return None


def record(
    workspace_id: str = "ws_a",
    pid: int = 4242,
    start_time: str = "9876",
    state: str = "running",
) -> StateRecord:
    """
    A valid record with the given fields.
    """
    return StateRecord(
        workspace_id=workspace_id,
        pid=pid,
        pgid=pid,
        start_time=start_time,
        gateway_pid=77,
        state="running" if state == "running" else "upload-pending",
        updated_at="2025-01-02T03:04:05.678Z",
    )


def spawn_group(
    case: SynchronousTestCase, codex_home: str | None, ignore_term: bool = False
) -> subprocess.Popen[bytes]:
    """
    Start C{sleep 60} as the leader of a new session and process group, with C{CODEX_HOME} set to
    C{codex_home} (or unset), and return once it leads its group. Cleanup SIGKILLs the group and
    reaps the process.
    """
    env = {name: value for name, value in os.environ.items() if name != "CODEX_HOME"}
    if codex_home is not None:
        env["CODEX_HOME"] = codex_home
    sleep = shutil.which("sleep")
    assert sleep is not None
    mode = "ignore-term" if ignore_term else "plain"
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", TRAMPOLINE, mode, sleep, "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
    )

    def stop() -> None:
        # Kill before reaping: until the leader is reaped its pid (the group id) cannot be reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=PROCESS_TIMEOUT)
        assert child.stdout is not None
        child.stdout.close()

    case.addCleanup(stop)
    assert child.stdout is not None
    # Written after setsid(): the pid leads its group now. EOF (b"") means the child failed.
    case.assertEqual(child.stdout.readline(), b"ready\n")
    return child


class FakeProc:
    """
    A fake C{/proc} tree: C{<dir>/<pid>/stat} and C{<dir>/<pid>/environ}.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        """
        @param case: the test whose temporary directory holds the tree.
        """
        self.path = os.path.abspath(case.mktemp())
        os.makedirs(self.path)

    def add(
        self,
        pid: int,
        pgid: int,
        environ: dict[str, str] | None = None,
        state: str = "S",
        name: str = "co dex) (x",
    ) -> None:
        """
        Add a process; its command name holds spaces and parentheses, as a real one may.
        """
        directory = os.path.join(self.path, str(pid))
        os.makedirs(directory)
        fields = [state, "1", str(pgid), str(pgid), *["0"] * 15, "12345", "0", "0"]
        with open(os.path.join(directory, "stat"), "w", encoding="utf-8") as f:
            f.write(f"{pid} ({name}) {' '.join(fields)}\n")
        with open(os.path.join(directory, "environ"), "wb") as f:
            for key, value in (environ or {}).items():
                f.write(f"{key}={value}".encode() + b"\0")


# -------------------------------------------------------------------------------------------------
# Records


class StateRecordTests(SynchronousTestCase):
    """
    L{StateRecord} serialises to the compact JSON of §5.8 and refuses anything malformed.
    """

    def test_to_json_exact(self) -> None:
        """
        The members are in the spec's order, without spaces.
        """
        self.assertEqual(
            record().to_json(),
            b'{"workspace_id":"ws_a","pid":4242,"pgid":4242,"start_time":"9876",'
            b'"gateway_pid":77,"state":"running","updated_at":"2025-01-02T03:04:05.678Z"}',
        )

    def test_round_trip(self) -> None:
        """
        L{StateRecord.from_json} reads back what L{StateRecord.to_json} wrote, in both states.
        """
        for original in (record(), record("w-2", 9, "", "upload-pending")):
            self.assertEqual(StateRecord.from_json(original.to_json()), original)

    def test_unknown_members_ignored(self) -> None:
        """
        A member the record does not know is ignored.
        """
        data = record().to_json()[:-1] + b',"future":[1,2]}'
        self.assertEqual(StateRecord.from_json(data), record())

    def test_malformed(self) -> None:
        """
        Each malformed record raises L{ValueError}.
        """
        good = {
            "workspace_id": "ws_a",
            "pid": 1,
            "pgid": 1,
            "start_time": "1",
            "gateway_pid": 1,
            "state": "running",
            "updated_at": "2025-01-02T03:04:05Z",
        }
        variants: list[bytes] = [
            b"",
            b"{",
            b"\xff\xfe",
            b"[]",
            b"null",
            b"[" * 100_000,
            json.dumps({k: v for k, v in good.items() if k != "pgid"}).encode(),
        ]
        for key, value in [
            ("workspace_id", "../x"),
            ("workspace_id", 5),
            ("pid", True),
            ("pid", "1"),
            ("pid", 0),
            ("pgid", -1),
            ("pgid", 1.0),
            ("gateway_pid", -1),
            ("start_time", 5),
            ("state", "stopping"),
            ("updated_at", "yesterday"),
            ("updated_at", "2025-01-02T03:04:05"),
        ]:
            variants.append(json.dumps({**good, key: value}).encode())
        for data in variants:
            self.assertRaises(ValueError, StateRecord.from_json, data)
        # The same record is valid as it stands.
        StateRecord.from_json(json.dumps(good).encode())

    def test_rfc3339(self) -> None:
        """
        Times are written in UTC with milliseconds and C{Z}; a naive time is taken as UTC.
        """
        self.assertEqual(rfc3339(NOW), "2025-01-02T03:04:05.678Z")
        self.assertEqual(rfc3339(NOW.replace(tzinfo=None)), "2025-01-02T03:04:05.678Z")
        east = NOW.astimezone(timezone(timedelta(hours=2)))
        self.assertEqual(rfc3339(east), "2025-01-02T03:04:05.678Z")


class StateRecordsTests(SynchronousTestCase):
    """
    L{StateRecords} writes, reads, updates and removes the record files of one root.
    """

    def setUp(self) -> None:
        """
        A fresh root and its records, with a fixed clock and gateway pid.
        """
        self.homes = make_root(self)
        self.records = StateRecords(self.homes, gateway_pid=77, now=lambda: NOW)
        self.events = capture_events(self)

    def names(self) -> list[str]:
        """
        The names in the root.
        """
        return sorted(os.listdir(self.homes.root))

    def test_write_running(self) -> None:
        """
        The record is C{<root>/<id>.json}, mode 0600, with C{pgid == pid}, this gateway's pid and
        the time of writing; nothing else is left in the root.
        """
        self.records.write_running("ws_a", 4242, "9876")
        path = os.path.join(self.homes.root, "ws_a.json")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), record().to_json())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.records.read("ws_a"), record())
        self.assertEqual(self.names(), ["ws_a.json"])

    def test_default_gateway_pid(self) -> None:
        """
        Without a gateway pid, records carry this process's pid.
        """
        self.assertEqual(StateRecords(self.homes).gateway_pid, os.getpid())

    def test_write_refuses(self) -> None:
        """
        An invalid id or a pid below 1 is refused and nothing is written.
        """
        self.assertRaises(InvalidWorkspaceId, self.records.write_running, "../x", 1, "1")
        self.assertRaises(ValueError, self.records.write_running, "ws_a", 0, "1")
        self.assertEqual(self.names(), [])

    def test_atomic_replacement(self) -> None:
        """
        A write that fails before its rename leaves the old record whole and no temporary file.
        """
        self.records.write_running("ws_a", 4242, "9876")

        def fail(*args: object, **kwargs: object) -> None:
            raise OSError("disk gone")

        self.patch(os, "replace", fail)
        self.assertRaises(OSError, self.records.write_running, "ws_a", 5, "1")
        self.assertEqual(self.records.read("ws_a"), record())
        self.assertEqual(self.names(), ["ws_a.json"])

    def test_set_upload_pending(self) -> None:
        """
        The state changes and the time is renewed; pid, group and start time are kept.
        """
        self.records.write_running("ws_a", 4242, "9876")
        later = NOW + timedelta(seconds=1)
        StateRecords(self.homes, gateway_pid=78, now=lambda: later).set_upload_pending("ws_a")
        self.assertEqual(
            self.records.read("ws_a"),
            StateRecord("ws_a", 4242, 4242, "9876", 78, "upload-pending", "2025-01-02T03:04:06.678Z"),
        )

    def test_set_upload_pending_without_record(self) -> None:
        """
        Without a record, one with pid and group 0 is written, so the kept home survives.
        """
        self.records.set_upload_pending("ws_b")
        self.assertEqual(
            self.records.read("ws_b"),
            StateRecord("ws_b", 0, 0, "", 77, "upload-pending", "2025-01-02T03:04:05.678Z"),
        )

    def test_read_absent(self) -> None:
        """
        A missing record is C{None}, without a warning; an invalid id is refused.
        """
        self.assertIsNone(self.records.read("ws_a"))
        self.assertEqual(self.events, [])
        self.assertRaises(InvalidWorkspaceId, self.records.read, "a/b")

    def write_raw(self, name: str, data: bytes) -> str:
        """
        Write C{data} as C{<root>/<name>} and return the path.
        """
        path = os.path.join(self.homes.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_read_unreadable(self) -> None:
        """
        Malformed JSON, a record naming another workspace, a symlink, a directory and an oversized
        file are each C{None} with a warning naming the workspace.
        """
        self.write_raw("ws_a.json", b'{"workspace_id":')
        self.write_raw("ws_b.json", record("ws_c").to_json())
        self.write_raw("target", record("ws_d").to_json())
        os.symlink(os.path.join(self.homes.root, "target"), os.path.join(self.homes.root, "ws_d.json"))
        os.mkdir(os.path.join(self.homes.root, "ws_e.json"))
        self.write_raw("ws_f.json", b" " * (64 * 1024 + 1))
        for workspace_id in ("ws_a", "ws_b", "ws_d", "ws_e", "ws_f"):
            self.assertIsNone(self.records.read(workspace_id))
        self.assertEqual(
            [event["workspace_id"] for event in self.events], ["ws_a", "ws_b", "ws_d", "ws_e", "ws_f"]
        )
        for event in self.events:
            self.assertTrue(event["log_format"].startswith("state record {path} unreadable"))

    def test_remove(self) -> None:
        """
        Removal deletes the record and is idempotent.
        """
        self.records.write_running("ws_a", 4242, "9876")
        self.records.remove("ws_a")
        self.records.remove("ws_a")
        self.assertEqual(self.names(), [])

    def test_all(self) -> None:
        """
        L{StateRecords.all} lists the readable records by workspace id, skipping malformed ones
        (with a warning), temporary files, the lock and homes.
        """
        self.records.write_running("ws_b", 2, "2")
        self.records.write_running("ws_a", 1, "1")
        self.write_raw("ws_c.json", b"garbage")
        self.write_raw(".ws_d.json.0123456789abcdef.tmp", record("ws_d").to_json())
        self.write_raw(LOCK_FILE, b"1\n")
        self.write_raw("notes.txt.json", b"{}")
        os.mkdir(os.path.join(self.homes.root, "ws_a"))
        self.assertEqual([r.workspace_id for r in self.records.all()], ["ws_a", "ws_b"])
        self.assertEqual(self.records.record_ids(), ["ws_a", "ws_b", "ws_c"])
        self.assertEqual([event["workspace_id"] for event in self.events], ["ws_c"])

    def test_all_without_root(self) -> None:
        """
        A missing root has no records.
        """
        records = StateRecords(HomeDirs(os.path.abspath(self.mktemp())))
        self.assertEqual(records.all(), [])


# -------------------------------------------------------------------------------------------------
# The root lock


class RootLockTests(SynchronousTestCase):
    """
    L{RootLock} keeps a second gateway (or a second lock in this process) off the root.
    """

    def setUp(self) -> None:
        """
        A root path that does not exist yet (two levels are missing).
        """
        self.root = os.path.join(os.path.abspath(self.mktemp()), "root")

    def acquired(self) -> RootLock:
        """
        A lock on the root, acquired; released in cleanup.
        """
        lock = RootLock(self.root)
        lock.acquire()
        self.addCleanup(lock.release)
        return lock

    def test_acquire_creates(self) -> None:
        """
        The root is created 0700 and C{.lock} 0600 holding this process's pid.
        """
        lock = self.acquired()
        self.assertTrue(lock.held)
        self.assertEqual(stat.S_IMODE(os.stat(self.root).st_mode), 0o700)
        path = os.path.join(self.root, LOCK_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_second_lock_refused(self) -> None:
        """
        A second open file description cannot take the lock, even in the same process; the error
        text is the one the gateway logs.
        """
        self.acquired()
        second = RootLock(self.root)
        error = self.assertRaises(RootInUse, second.acquire)
        self.assertEqual(
            str(error), f"CXG_TMP_ROOT {self.root} is in use by another codexgw-app process"
        )
        self.assertEqual(error.root, self.root)
        self.assertFalse(second.held)

    def test_release(self) -> None:
        """
        After a release another lock succeeds; release and acquire are idempotent.
        """
        first = self.acquired()
        first.acquire()
        first.release()
        first.release()
        self.assertFalse(first.held)
        self.acquired()

    def test_close_on_exec(self) -> None:
        """
        The lock's descriptor is not inherited by spawned processes.
        """
        lock = self.acquired()
        fd = lock._fd
        assert fd is not None
        self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)

    def test_root_not_a_directory(self) -> None:
        """
        A file where the root should be is an error, and nothing is held.
        """
        os.makedirs(os.path.dirname(self.root))
        with open(self.root, "w"):
            pass
        lock = RootLock(self.root)
        self.assertRaises((CodexHomeError, OSError), lock.acquire)
        self.assertFalse(lock.held)

    def lock_process(self) -> subprocess.Popen[str]:
        """
        Start L{LOCK_SCRIPT} on the root; cleanup kills and reaps it.
        """
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", LOCK_SCRIPT, self.root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.communicate(timeout=PROCESS_TIMEOUT)

        self.addCleanup(stop)
        return child

    def test_other_process_exits_1(self) -> None:
        """
        Another process trying the held lock fails with the message (it exits 1).
        """
        self.acquired()
        child = self.lock_process()
        out, err = child.communicate(timeout=60)
        self.assertEqual(child.returncode, 1)
        self.assertEqual(out, "")
        self.assertEqual(err, f"CXG_TMP_ROOT {self.root} is in use by another codexgw-app process\n")

    def test_lock_dies_with_holder(self) -> None:
        """
        A holder that is SIGKILLed releases the lock: a gateway restarted after a crash can start.
        """
        child = self.lock_process()
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline(), "locked\n")
        self.assertRaises(RootInUse, RootLock(self.root).acquire)
        child.kill()
        child.communicate(timeout=PROCESS_TIMEOUT)
        self.acquired()


# -------------------------------------------------------------------------------------------------
# Finding orphans


class FindOrphansFakeProcTests(SynchronousTestCase):
    """
    L{find_orphans} on a fake C{/proc}: which processes count, and one orphan per group.
    """

    def setUp(self) -> None:
        """
        A fake C{/proc} and a root path.
        """
        self.proc = FakeProc(self)
        self.root = "/var/tmp/cxg-root"

    def find(self, records: list[StateRecord], uid: int | None = None) -> list[Orphan]:
        """
        Run L{find_orphans} on the fake tree; no record pid is alive.
        """
        return find_orphans(records, self.root, lambda pid: None, proc=self.proc.path, uid=uid)

    def test_environ_scan(self) -> None:
        """
        Processes with C{CODEX_HOME=<root>/<id>} are found with their group, one per group, in pid
        order; other homes, zombies, this process's group and group 1 are not.
        """
        home = {"CODEX_HOME": f"{self.root}/ws_a"}
        self.proc.add(300, 300, {"PATH": "/bin", **home, "X": "y"})
        self.proc.add(301, 300, home)
        self.proc.add(20, 20, {"CODEX_HOME": f"{self.root}/ws_b/"})
        self.proc.add(400, 400, {"CODEX_HOME": f"{self.root}-evil/ws_c"})
        self.proc.add(401, 401, {"CODEX_HOME": f"{self.root}/ws_d/sub"})
        self.proc.add(402, 402, {"CODEX_HOME": f"{self.root}/../x"})
        self.proc.add(403, 403, {"CODEX_HOME": f"{self.root}/bad.id"})
        self.proc.add(404, 404, {"CODEX_HOME": self.root})
        self.proc.add(405, 405, {"HOME": f"{self.root}/ws_e"})
        self.proc.add(406, 406, home, state="Z")
        self.proc.add(407, os.getpgrp(), home)
        self.proc.add(408, 1, home)
        os.makedirs(os.path.join(self.proc.path, "self"))
        self.assertEqual(self.find([]), [Orphan("ws_b", 20), Orphan("ws_a", 300)])

    def test_other_uid(self) -> None:
        """
        Only processes of the given uid are scanned.
        """
        self.proc.add(300, 300, {"CODEX_HOME": f"{self.root}/ws_a"})
        self.assertEqual(self.find([], uid=os.getuid() + 1), [])
        self.assertEqual(self.find([], uid=os.getuid()), [Orphan("ws_a", 300)])

    def test_no_proc(self) -> None:
        """
        Without C{/proc} only records are used.
        """
        found = find_orphans(
            [record(pid=55, start_time="7")],
            self.root,
            {55: "7"}.get,
            proc=os.path.join(self.proc.path, "missing"),
        )
        self.assertEqual(found, [Orphan("ws_a", 55)])

    def test_records(self) -> None:
        """
        A C{running} record counts when its pid is alive with the same start time; a group found
        by record and by scan is reported once, under the record's workspace; an C{upload-pending}
        record, a dead pid, another start time, pid 0 and this process's group never count.
        """
        self.proc.add(55, 55, {"CODEX_HOME": f"{self.root}/ws_x"})
        times = {55: "7", 56: "8", 57: "9", os.getpgrp(): "1"}
        records = [
            record("ws_a", 55, "7"),
            record("ws_b", 56, "other"),
            record("ws_c", 57, "9", "upload-pending"),
            record("ws_d", 58, "10"),
            record("ws_e", os.getpgrp(), "1"),
            StateRecord("ws_f", 0, 0, "", 1, "upload-pending", "2025-01-02T03:04:05Z"),
        ]
        found = find_orphans(records, self.root, times.get, proc=self.proc.path)
        self.assertEqual(found, [Orphan("ws_a", 55)])


class FindOrphansRealTests(SynchronousTestCase):
    """
    L{find_orphans} finds a real process group through its record and through its environment.
    """

    def setUp(self) -> None:
        """
        A fresh root.
        """
        self.homes = make_root(self)

    def test_found_by_record(self) -> None:
        """
        A live group whose leader matches a C{running} record is found; with another start time it
        is not.
        """
        child = spawn_group(self, None)
        start_time = start_time_of(child.pid)
        assert start_time is not None
        matching = record("ws_a", child.pid, start_time)
        self.assertEqual(
            find_orphans([matching], self.homes.root, start_time_of), [Orphan("ws_a", child.pid)]
        )
        stale = record("ws_a", child.pid, str(int(start_time) + 1))
        self.assertEqual(find_orphans([stale], self.homes.root, start_time_of), [])

    def test_found_by_environ(self) -> None:
        """
        A live group with C{CODEX_HOME=<root>/ws_a} is found without any record; under another
        root it is not.
        """
        child = spawn_group(self, self.homes.path_for("ws_a"))
        self.assertEqual(find_orphans([], self.homes.root, start_time_of), [Orphan("ws_a", child.pid)])
        other = os.path.abspath(self.mktemp())
        self.assertEqual(find_orphans([], other, start_time_of), [])


# -------------------------------------------------------------------------------------------------
# Killing orphans


class FakeGroups:
    """
    Process groups for L{kill_orphans}: which are alive, and the signals sent.

    @ivar live: the groups with a live member; tests remove a group to let it die.
    @ivar sent: every C{(pgid, signal)} sent, in order.
    @ivar checks: how many liveness checks were made.
    @ivar refuse: the exception C{killpg} raises, by group.
    """

    def __init__(self, *live: int) -> None:
        """
        @param live: the groups alive at first.
        """
        self.live = set(live)
        self.sent: list[tuple[int, int]] = []
        self.checks = 0
        self.refuse: dict[int, OSError] = {}

    def alive(self, pgid: int) -> bool:
        """
        Whether C{pgid} is alive.
        """
        self.checks += 1
        return pgid in self.live

    def killpg(self, pgid: int, signum: int) -> None:
        """
        Record the signal; a dead group raises L{ProcessLookupError}; SIGKILL ends a group.
        """
        self.sent.append((pgid, signum))
        if pgid in self.refuse:
            raise self.refuse[pgid]
        if pgid not in self.live:
            raise ProcessLookupError(pgid)
        if signum == signal.SIGKILL:
            self.live.discard(pgid)


class KillOrphansTests(SynchronousTestCase):
    """
    L{kill_orphans} with fake groups on a L{Clock}: the signals, the polling and the grace.
    """

    def setUp(self) -> None:
        """
        A clock and log capture.
        """
        self.clock = Clock()
        self.events = capture_events(self)

    def kill(self, groups: FakeGroups, *orphans: Orphan, grace: float = 10.0) -> Deferred[int]:
        """
        Run L{kill_orphans} against C{groups}.
        """
        return kill_orphans(orphans, self.clock, grace=grace, alive=groups.alive, killpg=groups.killpg)

    def killed(self) -> list[tuple[str, int, str]]:
        """
        The C{orphan app-server killed} events as C{(workspace_id, pgid, signal)}.
        """
        return [
            (event["workspace_id"], event["pgid"], event["signal"])
            for event in self.events
            if event["log_format"] == "orphan app-server killed"
        ]

    def test_nothing(self) -> None:
        """
        No orphans: 0 at once, nothing scheduled.
        """
        self.assertEqual(self.successResultOf(kill_orphans([], self.clock)), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sigterm_then_poll(self) -> None:
        """
        Every distinct group gets SIGTERM at once; liveness is polled every 50 ms until all are
        gone, and the result counts them.
        """
        groups = FakeGroups(10, 11)
        d = self.kill(groups, Orphan("ws_a", 10), Orphan("ws_b", 11), Orphan("ws_a", 10))
        self.assertEqual(groups.sent, [(10, signal.SIGTERM), (11, signal.SIGTERM)])
        self.assertNoResult(d)
        checks = groups.checks
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(groups.checks, checks + 2)
        groups.live.discard(10)
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(self.killed(), [("ws_a", 10, "SIGTERM")])
        self.assertNoResult(d)
        groups.live.discard(11)
        self.clock.advance(POLL_INTERVAL - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(self.killed(), [("ws_a", 10, "SIGTERM"), ("ws_b", 11, "SIGTERM")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(groups.sent), 2)

    def test_grace_then_sigkill(self) -> None:
        """
        A group that ignores SIGTERM gets SIGKILL when the grace has passed in total, not before;
        a group that ended in time gets none.
        """
        groups = FakeGroups(10, 11)
        d = self.kill(groups, Orphan("ws_a", 10), Orphan("ws_b", 11))
        self.clock.pump([POLL_INTERVAL] * 4)
        groups.live.discard(10)
        self.clock.pump([POLL_INTERVAL] * 195)
        self.assertAlmostEqual(self.clock.seconds(), 9.95)
        self.assertNoResult(d)
        self.assertNotIn((11, signal.SIGKILL), groups.sent)
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(groups.sent, [(10, signal.SIGTERM), (11, signal.SIGTERM), (11, signal.SIGKILL)])
        self.assertEqual(self.killed(), [("ws_a", 10, "SIGTERM"), ("ws_b", 11, "SIGKILL")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_short_grace(self) -> None:
        """
        A grace shorter than the poll interval is honoured exactly; grace 0 kills at once.
        """
        groups = FakeGroups(10)
        d = self.kill(groups, Orphan("ws_a", 10), grace=0.02)
        self.clock.advance(0.02)
        self.assertEqual(self.successResultOf(d), 1)
        groups = FakeGroups(12)
        d = self.kill(groups, Orphan("ws_a", 12), grace=0)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(groups.sent, [(12, signal.SIGTERM), (12, signal.SIGKILL)])

    def test_gone_or_refused(self) -> None:
        """
        A group gone before SIGTERM is not counted or logged; one that may not be signalled is
        logged as a warning and not waited for.
        """
        groups = FakeGroups(11)
        groups.refuse[11] = PermissionError(1, "Operation not permitted")
        d = self.kill(groups, Orphan("ws_a", 10), Orphan("ws_b", 11))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.killed(), [])
        warnings = [e for e in self.events if "could not be signalled" in e["log_format"]]
        self.assertEqual([(e["workspace_id"], e["pgid"]) for e in warnings], [("ws_b", 11)])

    def test_cancel(self) -> None:
        """
        Cancelling stops the polling; no SIGKILL follows.
        """
        groups = FakeGroups(10)
        d = self.kill(groups, Orphan("ws_a", 10))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(groups.sent, [(10, signal.SIGTERM)])

    def test_broken_liveness(self) -> None:
        """
        A liveness check that raises fails the result instead of leaving it waiting.
        """
        groups = FakeGroups(10)

        def broken(pgid: int) -> bool:
            raise RuntimeError("no /proc")

        d = kill_orphans([Orphan("ws_a", 10)], self.clock, alive=broken, killpg=groups.killpg)
        self.failureResultOf(d, RuntimeError)


class GroupAliveTests(SynchronousTestCase):
    """
    L{group_alive} and L{live_process_groups} read C{/proc}; zombies are dead.
    """

    def test_fake_proc(self) -> None:
        """
        A group is alive while a non-zombie member exists.
        """
        proc = FakeProc(self)
        proc.add(10, 10, state="Z")
        proc.add(11, 10)
        proc.add(12, 12, state="Z")
        proc.add(13, 13, state="X")
        self.assertEqual(live_process_groups(proc.path), {10})
        self.assertTrue(group_alive(10, proc.path))
        self.assertFalse(group_alive(12, proc.path))

    def test_without_proc(self) -> None:
        """
        Without C{/proc}, C{killpg(pgid, 0)} decides.
        """
        missing = os.path.abspath(self.mktemp())
        self.assertIsNone(live_process_groups(missing))
        self.assertTrue(group_alive(os.getpgrp(), missing))
        self.assertFalse(group_alive(NO_SUCH_GROUP, missing))

    def test_real_zombie(self) -> None:
        """
        A real group is alive while its process runs, and dead once it is a zombie (not reaped).
        """
        child = spawn_group(self, None)
        self.assertTrue(group_alive(child.pid))
        os.killpg(child.pid, signal.SIGKILL)
        # The zombie keeps the pid; wait for the kernel to finish the kill without reaping.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        self.assertFalse(group_alive(child.pid))


class KillOrphansRealTests(TestCase):
    """
    L{find_orphans} and L{kill_orphans} against real process groups, on the real reactor.
    """

    def test_find_and_kill(self) -> Deferred[None]:
        """
        One group ends on SIGTERM, the other ignores it and is SIGKILLed after the grace; both are
        found through their CODEX_HOME and neither survives.
        """
        homes = make_root(self)
        polite = spawn_group(self, homes.path_for("ws_a"))
        stubborn = spawn_group(self, homes.path_for("ws_b"), ignore_term=True)
        orphans = find_orphans([], homes.root, start_time_of)
        self.assertEqual(
            sorted(orphans, key=lambda o: o.workspace_id),
            [Orphan("ws_a", polite.pid), Orphan("ws_b", stubborn.pid)],
        )
        clock = cast(IReactorTime, global_reactor)
        d = kill_orphans(orphans, clock, grace=0.5)
        d.addTimeout(PROCESS_TIMEOUT, clock)

        def check(count: int) -> None:
            self.assertEqual(count, 2)
            self.assertEqual(polite.wait(timeout=PROCESS_TIMEOUT), -signal.SIGTERM)
            self.assertEqual(stubborn.wait(timeout=PROCESS_TIMEOUT), -signal.SIGKILL)

        return cast(Deferred[None], d.addCallback(check))


# -------------------------------------------------------------------------------------------------
# Cleaning the root


class CleanRootTests(SynchronousTestCase):
    """
    L{clean_root}: leftovers go, homes without records go, records without homes go.
    """

    def setUp(self) -> None:
        """
        A fresh root with its records.
        """
        self.homes = make_root(self)
        self.records = StateRecords(self.homes, gateway_pid=77, now=lambda: NOW)
        self.capture = capture_events(self)

    def put(self, name: str, data: bytes = b"x") -> str:
        """
        Write a file C{<root>/<name>}.
        """
        path = os.path.join(self.homes.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def home(self, workspace_id: str) -> str:
        """
        A home with one file in it.
        """
        path = self.homes.home_path(workspace_id)
        with open(os.path.join(path, "history.jsonl"), "w") as f:
            f.write("{}\n")
        return path

    def names(self) -> list[str]:
        """
        The names in the root.
        """
        return sorted(os.listdir(self.homes.root))

    def test_leftovers(self) -> None:
        """
        C{.staging/} and every C{*.tmp} file go; the lock, a C{*.tmp} directory and unknown
        names stay.
        """
        staging = self.homes.staging_path()
        self.put(os.path.join(".staging", "ws_a.tar.gz"))
        os.mkdir(os.path.join(staging, "sub"))
        self.put(".ws_a.json.0123456789abcdef.tmp", b'{"work')
        self.put("other.tmp")
        self.put(LOCK_FILE)
        self.put("README")
        os.mkdir(os.path.join(self.homes.root, "dir.tmp"))
        remove_leftovers(self.homes)
        self.assertEqual(self.names(), [LOCK_FILE, "README", "dir.tmp"])

    def test_staging_symlink(self) -> None:
        """
        A symlink named C{.staging} is removed, not followed.
        """
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.homes.root, ".staging"))
        remove_leftovers(self.homes)
        self.assertEqual(self.names(), [])
        self.assertTrue(os.path.isdir(outside))

    def test_clean_root(self) -> None:
        """
        A home with a record stays (either state); a home without one, or with an unreadable one,
        goes; a record without a home goes; what stays is returned by workspace id.
        """
        self.home("ws_a")
        self.records.write_running("ws_a", 10, "1")
        self.home("ws_b")
        self.records.set_upload_pending("ws_b")
        self.home("ws_c")
        self.records.write_running("ws_d", 11, "1")
        self.home("ws_e")
        self.put("ws_e.json", b"not json")
        self.put("ws_f.json", b"not json")
        self.put(".ws_g.json.0123456789abcdef.tmp")
        self.homes.staging_path()
        self.put(LOCK_FILE)
        kept = clean_root(self.homes, self.records)
        self.assertEqual(
            kept,
            [
                StateRecord("ws_a", 10, 10, "1", 77, "running", "2025-01-02T03:04:05.678Z"),
                StateRecord("ws_b", 0, 0, "", 77, "upload-pending", "2025-01-02T03:04:05.678Z"),
            ],
        )
        self.assertEqual(self.names(), [LOCK_FILE, "ws_a", "ws_a.json", "ws_b", "ws_b.json"])
        self.assertEqual(os.listdir(os.path.join(self.homes.root, "ws_a")), ["history.jsonl"])

    def test_not_a_home(self) -> None:
        """
        A symlink or file where a home would be is removed (with its record) and a symlink's target
        is untouched.
        """
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.homes.root, "ws_a"))
        self.records.write_running("ws_a", 10, "1")
        self.put("ws_b")
        self.records.write_running("ws_b", 11, "1")
        os.symlink(outside, os.path.join(self.homes.root, "ws_c"))
        self.assertEqual(prune_homes(self.homes, self.records), [])
        self.assertEqual(self.names(), [])
        self.assertTrue(os.path.isdir(outside))

    def test_missing_root(self) -> None:
        """
        A root that does not exist is clean.
        """
        homes = HomeDirs(os.path.abspath(self.mktemp()))
        self.assertEqual(clean_root(homes, StateRecords(homes)), [])
