"""
Tests for L{codexgw.appgw.codexhome} (C{app-gateway.md} §6.1, §6.2; acceptance items 44–47).

 - Workspace ids and the tmpdir manager L{HomeDirs}: modes, refusals with the exact texts, symlinks.
 - L{render_config_toml}: byte-exact golden outputs (the spec's example, no MCP command, two trusted
   paths), every optional section, the string rule, and a property test that any strings parse
   back with C{tomllib} to the same values.
 - L{write_config}: mode 0600, atomic replacement, no temporary file left behind.

Rendering and id validation are pure and tested without I/O; directory tests use trial's C{mktemp}.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.codexhome import (
    CodexHomeError,
    ConfigInput,
    ConfigInputError,
    HomeDirs,
    InvalidWorkspaceId,
    McpSettings,
    ProviderSettings,
    RefusedRemoval,
    check_workspace_id,
    is_valid_workspace_id,
    render_config_toml,
    toml_key,
    toml_string,
    write_config,
)

#: A deliberately loose directory mode that the code under test must tighten (or leave alone).
LOOSE_MODE = 0o750

#: The §6.2 input: defaults, workspace ws_a, exec gateway ws://exec-gw:6060, listener :8086.
SPEC_INPUT = ConfigInput(
    model_provider="modelserver",
    model="gpt-5.5",
    provider=ProviderSettings(
        base_url="http://llmproxy:8085/v1", env_key="CODEX_API_KEY", wire_api="responses"
    ),
    trusted_paths=("/tmp",),
    mcp=McpSettings(
        command="/opt/codexgw/bin/codexgw",
        workspace_id="ws_a",
        bridge_url="ws://exec-gw:6060/bridge",
        loopback_url="http://127.0.0.1:8086",
        cap_token="CAP",
        loopback_token="LOOP",
    ),
)

#: The §6.2 expected output, byte for byte.
SPEC_OUTPUT = (
    'model_provider = "modelserver"\n'
    'model = "gpt-5.5"\n'
    "\n"
    "[model_providers.modelserver]\n"
    'name = "modelserver"\n'
    'base_url = "http://llmproxy:8085/v1"\n'
    'env_key = "CODEX_API_KEY"\n'
    'wire_api = "responses"\n'
    "\n"
    '[projects."/tmp"]\n'
    'trust_level = "trusted"\n'
    "\n"
    "[features]\n"
    "shell_tool = false\n"
    "unified_exec = false\n"
    "apply_patch_freeform = false\n"
    "\n"
    "[mcp_servers.agentserver]\n"
    'command = "/opt/codexgw/bin/codexgw"\n'
    'args = ["env-mcp", "--workspace-id", "ws_a", "--exec-gateway-url", "ws://exec-gw:6060/bridge",'
    ' "--app-gateway-internal", "http://127.0.0.1:8086", "--workspace-token-env",'
    ' "CXG_WORKSPACE_TOKEN", "--loopback-token-env", "CXG_LOOPBACK_TOKEN"]\n'
    'env = { CXG_WORKSPACE_TOKEN = "CAP", CXG_LOOPBACK_TOKEN = "LOOP" }\n'
    "startup_timeout_sec = 30\n"
    "tool_timeout_sec = 660\n"
    'default_tools_approval_mode = "approve"\n'
    "\n"
)

#: Everything up to and including the [features] section of L{SPEC_OUTPUT}.
SPEC_WITHOUT_MCP = SPEC_OUTPUT[: SPEC_OUTPUT.index("[mcp_servers.agentserver]")]


# -------------------------------------------------------------------------------------------------
# Workspace ids


class WorkspaceIdTests(SynchronousTestCase):
    """
    The §4.1 pattern decides which ids may name a directory.
    """

    def test_valid(self) -> None:
        """
        Letters, digits, C{_} and C{-}, 1 to 128 characters, are valid.
        """
        for workspace_id in ("ws_a", "A", "0", "-", "_", "a-b_C9", "x" * 128):
            self.assertTrue(is_valid_workspace_id(workspace_id), workspace_id)
            self.assertEqual(check_workspace_id(workspace_id), workspace_id)

    def test_invalid(self) -> None:
        """
        Ids with C{/}, C{.}, C{..}, white space, a trailing newline, non-ASCII letters, NUL, an
        empty id and a 129-character id are refused with the exact text.
        """
        for workspace_id in (
            "", ".", "..", "a/b", "/", "a.b", "../x", "x" * 129, "ws a", "ws_a\n", "é", "a\0",
            "a\\b",
        ):  # fmt: skip
            self.assertFalse(is_valid_workspace_id(workspace_id), repr(workspace_id))
            with self.assertRaises(InvalidWorkspaceId) as caught:
                check_workspace_id(workspace_id)
            self.assertIsInstance(caught.exception, ValueError)
        with self.assertRaises(InvalidWorkspaceId) as caught:
            check_workspace_id("a/b")
        self.assertEqual(str(caught.exception), 'codexhome: invalid workspace id "a/b"')

    def test_message_escapes_control_characters(self) -> None:
        """
        A hostile id cannot forge a second log line: control characters are escaped.
        """
        with self.assertRaises(InvalidWorkspaceId) as caught:
            check_workspace_id('x"\nlevel=error')
        self.assertEqual(str(caught.exception), 'codexhome: invalid workspace id "x\\"\\nlevel=error"')


# -------------------------------------------------------------------------------------------------
# HomeDirs


def mode_of(path: str) -> int:
    """
    The permission bits of C{path} (symlinks not followed).
    """
    return stat.S_IMODE(os.lstat(path).st_mode)


class HomeDirsTests(SynchronousTestCase):
    """
    The tmpdir manager: C{<root>/<ws>} with mode 0700, and removal only strictly inside the root.
    """

    def setUp(self) -> None:
        """
        A fresh root (created) in the test's temporary directory.
        """
        self.base = os.path.abspath(self.mktemp())
        os.mkdir(self.base)
        self.root = os.path.join(self.base, "root")
        self.homes = HomeDirs(self.root)
        self.homes.ensure_root()

    def test_relative_root_refused(self) -> None:
        """
        The root must be absolute (the configuration makes it so).
        """
        self.assertRaises(ValueError, HomeDirs, "relative/root")

    def test_ensure_root_creates_private_parents(self) -> None:
        """
        L{HomeDirs.ensure_root} creates the root and its missing parents with mode 0700 whatever the
        umask, and is idempotent.
        """
        root = os.path.join(self.base, "a", "b", "root")
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        homes = HomeDirs(root)
        homes.ensure_root()
        homes.ensure_root()
        for path in (os.path.join(self.base, "a"), os.path.join(self.base, "a", "b"), root):
            self.assertEqual(mode_of(path), 0o700, path)

    def test_ensure_root_tightens_existing_root(self) -> None:
        """
        An existing root of ours is set to 0700.
        """
        os.chmod(self.root, LOOSE_MODE)
        self.homes.ensure_root()
        self.assertEqual(mode_of(self.root), 0o700)

    def test_ensure_root_refuses_foreign_root(self) -> None:
        """
        A root owned by another user is refused (it would receive every workspace's history), and
        its mode is not changed.
        """
        if os.geteuid() == 0:
            foreign = os.path.join(self.base, "foreign")
            os.mkdir(foreign, LOOSE_MODE)
            os.chown(foreign, 4242, 4242)
        else:
            foreign = "/usr"
        with self.assertRaises(CodexHomeError) as caught:
            HomeDirs(foreign).ensure_root()
        self.assertIn("is owned by uid", str(caught.exception))
        self.assertEqual(mode_of(foreign), LOOSE_MODE)

    def test_ensure_root_refuses_file(self) -> None:
        """
        A file where the root should be fails startup.
        """
        path = os.path.join(self.base, "file")
        with open(path, "w"):
            pass
        self.assertRaises(OSError, HomeDirs(path).ensure_root)

    def test_path_for_is_pure(self) -> None:
        """
        L{HomeDirs.path_for} joins root and id and creates nothing.
        """
        self.assertEqual(self.homes.path_for("ws_a"), os.path.join(self.root, "ws_a"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "ws_a")))

    def test_home_path_creates_0700(self) -> None:
        """
        L{HomeDirs.home_path} creates C{<root>/<ws>} with mode 0700 whatever the umask.
        """
        old = os.umask(0o000)
        self.addCleanup(os.umask, old)
        path = self.homes.home_path("ws_a")
        self.assertEqual(path, os.path.join(self.root, "ws_a"))
        self.assertTrue(stat.S_ISDIR(os.lstat(path).st_mode))
        self.assertEqual(mode_of(path), 0o700)

    def test_home_path_chmods_existing(self) -> None:
        """
        An existing home is set to 0700 again and its contents are kept.
        """
        path = os.path.join(self.root, "ws_a")
        os.mkdir(path, LOOSE_MODE)
        os.chmod(path, LOOSE_MODE)
        with open(os.path.join(path, "history.jsonl"), "w") as f:
            f.write("kept")
        self.assertEqual(self.homes.home_path("ws_a"), path)
        self.assertEqual(mode_of(path), 0o700)
        self.assertEqual(os.listdir(path), ["history.jsonl"])

    def test_home_path_rejects_invalid_ids(self) -> None:
        """
        Ids with C{/}, C{.}, C{..}, empty or 129 characters are refused before any path is built.
        """
        for workspace_id in ("a/b", ".", "..", "", "x" * 129, "../evil"):
            self.assertRaises(InvalidWorkspaceId, self.homes.home_path, workspace_id)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(os.listdir(self.base), ["root"])

    def test_home_path_refuses_symlink(self) -> None:
        """
        A symlink at C{<root>/<ws>} (even to a directory) is refused and its target untouched.
        """
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside, LOOSE_MODE)
        os.chmod(outside, LOOSE_MODE)
        os.symlink(outside, os.path.join(self.root, "ws_a"))
        with self.assertRaises(CodexHomeError) as caught:
            self.homes.home_path("ws_a")
        self.assertEqual(
            str(caught.exception), f"codexhome: {os.path.join(self.root, 'ws_a')} is not a directory"
        )
        self.assertEqual(mode_of(outside), LOOSE_MODE)

    def test_home_path_refuses_file(self) -> None:
        """
        A regular file at C{<root>/<ws>} is refused.
        """
        with open(os.path.join(self.root, "ws_a"), "w"):
            pass
        self.assertRaises(CodexHomeError, self.homes.home_path, "ws_a")

    def test_staging_path(self) -> None:
        """
        L{HomeDirs.staging_path} is C{<root>/.staging}, mode 0700.
        """
        path = self.homes.staging_path()
        self.assertEqual(path, os.path.join(self.root, ".staging"))
        self.assertEqual(mode_of(path), 0o700)

    def test_remove_home(self) -> None:
        """
        A home strictly inside the root is removed with everything in it, including nested
        directories, read-only directories and symlinks (never followed).
        """
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "keep"), "w"):
            pass
        path = self.homes.home_path("ws_a")
        os.makedirs(os.path.join(path, "sessions", "2026"))
        with open(os.path.join(path, "sessions", "2026", "s.jsonl"), "w"):
            pass
        os.symlink(outside, os.path.join(path, "link"))
        os.chmod(os.path.join(path, "sessions"), 0o500)
        self.homes.remove_home(path)
        self.assertFalse(os.path.lexists(path))
        self.assertEqual(os.listdir(outside), ["keep"])

    def test_remove_home_missing(self) -> None:
        """
        Removing a home that does not exist succeeds.
        """
        self.homes.remove_home(os.path.join(self.root, "ws_nope"))

    def test_remove_home_refuses_outside(self) -> None:
        """
        C{<root>-evil/x}, C{<root>/../x}, the root itself and an unrelated path are refused with
        the exact text, and nothing is removed.
        """
        evil = self.root + "-evil"
        os.makedirs(os.path.join(evil, "x"))
        sibling = os.path.join(self.base, "x")
        os.mkdir(sibling)
        for path in (
            os.path.join(evil, "x"),
            os.path.join(self.root, "..", "x"),
            self.root,
            self.root + "/",
            os.path.join(self.root, "."),
            "/etc",
        ):
            with self.assertRaises(RefusedRemoval) as caught:
                self.homes.remove_home(path)
            self.assertEqual(
                str(caught.exception),
                f"codexhome: refusing to remove {path} outside root {self.root}",
            )
        self.assertTrue(os.path.isdir(os.path.join(evil, "x")))
        self.assertTrue(os.path.isdir(sibling))
        self.assertTrue(os.path.isdir(self.root))

    def test_remove_home_refuses_symlink_out(self) -> None:
        """
        A symlink inside the root that points out (at the home itself or at a parent component) is
        refused; the target and the link stay.
        """
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "keep"), "w"):
            pass
        link = os.path.join(self.root, "ws_a")
        os.symlink(outside, link)
        self.assertRaises(RefusedRemoval, self.homes.remove_home, link)
        self.assertRaises(RefusedRemoval, self.homes.remove_home, os.path.join(link, "keep"))
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.listdir(outside), ["keep"])

    def test_remove_home_symlink_inside(self) -> None:
        """
        A symlink that resolves inside the root is removed as a link; its target stays.
        """
        target = self.homes.home_path("ws_b")
        link = os.path.join(self.root, "ws_a")
        os.symlink(target, link)
        self.homes.remove_home(link)
        self.assertFalse(os.path.lexists(link))
        self.assertTrue(os.path.isdir(target))

    def test_remove_home_through_symlinked_root(self) -> None:
        """
        A root that is itself a symlink works: homes under it are inside after resolving both.
        """
        real = os.path.join(self.base, "real")
        os.mkdir(real)
        linked = os.path.join(self.base, "linked")
        os.symlink(real, linked)
        homes = HomeDirs(linked)
        homes.ensure_root()
        path = homes.home_path("ws_a")
        self.assertTrue(os.path.isdir(os.path.join(real, "ws_a")))
        homes.remove_home(path)
        self.assertEqual(os.listdir(real), [])


# -------------------------------------------------------------------------------------------------
# render_config_toml


class RenderConfigTests(SynchronousTestCase):
    """
    L{render_config_toml} produces exactly the bytes of §6.2.
    """

    def test_spec_example(self) -> None:
        """
        The §6.2 input renders to the §6.2 output byte for byte, ending with C{\\n\\n}.
        """
        rendered = render_config_toml(SPEC_INPUT)
        self.assertEqual(rendered, SPEC_OUTPUT)
        self.assertTrue(rendered.encode("utf-8").endswith(b"\n\n"))

    def test_without_mcp_command(self) -> None:
        """
        With an empty MCP command, or no MCP section at all, the file ends with the features
        section: C{apply_patch_freeform = false\\n\\n}.
        """
        assert SPEC_INPUT.mcp is not None
        for config in (
            replace(SPEC_INPUT, mcp=replace(SPEC_INPUT.mcp, command="")),
            replace(SPEC_INPUT, mcp=None),
        ):
            rendered = render_config_toml(config)
            self.assertEqual(rendered, SPEC_WITHOUT_MCP)
            self.assertTrue(rendered.endswith("apply_patch_freeform = false\n\n"))

    def test_two_trusted_paths(self) -> None:
        """
        Trusted paths C{/workspace,/data} give two project blocks in that order.
        """
        rendered = render_config_toml(replace(SPEC_INPUT, trusted_paths=("/workspace", "/data")))
        expected = SPEC_OUTPUT.replace(
            '[projects."/tmp"]\ntrust_level = "trusted"\n\n',
            '[projects."/workspace"]\ntrust_level = "trusted"\n\n'
            '[projects."/data"]\ntrust_level = "trusted"\n\n',
        )
        self.assertEqual(rendered, expected)

    def test_no_trusted_paths(self) -> None:
        """
        Without trusted paths there is no project block.
        """
        rendered = render_config_toml(replace(SPEC_INPUT, trusted_paths=()))
        self.assertEqual(
            rendered, SPEC_OUTPUT.replace('[projects."/tmp"]\ntrust_level = "trusted"\n\n', "")
        )

    def test_duplicate_trusted_path_written_once(self) -> None:
        """
        A trusted path given twice is written once, at its first position (two equal tables are
        invalid TOML).
        """
        rendered = render_config_toml(replace(SPEC_INPUT, trusted_paths=("/a", "/b", "/a")))
        self.assertEqual(rendered.count('[projects."/a"]'), 1)
        self.assertLess(rendered.index('"/a"'), rendered.index('"/b"'))
        self.assertEqual(list(tomllib.loads(rendered)["projects"]), ["/a", "/b"])

    def test_empty_env_key_omitted(self) -> None:
        """
        An empty env key leaves the C{env_key} line out.
        """
        config = replace(SPEC_INPUT, provider=replace(SPEC_INPUT.provider, env_key=""))
        rendered = render_config_toml(config)
        self.assertEqual(rendered, SPEC_OUTPUT.replace('env_key = "CODEX_API_KEY"\n', ""))

    def test_every_combination_parses(self) -> None:
        """
        Every combination of the optional parts (env key, trusted paths 0/1/2, MCP section) is
        valid TOML with exactly the expected tables and no other keys.
        """
        assert SPEC_INPUT.mcp is not None
        for env_key in ("", "K"):
            for paths in ((), ("/tmp",), ("/w", "/d")):
                for mcp in (None, SPEC_INPUT.mcp):
                    config = replace(
                        SPEC_INPUT,
                        provider=replace(SPEC_INPUT.provider, env_key=env_key),
                        trusted_paths=paths,
                        mcp=mcp,
                    )
                    rendered = render_config_toml(config)
                    parsed = tomllib.loads(rendered)
                    self.assertTrue(rendered.endswith("\n\n"))
                    self.assertNotIn("\n\n\n", rendered)
                    expected_keys = {"model_provider", "model", "model_providers", "features"}
                    expected_keys |= {"projects"} if paths else set()
                    expected_keys |= {"mcp_servers"} if mcp else set()
                    self.assertEqual(set(parsed), expected_keys)
                    provider = parsed["model_providers"]["modelserver"]
                    self.assertEqual("env_key" in provider, bool(env_key))

    def test_provider_key_quoting(self) -> None:
        """
        Provider id C{my.provider} renders C{[model_providers."my.provider"]}; ids of letters,
        digits, C{_} and C{-} stay bare.
        """
        rendered = render_config_toml(replace(SPEC_INPUT, model_provider="my.provider"))
        self.assertIn('[model_providers."my.provider"]\nname = "my.provider"\n', rendered)
        self.assertIn('model_provider = "my.provider"\n', rendered)
        self.assertEqual(toml_key("my-provider_2"), "my-provider_2")
        self.assertEqual(toml_key("a b"), '"a b"')
        self.assertEqual(toml_key(""), '""')
        self.assertEqual(toml_key("é"), '"é"')

    def test_required_fields(self) -> None:
        """
        An empty provider id or model fails with the exact texts, provider first.
        """
        with self.assertRaises(ConfigInputError) as caught:
            render_config_toml(replace(SPEC_INPUT, model_provider="", model=""))
        self.assertEqual(str(caught.exception), "codexhome: ModelProvider required")
        with self.assertRaises(ConfigInputError) as caught:
            render_config_toml(replace(SPEC_INPUT, model=""))
        self.assertEqual(str(caught.exception), "codexhome: Model required")

    def test_string_rule(self) -> None:
        """
        Quotes, backslashes, the five short escapes, other C0 controls and U+007F are escaped as
        §6.2 says (lowercase hex); non-ASCII is written literally.
        """
        self.assertEqual(toml_string('a"b\\c'), '"a\\"b\\\\c"')
        self.assertEqual(toml_string("\b\t\n\f\r"), '"\\b\\t\\n\\f\\r"')
        self.assertEqual(toml_string("\x00\x01\x1b\x1f\x7f"), '"\\u0000\\u0001\\u001b\\u001f\\u007f"')
        self.assertEqual(toml_string("é ü 中 😀 \u0080 \u2028"), '"é ü 中 😀 \u0080 \u2028"')
        self.assertEqual(toml_string(""), '""')

    def test_hostile_token_round_trip(self) -> None:
        """
        A token containing C{"}, C{\\}, a newline and U+007F is escaped and parses back to itself.
        """
        assert SPEC_INPUT.mcp is not None
        token = 'a"b\\c\nd\x7fe'
        config = replace(SPEC_INPUT, mcp=replace(SPEC_INPUT.mcp, cap_token=token))
        rendered = render_config_toml(config)
        self.assertIn('CXG_WORKSPACE_TOKEN = "a\\"b\\\\c\\nd\\u007fe"', rendered)
        parsed = tomllib.loads(rendered)
        self.assertEqual(parsed["mcp_servers"]["agentserver"]["env"]["CXG_WORKSPACE_TOKEN"], token)

    def test_lone_surrogate_refused(self) -> None:
        """
        A lone surrogate (an undecodable byte from the environment) cannot be written as TOML and
        fails rendering.
        """
        self.assertRaises(ConfigInputError, toml_string, "bad\udcff")
        self.assertRaises(ConfigInputError, render_config_toml, replace(SPEC_INPUT, model="m\udcff"))

    def test_tokens_not_in_repr(self) -> None:
        """
        The MCP settings' C{repr} shows neither token.
        """
        self.assertNotIn("CAP", repr(SPEC_INPUT.mcp))
        self.assertNotIn("LOOP", repr(SPEC_INPUT))

    @settings(max_examples=300, deadline=None)
    @given(
        provider_id=st.text(min_size=1),
        model=st.text(min_size=1),
        base_url=st.text(),
        env_key=st.text(),
        wire_api=st.text(),
        paths=st.lists(st.text(), max_size=4),
        command=st.text(),
        workspace_id=st.text(),
        bridge_url=st.text(),
        loopback_url=st.text(),
        cap_token=st.text(),
        loopback_token=st.text(),
    )
    def test_any_strings_parse_back(
        self,
        provider_id: str,
        model: str,
        base_url: str,
        env_key: str,
        wire_api: str,
        paths: list[str],
        command: str,
        workspace_id: str,
        bridge_url: str,
        loopback_url: str,
        cap_token: str,
        loopback_token: str,
    ) -> None:
        """
        Whatever the strings, the rendered file parses with C{tomllib} back to the same values, and
        the layout rules hold (ends with C{\\n\\n}, sections in order).
        """
        mcp = McpSettings(command, workspace_id, bridge_url, loopback_url, cap_token, loopback_token)
        config = ConfigInput(
            model_provider=provider_id,
            model=model,
            provider=ProviderSettings(base_url, env_key, wire_api),
            trusted_paths=tuple(paths),
            mcp=mcp,
        )
        rendered = render_config_toml(config)
        self.assertTrue(rendered.endswith("\n\n"))
        parsed = tomllib.loads(rendered)
        self.assertEqual(parsed["model_provider"], provider_id)
        self.assertEqual(parsed["model"], model)
        provider = parsed["model_providers"][provider_id]
        expected_provider = {"name": provider_id, "base_url": base_url, "wire_api": wire_api}
        if env_key:
            expected_provider["env_key"] = env_key
        self.assertEqual(provider, expected_provider)
        self.assertEqual(
            parsed.get("projects", {}),
            {path: {"trust_level": "trusted"} for path in paths},
        )
        self.assertEqual(list(parsed.get("projects", {})), list(dict.fromkeys(paths)))
        self.assertEqual(
            parsed["features"],
            {"shell_tool": False, "unified_exec": False, "apply_patch_freeform": False},
        )
        if command:
            self.assertEqual(
                parsed["mcp_servers"],
                {
                    "agentserver": {
                        "command": command,
                        "args": mcp.args(),
                        "env": {"CXG_WORKSPACE_TOKEN": cap_token, "CXG_LOOPBACK_TOKEN": loopback_token},
                        "startup_timeout_sec": 30,
                        "tool_timeout_sec": 660,
                        "default_tools_approval_mode": "approve",
                    }
                },
            )
        else:
            self.assertNotIn("mcp_servers", parsed)


# -------------------------------------------------------------------------------------------------
# write_config


class WriteConfigTests(SynchronousTestCase):
    """
    L{write_config} writes C{<home>/config.toml} with mode 0600, atomically.
    """

    def setUp(self) -> None:
        """
        A fresh home directory.
        """
        self.home = os.path.abspath(self.mktemp())
        os.mkdir(self.home, 0o700)

    def test_mode_and_content(self) -> None:
        """
        The file has mode 0600 whatever the umask and holds the rendered text; model C{m} gives a
        line C{model = "m"}.
        """
        old = os.umask(0o000)
        self.addCleanup(os.umask, old)
        write_config(self.home, render_config_toml(replace(SPEC_INPUT, model="m")))
        path = os.path.join(self.home, "config.toml")
        self.assertEqual(mode_of(path), 0o600)
        with open(path, encoding="utf-8") as f:
            self.assertIn('model = "m"\n', f.read())
        self.assertEqual(os.listdir(self.home), ["config.toml"])

    def test_replaces_existing(self) -> None:
        """
        An existing C{config.toml} (a restored copy, mode 0644) is replaced, and the result has mode
        0600; no temporary file remains.
        """
        path = os.path.join(self.home, "config.toml")
        with open(path, "w") as f:
            f.write("old = true\n" * 100)
        os.chmod(path, 0o644)
        write_config(self.home, "new = 1\n")
        with open(path) as f:
            self.assertEqual(f.read(), "new = 1\n")
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(os.listdir(self.home), ["config.toml"])

    def test_replaces_symlink_not_target(self) -> None:
        """
        A symlink named C{config.toml} is replaced by a regular file; the file it pointed at is
        never written.
        """
        victim = os.path.abspath(self.mktemp())
        with open(victim, "w") as f:
            f.write("victim")
        os.symlink(victim, os.path.join(self.home, "config.toml"))
        write_config(self.home, "x = 1\n")
        self.assertFalse(os.path.islink(os.path.join(self.home, "config.toml")))
        with open(victim) as f:
            self.assertEqual(f.read(), "victim")

    def test_non_utf8_roundtrip(self) -> None:
        """
        Non-ASCII text is written as UTF-8.
        """
        write_config(self.home, 'model = "中"\n')
        with open(os.path.join(self.home, "config.toml"), "rb") as f:
            self.assertEqual(f.read(), 'model = "中"\n'.encode())

    def test_missing_home(self) -> None:
        """
        A missing home fails with L{OSError} and creates nothing.
        """
        missing = os.path.join(self.home, "missing")
        self.assertRaises(OSError, write_config, missing, "x = 1\n")
        self.assertFalse(os.path.exists(missing))

    def test_symlinked_home_refused(self) -> None:
        """
        A home that is a symlink is refused (nothing is written through it).
        """
        real = os.path.abspath(self.mktemp())
        os.mkdir(real)
        link = os.path.join(self.home, "link")
        os.symlink(real, link)
        self.assertRaises(OSError, write_config, link, "x = 1\n")
        self.assertEqual(os.listdir(real), [])
