"""
Criterion 62 with the real tools: env-mcp's C{tools/list} serves exactly the nine tools of
C{app-gateway.md} §9.4 in order, with the descriptions of C{envtools.md} §7 and the input schemas of
§8, bound to one envtools context.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from codexgw.envmcp.cli import bind_tools
from codexgw.envmcp.server import McpServer
from codexgw.envtools.bridge import BridgePool
from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import DialError, IResolverSource
from codexgw.envtools.resolver import Resolver
from codexgw.envtools.toolset import ENV_MCP_TOOLS

STRING = "string"
INTEGER = "integer"
BOOLEAN = "boolean"
COMMAND = "array of string"

#: §8: each tool's properties in order, with their types, and the required ones.
SCHEMAS: list[tuple[str, list[tuple[str, str]], list[str]]] = [
    ("list_environments", [], []),
    (
        "shell",
        [("environment_id", STRING), ("command", COMMAND), ("cwd", STRING), ("timeout_ms", INTEGER)],
        ["environment_id", "command"],
    ),
    (
        "exec_command",
        [
            ("environment_id", STRING),
            ("command", COMMAND),
            ("cwd", STRING),
            ("tty", BOOLEAN),
            ("pipe_stdin", BOOLEAN),
        ],
        ["environment_id", "command"],
    ),
    (
        "write_stdin",
        [("environment_id", STRING), ("session_id", STRING), ("chars", STRING)],
        ["environment_id", "session_id", "chars"],
    ),
    (
        "read_output",
        [
            ("environment_id", STRING),
            ("session_id", STRING),
            ("after_seq", INTEGER),
            ("yield_time_ms", INTEGER),
        ],
        ["environment_id", "session_id"],
    ),
    (
        "terminate",
        [("environment_id", STRING), ("session_id", STRING)],
        ["environment_id", "session_id"],
    ),
    (
        "read_file",
        [("environment_id", STRING), ("path", STRING), ("offset", INTEGER), ("limit", INTEGER)],
        ["environment_id", "path"],
    ),
    (
        "apply_patch",
        [("environment_id", STRING), ("patch", STRING)],
        ["environment_id", "patch"],
    ),
    (
        "copy_path",
        [
            ("source_environment_id", STRING),
            ("source_path", STRING),
            ("destination_environment_id", STRING),
            ("destination_path", STRING),
            ("recursive", BOOLEAN),
            ("timeout_ms", INTEGER),
            ("transport", STRING),
        ],
        [
            "source_environment_id",
            "source_path",
            "destination_environment_id",
            "destination_path",
        ],
    ),
]

#: §7: the descriptions env-mcp advertises.
DESCRIPTIONS = {
    "list_environments": "List the environments (machines) connected to this workspace. Each entry "
    "has name and, when set, description, is_default and last_seen. Pass name as environment_id to "
    "the other tools.",
    "shell": "Run a command on an environment and wait for it to finish. command is an argv array; use "
    '["bash","-lc","<script>"] for shell syntax. Returns stdout, stderr and the exit code.',
    "exec_command": "Start a long-running process on an environment without waiting. Returns a "
    "session_id for write_stdin, read_output and terminate.",
    "write_stdin": "Write text to the stdin of a process started by exec_command with pipe_stdin or "
    "tty.",
    "read_output": "Read new output of a process started by exec_command. Pass the previous next_seq "
    "as after_seq to continue.",
    "terminate": "Terminate a process started by exec_command.",
    "read_file": "Read a file on an environment. path must be absolute; offset and limit select a "
    "byte range.",
    "apply_patch": 'Apply a patch in the "*** Begin Patch" / "*** End Patch" format to files on an '
    "environment. File paths must be absolute.",
    "copy_path": "Copy a file, or a directory tree with recursive=true, between environments (or "
    "within one). Paths must be absolute POSIX paths; the destination appears atomically.",
}


@implementer(IResolverSource)
class _NoSource:
    """
    A resolver source that must not be asked.
    """

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """
        Fail: C{tools/list} needs no environment.
        """
        raise AssertionError("tools/list must not list environments")


class ToolsListTests(SynchronousTestCase):
    """
    C{tools/list} over the real env-mcp tools.
    """

    def listed(self) -> list[dict[str, Any]]:
        """
        The C{tools} of a C{tools/list} answer of a server over the real tools.
        """
        clock = Clock()
        context = EnvContext(
            BridgePool(lambda exe_id: fail(DialError("bridge dial: not in this test"))),
            Resolver(_NoSource(), clock),
            clock,
        )
        server = McpServer(bind_tools(ENV_MCP_TOOLS, context), clock)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b'{"jsonrpc":"2.0","id":"l","method":"tools/list"}\n')
        response = json.loads(transport.value())
        self.assertEqual((response["jsonrpc"], response["id"]), ("2.0", "l"))
        tools: list[dict[str, Any]] = response["result"]["tools"]
        return tools

    def test_names_in_order(self) -> None:
        """
        Exactly the nine tools of §9.4, in order (C{write_file} is SDK-only).
        """
        self.assertEqual([tool["name"] for tool in self.listed()], [name for name, _, _ in SCHEMAS])

    def test_entries(self) -> None:
        """
        Each entry has exactly name, description and inputSchema; the description is §7's.
        """
        for tool in self.listed():
            with self.subTest(tool=tool["name"]):
                self.assertEqual(list(tool), ["name", "description", "inputSchema"])
                self.assertEqual(tool["description"], DESCRIPTIONS[tool["name"]])

    def test_schemas(self) -> None:
        """
        The input schemas of §8: an object, properties in order with their types and a one-line
        description each, the required fields in order; C{list_environments} has no C{required};
        C{transport} is an enum.
        """
        for tool, (name, properties, required) in zip(self.listed(), SCHEMAS, strict=True):
            with self.subTest(tool=name):
                schema = tool["inputSchema"]
                self.assertEqual(schema["type"], "object")
                self.assertEqual(list(schema["properties"]), [p for p, _ in properties])
                for prop, kind in properties:
                    spec = schema["properties"][prop]
                    if kind == COMMAND:
                        self.assertEqual((spec["type"], spec["items"]), ("array", {"type": "string"}))
                    else:
                        self.assertEqual(spec["type"], kind)
                    self.assertIsInstance(spec["description"], str)
                    self.assertNotIn("\n", spec["description"])
                if required:
                    self.assertEqual(schema["required"], required)
                else:
                    self.assertEqual(schema["properties"], {})
                    self.assertNotIn("required", schema)
        copy_path = self.listed()[-1]["inputSchema"]["properties"]["transport"]
        self.assertEqual(copy_path["enum"], ["auto", "http", "ws"])
