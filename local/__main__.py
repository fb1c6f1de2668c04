"""`python -m local`: run Text Manager on its embedded default until Ctrl-C or SIGTERM."""

import os
import sys

from libs.common.logs import configure_logging
from libs.common.process import stop_on_signals
from local.stack import DEMO_CLOUD_ID, Stack


def main() -> int:
    configure_logging("text", os.environ.get("TM_LOG_LEVEL", "INFO"))
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        print(f"PORT must be a number, got {os.environ['PORT']!r}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    try:
        stack = Stack(port=port).start()
    except OSError as error:
        print(f"cannot start on port {port}: {error}. Set PORT to a free port, e.g. PORT=8080 make demo",
              file=sys.stderr)
        return 1
    print(f"Sign in with user demo, password demo, Cloud ID {DEMO_CLOUD_ID} (an administrator), or with "
          "user staff, password staff, who sees the settings read-only.", flush=True)
    print(f"Text Manager is ready at {stack.gateway_url}", flush=True)
    print(f"Sent texts logged in the iMIS simulator: {stack.imis.url}/_sim/communication-log", flush=True)
    stop.wait()
    stack.stop()
    print("Text Manager stopped.", flush=True)
    return 0


sys.exit(main())
