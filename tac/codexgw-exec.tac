# The exec gateway for `twistd -y tac/codexgw-exec.tac`: the same service as `twist codexgw-exec`,
# configured from the CXG_* environment (listening on CXG_PORT); configuration errors exit 64.
from twisted.application.service import Application

from codexgw.execgw.plugin import ExecGatewayOptions, make_service

options = ExecGatewayOptions()
options.parseOptions([])
application = Application("codexgw-exec")
make_service(options).setServiceParent(application)
