"""
An in-memory L{ISupervisor} for unit tests of the app gateway's edges (TUI proxy, broker, routes).

L{FakeSupervisor} spawns nothing: C{ensure} answers with a handle whose URLs the test chose (usually
those of an in-process L{codexgw.testing.fakeappserver.FakeAppServer}), or with the failure the test
queued. The test ends a workspace's app-server with L{FakeSupervisor.end}, which tells every attachment
exactly as the real supervisor does (§5.5 step 1, §5.6). It passes the same interface tests as
L{codexgw.appgw.supervisor.Supervisor} (C{tests.appgw.test_supervision}).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from codexgw.appgw.supervision import (
    AppServerEnd,
    AppServerHandle,
    EndReason,
    IAttachment,
    ISupervisor,
)

_pids = itertools.count(40000)


@implementer(ISupervisor)
class FakeSupervisor:
    """
    L{ISupervisor} in memory.

    @ivar ws_url: the C{ws://} URL of handles made from now on (an in-process fake app-server's).
    @ivar failures: exceptions the next C{ensure} calls fail with, consumed in order.
    @ivar pending: when set to a list, C{ensure} does not answer at once; its Deferreds are appended
        and the test fires them (the spawn is "in progress").
    @ivar handles: the live handle of each workspace.
    @ivar attachments: the attachments of each live handle.
    @ivar touches: how often each workspace was touched (C{ensure} hits included).
    @ivar pins: live pins per workspace.
    @ivar ensures: workspace ids in the order C{ensure} was called.
    """

    def __init__(self, ws_url: str = "ws://127.0.0.1:9") -> None:
        self.ws_url = ws_url
        self.failures: list[BaseException] = []
        self.pending: list[tuple[str, Deferred[AppServerHandle]]] | None = None
        self.handles: dict[str, AppServerHandle] = {}
        self.attachments: dict[int, list[IAttachment]] = {}
        self.touches: Counter[str] = Counter()
        self.pins: Counter[str] = Counter()
        self.ensures: list[str] = []

    def _handle(self, workspace_id: str) -> AppServerHandle:
        handle = self.handles.get(workspace_id)
        if handle is None:
            http_url = "http://" + self.ws_url.removeprefix("ws://")
            handle = AppServerHandle(workspace_id, next(_pids), self.ws_url, http_url)
            self.handles[workspace_id] = handle
            self.attachments[id(handle)] = []
        return handle

    def ensure(self, workspace_id: str) -> Deferred[AppServerHandle]:
        """
        See L{ISupervisor.ensure}.
        """
        self.ensures.append(workspace_id)
        self.touches[workspace_id] += 1
        if self.failures:
            return fail(self.failures.pop(0))
        if self.pending is not None:
            d: Deferred[AppServerHandle] = Deferred()
            self.pending.append((workspace_id, d))
            return d
        return succeed(self._handle(workspace_id))

    def complete_pending(self) -> None:
        """
        Answer every pending C{ensure} with its workspace's handle.
        """
        pending, self.pending = self.pending or [], []
        for workspace_id, d in pending:
            d.callback(self._handle(workspace_id))

    def attach(self, handle: AppServerHandle, attachment: IAttachment) -> bool:
        """
        See L{ISupervisor.attach}.
        """
        if self.handles.get(handle.workspace_id) is not handle:
            return False
        self.attachments[id(handle)].append(attachment)
        return True

    def detach(self, handle: AppServerHandle, attachment: IAttachment) -> None:
        """
        See L{ISupervisor.detach}.
        """
        attached = self.attachments.get(id(handle), [])
        if attachment in attached:
            attached.remove(attachment)

    def touch(self, workspace_id: str) -> None:
        """
        See L{ISupervisor.touch}.
        """
        self.touches[workspace_id] += 1

    def pin(self, workspace_id: str) -> Callable[[], None]:
        """
        See L{ISupervisor.pin}.
        """
        self.pins[workspace_id] += 1
        released = False

        def unpin() -> None:
            nonlocal released
            if not released:
                released = True
                self.pins[workspace_id] -= 1

        return unpin

    def attached(self, workspace_id: str) -> list[IAttachment]:
        """
        The attachments of the workspace's live handle (empty when it has none).
        """
        handle = self.handles.get(workspace_id)
        return list(self.attachments.get(id(handle), [])) if handle is not None else []

    def end(self, workspace_id: str, reason: EndReason, exit_status: str | None = None) -> None:
        """
        End the workspace's app-server: mark the handle ended and tell every attachment.
        """
        handle = self.handles.pop(workspace_id, None)
        if handle is None:
            return
        handle.ended = AppServerEnd(reason, exit_status)
        for attachment in self.attachments.pop(id(handle), []):
            attachment.app_server_ended(handle.ended)
