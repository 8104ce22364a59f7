"""
Path arguments → C{file://} URIs, parent URIs and shell quoting (C{envtools.md} §3).

Every path argument of a tool except C{copy_path}'s is converted by L{to_uri} before it is sent to an
exec-server (§3.1): a C{file://} URI goes unchanged (the exec-server validates it, §3.2), a Windows
drive path becomes C{PureWindowsPath(p).as_uri()}, a POSIX absolute path C{PurePosixPath(p).as_uri()};
anything else is refused with L{PathError}. L{shell_quote} writes a path or URL into a shell script
(§3.3).

Decisions where the spec is silent:
 - The C{<p>} of C{path must be absolute: "<p>"} is the argument as given, between plain double quotes,
   without escaping.
 - Lone surrogates (which JSON text can carry) have no UTF-8 form; they become U+FFFD before the
   conversion, so that a conversion never raises anything but L{PathError}.
 - L{parent_uri} removes trailing C{/} of the path before it removes the last segment, so the parent of
   C{file:///a/b/} is C{file:///a}, as for C{file:///a/b}; the query and fragment, which the exec-server
   refuses anyway (§3.2), are not treated specially.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Final

_WINDOWS_PATH: Final = re.compile(r"^[A-Za-z]:[\\/]")
# scheme "://" authority, then the path (everything from the first "/" after the authority).
_URI_PREFIX: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/]*)(.*)$", re.DOTALL)


class PathError(ValueError):
    """
    A path argument that is neither a C{file://} URI nor absolute; C{str()} is the tool's isError text
    C{path must be absolute: "<p>"}.

    @ivar path: the argument as given.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f'path must be absolute: "{path}"')
        self.path = path


def _without_lone_surrogates(text: str) -> str:
    # UTF-16 round trip: paired surrogates survive, lone ones become U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def to_uri(path: str) -> str:
    """
    Convert a tool's path argument to the URI sent to the exec-server (§3.1).

    @param path: the argument: a C{file://} URI (any letter case of the scheme), a Windows path
        C{X:\\…} or C{X:/…}, or a POSIX absolute path.
    @return: C{path} itself for a C{file://} URI, else the C{file://} URI of the path, with every byte
        of its UTF-8 form outside C{A–Z a–z 0–9 - . _ ~ /} percent-encoded.
    @raise PathError: for anything else, the empty string included.
    """
    if path[:7].lower() == "file://":
        return path
    clean = _without_lone_surrogates(path)
    if _WINDOWS_PATH.match(clean):
        return PureWindowsPath(clean).as_uri()
    if clean.startswith("/"):
        return PurePosixPath(clean).as_uri()
    raise PathError(path)


def parent_uri(uri: str) -> str:
    """
    The URI of the parent directory: C{uri} with its last path segment removed (§3.1).

    C{file:///a/b/c} → C{file:///a/b}; C{file:///a} → C{file:///}; C{file:///} → C{file:///}.
    """
    match = _URI_PREFIX.match(uri)
    prefix, path = (match.group(1), match.group(2)) if match else ("", uri)
    trimmed = path.rstrip("/")
    cut = trimmed.rfind("/")
    return prefix + ("/" if cut <= 0 else trimmed[:cut])


def shell_quote(text: str) -> str:
    """
    Single-quote C{text} for a POSIX shell script, every C{'} written C{'\\''} (§3.3).

    C{a'b} → C{'a'\\''b'}.
    """
    return "'" + text.replace("'", "'\\''") + "'"
