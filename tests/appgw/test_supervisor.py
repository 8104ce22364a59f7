"""
Unit tests of L{codexgw.appgw.supervisor.Supervisor} (C{app-gateway.md} §5, §13 items 28 and 31–43):
in-memory launcher, object store and exec gateway, a manual clock and thread pool, real temporary
directories for the homes (the supervisor's own filesystem steps are what is tested).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tarfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from codexgw.appgw.captoken import CapTokenMinter
from codexgw.appgw.clients import ExecGatewayClient, IWorkspaceTokenSource
from codexgw.appgw.codexhome import HomeDirs
from codexgw.appgw.config import load_config
from codexgw.appgw.loopback import LoopbackTokens
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.objectstore import ObjectStoreUnavailable
from codexgw.appgw.snapshot import home_key
from codexgw.appgw.spawnplan import SpawnPlanner
from codexgw.appgw.staterecords import StateRecords
from codexgw.appgw.supervision import (
    AppServerEnd,
    EnsureError,
    IAttachment,
    SpawnCapacityError,
    SupervisorStopping,
)
from codexgw.appgw.supervisor import STOP_GRACE, Supervisor
from codexgw.testing.fakelauncher import FakeLauncher
from codexgw.testing.memobjectstore import MemoryObjectStore
from tests.appgw.stubhttp import StubServer
from tests.appgw.test_clients import EXEC_SECRET, EXEC_URL, exec_gateway
from tests.appgw.threads import ManualReactor

SECRET = "supervisor-tests-secret-0123456789abcdef"


def gateway_config(tmp: str, **extra: str) -> Any:
    """
    A valid configuration whose homes live under C{tmp}.
    """
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CXG_CODEX_BIN": "/bin/sh",
        "CXG_EXEC_GATEWAY_URL": "ws://127.0.0.1:9",
        "CXG_EXEC_GATEWAY_INTERNAL_URL": "http://127.0.0.1:9",
        "CXG_EXEC_GATEWAY_INTERNAL_SECRET": SECRET,
        "CXG_CAPTOKEN_HMAC_SECRET": SECRET,
        "CXG_INBOUND_HMAC_SECRET": SECRET,
        "CXG_TMP_ROOT": os.path.join(tmp, "homes"),
        "CXG_OBJECT_DIR": os.path.join(tmp, "objects"),
        "CXG_ENV_MCP_COMMAND": sys.executable,
        "CXG_CODEX_API_KEY": "static-key",
        "CXG_PROJECT_TRUSTED_PATHS": tmp,
        **extra,
    }
    return load_config(env)


@implementer(IAttachment)
class RecordingAttachment:
    """
    An attachment that records how its app-server ended.
    """

    def __init__(self) -> None:
        self.ends: list[AppServerEnd] = []

    def app_server_ended(self, end: AppServerEnd) -> None:
        """
        Record C{end}.
        """
        self.ends.append(end)


@implementer(IWorkspaceTokenSource)
class TokenSource:
    """
    An L{IWorkspaceTokenSource} answering a fixed token.
    """

    def fetch(self, workspace_id: str) -> Deferred[str]:
        """
        C{llm-<workspace_id>}.
        """
        d: Deferred[str] = Deferred()
        d.callback(f"llm-{workspace_id}")
        return d


class SupervisorCase(SynchronousTestCase):
    """
    A supervisor over fakes.
    """

    max_spawns = 64
    concurrency = 4
    idle = 0.0

    def setUp(self) -> None:
        """
        Build the supervisor.
        """
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.config = gateway_config(self.tmp)
        self.reactor = ManualReactor()
        self.homes = HomeDirs(self.config.store.tmp_root)
        self.homes.ensure_root()
        self.store = MemoryObjectStore()
        self.records = StateRecords(self.homes)
        self.launcher = FakeLauncher(auto_succeed=True)
        self.minter = CapTokenMinter(self.config.captoken_hmac_secret, 3600, self.reactor)
        self.tokens = LoopbackTokens()
        self.exec_server = StubServer(exec_gateway)
        self.metrics = AppMetrics()
        self.planner = SpawnPlanner(
            self.config,
            self.minter,
            self.tokens,
            lambda: "http://127.0.0.1:8086",
            TokenSource(),
            environ={"PATH": "/bin", "CXG_SECRET": "x", "AWS_SECRET_ACCESS_KEY": "y"},
        )
        self.supervisor = self.make_supervisor()

    def make_supervisor(self) -> Supervisor:
        """
        A supervisor over this case's fakes.
        """
        return Supervisor(
            clock=self.reactor,
            reactor=self.reactor,
            homes=self.homes,
            store=self.store,
            records=self.records,
            launcher=self.launcher,
            planner=self.planner,
            loopback_tokens=self.tokens,
            minter=self.minter,
            exec_gateway=ExecGatewayClient(self.exec_server.http, self.reactor, EXEC_URL, EXEC_SECRET),
            metrics=self.metrics,
            max_spawns=self.max_spawns,
            spawn_concurrency=self.concurrency,
            idle_shutdown=self.idle,
            start_time_of=lambda pid: f"start-{pid}",
        )

    def settle(self) -> None:
        """
        Run queued worker-thread work and in-memory HTTP.
        """
        for _ in range(10):
            self.reactor.pool.run_all()
            self.exec_server.flush()

    def ensure(self, workspace_id: str) -> Any:
        """
        Ensure and settle; return the handle.
        """
        d = self.supervisor.ensure(workspace_id)
        self.settle()
        return self.successResultOf(d)

    def stop(self, workspace_id: str, reason: Any = "idle") -> None:
        """
        Stop and settle.
        """
        d = self.supervisor.stop(workspace_id, reason)
        self.settle()
        self.successResultOf(d)

    def home(self, workspace_id: str) -> str:
        """
        The workspace's home path.
        """
        return os.path.join(self.config.store.tmp_root, workspace_id)

    def stored_names(self, workspace_id: str) -> list[str]:
        """
        The member names of the workspace's stored tarball.
        """
        data = self.store.objects[home_key(workspace_id)]
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            return archive.getnames()


class EnsureTests(SupervisorCase):
    """
    §5.3: one process per workspace, spawned with the right configuration.
    """

    def test_one_process_for_sequential_and_concurrent_ensures(self) -> None:
        """
        Two sequential and ten concurrent ensures of C{ws_a} → one launch, the same URL.
        """
        first = self.ensure("ws_a")
        self.assertIs(first, self.ensure("ws_a"))
        self.supervisor.stop("ws_a", "idle")
        self.settle()
        self.launcher.auto_succeed = False
        pending = [self.supervisor.ensure("ws_a") for _ in range(10)]
        self.settle()
        self.assertEqual(1, len(self.launcher.launches))
        self.launcher.launches[0].succeed()
        self.settle()
        handles = {id(self.successResultOf(d)) for d in pending}
        self.assertEqual(1, len(handles))
        self.assertEqual(2, len(self.launcher.history))

    def test_environment_and_config(self) -> None:
        """
        The environment drops C{CXG_*} and C{AWS_*}, the workspace token overrides the static key,
        C{CODEX_HOME} is the home; C{config.toml} (0600) carries the env-mcp section with the
        loopback token, which is live; the state record says C{running}.
        """
        handle = self.ensure("ws_a")
        (launch,) = self.launcher.history
        self.assertEqual(
            {"PATH": "/bin", "CODEX_API_KEY": "llm-ws_a", "CODEX_HOME": self.home("ws_a")},
            launch.environment,
        )
        self.assertEqual(self.tmp, launch.cwd)
        config_path = os.path.join(self.home("ws_a"), "config.toml")
        self.assertEqual(0o600, os.stat(config_path).st_mode & 0o777)
        with open(config_path) as f:
            text = f.read()
        self.assertIn("[mcp_servers.agentserver]", text)
        self.assertEqual(1, len(self.tokens))
        record = self.records.read("ws_a")
        assert record is not None
        self.assertEqual(
            ("running", handle.pid, f"start-{handle.pid}"), (record.state, record.pid, record.start_time)
        )

    def test_builder_error(self) -> None:
        """
        A configuration that cannot be built fails with C{config builder: …}; nothing is spawned.
        """
        self.minter = CapTokenMinter(None, 3600, self.reactor)
        self.planner._minter = self.minter
        failure = self.failureResultOf(self.supervisor.ensure("ws_a"), EnsureError)
        self.assertEqual("config builder: captoken: empty secret", str(failure.value))
        self.assertEqual([], self.launcher.history)

    def test_launch_failure(self) -> None:
        """
        A failed launch fails the ensure with C{spawn: <detail>}, removes the fresh home and its
        record, and revokes the loopback token.
        """
        self.launcher.auto_succeed = False
        d = self.supervisor.ensure("ws_a")
        self.settle()
        self.launcher.launches[0].fail("read listen line: EOF")
        self.settle()
        failure = self.failureResultOf(d, EnsureError)
        self.assertEqual("spawn: read listen line: EOF", str(failure.value))
        self.assertFalse(os.path.exists(self.home("ws_a")))
        self.assertIsNone(self.records.read("ws_a"))
        self.assertEqual(0, len(self.tokens))
        self.assertEqual(0, self.supervisor.counts().live)

    def test_restore_failure_leaves_no_home(self) -> None:
        """
        A store failure other than not-found, or an unsafe tarball, fails the ensure and leaves no
        home directory.
        """
        self.store.failure = ObjectStoreUnavailable("store down")
        failure = self.failureResultOf(self.supervisor.ensure("ws_a"), EnsureError)
        self.assertTrue(str(failure.value).startswith("object store download: "))
        self.assertFalse(os.path.exists(self.home("ws_a")))
        self.store.failure = None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            info = tarfile.TarInfo("../escape")
            archive.addfile(info, io.BytesIO(b""))
        self.store.objects[home_key("ws_a")] = buffer.getvalue()
        d = self.supervisor.ensure("ws_a")
        self.settle()
        failure = self.failureResultOf(d, EnsureError)
        self.assertTrue(str(failure.value).startswith("restore: "))
        self.assertFalse(os.path.exists(self.home("ws_a")))
        self.assertEqual([], self.launcher.history)

    def test_cancelled_while_queued(self) -> None:
        """
        An ensure cancelled while waiting for the workspace's lock leaves the queue; the spawn
        under way completes for the others.
        """
        self.launcher.auto_succeed = False
        first = self.supervisor.ensure("ws_a")
        second = self.supervisor.ensure("ws_a")
        self.settle()
        second.cancel()
        self.failureResultOf(second)
        self.launcher.launches[0].succeed()
        self.settle()
        self.successResultOf(first)
        self.assertEqual(1, len(self.launcher.history))

    def test_ensure_after_shutdown(self) -> None:
        """
        Once shutdown began, ensure fails with C{gateway shutting down}.
        """
        self.supervisor.shutdown_all()
        self.settle()
        failure = self.failureResultOf(self.supervisor.ensure("ws_a"), SupervisorStopping)
        self.assertEqual("gateway shutting down", str(failure.value))


class AdmissionTests(SupervisorCase):
    """
    §5.7: the global cap and the spawn concurrency.
    """

    max_spawns = 2
    concurrency = 1

    def test_capacity(self) -> None:
        """
        With two live processes a third workspace fails with L{SpawnCapacityError}; once one is
        stopped it succeeds.
        """
        self.ensure("ws_a")
        self.ensure("ws_b")
        failure = self.failureResultOf(self.supervisor.ensure("ws_c"), SpawnCapacityError)
        self.assertEqual("spawn capacity reached (2 app-servers live)", str(failure.value))
        self.stop("ws_a")
        self.ensure("ws_c")

    def test_spawns_never_overlap(self) -> None:
        """
        With concurrency 1, three workspaces ensured at once launch one after the other.
        """
        self.max_spawns = 5
        self.supervisor = self.make_supervisor()
        self.launcher.auto_succeed = False
        pending = [self.supervisor.ensure(ws) for ws in ("ws_a", "ws_b", "ws_c")]
        self.settle()
        for _ in range(3):
            self.assertEqual(1, len(self.launcher.launches))
            self.launcher.launches[0].succeed()
            self.settle()
        for d in pending:
            self.successResultOf(d)


class StopTests(SupervisorCase):
    """
    §5.5: stop ends the group, uploads the home and forgets the workspace.
    """

    def test_stop_uploads_and_removes(self) -> None:
        """
        Stop: attachments are told, SIGTERM then SIGKILL to the group, the tarball lacks
        C{config.toml}, the home and record are removed, the loopback token is revoked and the
        turn's tokens are revoked at the exec gateway.
        """
        handle = self.ensure("ws_a")
        attachment = RecordingAttachment()
        self.assertTrue(self.supervisor.attach(handle, attachment))
        with open(os.path.join(self.home("ws_a"), "marker.txt"), "w") as f:
            f.write("m")
        self.stop("ws_a")
        self.assertEqual([AppServerEnd("idle")], attachment.ends)
        process = self.launcher.history[0].process
        self.assertEqual([signal.SIGTERM, signal.SIGKILL], process.signals)
        names = self.stored_names("ws_a")
        self.assertTrue(any(n.endswith("marker.txt") for n in names))
        self.assertFalse(any(n.endswith("config.toml") for n in names))
        self.assertFalse(os.path.exists(self.home("ws_a")))
        self.assertIsNone(self.records.read("ws_a"))
        self.assertEqual(0, len(self.tokens))
        self.assertTrue(any(b"revoke-turn" in r.uri for r in self.exec_server.requests))
        self.assertFalse(self.supervisor.attach(handle, attachment))

    def test_sigterm_ignored(self) -> None:
        """
        A process ignoring SIGTERM is SIGKILLed after the grace period.
        """
        self.launcher.exits_on_sigterm = False
        self.ensure("ws_a")
        d = self.supervisor.stop("ws_a", "idle")
        self.settle()
        self.assertNoResult(d)
        self.reactor.advance(STOP_GRACE)
        self.settle()
        self.successResultOf(d)
        self.assertEqual(
            [signal.SIGTERM, signal.SIGKILL, signal.SIGKILL], self.launcher.history[0].process.signals
        )

    def test_marker_survives_new_supervisor(self) -> None:
        """
        A marker written into the home survives stop and a respawn by a new supervisor.
        """
        self.ensure("ws_a")
        with open(os.path.join(self.home("ws_a"), "marker.txt"), "w") as f:
            f.write("kept")
        self.stop("ws_a")
        self.supervisor = self.make_supervisor()
        self.ensure("ws_a")
        with open(os.path.join(self.home("ws_a"), "marker.txt")) as f:
            self.assertEqual("kept", f.read())

    def test_upload_failure_keeps_home(self) -> None:
        """
        A failed upload keeps the home as C{upload-pending}; the next ensure reuses it without a
        download; a later successful stop uploads it.
        """
        self.ensure("ws_a")
        with open(os.path.join(self.home("ws_a"), "marker.txt"), "w") as f:
            f.write("pending")
        self.store.failure = ObjectStoreUnavailable("down")
        self.stop("ws_a")
        record = self.records.read("ws_a")
        assert record is not None
        self.assertEqual("upload-pending", record.state)
        self.store.failure = None
        calls = len(self.store.calls)
        self.ensure("ws_a")
        self.assertFalse(any(m == "get" for m, _ in self.store.calls[calls:]))
        self.assertTrue(os.path.exists(os.path.join(self.home("ws_a"), "marker.txt")))
        self.stop("ws_a")
        self.assertTrue(any(n.endswith("marker.txt") for n in self.stored_names("ws_a")))


class CrashTests(SupervisorCase):
    """
    §5.6: an exit the supervisor did not cause.
    """

    def test_crash_cleanup_and_respawn(self) -> None:
        """
        The process dies: attachments hear C{crash} with the status, the group is SIGKILLed, the
        home uploaded; the next ensure spawns a new process with a new URL.
        """
        handle = self.ensure("ws_a")
        attachment = RecordingAttachment()
        self.supervisor.attach(handle, attachment)
        process = self.launcher.history[0].process
        process.exit("signal 9")
        self.settle()
        self.assertEqual([AppServerEnd("crash", "signal 9")], attachment.ends)
        self.assertEqual([signal.SIGKILL], process.signals)
        self.assertIn(home_key("ws_a"), self.store.objects)
        again = self.ensure("ws_a")
        self.assertNotEqual(handle.ws_url, again.ws_url)


class ReaperTests(SupervisorCase):
    """
    §5.11: idle entries are stopped; touched and pinned ones are not.
    """

    idle = 0.1

    def setUp(self) -> None:
        """
        Start the reaper.
        """
        super().setUp()
        self.supervisor.start()

    def test_idle_reaped(self) -> None:
        """
        An idle entry is stopped (uploaded, TUI told C{idle}); a touched one survives.
        """
        handle = self.ensure("ws_a")
        self.ensure("ws_b")
        attachment = RecordingAttachment()
        self.supervisor.attach(handle, attachment)
        self.reactor.advance(0.05)
        self.supervisor.touch("ws_b")
        self.reactor.advance(0.05)
        self.settle()
        self.assertEqual([AppServerEnd("idle")], attachment.ends)
        self.assertIn(home_key("ws_a"), self.store.objects)
        self.assertIsNotNone(self.supervisor.handle_of("ws_b"))

    def test_pinned_survives(self) -> None:
        """
        A pinned entry is never idle; after unpinning it is reaped.
        """
        self.ensure("ws_a")
        unpin = self.supervisor.pin("ws_a")
        self.reactor.advance(1)
        self.settle()
        self.assertIsNotNone(self.supervisor.handle_of("ws_a"))
        unpin()
        unpin()
        self.reactor.advance(0.2)
        self.settle()
        self.assertIsNone(self.supervisor.handle_of("ws_a"))


class ShutdownTests(SupervisorCase):
    """
    §5.9: every workspace stopped concurrently, within the budget.
    """

    def test_all_stopped_concurrently(self) -> None:
        """
        Three workspaces: SIGTERM reaches all three before any grace elapses, all homes are
        uploaded, nothing is left.
        """
        self.launcher.exits_on_sigterm = False
        for ws in ("ws_1", "ws_2", "ws_3"):
            self.ensure(ws)
        d = self.supervisor.shutdown_all()
        self.settle()
        for launch in self.launcher.history:
            self.assertEqual([signal.SIGTERM], launch.process.signals)
        self.reactor.advance(STOP_GRACE)
        self.settle()
        self.successResultOf(d)
        for ws in ("ws_1", "ws_2", "ws_3"):
            self.assertIn(home_key(ws), self.store.objects)
        self.assertEqual(0, self.supervisor.counts().live)

    def test_budget_abandons_uploads(self) -> None:
        """
        When the budget ends with an upload still running, the home stays with an
        C{upload-pending} record.
        """
        self.ensure("ws_a")
        self.store.stalled = True
        d = self.supervisor.shutdown_all(budget=5)
        self.settle()
        self.assertNoResult(d)
        self.reactor.advance(5)
        self.settle()
        self.successResultOf(d)
        record = self.records.read("ws_a")
        assert record is not None
        self.assertEqual("upload-pending", record.state)
        self.assertTrue(os.path.isdir(self.home("ws_a")))
