"""
The C{twist codexgw-dev} plugin: the all-in-one dev stack (C{delivery.md} §3.2, L{codexgw.dev}).

It takes no options: everything comes from C{CXG_*} variables and the embedded defaults, validated
while C{twist} parses the (empty) options, so a failure exits 64 with C{config: <message>} before
anything listens. L{codexgw.dev} is imported only when the plugin is used, so that listing the
plugins (C{twist --help}) never loads the dev stack and the fakes it ships with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.application.service import IService

from codexgw.plugin import ConfigOptions, ServiceMaker

if TYPE_CHECKING:
    from codexgw.dev import DevConfig


class DevOptions(ConfigOptions["DevConfig"]):
    """
    C{twist codexgw-dev}: no options of its own.
    """

    def load_config(self, environ: dict[str, str]) -> DevConfig:
        """
        Prepare C{./var} and validate the three programs' configurations.
        """
        from codexgw.dev import load_dev_config  # noqa: PLC0415 (see the module docstring)

        return load_dev_config(environ, Path.cwd())


def make_service(options: DevOptions) -> IService:
    """
    Build the dev stack on the global reactor.
    """
    from twisted.internet import reactor  # noqa: PLC0415 (twist installs the reactor first)

    from codexgw.dev import DevStackService  # noqa: PLC0415 (see the module docstring)

    return DevStackService(options.config, reactor, dict(os.environ))


dev_maker = ServiceMaker(
    "codexgw-dev",
    "codexgw dev stack: exec gateway, app gateway and a local executor in one process",
    DevOptions,
    make_service,
)
