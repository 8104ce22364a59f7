"""
The input schemas (C{envtools.md} §8) and descriptions (§7, C{exec-gateway.md} §4.8.2) of the tools.

L{SCHEMAS} holds the JSON schema of every tool, properties in the §8 order — L{codexgw.envtools.args}
validates against it and env-mcp's C{tools/list} advertises it. L{DESCRIPTIONS} holds the nine
descriptions env-mcp advertises (§7); L{SDK_DESCRIPTIONS} the SDK's six short ones.

Decisions where the spec is silent:
 - The property descriptions are ours (their wording is not part of the contract, §8).
 - C{write_file} has no env-mcp description (it is SDK-only); L{WRITE_FILE_DESCRIPTION} is a long
   description in the style of §7 for callers that want one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: The fields that name an environment (§7.1 "Required fields").
ENVIRONMENT_FIELDS: Final = frozenset(
    {"environment_id", "source_environment_id", "destination_environment_id"}
)


def _prop(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": kind}
    if kind == "array":
        prop["items"] = {"type": "string"}
    prop["description"] = description
    prop.update(extra)
    return prop


def _schema(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_ENV = "Name of the environment, as list_environments shows it."
_SESSION = "The session_id returned by exec_command."
_COMMAND = 'Program and arguments (argv); use ["bash","-lc","<script>"] for shell syntax.'
_CWD = 'Absolute working directory (default "/tmp").'

#: The §8 input schema of every tool, by name, properties in the specified order.
SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "list_environments": {"type": "object", "properties": {}},
    "shell": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "command": _prop("array", _COMMAND),
            "cwd": _prop("string", _CWD),
            "timeout_ms": _prop("integer", "Time limit in milliseconds (default 60000, 250 to 600000)."),
        },
        ["environment_id", "command"],
    ),
    "exec_command": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "command": _prop("array", _COMMAND),
            "cwd": _prop("string", _CWD),
            "tty": _prop("boolean", "Run on a pseudo-terminal (default false)."),
            "pipe_stdin": _prop("boolean", "Accept write_stdin (default false)."),
        },
        ["environment_id", "command"],
    ),
    "write_stdin": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "session_id": _prop("string", _SESSION),
            "chars": _prop("string", "Text to write to the process's stdin (may be empty)."),
        },
        ["environment_id", "session_id", "chars"],
    ),
    "read_output": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "session_id": _prop("string", _SESSION),
            "after_seq": _prop("integer", "The next_seq of the previous read_output; omit to read all."),
            "yield_time_ms": _prop(
                "integer",
                "How long to wait for new output in milliseconds (default 1000, at most 30000).",
            ),
        },
        ["environment_id", "session_id"],
    ),
    "terminate": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "session_id": _prop("string", _SESSION),
        },
        ["environment_id", "session_id"],
    ),
    "read_file": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "path": _prop("string", "Absolute path of the file."),
            "offset": _prop("integer", "First byte to return (default 0)."),
            "limit": _prop("integer", "Number of bytes to return (default 0: to the end)."),
        },
        ["environment_id", "path"],
    ),
    "write_file": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "path": _prop("string", "Absolute path of the file."),
            "content_b64": _prop("string", "The whole new content, standard base64 with padding."),
        },
        ["environment_id", "path", "content_b64"],
    ),
    "apply_patch": _schema(
        {
            "environment_id": _prop("string", _ENV),
            "patch": _prop("string", 'The patch, from "*** Begin Patch" to "*** End Patch".'),
        },
        ["environment_id", "patch"],
    ),
    "copy_path": _schema(
        {
            "source_environment_id": _prop("string", "Name of the environment to copy from."),
            "source_path": _prop("string", "Absolute POSIX path of the source file or directory."),
            "destination_environment_id": _prop("string", "Name of the environment to copy to."),
            "destination_path": _prop("string", "Absolute POSIX path the copy appears at."),
            "recursive": _prop("boolean", "Copy a directory tree (default false)."),
            "timeout_ms": _prop(
                "integer", "Time limit in milliseconds (default and maximum 600000, minimum 1000)."
            ),
            "transport": _prop(
                "string", 'How the bytes travel (default "auto").', enum=["auto", "http", "ws"]
            ),
        },
        ["source_environment_id", "source_path", "destination_environment_id", "destination_path"],
    ),
}

#: The descriptions env-mcp advertises (§7), by tool name: the nine env-mcp tools.
DESCRIPTIONS: Final[Mapping[str, str]] = {
    "list_environments": (
        "List the environments (machines) connected to this workspace. Each entry has name and, "
        "when set, description, is_default and last_seen. Pass name as environment_id to the other "
        "tools."
    ),
    "shell": (
        "Run a command on an environment and wait for it to finish. command is an argv array; use "
        '["bash","-lc","<script>"] for shell syntax. Returns stdout, stderr and the exit code.'
    ),
    "exec_command": (
        "Start a long-running process on an environment without waiting. Returns a session_id for "
        "write_stdin, read_output and terminate."
    ),
    "write_stdin": (
        "Write text to the stdin of a process started by exec_command with pipe_stdin or tty."
    ),
    "read_output": (
        "Read new output of a process started by exec_command. Pass the previous next_seq as "
        "after_seq to continue."
    ),
    "terminate": "Terminate a process started by exec_command.",
    "read_file": (
        "Read a file on an environment. path must be absolute; offset and limit select a byte range."
    ),
    "apply_patch": (
        'Apply a patch in the "*** Begin Patch" / "*** End Patch" format to files on an '
        "environment. File paths must be absolute."
    ),
    "copy_path": (
        "Copy a file, or a directory tree with recursive=true, between environments (or within "
        "one). Paths must be absolute POSIX paths; the destination appears atomically."
    ),
}

#: A description of the SDK-only C{write_file} in the style of §7 (not advertised by env-mcp).
WRITE_FILE_DESCRIPTION: Final = (
    "Write a file on an environment, creating missing parent directories. path must be absolute; "
    "content_b64 is the whole new content in base64."
)

#: The SDK's short descriptions (C{exec-gateway.md} §4.8.2), in the SDK's order.
SDK_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "shell": "Run a command synchronously.",
    "read_file": "Read a file by path.",
    "write_file": "Write a file by path.",
    "apply_patch": "Apply a patch in the *** Begin Patch format.",
    "copy_path": "Upload or download a file.",
    "exec_command": "Start a long-running process (returns session_id).",
}
