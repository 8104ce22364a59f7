"""
Tests for L{codexgw.envtools.args} and L{codexgw.envtools.schemas}: the §7.1 argument rules against the
§8 schemas (part of acceptance criterion 12).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from codexgw.envtools.args import ArgumentError, check_arguments
from codexgw.envtools.schemas import DESCRIPTIONS, SCHEMAS, SDK_DESCRIPTIONS

ENV_TEXT = "environment_id is required; call list_environments to see available names"


class CheckArgumentsTests(SynchronousTestCase):
    """
    L{check_arguments}: types first in schema order, then required fields in schema order.
    """

    def check_error(self, tool: str, raw: dict[str, Any], text: str) -> None:
        """
        Assert that C{raw} is refused for C{tool} with exactly C{text}.
        """
        with self.assertRaises(ArgumentError) as caught:
            check_arguments(tool, raw)
        self.assertEqual(str(caught.exception), text)

    def test_integer_as_string(self) -> None:
        """
        C{timeout_ms:"5"} is not an integer.
        """
        self.check_error(
            "shell",
            {"environment_id": "dev", "command": ["true"], "timeout_ms": "5"},
            "invalid arguments: timeout_ms must be integer",
        )

    def test_boolean_is_not_integer(self) -> None:
        """
        C{true} is never an integer.
        """
        self.check_error(
            "read_file",
            {"environment_id": "dev", "path": "/a", "offset": True},
            "invalid arguments: offset must be integer",
        )

    def test_fractional_is_not_integer(self) -> None:
        """
        C{2.5} is not integral.
        """
        self.check_error(
            "read_file",
            {"environment_id": "dev", "path": "/a", "limit": 2.5},
            "invalid arguments: limit must be integer",
        )

    def test_integral_float(self) -> None:
        """
        C{5.0} is an integer and comes back as C{int}.
        """
        checked = check_arguments("read_file", {"environment_id": "dev", "path": "/a", "limit": 5.0})
        self.assertEqual(checked["limit"], 5)
        self.assertIsInstance(checked["limit"], int)

    def test_string_type(self) -> None:
        """
        A number where a string is expected.
        """
        self.check_error(
            "read_file",
            {"environment_id": "dev", "path": 7},
            "invalid arguments: path must be string",
        )

    def test_boolean_type(self) -> None:
        """
        A string where a boolean is expected.
        """
        self.check_error(
            "exec_command",
            {"environment_id": "dev", "command": ["cat"], "pipe_stdin": "yes"},
            "invalid arguments: pipe_stdin must be boolean",
        )

    def test_types_before_required(self) -> None:
        """
        A type error later in the schema wins over a missing required field earlier in it.
        """
        self.check_error("shell", {"timeout_ms": "x"}, "invalid arguments: timeout_ms must be integer")

    def test_types_in_schema_order(self) -> None:
        """
        Of two type errors, the one earlier in the schema is reported.
        """
        self.check_error(
            "read_file",
            {"limit": "x", "environment_id": 1},
            "invalid arguments: environment_id must be string",
        )

    def test_environment_absent(self) -> None:
        """
        An absent environment field has its own text, without the C{invalid arguments} prefix.
        """
        self.check_error("shell", {"command": ["true"]}, ENV_TEXT)

    def test_environment_empty(self) -> None:
        """
        An empty environment field counts as absent.
        """
        self.check_error("shell", {"environment_id": "", "command": ["true"]}, ENV_TEXT)

    def test_null_is_absent(self) -> None:
        """
        C{null} counts as absent, for required and optional fields alike.
        """
        self.check_error("shell", {"environment_id": None, "command": ["true"]}, ENV_TEXT)
        checked = check_arguments(
            "shell", {"environment_id": "dev", "command": ["true"], "timeout_ms": None}
        )
        self.assertEqual(checked, {"environment_id": "dev", "command": ["true"]})

    def test_required_in_schema_order(self) -> None:
        """
        Of two missing fields, the one earlier in the schema is reported.
        """
        self.check_error("write_file", {"environment_id": "dev"}, "invalid arguments: path is required")
        self.check_error(
            "write_file",
            {"environment_id": "dev", "path": "/x"},
            "invalid arguments: content_b64 is required",
        )

    def test_command_rule(self) -> None:
        """
        C{command} absent, not an array, empty or with a non-string element → its own text.
        """
        for command in (None, "ls", [], ["ls", 1], {"a": 1}):
            self.check_error(
                "shell",
                {"environment_id": "dev", "command": command},
                "command must be a non-empty array",
            )

    def test_command_after_environment(self) -> None:
        """
        The environment field comes first in the schema, so it is reported before C{command}.
        """
        self.check_error("exec_command", {"command": "ls"}, ENV_TEXT)

    def test_empty_chars_allowed(self) -> None:
        """
        C{chars} may be empty.
        """
        checked = check_arguments(
            "write_stdin", {"environment_id": "dev", "session_id": "s", "chars": ""}
        )
        self.assertEqual(checked["chars"], "")

    def test_unknown_members_ignored(self) -> None:
        """
        Unknown members are dropped; the present values come back in schema order.
        """
        checked = check_arguments(
            "read_output",
            {"zzz": 1, "after_seq": 3, "session_id": "s", "environment_id": "dev"},
        )
        self.assertEqual(list(checked), ["environment_id", "session_id", "after_seq"])

    def test_copy_path_environment_fields(self) -> None:
        """
        Both environment fields of C{copy_path} have the environment text with their own name.
        """
        self.check_error(
            "copy_path",
            {"source_path": "/a", "destination_path": "/b", "destination_environment_id": "d"},
            "source_environment_id is required; call list_environments to see available names",
        )
        self.check_error(
            "copy_path",
            {"source_environment_id": "s", "source_path": "/a", "destination_path": "/b"},
            "destination_environment_id is required; call list_environments to see available names",
        )

    def test_transport_enum(self) -> None:
        """
        C{transport} must be one of three values in any letter case, and is returned as given.
        """
        base = {
            "source_environment_id": "s",
            "source_path": "/a",
            "destination_environment_id": "d",
            "destination_path": "/b",
        }
        self.check_error(
            "copy_path",
            {**base, "transport": "ftp"},
            'invalid arguments: transport must be "auto", "http" or "ws"',
        )
        self.assertEqual(
            check_arguments("copy_path", {**base, "transport": "HTTP"})["transport"], "HTTP"
        )

    def test_list_environments(self) -> None:
        """
        C{list_environments} takes nothing and ignores what it gets.
        """
        self.assertEqual(check_arguments("list_environments", {"x": 1}), {})

    def test_every_tool_requires_its_fields(self) -> None:
        """
        For every tool, C{{}} reports the first required field of its schema, and a wrong type of each
        typed property is reported with that property's name.
        """
        wrong = {"string": 1, "integer": "1", "boolean": "true"}
        for tool, schema in SCHEMAS.items():
            required = schema.get("required", [])
            if required:
                first = required[0]
                with self.assertRaises(ArgumentError) as caught:
                    check_arguments(tool, {})
                self.assertTrue(str(caught.exception).startswith(first), (tool, caught.exception))
            for field, prop in schema["properties"].items():
                if prop["type"] not in wrong:
                    continue
                with self.assertRaises(ArgumentError) as caught:
                    check_arguments(tool, {field: wrong[prop["type"]]})
                self.assertEqual(
                    str(caught.exception), f"invalid arguments: {field} must be {prop['type']}"
                )


class SchemaTests(SynchronousTestCase):
    """
    L{SCHEMAS} and the descriptions follow §8 and §7.
    """

    def test_property_order(self) -> None:
        """
        Every tool's properties are in the §8 order, with the §8 required lists.
        """
        expected = {
            "shell": (["environment_id", "command", "cwd", "timeout_ms"], 2),
            "exec_command": (["environment_id", "command", "cwd", "tty", "pipe_stdin"], 2),
            "write_stdin": (["environment_id", "session_id", "chars"], 3),
            "read_output": (["environment_id", "session_id", "after_seq", "yield_time_ms"], 2),
            "terminate": (["environment_id", "session_id"], 2),
            "read_file": (["environment_id", "path", "offset", "limit"], 2),
            "write_file": (["environment_id", "path", "content_b64"], 3),
            "apply_patch": (["environment_id", "patch"], 2),
            "copy_path": (
                [
                    "source_environment_id",
                    "source_path",
                    "destination_environment_id",
                    "destination_path",
                    "recursive",
                    "timeout_ms",
                    "transport",
                ],
                4,
            ),
        }
        for tool, (names, required) in expected.items():
            schema = SCHEMAS[tool]
            self.assertEqual(schema["type"], "object")
            self.assertEqual(list(schema["properties"]), names, tool)
            self.assertEqual(schema["required"], names[:required], tool)
            for prop in schema["properties"].values():
                self.assertIsInstance(prop["description"], str)

    def test_types(self) -> None:
        """
        C{command} is an array of strings; C{transport} carries its enum.
        """
        self.assertEqual(SCHEMAS["shell"]["properties"]["command"]["items"], {"type": "string"})
        self.assertEqual(SCHEMAS["shell"]["properties"]["command"]["type"], "array")
        self.assertEqual(SCHEMAS["shell"]["properties"]["timeout_ms"]["type"], "integer")
        self.assertEqual(SCHEMAS["copy_path"]["properties"]["transport"]["enum"], ["auto", "http", "ws"])

    def test_list_environments_schema(self) -> None:
        """
        C{list_environments} has empty properties and no C{required}.
        """
        self.assertEqual(SCHEMAS["list_environments"], {"type": "object", "properties": {}})

    def test_descriptions(self) -> None:
        """
        The nine env-mcp descriptions exist; two are checked word for word.
        """
        self.assertEqual(
            set(DESCRIPTIONS),
            {
                "list_environments",
                "shell",
                "exec_command",
                "write_stdin",
                "read_output",
                "terminate",
                "read_file",
                "apply_patch",
                "copy_path",
            },
        )
        self.assertEqual(
            DESCRIPTIONS["shell"],
            "Run a command on an environment and wait for it to finish. command is an argv array; "
            'use ["bash","-lc","<script>"] for shell syntax. Returns stdout, stderr and the exit '
            "code.",
        )
        self.assertEqual(DESCRIPTIONS["terminate"], "Terminate a process started by exec_command.")
        self.assertEqual(
            list(SDK_DESCRIPTIONS),
            ["shell", "read_file", "write_file", "apply_patch", "copy_path", "exec_command"],
        )
