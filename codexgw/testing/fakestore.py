"""
An in-memory L{IStore} for unit tests of the exec gateway.

L{FakeStore} keeps executors and bindings in dictionaries and answers at once (already-fired
L{Deferred}s), with the same semantics as the real stores: it passes the shared interface tests in
C{tests.execgw.test_store}. On top of that it lets a test script the database's misbehaviour:

 - L{FakeStore.failure}: every call fails with this error (the database is down);
 - L{FakeStore.stalled}: calls hang until cancelled (they then fail with L{StoreUnavailable}, as the
   real stores do) or until L{FakeStore.resume} runs them;
 - L{FakeStore.calls}: the names of the methods called, in order (to prove that a path made no store
   call).

Only tests and the dev stack import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.execgw.store import (
    BindConflict,
    DuplicateExecutor,
    ExecutorRecord,
    IStore,
    StoreError,
    WorkspaceExecutor,
    as_utc,
    cancelled_error,
    closed_error,
    only_connected,
    utc_now,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Binding:
    name: str
    description: str
    is_default: bool
    created_at: datetime


@implementer(IStore)
class FakeStore:
    """
    An in-memory L{IStore}.

    @ivar calls: names of the L{IStore} methods called, oldest first.
    @ivar failure: when set, every call but C{close} fails with it.
    @ivar stalled: when true, calls wait (cancellable) until L{resume}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: the store's clock for "now".
        """
        self._clock = clock
        self._executors: dict[str, tuple[ExecutorRecord, str]] = {}
        self._bindings: dict[tuple[str, str], _Binding] = {}
        self._closed = False
        self._pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []
        self.calls: list[str] = []
        self.failure: StoreError | None = None
        self.stalled = False

    def resume(self) -> None:
        """
        Stop stalling and run the calls that were waiting, in order.
        """
        self.stalled = False
        pending, self._pending = self._pending, []
        for waiting, operation in pending:
            if not waiting.called:
                self._settle(operation).chainDeferred(waiting)

    def _settle(self, operation: Callable[[], _T]) -> Deferred[_T]:
        if self._closed:
            return fail(closed_error())
        if self.failure is not None:
            return fail(self.failure)
        try:
            return succeed(operation())
        except Exception:
            return fail(Failure())

    def _call(self, name: str, operation: Callable[[], _T]) -> Deferred[_T]:
        self.calls.append(name)
        if self.stalled and not self._closed:
            waiting: Deferred[_T] = Deferred(lambda d: d.errback(cancelled_error()))
            self._pending.append((waiting, operation))
            return waiting
        return self._settle(operation)

    # -- IStore

    def create_executor(self, record: ExecutorRecord, token_hash: str) -> Deferred[None]:
        """
        See L{IStore.create_executor}.
        """

        def create() -> None:
            stored = replace(
                record,
                registered_at=as_utc(record.registered_at),
                last_seen_at=None if record.last_seen_at is None else as_utc(record.last_seen_at),
            )
            if record.exe_id in self._executors:
                raise DuplicateExecutor(f"executor {record.exe_id!r} already exists")
            self._executors[record.exe_id] = (stored, token_hash)

        return self._call("create_executor", create)

    def get_executor(self, exe_id: str) -> Deferred[ExecutorRecord | None]:
        """
        See L{IStore.get_executor}.
        """

        def get() -> ExecutorRecord | None:
            found = self._executors.get(exe_id)
            return None if found is None else found[0]

        return self._call("get_executor", get)

    def get_registration_token_hash(self, exe_id: str) -> Deferred[str | None]:
        """
        See L{IStore.get_registration_token_hash}.
        """

        def get() -> str | None:
            found = self._executors.get(exe_id)
            return None if found is None else found[1]

        return self._call("get_registration_token_hash", get)

    def update_last_seen(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.update_last_seen}.
        """
        now = utc_now(self._clock)

        def update() -> None:
            found = self._executors.get(exe_id)
            if found is not None:
                self._executors[exe_id] = (replace(found[0], last_seen_at=now), found[1])

        return self._call("update_last_seen", update)

    def delete_executor(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.delete_executor}.
        """

        def delete() -> None:
            self._executors.pop(exe_id, None)
            for key in [key for key in self._bindings if key[1] == exe_id]:
                del self._bindings[key]

        return self._call("delete_executor", delete)

    def bind_workspace_executor(
        self, workspace_id: str, exe_id: str, name: str, description: str, is_default: bool
    ) -> Deferred[None]:
        """
        See L{IStore.bind_workspace_executor}.
        """
        now = utc_now(self._clock)

        def bind() -> None:
            if exe_id not in self._executors:
                raise BindConflict(f"unknown executor {exe_id!r}")
            for (wid, other), binding in self._bindings.items():
                if wid == workspace_id and other != exe_id and binding.name == name:
                    raise BindConflict(f"name {name!r} is already used in workspace {workspace_id!r}")
            existing = self._bindings.get((workspace_id, exe_id))
            created_at = now if existing is None else existing.created_at
            self._bindings[(workspace_id, exe_id)] = _Binding(name, description, is_default, created_at)

        return self._call("bind_workspace_executor", bind)

    def unbind_workspace_executor(self, workspace_id: str, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.unbind_workspace_executor}.
        """

        def unbind() -> None:
            self._bindings.pop((workspace_id, exe_id), None)

        return self._call("unbind_workspace_executor", unbind)

    def owns_executor(self, workspace_id: str, exe_id: str) -> Deferred[bool]:
        """
        See L{IStore.owns_executor}.
        """
        return self._call("owns_executor", lambda: (workspace_id, exe_id) in self._bindings)

    def _list(self, workspace_id: str) -> list[WorkspaceExecutor]:
        rows = sorted(
            (
                (binding.created_at, exe_id, binding)
                for (wid, exe_id), binding in self._bindings.items()
                if wid == workspace_id
            ),
            key=lambda row: (row[0], row[1]),
        )
        return [
            WorkspaceExecutor(
                exe_id=exe_id,
                name=binding.name,
                description=binding.description,
                is_default=binding.is_default,
                last_seen_at=self._executors[exe_id][0].last_seen_at,
            )
            for _, exe_id, binding in rows
        ]

    def list_workspace_executors(self, workspace_id: str) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.list_workspace_executors}.
        """
        return self._call("list_workspace_executors", lambda: self._list(workspace_id))

    def connected_executors_for_workspace(
        self, workspace_id: str, connected_ids: Collection[str]
    ) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.connected_executors_for_workspace}.
        """
        connected = frozenset(connected_ids)
        return self._call(
            "connected_executors_for_workspace",
            lambda: only_connected(self._list(workspace_id), connected),
        )

    def ping(self) -> Deferred[None]:
        """
        See L{IStore.ping}.
        """
        return self._call("ping", lambda: None)

    def close(self) -> Deferred[None]:
        """
        See L{IStore.close}; calls still stalled fail with L{StoreUnavailable}.
        """
        self.calls.append("close")
        self._closed = True
        pending, self._pending = self._pending, []
        for waiting, _ in pending:
            if not waiting.called:
                waiting.errback(closed_error())
        return succeed(None)
