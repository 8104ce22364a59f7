"""
A minimal MCP server over stdio for integration tests: one tool, C{echo}, whose result is its C{text}
argument prefixed with C{echo: }.

Messages are JSON-RPC objects, one per line, as MCP's stdio transport frames them. The server answers
C{initialize}, C{ping}, C{tools/list} and C{tools/call}, ignores notifications, answers any other
request with -32601, and exits when stdin closes. Only the standard library is used, so that codex can
start it with any Python.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

#: The protocol version offered when the client does not name one.
DEFAULT_PROTOCOL_VERSION = "2025-06-18"

#: What C{tools/call} puts in front of the echoed text.
ECHO_PREFIX = "echo: "

ECHO_TOOL: dict[str, object] = {
    "name": "echo",
    "description": "Return the given text, prefixed with 'echo: '.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The text to echo."}},
        "required": ["text"],
        "additionalProperties": False,
    },
}


def answer(message: dict[str, object]) -> dict[str, object] | None:
    """
    Return the response to one request, or L{None} for a notification.

    @param message: a decoded JSON-RPC message.
    """
    if message.get("id") is None:
        return None
    method = message.get("method")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    result: dict[str, object]
    if method == "initialize":
        version = params.get("protocolVersion")
        result = {
            "protocolVersion": version if isinstance(version, str) else DEFAULT_PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "codexgw-test-echo", "version": "1.0.0"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": [ECHO_TOOL]}
    elif method == "tools/call" and params.get("name") == "echo":
        arguments = params.get("arguments")
        text = arguments.get("text") if isinstance(arguments, dict) else None
        if not isinstance(text, str):
            result = {"content": [{"type": "text", "text": "text must be a string"}], "isError": True}
        else:
            result = {"content": [{"type": "text", "text": ECHO_PREFIX + text}], "isError": False}
    else:
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "error": {"code": -32601, "message": f"method not found: {method}"},
        }
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def serve(reader: TextIO, writer: TextIO) -> None:
    """
    Answer messages from C{reader} on C{writer} until C{reader} ends.

    @param reader: one JSON-RPC message per line.
    @param writer: where the responses go, one per line, flushed at once.
    """
    for line in reader:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        response = answer(message)
        if response is not None:
            writer.write(json.dumps(response) + "\n")
            writer.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
