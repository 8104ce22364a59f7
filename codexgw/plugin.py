"""
The C{twist} plugins' shared parts: option parsing that validates configuration before anything
listens (C{delivery.md} §3).

Each plugin's options load its service's configuration in C{postOptions} — from the environment
(L{ServiceOptions}, which adds C{--listen}) or from options of its own and the environment (a
L{ConfigOptions} subclass overriding C{load_config}, as the executor does); the first failure prints
C{config: <message>} on stderr and exits with status 64, so C{twist} never starts a half-configured
service. A configuration's C{log_level} (C{CXG_LOG_LEVEL}) becomes twist's
log level unless C{twist --log-level} chose a level other than the default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.application.service import IService, IServiceMaker
from twisted.logger import LogLevel
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from codexgw.cli import EXIT_CONFIG
from codexgw.config import ConfigError

_Config = TypeVar("_Config")


class ConfigOptions(usage.Options, Generic[_Config]):
    """
    C{twist} options of one program whose configuration is validated while the options are parsed.

    A subclass declares its own C{optParameters} (C{usage.Options} gathers them along the class
    hierarchy, so this base declares none) and either sets C{load} (configuration from the environment
    only) or overrides L{load_config} (configuration from its options and the environment).

    @ivar config: the validated configuration, after parsing.
    """

    load: Callable[[dict[str, str]], _Config]
    config: _Config

    def load_config(self, environ: dict[str, str]) -> _Config:
        """
        Read and validate the configuration.

        @raise ConfigError: at the first failure.
        """
        return type(self).load(environ)

    def postOptions(self) -> None:
        """
        Validate the configuration; exit 64 with C{config: <message>} on the first failure.
        """
        try:
            self.config = self.load_config(dict(os.environ))
        except ConfigError as e:
            sys.stderr.write(f"config: {e}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_CONFIG) from None
        self._apply_log_level()

    def _apply_log_level(self) -> None:
        # CXG_LOG_LEVEL sets twist's log level unless --log-level chose another than the default.
        # twist reads its options (our parent) only after the plugin's options are parsed.
        level = getattr(self.config, "log_level", None)
        parent = getattr(self, "parent", None)
        if level is None or parent is None or "logLevel" not in parent:
            return
        if parent["logLevel"] == getattr(parent, "defaultLogLevel", LogLevel.info):
            # The specs' level names (debug, info, warn, error) are twisted.logger's own.
            parent["logLevel"] = LogLevel.levelWithName(level)


class ServiceOptions(ConfigOptions[_Config]):
    """
    C{twist} options of one listening service: C{--listen}, plus the configuration read from C{CXG_*}.
    """

    optParameters = [  # noqa: RUF012 (usage.Options reads this class attribute)
        ["listen", None, None, "Twisted server endpoint to listen on (overrides CXG_PORT)."],
    ]


_Options = TypeVar("_Options", bound=ConfigOptions[Any])


@implementer(IServiceMaker, IPlugin)
class ServiceMaker(Generic[_Options]):
    """
    An C{IServiceMaker} built from a name, options and a function making the service.
    """

    def __init__(
        self,
        tapname: str,
        description: str,
        options: type[_Options],
        make: Callable[[_Options], IService],
    ) -> None:
        self.tapname = tapname
        self.description = description
        self.options = options
        self._make = make

    def makeService(self, options: Any) -> IService:
        """
        Build the service from parsed options.
        """
        return self._make(options)
