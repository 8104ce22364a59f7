"""
The exec-session table (C{envtools.md} §6): the long-running processes started by C{exec_command}.

A session maps a new UUIDv4 C{session_id} to the executor, the environment name, the process id and the
bridge client the process runs on. A table holds at most 64 live sessions; a session unused for 30
minutes (on the injected clock) is expired — best-effort C{process/terminate} (10 s), then forgotten;
a session whose client has ended is I{lost}: the executor ended the exec-server and the process with it.
While a session lives on a client, the client is told (C{session_opened}/C{session_closed}) so that it
sends heartbeats (§4.6).

Decisions where the spec is silent:
 - Expiry runs at every access to the table (L{SessionTable.get}, L{SessionTable.lookup},
   L{SessionTable.reserve}, L{SessionTable.expire}): env-mcp needs nothing else, and the SDK's 60 s sweep
   calls L{SessionTable.expire}. A session is expired once C{now − last_used ≥ 1800 s}.
 - Lost sessions do not count against the limit of 64 (the limit is on I{live} sessions); they stay in
   the table until a lookup reports them lost or they expire (a lost session's expiry sends no
   terminate: its exec-server is gone).
 - Room is reserved before C{process/start} (L{SessionTable.reserve}), so concurrent C{exec_command}s
   cannot overfill the table.
 - An expired or forgotten session is removed from the table at once; C{session_closed} is called when
   its best-effort terminate has finished, so heartbeats continue until then.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from codexgw.envtools.interfaces import IExecServerClient

#: Live sessions per table (§6).
MAX_SESSIONS: Final = 64
#: A session unused this long is expired (§6), in seconds.
SESSION_IDLE_SECONDS: Final = 30 * 60.0
#: The time limit of a best-effort C{process/terminate} (§9), in seconds.
TERMINATE_TIMEOUT: Final = 10.0


class SessionError(Exception):
    """
    A session lookup or creation failed; C{str()} is the tool's isError text.
    """


@dataclass
class ExecSession:
    """
    One exec session (§6).

    @ivar session_id: the UUIDv4 handed to the caller.
    @ivar exe_id: the executor the process runs on.
    @ivar name: the environment name it was started through (for the C{session lost} text).
    @ivar process_id: the exec-server process id (C{uexec-<n>}).
    @ivar client: the bridge client the process was started on.
    @ivar last_used: clock seconds of the creation or the last use.
    """

    session_id: str
    exe_id: str
    name: str
    process_id: str
    client: IExecServerClient
    last_used: float

    @property
    def lost(self) -> bool:
        """
        Whether the client has ended, taking the exec-server and the process with it (§6 "Lost").
        """
        return self.client.ended is not None


def lost_text(name: str) -> str:
    """
    The isError text of a lost session (§6).
    """
    return f'session lost: the connection to environment "{name}" was reset'


def best_effort_terminate(client: IExecServerClient, process_id: str) -> Deferred[None]:
    """
    C{process/terminate} C{{"processId"}} with a 10 s limit; errors are ignored (§7.4, §7.8).

    @return: fires with C{None} when the call has ended, whatever its outcome.
    """
    try:
        called = client.call("process/terminate", {"processId": process_id}, TERMINATE_TIMEOUT)
    except Exception:
        return succeed(None)

    def ignore(_: object) -> None:
        return None

    return called.addBoth(ignore)


class SessionTable:
    """
    The exec sessions of one envtools context (§6).
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_sessions: int = MAX_SESSIONS,
        idle_seconds: float = SESSION_IDLE_SECONDS,
    ) -> None:
        """
        @param clock: the source of C{last_used} and of expiry.
        @param max_sessions: the most live sessions (reserved ones included).
        @param idle_seconds: a session unused this long is expired.
        """
        self._clock = clock
        self.max_sessions = max_sessions
        self._idle_seconds = idle_seconds
        self._sessions: dict[str, ExecSession] = {}
        self._reserved = 0

    def __len__(self) -> int:
        """
        The number of sessions in the table, lost ones included.
        """
        return len(self._sessions)

    def _live_count(self) -> int:
        return sum(1 for session in self._sessions.values() if not session.lost)

    def expire(self) -> Deferred[None]:
        """
        Expire every session unused for 30 min: it leaves the table at once, its process gets a
        best-effort terminate (unless the session is lost), then its client is told.

        @return: fires when the terminates have ended.
        """
        cutoff = self._clock.seconds() - self._idle_seconds
        idle = [s for s in self._sessions.values() if s.last_used <= cutoff]
        for session in idle:
            del self._sessions[session.session_id]
        return gatherResults([self._end(session) for session in idle]).addCallback(lambda _: None)

    def _end(self, session: ExecSession) -> Deferred[None]:
        done: Deferred[None] = (
            succeed(None) if session.lost else best_effort_terminate(session.client, session.process_id)
        )

        def closed(_: object) -> None:
            session.client.session_closed()

        return done.addCallback(closed)

    def reserve(self) -> None:
        """
        Reserve room for a session about to be started; follow with L{add} (C{reserved=True}) or
        L{release}.

        @raise SessionError: C{too many exec sessions (64); terminate one first}.
        """
        self.expire()
        if self._live_count() + self._reserved >= self.max_sessions:
            raise SessionError(f"too many exec sessions ({self.max_sessions}); terminate one first")
        self._reserved += 1

    def release(self) -> None:
        """
        Give back a reservation whose process did not start.
        """
        self._reserved = max(0, self._reserved - 1)

    def add(
        self,
        exe_id: str,
        name: str,
        process_id: str,
        client: IExecServerClient,
        reserved: bool = False,
    ) -> ExecSession:
        """
        Record a started process as a new session and tell its client.

        @param reserved: whether L{reserve} was called for it (the reservation is consumed).
        @return: the session, with a new UUIDv4 C{session_id}.
        """
        if reserved:
            self.release()
        session = ExecSession(
            session_id=str(uuid.uuid4()),
            exe_id=exe_id,
            name=name,
            process_id=process_id,
            client=client,
            last_used=self._clock.seconds(),
        )
        self._sessions[session.session_id] = session
        client.session_opened()
        return session

    def get(self, session_id: str) -> ExecSession | None:
        """
        The session of C{session_id} (lost or not) after expiry, or C{None}; does not mark it used.
        """
        self.expire()
        return self._sessions.get(session_id)

    def touch(self, session: ExecSession) -> None:
        """
        Mark C{session} used now.
        """
        session.last_used = self._clock.seconds()

    def lookup(self, session_id: str, exe_id: str) -> ExecSession:
        """
        The env-mcp tools' lookup (§6), marking the session used.

        @param exe_id: the exe id resolved from the call's C{environment_id}.
        @raise SessionError: C{no such session for that environment_id} when the session does not exist
            or runs on another executor; the lost text when its client has ended (it is forgotten).
        """
        session = self.get(session_id)
        if session is None or session.exe_id != exe_id:
            raise SessionError("no such session for that environment_id")
        if session.lost:
            self.forget(session_id)
            raise SessionError(lost_text(session.name))
        self.touch(session)
        return session

    def forget(self, session_id: str) -> ExecSession | None:
        """
        Remove a session without terminating its process, and tell its client.

        @return: the session removed, or C{None}.
        """
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.client.session_closed()
        return session

    def clear(self) -> None:
        """
        Forget every session (the context is closing; its bridges take the processes with them).
        """
        for session_id in list(self._sessions):
            self.forget(session_id)

    def sessions(self) -> list[ExecSession]:
        """
        The sessions in the table, in creation order, without expiring any.
        """
        return list(self._sessions.values())
