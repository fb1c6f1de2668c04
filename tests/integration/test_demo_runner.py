"""`python -m local`, the demo runner: its ready banner, the STOP it shows how to text, a port in use."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import requests

from local.__main__ import print_banner
from local.stack import DEMO_SENDER
from tests.conftest import wait_until

PROJECT_DIR = Path(__file__).resolve().parents[2]
ANA_ID = "10001"
ANA_NUMBER = "+12025550100"


def banner_of(stack, capsys) -> list[str]:
    print_banner(stack)
    return capsys.readouterr().out.splitlines()


def inbound_request(banner: list[str], body: str) -> tuple[str, dict]:
    """Return the URL and JSON of the banner's curl line, with `body` as the text."""
    words = shlex.split(next(line for line in banner if line.strip().startswith("curl ")))
    payload = json.loads(words[words.index("-d") + 1])
    return words[words.index("-X") + 2], dict(payload, body=body)


def textunsub_of(stack, member_id: str) -> list[dict]:
    return [activity for activity in stack.imis.activities()
            if activity["activity_type"] == "TEXTUNSUB" and activity["party_id"] == member_id]


def test_banner_names_every_url(stack_factory, capsys):
    stack = stack_factory()
    banner = "\n".join(banner_of(stack, capsys))

    assert f"Twilio simulator: {stack.twilio.url} " in banner
    assert f"{stack.twilio.url}/_sim/inbound" in banner
    assert f"iMIS simulator: {stack.imis.url} " in banner
    assert f"{stack.imis.url}/_sim/activities" in banner
    assert banner.endswith(f"Text Manager is ready at {stack.gateway_url}")


def test_banner_stop_and_start_work(stack_factory, staff_api, capsys):
    stack = stack_factory()
    banner = banner_of(stack, capsys)
    staff = staff_api(stack)
    staff.send_and_wait(staff.create_campaign()["id"])

    url, payload = inbound_request(banner, "STOP")
    assert url == f"{stack.twilio.url}/_sim/inbound"
    assert (payload["from"], payload["to"]) == (ANA_NUMBER, DEMO_SENDER)
    assert requests.post(url, json=payload, timeout=10).json() == {"webhook_status": 200}
    stopped = wait_until(lambda: textunsub_of(stack, ANA_ID), "Ana's TEXTUNSUB activity is written")
    assert [activity["uf_1"] for activity in stopped] == [ANA_NUMBER]

    url, payload = inbound_request(banner, "START")
    assert requests.post(url, json=payload, timeout=10).json() == {"webhook_status": 200}
    wait_until(lambda: not textunsub_of(stack, ANA_ID), "Ana's TEXTUNSUB activity is deleted")


def test_port_in_use_prints_hint():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        finished = subprocess.run([sys.executable, "-m", "local"], cwd=PROJECT_DIR, capture_output=True, text=True,
                                  env={**os.environ, "PORT": str(port)}, timeout=60)

    assert finished.returncode == 1
    assert finished.stderr.strip().endswith(
        f"Cannot start on port {port}: Address already in use. Set PORT to a free port, for example "
        "PORT=8080 make demo")
    assert "Text Manager is ready" not in finished.stdout


def test_invalid_port_rejected():
    finished = subprocess.run([sys.executable, "-m", "local"], cwd=PROJECT_DIR, capture_output=True, text=True,
                              env={**os.environ, "PORT": "80800"}, timeout=60)
    assert finished.returncode == 2
    assert "PORT must be a port number from 0 to 65535, got '80800'" in finished.stderr
