"""
Argument checks of the tools (C{envtools.md} §7.1) against their §8 schemas.

L{check_arguments} applies the common rules to one tool's arguments object, in the specified order:
 1. type checks, in schema order: C{string}; C{integer} — a JSON number with an integral value, never a
    boolean; C{boolean}. A wrong type → C{invalid arguments: <field> must be <type>}. C{null} counts as
    absent, unknown members are ignored.
 2. required checks, in schema order: an environment field absent or empty → C{<field> is required;
    call list_environments to see available names}; the C{command} array (§7.4) absent, not an array,
    empty or with a non-string element → C{command must be a non-empty array} (the tool's own text);
    another required field absent → C{invalid arguments: <field> is required}.
 3. enumerations (only C{copy_path}'s C{transport}), compared in any letter case (§7.12) → C{invalid
    arguments: transport must be "auto", "http" or "ws"}.

Decisions where the spec is silent:
 - C{command} has no type check of its own in step 1: its rule is the tool's, checked where a required
   check stands in the schema order (so a missing C{environment_id} is reported first).
 - An integer given as an integral float (C{5.0}) is returned as the C{int} C{5}; infinities and NaN
   are not integral.
 - The enumeration check runs after the required checks; the value is returned as given (the tool
   lowercases it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from codexgw.envtools.schemas import ENVIRONMENT_FIELDS, SCHEMAS


class ArgumentError(Exception):
    """
    The arguments of a tool call are not acceptable; C{str()} is the whole isError text.
    """


def _as_integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _is_string_array(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(item, str) for item in value)


def check_arguments(tool: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """
    Validate C{raw} against the §8 schema of C{tool} with the rules of §7.1.

    @param tool: a name of L{SCHEMAS}.
    @param raw: the arguments object as received.
    @return: the schema's fields that are present and not C{null}, integers as C{int}, in schema order.
    @raise ArgumentError: the first problem found, with its exact text.
    @raise KeyError: C{tool} has no schema.
    """
    schema = SCHEMAS[tool]
    properties: dict[str, dict[str, Any]] = schema["properties"]
    present: dict[str, Any] = {}
    for field, prop in properties.items():
        value = raw.get(field)
        if value is None:
            continue
        kind = prop["type"]
        if kind == "string" and not isinstance(value, str):
            raise ArgumentError(f"invalid arguments: {field} must be string")
        if kind == "boolean" and not isinstance(value, bool):
            raise ArgumentError(f"invalid arguments: {field} must be boolean")
        if kind == "integer":
            number = _as_integer(value)
            if number is None:
                raise ArgumentError(f"invalid arguments: {field} must be integer")
            value = number
        present[field] = value
    required: list[str] = schema.get("required", [])
    for field in properties:
        if properties[field]["type"] == "array":
            if field in required and not _is_string_array(present.get(field)):
                raise ArgumentError(f"{field} must be a non-empty array")
            continue
        if field not in required:
            continue
        if field in ENVIRONMENT_FIELDS:
            if not present.get(field):
                raise ArgumentError(
                    f"{field} is required; call list_environments to see available names"
                )
        elif field not in present:
            raise ArgumentError(f"invalid arguments: {field} is required")
    for field, prop in properties.items():
        choices: list[str] | None = prop.get("enum")
        if choices is None or field not in present:
            continue
        if present[field].lower() not in choices:
            quoted = [f'"{choice}"' for choice in choices]
            listed = ", ".join(quoted[:-1]) + " or " + quoted[-1]
            raise ArgumentError(f"invalid arguments: {field} must be {listed}")
    return present
