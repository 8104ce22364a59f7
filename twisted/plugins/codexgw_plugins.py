"""
C{twist} plugins of codexgw (no C{__init__.py} here or in C{twisted/}: this directory extends Twisted's
plugin namespace).
"""

from codexgw.execgw.plugin import exec_gateway_maker
from codexgw.executor.plugin import executor_maker

__all__ = ["exec_gateway_maker", "executor_maker"]
