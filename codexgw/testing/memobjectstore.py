"""
An in-memory L{IObjectStore <codexgw.appgw.objectstore.IObjectStore>} for unit tests of the app
gateway.

L{MemoryObjectStore} keeps objects as bytes in a dictionary and answers at once (already-fired
L{Deferred}s), with the semantics of the real stores: it passes the shared interface tests in
C{tests.appgw.test_objectstore}. Local files are read and written synchronously (they are small in
tests); C{get} writes its file with mode 0600 through a rename, like the real stores. On top of that
a test can script the store's misbehaviour:

 - L{MemoryObjectStore.failure}: every call fails with this error (the store is down);
 - L{MemoryObjectStore.stalled}: calls hang until cancelled or until L{MemoryObjectStore.resume}
   runs them;
 - L{MemoryObjectStore.calls}: C{(method, key)} of every call, in order.

Only tests and the dev stack import this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.appgw.objectstore import IObjectStore, ObjectNotFound, ObjectStoreError, check_key
from codexgw.appgw.safefs import PRIVATE_FILE_MODE, AtomicFile


@implementer(IObjectStore)
class MemoryObjectStore:
    """
    An in-memory L{IObjectStore <codexgw.appgw.objectstore.IObjectStore>}.

    @ivar objects: the stored objects by key (tests may read and change it).
    @ivar calls: C{(method, key)} of every call, oldest first.
    @ivar failure: when set, every call fails with it (after its key is checked).
    @ivar stalled: when true, calls wait (cancellable) until L{resume}.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.failure: Exception | None = None
        self.stalled = False
        self._pending: list[tuple[Deferred[None], Callable[[], None]]] = []

    def resume(self) -> None:
        """
        Stop stalling and run the calls that were waiting, in order (cancelled ones are dropped).
        """
        self.stalled = False
        pending, self._pending = self._pending, []
        for waiting, operation in pending:
            if not waiting.called:
                self._settle(operation).chainDeferred(waiting)

    def _settle(self, operation: Callable[[], None]) -> Deferred[None]:
        if self.failure is not None:
            return fail(self.failure)
        try:
            operation()
        except Exception:
            return fail(Failure())
        return succeed(None)

    def _call(self, method: str, key: str, operation: Callable[[], None]) -> Deferred[None]:
        self.calls.append((method, key))
        try:
            check_key(key)
        except ValueError:
            return fail()
        if self.stalled:
            waiting: Deferred[None] = Deferred()
            self._pending.append((waiting, operation))
            return waiting
        return self._settle(operation)

    def put(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.put <codexgw.appgw.objectstore.IObjectStore.put>}.
        """

        def put() -> None:
            try:
                with open(path, "rb") as source:
                    data = source.read()
            except OSError as e:
                raise ObjectStoreError(f"put {key}: cannot read {path}: {e.strerror}") from e
            self.objects[key] = data

        return self._call("put", key, put)

    def get(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.get <codexgw.appgw.objectstore.IObjectStore.get>}.
        """

        def get() -> None:
            if key not in self.objects:
                raise ObjectNotFound(key)
            try:
                # Like the real stores: the target's directory is the caller's (followed if a
                # symlink), the file appears whole through a rename.
                dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    with AtomicFile(dir_fd, os.path.basename(path), PRIVATE_FILE_MODE, ".get-") as out:
                        out.file.write(self.objects[key])
                        out.commit()
                finally:
                    os.close(dir_fd)
            except OSError as e:
                raise ObjectStoreError(f"get {key}: cannot write {path}: {e.strerror}") from e

        return self._call("get", key, get)

    def delete(self, key: str) -> Deferred[None]:
        """
        See L{IObjectStore.delete <codexgw.appgw.objectstore.IObjectStore.delete>}.
        """

        def delete() -> None:
            self.objects.pop(key, None)

        return self._call("delete", key, delete)
