"""
The exec gateway's HTTP routes (C{exec-gateway.md} §3, §4.1–§4.7): health, metrics, executor
registration, the admin and internal APIs, the pre-upgrade checks of the two websocket routes, and the
byte relay's create and transfer routes (the pairing itself is L{codexgw.execgw.relay}).

Every check runs before a websocket upgrade and answers with a plain HTTP status, in the spec's order;
only then is the request handed to Autobahn (L{FrameFactory}) with the relay logic the
L{Switchboard} builds for it. Handlers never let an exception escape: a client mistake gets the
route's 4xx body, a failing store the route's 500 body, and nothing returns a traceback.

Decisions where the spec is silent: a failure of the store that the spec does not list for a route is
answered like the route's listed store failure; path parameters are taken as Klein/werkzeug decode
them (percent-decoded, one segment). C{relay/create} checks the body size, then the shared secret, then
whether the relay is enabled (so an unauthenticated caller learns nothing). C{HEAD /relay/<ticket>} is
answered 405 (it must not claim the GET side).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from codexgw import tokens
from codexgw.execgw.config import ExecGatewayConfig
from codexgw.execgw.inbound import InboundSession
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.passwords import TokenHasher, new_registration_token
from codexgw.execgw.peer import FrameFactory, IFramePeer, IFrameReceiver
from codexgw.execgw.relay import (
    RELAY_DISABLED,
    RelayRefused,
    RelayRegistry,
    RequestDownload,
    RequestUpload,
    create_relay,
)
from codexgw.execgw.sdk import SDKRoutes, connected_executor_object
from codexgw.execgw.store import BindConflict, ExecutorRecord, IStore, utc_now
from codexgw.execgw.switchboard import Switchboard
from codexgw.httpio import (
    DEFAULT_MAX_BODY_BYTES,
    InvalidJSON,
    bearer_token,
    body_exceeds,
    empty_response,
    json_error,
    json_response,
    plain_response,
    read_body,
    read_json_object,
    text_response,
)

log = Logger()

#: Deadline of the ownership check on C{/bridge} (§4.3 step 5).
OWNERSHIP_DEADLINE = 2.0
#: Deadline of other store calls made by requests (§9.1).
STORE_DEADLINE = 5.0
#: Deadline of the readiness ping (§4.1).
READY_DEADLINE = 2.0
#: Seconds a client is told to wait when an executor's stream slots are all taken.
RETRY_AFTER = b"30"
#: The exe_id path parameter of the routes that answer an empty one themselves (400, §4.2–§4.4)
#: instead of letting the router answer 404; C{//} must not be merged away either.
_EXE_ID = "<string(minlength=0):exe_id>"

_T = TypeVar("_T")


def with_deadline(d: Deferred[_T], seconds: float, clock: IReactorTime) -> Deferred[_T]:
    """
    Cancel C{d} if it has not fired within C{seconds} (the store then fails it with StoreUnavailable
    or it fails with C{TimeoutError}); either way the caller sees a failure, never a hang.
    """
    return d.addTimeout(seconds, clock)


class ExecGatewayRoutes:
    """
    The route table of one exec gateway.

    @ivar app: the Klein application; C{app.resource()} is the site's root.
    @ivar relays: the byte relay's registry, or C{None} when the relay is disabled.
    """

    app = Klein()

    def __init__(
        self,
        config: ExecGatewayConfig,
        store: IStore,
        switchboard: Switchboard,
        hasher: TokenHasher,
        metrics: ExecMetrics,
        clock: IReactorTime,
        used_tickets: tokens.IUsedTickets,
        reactor: Any = None,
        relays: RelayRegistry | None = None,
        sdk: SDKRoutes | None = None,
    ) -> None:
        """
        @param relays: the relay registry to use; by default one is made when the relay is enabled.
        @param sdk: the SDK REST surface, or C{None} when it is disabled (its routes answer 404).
        """
        self.config = config
        self.store = store
        self.switchboard = switchboard
        self.hasher = hasher
        self.metrics = metrics
        self.clock = clock
        self.used_tickets = used_tickets
        self._reactor = reactor
        if relays is None and config.public_https_base_url is not None:
            relays = RelayRegistry(
                clock,
                config.public_https_base_url,
                config.relay_default_ttl,
                config.relay_max_per_workspace,
                metrics,
            )
        self.relays = relays
        self.sdk = sdk

    def _now(self) -> int:
        return int(self.clock.seconds())

    def _frame_factory(self, make_receiver: Callable[[IFramePeer], IFrameReceiver]) -> FrameFactory:
        return FrameFactory(
            make_receiver,
            max_frame_bytes=self.config.max_frame_bytes,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            reactor=self._reactor,
        )

    # ---------------------------------------------------------------------------------------------
    # 4.1 Health, readiness, metrics

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """
        Alive: 200 C{ok}, without touching the store.
        """
        return plain_response(request, 200, b"ok")

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: IRequest) -> bytes:
        """
        Ready when the store answers a ping within 2 s.
        """
        try:
            await with_deadline(self.store.ping(), READY_DEADLINE, self.clock)
        except Exception:
            return text_response(request, 503, "store unavailable")
        return plain_response(request, 200, b"ready")

    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request: IRequest) -> bytes:
        """
        The Prometheus exposition of §10.2.
        """
        self.metrics.revoked_turns.set(len(self.switchboard.revoked))
        body, content_type = self.metrics.render()
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    # ---------------------------------------------------------------------------------------------
    # 4.2 Executor inbound websocket

    @app.route(f"/codex-exec/{_EXE_ID}", methods=["GET"], merge_slashes=False)
    async def inbound(self, request: IRequest, exe_id: str) -> bytes | IResource:
        """
        Authenticate an executor (ticket, or raw registration token) and upgrade.
        """
        if request.method == b"HEAD":
            # werkzeug allows HEAD wherever GET is; a HEAD must not consume a single-use ticket.
            return text_response(request, 405, "method not allowed")
        raw = request.args.get(b"token", [b""])[0] if request.args else b""
        token = raw.decode("utf-8", "surrogateescape")
        peer = _peer(request)
        if not exe_id or not token:
            return text_response(request, 400, "missing parameters")
        if "." in exe_id:
            return self._inbound_refused(request, exe_id, "bad_exe_id", peer)
        if "." in token:
            try:
                tokens.verify_ws_ticket(
                    self.config.internal_shared_secret, token, exe_id, self._now(), self.used_tickets
                )
            except tokens.TicketRejected as e:
                return self._inbound_refused(request, exe_id, e.reason, peer)
        else:
            try:
                stored = await with_deadline(
                    self.store.get_registration_token_hash(exe_id), STORE_DEADLINE, self.clock
                )
            except Exception as e:
                self._store_failed(request, "get_registration_token_hash", e)
                self.metrics.inbound_connections.labels(outcome="error").inc()
                return text_response(request, 500, "internal error")
            if stored is None:
                await self.hasher.check_absent(token)
                return self._inbound_refused(request, exe_id, "unknown_exe_id", peer)
            if not await self.hasher.check_token(token, stored):
                return self._inbound_refused(request, exe_id, "bad_token", peer)
        user_agent = (request.getHeader(b"User-Agent") or b"").decode("utf-8", "replace")

        def make_inbound(peer: IFramePeer) -> InboundSession:
            return self.switchboard.new_inbound(exe_id, peer, user_agent)

        return _upgrade(request, self._frame_factory(make_inbound))

    def _inbound_refused(self, request: IRequest, exe_id: str, reason: str, peer: str) -> bytes:
        log.warn(
            "executor {exe_id} refused: {reason}",
            event="inbound.unauthorized",
            exe_id=exe_id,
            reason=reason,
            peer=peer,
        )
        self.metrics.inbound_connections.labels(outcome="unauthorized").inc()
        return text_response(request, 401, "unauthorized")

    # ---------------------------------------------------------------------------------------------
    # 4.3 Bridge websocket

    @app.route(f"/bridge/{_EXE_ID}", methods=["GET"], merge_slashes=False)
    async def bridge(self, request: IRequest, exe_id: str) -> bytes | IResource:
        """
        Check a bridge dial in the spec's order, reserve a stream slot, and upgrade.
        """
        if request.method == b"HEAD":
            return text_response(request, 405, "method not allowed")
        peer = _peer(request)
        token = bearer_token(request)
        if token is None:
            return self._bridge_refused(request, exe_id, 401, "missing Bearer", "missing_bearer", peer)
        if not exe_id or not token:
            return self._bridge_refused(
                request, exe_id, 400, "missing parameters", "missing_parameters", peer
            )
        try:
            claims = tokens.verify_cap_token(self.config.captoken_hmac_secret, token, self._now())
        except tokens.Expired:
            return self._bridge_refused(request, exe_id, 401, "token expired", "expired", peer)
        except tokens.TokenError:
            return self._bridge_refused(request, exe_id, 401, "unauthorized", "unauthorized", peer)
        turn = claims.turn_id
        if self.switchboard.revoked.contains(turn):
            return self._bridge_refused(request, exe_id, 401, "turn revoked", "revoked", peer, turn)
        try:
            owned = await with_deadline(
                self.store.owns_executor(claims.workspace_id, exe_id), OWNERSHIP_DEADLINE, self.clock
            )
        except Exception as e:
            if _client_gone(request):
                return b""
            self._store_failed(request, "owns_executor", e)
            return self._bridge_refused(
                request, exe_id, 500, "ownership check failed", "store_error", peer, turn
            )
        if not owned:
            return self._bridge_refused(
                request, exe_id, 403, "exe_id not in workspace", "forbidden", peer, turn
            )
        inbound = self.switchboard.registry.lookup(exe_id)
        if inbound is None or not inbound.alive:
            return self._bridge_refused(
                request, exe_id, 503, "executor not connected", "offline", peer, turn
            )
        slot = self.switchboard.slots.reserve(exe_id)
        if slot is None:
            request.setHeader(b"Retry-After", RETRY_AFTER)
            return self._bridge_refused(
                request, exe_id, 503, "executor stream limit reached", "stream_limit", peer, turn
            )

        def make_bridge(peer: IFramePeer) -> IFrameReceiver:
            return self.switchboard.new_bridge(inbound, claims, slot, peer)

        return _upgrade(request, self._frame_factory(make_bridge))

    def _bridge_refused(
        self,
        request: IRequest,
        exe_id: str,
        status: int,
        message: str,
        why: str,
        peer: str,
        turn_id: str = "",
    ) -> bytes:
        emit = log.error if why == "store_error" else log.warn
        emit(
            "bridge dial to {exe_id} refused: {why}",
            event="bridge.rejected",
            exe_id=exe_id,
            status=status,
            why=why,
            turn_id=turn_id,
            peer=peer,
        )
        self.metrics.bridge_dials.labels(outcome=why).inc()
        return text_response(request, status, message)

    # ---------------------------------------------------------------------------------------------
    # 4.4 Executor registration

    @app.route(f"/cloud/executor/{_EXE_ID}/register", methods=["POST"], merge_slashes=False)
    async def cloud_register(self, request: IRequest, exe_id: str) -> bytes:
        """
        Trade a registration token for a ws URL carrying a single-use ticket.
        """
        if not exe_id:
            return json_error(request, 400, "exe_id required")
        if "." in exe_id:
            return json_error(request, 400, "invalid exe_id")
        token = bearer_token(request)
        if not token:
            return json_error(request, 401, "missing bearer")
        try:
            stored = await with_deadline(
                self.store.get_registration_token_hash(exe_id), STORE_DEADLINE, self.clock
            )
        except Exception as e:
            self._store_failed(request, "get_registration_token_hash", e)
            return json_error(request, 500, "internal")
        if stored is None:
            await self.hasher.check_absent(token)
            return json_error(request, 401, "unauthorized")
        if not await self.hasher.check_token(token, stored):
            return json_error(request, 401, "unauthorized")
        exp = self.switchboard.unique_ticket_exp(exe_id, self._now() + int(self.config.ws_ticket_ttl))
        ticket = tokens.mint_ws_ticket(self.config.internal_shared_secret, exe_id, exp)
        path = f"/codex-exec/{quote(exe_id, safe='')}?token={quote(ticket, safe='')}"
        url = self._ws_base(request) + path
        return json_response(
            request, 200, {"id": exe_id, "executor_id": exe_id, "environment_id": exe_id, "url": url}
        )

    @app.route(f"/cloud/environment/{_EXE_ID}/register", methods=["POST"], merge_slashes=False)
    async def environment_register(self, request: IRequest, exe_id: str) -> bytes:
        """
        The same handler under the name codex 0.133 uses.
        """
        return await self.cloud_register(request, exe_id)

    def _ws_base(self, request: IRequest) -> str:
        if self.config.public_ws_base_url:
            return self.config.public_ws_base_url
        host = (request.getHeader(b"Host") or b"").decode("utf-8", "replace")
        forwarded = request.getHeader(b"X-Forwarded-Proto") or b""
        secure = request.isSecure() or forwarded.strip().lower() == b"https"
        return f"{'wss' if secure else 'ws'}://{host}"

    # ---------------------------------------------------------------------------------------------
    # 4.5 Admin API

    def _admin_refusal(self, request: IRequest) -> bytes | None:
        if body_exceeds(request, DEFAULT_MAX_BODY_BYTES):
            return json_error(request, 413, "request body too large")
        presented = request.getHeader(b"X-Internal-Secret")
        if presented is None or not hmac.compare_digest(
            presented, self.config.agentserver_internal_secret.value
        ):
            return text_response(request, 401, "unauthorized")
        return None

    @app.route("/api/codex-exec/register", methods=["POST"])
    async def admin_register(self, request: IRequest) -> bytes:
        """
        Register a new executor; answer its id and its registration token, once.
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        user_id = (request.getHeader(b"X-User-Id") or b"").decode("utf-8", "replace")
        if not user_id:
            return json_error(request, 401, "missing user")
        try:
            body = read_json_object(read_body(request), {"display_name": str})
        except InvalidJSON:
            return json_error(request, 400, "invalid JSON")
        display_name = body.get("display_name", "")
        assert isinstance(display_name, str)
        exe_id = f"exe_{uuid.uuid4()}"
        try:
            token = new_registration_token()
            token_hash = await self.hasher.hash_token(token)
        except Exception:
            log.failure("registration token could not be made", event="admin.error")
            return json_error(request, 500, "internal")
        record = ExecutorRecord(
            exe_id=exe_id,
            user_id=user_id,
            display_name=display_name,
            description="",
            default_cwd="",
            registered_at=self._utcnow(),
            last_seen_at=None,
        )
        try:
            await with_deadline(
                self.store.create_executor(record, token_hash), STORE_DEADLINE, self.clock
            )
        except Exception as e:
            self._store_failed(request, "create_executor", e)
            return json_error(request, 500, "create executor")
        log.info(
            "executor {exe_id} registered for {user_id}",
            event="admin.executor_registered",
            exe_id=exe_id,
            user_id=user_id,
        )
        return json_response(request, 201, {"exe_id": exe_id, "registration_token": token})

    @app.route("/api/codex-exec/executors/<exe_id>", methods=["DELETE"])
    async def admin_delete_executor(self, request: IRequest, exe_id: str) -> bytes:
        """
        Delete an executor and its bindings; close its live inbound with 1008.
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            await with_deadline(self.store.delete_executor(exe_id), STORE_DEADLINE, self.clock)
        except Exception as e:
            self._store_failed(request, "delete_executor", e)
            return json_error(request, 500, "delete")
        self.switchboard.close_executor(exe_id)
        log.info("executor {exe_id} deleted", event="admin.executor_deleted", exe_id=exe_id)
        return empty_response(request)

    @app.route("/api/codex-exec/workspaces/<wid>/executors", methods=["POST"])
    @app.route("/api/codex-exec/workspaces/<wid>/executors/", methods=["POST"])
    async def admin_bind(self, request: IRequest, wid: str) -> bytes:
        """
        Bind an executor to a workspace under a name (upsert).
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = read_json_object(
                read_body(request), {"exe_id": str, "name": str, "description": str, "is_default": bool}
            )
        except InvalidJSON:
            return json_error(request, 400, "invalid JSON")
        exe_id, name = body.get("exe_id", ""), body.get("name", "")
        description, is_default = body.get("description", ""), body.get("is_default", False)
        assert isinstance(exe_id, str) and isinstance(name, str)
        assert isinstance(description, str) and isinstance(is_default, bool)
        if not exe_id:
            return json_error(request, 400, "exe_id required")
        if not name:
            return json_error(request, 400, "name required")
        try:
            await with_deadline(
                self.store.bind_workspace_executor(wid, exe_id, name, description, is_default),
                STORE_DEADLINE,
                self.clock,
            )
        except BindConflict:
            return json_error(request, 409, "bind failed (name may already be taken in this workspace)")
        except Exception as e:
            self._store_failed(request, "bind_workspace_executor", e)
            return json_error(request, 500, "bind")
        log.info(
            "executor {exe_id} bound to {workspace_id} as {name}",
            event="admin.bound",
            exe_id=exe_id,
            workspace_id=wid,
            name=name,
        )
        return json_response(request, 201, {"status": "ok"})

    @app.route("/api/codex-exec/workspaces/<wid>/executors", methods=["GET"])
    @app.route("/api/codex-exec/workspaces/<wid>/executors/", methods=["GET"])
    async def admin_list(self, request: IRequest, wid: str) -> bytes:
        """
        Every binding of a workspace, online or not, in binding order.
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            bindings = await with_deadline(
                self.store.list_workspace_executors(wid), STORE_DEADLINE, self.clock
            )
        except Exception as e:
            self._store_failed(request, "list_workspace_executors", e)
            return json_error(request, 500, "list")
        return json_response(request, 200, [connected_executor_object(b) for b in bindings])

    @app.route("/api/codex-exec/workspaces/<wid>/executors/<exe_id>", methods=["DELETE"])
    async def admin_unbind(self, request: IRequest, wid: str, exe_id: str) -> bytes:
        """
        Remove a binding (204 also when absent).
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            await with_deadline(
                self.store.unbind_workspace_executor(wid, exe_id), STORE_DEADLINE, self.clock
            )
        except Exception as e:
            self._store_failed(request, "unbind_workspace_executor", e)
            return json_error(request, 500, "unbind")
        log.info(
            "executor {exe_id} unbound from {workspace_id}",
            event="admin.unbound",
            exe_id=exe_id,
            workspace_id=wid,
        )
        return empty_response(request)

    # ---------------------------------------------------------------------------------------------
    # 4.6 Internal API

    def _is_shared_secret(self, token: str) -> bool:
        return hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), self.config.internal_shared_secret.value
        )

    @app.route("/api/exec-gateway/connected", methods=["GET"])
    async def connected(self, request: IRequest) -> bytes:
        """
        The bound executors of a workspace that have a live inbound, by shared secret or cap token.
        """
        if body_exceeds(request, DEFAULT_MAX_BODY_BYTES):
            return json_error(request, 413, "request body too large")
        token = bearer_token(request)
        if token is None:
            return text_response(request, 401, "unauthorized")
        if self._is_shared_secret(token):
            raw = request.args.get(b"workspace_id", [b""])[0] if request.args else b""
            workspace_id = raw.decode("utf-8", "replace")
            if not workspace_id:
                return json_error(request, 400, "workspace_id required")
        else:
            try:
                claims = tokens.verify_cap_token(self.config.captoken_hmac_secret, token, self._now())
            except tokens.TokenError:
                return text_response(request, 401, "unauthorized")
            if self.switchboard.revoked.contains(claims.turn_id) or not claims.workspace_id:
                return text_response(request, 401, "unauthorized")
            workspace_id = claims.workspace_id
        try:
            bindings = await with_deadline(
                self.store.connected_executors_for_workspace(
                    workspace_id, self.switchboard.registry.connected_ids()
                ),
                STORE_DEADLINE,
                self.clock,
            )
        except Exception as e:
            self._store_failed(request, "connected_executors_for_workspace", e)
            return json_error(request, 500, "list")
        return json_response(request, 200, [connected_executor_object(b) for b in bindings])

    @app.route("/api/exec-gateway/revoke-turn", methods=["POST"])
    def revoke_turn(self, request: IRequest) -> bytes:
        """
        Refuse new bridges and cap-token calls of a turn from now on.
        """
        if body_exceeds(request, DEFAULT_MAX_BODY_BYTES):
            return json_error(request, 413, "request body too large")
        token = bearer_token(request)
        if token is None or not self._is_shared_secret(token):
            return text_response(request, 401, "unauthorized")
        try:
            body = read_json_object(read_body(request), {"turn_id": str, "exp": int})
        except InvalidJSON:
            return json_error(request, 400, "invalid JSON")
        turn_id, exp = body.get("turn_id", ""), body.get("exp", 0)
        assert isinstance(turn_id, str) and isinstance(exp, int)
        if not turn_id:
            return json_error(request, 400, "turn_id required")
        if exp == 0:
            exp = self._now() + 3600
        if self.switchboard.revoked.add(turn_id, exp):
            log.warn("a live revoked turn was evicted", event="revoke.evicted_live", turn_id=turn_id)
        log.info("turn {turn_id} revoked", event="revoke.added", turn_id=turn_id, exp=exp)
        self.metrics.revoked_turns.set(len(self.switchboard.revoked))
        return empty_response(request)

    @app.route("/api/exec-gateway/relay/create", methods=["POST"])
    async def relay_create(self, request: IRequest) -> bytes:
        """
        Mint a relay ticket for two executors of one workspace.
        """
        if body_exceeds(request, DEFAULT_MAX_BODY_BYTES):
            return json_error(request, 413, "request body too large")
        token = bearer_token(request)
        if token is None or not self._is_shared_secret(token):
            return text_response(request, 401, "unauthorized")
        if self.relays is None:
            return json_error(request, 503, RELAY_DISABLED)
        fields = {
            "workspace_id": str,
            "source_exe_id": str,
            "dest_exe_id": str,
            "ttl_seconds": int,
            "max_bytes": int,
        }
        try:
            body = read_json_object(read_body(request), fields)
        except InvalidJSON:
            return json_error(request, 400, "invalid JSON")
        wid, source = body.get("workspace_id", ""), body.get("source_exe_id", "")
        dest, ttl = body.get("dest_exe_id", ""), body.get("ttl_seconds", 0)
        max_bytes = body.get("max_bytes", 0)
        assert isinstance(wid, str) and isinstance(source, str) and isinstance(dest, str)
        assert isinstance(ttl, int) and isinstance(max_bytes, int)
        try:
            grant = await create_relay(self.relays, self.store, wid, source, dest, ttl, max_bytes)
        except RelayRefused as e:
            if e.status == 500:
                if _client_gone(request):
                    return b""
                cause = e.__cause__ if e.__cause__ is not None else e
                self._store_failed(request, "owns_executor", cause)
            return json_error(request, e.status, e.message)
        return json_response(request, 201, grant.json())

    # ---------------------------------------------------------------------------------------------
    # 4.7 Byte relay

    @app.route("/relay/<ticket>", methods=["PUT", "GET"])
    def relay_transfer(self, request: IRequest, ticket: str) -> bytes | Deferred[None]:
        """
        One side of a relay: the upload (PUT) or the download (GET), after the pre-checks.
        """
        if request.method == b"HEAD":
            return text_response(request, 405, "method not allowed")
        if self.relays is None:
            return text_response(request, 404, "relay disabled (no public HTTPS base URL configured)")
        token = bearer_token(request)
        if not token or not hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), ticket.encode("utf-8", "surrogateescape")
        ):
            return text_response(request, 401, "unauthorized")
        relay = self.relays.find(ticket)
        if relay is None:
            return text_response(request, 410, "ticket not found or expired")
        if request.method == b"PUT":
            upload = RequestUpload(request, relay)
            relay.attach_upload(upload)
            return upload.done
        download = RequestDownload(request, relay, self.clock)
        relay.attach_download(download)
        return download.done

    # ---------------------------------------------------------------------------------------------
    # 4.8 SDK REST surface

    @app.route("/api/sdk/", branch=True)
    @app.route("/api/connectors/", branch=True)
    def sdk_surface(self, request: IRequest) -> bytes | IResource:
        """
        The SDK REST surface under both prefixes (L{codexgw.execgw.sdk}); 404 when it is disabled.
        """
        if self.sdk is None:
            return text_response(request, 404, "not found")
        return self.sdk.resource()

    # ---------------------------------------------------------------------------------------------

    def _utcnow(self) -> datetime:
        return utc_now(self.clock)

    def _store_failed(self, request: IRequest, op: str, error: BaseException) -> None:
        if _client_gone(request):
            # Klein cancels the handler of a request whose client hung up, which fails the store call
            # it was awaiting: that is no store failure.
            return
        self.metrics.store_errors.labels(op=op).inc()
        log.warn("store call {op} failed: {error}", event="store.error", op=op, error=str(error))


def _client_gone(request: IRequest) -> bool:
    """
    Whether the client hung up while the request waited (Twisted then drops the request's channel and
    Klein cancels the handler's pending call).
    """
    return getattr(request, "channel", None) is None


def _upgrade(request: IRequest, factory: FrameFactory) -> IResource:
    """
    Hand the request's connection to Autobahn.

    The HTTP channel's idle timeout would otherwise still fire after the upgrade and drop a healthy
    websocket; websockets have their own liveness (pings).
    """
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.setTimeout(None)
    resource: IResource = WebSocketResource(factory)
    return resource


def _peer(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host is not None else str(address)
