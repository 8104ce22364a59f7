"""
Configuration values shared by every codexgw program: the C{CXG_*} rules of the specs.

Every program reads its configuration from environment variables, validates them in a fixed order and
stops at the first failure with a L{ConfigError} whose message names the variable and the rule it broke
(C{delivery.md} §3). The parsers here implement the common rules of C{exec-gateway.md} §2 once, so a
variable read by several programs has the same meaning and the same messages everywhere; L{Variable}
and L{load_variables} let each program keep its table as data that drives both validation (in table
order) and documentation.

A row may carry a cross-row L{Variable.check} (the app gateway's S3 bucket is required only with an
endpoint), run right after the row with every value parsed so far, so such a rule fails at its own
row's position in the validation order.

Decision where the spec is silent: durations are returned as float seconds (what Twisted's clock
takes); a value that is only white space is not treated as empty (values are never trimmed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

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


#: A row's parser: C{(name, raw)} → value, or L{ConfigError}.
Parser = Callable[[str, str], object]
#: A row's cross-row rule: the values parsed so far (this row's included) → nothing, or
#: L{ConfigError}.
Check = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Variable:
    """
    One row of the configuration table.

    @ivar name: the environment variable.
    @ivar default: the value used when unset or empty, as written in the table; C{None} when the
        setting is then absent (its attribute is C{None}) or required.
    @ivar required: whether an unset or empty value is an error (C{<NAME> is required}).
    @ivar description: the row's rule and meaning, for the documentation.
    @ivar parse: turns C{(name, raw)} into the attribute's value or raises L{ConfigError}.
    @ivar check: a rule involving earlier rows, run after this row is parsed (or found unset).
    """

    name: str
    default: str | None
    required: bool
    description: str
    parse: Parser
    check: Check | None = None

    @property
    def attribute(self) -> str:
        """
        The configuration attribute that holds this row's value.
        """
        return self.name.removeprefix("CXG_").lower()


def load_variables(environ: Mapping[str, str], variables: Iterable[Variable]) -> dict[str, Any]:
    """
    Validate C{variables} in order against C{environ}; an empty value is the same as unset, and a
    default goes through the same parser as a set value.

    @return: each row's attribute mapped to its value (C{None} for unset optional rows).
    @raise ConfigError: at the first row that fails.
    """
    values: dict[str, Any] = {}
    for variable in variables:
        raw = get(environ, variable.name) or variable.default
        if raw is None:
            if variable.required:
                raise ConfigError(f"{variable.name} is required")
            values[variable.attribute] = None
        else:
            values[variable.attribute] = variable.parse(variable.name, raw)
        if variable.check is not None:
            variable.check(values)
    return values


def documentation(variables: Iterable[Variable]) -> tuple[tuple[str, str | None, bool, str], ...]:
    """
    The table for documentation: C{(name, default, required, description)} per row, in order.
    """
    return tuple((v.name, v.default, v.required, v.description) for v in variables)


def secret_row(name: str, raw: str) -> Secret:
    """
    A table row's parser for a secret: L{parse_secret} of a value that is set.
    """
    secret = parse_secret({name: raw}, name)
    assert secret is not None  # required=True and raw is not empty
    return secret


def url_row(*schemes: str) -> Parser:
    """
    A table row's parser for a URL with one of C{schemes} (one trailing C{/} removed).
    """
    return lambda name, raw: parse_url(name, raw, schemes)
