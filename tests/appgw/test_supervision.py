"""
The interface suite of L{ISupervisor}: the real L{Supervisor} (over in-memory launcher and store)
and L{FakeSupervisor} behave the same way for the edges that use them.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw.appgw.supervision import AppServerEnd, AppServerHandle, ISupervisor
from codexgw.testing.fakesupervisor import FakeSupervisor
from tests.appgw.test_supervisor import RecordingAttachment, SupervisorCase


class SupervisorInterfaceTests:
    """
    What every L{ISupervisor} does. Cases provide C{supervisor}, C{settle()} and C{end(ws)} (the
    app-server of C{ws} goes away for reason C{idle}).
    """

    supervisor: Any

    def ensured(self, workspace_id: str) -> AppServerHandle:
        case: Any = self
        d = self.supervisor.ensure(workspace_id)
        case.settle()
        handle: AppServerHandle = case.successResultOf(d)
        return handle

    def test_provides(self) -> None:
        """
        The object provides L{ISupervisor}.
        """
        case: Any = self
        case.assertTrue(verifyObject(ISupervisor, self.supervisor))

    def test_ensure_same_handle(self) -> None:
        """
        Ensuring twice gives the same live handle with loopback URLs.
        """
        case: Any = self
        handle = self.ensured("ws_a")
        case.assertIs(handle, self.ensured("ws_a"))
        case.assertTrue(handle.ws_url.startswith("ws://127.0.0.1:"))
        case.assertEqual("http://" + handle.ws_url[len("ws://") :], handle.http_url)
        case.assertIsNone(handle.ended)

    def test_attachments_told_once(self) -> None:
        """
        Attached attachments hear how the app-server ended; detached ones do not; attaching to an
        ended handle is refused.
        """
        case: Any = self
        handle = self.ensured("ws_a")
        told, detached = RecordingAttachment(), RecordingAttachment()
        case.assertTrue(self.supervisor.attach(handle, told))
        case.assertTrue(self.supervisor.attach(handle, detached))
        self.supervisor.detach(handle, detached)
        case.end("ws_a")
        case.assertEqual([AppServerEnd("idle")], told.ends)
        case.assertEqual([], detached.ends)
        case.assertEqual(AppServerEnd("idle"), handle.ended)
        case.assertFalse(self.supervisor.attach(handle, RecordingAttachment()))
        case.assertIsNot(handle, self.ensured("ws_a"))

    def test_touch_and_pin(self) -> None:
        """
        Touching an unknown workspace is harmless; a pin's release is idempotent.
        """
        self.supervisor.touch("ws_unknown")
        unpin = self.supervisor.pin("ws_a")
        unpin()
        unpin()


class RealSupervisorInterfaceTests(SupervisorInterfaceTests, SupervisorCase):
    """
    L{Supervisor} passes the suite.
    """

    def end(self, workspace_id: str) -> None:
        """
        Stop it for idleness.
        """
        self.stop(workspace_id, "idle")


class FakeSupervisorInterfaceTests(SupervisorInterfaceTests, SynchronousTestCase):
    """
    L{FakeSupervisor} passes the suite.
    """

    def setUp(self) -> None:
        """
        A fake supervisor.
        """
        self.supervisor = FakeSupervisor("ws://127.0.0.1:4242")

    def settle(self) -> None:
        """
        Nothing is pending in the fake.
        """

    def end(self, workspace_id: str) -> None:
        """
        End it for idleness.
        """
        self.supervisor.end(workspace_id, "idle")
