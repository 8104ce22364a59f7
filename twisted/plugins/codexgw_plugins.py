"""
C{twist} plugins of codexgw (no C{__init__.py} here or in C{twisted/}: this directory extends Twisted's
plugin namespace).
"""

from codexgw.appgw.plugin import app_gateway_maker
from codexgw.devplugin import dev_maker
from codexgw.execgw.plugin import exec_gateway_maker
from codexgw.executor.plugin import executor_maker

__all__ = ["app_gateway_maker", "dev_maker", "exec_gateway_maker", "executor_maker"]
