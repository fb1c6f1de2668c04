"""`python -m local`: run Text Manager on its embedded default until Ctrl-C or SIGTERM."""

import json
import os
import sys

from libs.common.logs import configure_logging
from libs.common.phones import check_number
from libs.common.process import stop_on_signals
from local import demo_data
from local.stack import DEMO_CLOUD_ID, DEMO_SENDER, Stack

MAX_PORT = 65535


def print_banner(stack: Stack) -> None:
    """Print how to sign in, where the simulators are, and how to text STOP or START to the demo sender."""
    member = demo_data.build_demo_members()[0]
    number = check_number(member["Mobile"], demo_data.DEMO_DEFAULT_COUNTRY).e164
    inbound = json.dumps({"from": number, "to": DEMO_SENDER, "body": "STOP"})
    lines = [
        f"Sign in with user demo, password demo, Cloud ID {DEMO_CLOUD_ID} (an administrator), or with user staff, "
        "password staff, who sees the settings read-only.",
        f"Twilio simulator: {stack.twilio.url} (texts it received: {stack.twilio.url}/_sim/messages). To text "
        f"STOP from {member['FirstName']} {member['LastName']} ({number}) to the sender {DEMO_SENDER}, run the "
        "line below; send START the same way to opt in again.",
        f"  curl -X POST {stack.twilio.url}/_sim/inbound -H 'Content-Type: application/json' -d '{inbound}'",
        f"iMIS simulator: {stack.imis.url} (sent texts logged: {stack.imis.url}/_sim/communication-log, "
        f"TEXTUNSUB activities: {stack.imis.url}/_sim/activities)",
        f"Text Manager is ready at {stack.gateway_url}",
    ]
    print("\n".join(lines), flush=True)


def main() -> int:
    configure_logging("text", os.environ.get("TM_LOG_LEVEL", "INFO"))
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        port = -1
    if not 0 <= port <= MAX_PORT:
        print(f"PORT must be a port number from 0 to {MAX_PORT}, got {os.environ['PORT']!r}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    try:
        stack = Stack(port=port).start()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        print(f"Cannot start on port {port}: {reason}. Set PORT to a free port, for example PORT=8080 make demo",
              file=sys.stderr)
        return 1
    print_banner(stack)
    stop.wait()
    stack.stop()
    print("Text Manager stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
