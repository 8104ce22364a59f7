"""
Minting capability tokens for app-server spawns (C{app-gateway.md} §10, §5.10 item 1) and the logic of
C{POST /internal/captoken} (§3.3).

A spawn gets a turn id (L{new_turn_id}: C{trn_} + 16 lowercase hex digits) and a first cap token;
env-mcp renews it through the loopback route, which mints another for the same workspace and turn.
L{CapTokenMinter} remembers, per turn, the latest expiry it minted, which is the C{exp} the revoke
call needs when the spawn stops (§11).

The token format is L{codexgw.tokens.mint_cap_token}, shared with the exec gateway's verifier.

Decisions where the spec is silent:
 - C{iat} is the clock's time rounded down to a second and C{exp} is C{now + ttl} rounded down, so a
   fractional TTL behaves like the Go original (C{time.Now().Add(ttl).Unix()}).
 - A TTL ≤ 0 means 3600 s here too (the configuration already stores C{0} as 3600).
 - The recorded expiry of a turn only grows: a clock stepping back never shortens what the revoke
   call covers.
 - The minter's secret is optional only so that the C{captoken: empty secret} rule can be honoured;
   the configuration always provides one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from twisted.internet.interfaces import IReactorTime

from codexgw.appgw.loopback import LoopbackGrant
from codexgw.config import Secret
from codexgw.tokens import mint_cap_token

#: What a TTL ≤ 0 means, in seconds.
ZERO_TTL_SECONDS: Final = 3600
#: The prefix of turn ids.
TURN_ID_PREFIX: Final = "trn_"
#: Random bytes in a turn id (16 hex digits).
TURN_ID_BYTES: Final = 8


class CapTokenError(ValueError):
    """
    A cap token cannot be minted: C{captoken: empty secret} or C{captoken: turnID/workspaceID
    required}.
    """


def new_turn_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh turn id: C{trn_} and 16 lowercase hex digits (8 random bytes).
    """
    return TURN_ID_PREFIX + random_bytes(TURN_ID_BYTES).hex()


@dataclass(frozen=True)
class MintedCapToken:
    """
    A minted cap token and its expiry.

    @ivar token: the token (never shown by C{repr}).
    @ivar exp: its expiry, Unix seconds.
    """

    token: str = field(repr=False)
    exp: int

    def answer(self) -> dict[str, object]:
        """
        The JSON object of C{POST /internal/captoken}: C{{"token","exp"}} in that order.
        """
        return {"token": self.token, "exp": self.exp}


class CapTokenMinter:
    """
    Mints cap tokens with the configured TTL and remembers each turn's latest expiry.
    """

    def __init__(self, secret: Secret | None, ttl: float, clock: IReactorTime) -> None:
        """
        @param secret: C{CXG_CAPTOKEN_HMAC_SECRET}.
        @param ttl: C{CXG_CAPTOKEN_TTL} in seconds (≤ 0 means 3600).
        @param clock: the time source of C{iat} and C{exp}.
        """
        self._secret = secret
        self._ttl = ttl if ttl > 0 else float(ZERO_TTL_SECONDS)
        self._clock = clock
        self._last_exp: dict[str, int] = {}

    def mint(self, workspace_id: str, turn_id: str) -> MintedCapToken:
        """
        Mint a token for C{workspace_id} and C{turn_id}, valid for the TTL from now.

        @raise CapTokenError: with the exact texts of §10.
        """
        if self._secret is None:
            raise CapTokenError("captoken: empty secret")
        now = self._clock.seconds()
        iat = math.floor(now)
        exp = math.floor(now + self._ttl)
        try:
            token = mint_cap_token(self._secret, turn_id, workspace_id, iat, exp)
        except ValueError as e:
            raise CapTokenError(str(e)) from None
        self._last_exp[turn_id] = max(exp, self._last_exp.get(turn_id, exp))
        return MintedCapToken(token, exp)

    def last_exp(self, turn_id: str) -> int | None:
        """
        The latest expiry minted for C{turn_id}, or C{None} when none was (or it was forgotten).
        """
        return self._last_exp.get(turn_id)

    def forget(self, turn_id: str) -> None:
        """
        Drop what is remembered of C{turn_id} (its spawn is gone and revoked).
        """
        self._last_exp.pop(turn_id, None)


def captoken_answer(minter: CapTokenMinter, grant: LoopbackGrant) -> dict[str, object]:
    """
    §3.3: the 200 body of C{POST /internal/captoken} for the spawn the loopback gate matched — a new
    cap token for its workspace and turn.
    """
    return minter.mint(grant.workspace_id, grant.turn_id).answer()
