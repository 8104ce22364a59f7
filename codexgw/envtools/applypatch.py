"""
The C{apply_patch} tool (C{envtools.md} §7.11): parse a patch (L{codexgw.envtools.patch}) and carry
out its operations on one environment with the exec-server's fs methods, one operation after another.

Calls per operation (paths converted by §3.1):
 - Add File → C{fs/createDirectory} C{{"path":<parent uri>,"recursive":true}}, C{fs/writeFile};
 - Update File → C{fs/readFile}, C{fs/writeFile} of the result;
 - Update with Move → C{fs/readFile} of the old path, C{fs/createDirectory} of the new path's parent,
   C{fs/writeFile} of the new path, C{fs/remove} C{{"path":<old>,"recursive":false,"force":false}};
 - Delete File → C{fs/remove} C{{"path":<uri>,"recursive":false,"force":false}}.

The text has one line per operation, C{<path>: ok} or C{<path>: error: <message>} (a move written
C{<path> -> <new path>: …}); a failed operation does not stop the next.

Decisions where the spec is silent:
 - The patch is parsed before the environment is resolved: an invalid patch is reported (and nothing
   is called) whatever the environment.
 - A Move without hunks writes the bytes read back unchanged (their C{dataBase64} as received), so it
   needs no UTF-8; with hunks the content must be UTF-8.
 - A Move whose new path converts to the same URI as the old one is carried out as a plain Update
   (C{fs/readFile}, C{fs/writeFile}): the specified C{fs/remove} of the old path would delete the
   result.
 - Added and updated text is encoded as UTF-8 with lone surrogates written as their (invalid) UTF-8
   form (C{surrogatepass}), as C{write_stdin} does.
 - An C{fs/readFile} result without a string C{dataBase64}, or with one that is not base64, is the
   operation's error C{fs/readFile: malformed result: <detail>} (as C{read_file}'s).
 - A patch without operations answers the empty text, not an error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import CancelledError

from codexgw.envtools.args import check_arguments
from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import IExecServerClient, ToolResult
from codexgw.envtools.patch import (
    AddFile,
    DeleteFile,
    Operation,
    PatchError,
    UpdateFile,
    apply_hunks,
    parse_patch,
)
from codexgw.envtools.paths import parent_uri, to_uri
from codexgw.envtools.tools import tool_function


class _OperationFailed(Exception):
    """
    One operation's error; C{str()} is the message after C{error: }.
    """


def _encode(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


async def _read(client: IExecServerClient, uri: str) -> str:
    """
    C{fs/readFile} of C{uri}: its C{dataBase64}.
    """
    result = await client.call("fs/readFile", {"path": uri})
    encoded = result.get("dataBase64") if isinstance(result, dict) else None
    if not isinstance(encoded, str):
        raise _OperationFailed("fs/readFile: malformed result: dataBase64 must be a string")
    return encoded


def _updated(encoded: str, operation: UpdateFile) -> str:
    """
    The new content (base64) of an Update with hunks.
    """
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _OperationFailed(f"fs/readFile: malformed result: {error}") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _OperationFailed("not valid UTF-8") from error
    return _encode(apply_hunks(text, operation.hunks))


async def _carry_out(client: IExecServerClient, operation: Operation) -> None:
    """
    The calls of one operation (module docstring).

    @raise Exception: the operation's error; C{str()} is its message.
    """
    uri = to_uri(operation.path)
    if isinstance(operation, AddFile):
        await client.call("fs/createDirectory", {"path": parent_uri(uri), "recursive": True})
        await client.call("fs/writeFile", {"path": uri, "dataBase64": _encode(operation.content)})
    elif isinstance(operation, DeleteFile):
        await client.call("fs/remove", {"path": uri, "recursive": False, "force": False})
    else:
        new_uri = uri if operation.move_to is None else to_uri(operation.move_to)
        encoded = await _read(client, uri)
        content = _updated(encoded, operation) if operation.hunks else encoded
        if new_uri == uri:
            await client.call("fs/writeFile", {"path": uri, "dataBase64": content})
            return
        await client.call("fs/createDirectory", {"path": parent_uri(new_uri), "recursive": True})
        await client.call("fs/writeFile", {"path": new_uri, "dataBase64": content})
        await client.call("fs/remove", {"path": uri, "recursive": False, "force": False})


def _label(operation: Operation) -> str:
    if isinstance(operation, UpdateFile) and operation.move_to is not None:
        return f"{operation.path} -> {operation.move_to}"
    return operation.path


@tool_function
async def apply_patch_tool(ctx: EnvContext, arguments: Mapping[str, Any]) -> ToolResult:
    """
    Apply a patch to files on an environment (§7.11).

    @param arguments: C{environment_id}* and C{patch}*.
    @return: one line per operation; C{is_error} when any operation failed, or the argument, patch or
        environment error.
    """
    args = check_arguments("apply_patch", arguments)
    try:
        operations = parse_patch(args["patch"])
    except PatchError as error:
        return ToolResult(str(error), is_error=True)
    _, client = await ctx.client_for(args["environment_id"])
    lines: list[str] = []
    failed = False
    for operation in operations:
        try:
            await _carry_out(client, operation)
        except CancelledError:
            raise
        except Exception as error:  # PathError, HunkError, _OperationFailed, CallError, …
            lines.append(f"{_label(operation)}: error: {error}")
            failed = True
        else:
            lines.append(f"{_label(operation)}: ok")
    return ToolResult("\n".join(lines), is_error=failed)
