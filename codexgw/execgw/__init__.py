"""
The exec gateway (C{twist codexgw-exec}, C{exec-gateway.md}): a rendezvous router between executors and
bridge clients, with its store of executors and workspace bindings, the executor registry, inbound
executor websockets, multiplexed bridges, the admin and internal APIs, the byte relay and the SDK REST
surface.
"""
