"""
The app gateway's outbound clients of C{app-gateway.md} §11 (besides the RemoteVerifier, which lives
with the other authenticators in L{codexgw.appgw.auth}).

 - L{ExecGatewayClient} (L{IExecGatewayClient}): the exec gateway's internal API — live executors of
   a workspace (C{GET /api/exec-gateway/connected}, 5 s), relay tickets (C{POST …/relay/create},
   10 s, status and body passed through), turn revocation (C{POST …/revoke-turn}, 5 s, never fails).
 - L{WorkspaceTokenClient} (L{IWorkspaceTokenSource}): the per-workspace LLM token from agentserver
   (C{POST <agentserver>/internal/workspace-token}, 5 s).

The shared rules (no C{Origin}, bodies read to 1 MiB, errors quoting 1 KiB, deadlines on an injected
clock) are L{codexgw.httpclient}'s.

Decisions where the spec is silent (error texts are the spec's where it gives them):
 - C{connected}: an empty workspace id fails with C{execgwclient: workspaceID required} before any
   call; other failures read C{execgwclient: connected: <detail>}, C{execgwclient: connected:
   status=<n> body=<≤1 KiB>} or C{execgwclient: connected: decode: <detail>}. The answer must be a
   JSON array (of anything: it is passed on unchanged) or C{null} (→ C{[]}).
 - C{create_relay}: the caller's object is sent with C{workspace_id} set to the gateway's value,
   which replaces any the caller sent (a spawn may only ask for its own workspace). Every status is
   passed through with its body; no answer, a timeout or a body over 1 MiB raises
   L{ExecGatewayUnreachable} (C{exec gateway unreachable: <detail>}, the 502 text of §3.4). An empty
   workspace id fails like C{connected}'s.
 - C{revoke_turn}: only 204 is success. Its Deferred fires with whether the turn was revoked and
   never fails (a caller's own cancellation excepted); failures are logged at warning
   (C{revoke-turn failed}) with the turn id, never with a secret. An empty turn id is logged and not
   sent.
 - C{fetch} (workspace token): the answer must be a JSON object whose C{token} is a non-empty
   string; failures read C{workspace-token: <detail>}, C{workspace-token: status=<n> body=<…>} or
   C{workspace-token: decode: <detail>}; an empty workspace id fails with C{workspace-token:
   workspaceID required} before any call. The token itself never appears in an error.
 - Requests with a body send C{Content-Type: application/json}; the exec gateway's C{connected}
   request sends C{Accept: application/json} as §11 lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from codexgw.config import Secret
from codexgw.httpclient import (
    ExchangeFailed,
    HTTPRequester,
    decode_json,
    exchange,
    json_bytes,
    make_headers,
    quote_body,
)

#: Seconds each call may take (§11, §12.1).
CONNECTED_TIMEOUT: Final = 5.0
RELAY_TIMEOUT: Final = 10.0
REVOKE_TIMEOUT: Final = 5.0
WORKSPACE_TOKEN_TIMEOUT: Final = 5.0
#: The exec gateway's internal paths.
CONNECTED_PATH: Final = "/api/exec-gateway/connected"
RELAY_CREATE_PATH: Final = "/api/exec-gateway/relay/create"
REVOKE_TURN_PATH: Final = "/api/exec-gateway/revoke-turn"
#: agentserver's path of the per-workspace LLM token.
WORKSPACE_TOKEN_PATH: Final = "/internal/workspace-token"  # noqa: S105 - a path

_log = Logger()


class ExecGatewayError(Exception):
    """
    A call to the exec gateway failed; C{str(error)} starts with C{execgwclient: }.
    """


class ExecGatewayUnreachable(Exception):
    """
    The relay call got no answer: C{exec gateway unreachable: <detail>} (§3.4's 502 text).
    """


class WorkspaceTokenError(Exception):
    """
    The workspace LLM token could not be fetched; C{str(error)} starts with C{workspace-token: }.
    """


@dataclass(frozen=True)
class RelayAnswer:
    """
    The exec gateway's answer to a relay request, passed through unchanged.

    @ivar status: its HTTP status.
    @ivar body: its body (at most 1 MiB).
    """

    status: int
    body: bytes


class IExecGatewayClient(Interface):
    """
    The exec gateway's internal API as the app gateway uses it.
    """

    def connected(workspace_id: str) -> Deferred[list[object]]:
        """
        The live executors of C{workspace_id}: the exec gateway's JSON array, elements unchanged.

        @return: a Deferred failing with L{ExecGatewayError} on any failure.
        """

    def create_relay(workspace_id: str, request: Mapping[str, object]) -> Deferred[RelayAnswer]:
        """
        Ask for a relay ticket: C{request} plus C{workspace_id}.

        @return: a Deferred firing with the exec gateway's answer whatever its status, failing with
            L{ExecGatewayUnreachable} when there was none.
        """

    def revoke_turn(turn_id: str, exp: int) -> Deferred[bool]:
        """
        Revoke the cap tokens of C{turn_id} until C{exp}.

        @return: a Deferred that never fails, firing with whether the exec gateway confirmed.
        """


class IWorkspaceTokenSource(Interface):
    """
    Where per-workspace LLM tokens come from (§5.10 item 3).
    """

    def fetch(workspace_id: str) -> Deferred[str]:
        """
        The LLM token of C{workspace_id}.

        @return: a Deferred failing with L{WorkspaceTokenError} on any failure.
        """


@implementer(IExecGatewayClient)
class ExecGatewayClient:
    """
    The exec gateway's internal API over HTTP, authenticated with C{Authorization: Bearer
    <CXG_EXEC_GATEWAY_INTERNAL_SECRET>}.
    """

    def __init__(
        self,
        http: HTTPRequester,
        clock: IReactorTime,
        base_url: str,
        secret: Secret,
        log: Logger | None = None,
    ) -> None:
        """
        @param http: the HTTP client.
        @param clock: enforces the time limits.
        @param base_url: C{CXG_EXEC_GATEWAY_INTERNAL_URL} (no trailing C{/}).
        @param secret: C{CXG_EXEC_GATEWAY_INTERNAL_SECRET}.
        @param log: where revoke failures are logged.
        """
        self._http = http
        self._clock = clock
        self._base_url = base_url
        self._secret = secret
        self._log = log if log is not None else _log

    def _authorization(self) -> bytes:
        return b"Bearer " + self._secret.value

    def connected(self, workspace_id: str) -> Deferred[list[object]]:
        """
        See L{IExecGatewayClient.connected}: C{GET …/connected?workspace_id=<wid>}, 200 expected.
        """
        if not workspace_id:
            return fail(ExecGatewayError("execgwclient: workspaceID required"))
        return Deferred.fromCoroutine(self._connected(workspace_id))

    async def _connected(self, workspace_id: str) -> list[object]:
        url = f"{self._base_url}{CONNECTED_PATH}?{urlencode({'workspace_id': workspace_id})}"
        headers = make_headers({"Authorization": self._authorization(), "Accept": "application/json"})
        try:
            reply = await exchange(
                self._http, self._clock, "GET", url, headers, None, CONNECTED_TIMEOUT,
                lambda status: status == 200,
            )  # fmt: skip
        except ExchangeFailed as e:
            raise ExecGatewayError(f"execgwclient: connected: {e}") from None
        if reply.status != 200:
            raise ExecGatewayError(
                f"execgwclient: connected: status={reply.status} body={quote_body(reply.body)}"
            )
        try:
            value = decode_json(reply.body)
        except ValueError as e:
            raise ExecGatewayError(f"execgwclient: connected: decode: {e}") from None
        if value is None:
            return []
        if not isinstance(value, list):
            raise ExecGatewayError("execgwclient: connected: decode: not a JSON array")
        return value

    def create_relay(self, workspace_id: str, request: Mapping[str, object]) -> Deferred[RelayAnswer]:
        """
        See L{IExecGatewayClient.create_relay}: C{POST …/relay/create}, 10 s.
        """
        if not workspace_id:
            return fail(ExecGatewayError("execgwclient: workspaceID required"))
        body = {k: v for k, v in request.items() if k != "workspace_id"}
        body["workspace_id"] = workspace_id
        return Deferred.fromCoroutine(self._create_relay(json_bytes(body)))

    async def _create_relay(self, body: bytes) -> RelayAnswer:
        headers = make_headers(
            {"Authorization": self._authorization(), "Content-Type": "application/json"}
        )
        try:
            reply = await exchange(
                self._http, self._clock, "POST", self._base_url + RELAY_CREATE_PATH, headers, body,
                RELAY_TIMEOUT, lambda status: True,
            )  # fmt: skip
        except ExchangeFailed as e:
            raise ExecGatewayUnreachable(f"exec gateway unreachable: {e}") from None
        return RelayAnswer(reply.status, reply.body)

    def revoke_turn(self, turn_id: str, exp: int) -> Deferred[bool]:
        """
        See L{IExecGatewayClient.revoke_turn}: C{POST …/revoke-turn} C{{"turn_id","exp"}}, 204
        expected, 5 s.
        """
        if not turn_id:
            self._log.warn("revoke-turn failed: empty turn id, nothing sent")
            return succeed(False)
        return Deferred.fromCoroutine(self._revoke_turn(turn_id, exp))

    async def _revoke_turn(self, turn_id: str, exp: int) -> bool:
        headers = make_headers(
            {"Authorization": self._authorization(), "Content-Type": "application/json"}
        )
        body = json_bytes({"turn_id": turn_id, "exp": exp})
        try:
            reply = await exchange(
                self._http, self._clock, "POST", self._base_url + REVOKE_TURN_PATH, headers, body,
                REVOKE_TIMEOUT, lambda status: False,
            )  # fmt: skip
        except ExchangeFailed as e:
            self._log.warn("revoke-turn failed for {turn_id}: {error}", turn_id=turn_id, error=str(e))
            return False
        if reply.status != 204:
            self._log.warn(
                "revoke-turn failed for {turn_id}: status={status} body={body}",
                turn_id=turn_id,
                status=reply.status,
                body=quote_body(reply.body),
            )
            return False
        return True


@implementer(IWorkspaceTokenSource)
class WorkspaceTokenClient:
    """
    agentserver's C{POST /internal/workspace-token}, authenticated with C{X-Internal-Secret}.
    """

    def __init__(self, http: HTTPRequester, clock: IReactorTime, base_url: str, secret: Secret) -> None:
        """
        @param http: the HTTP client.
        @param clock: enforces the time limit.
        @param base_url: C{CXG_AGENTSERVER_INTERNAL_URL} (no trailing C{/}).
        @param secret: C{CXG_AGENTSERVER_INTERNAL_SECRET}.
        """
        self._http = http
        self._clock = clock
        self._base_url = base_url
        self._secret = secret

    def fetch(self, workspace_id: str) -> Deferred[str]:
        """
        See L{IWorkspaceTokenSource.fetch}: 200 C{{"token":"…"}} expected, 5 s.
        """
        if not workspace_id:
            return fail(WorkspaceTokenError("workspace-token: workspaceID required"))
        return Deferred.fromCoroutine(self._fetch(workspace_id))

    async def _fetch(self, workspace_id: str) -> str:
        headers = make_headers(
            {"Content-Type": "application/json", "X-Internal-Secret": self._secret.value}
        )
        body = json_bytes({"workspace_id": workspace_id})
        try:
            reply = await exchange(
                self._http, self._clock, "POST", self._base_url + WORKSPACE_TOKEN_PATH, headers,
                body, WORKSPACE_TOKEN_TIMEOUT, lambda status: status == 200,
            )  # fmt: skip
        except ExchangeFailed as e:
            raise WorkspaceTokenError(f"workspace-token: {e}") from None
        if reply.status != 200:
            raise WorkspaceTokenError(
                f"workspace-token: status={reply.status} body={quote_body(reply.body)}"
            )
        try:
            value = decode_json(reply.body)
        except ValueError as e:
            raise WorkspaceTokenError(f"workspace-token: decode: {e}") from None
        token = value.get("token") if isinstance(value, dict) else None
        if not isinstance(token, str) or not token:
            raise WorkspaceTokenError("workspace-token: decode: no token in the answer")
        return token
