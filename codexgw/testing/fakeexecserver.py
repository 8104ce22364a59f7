"""
A fake C{codex exec-server}: the in-memory stand-in for C{codex exec-server --listen stdio} (pinned
codex 0.169.0) behind which the envtools tests run (C{envtools.md} §2, §10).

L{FakeExecServer} takes one JSON-RPC message at a time through L{FakeExecServer.handle} and answers
through the settable L{FakeExecServer.on_reply} (one compact JSON object per call, no line end), as
the real one answers on stdout. L{FakeExecServerClient} is an L{IExecServerClient} straight over a
fake (no frames, no websocket) for the unit tests of the tools. C{tests.envtools.
test_execserver_conformance} runs one protocol suite against this fake and against the real binary.

What is copied from the real exec-server (each point measured on the binary):
 - Envelopes: replies C{{"id":..,"result":..}} and C{{"error":{"code":..,"message":..},"id":..}},
   notifications C{{"method":..,"params":..}}, never a C{jsonrpc} member; a request id is an integer
   or a string and is echoed as received.
 - Strictly one request at a time, in arrival order: a waiting C{process/read} delays every message
   behind it, parse errors and notifications included.
 - Lines: a message holding C{\\n} is split into lines like the real stdin reader; blank lines are
   ignored. A line that is not JSON, or not a JSON-RPC message, is answered with id C{-1} and
   C{failed to parse JSON-RPC message from exec-server stdio: <detail>}: C{expected a JSON-RPC
   object}, C{missing field `error`}, C{data did not match any variant of untagged enum RequestId},
   or the JSON parser's C{expected value at line 1 column 1}, C{EOF while parsing …}, C{trailing
   characters …}.
 - A notification other than C{initialized}, C{initialized} before C{initialize}, or a response
   (C{result}/C{error}) sent I{to} the exec-server stops it: nothing more is answered, and the next
   time it reads its stdin (anything, a blank line too; lines that came in the same read are
   dropped) it exits with status 0 as at stdin EOF. The fake exits at the next L{FakeExecServer.handle}
   call (L{FakeExecServer.close}). A second C{initialized} is ignored.
 - Params are checked the way serde checks them, before anything else (the handshake included):
   members in the order they appear, unknown members ignored, then the first missing required field
   in declaration order; texts C{missing field `x`}, C{invalid type: <what>, expected <kind>}
   (C{null}, C{boolean `true`}, C{number}, C{string "x"}, C{sequence}, C{map}; kinds C{a string},
   C{a boolean}, C{u64}, C{usize}, C{a sequence}, C{a map}, C{struct <Name>}), C{invalid number}
   (a negative, fractional or too large integer), C{invalid length 0, expected struct <Name> with
   <n> elements}. Path URIs and C{process/write}'s C{chunk} are decoded during that pass, so their
   errors (-32602) come in member order too. Optional members: C{pipeStdin} (defaults to false but
   rejects null), C{arg0}, C{afterSeq}, C{maxBytes} (absent: no limit), C{waitMs} (absent: 0),
   C{recursive} and C{force} of C{fs/createDirectory} / C{fs/remove}; C{fs/copy}'s C{recursive} is
   required.
 - Then the handshake (§2.1 texts), then each method's own checks in the real order:
   C{process/start}: cwd host (-32602 C{cwd URI `<uri>` is not valid on this exec-server host: '<uri>'
   is invalid on 'linux'}), empty argv, existing id, the cwd on disk and the program (-32603 with the
   OS text); C{process/write}: empty C{writeId}, unknown id (C{unknownProcess}), neither C{pipeStdin}
   nor C{tty} (C{stdinClosed}), a C{writeId} already used I{on that process} (C{accepted}, nothing
   written), a terminated process (-32603 C{failed to write to process stdin}).
 - Base64 (C{chunk}, C{dataBase64}) is decoded like Rust's C{base64} 0.22 standard engine with
   canonical padding, with its error texts (C{Invalid symbol 33, offset 0.}, C{Invalid padding},
   C{Invalid input length: 1}, C{Invalid last symbol 108, offset 2.}); C{fs/writeFile} prefixes
   them with C{fs/writeFile requires valid base64 dataBase64: } and answers -32600.
 - Path URIs as the C{url} crate and codex parse them: scheme in any case, leading and trailing
   spaces and controls stripped, tabs and line breaks removed, C{\\} read as C{/}, dot segments
   resolved (C{%2e} too), percent-escapes decoded; host empty or C{localhost}. A drive-letter path
   (first segment C{X:}), another host or a NUL byte is C{'<uri>' is invalid on 'linux'} with the
   URI re-serialised (scheme and host lower-cased, drive letter upper-cased, C{file://host/}).
 - Process output: one counter per process from 1 shared by chunks, the exit event and the close
   event (the real exit event takes its number when the exec-server sees the exit, which may be
   before output still in the pipe: C{echo hi} is sometimes exit 1, chunk 2, close 3; a fake program
   gets that order with C{exit(0, close=False)}, C{output(…)}, C{close_output()}); reads return
   the retained chunks above C{afterSeq} up to C{maxBytes} (always at least one), C{nextSeq} =
   last returned + 1, else the next number; a read waits (on the clock) only while no event above
   C{afterSeq} exists and the process is not closed; about 1 MiB
   (L{RETAINED_BYTES}) is retained per process, oldest chunks dropped first. C{tty} output is one
   C{pty} stream with C{\\n} written as C{\\r\\n}, and the terminal echoes what is written to it.
   C{process/terminate} kills a running process at once: exit code 137, closed, C{running: true}.
 - Notifications C{process/output}, C{process/exited} and C{process/closed} are sent as the events
   happen (L{FakeExecServer.send_notifications} turns them off).
 - Filesystem methods act on the local filesystem (the fake stands in for an exec-server on this
   machine; L{FakeExecServer} C{root} re-roots every path under a directory) with the real
   semantics: C{fs/readFile} follows symlinks and refuses non-regular files (-32600 ``path `<p>` is
   not a file``); C{fs/writeFile} truncates in place; C{fs/createDirectory} behaves like Rust's
   C{create_dir_all} / C{create_dir}; C{fs/remove} never follows a symlink and, with C{force}, only
   ignores a missing path; C{fs/copy} copies a symlink as a symlink, a file with the source's mode
   (truncating the destination first: a file copied onto itself becomes empty, as with the real
   one), a directory merged into the destination with parents created, skipping entries that are
   neither files, directories nor symlinks (-32600 C{fs/copy only supports regular files,
   directories, and symlinks} for such a source itself, C{fs/copy cannot copy a directory to itself
   or one of its descendants}); C{fs/getMetadata} with C{createdAtMs} 0 (the musl binary reports no
   birth time); C{fs/readDirectory} in directory order, skipping entries whose target is missing.
   A missing path is -32004, every other OS error -32603 with the musl C{strerror} text and
   C{(os error N)}.

How processes run. The fake never starts a real process: the conformance suite and the tools'
tests must be deterministic under a fake clock, and they need output shapes (skipped sequence
numbers, a C{failure} text, a process that exits while its output stays open) that real programs
cannot produce on demand. A process is played by a I{program}, a callable given the
L{FakeProcess} when it starts; it may emit output, sleep on the clock (L{FakeProcess.sleep}), read
what is written to it (L{FakeProcess.on_stdin}) and exit. Programs are chosen by C{argv}: the most
recent L{FakeExecServer.add_program} / L{FakeExecServer.script_process} /
L{FakeExecServer.refuse_start} whose match accepts the argv, else a built-in chosen by the base name
of C{argv[0]}: C{echo} (C{-n} understood), C{cat} without arguments (echoes its stdin, never exits),
C{sleep N}, C{true}, C{false}. Any other program is -32603 C{No such file or directory (os error 2)}
like a program missing from C{PATH}; C{env} and C{PATH} are recorded but not used for lookup. A
program starts right after the C{process/start} reply was sent, so its first output follows it.

Decisions where the real exec-server could not be measured or the brief is silent:
 - An array as params other than C{[]} is answered C{invalid type: sequence, expected struct
   <Name>} (serde would read it positionally); a duplicate member is not reported (the last wins).
 - JSON syntax errors other than the three kinds above are reported with the Python parser's
   reason and serde's position format.
 - C{process/terminate} of a process that exited but whose output is still open answers
   C{running: false} and leaves it open.
 - L{FakeExecServer.close} (stdin EOF) kills every running process, drops the message in progress
   and everything queued, and calls L{FakeExecServer.on_exit}; later messages are ignored.
 - Test controls: L{FakeExecServer.fail_next} (answer the next requests of a method with an error,
   before any check) and L{FakeExecServer.drop_next} (never answer them, without blocking the
   queue).
 - A C{process/read} with C{waitMs} above L{FakeExecServer.wait_limit_ms} (250 unless lifted) is
   answered like any other but logged as an error, so a trial test whose code sends one fails:
   that is how the unit suite proves that no envtools call waits longer (§10 criterion 2).
 - C{initialize}'s C{environmentInfo} has the real keys with this machine's values, an empty
   C{prependPathDirs} and a dummy C{providerId}.

Only tests import this module.
"""

from __future__ import annotations

import base64
import binascii
import errno
import inspect
import json
import os
import re
import stat
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.envtools.interfaces import DEFAULT_CALL_TIMEOUT, CallError, IExecServerClient

_log = Logger()

#: JSON-RPC error codes of the exec-server (§2.2).
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_FOUND: Final = -32004

#: Output kept per process before the oldest chunks are dropped (§2.4).
RETAINED_BYTES: Final = 1 << 20
#: The largest JSON-RPC message the fake client sends (§4.3).
MAX_MESSAGE_BYTES: Final = 64 << 20
#: What a process killed by C{process/terminate} reports (128 + SIGKILL).
KILLED_EXIT_CODE: Final = 137

PARSE_ERROR_PREFIX: Final = "failed to parse JSON-RPC message from exec-server stdio: "
EXEC_BEFORE_INITIALIZE: Final = "client must call initialize before using exec methods"
FS_BEFORE_INITIALIZE: Final = "client must call initialize before using filesystem methods"
EXEC_BEFORE_INITIALIZED: Final = "client must send initialized before using exec methods"
FS_BEFORE_INITIALIZED: Final = "client must send initialized before using filesystem methods"
INITIALIZE_TWICE: Final = "initialize may only be sent once per connection"
STDIN_WRITE_FAILED: Final = "failed to write to process stdin"
NO_SUCH_FILE: Final = "No such file or directory (os error 2)"

#: C{initialize}'s C{environmentInfo.capabilities}, as the pinned exec-server announces them.
CAPABILITIES: Final[Mapping[str, bool]] = {
    "networkProxyLaunch": True,
    "networkProxyReviewDomains": True,
    "credentialMasking": True,
    "credentialMaskingCustomProviders": True,
    "capabilityDiscoverySandbox": True,
    "fsWatchMissing": True,
    "capabilityDiscoveryV2": True,
    "environmentConfigRead": True,
    "httpHeaderEnvVars": True,
    "sandboxedFileStreaming": True,
    "fileWriteStreaming": True,
    "shellSnapshotV2": True,
    "windowsMxc": False,
    "linuxRootWritePreservesDevices": True,
    "linuxApprovedRootWritePreservesRestrictions": True,
}

#: musl's C{strerror} where it differs from glibc's (the pinned binary is linked with musl).
_MUSL_STRERROR: Final[Mapping[int, str]] = {
    errno.ELOOP: "Symbolic link loop",
    errno.ENAMETOOLONG: "Filename too long",
    errno.EXDEV: "Cross-device link",
    errno.EBUSY: "Resource busy",
    errno.EAGAIN: "Resource temporarily unavailable",
    errno.EMFILE: "No file descriptors available",
}

JSONValue: TypeAlias = Any
#: A program plays one process; it may return a coroutine or a Deferred.
Program: TypeAlias = Callable[["FakeProcess"], object]
#: Which argv a program is for: the exact argv, or a predicate.
ArgvMatch: TypeAlias = "Sequence[str] | Callable[[Sequence[str]], bool]"


def _compact(value: JSONValue) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _RpcError(Exception):
    """
    A JSON-RPC error answer.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def os_error_text(number: int) -> str:
    """
    The text Rust gives an OS error on the pinned (musl) binary: C{<strerror> (os error <n>)}.
    """
    return f"{_MUSL_STRERROR.get(number, os.strerror(number))} (os error {number})"


def _os_error(error: OSError) -> _RpcError:
    number = error.errno if error.errno is not None else errno.EIO
    code = NOT_FOUND if number == errno.ENOENT else INTERNAL_ERROR
    return _RpcError(code, os_error_text(number))


# -------------------------------------------------------------------------------------------------
# base64 as Rust's base64 0.22 STANDARD engine decodes it (canonical padding required)

_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE: Final[Mapping[int, int]] = {byte: index for index, byte in enumerate(_B64_ALPHABET)}
_PAD: Final = ord("=")


class Base64Error(ValueError):
    """
    Input the exec-server's base64 decoder refuses; C{str()} is the decoder's text.
    """


def decode_base64(text: str) -> bytes:
    """
    Decode C{text} exactly as the pinned exec-server does, or raise L{Base64Error} with its text.
    """
    data = text.encode("utf-8")
    length = len(data)
    remainder = length % 4
    # A single trailing symbol that is invalid (not padding) is reported before anything else.
    if remainder == 1 and data[-1] != _PAD and data[-1] not in _B64_VALUE:
        raise Base64Error(f"Invalid symbol {data[-1]}, offset {length - 1}.")
    # The last quad (or partial quad) may hold padding: everything before it must be alphabet.
    body = length - remainder - (4 if remainder == 0 else 0)
    body = max(body, 0)
    for offset in range(body):
        if data[offset] not in _B64_VALUE:
            raise Base64Error(f"Invalid symbol {data[offset]}, offset {offset}.")
    morsels: list[int] = []
    padding = 0
    first_padding = 0
    last_symbol = 0
    for index, byte in enumerate(data[body:]):
        if byte == _PAD:
            if index < 2:
                raise Base64Error(f"Invalid symbol {byte}, offset {body + index}.")
            if padding == 0:
                first_padding = index
            padding += 1
            continue
        if padding:
            raise Base64Error(f"Invalid symbol {_PAD}, offset {body + first_padding}.")
        if byte not in _B64_VALUE:
            raise Base64Error(f"Invalid symbol {byte}, offset {body + index}.")
        last_symbol = byte
        morsels.append(_B64_VALUE[byte])
    if length and len(morsels) < 2:
        raise Base64Error(f"Invalid input length: {body + len(morsels)}")
    if (padding + len(morsels)) % 4:
        raise Base64Error("Invalid padding")
    if morsels:
        value = 0
        for shift, morsel in zip((26, 20, 14, 8), morsels, strict=False):
            value |= morsel << shift
        kept = len(morsels) * 6 // 8
        if value & (0xFFFFFFFF >> (kept * 8)):
            raise Base64Error(f"Invalid last symbol {last_symbol}, offset {body + len(morsels) - 1}.")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as e:  # pragma: no cover - the checks above are stricter
        raise Base64Error(str(e)) from None


# -------------------------------------------------------------------------------------------------
# Path URIs as codex parses them (url crate + codex's host checks)

_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")
_SPECIAL_SCHEMES: Final = frozenset({"http", "https", "ws", "wss", "ftp"})
_DRIVE: Final = re.compile(r"[A-Za-z][:|]")
_DRIVE_SEGMENT: Final = re.compile(r"[A-Za-z]:")
_HOST_FORBIDDEN: Final = frozenset("<>@[]^|:")
# The url crate's path percent-encode set (besides controls, space and non-ASCII).
_PATH_ESCAPED: Final = frozenset(b'"#<>?`{}')
_SINGLE_DOT: Final = frozenset({".", "%2e"})
_DOUBLE_DOT: Final = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


class UriError(ValueError):
    """
    A path URI the exec-server refuses while reading params (-32602); C{str()} is its text.
    """


@dataclass(frozen=True)
class PathUri:
    """
    A parsed C{file:} URI.

    @ivar serialized: the URI as codex writes it in messages.
    @ivar host: the host, empty for none or C{localhost}.
    @ivar path: the decoded path bytes.
    """

    serialized: str
    host: str
    path: bytes

    def local_path(self) -> str:
        """
        The path on this (Linux) host.

        @raise ValueError: C{'<uri>' is invalid on 'linux'}.
        """
        first = self.path.split(b"/")[1] if self.path.startswith(b"/") else b""
        if self.host or b"\0" in self.path or _DRIVE_SEGMENT.fullmatch(first.decode("latin-1")):
            raise ValueError(f"'{self.serialized}' is invalid on 'linux'")
        return os.fsdecode(self.path)


def _percent_decode(text: str) -> bytes:
    raw = text.encode("utf-8")
    out = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == ord("%") and _is_hex(raw[index + 1 : index + 3]):
            out.append(int(raw[index + 1 : index + 3], 16))
            index += 3
            continue
        out.append(byte)
        index += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(b) in "0123456789abcdefABCDEF" for b in pair)


def _escape_segment(segment: str) -> str:
    out: list[str] = []
    for byte in segment.encode("utf-8"):
        if byte <= 0x20 or byte >= 0x7F or byte in _PATH_ESCAPED:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def parse_path_uri(text: str) -> PathUri:
    """
    Parse a path URI as the exec-server does while reading params.

    @raise UriError: with the exec-server's -32602 text.
    """
    cleaned = text.strip("".join(chr(c) for c in range(0x21)))
    cleaned = cleaned.replace("\t", "").replace("\n", "").replace("\r", "")
    match = _SCHEME.match(cleaned)
    if match is None:
        raise UriError("invalid URI: relative URL without a base")
    scheme = match.group(1).lower()
    rest = cleaned[match.end() :]
    if scheme != "file":
        if scheme in _SPECIAL_SCHEMES:
            authority = rest.replace("\\", "/").lstrip("/")
            host = re.split(r"[/?#]", authority, maxsplit=1)[0]
            if not host:
                raise UriError("invalid URI: empty host")
        raise UriError(f"unsupported path URI scheme `{scheme}`")
    rest = rest.replace("\\", "/")
    host = ""
    if rest.startswith("//"):
        authority_end = len(rest)
        for delimiter in "/?#":
            found = rest.find(delimiter, 2)
            if found >= 0:
                authority_end = min(authority_end, found)
        authority = rest[2:authority_end]
        if _DRIVE.fullmatch(authority):
            # file://C:/x: a drive letter, not a host.
            rest = "/" + rest[2:]
        else:
            rest = rest[authority_end:]
            host = _parse_file_host(authority)
    cut = len(rest)
    for delimiter in "?#":
        found = rest.find(delimiter)
        if found >= 0:
            cut = min(cut, found)
    if cut < len(rest):
        if rest[cut] == "?":
            raise UriError("query parameters are not allowed in path URIs")
        raise UriError("fragments are not allowed in path URIs")
    path = _normalize_path(rest[:cut])
    return PathUri(serialized=f"file://{host}{path}", host=host, path=_percent_decode(path))


def _normalize_path(raw_path: str) -> str:
    # Dot segments resolved (also percent-encoded ones), other segments escaped like the url crate.
    segments: list[str] = []
    pieces = raw_path.split("/")
    if pieces and pieces[0] == "":
        pieces = pieces[1:]
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        lowered = piece.lower()
        if lowered in _DOUBLE_DOT:
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif lowered in _SINGLE_DOT:
            if last:
                segments.append("")
        else:
            segments.append(_escape_segment(piece))
    if not segments:
        segments = [""]
    if _DRIVE_SEGMENT.fullmatch(segments[0]):
        segments[0] = segments[0].upper()
    return "/" + "/".join(segments)


def _parse_file_host(authority: str) -> str:
    if not authority:
        return ""
    if authority.startswith("[") and authority.endswith("]"):
        return authority.lower()
    try:
        host = _percent_decode(authority).decode("utf-8")
    except UnicodeDecodeError:
        raise UriError("invalid URI: invalid international domain name") from None
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "%" for c in host):
        raise UriError("invalid URI: invalid international domain name")
    if any(c in _HOST_FORBIDDEN for c in host):
        raise UriError("invalid URI: invalid domain character")
    host = host.lower()
    return "" if host == "localhost" else host


# -------------------------------------------------------------------------------------------------
# Params, read the way serde reads them


def _unexpected(value: JSONValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return f"string {_rust_debug(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _rust_debug(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    out: list[str] = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _type_error(value: JSONValue, expected: str) -> _RpcError:
    return _RpcError(INVALID_PARAMS, f"invalid type: {_unexpected(value)}, expected {expected}")


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # string, bool, u64, usize, argv, env, uri, base64
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class _Struct:
    name: str
    elements: int
    fields: tuple[_Field, ...]


def _read_value(field: _Field, value: JSONValue) -> JSONValue:
    if value is None and field.nullable:
        return None
    kind = field.kind
    if kind in {"string", "uri", "base64"}:
        if not isinstance(value, str):
            raise _type_error(value, "a string")
        if kind == "uri":
            try:
                return parse_path_uri(value)
            except UriError as e:
                raise _RpcError(INVALID_PARAMS, str(e)) from None
        if kind == "base64":
            try:
                return decode_base64(value)
            except Base64Error as e:
                raise _RpcError(INVALID_PARAMS, str(e)) from None
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, "a boolean")
        return value
    if kind in {"u64", "usize"}:
        if isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < 1 << 64
        ):
            raise _RpcError(INVALID_PARAMS, "invalid number")
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(value, kind)
        return value
    if kind == "argv":
        if not isinstance(value, list):
            raise _type_error(value, "a sequence")
        for item in value:
            if not isinstance(item, str):
                raise _type_error(item, "a string")
        return list(value)
    if kind == "env":
        if not isinstance(value, dict):
            raise _type_error(value, "a map")
        for item in value.values():
            if not isinstance(item, str):
                raise _type_error(item, "a string")
        return dict(value)
    raise AssertionError(kind)  # pragma: no cover


def _read_params(struct: _Struct, params: JSONValue) -> dict[str, JSONValue]:
    if isinstance(params, list):
        if not params:
            plural = "element" if struct.elements == 1 else "elements"
            raise _RpcError(
                INVALID_PARAMS,
                f"invalid length 0, expected struct {struct.name} with {struct.elements} {plural}",
            )
        raise _type_error(params, f"struct {struct.name}")
    if not isinstance(params, dict):
        raise _type_error(params, f"struct {struct.name}")
    by_name = {field.name: field for field in struct.fields}
    values: dict[str, JSONValue] = {}
    for name, value in params.items():
        field = by_name.get(name)
        if field is not None:
            values[name] = _read_value(field, value)
    for field in struct.fields:
        if field.required and field.name not in values:
            raise _RpcError(INVALID_PARAMS, f"missing field `{field.name}`")
    return values


_STRUCTS: Final[Mapping[str, _Struct]] = {
    "initialize": _Struct("InitializeParams", 2, (_Field("clientName", "string"),)),
    "process/start": _Struct(
        "WireExecParams",
        14,
        (
            _Field("processId", "string"),
            _Field("argv", "argv"),
            _Field("cwd", "uri"),
            _Field("env", "env"),
            _Field("tty", "bool"),
            _Field("pipeStdin", "bool", required=False),
            _Field("arg0", "string", required=False, nullable=True),
        ),
    ),
    "process/read": _Struct(
        "ReadParams",
        4,
        (
            _Field("processId", "string"),
            _Field("afterSeq", "u64", required=False, nullable=True),
            _Field("maxBytes", "usize", required=False, nullable=True),
            _Field("waitMs", "u64", required=False, nullable=True),
        ),
    ),
    "process/write": _Struct(
        "WriteParams",
        3,
        (
            _Field("processId", "string"),
            _Field("chunk", "base64"),
            _Field("writeId", "string"),
        ),
    ),
    "process/terminate": _Struct("TerminateParams", 1, (_Field("processId", "string"),)),
    "fs/readFile": _Struct("WireFsReadFileParams", 3, (_Field("path", "uri"),)),
    "fs/writeFile": _Struct(
        "WireFsWriteFileParams", 4, (_Field("path", "uri"), _Field("dataBase64", "string"))
    ),
    "fs/createDirectory": _Struct(
        "WireFsCreateDirectoryParams",
        4,
        (_Field("path", "uri"), _Field("recursive", "bool", required=False, nullable=True)),
    ),
    "fs/remove": _Struct(
        "WireFsRemoveParams",
        5,
        (
            _Field("path", "uri"),
            _Field("recursive", "bool", required=False, nullable=True),
            _Field("force", "bool", required=False, nullable=True),
        ),
    ),
    "fs/copy": _Struct(
        "WireFsCopyParams",
        4,
        (
            _Field("sourcePath", "uri"),
            _Field("destinationPath", "uri"),
            _Field("recursive", "bool"),
        ),
    ),
    "fs/getMetadata": _Struct("WireFsGetMetadataParams", 3, (_Field("path", "uri"),)),
    "fs/readDirectory": _Struct("WireFsReadDirectoryParams", 2, (_Field("path", "uri"),)),
}


# -------------------------------------------------------------------------------------------------
# JSON syntax errors in serde_json's words


def _syntax_error(line: bytes, error: json.JSONDecodeError | UnicodeDecodeError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"invalid unicode code point at line 1 column {error.start + 1}"
    doc = error.doc
    # serde counts bytes; the position Python reports is in characters.
    position = len(doc[: error.pos].encode("utf-8"))
    if error.msg == "Extra data":
        return f"trailing characters at line 1 column {position + 1}"
    stripped_end = len(line.rstrip(b" \t\r"))
    if position >= stripped_end or error.msg == "Unterminated string starting at":
        return f"EOF while parsing {_open_construct(line)} at line 1 column {stripped_end}"
    column = position + 1
    if error.msg == "Expecting value":
        literal = _partial_literal(doc[error.pos :].rstrip(" \t\r"))
        if literal == len(doc[error.pos :].rstrip(" \t\r")):
            return f"EOF while parsing a value at line 1 column {stripped_end}"
        if literal:
            return f"expected ident at line 1 column {column + literal}"
        return f"expected value at line 1 column {column}"
    if error.msg == "Expecting ',' delimiter":
        closer = "}" if _innermost(line[:position]) == ord("{") else "]"
        return f"expected `,` or `{closer}` at line 1 column {column}"
    known = {
        "Expecting ':' delimiter": "expected `:`",
        "Expecting property name enclosed in double quotes": "key must be a string",
        "Invalid control character at": (
            "control character (\\u0000-\\u001F) found while parsing a string"
        ),
        "Invalid \\escape": "invalid escape",
    }
    reason = known.get(error.msg, error.msg[0].lower() + error.msg[1:])
    if error.msg == "Invalid \\escape":
        # serde points at the character after the backslash.
        column += 1
    return f"{reason} at line 1 column {column}"


def _partial_literal(text: str) -> int:
    # How many characters of C{text} follow one of JSON's literals (0 when none starts it).
    for literal in ("null", "true", "false"):
        if text[:1] == literal[0]:
            matched = 0
            while matched < min(len(text), len(literal)) and text[matched] == literal[matched]:
                matched += 1
            return matched
    return 0


def _innermost(prefix: bytes) -> int | None:
    stack: list[int] = []
    in_string = False
    escaped = False
    for byte in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            stack.append(byte)
        elif byte in b"]}" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _open_construct(line: bytes) -> str:
    stack: list[int] = []
    in_string = False
    escaped = False
    last = 0
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
            continue
        if byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            stack.append(byte)
        elif byte in b"]}" and stack:
            stack.pop()
        if byte not in b" \t\r":
            last = byte
    if in_string:
        return "a string"
    if not stack or last in b":,[":
        return "a value"
    return "an object" if stack[-1] == ord("{") else "a list"


def _no_constants(name: str) -> JSONValue:
    raise json.JSONDecodeError("Expecting value", name, 0)


# -------------------------------------------------------------------------------------------------
# Processes


@dataclass
class _Chunk:
    seq: int
    stream: str
    data: bytes


@dataclass
class _Waiter:
    after: int
    max_bytes: int | None
    answer: Callable[[], None]


class FakeProcess:
    """
    One process of a L{FakeExecServer}, driven by its program (or directly by a test).

    @ivar process_id: the id it was started with.
    @ivar argv: its argv.
    @ivar cwd: its working directory (a plain path, as the URI named it).
    @ivar env: its whole environment, as given.
    @ivar tty: whether it runs on a (simulated) terminal.
    @ivar pipe_stdin: whether its stdin is a pipe the client may write.
    @ivar arg0: the argv[0] it sees, when given.
    @ivar stdin: every byte written to it, in order.
    @ivar on_stdin: told each accepted write (the program's stdin), when set.
    @ivar exited: whether it has exited; C{exit_code} then holds its status.
    @ivar closed: whether its output reached end of file after the exit.
    @ivar failure: the C{failure} text reads report, if any.
    @ivar sandbox_denied: what reads report as C{sandboxDenied}.
    @ivar terminated: whether C{process/terminate} killed it.
    """

    def __init__(
        self,
        server: FakeExecServer,
        process_id: str,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str],
        tty: bool,
        pipe_stdin: bool,
        arg0: str | None,
    ) -> None:
        self.process_id = process_id
        self.argv = tuple(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.tty = tty
        self.pipe_stdin = pipe_stdin
        self.arg0 = arg0
        self.stdin = bytearray()
        self.on_stdin: Callable[[bytes], None] | None = None
        self.exited = False
        self.exit_code: int | None = None
        self.closed = False
        self.failure: str | None = None
        self.sandbox_denied = False
        self.terminated = False
        self._server = server
        self._counter = 0
        self._chunks: deque[_Chunk] = deque()
        self._retained = 0
        self._output_open = True
        self._write_ids: set[str] = set()
        self._sleeps: set[Deferred[None]] = set()
        self._waiters: list[_Waiter] = []

    @property
    def running(self) -> bool:
        """
        Whether it has not exited yet.
        """
        return not self.exited

    @property
    def next_seq(self) -> int:
        """
        The number the next event will take.
        """
        return self._counter + 1

    def output(self, data: bytes, stream: str = "stdout") -> None:
        """
        Emit one output chunk (the next number). On a terminal, C{stdout} and C{stderr} become one
        C{pty} stream and C{\\n} is written as C{\\r\\n}.

        @raise RuntimeError: the output was already closed.
        """
        if not self._output_open:
            raise RuntimeError(f"process {self.process_id!r}: output after its end")
        if self.tty:
            stream = "pty"
            data = data.replace(b"\n", b"\r\n")
        seq = self._next()
        self._chunks.append(_Chunk(seq, stream, bytes(data)))
        self._retained += len(data)
        # Retention: drop the oldest chunks, never the newest one.
        while self._retained > self._server.retained_bytes and len(self._chunks) > 1:
            self._retained -= len(self._chunks.popleft().data)
        self._server._notify(
            "process/output",
            {
                "processId": self.process_id,
                "seq": seq,
                "stream": stream,
                "chunk": base64.b64encode(data).decode("ascii"),
            },
        )
        self._wake()

    def discard(self, count: int = 1) -> None:
        """
        Let C{count} numbers pass without a chunk, as when the exec-server dropped unread output.
        """
        self._counter += count

    def exit(self, code: int = 0, close: bool = True) -> None:
        """
        Exit with status C{code} (the exit event); with C{close}, the output ends too (the close
        event). With C{close} false the output stays open (a grandchild holds it) until
        L{close_output}. Nothing happens when it has already exited.
        """
        if self.exited:
            return
        self.exited = True
        self.exit_code = code
        for sleeping in list(self._sleeps):
            sleeping.cancel()
        seq = self._next()
        self._server._notify(
            "process/exited",
            {
                "processId": self.process_id,
                "seq": seq,
                "exitCode": code,
                "sandboxDenied": self.sandbox_denied,
            },
        )
        self._wake()
        if close or not self._output_open:
            self.close_output()

    def close_output(self) -> None:
        """
        End the output; once the process has exited this is the close event.
        """
        self._output_open = False
        if self.exited and not self.closed:
            self._close_event()

    def set_failure(self, text: str) -> None:
        """
        Make reads report C{failure} C{text}.
        """
        self.failure = text

    def sleep(self, seconds: float) -> Deferred[None]:
        """
        Fire after C{seconds} on the server's clock; cancelled (C{CancelledError}) if the process
        is killed first.
        """
        sleeping: Deferred[None] = Deferred()
        call = self._server.clock.callLater(seconds, lambda: sleeping.callback(None))

        def forget(result: object) -> object:
            self._sleeps.discard(sleeping)
            if call.active():
                call.cancel()
            return result

        sleeping.addBoth(forget)
        self._sleeps.add(sleeping)
        return sleeping

    # The server's side

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _close_event(self) -> None:
        self.closed = True
        seq = self._next()
        self._server._notify("process/closed", {"processId": self.process_id, "seq": seq})
        self._wake()

    def _kill(self) -> None:
        self.terminated = True
        self.on_stdin = None
        self.exit(KILLED_EXIT_CODE, close=True)

    def _read(self, after: int, max_bytes: int | None) -> dict[str, JSONValue]:
        chunks: list[_Chunk] = []
        total = 0
        for chunk in self._chunks:
            if chunk.seq <= after:
                continue
            if chunks and max_bytes is not None and total + len(chunk.data) > max_bytes:
                break
            chunks.append(chunk)
            total += len(chunk.data)
        return {
            "chunks": [
                {
                    "seq": chunk.seq,
                    "stream": chunk.stream,
                    "chunk": base64.b64encode(chunk.data).decode("ascii"),
                }
                for chunk in chunks
            ],
            "nextSeq": chunks[-1].seq + 1 if chunks else self._counter + 1,
            "exited": self.exited,
            "exitCode": self.exit_code,
            "closed": self.closed,
            "failure": self.failure,
            "sandboxDenied": self.sandbox_denied,
        }

    def _ready(self, after: int) -> bool:
        return self.closed or self._counter > after

    def _wait(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)

    def _unwait(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if self._ready(waiter.after):
                self._waiters.remove(waiter)
                waiter.answer()

    def _write(self, data: bytes) -> None:
        self.stdin += data
        if self.tty and data and self._output_open:
            # The terminal echoes what is typed.
            self.output(data, "pty")
        if self.on_stdin is not None and not self.exited:
            self.on_stdin(data)


@dataclass(frozen=True)
class _ProgramRule:
    match: ArgvMatch
    program: Program | None
    refusal: str | None

    def accepts(self, argv: Sequence[str]) -> bool:
        if callable(self.match):
            return bool(self.match(argv))
        return tuple(self.match) == tuple(argv)


def _echo(process: FakeProcess) -> None:
    args = list(process.argv[1:])
    newline = True
    if args and args[0] == "-n":
        newline = False
        args = args[1:]
    text = " ".join(args) + ("\n" if newline else "")
    if text:
        process.output(text.encode("utf-8"))
    process.exit(0)


def _cat(process: FakeProcess) -> None:
    if len(process.argv) > 1:
        process.output(b"cat: files are not simulated\n", "stderr")
        process.exit(1)
        return
    process.on_stdin = lambda data: process.output(data) if data else None


async def _sleep(process: FakeProcess) -> None:
    try:
        seconds = float(process.argv[1]) if len(process.argv) > 1 else 0.0
    except ValueError:
        process.output(b"sleep: invalid time interval\n", "stderr")
        process.exit(1)
        return
    await process.sleep(seconds)
    process.exit(0)


#: The built-in programs, by the base name of argv[0].
BUILTIN_PROGRAMS: Final[Mapping[str, Program]] = {
    "echo": _echo,
    "cat": _cat,
    "sleep": _sleep,
    "true": lambda process: process.exit(0),
    "false": lambda process: process.exit(1),
}


# -------------------------------------------------------------------------------------------------
# The server


class FakeExecServer:
    """
    One fake exec-server connection (one bridge stream's exec-server).

    @ivar clock: the time of waits and program sleeps.
    @ivar on_reply: told every message the exec-server writes (replies and notifications), compact
        JSON without a line end; settable at any time. By default they are appended to L{sent}.
    @ivar on_exit: told once when the exec-server exits (L{close} or a fatal message).
    @ivar sent: the messages written while L{on_reply} is the default.
    @ivar requests: every request received (parsed), in order, also those answered with an error.
    @ivar notifications: every notification received (parsed), in order.
    @ivar processes: the processes of this connection by id (ended ones stay).
    @ivar send_notifications: whether C{process/*} notifications are sent.
    @ivar retained_bytes: output kept per process.
    @ivar ended: whether the exec-server has exited.
    @ivar session_id: the C{sessionId} C{initialize} answers.
    @ivar wait_limit_ms: the largest C{waitMs} a client may send (envtools never sends more than 250,
        C{envtools.md} §2.1, §10 criterion 2); a read above it is answered normally but logged as
        an error, which fails the trial test that sent it. C{None} lifts the check (the
        conformance suite sends 1000 on purpose).
    @ivar wait_violations: the C{waitMs} values sent above L{wait_limit_ms}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_reply: Callable[[bytes], None] | None = None,
        root: str | None = None,
    ) -> None:
        """
        @param root: when given, every path (fs methods and cwd) is taken relative to this
            directory, so tests can use paths like C{/work/a.txt}; symlink targets are not re-rooted.
        """
        self.clock = clock
        self.sent: list[bytes] = []
        self.on_reply: Callable[[bytes], None] = on_reply if on_reply is not None else self.sent.append
        self.on_exit: Callable[[], None] | None = None
        self.root = root
        self.requests: list[dict[str, JSONValue]] = []
        self.notifications: list[dict[str, JSONValue]] = []
        self.processes: dict[str, FakeProcess] = {}
        self.send_notifications = True
        self.retained_bytes = RETAINED_BYTES
        self.wait_limit_ms: int | None = 250
        self.wait_violations: list[int] = []
        self.ended = False
        self.session_id = str(uuid.uuid4())
        self._state = "new"  # new → initializing → ready
        self._stopped = False
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._rules: list[_ProgramRule] = []
        self._failures: dict[str, deque[tuple[int, str]]] = {}
        self._drops: dict[str, int] = {}

    # -- scripting ---------------------------------------------------------------------------------

    def add_program(self, match: ArgvMatch, program: Program) -> None:
        """
        Run C{program} for the processes whose argv C{match}es (an exact argv or a predicate); the
        latest matching registration wins over earlier ones and over the built-ins.
        """
        self._rules.append(_ProgramRule(match, program, None))

    def refuse_start(self, match: ArgvMatch, message: str = NO_SUCH_FILE) -> None:
        """
        Answer C{process/start} of a matching argv with -32603 C{message} (a missing or
        non-executable program: C{Permission denied (os error 13)}, C{Exec format error (os error
        8)}, …).
        """
        self._rules.append(_ProgramRule(match, None, message))

    def script_process(
        self,
        argv: ArgvMatch,
        outputs: Sequence[tuple[str, bytes]] = (),
        exit_code: int | None = 0,
        *,
        interval: float = 0.0,
        failure: str | None = None,
        close: bool = True,
    ) -> None:
        """
        Register a program that writes C{outputs} (C{(stream, bytes)} each, one chunk each) with
        C{interval} seconds between consecutive chunks, then sets C{failure} (if any) and exits with
        C{exit_code} right after the last chunk; C{exit_code} C{None} keeps it running (silent)
        until terminated; C{close} false exits with the output left open.
        """
        items = list(outputs)

        async def program(process: FakeProcess) -> None:
            for index, (stream, data) in enumerate(items):
                if index and interval:
                    await process.sleep(interval)
                process.output(data, stream)
            if failure is not None:
                process.set_failure(failure)
            if exit_code is not None:
                process.exit(exit_code, close=close)

        self.add_program(argv, program)

    def fail_next(self, method: str, code: int, message: str, count: int = 1) -> None:
        """
        Answer the next C{count} requests of C{method} with error C{code} C{message}, in their turn
        and before any check of theirs.
        """
        queue = self._failures.setdefault(method, deque())
        queue.extend([(code, message)] * count)

    def drop_next(self, method: str, count: int = 1) -> None:
        """
        Never answer the next C{count} requests of C{method} (they do not hold up the queue).
        """
        self._drops[method] = self._drops.get(method, 0) + count

    def requests_for(self, method: str) -> list[JSONValue]:
        """
        The params of every request of C{method} received, in order.
        """
        return [r.get("params") for r in self.requests if r.get("method") == method]

    # -- the wire ----------------------------------------------------------------------------------

    def handle(self, message: bytes) -> None:
        """
        Take one message (or several lines) from the client, as the exec-server reads its stdin.
        """
        if self.ended:
            return
        if self._stopped:
            self.close()
            return
        lines = message.split(b"\n")
        if len(lines) > 1 and lines[-1] == b"":
            lines.pop()
        self._queue.extend(lines)
        self._pump()

    def close(self) -> None:
        """
        Stdin EOF: kill every running process, drop what is in progress, exit.
        """
        if self.ended:
            return
        self.ended = True
        self._queue.clear()
        for process in self.processes.values():
            process._waiters.clear()
            if process.running:
                process._kill()
        if self.on_exit is not None:
            self.on_exit()

    def _send(self, message: JSONValue) -> None:
        if not (self.ended or self._stopped):
            self.on_reply(_compact(message))

    def _notify(self, method: str, params: JSONValue) -> None:
        if self.send_notifications:
            self._send({"method": method, "params": params})

    def _pump(self) -> None:
        while self._queue and not self._busy and not self.ended:
            line = self._queue.popleft()
            if self._stopped:
                self._queue.clear()
            elif line.strip(b" \t\r"):
                self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
            message = json.loads(text, parse_constant=_no_constants)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._parse_error(_syntax_error(line, e))
            return
        if not isinstance(message, dict):
            self._parse_error("expected a JSON-RPC object")
            return
        if "method" in message:
            method = message["method"]
            if not isinstance(method, str):
                self._parse_error(f"invalid type: {_unexpected(method)}, expected a string")
                return
            if "id" not in message:
                self._notification(message)
                return
            request_id = message["id"]
            if isinstance(request_id, bool) or not isinstance(request_id, int | str):
                self._parse_error("data did not match any variant of untagged enum RequestId")
                return
            self.requests.append(message)
            self._request(request_id, method, message.get("params"))
            return
        if "id" in message and ("result" in message or "error" in message):
            # A response to a request the exec-server never sent stops it.
            self._stopped = True
            return
        self._parse_error("missing field `error`")

    def _parse_error(self, detail: str) -> None:
        self._send(
            {"error": {"code": INVALID_REQUEST, "message": PARSE_ERROR_PREFIX + detail}, "id": -1}
        )

    def _notification(self, message: dict[str, JSONValue]) -> None:
        self.notifications.append(message)
        if message["method"] == "initialized" and self._state != "new":
            self._state = "ready"
            return
        self._stopped = True

    def _request(self, request_id: int | str, method: str, params: JSONValue) -> None:
        drops = self._drops.get(method, 0)
        if drops:
            self._drops[method] = drops - 1
            return
        failures = self._failures.get(method)
        if failures:
            code, text = failures.popleft()
            self._error(request_id, code, text)
            return
        try:
            result = self._answer(request_id, method, params)
        except _RpcError as e:
            self._error(request_id, e.code, e.message)
            return
        except Exception:  # pragma: no cover - a bug in the fake must not hang the test
            _log.failure("fake exec-server: {method} failed", method=method)
            self._error(request_id, INTERNAL_ERROR, "fake exec-server bug")
            return
        if result is not _DEFERRED:
            self._result(request_id, result)

    def _result(self, request_id: int | str, result: JSONValue) -> None:
        self._send({"id": request_id, "result": result})

    def _error(self, request_id: int | str, code: int, message: str) -> None:
        self._send({"error": {"code": code, "message": message}, "id": request_id})

    # -- methods -----------------------------------------------------------------------------------

    def _answer(self, request_id: int | str, method: str, params: JSONValue) -> JSONValue:
        struct = _STRUCTS.get(method)
        if struct is None:
            raise _RpcError(METHOD_NOT_FOUND, f"exec-server stub does not implement `{method}` yet")
        values = _read_params(struct, params)
        if method == "initialize":
            return self._initialize()
        self._check_handshake(method)
        if method == "process/start":
            return self._start(request_id, values)
        if method == "process/read":
            return self._read(request_id, values)
        if method == "process/write":
            return self._write(values)
        if method == "process/terminate":
            return self._terminate(values)
        return self._fs(method, values)

    def _check_handshake(self, method: str) -> None:
        exec_method = method.startswith("process/")
        if self._state == "new":
            text = EXEC_BEFORE_INITIALIZE if exec_method else FS_BEFORE_INITIALIZE
            raise _RpcError(INVALID_REQUEST, text)
        if self._state == "initializing":
            text = EXEC_BEFORE_INITIALIZED if exec_method else FS_BEFORE_INITIALIZED
            raise _RpcError(INVALID_REQUEST, text)

    def _initialize(self) -> JSONValue:
        if self._state != "new":
            raise _RpcError(INVALID_REQUEST, INITIALIZE_TWICE)
        self._state = "initializing"
        home = os.environ.get("HOME", "/")
        return {
            "sessionId": self.session_id,
            "environmentInfo": {
                "shell": {"name": "bash", "path": "/bin/bash"},
                "executorVersion": "0.169.0",
                "providerId": "sha256:" + "0" * 64,
                "cwd": parse_path_uri("file://" + os.getcwd()).serialized,
                "userHomeDir": parse_path_uri("file://" + home).serialized,
                "platformOs": "linux",
                "prependPathDirs": [],
                "temporaryDirectories": [],
                "tempDir": "file:///tmp",
                "capabilities": dict(CAPABILITIES),
            },
        }

    def _host(self, path: str) -> str:
        if self.root is None:
            return path
        return os.path.join(self.root, path.lstrip("/"))

    def _local(self, uri: PathUri, code: int = INVALID_REQUEST) -> str:
        try:
            return uri.local_path()
        except ValueError as e:
            raise _RpcError(code, str(e)) from None

    def _start(self, request_id: int | str, values: dict[str, JSONValue]) -> JSONValue:
        process_id: str = values["processId"]
        argv: list[str] = values["argv"]
        cwd_uri: PathUri = values["cwd"]
        try:
            cwd = cwd_uri.local_path()
        except ValueError as e:
            if b"\0" in cwd_uri.path and not cwd_uri.host:
                raise _RpcError(INVALID_PARAMS, str(e)) from None
            raise _RpcError(
                INVALID_PARAMS,
                f"cwd URI `{cwd_uri.serialized}` is not valid on this exec-server host: {e}",
            ) from None
        if not argv:
            raise _RpcError(INVALID_PARAMS, "argv must not be empty")
        if process_id in self.processes:
            raise _RpcError(INVALID_REQUEST, f"process {process_id} already exists")
        try:
            info = os.stat(self._host(cwd))
        except OSError as e:
            raise _RpcError(INTERNAL_ERROR, os_error_text(e.errno or errno.EIO)) from None
        if not stat.S_ISDIR(info.st_mode):
            raise _RpcError(INTERNAL_ERROR, os_error_text(errno.ENOTDIR))
        program = self._program_for(argv)
        process = FakeProcess(
            self,
            process_id,
            argv,
            cwd,
            values["env"],
            values["tty"],
            bool(values.get("pipeStdin", False)),
            values.get("arg0"),
        )
        self.processes[process_id] = process
        self._result(request_id, {"processId": process_id, "sandboxType": "none"})
        self._run(process, program)
        return _DEFERRED

    def _program_for(self, argv: Sequence[str]) -> Program:
        for rule in reversed(self._rules):
            if rule.accepts(argv):
                if rule.refusal is not None:
                    raise _RpcError(INTERNAL_ERROR, rule.refusal)
                assert rule.program is not None
                return rule.program
        builtin = BUILTIN_PROGRAMS.get(argv[0].rsplit("/", 1)[-1])
        if builtin is None:
            raise _RpcError(INTERNAL_ERROR, NO_SUCH_FILE)
        return builtin

    def _run(self, process: FakeProcess, program: Program) -> None:
        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                _log.failure(
                    "fake exec-server: program of {process_id} failed",
                    failure,
                    process_id=process.process_id,
                )

        try:
            outcome = program(process)
        except Exception:
            failed(Failure())
            return
        if isinstance(outcome, Deferred) or inspect.iscoroutine(outcome):
            ensureDeferred(outcome).addErrback(failed)

    def _process(self, values: dict[str, JSONValue]) -> FakeProcess:
        process_id: str = values["processId"]
        process = self.processes.get(process_id)
        if process is None:
            raise _RpcError(INVALID_REQUEST, f"unknown process id {process_id}")
        return process

    def _read(self, request_id: int | str, values: dict[str, JSONValue]) -> JSONValue:
        process = self._process(values)
        after = values.get("afterSeq") or 0
        max_bytes = values.get("maxBytes")
        wait_ms = values.get("waitMs") or 0
        if self.wait_limit_ms is not None and wait_ms > self.wait_limit_ms:
            self.wait_violations.append(wait_ms)
            _log.failure(
                "fake exec-server: process/read with waitMs {wait_ms} above {limit}",
                Failure(AssertionError(f"waitMs {wait_ms} > {self.wait_limit_ms}")),
                wait_ms=wait_ms,
                limit=self.wait_limit_ms,
            )
        if process._ready(after) or wait_ms <= 0:
            return process._read(after, max_bytes)
        # Wait: nothing behind this request is answered until it is.
        self._busy = True
        timer: list[IDelayedCall] = []

        def answer() -> None:
            process._unwait(waiter)
            if timer and timer[0].active():
                timer[0].cancel()
            if self.ended:
                return
            self._busy = False
            self._result(request_id, process._read(after, max_bytes))
            self._pump()

        waiter = _Waiter(after, max_bytes, answer)
        process._wait(waiter)
        timer.append(self.clock.callLater(wait_ms / 1000, answer))
        return _DEFERRED

    def _write(self, values: dict[str, JSONValue]) -> JSONValue:
        write_id: str = values["writeId"]
        if not write_id:
            raise _RpcError(INVALID_PARAMS, "writeId must not be empty")
        process = self.processes.get(values["processId"])
        if process is None:
            return {"status": "unknownProcess"}
        if not (process.pipe_stdin or process.tty):
            return {"status": "stdinClosed"}
        if write_id in process._write_ids:
            return {"status": "accepted"}
        if process.terminated:
            raise _RpcError(INTERNAL_ERROR, STDIN_WRITE_FAILED)
        process._write_ids.add(write_id)
        process._write(values["chunk"])
        return {"status": "accepted"}

    def _terminate(self, values: dict[str, JSONValue]) -> JSONValue:
        process = self.processes.get(values["processId"])
        if process is None or not process.running:
            return {"running": False}
        process._kill()
        return {"running": True}

    # -- filesystem ------------------------------------------------------------------------------

    def _fs(self, method: str, values: dict[str, JSONValue]) -> JSONValue:
        if method == "fs/copy":
            source = self._local(values["sourcePath"])
            destination = self._local(values["destinationPath"])
            return self._copy(source, destination, values["recursive"])
        path = self._local(values["path"])
        host = self._host(path)
        try:
            if method == "fs/readFile":
                return self._read_file(path, host)
            if method == "fs/writeFile":
                try:
                    data = decode_base64(values["dataBase64"])
                except Base64Error as e:
                    raise _RpcError(
                        INVALID_REQUEST, f"fs/writeFile requires valid base64 dataBase64: {e}"
                    ) from None
                fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return {}
            if method == "fs/createDirectory":
                if values.get("recursive") is False:
                    os.mkdir(host)
                else:
                    _create_dir_all(host)
                return {}
            if method == "fs/remove":
                return self._remove(host, values.get("recursive") is not False, values.get("force"))
            if method == "fs/getMetadata":
                info = os.stat(host)
                link = os.lstat(host)
                return {
                    "isDirectory": stat.S_ISDIR(info.st_mode),
                    "isFile": stat.S_ISREG(info.st_mode),
                    "isSymlink": stat.S_ISLNK(link.st_mode),
                    "size": info.st_size,
                    "createdAtMs": 0,
                    "modifiedAtMs": info.st_mtime_ns // 1_000_000,
                }
            if method == "fs/readDirectory":
                entries: list[dict[str, JSONValue]] = []
                with os.scandir(host) as listing:
                    for entry in listing:
                        try:
                            info = entry.stat(follow_symlinks=True)
                        except OSError:
                            continue
                        entries.append(
                            {
                                "fileName": entry.name,
                                "isDirectory": stat.S_ISDIR(info.st_mode),
                                "isFile": stat.S_ISREG(info.st_mode),
                            }
                        )
                return {"entries": entries}
        except OSError as e:
            raise _os_error(e) from None
        raise AssertionError(method)  # pragma: no cover

    def _read_file(self, path: str, host: str) -> JSONValue:
        info = os.stat(host)
        if not stat.S_ISREG(info.st_mode):
            raise _RpcError(INVALID_REQUEST, f"path `{path}` is not a file")
        with open(host, "rb") as f:
            return {"dataBase64": base64.b64encode(f.read()).decode("ascii")}

    def _remove(self, host: str, recursive: bool, force: bool | None) -> JSONValue:
        try:
            info = os.lstat(host)
        except FileNotFoundError:
            if force is False:
                raise
            return {}
        if stat.S_ISDIR(info.st_mode):
            if recursive:
                _remove_tree(host)
            else:
                os.rmdir(host)
        else:
            os.unlink(host)
        return {}

    def _copy(self, source: str, destination: str, recursive: bool) -> JSONValue:
        source_host = self._host(source)
        destination_host = self._host(destination)
        try:
            info = os.lstat(source_host)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(source_host), destination_host)
                return {}
            if stat.S_ISDIR(info.st_mode):
                if not recursive:
                    raise _RpcError(
                        INVALID_REQUEST,
                        "fs/copy requires recursive: true when sourcePath is a directory",
                    )
                real_source = os.path.realpath(source_host)
                real_destination = os.path.realpath(destination_host)
                if os.path.commonpath([real_source, real_destination]) == real_source:
                    raise _RpcError(
                        INVALID_REQUEST,
                        "fs/copy cannot copy a directory to itself or one of its descendants",
                    )
                _copy_tree(source_host, destination_host)
                return {}
            if stat.S_ISREG(info.st_mode):
                _copy_file(source_host, destination_host)
                return {}
        except OSError as e:
            raise _os_error(e) from None
        raise _RpcError(
            INVALID_REQUEST, "fs/copy only supports regular files, directories, and symlinks"
        )


#: Marks a request whose answer was (or will be) sent by the method itself.
_DEFERRED: Final = object()


def _create_dir_all(path: str) -> None:
    # Rust's std::fs::create_dir_all.
    if not path or path == "/":
        return
    try:
        os.mkdir(path)
        return
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.isdir(path):
            return
        raise
    _create_dir_all(os.path.dirname(path.rstrip("/")))
    try:
        os.mkdir(path)
    except OSError:
        if not os.path.isdir(path):
            raise


def _remove_tree(path: str) -> None:
    # Never follows a symlink: a link inside the tree is removed, not its target.
    with os.scandir(path) as listing:
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
    os.rmdir(path)


def _copy_file(source: str, destination: str) -> None:
    # Like Rust's std::fs::copy: the destination is opened (and truncated) after the source, then
    # gets the source's permission bits.
    mode = stat.S_IMODE(os.stat(source).st_mode)
    with open(source, "rb") as reader:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as writer:
            while block := reader.read(1 << 20):
                writer.write(block)
            os.fchmod(writer.fileno(), mode)


def _copy_tree(source: str, destination: str) -> None:
    _create_dir_all(destination)
    with os.scandir(source) as listing:
        for entry in listing:
            target = os.path.join(destination, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                _copy_tree(entry.path, target)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(entry.path, target)


# -------------------------------------------------------------------------------------------------
# The client


@implementer(IExecServerClient)
class FakeExecServerClient:
    """
    An L{IExecServerClient} straight over a L{FakeExecServer}: the JSON-RPC side of a bridge client
    (C{envtools.md} §4.5, §4.7) without relay frames.

    It sends C{initialize} C{{"clientName":…}} (id 1) and C{initialized} when made, like a bridge
    client after its dial, unless C{handshake} is false. Ids count from 1; a C{result} completes a
    call, an C{error} fails it with L{CallError} C{<method>: <message> (code=<code>)}, no answer
    within the timeout (on the server's clock) with C{<method>: timed out}. Replies are matched by
    id; everything else is ignored. Closing the client ends the exec-server (the executor does that
    at the end of a stream); the exec-server ending ends the client with C{bridge: connection
    closed}; L{reset} ends it like a relay Reset.

    @ivar ended: C{None} while usable, else the end text.
    @ivar live_sessions: exec sessions opened and not closed (heartbeats would run while positive).
    @ivar sessions_opened: how many times L{session_opened} was called.
    @ivar sessions_closed: how many times L{session_closed} was called.
    @ivar calls: C{(method, params)} of every call, in order.
    """

    def __init__(
        self, server: FakeExecServer, client_name: str = "codex-env-mcp", handshake: bool = True
    ) -> None:
        self.server = server
        self.ended: str | None = None
        self.live_sessions = 0
        self.sessions_opened = 0
        self.sessions_closed = 0
        self.calls: list[tuple[str, JSONValue]] = []
        self._clock = server.clock
        self._next_id = 1
        self._pending: dict[int, tuple[str, Deferred[JSONValue], IDelayedCall]] = {}
        server.on_reply = self._received
        server.on_exit = lambda: self._end("bridge: connection closed")
        if handshake:
            self.call("initialize", {"clientName": client_name}).addErrback(lambda _: None)
            self._send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

    def call(
        self, method: str, params: JSONValue, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> Deferred[JSONValue]:
        """
        See L{IExecServerClient.call}.
        """
        result: Deferred[JSONValue] = Deferred()
        if self.ended is not None:
            result.errback(CallError(self.ended))
            return result
        request_id = self._next_id
        self._next_id += 1
        payload = _compact({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if len(payload) > MAX_MESSAGE_BYTES:
            result.errback(
                CallError(f"{method}: message too large ({len(payload)} bytes > {MAX_MESSAGE_BYTES})")
            )
            return result
        self.calls.append((method, params))

        def expire() -> None:
            if self._pending.pop(request_id, None) is not None:
                result.errback(CallError(f"{method}: timed out"))

        timer = self._clock.callLater(timeout, expire)
        self._pending[request_id] = (method, result, timer)
        self.server.handle(payload)
        return result

    def session_opened(self) -> None:
        """
        See L{IExecServerClient.session_opened}.
        """
        self.live_sessions += 1
        self.sessions_opened += 1

    def session_closed(self) -> None:
        """
        See L{IExecServerClient.session_closed}.
        """
        self.live_sessions = max(0, self.live_sessions - 1)
        self.sessions_closed += 1

    def close(self) -> None:
        """
        See L{IExecServerClient.close}: the exec-server ends too.
        """
        if self.ended is not None:
            return
        self._end("bridge: connection closed")
        self.server.close()

    def reset(self, reason: str) -> None:
        """
        End the client as an inbound Reset would (C{relay reset: <reason>}); the exec-server ends.
        """
        if self.ended is not None:
            return
        self._end(f"relay reset: {reason}")
        self.server.close()

    def _send(self, message: JSONValue) -> None:
        if self.ended is None:
            self.server.handle(_compact(message))

    def _received(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        request_id = message.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            return
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        method, result, timer = entry
        if timer.active():
            timer.cancel()
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            code = error.get("code")
            result.errback(
                CallError(
                    f"{method}: {error.get('message')} (code={code})",
                    code if isinstance(code, int) else None,
                )
            )
        else:
            result.callback(message.get("result"))

    def _end(self, text: str) -> None:
        if self.ended is not None:
            return
        self.ended = text
        pending = list(self._pending.values())
        self._pending.clear()
        for _method, result, timer in pending:
            if timer.active():
                timer.cancel()
            result.errback(CallError(text))
