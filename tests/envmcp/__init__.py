"""
Tests for L{codexgw.envmcp}: env-mcp's command line, MCP server and loopback hooks.
"""
