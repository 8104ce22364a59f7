"""
Tests that the README says what the repository does (C{delivery.md} §4, §6): the Quick start is the
two Makefile commands, the configuration reference is the one generated from the code, and the
benchmark section quotes the committed results.

Decisions:
 - Sections are the README's C{## } headings; a section's commands are the lines of its fenced code
   blocks, without comments.
 - Makefile targets are read from the Makefile's rule lines (C{name: prerequisites}, not C{:=}
   assignments), which is all the Makefile uses; C{make} itself is not run (C{make -n dev} would
   still install).
 - "The latest numbers" means every table row of every C{bench/results/*.md} appears verbatim in the
   Benchmarks section, so a new benchmark run without a README update fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from twisted.trial.unittest import SynchronousTestCase

from bench.__main__ import BENCHMARKS
from codexgw import configdoc
from tests.support import REPO_ROOT

README: Final = REPO_ROOT / "README.md"
MAKEFILE: Final = REPO_ROOT / "Makefile"
RESULTS: Final = REPO_ROOT / "bench" / "results"

_RULE = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", re.M)
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)
_MAKE = re.compile(r"(?:^|[\s`(])make\s+([a-z][a-z0-9_-]*)")


def readme() -> str:
    """
    The README's text.
    """
    return README.read_text(encoding="utf-8")


def section(title: str, text: str | None = None) -> str:
    """
    The body of the README's C{## title} section, up to the next C{## } heading.
    """
    text = readme() if text is None else text
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found is not None, f"no section {title!r}"
    return found.group(1)


def commands(text: str) -> list[str]:
    """
    The commands in C{text}'s fenced code blocks: non-empty lines with any C{#} comment removed.
    """
    lines = []
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


def make_targets() -> set[str]:
    """
    The targets the Makefile defines.
    """
    targets: set[str] = set()
    for names in _RULE.findall(MAKEFILE.read_text(encoding="utf-8")):
        targets.update(names.split())
    return targets


class HelpersTests(SynchronousTestCase):
    """
    The small parsers this module relies on.
    """

    def test_section(self) -> None:
        """
        L{section} returns one section's body, whether another follows or not.
        """
        text = "# T\n## A\na\n### A.1\nx\n## B\nb\n"
        self.assertEqual(section("A", text), "a\n### A.1\nx\n")
        self.assertEqual(section("B", text), "b\n")

    def test_commands(self) -> None:
        """
        L{commands} reads fenced code blocks only and drops comments and blank lines.
        """
        text = "make nope\n```sh\nmake dev   # start\n\n# only a comment\n```\n"
        self.assertEqual(commands(text), ["make dev"])

    def test_makeTargets(self) -> None:
        """
        Rule lines are targets; variable assignments are not.
        """
        self.assertTrue({"install", "dev", "test", "lint", "bench"} <= make_targets())
        self.assertNotIn("VENV", make_targets())
        self.assertNotIn("CODEX_VERSION", make_targets())


class QuickStartTests(SynchronousTestCase):
    """
    The Quick start is exactly C{make dev} and C{make test}, and both exist.
    """

    def test_exactlyTwoCommands(self) -> None:
        """
        The Quick start's code holds the two commands of C{delivery.md} §4 and nothing else.
        """
        self.assertEqual(commands(section("Quick start")), ["make dev", "make test"])

    def test_commandsAreMakeTargets(self) -> None:
        """
        C{dev} and C{test} are targets of the Makefile.
        """
        self.assertTrue({"dev", "test"} <= make_targets())

    def test_everyMakeCommandExists(self) -> None:
        """
        Every C{make <target>} the README mentions is a Makefile target.
        """
        mentioned = set(_MAKE.findall(readme()))
        self.assertIn("install", mentioned)
        self.assertEqual(mentioned - make_targets(), set())


class ConfigurationReferenceTests(SynchronousTestCase):
    """
    The README's configuration reference is the generated one.
    """

    def test_current(self) -> None:
        """
        The text between the markers equals L{configdoc.reference}; when this fails, run
        C{python -m codexgw.configdoc --write README.md}.
        """
        self.assertEqual(configdoc.extract(readme()), configdoc.reference())

    def test_inItsSection(self) -> None:
        """
        The generated text sits in the Configuration reference section.
        """
        self.assertIn(configdoc.BEGIN_MARKER, section("Configuration reference"))
        self.assertIn(configdoc.END_MARKER, section("Configuration reference"))


class BenchmarksTests(SynchronousTestCase):
    """
    The Benchmarks section names every committed result and quotes its numbers.
    """

    def results(self) -> list[Path]:
        """
        The committed Markdown results.
        """
        return sorted(RESULTS.glob("*.md"))

    def test_everyBenchmarkHasResults(self) -> None:
        """
        Each benchmark C{make bench} runs has a committed Markdown result.
        """
        self.assertEqual({path.stem for path in self.results()}, set(BENCHMARKS))

    def test_namesResultsFiles(self) -> None:
        """
        The section names each results file by its path.
        """
        text = section("Benchmarks")
        for path in self.results():
            self.assertIn(f"`bench/results/{path.name}`", text)

    def test_quotesLatestNumbers(self) -> None:
        """
        Every table row of every results file appears in the section as it is.
        """
        text = section("Benchmarks")
        for path in self.results():
            rows = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.startswith("|") and not line.startswith("|---")
            ]
            self.assertTrue(rows, path)
            for row in rows:
                self.assertIn(row + "\n", text, f"{path.name}: {row}")
