"""`python -m services.scheduler [--check]`: run the scheduler, or check its dependencies."""

import sys

from libs.common.process import check_dependencies, runtime_from_env, stop_on_signals
from services.scheduler.main import run

runtime = runtime_from_env()
if "--check" in sys.argv[1:]:
    sys.exit(check_dependencies(runtime))
run(runtime, stop_on_signals())
