"""
Tests for L{codexgw.appgw}, the app gateway, module by module.
"""
