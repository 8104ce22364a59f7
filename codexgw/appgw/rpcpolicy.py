"""
The JSON-RPC policy of the app gateway's TUI proxy (C{app-gateway.md} §7.3, §7.4), as pure functions
on message bytes: no I/O, no logging, no metrics (the proxy does those).

 - Server → client (§7.3): L{approval_reply} recognises codex's approval requests (a JSON object with
   a method of L{APPROVAL_REPLIES} and a non-null C{id}) and gives the exact bytes of the gateway's
   answer; the Turn API broker (§8.4) uses the same table and function.
 - Client → server (§7.4): L{judge_client_message} decides each TUI message: forward it unchanged,
   drop it (a batch, a duplicated top-level key) or block it (a local-IO or host-config method, a
   forbidden config override), with the exact error reply when the request has an id.

Reply bytes are compact JSON (no spaces) with the keys in the order the spec shows them:
C{{"jsonrpc":"2.0","id":<id>,"result":<result>}} and
C{{"jsonrpc":"2.0","id":<id>,"error":{"code":<code>,"message":<message>}}}.

Decisions where the spec is silent:
 - "Echoed as received" is by value: the id is parsed and written back as compact JSON, so an integer
   or an ASCII string comes back byte for byte; a string with escapes comes back as the same string
   with JSON's minimal escaping (non-ASCII as UTF-8; a string holding a lone surrogate, which cannot
   be UTF-8, as C{\\uXXXX} escapes). Any non-null id (also a number with a fraction, a boolean, an
   object) is answered: a request is a message with an id, whatever codex thinks of that id.
 - "Decodes as UTF-8 JSON" is strict UTF-8 and standard JSON, applied to text and binary messages
   alike. A leading UTF-8 byte order mark is ignored for judging only (the bytes forwarded keep it):
   judging a message codex may still parse is the safe side. Python's decoder is more lenient than
   codex's (it accepts C{NaN} and C{Infinity}), never stricter: what Python cannot decode (including
   nesting too deep for its recursion limit, far beyond serde_json's 128 levels), codex cannot either,
   so forwarding it unjudged lets nothing blocked through.
 - Only a I{top-level} duplicated key drops the message (the spec's rule). Inside C{params}, the
   config-override guard looks at every C{config} member and every key of each, duplicates included,
   so a later duplicate cannot hide an earlier forbidden key whichever copy codex keeps.
 - Config-override keys are checked case-sensitively, as codex reads them.

Fast paths (so that a 60 MiB message is not parsed when it cannot matter):
 - Client → server: only a JSON object or array can be dropped or blocked. A message whose first byte
   after JSON whitespace (and an optional byte order mark) is neither C{{} nor C{[} is a JSON scalar or
   not JSON at all, and both are forwarded, so it is forwarded without parsing. Every object and array
   is parsed: a duplicated top-level key can only be found by parsing, and binary messages are judged
   like text ones.
 - Server → client: an approval request must spell its method. Without escapes, that spelling holds
   C{Approval}, C{requestUserInput} or C{elicitation/request} literally; an escaped spelling needs
   C{\\/} or C{\\u} (the other JSON escapes cannot produce letters or C{/}). A message that is not an
   object or contains none of these five byte strings is forwarded without parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

#: §7.3: the result the gateway answers each approval request with. Key order is the wire order.
APPROVAL_REPLIES: Final[Mapping[str, dict[str, object]]] = {
    "item/commandExecution/requestApproval": {"decision": "accept"},
    "item/fileChange/requestApproval": {"decision": "accept"},
    "item/permissions/requestApproval": {"permissions": {}},
    "item/tool/requestUserInput": {"answers": {}},
    "mcpServer/elicitation/request": {"action": "accept", "content": None, "_meta": None},
    "execCommandApproval": {"decision": "approved"},
    "applyPatchApproval": {"decision": "approved"},
}

#: §7.4 block reasons (the C{reason} label of C{codexgw_rpc_blocked_total}).
LOCAL_IO: Final = "local_io"
HOST_CONFIG: Final = "host_config"
CONFIG_OVERRIDE: Final = "config_override"

#: §7.4 drop reasons (for the warning).
DROP_BATCH: Final = "batch"
DROP_DUPLICATE_KEY: Final = "duplicate key"

#: §7.4 local-IO block: exactly these 14 methods.
LOCAL_IO_METHODS: Final = frozenset(
    {
        "thread/shellCommand",
        "command/exec",
        "command/exec/write",
        "command/exec/terminate",
        "command/exec/resize",
        "fs/readFile",
        "fs/writeFile",
        "fs/createDirectory",
        "fs/remove",
        "fs/copy",
        "fs/readDirectory",
        "fs/getMetadata",
        "fs/watch",
        "fs/unwatch",
    }
)
LOCAL_IO_CODE: Final = -32601
LOCAL_IO_MESSAGE: Final = (
    "This RPC is disabled in the cloud deployment because it would access the shared "
    "codex-app-gateway pod, not your local machine. Use the LLM-driven shell / read_file tools "
    "(they route through your registered executor)."
)

#: §7.4 host-config block.
HOST_CONFIG_METHODS: Final = frozenset(
    {
        "config/value/write",
        "config/batchWrite",
        "plugin/install",
        "plugin/uninstall",
        "marketplace/add",
        "marketplace/remove",
        "marketplace/upgrade",
    }
)
HOST_CONFIG_CODE: Final = -32601
HOST_CONFIG_MESSAGE: Final = (
    "This RPC is disabled in the cloud deployment because it would change the configuration of "
    "the shared codex-app-gateway pod."
)

#: §7.4 config-override guard: the methods whose C{params.config} is checked, and the first
#: dot-separated segments a key of it must not have.
CONFIG_GUARDED_METHODS: Final = frozenset({"thread/start", "thread/resume", "thread/fork"})
FORBIDDEN_CONFIG_ROOTS: Final = frozenset(
    {
        "mcp_servers",
        "model_providers",
        "model_provider",
        "hooks",
        "notify",
        "features",
        "projects",
        "profile",
        "profiles",
        "shell_environment_policy",
    }
)
CONFIG_OVERRIDE_CODE: Final = -32602


def config_override_message(key: str) -> str:
    """
    The §7.4 error message for a forbidden config override C{key}.
    """
    return f'Config override "{key}" is disabled in the cloud deployment.'


@dataclass(frozen=True)
class ClientVerdict:
    """
    What to do with one TUI message (§7.4).

    @ivar action: C{forward} (unchanged), C{drop} (log a warning with C{reason}) or C{block} (count
        C{codexgw_rpc_blocked_total{reason}}, send C{reply} to the TUI when it is not C{None}).
    @ivar reason: for C{drop}, L{DROP_BATCH} or L{DROP_DUPLICATE_KEY}; for C{block}, L{LOCAL_IO},
        L{HOST_CONFIG} or L{CONFIG_OVERRIDE}; empty for C{forward}.
    @ivar method: the blocked request's method (for the log); empty otherwise.
    @ivar reply: the exact error reply for a blocked request with a non-null id; C{None} otherwise.
    """

    action: Literal["forward", "drop", "block"]
    reason: str = ""
    method: str = ""
    reply: bytes | None = None


#: The verdict of every message that passes.
FORWARD: Final = ClientVerdict("forward")

# JSON whitespace (RFC 8259) after an optional UTF-8 byte order mark.
_LEADING: Final = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\n\r]*")
# Byte strings one of which every approval request's bytes must contain (module docstring).
_APPROVAL_MARKERS: Final = (b"Approval", b"requestUserInput", b"elicitation/request", b"\\u", b"\\/")


def _json_bytes(value: object) -> bytes:
    """
    C{value} as compact JSON in UTF-8 (ASCII escapes for a string UTF-8 cannot carry).
    """
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


_APPROVAL_RESULT_BYTES: Final = {name: _json_bytes(result) for name, result in APPROVAL_REPLIES.items()}


def result_reply(request_id: object, result_json: bytes) -> bytes:
    """
    C{{"jsonrpc":"2.0","id":<request_id>,"result":<result_json>}}.

    @param request_id: the request's id, as parsed.
    @param result_json: the result, already compact JSON.
    """
    return b'{"jsonrpc":"2.0","id":' + _json_bytes(request_id) + b',"result":' + result_json + b"}"


def error_reply(request_id: object, code: int, message: str) -> bytes:
    """
    C{{"jsonrpc":"2.0","id":<request_id>,"error":{"code":<code>,"message":<message>}}}.

    @param request_id: the request's id, as parsed.
    """
    error = _json_bytes({"code": code, "message": message})
    return b'{"jsonrpc":"2.0","id":' + _json_bytes(request_id) + b',"error":' + error + b"}"


def _significant_byte(payload: bytes) -> bytes:
    """
    The first byte of C{payload} after a byte order mark and JSON whitespace (empty if none).
    """
    match = _LEADING.match(payload)
    start = match.end() if match is not None else 0
    return payload[start : start + 1]


def approval_reply(message: bytes | Mapping[str, Any]) -> bytes | None:
    """
    The gateway's answer to a codex approval request (§7.3), or C{None} for any other message.

    @param message: a message from the app-server, as received (bytes), or already parsed (the
        broker's case).
    @return: the exact reply bytes for the app-server when C{message} is a JSON object with a method of
        L{APPROVAL_REPLIES} and a non-null C{id}; C{None} for notifications, other methods, malformed
        JSON and everything else (all forwarded unchanged).
    """
    parsed: object
    if isinstance(message, bytes):
        if _significant_byte(message) != b"{":
            return None
        if not any(marker in message for marker in _APPROVAL_MARKERS):
            return None
        try:
            parsed = json.loads(message.decode("utf-8").removeprefix("\ufeff"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
    else:
        parsed = message
    if not isinstance(parsed, Mapping):
        return None
    method = parsed.get("method")
    if not isinstance(method, str) or method not in _APPROVAL_RESULT_BYTES:
        return None
    request_id = parsed.get("id")
    if request_id is None:
        return None
    return result_reply(request_id, _APPROVAL_RESULT_BYTES[method])


class _JSONObject(dict[str, Any]):
    """
    A decoded JSON object that remembers its members in document order, duplicates included.

    @ivar pairs: every C{(key, value)} as written.
    @ivar duplicated: whether a key occurs more than once.
    """

    __slots__ = ("duplicated", "pairs")

    pairs: list[tuple[str, Any]]
    duplicated: bool


def _object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject(pairs)
    obj.pairs = pairs
    obj.duplicated = len(obj) != len(pairs)
    return obj


def _forbidden_override(params: object) -> str | None:
    """
    The first key of C{params.config} (every C{config} member, in document order) whose first
    dot-separated segment is forbidden, or C{None}.
    """
    if not isinstance(params, _JSONObject):
        return None
    for name, config in params.pairs:
        if name != "config" or not isinstance(config, _JSONObject):
            continue
        for key, _ in config.pairs:
            if key.split(".", 1)[0] in FORBIDDEN_CONFIG_ROOTS:
                return key
    return None


def _block(request: _JSONObject, method: str, reason: str, code: int, message: str) -> ClientVerdict:
    request_id = request.get("id")
    reply = None if request_id is None else error_reply(request_id, code, message)
    return ClientVerdict("block", reason, method, reply)


def judge_client_message(payload: bytes) -> ClientVerdict:
    """
    Decide one TUI message, text or binary (§7.4).

    @param payload: the message's bytes as received.
    @return: L{FORWARD} for anything that passes (including non-JSON and non-UTF-8 payloads); a
        C{drop} verdict for a top-level array or an object with a duplicated top-level key; a C{block}
        verdict for a blocked method or a forbidden config override.
    """
    if _significant_byte(payload) not in (b"{", b"["):
        return FORWARD
    try:
        decoded = json.loads(payload.decode("utf-8").removeprefix("\ufeff"), object_pairs_hook=_object)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return FORWARD
    if isinstance(decoded, list):
        return ClientVerdict("drop", DROP_BATCH)
    if not isinstance(decoded, _JSONObject):
        return FORWARD
    if decoded.duplicated:
        return ClientVerdict("drop", DROP_DUPLICATE_KEY)
    method = decoded.get("method")
    if not isinstance(method, str):
        return FORWARD
    if method in LOCAL_IO_METHODS:
        return _block(decoded, method, LOCAL_IO, LOCAL_IO_CODE, LOCAL_IO_MESSAGE)
    if method in HOST_CONFIG_METHODS:
        return _block(decoded, method, HOST_CONFIG, HOST_CONFIG_CODE, HOST_CONFIG_MESSAGE)
    if method in CONFIG_GUARDED_METHODS:
        key = _forbidden_override(decoded.get("params"))
        if key is not None:
            message = config_override_message(key)
            return _block(decoded, method, CONFIG_OVERRIDE, CONFIG_OVERRIDE_CODE, message)
    return FORWARD
