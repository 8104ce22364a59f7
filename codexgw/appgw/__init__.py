"""
The app gateway (twist codexgw-app): it proxies codex TUI websockets, supervises one C{codex
app-server} per workspace, keeps each workspace's CODEX_HOME (restored from and saved to an object
store around every process), and serves the Turn API (C{app-gateway.md}). Its modules so far:
L{codexgw.appgw.safefs} (symlink-safe, atomic filesystem primitives), L{codexgw.appgw.blocking}
(blocking work in threads with deadlines that leave no late side effects),
L{codexgw.appgw.codexhome} (home directories and C{config.toml}), L{codexgw.appgw.objectstore}
(C{IObjectStore}: S3 and a local directory), L{codexgw.appgw.snapshot} (the CODEX_HOME tarball and
its safe restore), L{codexgw.appgw.configtable} and L{codexgw.appgw.storeconfig} (the configuration
rows of these).
"""
