"""
The far end of the bridge benchmark, run as its own process so it never shares a core's time slice
with the client that measures.

 - C{python -m bench.echo serve}: a plain Autobahn websocket server on 127.0.0.1 that sends every
   binary message back (the baseline). Prints C{PORT <n>} once listening.
 - C{python -m bench.echo executor <ws url>}: an executor that dials the exec gateway's inbound URL and
   sends every Data frame back unchanged, so it returns to the bridge of its stream. Prints
   C{CONNECTED} once the websocket is open.
"""

# Autobahn and Twisted's reactor APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import sys
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
    connectWS,
)
from twisted.internet import reactor

from codexgw import relayframe
from codexgw.relayframe import Body

_reactor: Any = reactor


class EchoServerProtocol(WebSocketServerProtocol):
    """
    Send every binary message back.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Echo.
        """
        if isBinary:
            self.sendMessage(payload, isBinary=True)


class EchoExecutorProtocol(WebSocketClientProtocol):
    """
    An executor that answers each Data frame with the same frame.
    """

    def onOpen(self) -> None:
        """
        Tell the benchmark we are connected.
        """
        print("CONNECTED", flush=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Echo Data frames; ignore Resume, Reset and the rest.
        """
        if isBinary and relayframe.peek(payload).body is Body.DATA:
            self.sendMessage(payload, isBinary=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The benchmark is over when the gateway goes away.
        """
        if _reactor.running:
            _reactor.stop()


def _options(factory: Any) -> None:
    factory.setProtocolOptions(
        maxFramePayloadSize=0, maxMessagePayloadSize=0, autoPingInterval=0, openHandshakeTimeout=10
    )


def main(argv: list[str]) -> int:
    """
    Run one of the two modes until killed.
    """
    if argv[:1] == ["serve"]:
        server = WebSocketServerFactory()
        server.protocol = EchoServerProtocol
        _options(server)
        port = _reactor.listenTCP(0, server, interface="127.0.0.1")
        print(f"PORT {port.getHost().port}", flush=True)
    elif argv[:1] == ["executor"] and len(argv) == 2:
        client = WebSocketClientFactory(argv[1])
        client.protocol = EchoExecutorProtocol
        _options(client)
        connectWS(client)
    else:
        print("usage: python -m bench.echo serve | executor <ws url>", file=sys.stderr)
        return 2
    _reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
