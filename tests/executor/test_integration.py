"""
Integration tests of the executor (C{executor.md} §6, acceptance criteria 1–7): the real
C{twist codexgw-exec} and the real C{twist codexgw-executor} as subprocesses on 127.0.0.1, the real
pinned C{codex exec-server} children, and bridge clients speaking exec-server JSON-RPC through the
gateway.

Tests share one gateway (SQLite) where they can; each starts executors of its own, registered and
bound to a fresh workspace. Every wait is bounded; processes are checked in C{/proc} by pid, process
group and start time, never by sleeping; every process is stopped by pid.
"""

from __future__ import annotations

import base64
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from codexgw.executor.connection import buffered_bytes
from tests.execgw.gateway import (
    ADMIN_SECRET,
    BridgeClient,
    Clients,
    GatewayHTTP,
    GatewayProcess,
    SharedGateway,
    gateway_env,
    mint_cap,
    reactor,
)
from tests.execgw.test_gateway_integration import eventually, free_port, unique
from tests.executor.agent import (
    ExecutorProcess,
    RpcStream,
    cmdline,
    environ_names,
    executor_args,
    executor_env,
    group_members,
    still_alive,
    tree_of,
)

MIB = 1 << 20


class ExecutorCase(TestCase):
    """
    One shared gateway; executors, websocket clients and HTTP pools of each test cleaned up after it.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's gateway (started by its first test).
        """
        self.clients = Clients()
        self.addCleanup(self.clients.cleanup)
        shared = SharedGateway.for_class(
            type(self), "sqlite", {}, Path(self.mktemp()).parent / "gateway"
        )
        self.addCleanup(shared.release)
        self.gateway = await shared.acquire()
        self.api = self.http(self.gateway)

    def http(self, gateway: GatewayProcess) -> GatewayHTTP:
        """
        An HTTP client of C{gateway}, closed at the end of the test.
        """
        client = GatewayHTTP(gateway.base_url)
        self.addCleanup(client.close)
        return client

    async def registered(self, api: GatewayHTTP | None = None) -> tuple[str, str, str]:
        """
        Register an executor and bind it to a fresh workspace; its exe_id, token and workspace.
        """
        api = api or self.api
        workspace = unique("ws")
        exe_id, token = await api.register()
        bound = await api.bind(workspace, exe_id, unique("box"))
        self.assertEqual(bound.status, 201, bound)
        return exe_id, token, workspace

    def executor(
        self, gateway_url: str, exe_id: str, token: str | None, extra_env: dict[str, str] | None = None
    ) -> ExecutorProcess:
        """
        An executor process of this test (not spawned yet), stopped by pid at the end of the test.
        """
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        process = ExecutorProcess(
            executor_env(token, extra_env), cwd, executor_args(gateway_url, exe_id, cwd / "state")
        )
        self.addCleanup(process.stop)
        return process

    async def live_executor(self) -> tuple[ExecutorProcess, str, str]:
        """
        A registered, bound and connected executor; the process, its exe_id and workspace.
        """
        exe_id, token, workspace = await self.registered()
        process = self.executor(self.gateway.base_url, exe_id, token)
        await process.start()
        return process, exe_id, workspace

    async def stream(
        self, exe_id: str, workspace: str, stream_id: str
    ) -> tuple[BridgeClient, RpcStream]:
        """
        A bridge with its stream opened (Resume, C{initialize}, C{initialized}).
        """
        assert self.gateway.port is not None
        bridge = await self.clients.bridge(self.gateway.port, exe_id, mint_cap(workspace), stream_id)
        rpc = RpcStream(bridge, stream_id)
        await rpc.open()
        return bridge, rpc

    async def connected(self, api: GatewayHTTP, workspace: str, exe_id: str) -> bool:
        """
        Whether C{/connected} lists C{exe_id} for C{workspace}.
        """
        try:
            return exe_id in await api.connected(workspace)
        except Exception:  # the gateway is not (yet) answering
            return False


class AcceptanceTests(ExecutorCase):
    """
    C{executor.md} §6 on a shared gateway.
    """

    async def test_register_command_and_listed_within_2s(self) -> None:
        """
        Item 1, with the executor registered by C{codexgw executor register}: the printed command
        starts an executor that C{/connected} lists within 2 s of its start.
        """
        workspace = unique("ws")
        script = str(Path(sys.executable).parent / "codexgw")
        env = {"PATH": os.environ.get("PATH", ""), "CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN_SECRET}
        out, err, status = await getProcessOutputAndValue(
            script,
            [
                "executor",
                "register",
                "--gateway",
                self.gateway.base_url,
                "--user-id",
                "usr_it",
                "--workspace",
                workspace,
                "--name",
                "laptop",
                "--default",
            ],
            env=env,
        )
        self.assertEqual(status, 0, err)
        lines = dict(line.split(": ", 1) for line in out.decode().splitlines())
        exe_id, token = lines["exe_id"], lines["registration_token"]
        command = shlex.split(lines["command"])
        self.assertEqual(command[0], f"CXG_EXECUTOR_TOKEN={token}")
        self.assertEqual(
            command[1:],
            ["twist", "codexgw-executor", "--gateway", self.gateway.base_url, "--executor-id", exe_id],
        )
        [listed] = await self.api.listing(workspace)
        self.assertEqual(
            (listed["exe_id"], listed["name"], listed["is_default"]), (exe_id, "laptop", True)
        )
        process = self.executor(self.gateway.base_url, exe_id, token)
        began = time.monotonic()
        process.spawn()
        took = await eventually(lambda: self.connected(self.api, workspace, exe_id), 2.0, "listed", 0.05)
        self.assertLess(time.monotonic() - began, 2.0, took)
        self.assertNotIn(token, process.output)

    async def test_echo_hi(self) -> None:
        """
        Item 2: C{initialize}, C{initialized}, C{process/start} of C{/bin/echo hi} and
        C{process/read} give C{aGkK} and exit code 0, run by a real exec-server child of the executor
        that leads its own process group and has no C{CXG_*} variable.
        """
        process, exe_id, workspace = await self.live_executor()
        _, rpc = await self.stream(exe_id, workspace, "s-echo")
        opened = await process.wait_event("executor.stream_opened", stream_id="s-echo")
        child = opened["pid"]
        self.assertEqual(os.getpgid(child), child)
        [info] = [p for p in tree_of(process.pid) if p.pid == child]
        self.assertEqual(info.ppid, process.pid)
        self.assertEqual(cmdline(child)[1:], ["exec-server", "--listen", "stdio"])
        self.assertEqual([n for n in environ_names(child) if n.startswith("CXG_")], [])
        await rpc.start("p1", ["/bin/echo", "hi"])
        after: int | None = None
        chunks: list[str] = []
        exit_code: Any = None
        for _ in range(40):
            read = await rpc.call(
                "process/read", {"processId": "p1", "afterSeq": after, "maxBytes": 65536, "waitMs": 250}
            )
            chunks += [c["chunk"] for c in read["chunks"] if c["stream"] == "stdout"]
            after = read["nextSeq"] - 1
            if read["exited"]:
                exit_code = read["exitCode"]
                break
        self.assertEqual((chunks, exit_code), (["aGkK"], 0))

    async def test_two_streams_independent(self) -> None:
        """
        Item 3: two concurrent streams on one executor run two exec-server children with their own
        sessions (the same process id in both), and output never crosses streams.
        """
        process, exe_id, workspace = await self.live_executor()
        (_, first), (_, second) = await gatherResults(
            [Deferred.fromCoroutine(self.stream(exe_id, workspace, name)) for name in ("s-one", "s-two")]
        )
        pids = [
            (await process.wait_event("executor.stream_opened", stream_id=s))["pid"]
            for s in ("s-one", "s-two")
        ]
        self.assertNotEqual(pids[0], pids[1])
        results = await gatherResults(
            [
                Deferred.fromCoroutine(first.run("p", ["/bin/echo", "one"])),
                Deferred.fromCoroutine(second.run("p", ["/bin/echo", "two"])),
            ]
        )
        self.assertEqual(results, [(b"one\n", 0), (b"two\n", 0)])
        for rpc, word in ((first, b"two"), (second, b"one")):
            seen = [base64.b64decode(n["params"].get("chunk", "")) for n in rpc.notifications]
            self.assertNotIn(word + b"\n", seen)

    async def test_reset_kills_group_and_no_orphans(self) -> None:
        """
        Item 6: closing a bridge ends its stream's exec-server and everything it ran within 7 s —
        its process group, a background command, and one that started a session of its own — while
        the other stream keeps running; a command that escaped by a double fork is gone once the
        executor has no session left; after the executor stops (status 0) nothing it ever started
        is alive.
        """
        process, exe_id, workspace = await self.live_executor()
        bridge, doomed = await self.stream(exe_id, workspace, "s-doomed")
        _, kept = await self.stream(exe_id, workspace, "s-kept")
        doomed_pid = (await process.wait_event("executor.stream_opened", stream_id="s-doomed"))["pid"]
        script = "sleep 1000 & setsid sleep 1001 & (setsid sleep 1002 &); sleep 1003"
        await doomed.start("p", ["/bin/sh", "-c", script])
        await kept.start("k", ["/bin/sleep", "1004"])

        def sleeping(seconds: str) -> list[Any]:
            return [
                p
                for p in tree_of(process.pid)
                if [os.path.basename(a) for a in cmdline(p.pid)] == ["sleep", seconds]
            ]

        await eventually(
            lambda: _now(all(sleeping(s) for s in ("1000", "1001", "1002", "1003", "1004"))),
            10,
            "sleeps",
        )
        doomed_tree = tree_of(doomed_pid)
        escaped = sleeping("1002")
        self.assertNotIn(escaped[0].pid, [p.pid for p in doomed_tree])  # adopted by the executor
        await bridge.close()
        # Signals take effect asynchronously: look until everything is gone, for at most 7 s.
        await eventually(
            lambda: _now(not group_members(doomed_pid) and not still_alive(doomed_tree)),
            7,
            "the reset stream's processes gone",
            0.05,
        )
        await process.wait_event("executor.stream_closed", stream_id="s-doomed")
        self.assertTrue(sleeping("1004"), "the other stream's command was hit")
        metadata = await kept.call("fs/getMetadata", {"path": "file:///tmp"})
        self.assertTrue(metadata["isDirectory"])
        await kept.bridge.close()
        await process.wait_event("executor.stream_closed", stream_id="s-kept")
        await eventually(lambda: _now(not still_alive(escaped)), 5, "escaped command killed when idle")
        await self.stream(exe_id, workspace, "s-last")
        everything = tree_of(process.pid)[1:]
        self.assertEqual(await process.stop(), 0)
        # SIGKILL takes effect asynchronously; a killed process may be listed for a moment more.
        await eventually(lambda: _now(not still_alive(everything)), 5, "nothing left after stop")
        self.assertEqual(process.named("executor.stopped")[0]["event"], "executor.stopped")

    async def test_read_file_5mib(self) -> None:
        """
        Item 7: a 5 MiB C{fs/readFile} result arrives intact through the bridge, segmented on the way.
        """
        _, exe_id, workspace = await self.live_executor()
        data = os.urandom(5 * MIB)
        path = Path(self.mktemp()).absolute()
        path.write_bytes(data)
        _, rpc = await self.stream(exe_id, workspace, "s-big")
        result = await rpc.call("fs/readFile", {"path": path.as_uri()})
        self.assertEqual(base64.b64decode(result["dataBase64"]), data)
        self.assertEqual(rpc.segmented, 1)

    async def test_wrong_token(self) -> None:
        """
        Item 5: a wrong registration token makes the executor exit with status 1 within 5 s, with
        the registration-rejected line, without retrying.
        """
        exe_id, _, _ = await self.registered()
        process = self.executor(self.gateway.base_url, exe_id, "0" * 64)
        began = time.monotonic()
        process.spawn()
        self.assertEqual(await process.exited(5), 1)
        self.assertLess(time.monotonic() - began, 5)
        self.assertIn('registration rejected (401): {"error":"unauthorized"}', process.stderr.decode())
        self.assertEqual(len(process.named("executor.registration_rejected")), 1)
        self.assertEqual(process.named("executor.retry"), [])

    async def test_config_errors(self) -> None:
        """
        Bad options exit 64 with C{config: <message>} on stderr before anything connects.
        """
        base = ["--gateway", "http://127.0.0.1:1", "--executor-id", "e"]
        cases: list[tuple[list[str], str | None, str]] = [
            ([], None, "config: --gateway is required"),
            (
                ["--gateway", "ftp://x", "--executor-id", "e"],
                "t",
                'config: --gateway must use http:// or https:// scheme, got "ftp://x"',
            ),
            (base, None, "config: env var CXG_EXECUTOR_TOKEN is empty; cannot register executor"),
            (
                [*base, "--codex-bin", "/nonexistent/codex"],
                "t",
                'config: codex binary "/nonexistent/codex" not found or not executable',
            ),
        ]
        processes = []
        for args, token, _ in cases:
            cwd = Path(self.mktemp()).absolute()
            cwd.mkdir(parents=True)
            process = ExecutorProcess(executor_env(token, {"HOME": str(cwd)}), cwd, args)
            self.addCleanup(process.stop)
            process.spawn()
            processes.append(process)
        codes = await gatherResults([p.exited(30) for p in processes])
        for process, code, (_, _, message) in zip(processes, codes, cases, strict=True):
            self.assertEqual((code, process.stderr.decode().strip()), (64, message))
            self.assertFalse((process.cwd / ".codexgw-executor").exists())


class RestartTests(ExecutorCase):
    """
    Item 4 needs a gateway of its own on a fixed port.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        """
        No shared gateway here.
        """
        self.clients = Clients()
        self.addCleanup(self.clients.cleanup)

    async def test_gateway_restart(self) -> None:
        """
        Item 4: the gateway is killed and started again on the same port and database; the executor,
        never restarted, is listed as connected again within 10 s and serves streams.
        """
        port = free_port()
        cwd = Path(self.mktemp()).absolute()
        args = ("--listen", f"tcp:{port}:interface=127.0.0.1")
        env = gateway_env("sqlite:///var/exec-gateway.sqlite3")
        first = GatewayProcess(env, cwd, args)
        self.addCleanup(first.stop)
        await first.start()
        self.gateway = first
        self.api = self.http(first)
        exe_id, token, workspace = await self.registered()
        process = self.executor(first.base_url, exe_id, token)
        await process.start()
        first.kill()
        await first.exited()
        await process.wait_event("executor.disconnected")
        second = GatewayProcess(env, cwd, args)
        self.addCleanup(second.stop)
        await second.start()
        self.gateway = second
        api = self.http(second)
        took = await eventually(lambda: self.connected(api, workspace, exe_id), 10, "reconnected", 0.1)
        self.assertLess(took, 10)
        self.assertTrue(process.running)
        self.assertEqual(len(process.named("executor.started")), 1)
        _, rpc = await self.stream(exe_id, workspace, "s-after")
        self.assertEqual(await rpc.run("p", ["/bin/echo", "back"]), (b"back\n", 0))


async def _now(value: bool) -> bool:
    """
    C{value}, for L{eventually}'s asynchronous checks.
    """
    return value


class _Endpoint(Protocol):
    """
    One end of a loopback TCP connection that can stop reading and reports its end.
    """

    def __init__(self, reading: bool) -> None:
        self.reading = reading
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """
        Stop reading at once unless asked to read.
        """
        if not self.reading:
            cast(Any, self.transport).pauseProducing()
        self.made.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Report the end.
        """
        self.lost.callback(None)


class TransportBufferTests(TestCase):
    """
    The link reads the exact write buffer of a real TCP transport (see L{codexgw.executor.connection}).
    """

    timeout = 30

    async def test_tcp_buffer_is_exact(self) -> None:
        """
        On a real loopback TCP connection the buffer is readable exactly: 0 when idle, and what was
        written while the peer is not reading.
        """
        server = _Endpoint(reading=False)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: server)
        )
        self.addCleanup(port.stopListening)
        client = _Endpoint(reading=True)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client)
        )
        await server.made
        transport = cast(Any, client.transport)
        try:
            self.assertEqual(buffered_bytes(transport), 0)
            transport.write(b"x" * (64 << 20))
            buffered = buffered_bytes(transport)
            assert buffered is not None
            self.assertGreater(buffered, 32 << 20)
        finally:
            transport.abortConnection()
            cast(Any, server.transport).abortConnection()
            await gatherResults([client.lost, server.lost])
