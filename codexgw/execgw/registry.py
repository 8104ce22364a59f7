"""
Who is connected and which stream goes where (C{exec-gateway.md} §7.1, §7.2).

 - L{ConnRegistry}: C{exe_id → inbound connection}, at most one live connection per executor.
 - L{StreamRoutes}: one inbound connection's C{stream_id → bridge session} table.
 - L{InboundConnectionBase}: what an inbound connection does with its bridges (routes, attachment,
   idempotent close), with the websocket close left to a subclass hook.
 - L{StreamSlots}: per-executor count of reserved bridge slots.

Nothing here knows Autobahn or a reactor: bridges and connections are reached only through
L{IBridgeSession} and L{IInboundConnection}, so these classes unit-test with plain fakes.

Decisions where the spec is silent:
 - An inbound connection also tracks I{attached} sessions: bridges bound to it since their upgrade,
   routed or not. §4.3 step 8 closes a bridge when its inbound ends "also before the first frame", when
   it has no route yet, and §9.4 pauses every bridge attached to an inbound. Closing an inbound closes
   its routed sessions (route order) and then its attached, unrouted ones (attach order). Attaching to
   an inbound that has already closed its bridges closes the session at once.
 - L{StreamSlots.reserve} returns a L{Slot} handle instead of a bare C{True}. The handle is released
   once; a second release raises L{SlotReleasedTwice}. With a bare C{release(exe_id)}, a double release
   while another bridge held a slot of the same executor would silently free that bridge's slot.
"""

from __future__ import annotations

import abc
from typing import Generic, TypeVar

from zope.interface import Attribute, Interface, implementer

#: Close code and reason a bridge gets when its inbound connection ends or is evicted.
BRIDGE_SESSION_CLOSED = (1000, "bridge session closed")

_Conn = TypeVar("_Conn")


class IBridgeSession(Interface):
    """
    A bridge websocket carrying one stream, as its inbound connection sees it.
    """

    def close(code: int, reason: str) -> None:
        """
        Close the bridge with this close code and reason. Idempotent: calls after the first do nothing.
        """


class IInboundConnection(Interface):
    """
    An executor's inbound websocket, as the registry and the bridges see it.
    """

    routes = Attribute("The L{StreamRoutes} of the streams relayed on this connection.")

    def add_route(stream_id: str, session: IBridgeSession) -> IBridgeSession | None:
        """
        Route C{stream_id} to C{session}; see L{StreamRoutes.add_route}.
        """

    def remove_route(stream_id: str, session: IBridgeSession) -> bool:
        """
        Remove the route of C{stream_id} if it points to C{session}; see L{StreamRoutes.remove_route}.
        """

    def attach(session: IBridgeSession) -> bool:
        """
        Bind a freshly upgraded bridge to this connection, so that it is closed when the connection ends.

        @return: C{False} (and C{session} closed with 1000 C{bridge session closed}) when the
            connection's bridges were already closed.
        """

    def detach(session: IBridgeSession) -> None:
        """
        Forget a bridge that has ended. Unknown sessions are ignored.
        """

    def close_bridges() -> int:
        """
        Close every routed and attached bridge with 1000 C{bridge session closed}, once.

        For a connection that ended by itself (its ws is already closed).

        @return: how many sessions this call closed (C{0} on later calls).
        """

    def close(code: int, reason: str) -> int:
        """
        Close the bridges as L{close_bridges} does, then the websocket with C{code} and C{reason}.
        Idempotent: the websocket is closed at most once.

        @return: how many sessions this call closed.
        """


class StreamRoutes:
    """
    One inbound connection's routes C{stream_id → session}, in the order they were added.
    """

    def __init__(self) -> None:
        self._routes: dict[str, IBridgeSession] = {}

    def add_route(self, stream_id: str, session: IBridgeSession) -> IBridgeSession | None:
        """
        Route C{stream_id} to C{session}.

        @return: the session that held C{stream_id} before (the caller closes it), or C{None} when there
            was none or it was C{session} itself.
        """
        prior = self._routes.get(stream_id)
        self._routes[stream_id] = session
        return None if prior is None or prior is session else prior

    def remove_route(self, stream_id: str, session: IBridgeSession) -> bool:
        """
        Remove the route of C{stream_id} only if it still points to C{session}, so that an evicted
        session's late cleanup never removes the route of the session that replaced it.

        @return: whether a route was removed.
        """
        if self._routes.get(stream_id) is not session:
            return False
        del self._routes[stream_id]
        return True

    def get(self, stream_id: str) -> IBridgeSession | None:
        """
        Return the session of C{stream_id}, or C{None}.
        """
        return self._routes.get(stream_id)

    def sessions(self) -> list[IBridgeSession]:
        """
        Return a snapshot of the routed sessions, in route order.
        """
        return list(self._routes.values())

    def snapshot_and_clear(self) -> list[IBridgeSession]:
        """
        Remove every route and return the sessions they pointed to, in route order.
        """
        sessions = list(self._routes.values())
        self._routes.clear()
        return sessions

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._routes


@implementer(IInboundConnection)
class InboundConnectionBase(abc.ABC):
    """
    The bridge bookkeeping of an inbound connection; subclasses close the actual websocket in
    L{_close_ws}.

    @ivar routes: the routed streams.
    """

    def __init__(self) -> None:
        self.routes = StreamRoutes()
        # A dict used as an insertion-ordered set: closing follows attach order.
        self._attached: dict[IBridgeSession, None] = {}
        self._bridges_closed = False
        self._ws_closed = False

    @property
    def bridges_closed(self) -> bool:
        """
        Whether this connection's bridges have been closed (it takes no new bridges).
        """
        return self._bridges_closed

    def add_route(self, stream_id: str, session: IBridgeSession) -> IBridgeSession | None:
        """
        See L{IInboundConnection.add_route}.
        """
        return self.routes.add_route(stream_id, session)

    def remove_route(self, stream_id: str, session: IBridgeSession) -> bool:
        """
        See L{IInboundConnection.remove_route}.
        """
        return self.routes.remove_route(stream_id, session)

    def attach(self, session: IBridgeSession) -> bool:
        """
        See L{IInboundConnection.attach}.
        """
        if self._bridges_closed:
            session.close(*BRIDGE_SESSION_CLOSED)
            return False
        self._attached[session] = None
        return True

    def detach(self, session: IBridgeSession) -> None:
        """
        See L{IInboundConnection.detach}.
        """
        self._attached.pop(session, None)

    def attached(self) -> list[IBridgeSession]:
        """
        Return a snapshot of the attached sessions, in attach order (e.g. to pause their reading).
        """
        return list(self._attached)

    def close_bridges(self) -> int:
        """
        See L{IInboundConnection.close_bridges}.
        """
        if self._bridges_closed:
            return 0
        self._bridges_closed = True
        # Snapshot and clear before closing anything: a session's close calls back into
        # remove_route/detach, which must find nothing to mutate mid-iteration.
        sessions = dict.fromkeys(self.routes.snapshot_and_clear())
        sessions.update(self._attached)
        self._attached.clear()
        for session in sessions:
            session.close(*BRIDGE_SESSION_CLOSED)
        return len(sessions)

    def close(self, code: int, reason: str) -> int:
        """
        See L{IInboundConnection.close}.
        """
        closed = self.close_bridges()
        if not self._ws_closed:
            self._ws_closed = True
            self._close_ws(code, reason)
        return closed

    @abc.abstractmethod
    def _close_ws(self, code: int, reason: str) -> None:
        """
        Close the websocket itself with C{code} and C{reason}. Called at most once, after the bridges.
        """


class ConnRegistry(Generic[_Conn]):
    """
    The live inbound connection of each executor: C{exe_id → connection}.
    """

    def __init__(self) -> None:
        self._conns: dict[str, _Conn] = {}

    def register(self, exe_id: str, conn: _Conn) -> _Conn | None:
        """
        Make C{conn} the connection of C{exe_id}.

        @return: the connection it replaced (the caller evicts it), or C{None} when there was none or it
            was C{conn} itself.
        """
        prior = self._conns.get(exe_id)
        self._conns[exe_id] = conn
        return None if prior is None or prior is conn else prior

    def lookup(self, exe_id: str) -> _Conn | None:
        """
        Return the connection of C{exe_id}, or C{None}.
        """
        return self._conns.get(exe_id)

    def unregister(self, exe_id: str, conn: _Conn) -> bool:
        """
        Remove C{exe_id} only if its connection is C{conn}: a late close of an evicted connection never
        removes the newer one.

        @return: whether it was removed.
        """
        if self._conns.get(exe_id) is not conn:
            return False
        del self._conns[exe_id]
        return True

    def connected_ids(self) -> list[str]:
        """
        Return a snapshot of the connected executor ids (order unspecified).
        """
        return list(self._conns)

    def connections(self) -> list[_Conn]:
        """
        Return a snapshot of the connections (e.g. to close them all at shutdown).
        """
        return list(self._conns.values())

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, exe_id: object) -> bool:
        return exe_id in self._conns


class SlotReleasedTwice(RuntimeError):
    """
    A L{Slot} was released a second time: a programming error that would corrupt the slot counters.
    """


class Slot:
    """
    One reserved bridge slot of an executor; L{release} it exactly once when the bridge ends.

    @ivar exe_id: the executor it counts against.
    """

    __slots__ = ("_released", "_slots", "exe_id")

    def __init__(self, slots: StreamSlots, exe_id: str) -> None:
        self._slots = slots
        self.exe_id = exe_id
        self._released = False

    @property
    def released(self) -> bool:
        """
        Whether L{release} has been called.
        """
        return self._released

    def release(self) -> None:
        """
        Give the slot back.

        @raise SlotReleasedTwice: when it was already released.
        """
        if self._released:
            raise SlotReleasedTwice(f"stream slot of {self.exe_id!r} released twice")
        self._released = True
        self._slots._release(self.exe_id)


class StreamSlots:
    """
    Per-executor counters of reserved bridge slots (from the slot check until the bridge ends).
    Counters that reach 0 are deleted, so idle executors cost nothing.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: slots per executor (C{CXG_MAX_STREAMS_PER_EXECUTOR}); 0 means unlimited.
        """
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def reserve(self, exe_id: str) -> Slot | None:
        """
        Reserve a slot for C{exe_id}.

        @return: the slot, or C{None} when the limit is non-zero and C{exe_id} already holds that many.
        """
        count = self._counts.get(exe_id, 0)
        if self.limit and count >= self.limit:
            return None
        self._counts[exe_id] = count + 1
        return Slot(self, exe_id)

    def _release(self, exe_id: str) -> None:
        count = self._counts[exe_id] - 1
        if count:
            self._counts[exe_id] = count
        else:
            del self._counts[exe_id]

    def count(self, exe_id: str) -> int:
        """
        Return how many slots C{exe_id} holds.
        """
        return self._counts.get(exe_id, 0)

    def counts(self) -> dict[str, int]:
        """
        Return a snapshot of the non-zero counters.
        """
        return dict(self._counts)
