"""
Tests for L{codexgw.executor.config} and L{codexgw.executor.plugin}'s options: C{executor.md} §1.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from codexgw.config import ConfigError
from codexgw.executor.config import load_config
from codexgw.executor.plugin import ExecutorOptions, build_service, executor_maker
from codexgw.executor.service import ExecutorService
from codexgw.plugin import ServiceOptions


def executable(directory: Path, name: str = "codex") -> Path:
    """
    An executable file C{name} in C{directory}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


class LoadConfigTests(SynchronousTestCase):
    """
    L{load_config}: values, fallbacks and the exact messages, in order.
    """

    def setUp(self) -> None:
        """
        A codex on a private C{PATH}, a home, a token, and the required options.
        """
        self.root = Path(self.mktemp()).absolute()
        self.bin = self.root / "bin"
        self.codex = executable(self.bin)
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(self.root / "home"),
            "CXG_EXECUTOR_TOKEN": "tok",
        }
        self.options: dict[str, str | None] = {
            "gateway": "http://gw:6060/",
            "executor-id": "exe_1",
            "token-env": None,
            "codex-bin": None,
            "state-dir": None,
            "max-streams": None,
        }

    def load(self, **changes: Any) -> Any:
        """
        Load with option changes (C{executor_id=...} for C{--executor-id}) on L{env}.
        """
        options = dict(self.options)
        for key, value in changes.items():
            options[key.replace("_", "-")] = value
        return load_config(options, self.env)

    def assertFails(self, message: str, **changes: Any) -> None:
        """
        Loading fails with exactly C{message}.
        """
        with self.assertRaises(ConfigError) as caught:
            self.load(**changes)
        self.assertEqual(str(caught.exception), message)

    def test_defaults(self) -> None:
        """
        Only the gateway, the id and the token given: trailing C{/} removed, codex found on C{PATH},
        state dir C{~/.codexgw-executor} created with mode 0700, 32 streams, log level info; the
        token is not in the C{repr}.
        """
        config = self.load()
        self.assertEqual(
            (config.gateway, config.executor_id, config.token, config.token_env),
            ("http://gw:6060", "exe_1", "tok", "CXG_EXECUTOR_TOKEN"),
        )
        self.assertEqual(config.codex_bin, str(self.codex))
        self.assertEqual(config.state_dir, self.root / "home" / ".codexgw-executor")
        self.assertEqual(stat.S_IMODE(config.state_dir.stat().st_mode), 0o700)
        self.assertEqual((config.max_streams, config.log_level), (32, "info"))
        self.assertNotIn("tok", repr(config).replace("token_env", ""))

    def test_environment_fallbacks(self) -> None:
        """
        Without options, C{CXG_EXECUTOR_GATEWAY}, C{CXG_EXECUTOR_ID}, C{CXG_CODEX_BIN} and
        C{CXG_EXECUTOR_STATE_DIR} are used; given options win over them.
        """
        other = executable(self.root / "other")
        self.env.update(
            {
                "CXG_EXECUTOR_GATEWAY": "https://env-gw",
                "CXG_EXECUTOR_ID": "exe_env",
                "CXG_CODEX_BIN": str(other),
                "CXG_EXECUTOR_STATE_DIR": str(self.root / "env-state"),
            }
        )
        config = self.load(gateway=None, executor_id="")
        self.assertEqual(
            (config.gateway, config.executor_id, config.codex_bin, config.state_dir),
            ("https://env-gw", "exe_env", str(other), self.root / "env-state"),
        )
        config = self.load(codex_bin=str(self.codex), state_dir=str(self.root / "opt-state"))
        self.assertEqual(
            (config.gateway, config.codex_bin, config.state_dir),
            ("http://gw:6060", str(self.codex), self.root / "opt-state"),
        )

    def test_messages_in_order(self) -> None:
        """
        Each rule's exact message, and the first failure wins (gateway, id, token, codex, streams).
        """
        self.assertFails("--gateway is required", gateway=None, executor_id=None)
        self.assertFails(
            '--gateway must use http:// or https:// scheme, got "ws://gw"', gateway="ws://gw"
        )
        self.assertFails("--executor-id is required", executor_id=None, codex_bin="nope")
        del self.env["CXG_EXECUTOR_TOKEN"]
        self.assertFails(
            "env var CXG_EXECUTOR_TOKEN is empty; cannot register executor", codex_bin="nope"
        )
        self.env["CXG_EXECUTOR_TOKEN"] = ""
        self.assertFails("env var CXG_EXECUTOR_TOKEN is empty; cannot register executor")
        self.env["CXG_EXECUTOR_TOKEN"] = "tok"
        self.assertFails(
            'codex binary "nope" not found or not executable', codex_bin="nope", max_streams="x"
        )
        self.assertFails('--max-streams must be an integer, got "x"', max_streams="x")
        self.assertFails("--max-streams must be >= 1, got 0", max_streams="0")
        self.assertFalse((self.root / "home").exists())

    def test_token_env(self) -> None:
        """
        C{--token-env} names another variable; it must be set and not empty.
        """
        self.env["MY_TOKEN"] = "other"
        self.assertEqual(self.load(token_env="MY_TOKEN").token, "other")
        self.assertEqual(self.load(token_env="MY_TOKEN").token_env, "MY_TOKEN")
        self.assertFails(
            "env var UNSET_TOKEN is empty; cannot register executor", token_env="UNSET_TOKEN"
        )

    def test_codex_bin(self) -> None:
        """
        A name is looked up on C{PATH}; a value with C{/} is used as a path; a directory, a file that
        is not executable and a missing path are refused.
        """
        self.assertEqual(self.load(codex_bin="codex").codex_bin, str(self.codex))
        self.assertEqual(self.load(codex_bin=str(self.codex)).codex_bin, str(self.codex))
        plain = self.root / "plain"
        plain.write_text("x")
        plain.chmod(0o644)
        for value in (str(plain), str(self.bin), str(self.root / "missing"), "missing-name"):
            self.assertFails(f'codex binary "{value}" not found or not executable', codex_bin=value)

    def test_state_dir(self) -> None:
        """
        A missing state dir is made with its missing parents, each 0700; an existing one is set to
        0700; a file, or a place that cannot be written, is refused.
        """
        deep = self.root / "a" / "b" / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.load(state_dir=str(deep))
        for path in (deep, deep.parent, deep.parent.parent):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o700)
        deep.chmod(0o755)
        self.load(state_dir=str(deep))
        self.assertEqual(stat.S_IMODE(config.state_dir.stat().st_mode), 0o700)
        afile = self.root / "afile"
        afile.write_text("")
        self.assertFails(f'state dir "{afile}" is not usable: not a directory', state_dir=str(afile))
        if os.geteuid() != 0:  # root may write anywhere
            locked = self.root / "locked"
            locked.mkdir(mode=0o500)
            self.addCleanup(locked.chmod, 0o700)
            with self.assertRaises(ConfigError):
                self.load(state_dir=str(locked / "x"))

    def test_relative_state_dir(self) -> None:
        """
        A relative state dir becomes absolute.
        """
        self.assertTrue(self.load(state_dir=str(Path(self.mktemp()))).state_dir.is_absolute())

    def test_log_level(self) -> None:
        """
        C{CXG_LOG_LEVEL} is read like the exec gateway reads it.
        """
        for raw, level in (("DEBUG", "debug"), ("warn", "warn"), ("loud", "info"), ("", "info")):
            self.env["CXG_LOG_LEVEL"] = raw
            self.assertEqual(self.load().log_level, level)


class OptionsTests(SynchronousTestCase):
    """
    L{ExecutorOptions}: the C{twist} options.
    """

    def setUp(self) -> None:
        """
        A private environment and a captured stderr.
        """
        root = Path(self.mktemp()).absolute()
        self.codex = executable(root / "bin")
        self.state = root / "state"
        self.patch(os, "environ", {"CXG_EXECUTOR_TOKEN": "tok", "PATH": str(root / "bin")})
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_parse(self) -> None:
        """
        The options parse into a configuration; the executor has no C{--listen}, the exec gateway
        still has it.
        """
        options = ExecutorOptions()
        options.parseOptions(
            [
                "--gateway",
                "http://g",
                "--executor-id",
                "e",
                "--state-dir",
                str(self.state),
                "--max-streams",
                "3",
            ]
        )
        self.assertEqual((options.config.gateway, options.config.max_streams), ("http://g", 3))
        self.assertNotIn("listen", options)
        self.assertIn("listen", ServiceOptions())
        self.assertIs(executor_maker.options, ExecutorOptions)
        self.assertEqual(executor_maker.tapname, "codexgw-executor")

    def test_config_error_exits_64(self) -> None:
        """
        A configuration error exits with status 64 and C{config: <message>} on stderr.
        """
        with self.assertRaises(SystemExit) as caught:
            ExecutorOptions().parseOptions(["--executor-id", "e"])
        self.assertEqual(caught.exception.code, 64)
        self.assertEqual(self.stderr.getvalue(), "config: --gateway is required\n")

    def test_build_service(self) -> None:
        """
        The real wiring builds an L{ExecutorService} without starting anything.
        """
        from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

        options = ExecutorOptions()
        options.parseOptions(
            ["--gateway", "http://g", "--executor-id", "e", "--state-dir", str(self.state)]
        )
        service = build_service(options.config, MemoryReactorClock(), {"CXG_X": "1"})
        self.assertIsInstance(service, ExecutorService)
        self.assertEqual(service.multiplexer.max_streams, 32)


class TwistTests(SynchronousTestCase):
    """
    The installed plugin.
    """

    def test_twist_lists_plugins(self) -> None:
        """
        C{twist --help} lists codexgw-executor next to codexgw-exec.
        """
        twist = Path(sys.executable).parent / "twist"
        done = subprocess.run([twist, "--help"], capture_output=True, text=True, timeout=60, check=True)
        self.assertIn("codexgw-executor", done.stdout)
        self.assertIn("codexgw-exec ", done.stdout)
