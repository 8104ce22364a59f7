"""
Tests for L{codexgw.execgw}, the exec gateway, module by module.
"""
