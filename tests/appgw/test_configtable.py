"""
Tests for L{codexgw.config.Variable} and L{codexgw.config.load_variables} and the app gateway's
shared parsers (L{codexgw.appgw.configtable}): the row type, the loader (empty means unset, defaults
parsed, cross-row checks at their row) and the shared parsers. Pure: dictionaries stand for the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.configtable import absolute_path, flag, positive_integer, text
from codexgw.config import ConfigError, Variable, documentation, load_variables


def _must_differ(values: Mapping[str, Any]) -> None:
    if values["a"] == values["b"]:
        raise ConfigError("CXG_B must differ from CXG_A")


ROWS = (
    Variable("CXG_A", "1", False, "first", positive_integer),
    Variable("CXG_B", None, False, "second", lambda name, raw: int(raw), _must_differ),
    Variable("CXG_C", None, True, "third", text),
)


class LoadVariablesTests(SynchronousTestCase):
    """
    L{load_variables} validates rows in order.
    """

    def test_values(self) -> None:
        """
        Set rows are parsed; unset rows take their default (parsed) or C{None}; attributes are the
        names without C{CXG_}, lowercased.
        """
        self.assertEqual(load_variables({"CXG_C": "x"}, ROWS), {"a": 1, "b": None, "c": "x"})
        self.assertEqual(ROWS[0].attribute, "a")

    def test_empty_is_unset(self) -> None:
        """
        An empty value counts as unset: the default applies, and a required row fails.
        """
        with self.assertRaises(ConfigError) as caught:
            load_variables({"CXG_A": "", "CXG_C": ""}, ROWS)
        self.assertEqual(str(caught.exception), "CXG_C is required")

    def test_check_runs_at_its_row(self) -> None:
        """
        A row's cross-row check runs right after it, before later rows are looked at.
        """
        with self.assertRaises(ConfigError) as caught:
            load_variables({"CXG_A": "2", "CXG_B": "2"}, ROWS)
        self.assertEqual(str(caught.exception), "CXG_B must differ from CXG_A")

    def test_documentation(self) -> None:
        """
        The documentation tuple has C{(name, default, required, description)} per row.
        """
        self.assertEqual(
            documentation(ROWS),
            (("CXG_A", "1", False, "first"), ("CXG_B", None, False, "second"),
             ("CXG_C", None, True, "third")),
        )  # fmt: skip


class ParserTests(SynchronousTestCase):
    """
    The shared parsers of §2.
    """

    def test_positive_integer(self) -> None:
        """
        Integers ≥ 1 pass; zero, negatives, non-integers and out-of-range values fail with the
        §2 #20 message.
        """
        self.assertEqual(positive_integer("CXG_N", "64"), 64)
        for raw in ("0", "-1", "x", "1.5", " 1", "", "9" * 25):
            with self.assertRaises(ConfigError) as caught:
                positive_integer("CXG_N", raw)
            self.assertEqual(str(caught.exception), f'CXG_N must be a positive integer, got "{raw}"')

    def test_flag(self) -> None:
        """
        Only C{true} (any case) is true.
        """
        self.assertTrue(flag("F", "TRUE"))
        self.assertFalse(flag("F", "on"))

    def test_absolute_path(self) -> None:
        """
        Relative paths are joined to the working directory and normalised lexically.
        """
        self.assertEqual(absolute_path("P", "x/./y/../z"), os.path.join(os.getcwd(), "x", "z"))
        self.assertEqual(absolute_path("P", "/a//b/"), "/a/b")

    def test_text(self) -> None:
        """
        Text is taken as it is (no trimming).
        """
        self.assertEqual(text("T", " a "), " a ")
