"""`python -m local.smoke`: send one campaign to the demo members and check the outcome.

Runs the embedded default on free ports, then signs in and sends through the web API as
staff would. It waits until every text has a final status, every opt-out has its
TEXTUNSUB activity and every sent text its interaction in the communication log, and
prints one JSON summary as the last line. Exits 1 when a member got two texts, a
sendable member got none, an opt-out has no activity or a sent text is not logged.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

import requests

from libs.common.logs import configure_logging
from local.demo_data import DEMO_QUERY_PATH, DEMO_STAFF_USER
from local.stack import DEMO_CLOUD_ID, Stack

TIMEOUT_S = float(os.environ.get("SMOKE_TIMEOUT_S", "600"))


def run_campaign(stack: Stack) -> dict:
    """Sign in, create and send a campaign; return its run once every text is final."""
    client = requests.Session()
    username, password = DEMO_STAFF_USER
    session = client.post(f"{stack.gateway_url}/api/session",
                          json={"username": username, "password": password, "cloud_id": DEMO_CLOUD_ID})
    session.raise_for_status()
    headers = {"X-CSRF-Token": session.json()["csrf_token"]}
    created = client.post(f"{stack.gateway_url}/api/campaigns", headers=headers, json={
        "name": "Smoke test", "body": "Hello {FirstName|member}, this is the Demo Association.",
        "iqa_path": DEMO_QUERY_PATH,
    })
    created.raise_for_status()
    campaign_id = created.json()["id"]
    client.post(f"{stack.gateway_url}/api/campaigns/{campaign_id}/send", headers=headers).raise_for_status()

    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        campaign = client.get(f"{stack.gateway_url}/api/campaigns/{campaign_id}").json()
        if campaign["status"] in ("completed", "failed", "cancelled"):
            return campaign
        time.sleep(0.5)
    raise TimeoutError(f"the campaign did not finish within {TIMEOUT_S:.0f} s")


def wait_for_imis(stack: Stack, activities: int, interactions: int, timeout_s: float = 30.0) -> None:
    """Wait until the iMIS simulator contains this many activities and interactions, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(stack.imis.activities()) >= activities and len(stack.imis.communication_log()) >= interactions:
            return
        time.sleep(0.2)


def summarise(stack: Stack, campaign: dict, elapsed_s: float) -> tuple[dict, list[str]]:
    """Return the summary and the list of problems found."""
    run = campaign["current_run"]
    creates = stack.twilio.messages()
    accepted = [message for message in creates if message["sid"]]
    opted_out = [message for message in creates if message["error_code"] == 21610]
    texts_per_number = Counter(message["to"] for message in accepted)
    activities = stack.imis.activities()
    textunsub_numbers = {activity["uf_1"] for activity in activities if activity["activity_type"] == "TEXTUNSUB"}
    skipped = run.get("skipped_by_reason", {})

    summary = {
        "recipients": run["counts"]["recipients"],
        "invalid": sum(count for reason, count in skipped.items() if reason not in ("duplicate number", "opted out")),
        "sent": len(accepted),
        "delivered": run["counts"]["delivered"],
        "opted_out": len(opted_out),
        "duplicates": sum(1 for count in texts_per_number.values() if count > 1),
        "textunsub": len(activities),
        "logged": len(stack.imis.communication_log()),
        "elapsed_s": round(elapsed_s, 1),
    }
    problems = []
    if campaign["status"] != "completed":
        problems.append(f"the campaign ended {campaign['status']}: {campaign.get('error')}")
    if summary["duplicates"]:
        problems.append(f"{summary['duplicates']} member(s) got more than one text")
    reached = {message["to"] for message in creates}
    if len(reached) < summary["recipients"]:
        problems.append(f"{summary['recipients'] - len(reached)} sendable member(s) got no text")
    missing = {message["to"] for message in opted_out} - textunsub_numbers
    if missing:
        problems.append(f"{len(missing)} opted-out member(s) have no TEXTUNSUB activity")
    if summary["logged"] != summary["sent"]:
        problems.append(f"{summary['sent']} texts were sent but {summary['logged']} are logged in iMIS as interactions")
    return summary, problems


def main() -> int:
    configure_logging("text", os.environ.get("TM_LOG_LEVEL", "WARNING"))
    stack = Stack(port=0).start()
    try:
        started = time.monotonic()
        campaign = run_campaign(stack)
        creates = stack.twilio.messages()
        opted_out = sum(1 for message in creates if message["error_code"] == 21610)
        wait_for_imis(stack, opted_out, sum(1 for message in creates if message["sid"]))
        summary, problems = summarise(stack, campaign, time.monotonic() - started)
    finally:
        stack.stop()
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
