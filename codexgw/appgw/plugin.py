"""
The C{twist codexgw-app} plugin: options (C{app-gateway.md} §2) and service factory.

C{--listen-addr} (default C{:8086}) and C{--codex-bin} (default C{codex}); C{CXG_LISTEN_ADDR} /
C{CXG_CODEX_BIN} replace them only when they were left at their defaults. Everything else comes from
C{CXG_*} variables, validated while C{twist} parses the options (failure: exit 64, C{config: …}).
"""

from __future__ import annotations

from twisted.application.service import IService

from codexgw.appgw.config import AppGatewayConfig, load_config
from codexgw.appgw.service import AppGatewayService
from codexgw.plugin import ConfigOptions, ServiceMaker


class AppGatewayOptions(ConfigOptions[AppGatewayConfig]):
    """
    C{twist codexgw-app [--listen-addr ADDR] [--codex-bin PATH]}.
    """

    optParameters = [  # noqa: RUF012 (usage.Options reads this class attribute)
        ["listen-addr", None, None, "host:port to listen on (default :8086; env CXG_LISTEN_ADDR)."],
        ["codex-bin", None, None, "codex binary (default codex; env CXG_CODEX_BIN)."],
    ]

    def load_config(self, environ: dict[str, str]) -> AppGatewayConfig:
        """
        Validate the §2 table with the options' values.
        """
        return load_config(environ, self["listen-addr"], self["codex-bin"])


def make_service(options: AppGatewayOptions) -> IService:
    """
    Build the app gateway service on the global reactor.
    """
    from twisted.internet import reactor  # noqa: PLC0415 (twist installs the reactor first)

    return AppGatewayService(options.config, reactor)


app_gateway_maker = ServiceMaker(
    "codexgw-app",
    "codexgw app gateway: codex TUI proxy, app-server supervisor and Turn API",
    AppGatewayOptions,
    make_service,
)
