"""
Tests for L{codexgw.appgw.codexversion}: the startup C{codex --version} check of C{app-gateway.md} §2
#2 — the pinned version passes, anything else (other output, failure to start, no answer within 5 s)
only logs C{codex version mismatch}. A fake process reactor and a L{Clock} stand in for processes and
time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.codexversion import (
    PINNED_CODEX_VERSION,
    check_codex_version,
    child_environment,
)
from tests.appgw.stubhttp import LogCollector


class FakeProcessTransport:
    """
    The transport of a fake child: records signals; C{exited} makes further signals fail.
    """

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.exited = False

    def signalProcess(self, signal: str) -> None:
        """
        Record C{signal}, or fail as Twisted does once the child has exited.
        """
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signal)


class FakeProcessReactor:
    """
    Records C{spawnProcess} calls and connects the protocol to a L{FakeProcessTransport}.
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.spawned: list[tuple[ProcessProtocol, str, list[str], dict[str, str]]] = []
        self.transport = FakeProcessTransport()

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> FakeProcessTransport:
        """
        Record the call (or raise the configured error) and connect the protocol.
        """
        if self.error is not None:
            raise self.error
        self.spawned.append((processProtocol, executable, list(args), dict(env or {})))
        processProtocol.makeConnection(self.transport)
        return self.transport

    @property
    def protocol(self) -> ProcessProtocol:
        """
        The protocol of the one spawned child.
        """
        assert len(self.spawned) == 1
        return self.spawned[0][0]


class CheckTests(SynchronousTestCase):
    """
    L{check_codex_version}.
    """

    def setUp(self) -> None:
        """
        A fake reactor, a clock and a log collector.
        """
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.logs = LogCollector()

    def check(self, environ: Mapping[str, str] | None = None) -> Any:
        """
        Start the check of C{/opt/codex}.
        """
        return check_codex_version(
            self.reactor,  # type: ignore[arg-type]
            self.clock,
            "/opt/codex",
            environ or {},
            log=self.logs.log,
        )

    def test_match(self) -> None:
        """
        Output containing the pinned version passes without a log line; the child is
        C{<bin> --version} and no timer is left.
        """
        d = self.check()
        protocol, executable, args, _ = self.reactor.spawned[0]
        self.assertEqual((executable, args), ("/opt/codex", ["/opt/codex", "--version"]))
        protocol.outReceived(b"codex-cli ")
        protocol.outReceived(PINNED_CODEX_VERSION.encode() + b"\n")
        protocol.processEnded(Failure(ProcessDone(0)))
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.logs.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_match_on_stderr_and_exit_status(self) -> None:
        """
        The version may come on standard error, and the exit status does not matter.
        """
        d = self.check()
        self.reactor.protocol.errReceived(b"codex 0.169.0")
        self.reactor.protocol.processEnded(Failure(ProcessTerminated(1)))
        self.assertIs(self.successResultOf(d), True)

    def test_mismatch(self) -> None:
        """
        Other output logs the warning C{codex version mismatch} (with what was printed) and the
        check still succeeds, with C{False}.
        """
        d = self.check()
        self.reactor.protocol.outReceived(b"codex-cli 0.170.0\n")
        self.reactor.protocol.processEnded(Failure(ProcessDone(0)))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.logs.levels(), ["warn"])
        [message] = self.logs.messages()
        self.assertTrue(message.startswith("codex version mismatch"), message)
        self.assertIn("0.170.0", message)
        self.assertIn("want 0.169.0", message)

    def test_timeout(self) -> None:
        """
        No exit within 5 s: the child is killed and the warning logged; nothing before 5 s.
        """
        d = self.check()
        self.clock.advance(4.75)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertEqual(self.reactor.transport.signals, ["KILL"])
        self.assertIs(self.successResultOf(d), False)
        [message] = self.logs.messages()
        self.assertIn("codex version mismatch", message)
        self.assertIn("within 5s", message)
        # The killed child's exit afterwards changes nothing.
        self.reactor.transport.exited = True
        self.reactor.protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(len(self.logs.events), 1)

    def test_timeout_after_exit(self) -> None:
        """
        A child that exited just as the deadline fires is not signalled (no error escapes).
        """
        d = self.check()
        self.reactor.transport.exited = True
        self.clock.advance(5)
        self.assertIs(self.successResultOf(d), False)

    def test_cannot_start(self) -> None:
        """
        A binary that cannot be started logs the warning with the reason; the check succeeds with
        C{False}.
        """
        self.reactor.error = OSError("exec format error")
        d = self.check()
        self.assertIs(self.successResultOf(d), False)
        [message] = self.logs.messages()
        self.assertIn("codex version mismatch", message)
        self.assertIn("exec format error", message)

    def test_environment(self) -> None:
        """
        The child's environment lacks every C{CXG_*} and C{AWS_*} variable.
        """
        self.check({"PATH": "/bin", "HOME": "/root", "CXG_CAPTOKEN_HMAC_SECRET": "x",
                    "AWS_SECRET_ACCESS_KEY": "y", "MY_CXG_": "z"})  # fmt: skip
        self.assertEqual(self.reactor.spawned[0][3], {"PATH": "/bin", "HOME": "/root", "MY_CXG_": "z"})

    def test_child_environment(self) -> None:
        """
        L{child_environment} filters by prefix only.
        """
        self.assertEqual(
            child_environment({"CXG_A": "1", "AWS_B": "2", "cxg_c": "3", "X": "4"}),
            {"cxg_c": "3", "X": "4"},
        )

    def test_output_bounded(self) -> None:
        """
        A child printing a lot is read only up to the bound (and the version beyond it is not seen).
        """
        d = self.check()
        self.reactor.protocol.outReceived(b"x" * (64 * 1024))
        self.reactor.protocol.outReceived(b"0.169.0")
        self.reactor.protocol.processEnded(Failure(ProcessDone(0)))
        self.assertIs(self.successResultOf(d), False)
