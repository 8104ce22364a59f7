"""
The app gateway (twist codexgw-app): it proxies codex TUI websockets, supervises one C{codex
app-server} per workspace, keeps each workspace's CODEX_HOME (restored from and saved to an object
store around every process), and serves the Turn API (C{app-gateway.md}).

Built so far:
 - CODEX_HOME lifecycle: L{codexgw.appgw.safefs} (symlink-safe, atomic filesystem primitives),
   L{codexgw.appgw.blocking} (blocking work in threads under deadlines that leave no late side
   effects), L{codexgw.appgw.codexhome} (home directories and C{config.toml}),
   L{codexgw.appgw.objectstore} (C{IObjectStore}: S3 and a local directory),
   L{codexgw.appgw.snapshot} (the CODEX_HOME tarball and its safe restore);
 - configuration: L{codexgw.appgw.config} (the whole table), with L{codexgw.appgw.configtable} and
   L{codexgw.appgw.storeconfig};
 - edges: L{codexgw.appgw.auth} (inbound TUI authentication), L{codexgw.appgw.loopback} (the gate of
   the C{/internal/*} routes), L{codexgw.appgw.captoken} (cap tokens per spawn),
   L{codexgw.appgw.clients} (calls to the exec gateway and agentserver, over the shared
   L{codexgw.httpclient}), L{codexgw.appgw.codexversion} (the startup version check).
The supervisor, TUI proxy, Turn API and the service itself are not built yet.
"""
