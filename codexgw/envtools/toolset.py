"""
The tool registries of the two front-ends (C{envtools.md} §1.2).

A L{Tool} couples a name, a description, the §8 input schema and the function; L{Tool.run} gives the
front-ends a C{Deferred} of the L{ToolResult}. L{ENV_MCP_TOOLS} are the nine tools env-mcp serves, in
its C{tools/list} order, with the descriptions of §7; L{SDK_TOOLS} the six of the SDK in its order
(C{exec-gateway.md} §4.8.2: C{shell}, C{read_file}, C{write_file}, C{apply_patch}, C{copy_path},
C{exec_command}) with its short descriptions.

Decisions where the spec is silent:
 - L{Tool.run} turns the texted exceptions of the tools (argument errors, L{ToolFailure}, session and
   path errors) into isError results, so that a tool written without that care still never raises for
   argument or remote problems; any other exception propagates (env-mcp answers -32000, the SDK 500
   C{tool_error}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred

from codexgw.envtools.applypatch import apply_patch_tool
from codexgw.envtools.context import EnvContext
from codexgw.envtools.copypath import copy_path_tool
from codexgw.envtools.interfaces import ToolResult
from codexgw.envtools.schemas import DESCRIPTIONS, SCHEMAS, SDK_DESCRIPTIONS
from codexgw.envtools.tools import (
    ToolFunction,
    exec_command_tool,
    list_environments_tool,
    read_file_tool,
    read_output_tool,
    shell_tool,
    terminate_tool,
    tool_function,
    write_file_tool,
    write_stdin_tool,
)


@dataclass(frozen=True)
class Tool:
    """
    One tool as a front-end offers it.

    @ivar name: the tool's name (§1.2).
    @ivar description: what the front-end advertises.
    @ivar schema: the §8 input schema.
    @ivar function: C{async (ctx, arguments) -> ToolResult}.
    """

    name: str
    description: str
    schema: Mapping[str, Any]
    function: ToolFunction

    def run(self, ctx: EnvContext, arguments: Mapping[str, Any]) -> Deferred[ToolResult]:
        """
        Run the tool on C{ctx} with the call's arguments object.

        @return: fires with the result; fails only on cancellation or a programming error.
        """
        return Deferred.fromCoroutine(tool_function(self.function)(ctx, arguments))

    def listing(self) -> dict[str, Any]:
        """
        The MCP C{tools/list} entry: C{{"name","description","inputSchema"}}.
        """
        return {"name": self.name, "description": self.description, "inputSchema": self.schema}


_FUNCTIONS: Final[Mapping[str, ToolFunction]] = {
    "list_environments": list_environments_tool,
    "shell": shell_tool,
    "exec_command": exec_command_tool,
    "write_stdin": write_stdin_tool,
    "read_output": read_output_tool,
    "terminate": terminate_tool,
    "read_file": read_file_tool,
    "write_file": write_file_tool,
    "apply_patch": apply_patch_tool,
    "copy_path": copy_path_tool,
}

#: The nine tools of env-mcp, in C{tools/list} order (§1.2, C{app-gateway.md} §9.4).
ENV_MCP_TOOLS: Final[tuple[Tool, ...]] = tuple(
    Tool(name, DESCRIPTIONS[name], SCHEMAS[name], _FUNCTIONS[name])
    for name in (
        "list_environments",
        "shell",
        "exec_command",
        "write_stdin",
        "read_output",
        "terminate",
        "read_file",
        "apply_patch",
        "copy_path",
    )
)

#: The six tools of the SDK, in its order, with its short descriptions (C{exec-gateway.md} §4.8.2).
SDK_TOOLS: Final[tuple[Tool, ...]] = tuple(
    Tool(name, description, SCHEMAS[name], _FUNCTIONS[name])
    for name, description in SDK_DESCRIPTIONS.items()
)

_BY_NAME: Final[Mapping[str, Tool]] = {tool.name: tool for tool in ENV_MCP_TOOLS}


def tool_named(name: str) -> Tool | None:
    """
    The env-mcp tool called C{name}, or C{None}.
    """
    return _BY_NAME.get(name)


def sdk_tool_named(name: str) -> Tool | None:
    """
    The SDK tool called C{name}, or C{None} (C{unknown_tool}, C{exec-gateway.md} §4.8.2).
    """
    for tool in SDK_TOOLS:
        if tool.name == name:
            return tool
    return None
