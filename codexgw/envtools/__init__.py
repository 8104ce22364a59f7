"""
The environment tools of codexgw (C{envtools.md}): the tools that act on executors, the name
resolver, the exec-session table and the bridge client that carries codex exec-server JSON-RPC through
the exec gateway's C{/bridge/{exe_id}}. Shared by env-mcp (C{codexgw.envmcp}) and the exec gateway's
SDK surface.
"""
