"""
Tests for L{codexgw.executor}, the executor agent, module by module, and its integration with the real
exec gateway and the real codex exec-server.
"""
