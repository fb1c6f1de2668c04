"""`python -m services.sender [--check]`: send texts, or check dependencies."""

import sys

from libs.common.process import check_dependencies, runtime_from_env, serve_health, stop_on_signals
from services.sender.main import start

runtime = runtime_from_env()
if "--check" in sys.argv[1:]:
    sys.exit(check_dependencies(runtime))
stop = stop_on_signals()
pool = start(runtime, stop)
health = serve_health(runtime.settings.sender_health_port, lambda: pool.consuming and not stop.is_set())
stop.wait()
pool.join()
health.shutdown()
runtime.broker.close()
