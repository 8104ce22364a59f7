"""
Tests for L{codexgw.configdoc}: the generated configuration reference covers each program's real
configuration, and its command keeps a document's copy current.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from codexgw import configdoc
from codexgw.appgw import config as appgw_config
from codexgw.config import ConfigError
from codexgw.execgw import config as execgw_config
from codexgw.executor import config as executor_config
from codexgw.executor.plugin import ExecutorOptions


class ProgramTablesTests(SynchronousTestCase):
    """
    L{configdoc.program_tables} is the programs' own configuration.
    """

    def table(self, program: str) -> configdoc.ProgramTable:
        """
        The table of C{program}.
        """
        (found,) = [t for t in configdoc.program_tables() if t.program == program]
        return found

    def test_gatewaysUseTheirTables(self) -> None:
        """
        The gateways' rows are their configuration tables, in validation order.
        """
        self.assertEqual(self.table("codexgw-exec").rows, execgw_config.CONFIG_VARIABLES)
        self.assertEqual(
            [row[0] for row in self.table("codexgw-app").rows],
            [v.name for v in appgw_config.VARIABLES],
        )

    def test_executorOptionsCovered(self) -> None:
        """
        Every option of C{twist codexgw-executor} has a row.
        """
        options = {f"--{p[0]}" for p in ExecutorOptions.optParameters}
        rows = {r.option for r in self.table("codexgw-executor").executor_rows if r.option}
        self.assertEqual(rows, options)

    def test_variablesRead(self) -> None:
        """
        L{configdoc.variables_read} names each program's variables; an unknown program is an error.
        """
        self.assertEqual(
            configdoc.variables_read("codexgw-exec"),
            {v.name for v in execgw_config.VARIABLES},
        )
        self.assertIn("CXG_S3_BUCKET", configdoc.variables_read("codexgw-app"))
        self.assertEqual(
            configdoc.variables_read("codexgw-executor"),
            {
                "CXG_EXECUTOR_GATEWAY",
                "CXG_EXECUTOR_ID",
                "CXG_EXECUTOR_TOKEN",
                "CXG_CODEX_BIN",
                "CXG_EXECUTOR_STATE_DIR",
                "CXG_LOG_LEVEL",
            },
        )
        self.assertRaises(KeyError, configdoc.variables_read, "codexgw-nothing")


class ExecutorRowsTests(SynchronousTestCase):
    """
    The executor's rows say what its C{load_config} does: each variable is its option's fallback and
    each default is the one applied.
    """

    def setUp(self) -> None:
        """
        A directory with an executable C{codex} and a C{HOME}.
        """
        self.root = Path(self.mktemp()).absolute()
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True)
        self.codex = self.bin / "codex"
        self.codex.write_text("#!/bin/sh\n")
        self.codex.chmod(0o755)
        self.home = self.root / "home"
        self.home.mkdir()
        self.rows = {r.option or r.variable: r for r in configdoc.executor_rows()}

    def load(self, environ: dict[str, str]) -> executor_config.ExecutorConfig:
        """
        Load a configuration from C{environ} alone (no option given).
        """
        return executor_config.load_config(
            {}, {"PATH": str(self.bin), "HOME": str(self.home), **environ}
        )

    def test_variablesAreFallbacks(self) -> None:
        """
        With no option given, each row's variable supplies its setting.
        """
        state = self.root / "state"
        config = self.load(
            {
                self.rows["--gateway"].variable or "": "http://gw:6060/",
                self.rows["--executor-id"].variable or "": "exe_x",
                self.rows["--token-env"].variable or "": "tok",
                self.rows["--codex-bin"].variable or "": str(self.codex),
                self.rows["--state-dir"].variable or "": str(state),
                "CXG_LOG_LEVEL": "DEBUG",
            }
        )
        self.assertEqual(
            (config.gateway, config.executor_id, config.token, config.codex_bin, config.state_dir),
            ("http://gw:6060", "exe_x", "tok", str(self.codex), state),
        )
        self.assertEqual(config.log_level, "debug")

    def test_defaults(self) -> None:
        """
        With neither option nor variable, the documented defaults apply, and the required rows are
        exactly the ones without which loading fails.
        """
        required = {
            "CXG_EXECUTOR_GATEWAY": "http://gw",
            "CXG_EXECUTOR_ID": "exe_x",
            "CXG_EXECUTOR_TOKEN": "t",
        }
        config = self.load(required)
        self.assertEqual(config.codex_bin, str(self.bin / str(self.rows["--codex-bin"].default)))
        state_dir = str(self.rows["--state-dir"].default)
        self.assertTrue(state_dir.startswith("~/"))
        self.assertEqual(config.state_dir, self.home / state_dir[2:])
        self.assertEqual(str(config.max_streams), self.rows["--max-streams"].default)
        self.assertEqual(config.log_level, self.rows["CXG_LOG_LEVEL"].default)
        self.assertEqual(
            {r.variable for r in self.rows.values() if r.required},
            set(required),
        )
        for variable in required:
            without = {k: v for k, v in required.items() if k != variable}
            self.assertRaises(ConfigError, self.load, without)


class RenderTests(SynchronousTestCase):
    """
    The Markdown rendering.
    """

    def test_gatewayRows(self) -> None:
        """
        A row shows its default (C{—} when required, C{unset} or C{empty} otherwise) and escapes C{|}.
        """
        table = configdoc.ProgramTable(
            "codexgw-x",
            "X",
            "`x.md` §2",
            rows=(
                ("CXG_A", None, True, "a | b"),
                ("CXG_B", None, False, "b"),
                ("CXG_C", "", False, "c"),
                ("CXG_D", "5m", False, "d"),
            ),
        )
        text = configdoc.render_table(table)
        self.assertIn("| `CXG_A` | — | yes | a \\| b |\n", text)
        self.assertIn("| `CXG_B` | unset | no | b |\n", text)
        self.assertIn("| `CXG_C` | empty | no | c |\n", text)
        self.assertIn("| `CXG_D` | `5m` | no | d |\n", text)
        self.assertTrue(text.startswith("### X\n\nDefined in `x.md` §2;"))

    def test_executorRows(self) -> None:
        """
        Executor rows show the variable and the option, C{—} for the one that is missing.
        """
        table = configdoc.ProgramTable(
            "codexgw-y",
            "Y",
            "`y.md` §1",
            executor_rows=(
                configdoc.ExecutorRow("CXG_A", "--a", None, "a"),
                configdoc.ExecutorRow(None, "--b", "3", "b"),
            ),
        )
        text = configdoc.render_table(table)
        self.assertIn("| `CXG_A` | `--a` | — | yes | a |\n", text)
        self.assertIn("| — | `--b` | `3` | no | b |\n", text)

    def test_referenceHasEveryProgram(self) -> None:
        """
        The reference has one section per program and names every variable.
        """
        text = configdoc.reference()
        for table in configdoc.program_tables():
            self.assertIn(f"### {table.title}\n", text)
            for name in table.variables:
                self.assertIn(f"`{name}`", text)


class MarkerTests(SynchronousTestCase):
    """
    Extracting and replacing the generated text between the markers, and the command.
    """

    def document(self, inner: str) -> str:
        """
        A README with C{inner} between the markers.
        """
        return f"# T\n\n{configdoc.BEGIN_MARKER}\n{inner}{configdoc.END_MARKER}\n\nafter\n"

    def test_extractReplace(self) -> None:
        """
        L{configdoc.replace} swaps the text between the markers and leaves the rest.
        """
        text = configdoc.replace(self.document("old\n"), "new\n")
        self.assertEqual(text, self.document("new\n"))
        self.assertEqual(configdoc.extract(text), "new\n")

    def test_markersMissing(self) -> None:
        """
        A document without both markers is refused.
        """
        self.assertRaises(configdoc.MarkersMissing, configdoc.extract, "# T\n")
        self.assertRaises(
            configdoc.MarkersMissing,
            configdoc.extract,
            f"{configdoc.END_MARKER}\n{configdoc.BEGIN_MARKER}\n",
        )

    def test_main(self) -> None:
        """
        C{--check} fails on a stale copy, C{--write} refreshes it, and without options the reference is
        printed.
        """
        path = Path(self.mktemp())
        path.write_text(self.document("stale\n"), encoding="utf-8")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(configdoc.main(["--check", str(path)]), 1)
        self.assertIn("stale", stderr.getvalue())
        self.assertEqual(configdoc.main(["--write", str(path)]), 0)
        self.assertEqual(configdoc.main(["--check", str(path)]), 0)
        self.assertEqual(path.read_text(encoding="utf-8"), self.document(configdoc.reference()))
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(configdoc.main([]), 0)
        self.assertEqual(stdout.getvalue(), configdoc.reference())

    def test_mainMissingFile(self) -> None:
        """
        A missing file or markers exit 1 with a message.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(configdoc.main(["--check", self.mktemp()]), 1)
        path = Path(self.mktemp())
        path.write_text("no markers\n", encoding="utf-8")
        self.assertEqual(configdoc.main(["--write", str(path)]), 1)
        self.assertIn("markers are missing", stderr.getvalue())
