"""
Integration tests of the exec gateway: the real C{twist codexgw-exec} as a subprocess on 127.0.0.1,
real websocket clients for executors and bridges, and SQLite and the harness's real PostgreSQL
(C{exec-gateway.md} §2, §4.2–§4.6, §9.2, §9.6; acceptance items 1–6, 8, 21, 22, 27–40, 42–47, 49,
53, 54 and 94).

Tests of one class share one gateway process (and, on PostgreSQL, one fresh database) where they do
not conflict: each test uses its own executors and workspaces. Tests that need a process of their
own (configuration errors, startup, migrations, outages, shutdown) start it themselves. Every wait
is bounded; every process is stopped by pid.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from codexgw import relayframe
from codexgw.relayframe import Body
from tests.execgw.gateway import (
    ADMIN_SECRET,
    SECRETS_ENV,
    SHARED_SECRET,
    BridgeClient,
    Clients,
    Closed,
    DialRefused,
    ExecutorClient,
    GatewayHTTP,
    GatewayProcess,
    SharedGateway,
    bounded,
    create_postgres_database,
    drop_postgres_database,
    gateway_env,
    mint_cap,
    postgres_rows,
    postgres_url,
    reactor,
)
from tests.support import postgres_dsn

MIB = 1 << 20
#: The frame limit of the shared gateways: room for a 1 MiB payload, small enough to exceed.
FRAME_LIMIT = 2 * MIB
RELAY_ENV = {
    "CXG_PING_INTERVAL": "2s",
    "CXG_PING_TIMEOUT": "2s",
    "CXG_MAX_FRAME_BYTES": str(FRAME_LIMIT),
}
MIGRATIONS = ["001_executors.sql", "002_workspace_executor_name.sql"]


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    """
    A name no other test uses.
    """
    return f"{prefix}_{os.urandom(5).hex()}"


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, pace: float = 0.1
) -> float:
    """
    Run C{check} until it holds, pacing attempts by C{pace} seconds, for at most C{timeout} seconds;
    return how long it took.
    """
    began = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await deferLater(reactor, pace, lambda: None)


class IntegrationCase(TestCase):
    """
    Websocket clients and HTTP pools cleaned up after each test.
    """

    timeout = 60

    def setUp(self) -> None:
        self.clients = Clients()
        self.addCleanup(self.clients.cleanup)

    def http(self, gateway: GatewayProcess) -> GatewayHTTP:
        """
        An HTTP client of C{gateway}, closed at the end of the test.
        """
        client = GatewayHTTP(gateway.base_url)
        self.addCleanup(client.close)
        return client

    def process(self, env: dict[str, str], cwd: Path | None = None) -> GatewayProcess:
        """
        A gateway process of this test (not spawned yet), stopped by pid at the end of the test if
        still running.
        """
        directory = cwd or Path(self.mktemp())
        directory.mkdir(parents=True, exist_ok=True)
        gateway = GatewayProcess(env, directory)
        self.addCleanup(gateway.stop)
        return gateway


# -------------------------------------------------------------------------------------------------
# Configuration and start (items 1–6)


class StartupTests(IntegrationCase):
    """
    Starting, refusing to start, and stopping the real process.
    """

    async def test_starts_with_only_secrets(self) -> None:
        """
        With only the three secrets, the gateway starts with a SQLite store at
        C{var/exec-gateway.sqlite3} under its working directory (directory 0700, file 0600), relay
        and SDK disabled (C{sdk.disabled} logged), answers C{/healthz} and C{/readyz}, and a SIGTERM
        stops it with status 0.
        """
        env = {k: v for k, v in gateway_env("").items() if k != "CXG_DATABASE_URL"}
        gateway = self.process(env)
        await gateway.start()
        [started] = gateway.named("exec_gateway.started")
        self.assertEqual(
            (started["store"], started["sdk"], started["relay"]), ("sqlite", "disabled", "disabled")
        )
        [disabled] = gateway.named("sdk.disabled")
        self.assertEqual(
            disabled["log_format"],
            "sdk REST surface disabled: neither CXG_AGENTSERVER_INTERNAL_URL nor "
            "CXG_INBOUND_HMAC_SECRET is set",
        )
        self.assertEqual(disabled["log_level"]["name"], "warn")
        database = gateway.cwd / "var" / "exec-gateway.sqlite3"
        self.assertEqual(stat.S_IMODE(database.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(database.parent.stat().st_mode), 0o700)
        http = self.http(gateway)
        self.assertEqual((await http.request("GET", "/healthz")).body, b"ok")
        self.assertEqual((await http.request("GET", "/readyz")).body, b"ready")
        for secret in SECRETS_ENV.values():
            self.assertNotIn(secret, gateway.output)
        self.assertEqual(await gateway.stop(), 0)

    async def test_config_errors(self) -> None:
        """
        A missing or short required secret, an unsupported database scheme, a bad duration and an
        out-of-range port each make C{twist} exit 64 with C{config: <message>} on stderr, before
        anything is opened or listened on; a database password never appears in the output.
        """
        cases: list[tuple[dict[str, str], str]] = []
        for name in SECRETS_ENV:
            cases.append(({name: ""}, f"config: {name} is required"))
            cases.append(({name: "s" * 31}, f"config: {name} must be at least 32 bytes"))
        cases.append(
            (
                {"CXG_DATABASE_URL": "mysql://u:SeCrEtPw@h/d"},
                'config: CXG_DATABASE_URL: unsupported scheme "mysql" (want sqlite, postgres or '
                "postgresql)",
            )
        )
        cases.append(
            (
                {"CXG_BRIDGE_IDLE_TIMEOUT": "5x"},
                'config: CXG_BRIDGE_IDLE_TIMEOUT: invalid duration "5x"',
            )
        )
        cases.append(({"CXG_PORT": "70000"}, "config: CXG_PORT must be <= 65535, got 70000"))
        gateways = []
        for extra, _ in cases:
            env = gateway_env("sqlite:///var/exec-gateway.sqlite3", extra)
            gateway = self.process(env)
            gateway.spawn()
            gateways.append(gateway)
        codes = await gatherResults([g.exited(30) for g in gateways])
        for gateway, code, (extra, message) in zip(gateways, codes, cases, strict=True):
            stderr = gateway.stderr.decode("utf-8", "replace")
            self.assertEqual((code, stderr.strip()), (64, message), extra)
            self.assertEqual(gateway.named("exec_gateway.started"), [])
            self.assertNotIn("Site starting", gateway.output)
            self.assertFalse((gateway.cwd / "var").exists(), extra)
            self.assertNotIn("SeCrEtPw", gateway.output)

    async def test_postgres_closed_port(self) -> None:
        """
        A PostgreSQL URL pointing at a closed port → exit 1 within 11 s with a
        C{store: cannot connect:} line on stderr, never listening, and without the password.
        """
        url = f"postgresql://cxg:PgSeCrEt@127.0.0.1:{free_port()}/codexgw"
        gateway = self.process(gateway_env(url))
        began = time.monotonic()
        gateway.spawn()
        code = await gateway.exited(11)
        self.assertLess(time.monotonic() - began, 11)
        self.assertEqual(code, 1, gateway.output)
        self.assertIn("store: cannot connect:", gateway.stderr.decode())
        self.assertNotIn("PgSeCrEt", gateway.output)
        self.assertEqual(gateway.named("exec_gateway.started"), [])


class MigrationTestsMixin:
    """
    Migrations at start (item 6), on one engine.
    """

    engine: ClassVar[str]

    async def test_migrations(self: Any) -> None:
        """
        A fresh database gets both migration rows (each logged once); a second start applies
        nothing; an unknown version row makes the next start fail with status 1 and
        C{store: database has unknown migration <version>}.
        """
        cwd = Path(self.mktemp())
        if self.engine == "postgres":
            database = create_postgres_database()
            self.addCleanup(drop_postgres_database, database)
            url = postgres_url(database)

            def rows(query: str, *args: object) -> list[tuple[Any, ...]]:
                return postgres_rows(database, query, *args)

            insert = "INSERT INTO schema_migrations (version) VALUES (%s)"
        else:
            url = "sqlite:///var/exec-gateway.sqlite3"

            def rows(query: str, *args: object) -> list[tuple[Any, ...]]:
                connection = sqlite3.connect(cwd / "var" / "exec-gateway.sqlite3")
                try:
                    with connection:
                        return list(connection.execute(query.replace("%s", "?"), args))
                finally:
                    connection.close()

            insert = "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, 'x')"
        first = self.process(gateway_env(url), cwd)
        await first.start()
        self.assertEqual([e["version"] for e in first.named("store.migration_applied")], MIGRATIONS)
        self.assertEqual(await first.stop(), 0)
        versions = rows("SELECT version FROM schema_migrations ORDER BY version")
        self.assertEqual([v for (v,) in versions], MIGRATIONS)
        second = self.process(gateway_env(url), cwd)
        await second.start()
        self.assertEqual(second.named("store.migration_applied"), [])
        self.assertEqual(await second.stop(), 0)
        rows(insert, "999_from_the_future.sql")
        third = self.process(gateway_env(url), cwd)
        third.spawn()
        self.assertEqual(await third.exited(20), 1)
        self.assertIn(
            "store: database has unknown migration 999_from_the_future.sql", third.stderr.decode()
        )
        self.assertEqual(third.named("exec_gateway.started"), [])


class SQLiteMigrationTests(MigrationTestsMixin, IntegrationCase):
    """
    Migrations on SQLite.
    """

    engine = "sqlite"


class PostgresMigrationTests(MigrationTestsMixin, IntegrationCase):
    """
    Migrations on PostgreSQL.
    """

    engine = "postgres"


# -------------------------------------------------------------------------------------------------
# Registry, executors and bridges on a shared gateway


@dataclass
class LiveExecutor:
    """
    A registered, bound and connected executor.
    """

    exe_id: str
    token: str
    workspace: str
    client: ExecutorClient


class SharedGatewayCase(IntegrationCase):
    """
    Tests that share one gateway per class (see L{SharedGateway}); each test uses its own executors
    and workspaces.
    """

    engine: ClassVar[str] = "sqlite"

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's gateway (started by its first test).
        """
        super().setUp()
        shared = SharedGateway.for_class(
            type(self), self.engine, RELAY_ENV, Path(self.mktemp()).parent / "gateway"
        )
        self.addCleanup(shared.release)
        self.gateway = await shared.acquire()
        assert self.gateway.port is not None
        self.port = self.gateway.port
        self.api = self.http(self.gateway)

    async def ticket(self, exe_id: str, token: str) -> str:
        """
        A fresh ws ticket from cloud registration.
        """
        reply = await self.api.cloud_register(exe_id, token)
        self.assertEqual(reply.status, 200, reply)
        return str(urlsplit(reply.json["url"]).query).removeprefix("token=")

    async def executor(
        self, workspace_id: str | None = None, echo: bool = False, raw_token: bool = False
    ) -> LiveExecutor:
        """
        Register an executor, bind it to C{workspace_id} (a fresh one by default) and connect it
        with a ticket (or its raw token).
        """
        workspace = workspace_id or unique("ws")
        exe_id, token = await self.api.register()
        bound = await self.api.bind(workspace, exe_id, unique("box"))
        self.assertEqual(bound.status, 201, bound)
        credential = token if raw_token else await self.ticket(exe_id, token)
        client = await self.clients.executor(self.port, exe_id, credential, echo)
        return LiveExecutor(exe_id, token, workspace, client)

    async def bridge(self, executor: LiveExecutor, stream_id: str) -> BridgeClient:
        """
        A bridge paired on C{stream_id}; its Resume is taken from the executor's frames.
        """
        bridge = await self.clients.bridge(
            self.port, executor.exe_id, mint_cap(executor.workspace), stream_id
        )
        self.assertEqual(await executor.client.next_frame(), relayframe.resume_frame(stream_id))
        return bridge

    async def last_seen(self, workspace_id: str, exe_id: str) -> str | None:
        """
        The C{last_seen_at} of C{exe_id} in the admin listing of C{workspace_id}.
        """
        for item in await self.api.listing(workspace_id):
            if item["exe_id"] == exe_id:
                value: str | None = item.get("last_seen_at")
                return value
        raise AssertionError(f"{exe_id} not bound to {workspace_id}")

    def assertClosed(self, closed: Closed, code: int, reason: str) -> None:
        """
        A websocket ended with this close code and reason.
        """
        self.assertEqual((closed.code, closed.reason), (code, reason))


if TYPE_CHECKING:
    _Shared = SharedGatewayCase
    _Integration = IntegrationCase
else:
    _Shared = _Integration = object


class RegistryTestsMixin(_Shared):
    """
    Registration, inbound connections and what the store records of them (items 21, 22, 27–30).
    """

    async def test_register_and_connect_with_ticket(self) -> None:
        """
        Cloud registration (both paths) answers a C{ws://<Host>} url without the raw token, whose
        ticket connects the executor once (listed by C{/connected}); the same ticket again → 401
        before any upgrade.
        """
        workspace = unique("ws")
        exe_id, token = await self.api.register()
        await self.api.bind(workspace, exe_id, "box")
        for kind in ("executor", "environment"):
            reply = await self.api.cloud_register(exe_id, token, kind)
            self.assertEqual(reply.status, 200, reply)
            self.assertNotIn(token.encode(), reply.body)
            self.assertEqual(
                [reply.json[k] for k in ("id", "executor_id", "environment_id")], [exe_id] * 3
            )
        url = urlsplit(reply.json["url"])
        self.assertEqual(
            (url.scheme, url.netloc, url.path),
            ("ws", f"127.0.0.1:{self.port}", f"/codex-exec/{exe_id}"),
        )
        ticket = url.query.removeprefix("token=")
        await self.clients.executor(self.port, exe_id, ticket)
        self.assertEqual(await self.api.connected(workspace), [exe_id])
        again = await self.api.request("GET", f"/codex-exec/{exe_id}?token={ticket}")
        self.assertEqual((again.status, again.body), (401, b"unauthorized\n"))
        with self.assertRaises(DialRefused):
            await self.clients.executor(self.port, exe_id, ticket)
        await self.gateway.wait_event("inbound.unauthorized", exe_id=exe_id, reason="ticket_replayed")
        self.assertNotIn(token, self.gateway.output)
        self.assertNotIn(ticket.split(".")[-1], self.gateway.output)

    async def test_connect_with_raw_token(self) -> None:
        """
        An executor dialing with its raw registration token connects: C{/connected} lists it and its
        C{last_seen_at} is set; a wrong token, an unknown exe and a missing token are refused before
        any upgrade.
        """
        live = await self.executor(raw_token=True)
        self.assertEqual(await self.api.connected(live.workspace), [live.exe_id])
        self.assertIsNotNone(await self.last_seen(live.workspace, live.exe_id))
        await self.gateway.wait_event("inbound.connected", exe_id=live.exe_id)
        for path in (
            f"/codex-exec/{live.exe_id}?token={'0' * 64}",
            f"/codex-exec/exe_nobody?token={'0' * 64}",
        ):
            refused = await self.api.request("GET", path)
            self.assertEqual((refused.status, refused.body), (401, b"unauthorized\n"))
        missing = await self.api.request("GET", f"/codex-exec/{live.exe_id}")
        self.assertEqual((missing.status, missing.body), (400, b"missing parameters\n"))
        self.assertNotIn(live.token, self.gateway.output)

    async def test_eviction(self) -> None:
        """
        A second connection of the same executor evicts the first: the first gets 1000
        C{inbound closed}, its bridge 1000 C{bridge session closed}; the second stays registered
        after the first's cleanup and carries new bridges.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        since = len(self.gateway.events)
        # The raw token: a second ticket minted within the same second would be the same ticket.
        second = await self.clients.executor(self.port, live.exe_id, live.token)
        self.assertClosed(await live.client.wait_closed(), 1000, "inbound closed")
        self.assertClosed(await bridge.wait_closed(), 1000, "bridge session closed")
        await self.gateway.wait_event("inbound.disconnected", since=since, exe_id=live.exe_id)
        self.assertEqual(await self.api.connected(live.workspace), [live.exe_id])
        await self.bridge(LiveExecutor(live.exe_id, live.token, live.workspace, second), "s2")
        self.assertFalse(second.is_closed)

    async def test_disconnect(self) -> None:
        """
        An executor that goes away closes every bridge on it with 1000 C{bridge session closed}, is
        no longer listed as connected, and its C{last_seen_at} moves forward.
        """
        live = await self.executor()
        bridges = [await self.bridge(live, f"s{i}") for i in range(2)]
        seen_at_connect = await self.last_seen(live.workspace, live.exe_id)
        self.assertIsNotNone(seen_at_connect)
        await live.client.close()
        for bridge in bridges:
            self.assertClosed(await bridge.wait_closed(), 1000, "bridge session closed")
        await self.gateway.wait_event("inbound.disconnected", exe_id=live.exe_id)
        self.assertEqual(await self.api.connected(live.workspace), [])

        async def moved() -> bool:
            seen = await self.last_seen(live.workspace, live.exe_id)
            return seen is not None and seen_at_connect is not None and seen > seen_at_connect

        await eventually(moved, 5, "last_seen_at after disconnect")

    async def test_delete_closes_inbound(self) -> None:
        """
        Deleting an executor closes its live inbound with 1008 C{executor deleted} and its bridge
        with 1000 C{bridge session closed}; its bindings are gone; deleting again → 204.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        self.assertEqual((await self.api.delete(live.exe_id)).status, 204)
        self.assertClosed(await live.client.wait_closed(), 1008, "executor deleted")
        self.assertClosed(await bridge.wait_closed(), 1000, "bridge session closed")
        self.assertEqual(await self.api.listing(live.workspace), [])
        self.assertEqual((await self.api.delete(live.exe_id)).status, 204)

    async def test_connected_modes(self) -> None:
        """
        C{/connected} lists only connected bindings, by shared secret or by cap token (whose
        workspace wins over the query); a revoked turn's token is refused.
        """
        live = await self.executor()
        offline, _ = await self.api.register()
        await self.api.bind(live.workspace, offline, unique("off"))
        self.assertEqual(await self.api.connected(live.workspace), [live.exe_id])
        cap = mint_cap(live.workspace, "trn_connected")
        reply = await self.api.request(
            "GET", "/api/exec-gateway/connected?workspace_id=other", {"Authorization": f"Bearer {cap}"}
        )
        self.assertEqual([item["exe_id"] for item in reply.json], [live.exe_id])
        self.assertEqual((await self.api.revoke("trn_connected")).status, 204)
        reply = await self.api.request(
            "GET", "/api/exec-gateway/connected", {"Authorization": f"Bearer {cap}"}
        )
        self.assertEqual((reply.status, reply.body), (401, b"unauthorized\n"))


class SQLiteRegistryTests(RegistryTestsMixin, SharedGatewayCase):
    """
    The registry tests on SQLite.
    """

    engine = "sqlite"


class PostgresRegistryTests(RegistryTestsMixin, SharedGatewayCase):
    """
    The registry tests on PostgreSQL.
    """

    engine = "postgres"


class StreamTestsMixin(_Shared):
    """
    Inbound frames, bridge dials and relay streams (items 31–37, 39, 40, 42–47, 49, 53).
    """

    async def dropped(self, why: str) -> float:
        """
        The count of executor frames dropped for C{why}.
        """
        return await self.api.metric(f'cxg_exec_frames_dropped_total{{where="inbound",why="{why}"}}')

    async def test_executor_frames_dropped(self) -> None:
        """
        Text, undecodable, empty-stream and unknown-stream frames from the executor are dropped (and
        counted) and the connection stays open: the next good frame is the next thing the bridge gets.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        before = {
            why: await self.dropped(why)
            for why in ("text", "undecodable", "missing_stream_id", "no_route")
        }
        live.client.send_text("hello")
        live.client.send(b"\xff\xff\xff")
        live.client.send(relayframe.data_frame("", 0, b"{}"))
        live.client.send(relayframe.data_frame("nobody", 0, b"{}"))
        good = relayframe.data_frame("s1", 0, b'{"ok":true}')
        live.client.send(good)
        self.assertEqual(await bridge.next_frame(), good)
        for why, count in before.items():
            self.assertEqual(await self.dropped(why), count + 1, why)
        self.assertFalse(live.client.is_closed or bridge.is_closed)

    async def test_oversized_executor_message(self) -> None:
        """
        An executor message over C{CXG_MAX_FRAME_BYTES} closes the inbound with 1009 and its bridges
        with 1000 C{bridge session closed}; the executor is no longer connected.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        live.client.send(b"\x00" * (FRAME_LIMIT + 1))
        self.assertEqual((await live.client.wait_closed()).code, 1009)
        self.assertClosed(await bridge.wait_closed(), 1000, "bridge session closed")
        await self.gateway.wait_event("inbound.disconnected", exe_id=live.exe_id)
        self.assertEqual(await self.api.connected(live.workspace), [])

    async def test_deflate_refused(self) -> None:
        """
        permessage-deflate offers are refused: the connection opens without extensions, on the
        inbound and on a bridge.
        """
        live = await self.executor()
        offering = await self.clients.executor(self.port, live.exe_id, live.token, offer_deflate=True)
        self.assertEqual(offering.extensions, [])
        connected = await self.gateway.wait_event("inbound.connected", exe_id=live.exe_id)
        self.assertEqual(connected["user_agent"], "codexgw-it")
        bridge = BridgeClient()
        self.clients.items.append(bridge)
        headers = {"Authorization": f"Bearer {mint_cap(live.workspace)}"}
        await bridge.dial(self.port, f"/bridge/{live.exe_id}", headers, offer_deflate=True)
        self.assertEqual(bridge.extensions, [])

    async def test_ping_timeout(self) -> None:
        """
        An executor that stops answering pings (interval 2 s, timeout 2 s) is dropped and
        unregistered within 5 s.
        """
        live = await self.executor()
        since = len(self.gateway.events)
        began = time.monotonic()
        live.client.pause_reading()
        await self.gateway.wait_event("inbound.disconnected", 6, since, exe_id=live.exe_id)
        self.assertLess(time.monotonic() - began, 5)
        self.assertEqual(await self.api.connected(live.workspace), [])

    async def test_dial_refusals(self) -> None:
        """
        Bridge dials are refused before any upgrade, with the exact status and text: no or a
        non-Bearer header → 401 C{missing Bearer}; C{Bearer } → 400 C{missing parameters};
        garbage → 401 C{unauthorized}; expired → 401 C{token expired}; revoked turn → 401
        C{turn revoked} (executor bound and connected); another workspace → 403; not connected →
        503 C{executor not connected}.
        """
        live = await self.executor()
        offline, _ = await self.api.register()
        await self.api.bind(live.workspace, offline, unique("offline"))
        await self.api.revoke("trn_revoked")
        cap = mint_cap(live.workspace)
        cases: list[tuple[str, dict[str, str], int, bytes]] = [
            (live.exe_id, {}, 401, b"missing Bearer\n"),
            (live.exe_id, {"Authorization": f"Token {cap}"}, 401, b"missing Bearer\n"),
            (live.exe_id, {"Authorization": f"bearer {cap}"}, 401, b"missing Bearer\n"),
            (live.exe_id, {"Authorization": "Bearer "}, 400, b"missing parameters\n"),
            (live.exe_id, {"Authorization": "Bearer garbage"}, 401, b"unauthorized\n"),
            (
                live.exe_id,
                {"Authorization": f"Bearer {mint_cap(live.workspace, ttl=-5)}"},
                401,
                b"token expired\n",
            ),
            (
                live.exe_id,
                {"Authorization": f"Bearer {mint_cap(live.workspace, 'trn_revoked')}"},
                401,
                b"turn revoked\n",
            ),
            (
                live.exe_id,
                {"Authorization": f"Bearer {mint_cap(unique('ws'))}"},
                403,
                b"exe_id not in workspace\n",
            ),
            (offline, {"Authorization": f"Bearer {cap}"}, 503, b"executor not connected\n"),
        ]
        for exe_id, headers, status, body in cases:
            reply = await self.api.dial_status(exe_id, headers)
            self.assertEqual((reply.status, reply.body), (status, body), headers)
            self.assertEqual(reply.header("Content-Type"), "text/plain; charset=utf-8")
            self.assertEqual(reply.length, len(body))
        await self.gateway.wait_event("bridge.rejected", exe_id=offline, why="offline")
        for _, headers, _, _ in cases:
            token = headers.get("Authorization", "").partition(" ")[2]
            if len(token) > 20:
                self.assertNotIn(token.split(".")[-1], self.gateway.output)

    async def test_checks_only_at_upgrade(self) -> None:
        """
        Revoking a bridge's turn and unbinding its executor do not close the open bridge (it keeps
        relaying); only new dials are refused.
        """
        live = await self.executor()
        cap = mint_cap(live.workspace, "trn_open")
        bridge = await self.clients.bridge(self.port, live.exe_id, cap, "s1")
        self.assertEqual(await live.client.next_frame(), relayframe.resume_frame("s1"))
        self.assertEqual((await self.api.revoke("trn_open")).status, 204)
        unbind = f"/api/codex-exec/workspaces/{live.workspace}/executors/{live.exe_id}"
        self.assertEqual(
            (await self.api.request("DELETE", unbind, {"X-Internal-Secret": ADMIN_SECRET})).status, 204
        )
        refused = await self.api.dial_status(live.exe_id, {"Authorization": f"Bearer {cap}"})
        self.assertEqual((refused.status, refused.body), (401, b"turn revoked\n"))
        other = mint_cap(live.workspace, "trn_other")
        refused = await self.api.dial_status(live.exe_id, {"Authorization": f"Bearer {other}"})
        self.assertEqual((refused.status, refused.body), (403, b"exe_id not in workspace\n"))
        up = relayframe.data_frame("s1", 0, b"still open")
        bridge.send(up)
        self.assertEqual(await live.client.next_frame(), up)
        down = relayframe.data_frame("s1", 0, b"still open too")
        live.client.send(down)
        self.assertEqual(await bridge.next_frame(), down)
        self.assertFalse(bridge.is_closed)

    async def test_stream_limit(self) -> None:
        """
        A request that passes the checks but is no websocket handshake gets 426 and holds no slot;
        with 32 streams open the 33rd dial → 503 C{executor stream limit reached} with
        C{Retry-After: 30} before any upgrade; after one closes, a new dial pairs.
        """
        live = await self.executor()
        cap = mint_cap(live.workspace)
        plain = await self.api.request(
            "GET", f"/bridge/{live.exe_id}", {"Authorization": f"Bearer {cap}"}
        )
        self.assertEqual((plain.status, plain.length), (426, 0))
        bridges = [await self.bridge(live, f"s{i}") for i in range(32)]
        refused = await self.api.dial_status(live.exe_id, {"Authorization": f"Bearer {cap}"})
        self.assertEqual((refused.status, refused.body), (503, b"executor stream limit reached\n"))
        self.assertEqual(refused.header("Retry-After"), "30")
        with self.assertRaises(DialRefused):
            await self.clients.bridge(self.port, live.exe_id, cap, "s32")
        await bridges[0].close()
        self.assertEqual(await live.client.next_frame(), relayframe.reset_frame("s0", "bridge-closed"))
        await self.bridge(live, "s33")

    async def test_resume_first_and_identical(self) -> None:
        """
        The Resume reaches the executor byte for byte (unknown fields included) and before the
        stream's other frames, even when they are sent right behind it.
        """
        live = await self.executor()
        bridge = await self.clients.bridge(self.port, live.exe_id, mint_cap(live.workspace))
        resume = relayframe.resume_frame("s1") + b"\x58\x07"  # field 11 = 7: unknown, kept
        data = relayframe.data_frame("s1", 0, b'{"id":1}')
        bridge.send(resume)
        bridge.send(data)
        self.assertEqual(await live.client.next_frame(), resume)
        self.assertEqual(await live.client.next_frame(), data)

    async def test_isolation(self) -> None:
        """
        Two bridges on one executor: executor Data for A reaches only A and for B only B; Data from
        each bridge reaches the executor.
        """
        live = await self.executor()
        a = await self.bridge(live, "sA")
        b = await self.bridge(live, "sB")
        for round_ in range(2):
            for_a = relayframe.data_frame("sA", round_, b"for A")
            for_b = relayframe.data_frame("sB", round_, b"for B")
            live.client.send(for_a)
            live.client.send(for_b)
            self.assertEqual(await a.next_frame(), for_a)
            self.assertEqual(await b.next_frame(), for_b)
        self.assertEqual((a.pending(), b.pending()), (0, 0))
        from_a = relayframe.data_frame("sA", 0, b"from A")
        from_b = relayframe.data_frame("sB", 0, b"from B")
        a.send(from_a)
        self.assertEqual(await live.client.next_frame(), from_a)
        b.send(from_b)
        self.assertEqual(await live.client.next_frame(), from_b)

    async def test_collision(self) -> None:
        """
        A second bridge with A's stream_id evicts A (1000 C{bridge session closed}); the executor
        gets the second Resume and no Reset, and its later frames for the stream reach the second
        bridge.
        """
        live = await self.executor()
        first = await self.bridge(live, "s1")
        second = await self.bridge(live, "s1")
        self.assertClosed(await first.wait_closed(), 1000, "bridge session closed")
        reply = relayframe.data_frame("s1", 0, b"to the second")
        live.client.send(reply)
        self.assertEqual(await second.next_frame(), reply)
        onward = relayframe.data_frame("s1", 1, b"from the second")
        second.send(onward)
        self.assertEqual(await live.client.next_frame(), onward)

    async def test_bridge_frames_dropped(self) -> None:
        """
        Data with another stream_id and undecodable binary from a bridge never reach the executor,
        text is ignored, and the bridge stays open: the next good frame is the next thing the
        executor gets.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        bridge.send(relayframe.data_frame("s2", 0, b"not mine"))
        bridge.send(relayframe.data_frame("", 0, b"no stream"))
        bridge.send(b"\x0f")
        bridge.send_text("text")
        good = relayframe.data_frame("s1", 0, b"mine")
        bridge.send(good)
        self.assertEqual(await live.client.next_frame(), good)
        self.assertFalse(bridge.is_closed)

    async def test_executor_reset(self) -> None:
        """
        An executor Reset reaches the bridge, which is then closed 1000 C{stream reset}; later
        executor frames of that stream are dropped.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        other = await self.bridge(live, "s2")
        reset = relayframe.reset_frame("s1", "exec-server exited")
        live.client.send(reset)
        self.assertEqual(await bridge.next_frame(), reset)
        self.assertClosed(await bridge.wait_closed(), 1000, "stream reset")
        before = await self.dropped("no_route")
        live.client.send(relayframe.data_frame("s1", 1, b"late"))
        marker = relayframe.data_frame("s2", 0, b"marker")
        live.client.send(marker)
        self.assertEqual(await other.next_frame(), marker)
        self.assertEqual(await self.dropped("no_route"), before + 1)
        self.assertEqual(bridge.frames, [reset])

    async def test_one_reset_per_stream(self) -> None:
        """
        A bridge that closes normally makes the executor get exactly one
        C{Reset{reason:"bridge-closed"}} for its stream; a bridge that sent a Reset itself causes no
        extra one.
        """
        live = await self.executor()
        bridge = await self.bridge(live, "s1")
        await bridge.close()
        self.assertEqual(await live.client.next_frame(), relayframe.reset_frame("s1", "bridge-closed"))
        resetting = await self.bridge(live, "s2")  # its Resume is the next frame: no second Reset
        own = relayframe.reset_frame("s2", "done")
        resetting.send(own)
        self.assertEqual(await live.client.next_frame(), own)
        self.assertClosed(await resetting.wait_closed(), 1000, "stream reset")
        await self.bridge(live, "s3")  # again the very next frame

    async def test_oversized_bridge_message(self) -> None:
        """
        A bridge message over the limit closes that bridge with 1009 and the executor gets
        C{Reset{reason:"bridge-closed"}} for it; another stream keeps working.
        """
        live = await self.executor()
        big = await self.bridge(live, "s1")
        other = await self.bridge(live, "s2")
        big.send(b"\x00" * (FRAME_LIMIT + 1))
        self.assertEqual((await big.wait_closed()).code, 1009)
        self.assertEqual(await live.client.next_frame(), relayframe.reset_frame("s1", "bridge-closed"))
        up = relayframe.data_frame("s2", 0, b"up")
        other.send(up)
        self.assertEqual(await live.client.next_frame(), up)
        down = relayframe.data_frame("s2", 0, b"down")
        live.client.send(down)
        self.assertEqual(await other.next_frame(), down)

    async def test_large_payload_both_ways(self) -> None:
        """
        1 MiB of random Data payload crosses the bridge byte-identical in both directions.
        """
        live = await self.executor(echo=True)
        bridge = await self.bridge(live, "s1")
        payload = os.urandom(MIB)
        frame = relayframe.data_frame("s1", 0, payload)
        bridge.send(frame)
        self.assertEqual(await live.client.next_frame(), frame)
        echoed = await bridge.next_frame()
        self.assertEqual(echoed, frame)
        self.assertEqual(relayframe.decode(echoed).data.payload, payload)
        self.assertIs(relayframe.peek(echoed).body, Body.DATA)


class SQLiteStreamTests(StreamTestsMixin, SharedGatewayCase):
    """
    The relay tests on a SQLite-backed gateway.
    """

    engine = "sqlite"


class PostgresStreamTests(StreamTestsMixin, SharedGatewayCase):
    """
    The relay tests on a PostgreSQL-backed gateway.
    """

    engine = "postgres"


# -------------------------------------------------------------------------------------------------
# PostgreSQL outage (items 8, 28, 38) and shutdown (item 94, §9.6)


class _Pipe(Protocol):
    """
    One side of a proxied connection: forwards what it reads to its peer, unless the proxy is
    blackholing, in which case the bytes wait (as in a network that delivers nothing for a while).
    """

    def __init__(self, proxy: BlackholeProxy) -> None:
        self.proxy = proxy
        self.peer: _Pipe | None = None
        self.held: list[bytes] = []
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """
        Count the connection.
        """
        self.proxy.pipes.add(self)

    def dataReceived(self, data: bytes) -> None:
        """
        Forward, or hold while blackholed or not paired yet.
        """
        self.held.append(data)
        self.flush()

    def flush(self) -> None:
        """
        Forward what was held, unless blackholed.
        """
        if self.proxy.blocked or self.peer is None or self.peer.transport is None:
            return
        for data in self.held:
            self.peer.transport.write(data)
        self.held.clear()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Close the other side too.
        """
        self.proxy.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
        self.lost.callback(None)


class _Upstream(ClientFactory):
    """
    Connects the server-side pipe to the real database.
    """

    def __init__(self, downstream: _Pipe) -> None:
        self.downstream = downstream

    def buildProtocol(self, addr: Any) -> _Pipe:
        """
        Pair a new upstream pipe with the downstream one.
        """
        upstream = _Pipe(self.downstream.proxy)
        upstream.peer, self.downstream.peer = self.downstream, upstream
        reactor.callLater(0, self.downstream.flush)
        return upstream

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """
        No database: drop the client.
        """
        if self.downstream.transport is not None:
            self.downstream.transport.loseConnection()


class BlackholeProxy(Factory):
    """
    A TCP proxy on 127.0.0.1 in front of the harness's PostgreSQL that can stop delivering bytes in
    both directions (L{block}) and start again (L{unblock}) without closing anything.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.blocked = False
        self.pipes: set[_Pipe] = set()
        self.listening: Any = None

    def buildProtocol(self, addr: Any) -> _Pipe:
        """
        A client connected: dial the database for it.
        """
        downstream = _Pipe(self)
        reactor.connectTCP("127.0.0.1", self.upstream_port, _Upstream(downstream), timeout=5)
        return downstream

    def start(self) -> int:
        """
        Listen; return the port.
        """
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        port: int = self.listening.getHost().port
        return port

    def block(self) -> None:
        """
        Stop delivering bytes.
        """
        self.blocked = True

    def unblock(self) -> None:
        """
        Deliver what was held and everything after.
        """
        self.blocked = False
        for pipe in list(self.pipes):
            pipe.flush()

    async def stop(self) -> None:
        """
        Stop listening and drop every connection.
        """
        if self.listening is not None:
            await self.listening.stopListening()
        pipes = list(self.pipes)
        for pipe in pipes:
            if pipe.transport is not None:
                cast(Any, pipe.transport).abortConnection()
        for pipe in pipes:
            await bounded(pipe.lost, 10, "proxy connection close")


class PostgresOutageTests(IntegrationCase):
    """
    A gateway whose PostgreSQL goes silent and comes back, through a blackholing proxy.
    """

    timeout = 90

    async def test_blackholed_database(self) -> None:
        """
        With PostgreSQL blackholed: a bridge dial → 500 C{ownership check failed} and C{/readyz} →
        503 C{store unavailable}, each within 2.5 s; C{/healthz} still answers; an existing bridge
        keeps relaying; an executor connects with a ticket (no store call needed). Once the database
        answers again, dials pair again without a restart. A request in flight at SIGTERM is still
        answered and the process exits 0.
        """
        database = create_postgres_database()
        self.addCleanup(drop_postgres_database, database)
        proxy = BlackholeProxy(urlsplit(postgres_dsn()).port or 5432)
        url = urlsplit(postgres_url(database))._replace(netloc=f"postgres@127.0.0.1:{proxy.start()}")
        gateway = self.process(gateway_env(url.geturl(), RELAY_ENV))
        self.addCleanup(proxy.stop)  # runs after the gateway stopped (cleanups run in reverse)
        await gateway.start()
        port = gateway.port or 0
        api = self.http(gateway)
        workspace = unique("ws")
        exe_id, token = await api.register()
        await api.bind(workspace, exe_id, "box")
        executor = await self.clients.executor(port, exe_id, token)
        registration = await api.cloud_register(exe_id, token)
        spare = urlsplit(registration.json["url"]).query.removeprefix("token=")
        bridge = await self.clients.bridge(port, exe_id, mint_cap(workspace), "s1")
        self.assertEqual(await executor.next_frame(), relayframe.resume_frame("s1"))

        proxy.block()
        cap = mint_cap(workspace)

        async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
            began = time.monotonic()
            result = await call
            return result, time.monotonic() - began

        (dial, dial_s), (ready, ready_s) = await gatherResults(
            [
                Deferred.fromCoroutine(
                    timed(api.dial_status(exe_id, {"Authorization": f"Bearer {cap}"}))
                ),
                Deferred.fromCoroutine(timed(api.request("GET", "/readyz"))),
            ]
        )
        self.assertEqual((dial.status, dial.body), (500, b"ownership check failed\n"))
        self.assertEqual((ready.status, ready.body), (503, b"store unavailable\n"))
        self.assertLess(max(dial_s, ready_s), 2.5)
        self.assertEqual((await api.request("GET", "/healthz")).body, b"ok")
        up = relayframe.data_frame("s1", 0, b"up while the database is down")
        bridge.send(up)
        self.assertEqual(await executor.next_frame(), up)
        down = relayframe.data_frame("s1", 0, b"down while the database is down")
        executor.send(down)
        self.assertEqual(await bridge.next_frame(), down)
        reconnected = await self.clients.executor(port, exe_id, spare)

        proxy.unblock()

        async def pairs() -> bool:
            try:
                await self.clients.bridge(port, exe_id, mint_cap(workspace), "s2")
            except DialRefused:
                return False
            return True

        await eventually(pairs, 15, "a bridge dial after the database came back", pace=0.25)
        self.assertEqual(await reconnected.next_frame(), relayframe.resume_frame("s2"))

        proxy.block()
        in_flight = Deferred.fromCoroutine(api.request("GET", "/readyz"))
        stopping = Deferred.fromCoroutine(gateway.stop())
        ready_at_stop = await in_flight
        self.assertEqual((ready_at_stop.status, ready_at_stop.body), (503, b"store unavailable\n"))
        self.assertEqual(await stopping, 0)
        self.assertNotIn(SHARED_SECRET, gateway.output)


class ShutdownTestsMixin(_Integration):
    """
    Graceful shutdown (§9.6; item 94) on one engine.
    """

    engine: ClassVar[str]

    def database_url(self) -> str:
        """
        A fresh database of the class's engine.
        """
        if self.engine == "postgres":
            database = create_postgres_database()
            self.addCleanup(drop_postgres_database, database)
            self.database = database
            return postgres_url(database)
        return "sqlite:///var/exec-gateway.sqlite3"

    def last_seen(self, gateway: GatewayProcess, exe_id: str) -> str:
        """
        The C{last_seen_at} column of C{exe_id}, as text, read from the database after the gateway
        stopped.
        """
        query = "SELECT last_seen_at FROM executors WHERE exe_id = %s"
        if self.engine == "postgres":
            [(value,)] = postgres_rows(self.database, query, exe_id)
            return str(value.timestamp())
        connection = sqlite3.connect(gateway.cwd / "var" / "exec-gateway.sqlite3")
        try:
            [(text,)] = list(connection.execute(query.replace("%s", "?"), (exe_id,)))
        finally:
            connection.close()
        return str(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())

    async def running_executors(
        self, gateway: GatewayProcess
    ) -> tuple[list[tuple[str, ExecutorClient]], list[BridgeClient]]:
        """
        Start C{gateway} with 2 connected executors and 3 bridges (2 on the first, 1 on the second).
        """
        port = await gateway.start()
        api = GatewayHTTP(gateway.base_url)
        workspace = unique("ws")
        executors: list[tuple[str, ExecutorClient]] = []
        bridges: list[BridgeClient] = []
        try:
            for index in range(2):
                exe_id, token = await api.register()
                await api.bind(workspace, exe_id, f"box{index}")
                executor = await self.clients.executor(port, exe_id, token)
                executors.append((exe_id, executor))
                for stream in range(2 - index):
                    cap = mint_cap(workspace)
                    bridges.append(await self.clients.bridge(port, exe_id, cap, f"s{stream}"))
                    resume = relayframe.resume_frame(f"s{stream}")
                    self.assertEqual(await executor.next_frame(), resume)
        finally:
            await api.close()
        return executors, bridges

    async def test_sigterm(self) -> None:
        """
        SIGTERM with 2 executors and 3 bridges: every websocket is closed with 1001
        C{gateway shutting down}, no Reset reaches an executor, and the process exits 0 within
        C{CXG_SHUTDOWN_TIMEOUT} + 1 s.
        """
        gateway = self.process(gateway_env(self.database_url(), {"CXG_SHUTDOWN_TIMEOUT": "5s"}))
        executors, bridges = await self.running_executors(gateway)
        began = time.monotonic()
        stopping = Deferred.fromCoroutine(gateway.stop())
        for client in [*bridges, *(executor for _, executor in executors)]:
            closed = await client.wait_closed()
            self.assertEqual((closed.code, closed.reason), (1001, "gateway shutting down"))
        self.assertEqual(await stopping, 0)
        self.assertLess(time.monotonic() - began, 6)
        [begin] = gateway.named("shutdown.begin")
        self.assertEqual((begin["open_inbound"], begin["open_bridges"]), (2, 3))
        self.assertEqual(len(gateway.named("shutdown.complete")), 1)
        for _, executor in executors:
            self.assertEqual(executor.pending(), 0)

    async def test_last_seen_at_shutdown(self) -> None:
        """
        The executors closed by a shutdown get their C{last_seen_at} recorded at that moment (the
        store is closed only after them).
        """
        gateway = self.process(gateway_env(self.database_url()))
        executors, _ = await self.running_executors(gateway)
        connected = time.time()
        self.assertEqual(await gateway.stop(), 0)
        for exe_id, _ in executors:
            self.assertGreaterEqual(float(self.last_seen(gateway, exe_id)), connected)

    async def test_in_flight_requests_finish(self) -> None:
        """
        HTTP requests in flight at SIGTERM (registrations waiting for bcrypt and the store) are
        answered in full before the store closes; the process exits 0.
        """
        gateway = self.process(gateway_env(self.database_url()))
        await gateway.start()
        api = self.http(gateway)
        calls = [Deferred.fromCoroutine(api.register(f"usr_{i}")) for i in range(12)]
        first: Deferred[None] = Deferred()

        def note(result: object) -> object:
            if not first.called:
                first.callback(None)
            return result

        for call in calls:
            call.addBoth(note)
        await bounded(first, 10, "the first registration")
        stopping = Deferred.fromCoroutine(gateway.stop())
        outcomes = await DeferredList(calls, consumeErrors=True)
        code = await stopping
        failures = [str(result) for ok, result in outcomes if not ok]
        self.assertEqual(failures, [])
        self.assertEqual(len({result[0] for _, result in outcomes}), 12)
        self.assertEqual(code, 0)


class SQLiteShutdownTests(ShutdownTestsMixin, IntegrationCase):
    """
    Graceful shutdown with SQLite.
    """

    engine = "sqlite"


class PostgresShutdownTests(ShutdownTestsMixin, IntegrationCase):
    """
    Graceful shutdown with PostgreSQL.
    """

    engine = "postgres"
