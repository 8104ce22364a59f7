"""
Tests that the installed environment is what the services need (C{delivery.md} §1–§2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import autobahn.websocket
from twisted.trial.unittest import SynchronousTestCase

from tests.support import codex_binary


class InstallationTests(SynchronousTestCase):
    """
    The venv runs C{twist}, Autobahn's accelerator is active and the pinned codex is present.
    """

    def test_twistHelp(self) -> None:
        """
        C{twist --help} runs in the installed environment and lists every codexgw service.
        """
        twist = Path(sys.executable).parent / "twist"
        done = subprocess.run(
            [twist, "--help"], capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("Usage: twist", done.stdout)
        for plugin in ("codexgw-app", "codexgw-exec", "codexgw-executor", "codexgw-dev"):
            self.assertIn(plugin, done.stdout)

    def test_autobahnNVX(self) -> None:
        """
        Autobahn's NVX C extension (UTF-8 validation and masking) is active.
        """
        self.assertTrue(autobahn.websocket.USES_NVX)

    def test_pinnedCodex(self) -> None:
        """
        The codex binary the tests use is the pinned native 0.169.0.
        """
        done = subprocess.run([codex_binary(), "--version"], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.stdout.strip(), "codex-cli 0.169.0")
