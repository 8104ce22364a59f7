# The all-in-one dev stack for `twistd -y tac/codexgw-dev.tac`: the same service as `twist codexgw-dev`
# (state under ./var of the working directory, CXG_PORT / CXG_LISTEN_ADDR and the other CXG_* variables
# of the three programs); configuration errors exit 64. The ready instructions go to file descriptor 1.
from twisted.application.service import Application

from codexgw.devplugin import DevOptions, make_service

options = DevOptions()
options.parseOptions([])
application = Application("codexgw-dev")
make_service(options).setServiceParent(application)
