"""
The C{twist codexgw-exec} plugin: options and service factory.
"""

from __future__ import annotations

from twisted.application.service import IService

from codexgw.execgw.config import ExecGatewayConfig, load_config
from codexgw.execgw.service import ExecGatewayService
from codexgw.plugin import ServiceMaker, ServiceOptions


class ExecGatewayOptions(ServiceOptions[ExecGatewayConfig]):
    """
    C{twist codexgw-exec [--listen ENDPOINT]}; everything else comes from C{CXG_*} variables.
    """

    load = staticmethod(load_config)


def make_service(options: ServiceOptions[ExecGatewayConfig]) -> IService:
    """
    Build the exec gateway service on the global reactor.
    """
    from twisted.internet import reactor  # noqa: PLC0415 (twist installs the reactor first)

    config = options.config
    return ExecGatewayService(config, options["listen"] or config.listen_endpoint, reactor)


exec_gateway_maker = ServiceMaker(
    "codexgw-exec",
    "codexgw exec gateway: executor registry, inbound executor websockets and bridges",
    ExecGatewayOptions,
    make_service,
)
