"""
Configuration values shared by every codexgw program: the C{CXG_*} rules of the specs.

Every program reads its configuration from environment variables, validates them in a fixed order and
stops at the first failure with a L{ConfigError} whose message names the variable and the rule it broke
(C{delivery.md} §3). The parsers here implement the common rules of C{exec-gateway.md} §2 once, so a
variable read by several programs has the same meaning and the same messages everywhere.

Decision where the spec is silent: durations are returned as float seconds (what Twisted's clock
takes); a value that is only white space is not treated as empty (values are never trimmed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

#: Secrets shorter than this many bytes are refused.
MIN_SECRET_BYTES: Final = 32

_DURATION_GROUP = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_INTEGER = re.compile(r"-?\d+")
# Values are 64-bit like the upstream services'; longer digit strings are out of range before int()
# ever sees them (Python refuses to convert more than 4300 digits).
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT64_DIGITS: Final = 19
# Go's time.Duration ends at 2**63 nanoseconds; longer durations are invalid there and here.
_MAX_DURATION_SECONDS: Final = _INT64_MAX / 1e9


class ConfigError(Exception):
    """
    A configuration value broke a rule. C{str(error)} is the message programs print after C{config: }.
    """


class Secret:
    """
    A shared secret of at least L{MIN_SECRET_BYTES} bytes.

    Its C{repr} never shows the value, so a secret that reaches a log line or a traceback stays secret.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        """
        @param value: the secret's bytes (UTF-8 of the environment value, never trimmed).
        @raise ValueError: when C{value} is shorter than L{MIN_SECRET_BYTES}.
        """
        if len(value) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
        self._value = value

    @property
    def value(self) -> bytes:
        """
        The secret's bytes, for use as an HMAC key or a constant-time comparison.
        """
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"


def get(environ: Mapping[str, str], name: str) -> str:
    """
    Return the raw value of C{name}; an empty value is the same as unset and comes back as C{""}.
    """
    return environ.get(name, "")


def parse_integer(name: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """
    Parse a decimal integer with an optional leading C{-} and check it against inclusive bounds.
    """
    if not _INTEGER.fullmatch(raw):
        raise ConfigError(f'{name} must be an integer, got "{raw}"')
    minimum = _INT64_MIN if minimum is None else minimum
    maximum = _INT64_MAX if maximum is None else maximum
    if len(raw.lstrip("-").lstrip("0")) > _INT64_DIGITS:
        value = _INT64_MIN - 1 if raw.startswith("-") else _INT64_MAX + 1
    else:
        value = int(raw)
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw}")
    if value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {raw}")
    return value


def parse_duration(name: str, raw: str, minimum: str | None = None, maximum: str | None = None) -> float:
    """
    Parse a duration (C{0}, or groups like C{1h30m}, C{1.5s}, C{250ms}) into seconds.

    @param minimum: inclusive lower bound written as a duration (C{"2s"}); the range message quotes it
        as written, like the integer messages quote the raw value.
    @param maximum: inclusive upper bound, likewise.
    """
    if raw == "0":
        value = 0.0
    elif _DURATION.fullmatch(raw):
        value = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_GROUP.findall(raw))
    else:
        value = math.inf
    if not value <= _MAX_DURATION_SECONDS:
        raise ConfigError(f'{name}: invalid duration "{raw}"')
    if minimum is not None and value < parse_duration(name, minimum):
        raise ConfigError(f"{name} must be >= {minimum}, got {raw}")
    if maximum is not None and value > parse_duration(name, maximum):
        raise ConfigError(f"{name} must be <= {maximum}, got {raw}")
    return value


def parse_secret(environ: Mapping[str, str], name: str, required: bool = True) -> Secret | None:
    """
    Read the secret C{name}: its UTF-8 bytes, never trimmed.

    @return: the secret, or C{None} when it is unset and not required.
    """
    raw = get(environ, name)
    if not raw:
        if required:
            raise ConfigError(f"{name} is required")
        return None
    try:
        return Secret(raw.encode("utf-8", "surrogateescape"))
    except ValueError:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes") from None


def parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    """
    Check that C{raw} starts with one of C{schemes} (such as C{"http://"}) and drop one trailing C{/}.
    """
    if not raw.startswith(schemes):
        raise ConfigError(f'{name} must use {" or ".join(schemes)} scheme, got "{raw}"')
    return raw[:-1] if raw.endswith("/") else raw
