"""
env-mcp (C{app-gateway.md} §9): the stdio MCP server codex starts as C{codexgw env-mcp …}. It serves
the environment tools of L{codexgw.envtools} to the model and reaches executors through the exec
gateway's C{/bridge/{exe_id}}.

 - L{codexgw.envmcp.cli}: the command line (§9.1), the wiring of one envtools context, and the exit
   rules;
 - L{codexgw.envmcp.server}: MCP over newline-delimited JSON-RPC (§9.2), independent of the stdio
   transport;
 - L{codexgw.envmcp.hooks}: the three envtools hooks bound over HTTP to the app gateway's loopback
   C{/internal/*} routes (§9.4, §9.6, §9.8).

Boundary: env-mcp imports L{codexgw.envtools} and the shared codecs, never the app gateway package; it
talks to the app gateway over HTTP only.
"""
