"""
The envtools context (C{envtools.md} §1.1): what every tool call of one front-end scope shares.

A context holds one bridge pool (§4.8), one name resolver (§5), one exec-session table (§6), the
process-id counters (§7.1) and the front-end's relay creator (§1.3). env-mcp has one per process, the
SDK one per workspace; contexts share nothing.

L{EnvContext.client_for} is the environment step of §7.1: resolve the name, then get the pool's client,
turning each failure into the tool's isError text (L{ToolFailure}).

Decisions where the spec is silent:
 - L{EnvContext.client_for} refuses an empty name itself with the environment field's C{… is required}
   text, so callers that skipped L{codexgw.envtools.args.check_arguments} still get the §7.1 text.
 - L{EnvContext.close} forgets the sessions and closes the pool; closing the bridges ends their
   exec-servers and the processes with them (§4.7), so no terminate is sent.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime

from codexgw.envtools.interfaces import IBridgePool, IExecServerClient, IRelayCreator, IResolver
from codexgw.envtools.sessions import MAX_SESSIONS, SessionTable


class ToolFailure(Exception):
    """
    A tool call ends with an isError result; C{str()} is its text.
    """


class EnvContext:
    """
    One envtools context.

    @ivar pool: the bridge clients by exe id.
    @ivar resolver: environment names → exe ids.
    @ivar clock: the time source of deadlines, waits and session expiry.
    @ivar relay_creator: the front-end's relay creator, or C{None} when it has none (C{copy_path}'s http
        transport then counts as unavailable).
    @ivar sessions: the exec-session table.
    """

    def __init__(
        self,
        pool: IBridgePool,
        resolver: IResolver,
        clock: IReactorTime,
        relay_creator: IRelayCreator | None = None,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        """
        @param max_sessions: the most live exec sessions of the table (64 by the spec).
        """
        self.pool = pool
        self.resolver = resolver
        self.clock = clock
        self.relay_creator = relay_creator
        self.sessions = SessionTable(clock, max_sessions)
        self._counters: dict[str, int] = {}

    def next_number(self, prefix: str) -> int:
        """
        The next number of C{prefix}'s counter: 1, 2, 3, … (one counter per prefix, §7.1).
        """
        number = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = number
        return number

    def next_process_id(self, prefix: str) -> str:
        """
        The next process id of C{prefix}: C{<prefix>-<n>} (C{shell-1}, C{uexec-1}, …).
        """
        return f"{prefix}-{self.next_number(prefix)}"

    async def resolve(self, name: str, field: str = "environment_id") -> str:
        """
        The exe id of environment C{name} (§7.1 "Environment", first half).

        @param field: the argument C{name} came from, for the C{… is required} text.
        @raise ToolFailure: the name is empty, or the resolver's text.
        """
        if not name:
            raise ToolFailure(f"{field} is required; call list_environments to see available names")
        try:
            return await self.resolver.resolve(name)
        except CancelledError:
            raise
        except Exception as error:
            raise ToolFailure(str(error)) from error

    async def client_of(self, name: str, exe_id: str) -> IExecServerClient:
        """
        The pool's client of C{exe_id} (§7.1 "Environment", second half).

        @param name: the environment name, for the error text.
        @raise ToolFailure: C{environment "<name>" unavailable: <error>}.
        """
        try:
            return await self.pool.get(exe_id)
        except CancelledError:
            raise
        except Exception as error:
            raise ToolFailure(f'environment "{name}" unavailable: {error}') from error

    async def client_for(
        self, name: str, field: str = "environment_id"
    ) -> tuple[str, IExecServerClient]:
        """
        Resolve C{name} and get its client (§7.1 "Environment").

        @param field: the argument C{name} came from, for the C{… is required} text.
        @return: the exe id and the client.
        @raise ToolFailure: the resolver's text, or C{environment "<name>" unavailable: <error>}.
        """
        exe_id = await self.resolve(name, field)
        return exe_id, await self.client_of(name, exe_id)

    def close(self) -> None:
        """
        Forget every session and close the pool (its clients end, §4.7).
        """
        self.sessions.clear()
        self.pool.close()
