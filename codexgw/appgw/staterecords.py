"""
State records, the root lock and startup recovery (C{app-gateway.md} §5.8, §6.6).

Everything the gateway knows about its app-servers lives in memory, and dies with it. What must
survive a gateway crash is written next to the homes in C{<CXG_TMP_ROOT>}:

 - C{.lock}: held with an exclusive C{flock} for the life of the gateway (L{RootLock}), so two
   gateways never share a root.
 - C{<workspace_id>.json}: the state record of a home (L{StateRecord}, L{StateRecords}): which
   process (pid, process group, start time) last ran on it, and whether it is C{running} or waits
   for an upload (C{upload-pending}). Records are written atomically (temporary file + rename).

At startup, before the listener opens, the supervisor takes the lock, kills the app-servers a dead
gateway left behind (L{find_orphans}, L{kill_orphans}) and tidies the root (L{clean_root}); the homes
that remain all have a record and are uploaded in the background by the supervisor.

Decisions where the spec is silent:
 - L{StateRecord.from_json} ignores members it does not know (a newer gateway may add some; the
   root is then still usable after a rollback) but requires every member of §5.8 with its exact type
   (an C{int} is never a C{bool}), a valid workspace id, a known state, an RFC 3339 C{updated_at}
   with a time zone, and, in state C{running}, a pid and process group above 0.
 - C{updated_at} is written in UTC with milliseconds and a C{Z}: C{2025-01-02T03:04:05.678Z}; a naive
   C{now()} is taken to be UTC.
 - A record file is read only if it is a regular file (never through a symlink) of at most
   L{MAX_RECORD_BYTES}, and only if the id inside matches its name; anything else is unreadable:
   L{StateRecords.read} logs a warning and answers C{None}, and L{clean_root} deletes it, so the
   warning is not repeated at every start.
 - L{StateRecords.set_upload_pending} of a workspace without a readable record writes one with pid
   and process group 0 and an empty start time: the home it is called for is being kept for a retry,
   and step 4 of the next startup would delete a home without a record.
 - Temporary record files are named C{.<workspace_id>.json.<16 hex>.tmp}, so step 2 (every C{*.tmp}
   in the root) removes the ones an interrupted write left behind.
 - L{RootLock} opens C{.lock} with C{O_CLOEXEC}: an app-server inheriting the descriptor would keep
   the lock after the gateway died and keep every later gateway out. The file is never deleted
   (another process could then lock an unlinked file while a third creates a new one); the holder
   writes its pid into it for operators.
 - Orphans found through a record are the record's process group only while the record's pid is
   alive with the record's start time; a group whose leader is gone is found only by the C{environ}
   scan (nothing else proves that its members are ours). Processes with C{CODEX_HOME=<root>/<id>}
   are matched for any valid id, with or without a record (the gateway may have died between the
   spawn and the record write). Zombies, process group 0 and 1, and the gateway's own group are
   never orphans.
 - L{kill_orphans} counts (and logs C{orphan app-server killed} for) the groups that existed when
   they were sent C{SIGTERM}; a group gone already is skipped, one that may not be signalled is
   logged as a warning and skipped. Groups still alive when the grace ends get C{SIGKILL} and the
   result fires at once (a SIGKILLed process runs no more code). Cancelling the result stops
   polling and sends nothing more.
 - Group liveness is read from C{/proc}, once per poll for all groups; where there is no C{/proc}
   a group is alive while C{killpg(pgid, 0)} succeeds (a zombie then counts as alive).
 - L{clean_root} removes only names it owns: C{.staging}, C{*.tmp} files, and entries whose name is
   a valid workspace id (a directory, or a symlink or file standing where a home would be, which is
   not a home) or such an id followed by C{.json}. Anything else is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Literal, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from codexgw.appgw.codexhome import (
    STAGING_DIR,
    HomeDirs,
    check_workspace_id,
    is_valid_workspace_id,
)
from codexgw.appgw.safefs import (
    PRIVATE_FILE_MODE,
    READ_FLAGS,
    AtomicFile,
    remove_tree,
    write_all,
)
from codexgw.executor.proctree import parse_stat

RecordState = Literal["running", "upload-pending"]

#: The state of a record whose process may be alive.
RUNNING: Final = "running"
#: The state of a record whose home waits for an upload.
UPLOAD_PENDING: Final = "upload-pending"
#: The name of the lock file in the root.
LOCK_FILE: Final = ".lock"
#: How a record file's name ends.
RECORD_SUFFIX: Final = ".json"
#: How temporary files end (L{codexgw.appgw.safefs.temporary_name}); step 2 deletes them all.
TEMP_SUFFIX: Final = ".tmp"
#: A record is a few hundred bytes; a bigger file is not one of ours.
MAX_RECORD_BYTES: Final = 64 * 1024
#: How often L{kill_orphans} looks whether the signalled groups are gone.
POLL_INTERVAL: Final = 0.05
#: How long L{kill_orphans} waits after C{SIGTERM} before C{SIGKILL} (§5.8 step 3).
ORPHAN_GRACE: Final = 10.0

_RECORD_NAME: Final = re.compile(r"([A-Za-z0-9_-]{1,128})\.json")
_MEMBERS: Final = ("workspace_id", "pid", "pgid", "start_time", "gateway_pid", "state", "updated_at")
_STATES: Final[frozenset[str]] = frozenset((RUNNING, UPLOAD_PENDING))
# Leave a sliver for float rounding, so the last poll of the grace is never split in two.
_EPSILON: Final = 1e-6

_log = Logger()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """
    C{moment} in UTC as RFC 3339 with milliseconds and a C{Z} (a naive C{moment} is UTC already).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _require_int(value: object, name: str, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"state record: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _require_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"state record: {name} must be a string, got {value!r}")
    return value


@dataclass(frozen=True)
class StateRecord:
    """
    The state record of one home, C{<root>/<workspace_id>.json} (§5.8).

    @ivar workspace_id: the workspace (its home is C{<root>/<workspace_id>}).
    @ivar pid: the app-server that last ran on the home (0 when unknown, see
        L{StateRecords.set_upload_pending}).
    @ivar pgid: its process group (the app-server leads its own, so C{pgid == pid}).
    @ivar start_time: what identifies the process instance: field 22 of C{/proc/<pid>/stat} on Linux
        (opaque here, only compared).
    @ivar gateway_pid: the gateway that wrote the record.
    @ivar state: C{running} while the process may be alive; C{upload-pending} once it has exited and
        the home's upload failed.
    @ivar updated_at: when the record was written, RFC 3339.
    """

    workspace_id: str
    pid: int
    pgid: int
    start_time: str
    gateway_pid: int
    state: RecordState
    updated_at: str

    def to_json(self) -> bytes:
        """
        The record as compact JSON (no spaces) with the members in the order of §5.8.
        """
        members = {
            "workspace_id": self.workspace_id,
            "pid": self.pid,
            "pgid": self.pgid,
            "start_time": self.start_time,
            "gateway_pid": self.gateway_pid,
            "state": self.state,
            "updated_at": self.updated_at,
        }
        return json.dumps(members, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> StateRecord:
        """
        Parse a record written by L{to_json} (members it does not know are ignored).

        @raise ValueError: when C{data} is not UTF-8 JSON of a record (see the module docstring for
            what is checked).
        """
        try:
            members = json.loads(data.decode("utf-8"))
        except RecursionError:
            raise ValueError("state record: nested too deeply") from None
        # UnicodeDecodeError and JSONDecodeError are ValueErrors already.
        if not isinstance(members, dict):
            raise ValueError("state record: not a JSON object")
        missing = [name for name in _MEMBERS if name not in members]
        if missing:
            raise ValueError(f"state record: missing {', '.join(missing)}")
        workspace_id = _require_str(members["workspace_id"], "workspace_id")
        if not is_valid_workspace_id(workspace_id):
            raise ValueError(f"state record: invalid workspace_id {workspace_id!r}")
        state = _require_str(members["state"], "state")
        if state not in _STATES:
            raise ValueError(f"state record: unknown state {state!r}")
        minimum = 1 if state == RUNNING else 0
        updated_at = _require_str(members["updated_at"], "updated_at")
        try:
            moment = datetime.fromisoformat(updated_at)
        except ValueError:
            raise ValueError(f"state record: updated_at is not RFC 3339: {updated_at!r}") from None
        if moment.tzinfo is None:
            raise ValueError(f"state record: updated_at has no time zone: {updated_at!r}")
        return cls(
            workspace_id=workspace_id,
            pid=_require_int(members["pid"], "pid", minimum),
            pgid=_require_int(members["pgid"], "pgid", minimum),
            start_time=_require_str(members["start_time"], "start_time"),
            gateway_pid=_require_int(members["gateway_pid"], "gateway_pid", 0),
            state=cast(RecordState, state),
            updated_at=updated_at,
        )


class StateRecords:
    """
    The state records in one root.

    Every method does small blocking filesystem work (a write is fsynced).

    @ivar homes: the homes whose root holds the records.
    @ivar gateway_pid: the pid written into every record.
    """

    def __init__(
        self,
        homes: HomeDirs,
        gateway_pid: int | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        """
        @param homes: the homes; records live in their root.
        @param gateway_pid: written into every record; this process's pid when C{None}.
        @param now: the wall clock for C{updated_at}.
        """
        self.homes = homes
        self.gateway_pid = os.getpid() if gateway_pid is None else gateway_pid
        self._now = now

    def path_for(self, workspace_id: str) -> str:
        """
        C{<root>/<workspace_id>.json}.

        @raise InvalidWorkspaceId: when the id is invalid.
        """
        return os.path.join(self.homes.root, check_workspace_id(workspace_id) + RECORD_SUFFIX)

    def write_running(self, workspace_id: str, pid: int, start_time: str) -> None:
        """
        Record that app-server C{pid} (leading its own process group) runs on the workspace's home.

        @param start_time: the process's start time as C{start_time_of} of L{find_orphans} reads it.
        @raise InvalidWorkspaceId: when the id is invalid.
        @raise ValueError: when C{pid} is not above 0.
        @raise OSError: when the record cannot be written; the old one (if any) is then unchanged.
        """
        if pid < 1:
            raise ValueError(f"state record: pid must be above 0, got {pid}")
        self._write(
            StateRecord(
                workspace_id=check_workspace_id(workspace_id),
                pid=pid,
                pgid=pid,
                start_time=start_time,
                gateway_pid=self.gateway_pid,
                state=RUNNING,
                updated_at=rfc3339(self._now()),
            )
        )

    def set_upload_pending(self, workspace_id: str) -> None:
        """
        Set the workspace's record to C{upload-pending}, keeping its pid, process group and start
        time; without a readable record, write one with pid and group 0 (module docstring).

        @raise InvalidWorkspaceId: when the id is invalid.
        @raise OSError: when the record cannot be written.
        """
        record = self.read(workspace_id)
        if record is None:
            record = StateRecord(
                workspace_id=workspace_id,
                pid=0,
                pgid=0,
                start_time="",
                gateway_pid=self.gateway_pid,
                state=UPLOAD_PENDING,
                updated_at="",
            )
        self._write(
            replace(
                record,
                gateway_pid=self.gateway_pid,
                state=UPLOAD_PENDING,
                updated_at=rfc3339(self._now()),
            )
        )

    def _write(self, record: StateRecord) -> None:
        name = record.workspace_id + RECORD_SUFFIX
        root_fd = os.open(self.homes.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with AtomicFile(root_fd, name, PRIVATE_FILE_MODE, prefix=f".{name}.") as out:
                out.file.write(record.to_json())
                out.commit()
        finally:
            os.close(root_fd)

    def read(self, workspace_id: str) -> StateRecord | None:
        """
        The workspace's record; C{None} when there is none, or when it cannot be read or parsed (a
        warning is then logged).

        @raise InvalidWorkspaceId: when the id is invalid.
        """
        path = self.path_for(workspace_id)
        try:
            data = _read_small_file(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            _warn_unreadable(workspace_id, path, e)
            return None
        try:
            record = StateRecord.from_json(data)
        except ValueError as e:
            _warn_unreadable(workspace_id, path, e)
            return None
        if record.workspace_id != workspace_id:
            _warn_unreadable(
                workspace_id, path, ValueError(f"it names workspace {record.workspace_id!r}")
            )
            return None
        return record

    def remove(self, workspace_id: str) -> None:
        """
        Delete the workspace's record; a missing record is already deleted.

        @raise InvalidWorkspaceId: when the id is invalid.
        @raise OSError: when the deletion fails.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_for(workspace_id))

    def record_ids(self) -> list[str]:
        """
        The workspace ids that have a record file in the root (readable or not), sorted; none when
        the root is missing.
        """
        try:
            names = os.listdir(self.homes.root)
        except FileNotFoundError:
            return []
        return sorted(
            match.group(1) for match in map(_RECORD_NAME.fullmatch, names) if match is not None
        )

    def all(self) -> list[StateRecord]:
        """
        Every readable record in the root, sorted by workspace id (unreadable ones are logged).
        """
        return [record for record in map(self.read, self.record_ids()) if record is not None]


def _read_small_file(path: str) -> bytes:
    fd = os.open(path, READ_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size > MAX_RECORD_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_RECORD_BYTES} bytes", path)
        return os.read(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)


def _warn_unreadable(workspace_id: str, path: str, error: Exception) -> None:
    _log.warn(
        "state record {path} unreadable; ignored: {error}",
        workspace_id=workspace_id,
        path=path,
        error=str(error),
    )


# -------------------------------------------------------------------------------------------------
# The root lock


class RootInUse(Exception):
    """
    Another process holds the lock of the root (§5.8 step 1).

    @ivar root: the root.
    """

    def __init__(self, root: str) -> None:
        """
        @param root: the root as configured.
        """
        super().__init__(f"CXG_TMP_ROOT {root} is in use by another codexgw-app process")
        self.root = root


class RootLock:
    """
    The exclusive C{flock} on C{<root>/.lock}, held for the life of the gateway.

    A C{flock} belongs to an open file description: a second L{RootLock} on the same root is refused
    even in the same process, and the lock goes away with the process however it ends.

    @ivar root: the root as configured.
    """

    def __init__(self, root: str) -> None:
        """
        @param root: C{CXG_TMP_ROOT}, absolute.
        @raise ValueError: when C{root} is relative.
        """
        self._homes = HomeDirs(root)
        self.root = root
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """
        Whether this object holds the lock.
        """
        return self._fd is not None

    def acquire(self) -> None:
        """
        Create the root (mode 0700; see L{HomeDirs.ensure_root}), open C{.lock} and take the lock
        without waiting; a no-op when this object holds it already.

        @raise RootInUse: when another open file description holds it.
        @raise OSError: when the root or the lock file cannot be created or opened.
        @raise codexgw.appgw.codexhome.CodexHomeError: when the root is not a directory of this user.
        """
        if self._fd is not None:
            return
        self._homes.ensure_root()
        fd = os.open(
            os.path.join(self.root, LOCK_FILE),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            PRIVATE_FILE_MODE,
        )
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RootInUse(self.root) from None
            os.ftruncate(fd, 0)
            write_all(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """
        Give the lock up (the file stays); a no-op when it is not held.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the only descriptor of the description releases the lock.
            os.close(fd)


# -------------------------------------------------------------------------------------------------
# Orphans


@dataclass(frozen=True)
class Orphan:
    """
    A process group left behind by a gateway that died.

    @ivar workspace_id: the workspace whose home it used.
    @ivar pgid: the process group.
    """

    workspace_id: str
    pgid: int


def _read_stat(proc: str, pid: str) -> tuple[int, int, str] | None:
    # (pid, pgid, state) of one process, or None when it is gone or unreadable.
    try:
        with open(os.path.join(proc, pid, "stat"), encoding="utf-8", errors="replace") as f:
            info = parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None
    return info.pid, info.pgid, info.state


def _is_dead_state(state: str) -> bool:
    # Z: zombie, X: dead (briefly seen while being reaped).
    return state in ("Z", "X")


def _proc_pids(proc: str) -> list[str] | None:
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    return sorted((entry for entry in entries if entry.isdigit()), key=int)


def live_process_groups(proc: str = "/proc") -> set[int] | None:
    """
    The process groups that have a live (not zombie) member, read from C{proc}; C{None} where C{proc}
    cannot be listed (not Linux).
    """
    pids = _proc_pids(proc)
    if pids is None:
        return None
    groups: set[int] = set()
    for pid in pids:
        seen = _read_stat(proc, pid)
        if seen is not None and not _is_dead_state(seen[2]):
            groups.add(seen[1])
    return groups


def group_alive(pgid: int, proc: str = "/proc") -> bool:
    """
    Whether process group C{pgid} has a member that is not a zombie (without C{proc}: whether
    C{killpg(pgid, 0)} succeeds).
    """
    groups = live_process_groups(proc)
    if groups is not None:
        return pgid in groups
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _codex_home_of(proc: str, pid: str) -> str | None:
    # The CODEX_HOME in a process's initial environment, or None.
    try:
        with open(os.path.join(proc, pid, "environ"), "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"CODEX_HOME="):
            return os.fsdecode(entry[len(b"CODEX_HOME=") :])
    return None


def _home_workspace(root: str, codex_home: str) -> str | None:
    # The workspace id when codex_home is <root>/<id>, else None.
    if not codex_home:
        return None
    parent, name = os.path.split(os.path.normpath(codex_home))
    if parent != os.path.normpath(root) or not is_valid_workspace_id(name):
        return None
    return name


def find_orphans(
    records: Sequence[StateRecord],
    root: str,
    start_time_of: Callable[[int], str | None],
    proc: str = "/proc",
    uid: int | None = None,
) -> list[Orphan]:
    """
    The process groups a dead gateway left running on C{root} (§5.8 step 3), one per group: first
    those of the C{running} records whose pid is alive with the record's start time, in record
    order; then, where C{proc} exists, the groups of every live process of C{uid} whose
    C{<proc>/<pid>/environ} holds C{CODEX_HOME=<root>/<id>}, in pid order. Never this process's own
    group, nor group 0 or 1.

    @param start_time_of: the start time of a pid (same form as in the records), C{None} when no
        such process exists.
    @param uid: the user whose processes are scanned; this process's real uid when C{None}.
    """
    own_group = os.getpgrp()
    scan_uid = os.getuid() if uid is None else uid
    found: dict[int, Orphan] = {}

    def add(workspace_id: str, pgid: int) -> None:
        if pgid > 1 and pgid != own_group and pgid not in found:
            found[pgid] = Orphan(workspace_id, pgid)

    for record in records:
        if record.state != RUNNING or record.pid < 1:
            continue
        if start_time_of(record.pid) == record.start_time:
            add(record.workspace_id, record.pgid)
    for pid in _proc_pids(proc) or []:
        try:
            if os.stat(os.path.join(proc, pid)).st_uid != scan_uid:
                continue
        except OSError:
            continue
        codex_home = _codex_home_of(proc, pid)
        workspace_id = _home_workspace(root, codex_home) if codex_home is not None else None
        if workspace_id is None:
            continue
        seen = _read_stat(proc, pid)
        if seen is None or _is_dead_state(seen[2]):
            continue
        add(workspace_id, seen[1])
    return list(found.values())


class _OrphanKill:
    """
    One run of L{kill_orphans}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        grace: float,
        interval: float,
        alive: Callable[[int], bool] | None,
        killpg: Callable[[int, int], None],
        proc: str,
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._interval = interval
        self._alive = alive
        self._killpg = killpg
        self._proc = proc
        self._pending: dict[int, Orphan] = {}
        self._killed = 0
        self._deadline = 0.0
        self._call: IDelayedCall | None = None
        self.result: Deferred[int] = Deferred(self._cancel)

    def start(self, orphans: Sequence[Orphan]) -> Deferred[int]:
        self._deadline = self._clock.seconds() + self._grace
        for orphan in orphans:
            if orphan.pgid in self._pending:
                continue
            if self._signal(orphan, signal.SIGTERM):
                self._pending[orphan.pgid] = orphan
                self._killed += 1
        self._poll()
        return self.result

    def _signal(self, orphan: Orphan, signum: int) -> bool:
        try:
            self._killpg(orphan.pgid, signum)
        except ProcessLookupError:
            return False
        except OSError as e:
            _log.warn(
                "orphan app-server group {pgid} could not be signalled: {error}",
                workspace_id=orphan.workspace_id,
                pgid=orphan.pgid,
                error=str(e),
            )
            return False
        return True

    def _is_alive(self) -> Callable[[int], bool]:
        if self._alive is not None:
            return self._alive
        groups = live_process_groups(self._proc)
        if groups is None:
            return lambda pgid: group_alive(pgid, self._proc)
        return groups.__contains__

    def _poll(self) -> None:
        self._call = None
        try:
            self._step()
        except Exception:
            # A broken liveness check must not leave the startup waiting forever.
            self.result.errback()

    def _step(self) -> None:
        alive = self._is_alive()
        for pgid, orphan in list(self._pending.items()):
            if not alive(pgid):
                del self._pending[pgid]
                _killed(orphan, "SIGTERM")
        if not self._pending:
            self.result.callback(self._killed)
            return
        remaining = self._deadline - self._clock.seconds()
        if remaining <= _EPSILON:
            for orphan in self._pending.values():
                # Gone in between: the group is dead either way.
                self._signal(orphan, signal.SIGKILL)
                _killed(orphan, "SIGKILL")
            self._pending.clear()
            self.result.callback(self._killed)
            return
        self._call = self._clock.callLater(min(self._interval, remaining), self._poll)

    def _cancel(self, result: Deferred[int]) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._pending.clear()


def _killed(orphan: Orphan, signal_name: str) -> None:
    _log.info(
        "orphan app-server killed",
        workspace_id=orphan.workspace_id,
        pgid=orphan.pgid,
        signal=signal_name,
    )


def kill_orphans(
    orphans: Sequence[Orphan],
    clock: IReactorTime,
    grace: float = ORPHAN_GRACE,
    alive: Callable[[int], bool] | None = None,
    killpg: Callable[[int, int], None] = os.killpg,
    interval: float = POLL_INTERVAL,
    proc: str = "/proc",
) -> Deferred[int]:
    """
    End the orphan groups (§5.8 step 3): C{SIGTERM} to each at once, then every C{interval} seconds
    on C{clock} look which groups are empty; when all are, or when C{grace} seconds have passed in
    total, C{SIGKILL} the rest. Logs C{orphan app-server killed} (C{workspace_id}, C{pgid},
    C{signal}: the last one the group got) per group.

    @param alive: whether a group still has a live member; by default read from C{proc}, once per
        poll for all groups (L{live_process_groups}).
    @param killpg: sends a signal to a process group (L{os.killpg}).
    @return: fires with the number of groups that were signalled; cancelling it stops the polling
        (no C{SIGKILL} follows).
    """
    if not orphans:
        return succeed(0)
    return _OrphanKill(clock, grace, interval, alive, killpg, proc).start(orphans)


# -------------------------------------------------------------------------------------------------
# Cleaning the root


def remove_leftovers(homes: HomeDirs) -> None:
    """
    Startup step 2: delete C{.staging/} and every C{*.tmp} file in the root (interrupted writes); a
    missing root has none.

    @raise OSError: when a deletion fails.
    """
    try:
        names = os.listdir(homes.root)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(homes.root, name)
        if name == STAGING_DIR:
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                os.unlink(path)
        elif name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)


def prune_homes(homes: HomeDirs, records: StateRecords) -> list[StateRecord]:
    """
    Startup step 4: remove every home without a readable record and every record (readable or not)
    without a home directory; return the records that remain, sorted by workspace id.

    Run it after the orphans are dead: a removed home may be the working directory of one.

    @raise OSError: when a removal fails.
    """
    try:
        names = os.listdir(homes.root)
    except FileNotFoundError:
        return []
    valid = {record.workspace_id: record for record in records.all()}
    kept: list[StateRecord] = []
    for name in sorted(names):
        if not is_valid_workspace_id(name):
            continue
        path = homes.path_for(name)
        try:
            is_home = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            continue
        record = valid.get(name)
        if record is not None and is_home:
            kept.append(record)
        elif is_home:
            homes.remove_home(path)
        else:
            # A symlink or file where a home would be is not a home; unlinking a symlink never
            # touches its target (remove_home would refuse one that points outside the root).
            os.unlink(path)
    kept_ids = {record.workspace_id for record in kept}
    for workspace_id in records.record_ids():
        if workspace_id not in kept_ids:
            records.remove(workspace_id)
    return kept


def clean_root(homes: HomeDirs, records: StateRecords) -> list[StateRecord]:
    """
    Startup steps 2 and 4 (L{remove_leftovers}, then L{prune_homes}): what remains is a home with a
    record for each returned record, for the background uploads of step 5.

    @raise OSError: when a deletion fails.
    """
    remove_leftovers(homes)
    return prune_homes(homes, records)
