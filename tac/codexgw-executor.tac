# The executor for `twistd -y tac/codexgw-executor.tac`: the same service as `twist codexgw-executor`,
# configured from the environment (CXG_EXECUTOR_GATEWAY, CXG_EXECUTOR_ID, CXG_EXECUTOR_TOKEN and the
# other fallbacks of executor.md §1); configuration errors exit 64.
from twisted.application.service import Application

from codexgw.executor.plugin import ExecutorOptions, make_service

options = ExecutorOptions()
options.parseOptions([])
application = Application("codexgw-executor")
make_service(options).setServiceParent(application)
