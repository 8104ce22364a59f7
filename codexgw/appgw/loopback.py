"""
The loopback gate of the app gateway's C{/internal/*} routes (C{app-gateway.md} §3.1) and the
registry of live per-spawn loopback tokens it checks against (§5.10 item 2).

env-mcp, started by codex inside a workspace's app-server, reaches the gateway only over loopback and
only with the loopback token of its spawn. L{LoopbackGate.check} decides a request from its peer
address and headers alone, in the order of §3.1:
 1. the peer must be a loopback address and no forwarding header may be present, else 403
    C{forbidden} (and a warning);
 2. an C{X-Loopback-Token} header must be present, else 401 C{missing X-Loopback-Token};
 3. the token must be one of the live tokens, compared in constant time, else 401 C{bad token}.
A matched token yields its L{LoopbackGrant} (workspace id and the spawn's turn id).

Decisions where the spec is silent:
 - A forwarding header counts as present even when its value is empty: a proxy in the path is what
   the rule keeps out, whatever it wrote.
 - An C{X-Loopback-Token} header with an empty value counts as missing; a request carrying the header
   more than once is answered C{bad token} (no guessing which copy is meant).
 - A peer without an IP address (a UNIX socket) is not loopback.
 - The lookup compares the presented token against every live token with L{hmac.compare_digest} and
   never stops at the first match, so the time taken does not depend on which token (if any) matched.
 - The refusal's warning names the peer host and which rule failed; tokens never reach a log.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from codexgw.tokens import b64url_encode

#: Request headers that reveal a proxy in the path; any of them closes the gate (§3.1 item 1).
FORWARDING_HEADERS: Final = (b"Forwarded", b"X-Forwarded-For", b"X-Real-IP")
#: The header env-mcp presents its spawn's token in.
LOOPBACK_TOKEN_HEADER: Final = b"X-Loopback-Token"
#: Random bytes in a loopback token (base64url without padding: 43 characters).
TOKEN_BYTES: Final = 32

_IPV4_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")

_log = Logger()


def is_loopback_address(host: str) -> bool:
    """
    Whether C{host} is an IP address on loopback: C{127.0.0.0/8}, C{::1}, or an IPv4-mapped
    C{::ffff:127.x.x.x}. Names (even C{localhost}) and malformed text are not.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped in _IPV4_LOOPBACK
        return address.is_loopback
    return address in _IPV4_LOOPBACK


@dataclass(frozen=True)
class LoopbackGrant:
    """
    What a live loopback token stands for: one spawn of a workspace's app-server.

    @ivar workspace_id: the workspace of the spawn.
    @ivar turn_id: the spawn's turn id (the C{turn_id} of its cap tokens).
    """

    workspace_id: str
    turn_id: str


@dataclass(frozen=True)
class GateRefusal:
    """
    The gate's answer to a request it refuses.

    @ivar status: 403 or 401.
    @ivar message: the plain-text body (without the newline the web layer adds).
    """

    status: int
    message: str


#: The three refusals of §3.1, in order.
FORBIDDEN: Final = GateRefusal(403, "forbidden")
MISSING_TOKEN: Final = GateRefusal(401, "missing X-Loopback-Token")
BAD_TOKEN: Final = GateRefusal(401, "bad token")


class LoopbackTokens:
    """
    The live per-spawn loopback tokens: issued when a spawn is prepared, revoked when its process has
    exited.
    """

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        """
        @param random_bytes: the source of token bytes (C{os.urandom}; tests pass their own).
        """
        self._random_bytes = random_bytes
        self._grants: dict[bytes, LoopbackGrant] = {}

    def issue(self, workspace_id: str, turn_id: str) -> str:
        """
        Make a new token for a spawn of C{workspace_id} with C{turn_id}.

        @return: C{TOKEN_BYTES} random bytes as unpadded base64url (43 characters).
        """
        while True:
            token = b64url_encode(self._random_bytes(TOKEN_BYTES))
            key = token.encode("ascii")
            if key not in self._grants:
                break
        self._grants[key] = LoopbackGrant(workspace_id, turn_id)
        return token

    def revoke(self, token: str) -> None:
        """
        Forget C{token} (its process has exited); unknown tokens are ignored.
        """
        self._grants.pop(token.encode("ascii", "replace"), None)

    def lookup(self, presented: str | bytes) -> LoopbackGrant | None:
        """
        The grant of a live token equal to C{presented}, compared in constant time against every
        live token, or C{None}.
        """
        candidate = presented if isinstance(presented, bytes) else presented.encode("utf-8", "replace")
        found: LoopbackGrant | None = None
        for key, grant in self._grants.items():
            if hmac.compare_digest(key, candidate):
                found = grant
        return found

    def __len__(self) -> int:
        """
        The number of live tokens.
        """
        return len(self._grants)


class LoopbackGate:
    """
    The §3.1 checks over a request's peer address and headers.
    """

    def __init__(self, tokens: LoopbackTokens, log: Logger | None = None) -> None:
        """
        @param tokens: the live tokens.
        @param log: where refusals are logged (a module logger by default).
        """
        self._tokens = tokens
        self._log = log if log is not None else _log

    def check(self, peer_host: str | None, headers: Headers) -> LoopbackGrant | GateRefusal:
        """
        Decide a request from its peer host (C{None} when the peer has no IP address) and its
        request headers.

        @return: the matched token's grant, or the refusal to answer with.
        """
        if peer_host is None or not is_loopback_address(peer_host):
            self._log.warn(
                "internal route refused: peer {peer} is not loopback", peer=peer_host or "<none>"
            )
            return FORBIDDEN
        for name in FORWARDING_HEADERS:
            if headers.hasHeader(name):
                self._log.warn(
                    "internal route refused: forwarding header {header} from {peer}",
                    header=name.decode("ascii"),
                    peer=peer_host,
                )
                return FORBIDDEN
        values = headers.getRawHeaders(LOOPBACK_TOKEN_HEADER) or []
        if not values or (len(values) == 1 and not values[0]):
            return MISSING_TOKEN
        if len(values) > 1:
            return BAD_TOKEN
        grant = self._tokens.lookup(values[0])
        return BAD_TOKEN if grant is None else grant

    def check_request(self, request: IRequest) -> LoopbackGrant | GateRefusal:
        """
        L{check} for a C{twisted.web} request (its client address and request headers).
        """
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        return self.check(host if isinstance(host, str) else None, request.requestHeaders)
