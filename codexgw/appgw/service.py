"""
The app gateway as a Twisted service (C{app-gateway.md} §5.8 startup, §5.9 graceful stop).

Start, in this order: log the configuration's warnings; check the codex version (a mismatch only
warns); take the C{flock} on C{<CXG_TMP_ROOT>/.lock} (held by another gateway → stderr
C{CXG_TMP_ROOT <root> is in use by another codexgw-app process}, exit 1); kill orphaned app-servers of a
previous gateway; clean the root; open the object store; listen; then upload the leftover homes in the
background and start the idle reaper. Anything else failing before the listener is up is fatal too
(exit 1, C{startup: <error>} on stderr).

Stop (SIGTERM/SIGINT), within 30 s: C{/readyz} turns 503 and the listener closes; every TUI is closed
with 1001 C{gateway shutting down}; pending Turn API requests are answered; every workspace is stopped
concurrently and its home uploaded (L{Supervisor.shutdown_all}); the lock is released; exit 0.
"""

# Twisted's service and endpoint APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import os
from typing import Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from codexgw.appgw.auth import make_authenticator
from codexgw.appgw.brokerpool import BrokerPool
from codexgw.appgw.captoken import CapTokenMinter
from codexgw.appgw.clients import ExecGatewayClient, WorkspaceTokenClient
from codexgw.appgw.codexversion import check_codex_version
from codexgw.appgw.config import AppGatewayConfig
from codexgw.appgw.launcher import AppServerLauncher, process_start_time
from codexgw.appgw.loopback import LoopbackGate, LoopbackTokens
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.proxy import TUIProxyFactory
from codexgw.appgw.spawnplan import SpawnPlanner
from codexgw.appgw.staterecords import (
    RootInUse,
    RootLock,
    StateRecords,
    find_orphans,
    kill_orphans,
    prune_homes,
    remove_leftovers,
)
from codexgw.appgw.storeconfig import open_home_dirs, open_object_store
from codexgw.appgw.supervisor import SHUTDOWN_BUDGET, Supervisor
from codexgw.appgw.turns import TurnAPI
from codexgw.appgw.web import AppGatewayRoutes
from codexgw.httpclient import make_http_client
from codexgw.httpio import GuardedSite, bounded_request, redacted_access_log

log = Logger()

#: §8.1: the largest request body of any route (the Turn API's).
MAX_BODY_BYTES: Final = 16 * 1024 * 1024


class AppGatewayService(Service):
    """
    One app gateway: supervisor, TUI proxy, Turn API and routes on one listener.

    @ivar port: the listening port once started (tests read the bound port from it).
    @ivar started: fires once the gateway listens.
    @ivar supervisor: the supervisor, once built.
    """

    def __init__(
        self,
        config: AppGatewayConfig,
        reactor: Any,
        environ: dict[str, str] | None = None,
        ping_interval: float = 30.0,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.environ = dict(os.environ) if environ is None else environ
        self.ping_interval = ping_interval
        self.metrics = AppMetrics()
        self.port: IListeningPort | None = None
        self.started: Deferred[None] = Deferred()
        self.supervisor: Supervisor | None = None
        self._lock: RootLock | None = None
        self._routes: AppGatewayRoutes | None = None
        self._proxies: TUIProxyFactory | None = None
        self._turns: TurnAPI | None = None
        self._recovery: Deferred[None] | None = None

    def startService(self) -> None:
        """
        Start in the order of the module docstring; a failure ends the process with status 1.
        """
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._fatal)

    def _fatal(self, failure: Any) -> None:
        # twist has replaced sys.stderr by a log adapter by now: write to the real standard error.
        message = failure.getErrorMessage()
        if not failure.check(RootInUse):
            message = f"startup: {message}"
        os.write(2, f"{message}\n".encode("utf-8", "replace"))
        log.critical("{message}", message=message)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    async def _start(self) -> None:
        config = self.config
        reactor = self.reactor
        for warning in config.warnings:
            log.warn("{warning}", warning=warning)
        await check_codex_version(reactor, reactor, config.codex_bin, self.environ, log)
        homes = open_home_dirs(config.store)
        self._lock = RootLock(homes.root)
        self._lock.acquire()
        records = StateRecords(homes)
        remove_leftovers(homes)
        orphans = find_orphans(records.all(), homes.root, process_start_time)
        await kill_orphans(orphans, reactor)
        leftovers = prune_homes(homes, records)
        store = open_object_store(config.store, reactor)

        http = make_http_client(reactor)
        exec_gateway = ExecGatewayClient(
            http,
            reactor,
            config.exec_gateway_internal_url,
            config.exec_gateway_internal_secret,
        )
        token_source = None
        if config.agentserver_internal_url is not None:
            assert config.agentserver_internal_secret is not None  # enforced by the table
            token_source = WorkspaceTokenClient(
                http, reactor, config.agentserver_internal_url, config.agentserver_internal_secret
            )
        minter = CapTokenMinter(config.captoken_hmac_secret, config.captoken_ttl, reactor)
        loopback_tokens = LoopbackTokens()
        planner = SpawnPlanner(
            config, minter, loopback_tokens, self._loopback_url, token_source, self.environ
        )
        supervisor = self.supervisor = Supervisor(
            clock=reactor,
            reactor=reactor,
            homes=homes,
            store=store,
            records=records,
            launcher=AppServerLauncher(reactor, config.codex_bin),
            planner=planner,
            loopback_tokens=loopback_tokens,
            minter=minter,
            exec_gateway=exec_gateway,
            metrics=self.metrics,
            max_spawns=config.max_spawns,
            spawn_concurrency=config.spawn_concurrency,
            idle_shutdown=config.idle_shutdown,
            start_time_of=process_start_time,
            max_snapshot_bytes=config.store.max_snapshot_bytes,
        )
        self._proxies = TUIProxyFactory(
            supervisor,
            self.metrics,
            reactor,
            client_buffer_bytes=config.client_buffer_bytes,
            ping_interval=self.ping_interval,
        )
        pool = BrokerPool(supervisor, self.metrics, reactor, config.broker_pool_idle_ttl)
        self._turns = TurnAPI(
            pool, supervisor, self.metrics, reactor, config.agentserver_internal_secret
        )
        self._routes = AppGatewayRoutes(
            config=config,
            authenticator=make_authenticator(config, http, reactor),
            proxies=self._proxies,
            gate=LoopbackGate(loopback_tokens),
            minter=minter,
            exec_gateway=exec_gateway,
            turns=self._turns,
            metrics=self.metrics,
            clock=reactor,
        )
        site = GuardedSite(
            self._routes.app.resource(),
            timeout=120,
            logFormatter=redacted_access_log(),
            reactor=reactor,
        )
        site.requestFactory = bounded_request(MAX_BODY_BYTES)
        self.port = await serverFromString(reactor, config.listen_addr.endpoint).listen(site)
        log.info(
            "app gateway listening on port {port}",
            event="app_gateway.started",
            port=cast(Any, self.port.getHost()).port,
        )
        self._recovery = supervisor.recover([r.workspace_id for r in leftovers])
        supervisor.start()
        self.started.callback(None)

    def _loopback_url(self) -> str:
        assert self.port is not None
        return self.config.listen_addr.loopback_url(cast(Any, self.port.getHost()).port)

    def site(self) -> Site | None:
        """
        The HTTP site, once listening (for tests).
        """
        return self.port.factory if self.port is not None else None  # type: ignore[attr-defined]

    def stopService(self) -> Deferred[None]:
        """
        Shut down gracefully (§5.9).
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        begin = self.reactor.seconds()
        log.info("app gateway shutting down")
        if self._routes is not None:
            self._routes.shutting_down = True
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        if self._proxies is not None:
            self._proxies.close_all(1001, "gateway shutting down")
        if self._turns is not None:
            await self._turns.shutdown()
        if self.supervisor is not None:
            budget = SHUTDOWN_BUDGET - (self.reactor.seconds() - begin)
            await self.supervisor.shutdown_all(max(budget, 0.0))
        if self._lock is not None:
            self._lock.release()
        log.info("app gateway stopped", duration_s=self.reactor.seconds() - begin)
        # A graceful stop exits 0; twist would otherwise re-raise the signal that stopped it.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
