"""
The three token formats the services exchange, as pure functions of a secret, a text and a time.

 - Capability tokens (C{exec-gateway.md} §6.1, C{app-gateway.md} §10): minted by the app gateway for
   one codex turn, presented on C{/bridge}; C{B64(header).B64(payload).B64(HMAC)}.
 - WebSocket tickets (§6.2): single-use, short-lived, minted by executor registration and presented on
   the executor's inbound websocket; C{<exe_id>.<exp>.B64(HMAC)}.
 - Inbound HMAC tokens (§6.3, C{app-gateway.md} §4.2): C{<workspace_id>.<label>.<hex HMAC>}.

Nothing here reads a clock: callers pass C{now} (Unix seconds), so every rule is testable exactly at
its boundary. Every comparison of a signature is constant-time (L{hmac.compare_digest}).

Decision where the spec is silent: base64url is decoded canonically, so a text whose unused trailing
bits are not zero is a decode failure. Without that, two spellings of one signature would both verify
(a one-character change could pass) and a replayed ticket could dodge the used-ticket set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Final, Literal

from zope.interface import Interface, implementer

from codexgw.config import Secret

_CAP_HEADER: Final = b'{"alg":"HS256","typ":"CXG"}'
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_DIGITS = re.compile(r"[0-9]+")
# Twenty digits reach past 2**64; longer "expiry" texts are refused before int() sees them.
_MAX_EXP_DIGITS: Final = 20
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class TokenError(Exception):
    """
    A token did not verify. Subclasses say why; messages never contain the token or a secret.
    """


class Malformed(TokenError):
    """
    The token is not of the expected shape (parts, encoding, header, payload types).
    """


class BadSignature(TokenError):
    """
    The token is well-formed but its signature does not match.
    """


class Expired(TokenError):
    """
    The token was valid once but its expiry has passed.
    """


TicketRejectReason = Literal["bad_ticket", "ticket_expired", "ticket_replayed"]


class TicketRejected(TokenError):
    """
    A ws ticket was refused; C{reason} is the log reason of C{exec-gateway.md} §10.1.
    """

    def __init__(self, reason: TicketRejectReason) -> None:
        super().__init__(reason)
        self.reason: TicketRejectReason = reason


def b64url_encode(data: bytes) -> str:
    """
    Encode C{data} as unpadded RFC 4648 base64url.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """
    Decode unpadded base64url strictly: only C{A–Z a–z 0–9 - _}, no C{=}, length not ≡ 1 (mod 4), and
    the canonical spelling only.

    @raise ValueError: on any of those failures.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw) % 4 == 1 or not _B64URL.fullmatch(raw):
        raise ValueError("invalid base64url")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error:
        raise ValueError("invalid base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64url")
    return data


def _sign(secret: Secret, message: bytes) -> bytes:
    return hmac.new(secret.value, message, hashlib.sha256).digest()


# -------------------------------------------------------------------------------------------------
# Capability tokens


@dataclass(frozen=True)
class CapClaims:
    """
    What a verified cap token grants: bridges to the executors of C{workspace_id} until C{exp}.

    @ivar turn_id: the turn (one spawn of codex) the token was minted for; revocable.
    @ivar workspace_id: the workspace whose executors the holder may reach.
    @ivar exp: expiry in Unix seconds; the token is valid while C{now <= exp}.
    """

    turn_id: str
    workspace_id: str
    exp: int


def mint_cap_token(secret: Secret, turn_id: str, workspace_id: str, iat: int, exp: int) -> str:
    """
    Mint a cap token with the payload C{{"turn_id","workspace_id","iat","exp"}} in that key order.

    @raise ValueError: C{captoken: turnID/workspaceID required} when either id is empty.
    """
    if not turn_id or not workspace_id:
        raise ValueError("captoken: turnID/workspaceID required")
    payload = json.dumps(
        {"turn_id": turn_id, "workspace_id": workspace_id, "iat": iat, "exp": exp},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    signed = f"{b64url_encode(_CAP_HEADER)}.{b64url_encode(payload)}"
    return f"{signed}.{b64url_encode(_sign(secret, signed.encode('ascii')))}"


def verify_cap_token(secret: Secret, token: str, now: int) -> CapClaims:
    """
    Verify a cap token in the order of C{exec-gateway.md} §6.1.

    The revoked-turn set and workspace ownership are the caller's business.

    @raise Malformed: bad shape, header, encoding or payload types.
    @raise BadSignature: the HMAC over the received first two parts differs.
    @raise Expired: C{now > exp} (C{now == exp} is still valid).
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise Malformed("malformed token")
    header = _decode_json_part(parts[0])
    if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("typ") != "CXG":
        raise Malformed("malformed token header")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise Malformed("malformed token signature") from None
    expected = _sign(secret, f"{parts[0]}.{parts[1]}".encode("utf-8", "surrogatepass"))
    if not hmac.compare_digest(signature, expected):
        raise BadSignature("bad token signature")
    payload = _decode_json_part(parts[1])
    if not isinstance(payload, dict):
        raise Malformed("malformed token payload")
    turn_id = payload.get("turn_id", "")
    workspace_id = payload.get("workspace_id", "")
    exp = payload.get("exp", 0)
    if not isinstance(turn_id, str) or not isinstance(workspace_id, str):
        raise Malformed("malformed token payload")
    # bool is an int subclass in Python; JSON true is not an expiry.
    if isinstance(exp, bool) or not isinstance(exp, int) or not _INT64_MIN <= exp <= _INT64_MAX:
        raise Malformed("malformed token payload")
    if now > exp:
        raise Expired("token expired")
    return CapClaims(turn_id=turn_id, workspace_id=workspace_id, exp=exp)


def _decode_json_part(part: str) -> object:
    try:
        return json.loads(b64url_decode(part).decode("utf-8"))
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        raise Malformed("malformed token") from None


# -------------------------------------------------------------------------------------------------
# WebSocket tickets


class IUsedTickets(Interface):
    """
    The replay guard of ws tickets: signatures already accepted, each remembered until its expiry.
    """

    def claim(signature: bytes, exp: int) -> bool:
        """
        Record C{signature} as used until C{exp}.

        @return: C{True} if it was not recorded yet (the ticket may be accepted), else C{False}.
        """

    def prune(now: int) -> int:
        """
        Forget signatures whose C{exp <= now} (those tickets fail on expiry anyway).

        @return: how many were forgotten.
        """

    def __len__() -> int:
        """
        Return how many signatures are remembered.
        """


@implementer(IUsedTickets)
class UsedTickets:
    """
    In-memory L{IUsedTickets}: the gateway is a single replica (C{exec-gateway.md} §1).
    """

    def __init__(self) -> None:
        self._expiry: dict[bytes, int] = {}

    def claim(self, signature: bytes, exp: int) -> bool:
        """
        See L{IUsedTickets.claim}.
        """
        if signature in self._expiry:
            return False
        self._expiry[signature] = exp
        return True

    def prune(self, now: int) -> int:
        """
        See L{IUsedTickets.prune}.
        """
        stale = [sig for sig, exp in self._expiry.items() if exp <= now]
        for sig in stale:
            del self._expiry[sig]
        return len(stale)

    def __len__(self) -> int:
        return len(self._expiry)


def mint_ws_ticket(secret: Secret, exe_id: str, exp: int) -> str:
    """
    Mint a ws ticket for C{exe_id}, valid strictly before C{exp} (Unix seconds), once.

    @raise ValueError: when C{exe_id} is empty or contains C{.}, or C{exp} is negative.
    """
    if not exe_id or "." in exe_id:
        raise ValueError("ticket: exe_id must be non-empty and contain no '.'")
    if exp < 0:
        raise ValueError("ticket: exp must not be negative")
    signed = f"{exe_id}.{exp}"
    return f"{signed}.{b64url_encode(_sign(secret, signed.encode('utf-8')))}"


def verify_ws_ticket(secret: Secret, ticket: str, exe_id: str, now: int, used: IUsedTickets) -> None:
    """
    Verify a ws ticket against the path's C{exe_id} and consume it (C{exec-gateway.md} §6.2).

    @raise TicketRejected: with reason C{bad_ticket}, C{ticket_expired} or C{ticket_replayed}.
    """
    parts = ticket.split(".")
    if len(parts) != 3 or not exe_id or parts[0] != exe_id:
        raise TicketRejected("bad_ticket")
    if len(parts[1]) > _MAX_EXP_DIGITS or not _DIGITS.fullmatch(parts[1]):
        raise TicketRejected("bad_ticket")
    exp = int(parts[1])
    if now >= exp:
        raise TicketRejected("ticket_expired")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise TicketRejected("bad_ticket") from None
    expected = _sign(secret, f"{parts[0]}.{parts[1]}".encode("utf-8", "surrogatepass"))
    if not hmac.compare_digest(signature, expected):
        raise TicketRejected("bad_ticket")
    if not used.claim(signature, exp):
        raise TicketRejected("ticket_replayed")


# -------------------------------------------------------------------------------------------------
# Inbound HMAC tokens


@dataclass(frozen=True)
class InboundIdentity:
    """
    Who an inbound HMAC token speaks for: a workspace; the user is unknown (C{""}) in this mode.
    """

    workspace_id: str
    user_id: str = ""


def mint_inbound_token(secret: Secret, workspace_id: str, label: str) -> str:
    """
    Mint C{<workspace_id>.<label>.<hex HMAC(secret, workspace_id ‖ 0x00 ‖ label)>}.

    @raise ValueError: when either part is empty or contains C{.}.
    """
    if not workspace_id or "." in workspace_id:
        raise ValueError("inbound token: workspace id must be non-empty and contain no '.'")
    if not label or "." in label:
        raise ValueError("inbound token: label must be non-empty and contain no '.'")
    return _inbound_token(secret, workspace_id, label)


def _inbound_token(secret: Secret, workspace_id: str, label: str) -> str:
    message = (
        workspace_id.encode("utf-8", "surrogatepass") + b"\x00" + label.encode("utf-8", "surrogatepass")
    )
    return f"{workspace_id}.{label}.{hmac.new(secret.value, message, hashlib.sha256).hexdigest()}"


def verify_inbound_token(secret: Secret, token: str) -> InboundIdentity:
    """
    Verify an inbound HMAC token by recomputing it whole and comparing in constant time.

    @raise BadSignature: when it does not verify (also for a malformed token: callers answer both
        with the same 401, so they need not be told apart).
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise BadSignature("bad inbound token")
    expected = _inbound_token(secret, parts[0], parts[1])
    if not hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    ):
        raise BadSignature("bad inbound token")
    return InboundIdentity(workspace_id=parts[0])
