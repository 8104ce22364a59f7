# The app gateway for `twistd -y tac/codexgw-app.tac`: the same service as `twist codexgw-app`,
# configured from the CXG_* environment (CXG_LISTEN_ADDR, CXG_CODEX_BIN, ...); configuration errors exit 64.
from twisted.application.service import Application

from codexgw.appgw.plugin import AppGatewayOptions, make_service

options = AppGatewayOptions()
options.parseOptions([])
application = Application("codexgw-app")
make_service(options).setServiceParent(application)
