"""`python -m services.recipients [--check]`: expand runs, or check dependencies."""

import sys

from libs.common.process import check_dependencies, runtime_from_env, stop_on_signals
from services.recipients.main import start

runtime = runtime_from_env()
if "--check" in sys.argv[1:]:
    sys.exit(check_dependencies(runtime))
stop = stop_on_signals()
consumers = start(runtime, stop)
stop.wait()
consumers.join()
runtime.broker.close()
