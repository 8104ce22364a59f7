"""
Parsers shared by several rows of the app gateway's configuration table (C{app-gateway.md} §2).

The row type and loader are L{codexgw.config.Variable} and L{codexgw.config.load_variables}, shared
with the exec gateway.
"""

from __future__ import annotations

import os

from codexgw.config import ConfigError, parse_integer

# -------------------------------------------------------------------------------------------------
# Parsers shared by several rows of §2


def text(name: str, raw: str) -> str:
    """
    A free-text value, taken as it is.
    """
    return raw


def flag(name: str, raw: str) -> bool:
    """
    A boolean that is true only when the value is C{true}, ignoring case (§2 #14).
    """
    return raw.lower() == "true"


def positive_integer(name: str, raw: str) -> int:
    """
    An integer ≥ 1 (at most 2**63 − 1): C{<NAME> must be a positive integer, got "<v>"} otherwise
    (§2 #20–#22).
    """
    try:
        return parse_integer(name, raw, minimum=1)
    except ConfigError:
        raise ConfigError(f'{name} must be a positive integer, got "{raw}"') from None


def absolute_path(name: str, raw: str) -> str:
    """
    A path made absolute against the process's working directory; symlinks are not resolved, and
    C{.}/C{..} segments are folded lexically (§2 #15, #16).
    """
    return os.path.abspath(raw)
