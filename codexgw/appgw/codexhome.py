"""
CODEX_HOME directories and their C{config.toml} (C{app-gateway.md} §6.1, §6.2).

L{HomeDirs} is the tmpdir manager: every workspace's home is C{<CXG_TMP_ROOT>/<workspace_id>} (mode
0700), workspace ids are checked against the §4.1 pattern before they ever reach a path, and
L{HomeDirs.remove_home} deletes only what lies strictly inside the root once symlinks are resolved.
L{render_config_toml} is a pure function producing the exact bytes of §6.2; L{write_config} puts them
into C{<home>/config.toml} with mode 0600, atomically.

Every error raised here is a L{CodexHomeError} whose message starts with C{codexhome: }.

Decisions where the spec is silent:
 - The spec lists a provider C{name} among the inputs but writes the provider id on the C{name = }
   line; L{ProviderSettings} therefore has no name of its own, so the two can never disagree.
 - A trusted path given twice is written once (first position): two C{[projects."/x"]} tables are
   invalid TOML and codex would refuse to start.
 - A string holding a lone surrogate (an undecodable byte smuggled in through the environment) cannot
   be written in TOML at all; rendering fails with L{ConfigInputError} instead of writing a file
   codex cannot read.
 - Values quoted in messages use JSON string syntax (like Go's C{%q}), so a hostile id or name cannot
   forge a second log line.
 - The temporary file of L{write_config} is C{.config.toml.<hex>.tmp} in the home; the snapshot
   leaves such torn writes out like C{config.toml} itself (they hold the same tokens).
 - L{HomeDirs.ensure_root} creates a missing root (and parents) with mode 0700; an existing root must
   be a directory owned by this process's user, and is then set to 0700. Another user's directory at
   the default C{/tmp/codex-app-gateway} would otherwise receive every workspace's history.
 - L{HomeDirs.remove_home} of a path that does not exist succeeds; of a symlink that resolves inside
   the root removes the link, never its target.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from codexgw.appgw.safefs import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    make_private_dirs,
    open_child_directory,
    remove_tree,
    write_file_atomically,
)

#: The workspace ids that may name a directory (§4.1).
WORKSPACE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: The name of the directory under the root that holds tarballs in flight (§5.8).
STAGING_DIR: Final = ".staging"
#: The file codex reads its configuration from, inside CODEX_HOME.
CONFIG_FILE: Final = "config.toml"
#: How the temporary files of L{write_config} start (the snapshot skips them).
CONFIG_TEMP_PREFIX: Final = ".config.toml."

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}

#: The MCP server key; codex offers its tools to the model as namespace C{mcp__agentserver}.
MCP_SERVER_NAME: Final = "agentserver"
#: The environment variables through which env-mcp receives its two tokens (§6.2, §9.1).
WORKSPACE_TOKEN_ENV: Final = "CXG_WORKSPACE_TOKEN"  # noqa: S105 - a variable name
LOOPBACK_TOKEN_ENV: Final = "CXG_LOOPBACK_TOKEN"  # noqa: S105 - a variable name


class CodexHomeError(Exception):
    """
    A CODEX_HOME operation failed; the message starts with C{codexhome: }.
    """


class InvalidWorkspaceId(CodexHomeError, ValueError):
    """
    A workspace id does not match L{WORKSPACE_ID_PATTERN}.
    """


class RefusedRemoval(CodexHomeError):
    """
    L{HomeDirs.remove_home} was asked to remove something that is not strictly inside the root.
    """


class ConfigInputError(CodexHomeError, ValueError):
    """
    L{render_config_toml} was given input it cannot render.
    """


def quote(text: str) -> str:
    """
    C{text} as a double-quoted string with control characters escaped, for error messages.
    """
    return json.dumps(text, ensure_ascii=False)


def is_valid_workspace_id(workspace_id: str) -> bool:
    """
    Whether C{workspace_id} matches C{^[A-Za-z0-9_-]{1,128}$} (so it is one safe path component).
    """
    return WORKSPACE_ID_PATTERN.fullmatch(workspace_id) is not None


def check_workspace_id(workspace_id: str) -> str:
    """
    Return C{workspace_id} if it is valid.

    @raise InvalidWorkspaceId: C{codexhome: invalid workspace id "<ws>"} otherwise.
    """
    if not is_valid_workspace_id(workspace_id):
        raise InvalidWorkspaceId(f"codexhome: invalid workspace id {quote(workspace_id)}")
    return workspace_id


class HomeDirs:
    """
    The CODEX_HOME directories under one root (C{CXG_TMP_ROOT}).

    Methods do blocking filesystem work; they are quick except L{remove_home} of a large tree, which
    callers on the reactor thread should hand to a thread pool.

    @ivar root: the root as configured (absolute, symlinks not resolved).
    """

    def __init__(self, root: str) -> None:
        """
        @param root: an absolute path (C{CXG_TMP_ROOT} made absolute); nothing is created yet.
        @raise ValueError: when C{root} is relative.
        """
        if not os.path.isabs(root):
            raise ValueError(f"codexhome: root must be absolute, got {quote(root)}")
        self.root = root

    def ensure_root(self) -> None:
        """
        Create the root (and its missing parents) with mode 0700, or check that the existing root is
        a directory of this process's user and set it to 0700.

        @raise CodexHomeError: when the root belongs to another user or is not a directory.
        @raise OSError: when it cannot be created.
        """
        make_private_dirs(self.root)
        info = os.stat(self.root)
        if not stat.S_ISDIR(info.st_mode):
            raise CodexHomeError(f"codexhome: root {self.root} is not a directory")
        if info.st_uid != os.geteuid():
            raise CodexHomeError(
                f"codexhome: root {self.root} is owned by uid {info.st_uid}, not {os.geteuid()}"
            )
        os.chmod(self.root, PRIVATE_DIR_MODE)

    def path_for(self, workspace_id: str) -> str:
        """
        Return C{<root>/<workspace_id>} without touching the filesystem.

        @raise InvalidWorkspaceId: when the id is invalid.
        """
        return os.path.join(self.root, check_workspace_id(workspace_id))

    def home_path(self, workspace_id: str) -> str:
        """
        Return C{<root>/<workspace_id>}, created with mode 0700, or set to 0700 if it existed.

        @raise InvalidWorkspaceId: when the id is invalid.
        @raise CodexHomeError: when something other than a directory (a symlink, a file) is there.
        @raise OSError: when the root is missing or the directory cannot be created.
        """
        path = self.path_for(workspace_id)
        self._open_private_child(workspace_id, path)
        return path

    def staging_path(self) -> str:
        """
        Return C{<root>/.staging}, the directory of tarballs in flight, created with mode 0700.

        @raise CodexHomeError: when something other than a directory is there.
        """
        path = os.path.join(self.root, STAGING_DIR)
        self._open_private_child(STAGING_DIR, path)
        return path

    def _open_private_child(self, name: str, path: str) -> None:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fd = open_child_directory(root_fd, name, create=True)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                    raise CodexHomeError(f"codexhome: {path} is not a directory") from e
                raise
            try:
                os.fchmod(fd, PRIVATE_DIR_MODE)
            finally:
                os.close(fd)
        finally:
            os.close(root_fd)

    def is_inside(self, path: str) -> bool:
        """
        Whether C{path}, with every symlink resolved, lies strictly inside the resolved root.
        """
        root = os.path.realpath(self.root)
        target = os.path.realpath(path)
        return target != root and os.path.commonpath([root, target]) == root

    def remove_home(self, path: str) -> None:
        """
        Remove C{path} recursively (never following a symlink inside it) if it lies strictly inside
        the root after resolving; a missing path is already removed.

        @raise RefusedRemoval: C{codexhome: refusing to remove <path> outside root <root>} when it
            does not (C{<root>-evil/x}, C{<root>/../x}, the root itself, a symlink pointing out).
        @raise OSError: when the removal fails.
        """
        if not self.is_inside(path):
            raise RefusedRemoval(f"codexhome: refusing to remove {path} outside root {self.root}")
        if os.path.islink(path):
            # Remove the name we were given, never the directory the link points at.
            os.unlink(path)
            return
        remove_tree(path)


# -------------------------------------------------------------------------------------------------
# config.toml


@dataclass(frozen=True)
class ProviderSettings:
    """
    The C{[model_providers.<id>]} table (its id is L{ConfigInput.model_provider}).

    @ivar base_url: C{CXG_MODEL_PROVIDER_BASE_URL}; codex calls C{POST <base>/responses}.
    @ivar env_key: C{CXG_MODEL_PROVIDER_ENV_KEY}, the variable codex reads the LLM key from; the
        C{env_key} line is left out when empty.
    @ivar wire_api: C{CXG_MODEL_PROVIDER_WIRE_API}.
    """

    base_url: str
    env_key: str
    wire_api: str


@dataclass(frozen=True)
class McpSettings:
    """
    The C{[mcp_servers.agentserver]} table: how codex starts env-mcp (§6.2 item 5, §9.1).

    @ivar command: absolute path of the C{codexgw} console script; empty means no MCP section.
    @ivar workspace_id: the workspace.
    @ivar bridge_url: the exec gateway's bridge base (C{CXG_EXEC_GATEWAY_URL} + C{/bridge}).
    @ivar loopback_url: the gateway's loopback URL (§5.10).
    @ivar cap_token: the workspace cap token (never shown by C{repr}).
    @ivar loopback_token: the per-spawn loopback token (never shown by C{repr}).
    """

    command: str
    workspace_id: str
    bridge_url: str
    loopback_url: str
    cap_token: str = field(repr=False)
    loopback_token: str = field(repr=False)

    def args(self) -> list[str]:
        """
        The env-mcp argument list, exactly as §6.2 orders it.
        """
        return [
            "env-mcp",
            "--workspace-id",
            self.workspace_id,
            "--exec-gateway-url",
            self.bridge_url,
            "--app-gateway-internal",
            self.loopback_url,
            "--workspace-token-env",
            WORKSPACE_TOKEN_ENV,
            "--loopback-token-env",
            LOOPBACK_TOKEN_ENV,
        ]


@dataclass(frozen=True)
class ConfigInput:
    """
    Everything L{render_config_toml} writes.

    @ivar model_provider: the provider id (C{CXG_MODEL_PROVIDER}); required.
    @ivar model: C{CXG_MODEL}; required.
    @ivar provider: the provider's table.
    @ivar trusted_paths: the project directories codex trusts, in order.
    @ivar mcp: the env-mcp section; C{None} (or an empty command) leaves it out.
    """

    model_provider: str
    model: str
    provider: ProviderSettings
    trusted_paths: tuple[str, ...]
    mcp: McpSettings | None = None


def toml_string(text: str) -> str:
    """
    C{text} as a TOML basic string (§6.2 string rule): C{\\} and C{"} escaped, the five short escapes
    for backspace, tab, newline, form feed and carriage return, C{\\u00XX} (lowercase hex) for the
    other C0 controls and U+007F, everything else literal.

    @raise ConfigInputError: when C{text} holds a lone surrogate, which TOML cannot represent.
    """
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            raise ConfigInputError(f"codexhome: string not representable in TOML: {quote(text)}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """
    C{key} bare when it matches C{^[A-Za-z0-9_-]+$}, else quoted by L{toml_string}.
    """
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_array(items: Iterable[str]) -> str:
    """
    A one-line TOML array of strings: C{[} + elements joined by C{, } + C{]}.
    """
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def render_config_toml(config: ConfigInput) -> str:
    """
    Render C{config.toml} with the exact layout of §6.2: C{\\n} line ends, every section followed by
    one empty line, so the text ends with C{\\n\\n}.

    @raise ConfigInputError: C{codexhome: ModelProvider required} / C{codexhome: Model required}
        for an empty provider id or model; see also L{toml_string}.
    """
    if not config.model_provider:
        raise ConfigInputError("codexhome: ModelProvider required")
    if not config.model:
        raise ConfigInputError("codexhome: Model required")
    provider = config.provider
    lines = [
        f"model_provider = {toml_string(config.model_provider)}",
        f"model = {toml_string(config.model)}",
        "",
        f"[model_providers.{toml_key(config.model_provider)}]",
        f"name = {toml_string(config.model_provider)}",
        f"base_url = {toml_string(provider.base_url)}",
    ]
    if provider.env_key:
        lines.append(f"env_key = {toml_string(provider.env_key)}")
    lines += [f"wire_api = {toml_string(provider.wire_api)}", ""]
    for path in dict.fromkeys(config.trusted_paths):
        lines += [f"[projects.{toml_string(path)}]", 'trust_level = "trusted"', ""]
    lines += [
        "[features]",
        "shell_tool = false",
        "unified_exec = false",
        "apply_patch_freeform = false",
        "",
    ]
    mcp = config.mcp
    if mcp is not None and mcp.command:
        env = (
            f"{WORKSPACE_TOKEN_ENV} = {toml_string(mcp.cap_token)}, "
            f"{LOOPBACK_TOKEN_ENV} = {toml_string(mcp.loopback_token)}"
        )
        lines += [
            f"[mcp_servers.{MCP_SERVER_NAME}]",
            f"command = {toml_string(mcp.command)}",
            f"args = {toml_array(mcp.args())}",
            f"env = {{ {env} }}",
            "startup_timeout_sec = 30",
            "tool_timeout_sec = 660",
            'default_tools_approval_mode = "approve"',
            "",
        ]
    return "\n".join(lines) + "\n"


def write_config(home: str, text: str) -> None:
    """
    Write C{text} as C{<home>/config.toml} with mode 0600: a temporary file in C{home} renamed over
    the old one, so codex never reads half a file.

    @param home: the CODEX_HOME directory (not a symlink).
    @raise OSError: when writing fails; no temporary file is left behind.
    """
    write_file_atomically(
        home, CONFIG_FILE, text.encode("utf-8"), PRIVATE_FILE_MODE, prefix=CONFIG_TEMP_PREFIX
    )
