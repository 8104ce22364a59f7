"""
Inbound authentication of TUI websockets (C{app-gateway.md} §4).

 - L{IInboundAuthenticator}: C{verify(token)} → the L{Identity} a bearer token speaks for.
 - L{ISessionTracker}: C{open_session} / C{close_session}, for authenticators that track sessions.
 - L{HMACAuthenticator} (§4.2, when C{CXG_AGENTSERVER_INTERNAL_URL} is unset): local HMAC tokens.
 - L{RemoteVerifier} (§4.3, when it is set): agentserver verifies tokens and tracks sessions.
 - L{client_metadata} (§4.4): what session-open reports about the client, from its headers and peer.
 - L{make_authenticator}: the one the configuration selects.

Every identity's workspace id must match C{^[A-Za-z0-9_-]{1,128}$} (it names a directory); any other
is L{Unauthorized}, whichever authenticator produced it.

Decisions where the spec is silent:
 - The RemoteVerifier answers an empty token, or one that is not valid UTF-8 text (an undecodable
   header byte), with L{Unauthorized} without calling agentserver.
 - In a 200 answer, C{user_id} and C{session_id} may be absent or C{null} (then C{""}); present, they
   must be strings. A 200 whose body is not such a JSON object fails with
   C{<call> call: decode: <detail>} (an error, not L{Unauthorized}); a C{workspace_id} that is not a
   usable id is L{Unauthorized}.
 - Failures of a call that got no response read C{<call> call: <detail>}, e.g.
   C{verify call: timed out after 5s}.
 - C{close_session} never fails: a failure is logged at warning (C{session-close call failed}) with
   its description and without the session id, and the Deferred fires with C{None}.
 - In L{client_metadata}, header values are decoded as UTF-8 with replacement characters; when a
   header appears more than once, its first value is used. The regular expressions are ASCII-only,
   as in the Go original (C{\\w}, C{\\s}, C{\\b} never match non-ASCII characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from codexgw.appgw.codexhome import is_valid_workspace_id
from codexgw.appgw.config import AppGatewayConfig
from codexgw.config import Secret
from codexgw.httpclient import (
    ExchangeFailed,
    HTTPRequester,
    Reply,
    decode_json,
    exchange,
    json_bytes,
    make_headers,
    quote_body,
)
from codexgw.tokens import TokenError, verify_inbound_token

#: Seconds each agentserver call may take in total.
REMOTE_TIMEOUT: Final = 5.0
#: The agentserver paths of §4.3.
VERIFY_PATH: Final = "/api/internal/codex/tokens/verify"
SESSION_OPEN_PATH: Final = "/api/internal/codex/tokens/session-open"
SESSION_CLOSE_PATH: Final = "/api/internal/codex/tokens/session-close"

_CODEX_VERSION = re.compile(r"\bcodex(?:_cli_rs|_cli|)\s*/\s*([0-9][\w.\-+]*)", re.IGNORECASE | re.ASCII)
_OS = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9_-]*)", re.ASCII)

_log = Logger()


@dataclass(frozen=True)
class Identity:
    """
    Who a verified bearer token speaks for.

    @ivar user_id: the user (C{""} for HMAC tokens, which name no user).
    @ivar workspace_id: the workspace; always matches C{^[A-Za-z0-9_-]{1,128}$}.
    """

    user_id: str
    workspace_id: str


@dataclass(frozen=True)
class ClientMeta:
    """
    What session-open reports about a TUI client (§4.4); every field may be empty.

    @ivar client_ip: the client's address as the first proxy saw it, else the peer's.
    @ivar client_ua: the C{User-Agent} header.
    @ivar codex_version: the codex version named in the user agent.
    @ivar os: the operating system named in the user agent.
    """

    client_ip: str = ""
    client_ua: str = ""
    codex_version: str = ""
    os: str = ""


class Unauthorized(Exception):
    """
    The token does not authenticate anyone (or names an unusable workspace).
    """


class AuthCallError(Exception):
    """
    An authentication call failed without a verdict (network, timeout, unexpected answer); the web
    layer answers it like L{Unauthorized}, but it is logged as a failure of the call.
    """


class IInboundAuthenticator(Interface):
    """
    Verifies TUI bearer tokens.
    """

    def verify(token: str) -> Deferred[Identity]:
        """
        Return a Deferred firing with the token's identity, or failing with L{Unauthorized} or
        another error.
        """


class ISessionTracker(Interface):
    """
    Tracks TUI sessions for authenticators that support them (§4.1, §4.5).
    """

    def open_session(token: str, client_meta: ClientMeta) -> Deferred[tuple[Identity, str]]:
        """
        Verify C{token} and open a session for the client.

        @return: a Deferred firing with the identity and the session id (C{""} when the
            authenticator opened none), or failing with L{Unauthorized} or another error.
        """

    def close_session(session_id: str) -> Deferred[None]:
        """
        Close a session opened by L{open_session}; an empty id is a no-op.

        @return: a Deferred that fires with C{None} and never fails.
        """


def _identity(user_id: str, workspace_id: str) -> Identity:
    if not is_valid_workspace_id(workspace_id):
        raise Unauthorized("unusable workspace id")
    return Identity(user_id, workspace_id)


@implementer(IInboundAuthenticator)
class HMACAuthenticator:
    """
    §4.2: tokens C{<workspace_id>.<label>.<hex HMAC>} under C{CXG_INBOUND_HMAC_SECRET}.
    """

    def __init__(self, secret: Secret) -> None:
        """
        @param secret: C{CXG_INBOUND_HMAC_SECRET}.
        """
        self._secret = secret

    def verify(self, token: str) -> Deferred[Identity]:
        """
        See L{IInboundAuthenticator.verify}; the identity's user is C{""}.
        """
        try:
            inbound = verify_inbound_token(self._secret, token)
            return succeed(_identity("", inbound.workspace_id))
        except (TokenError, Unauthorized):
            return fail(Unauthorized("bad inbound token"))


def _is_text(token: str) -> bool:
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_field(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


@implementer(IInboundAuthenticator, ISessionTracker)
class RemoteVerifier:
    """
    §4.3: agentserver verifies tokens (C{ast_<id>_<secret>}, opaque here) and tracks sessions.
    """

    def __init__(
        self,
        http: HTTPRequester,
        clock: IReactorTime,
        base_url: str,
        secret: Secret,
        timeout: float = REMOTE_TIMEOUT,
        log: Logger | None = None,
    ) -> None:
        """
        @param http: the HTTP client.
        @param clock: enforces C{timeout}.
        @param base_url: C{CXG_AGENTSERVER_INTERNAL_URL} (no trailing C{/}).
        @param secret: C{CXG_AGENTSERVER_INTERNAL_SECRET}, sent as C{X-Internal-Secret}.
        @param timeout: seconds each call may take in total.
        @param log: where session-close failures are logged.
        """
        self._http = http
        self._clock = clock
        self._base_url = base_url
        self._secret = secret
        self._timeout = timeout
        self._log = log if log is not None else _log

    def _call(self, path: str, body: dict[str, str], ok: tuple[int, ...]) -> Deferred[Reply]:
        headers = make_headers(
            {"Content-Type": "application/json", "X-Internal-Secret": self._secret.value}
        )
        return exchange(
            self._http,
            self._clock,
            "POST",
            self._base_url + path,
            headers,
            json_bytes(body),
            self._timeout,
            lambda status: status in ok,
        )

    async def _verified_call(self, label: str, path: str, body: dict[str, str]) -> dict[str, object]:
        try:
            reply = await self._call(path, body, (200,))
        except ExchangeFailed as e:
            raise AuthCallError(f"{label} call: {e}") from None
        if reply.status == 401:
            raise Unauthorized(f"{label}: rejected")
        if reply.status != 200:
            raise AuthCallError(f"{label} call: status={reply.status} body={quote_body(reply.body)}")
        try:
            answer = decode_json(reply.body)
        except ValueError as e:
            raise AuthCallError(f"{label} call: decode: {e}") from None
        if not isinstance(answer, dict):
            raise AuthCallError(f"{label} call: decode: not a JSON object")
        return answer

    def verify(self, token: str) -> Deferred[Identity]:
        """
        See L{IInboundAuthenticator.verify}: C{POST …/tokens/verify} C{{"token"}}.
        """
        if not token or not _is_text(token):
            return fail(Unauthorized("empty or undecodable token"))
        return Deferred.fromCoroutine(self._verify(token))

    async def _verify(self, token: str) -> Identity:
        answer = await self._verified_call("verify", VERIFY_PATH, {"token": token})
        try:
            user_id = _string_field(answer, "user_id")
            workspace_id = _string_field(answer, "workspace_id")
        except ValueError as e:
            raise AuthCallError(f"verify call: decode: {e}") from None
        return _identity(user_id, workspace_id)

    def open_session(self, token: str, client_meta: ClientMeta) -> Deferred[tuple[Identity, str]]:
        """
        See L{ISessionTracker.open_session}: C{POST …/tokens/session-open} with the token and the
        client metadata.
        """
        if not token or not _is_text(token):
            return fail(Unauthorized("empty or undecodable token"))
        return Deferred.fromCoroutine(self._open_session(token, client_meta))

    async def _open_session(self, token: str, meta: ClientMeta) -> tuple[Identity, str]:
        body = {
            "token": token,
            "client_ip": meta.client_ip,
            "client_ua": meta.client_ua,
            "codex_version": meta.codex_version,
            "os": meta.os,
        }
        answer = await self._verified_call("session-open", SESSION_OPEN_PATH, body)
        try:
            user_id = _string_field(answer, "user_id")
            workspace_id = _string_field(answer, "workspace_id")
            session_id = _string_field(answer, "session_id")
        except ValueError as e:
            raise AuthCallError(f"session-open call: decode: {e}") from None
        return _identity(user_id, workspace_id), session_id

    def close_session(self, session_id: str) -> Deferred[None]:
        """
        See L{ISessionTracker.close_session}: C{POST …/tokens/session-close} C{{"session_id"}};
        200 or 204 is success, anything else is logged at warning.
        """
        if not session_id:
            return succeed(None)
        return Deferred.fromCoroutine(self._close_session(session_id))

    async def _close_session(self, session_id: str) -> None:
        try:
            reply = await self._call(SESSION_CLOSE_PATH, {"session_id": session_id}, ())
        except ExchangeFailed as e:
            self._log.warn("session-close call failed: {error}", error=str(e))
            return
        if reply.status not in (200, 204):
            self._log.warn(
                "session-close call failed: status={status} body={body}",
                status=reply.status,
                body=quote_body(reply.body),
            )


def _first(headers: Headers, name: bytes) -> str:
    values = headers.getRawHeaders(name)
    return values[0].decode("utf-8", "replace") if values else ""


def client_metadata(headers: Headers, peer_host: str) -> ClientMeta:
    """
    §4.4: the client metadata of a TUI upgrade request.

    @param headers: the request headers.
    @param peer_host: the TCP peer's host.
    """
    client_ip = ""
    for element in _first(headers, b"X-Forwarded-For").split(","):
        if element.strip():
            client_ip = element.strip()
            break
    if not client_ip:
        client_ip = _first(headers, b"X-Real-IP").strip() or peer_host
    user_agent = _first(headers, b"User-Agent")
    version = _CODEX_VERSION.search(user_agent)
    os_name = _OS.search(user_agent)
    return ClientMeta(
        client_ip=client_ip,
        client_ua=user_agent,
        codex_version=version.group(1) if version else "",
        os=os_name.group(1) if os_name else "",
    )


def request_client_metadata(request: IRequest) -> ClientMeta:
    """
    L{client_metadata} of a C{twisted.web} request (its headers and client address).
    """
    host = getattr(request.getClientAddress(), "host", "")
    return client_metadata(request.requestHeaders, host if isinstance(host, str) else "")


def make_authenticator(
    config: AppGatewayConfig, http: HTTPRequester, clock: IReactorTime
) -> IInboundAuthenticator:
    """
    The authenticator C{config} selects: the L{RemoteVerifier} when C{CXG_AGENTSERVER_INTERNAL_URL}
    is set, else the L{HMACAuthenticator}.
    """
    if config.agentserver_internal_url is not None:
        assert config.agentserver_internal_secret is not None  # enforced by the table
        return RemoteVerifier(
            http, clock, config.agentserver_internal_url, config.agentserver_internal_secret
        )
    assert config.inbound_hmac_secret is not None  # enforced by the table
    return HMACAuthenticator(config.inbound_hmac_secret)
