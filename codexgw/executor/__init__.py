"""
The executor agent, C{twist codexgw-executor} (C{executor.md}): it dials out to the exec gateway and
serves every bridge stream routed to it with a real C{codex exec-server --listen stdio} child.

Layers, from the wire inwards (imports flow one way, and nothing here imports either gateway):
 - L{codexgw.executor.connection}: the Autobahn websocket client, adapted to L{IRelayLink};
 - L{codexgw.executor.multiplexer}: the stream multiplexer, the protocol logic of C{executor.md} §3–§4,
   which speaks only to an L{IRelayLink} and to L{IExecServerChild}ren;
 - L{codexgw.executor.child}: the exec-server child process behind L{IExecServerChild};
 - L{codexgw.executor.proctree}: process-tree bookkeeping that keeps children from leaking;
 - L{codexgw.executor.registration} and L{codexgw.executor.backoff}: how the agent gets a ticket URL;
 - L{codexgw.executor.service}: the reconnecting service tying them together;
 - L{codexgw.executor.config} and L{codexgw.executor.plugin}: options and the C{twist} plugin.
"""
