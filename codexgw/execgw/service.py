"""
The exec gateway as a Twisted service (C{exec-gateway.md} §2 start sequence, §9.6 shutdown).

L{ExecGatewayService} starts in the spec's order — open the store (migrations included), then listen,
then start the periodic tasks — and stops gracefully: stop listening, close every bridge and inbound
with 1001, give in-flight HTTP requests up to C{CXG_SHUTDOWN_TIMEOUT}, stop the timers, close the store.
A store that cannot be opened is fatal: the message goes to stderr as C{store: <error>} and the process
exits with status 1 (C{delivery.md} §3); so is an endpoint that cannot be listened on
(C{listen: <error>}). A graceful stop exits 0.
"""

# Twisted's service and endpoint APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import os
import weakref
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site

from codexgw.execgw.config import ExecGatewayConfig
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.passwords import TokenHasher
from codexgw.execgw.sdk import SDKRoutes
from codexgw.execgw.sdkauth import make_sdk_authenticator
from codexgw.execgw.store import IStore, open_store
from codexgw.execgw.switchboard import Switchboard
from codexgw.execgw.web import ExecGatewayRoutes
from codexgw.httpio import (
    DEFAULT_MAX_BODY_BYTES,
    BoundedRequest,
    GuardedSite,
    bounded_request,
    redacted_access_log,
)

log = Logger()

#: How long closing websockets get to finish their closing handshakes on shutdown.
CLOSE_GRACE = 2.0
#: How often shutdown looks whether the websockets and HTTP requests it waits for are done.
SHUTDOWN_POLL = 0.05
#: The requests whose bodies are streamed rather than kept: relay uploads.
RELAY_UPLOADS = ((b"PUT", b"/relay/"),)


def tracking_requests(
    base: type[BoundedRequest], in_flight: weakref.WeakSet[BoundedRequest]
) -> type[BoundedRequest]:
    """
    A request class that keeps each request in C{in_flight} from its processing until it finished or
    its connection was lost, so that shutdown can wait for them (§9.6 step 3).
    """

    class TrackedRequest(base):  # type: ignore[valid-type,misc]
        def process(self) -> None:
            in_flight.add(self)
            self.notifyFinish().addBoth(lambda _: in_flight.discard(self))
            super().process()

    return TrackedRequest


def make_site(
    resource: IResource,
    config: ExecGatewayConfig,
    in_flight: weakref.WeakSet[BoundedRequest] | None = None,
    reactor: Any = None,
) -> Site:
    """
    The gateway's HTTP site: request headers within 10 s, TCP keepalive, idle connections closed
    after 120 s, request bodies kept up to the largest limit of any route (except relay uploads, which
    are processed as soon as their headers arrive and stream their body, §4.7), an access log without
    tokens, and (when C{in_flight} is given) every request tracked until it is answered.
    """
    site = GuardedSite(
        resource,
        timeout=120,
        logFormatter=redacted_access_log((b"/relay/",)),
        reactor=reactor,
    )
    requests = bounded_request(
        max(DEFAULT_MAX_BODY_BYTES, config.max_frame_bytes), streamed_routes=RELAY_UPLOADS
    )
    site.requestFactory = requests if in_flight is None else tracking_requests(requests, in_flight)
    return site


def http_in_flight(in_flight: weakref.WeakSet[BoundedRequest]) -> list[BoundedRequest]:
    """
    The requests still being answered: not finished, connection up, and not taken over by a
    websocket (Autobahn detaches the transport from the HTTP channel when it upgrades).
    """
    return [
        request
        for request in list(in_flight)
        if request.channel is not None and request.channel.transport is not None
    ]


class ExecGatewayService(Service):
    """
    One exec gateway: store, switchboard, HTTP and websocket routes on one listening endpoint.

    @ivar port: the listening port once started (tests read the bound port from it).
    @ivar started: fires once the gateway listens.
    """

    def __init__(self, config: ExecGatewayConfig, endpoint: str, reactor: Any) -> None:
        self.config = config
        self.endpoint = endpoint
        self.reactor = reactor
        self.metrics = ExecMetrics()
        self.store: IStore | None = None
        self.switchboard: Switchboard | None = None
        self.sdk: SDKRoutes | None = None
        self.port: IListeningPort | None = None
        self.started: Deferred[None] = Deferred()
        self._starting: Deferred[None] | None = None
        self._in_flight: weakref.WeakSet[BoundedRequest] = weakref.WeakSet()

    def startService(self) -> None:
        """
        Start in the spec's order; a failure to open the store ends the process with status 1.
        """
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._fatal)

    async def _start(self) -> None:
        config = self.config
        self.store = await open_store(config.database_url, config.database_pool_size, self.reactor)
        if not self.running:
            # Stopped while the store was opening: do not start listening after the stop.
            await self.store.close()
            return
        self.switchboard = Switchboard(
            self.reactor,
            self.store,
            self.metrics,
            max_streams_per_executor=config.max_streams_per_executor,
            buffer_bytes=config.bridge_buffer_bytes,
            idle_timeout=config.bridge_idle_timeout,
        )
        routes = ExecGatewayRoutes(
            config,
            self.store,
            self.switchboard,
            TokenHasher(self.reactor, self.reactor.getThreadPool()),
            self.metrics,
            self.reactor,
            self.switchboard.used_tickets,
            reactor=self.reactor,
        )
        authenticator = make_sdk_authenticator(config, self.reactor)
        if authenticator is not None:
            self.sdk = routes.sdk = SDKRoutes(
                config,
                self.store,
                self.switchboard.registry,
                self.metrics,
                self.reactor,
                authenticator,
                relays=routes.relays,
            )
        site = make_site(routes.app.resource(), config, self._in_flight)
        self.port = await serverFromString(self.reactor, self.endpoint).listen(site)
        self.switchboard.start()
        if self.sdk is not None:
            self.sdk.listening_on(self.port.getHost())
            self.sdk.start()
        if config.sdk_mode == "disabled":
            log.warn(
                "sdk REST surface disabled: neither CXG_AGENTSERVER_INTERNAL_URL nor "
                "CXG_INBOUND_HMAC_SECRET is set",
                event="sdk.disabled",
            )
        log.info(
            "exec gateway listening on port {port}",
            event="exec_gateway.started",
            port=getattr(self.port.getHost(), "port", 0),
            store=config.database.engine,
            sdk=config.sdk_mode,
            relay="enabled" if config.relay_enabled else "disabled",
        )
        self.started.callback(None)

    def _fatal(self, failure: Any) -> None:
        # twist has replaced sys.stderr by a log adapter by now: write to the real standard error.
        stage = "store" if self.store is None else "listen"
        os.write(2, f"{stage}: {failure.getErrorMessage()}\n".encode("utf-8", "replace"))
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        Shut down gracefully (§9.6).
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        begin = self.reactor.seconds()
        switchboard = self.switchboard
        log.info(
            "exec gateway shutting down",
            event="shutdown.begin",
            open_inbound=len(switchboard.registry) if switchboard else 0,
            open_bridges=len(switchboard.bridges) if switchboard else 0,
        )
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        if switchboard is not None:
            switchboard.shut_down()
        # Let the closing handshakes finish (so clients see 1001 and last_seen is recorded) and the
        # in-flight HTTP requests complete, each within its bound; then abort what is left.
        ws_deadline = begin + CLOSE_GRACE
        http_deadline = begin + self.config.shutdown_timeout
        while True:
            now = self.reactor.seconds()
            ws_open = switchboard is not None and (
                bool(switchboard.bridges) or len(switchboard.registry) > 0
            )
            requests = http_in_flight(self._in_flight)
            if not (ws_open and now < ws_deadline) and not (requests and now < http_deadline):
                break
            await deferLater(self.reactor, SHUTDOWN_POLL, lambda: None)
        for request in http_in_flight(self._in_flight):
            cast(Any, request.channel.transport).abortConnection()
        if self.sdk is not None:
            await self.sdk.stop()
        if self.store is not None:
            await self.store.close()
        log.info(
            "exec gateway stopped",
            event="shutdown.complete",
            duration_s=self.reactor.seconds() - begin,
        )
        # A graceful stop exits 0 (§9.6); twist would otherwise re-raise the SIGTERM/SIGINT that
        # stopped the reactor and the process would end by that signal.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
        await succeed(None)
