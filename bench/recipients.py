"""`python -m bench.recipients`: expand a large IQA into jobs on RabbitMQ and report the rates.

The iMIS simulator serves the benchmark query (5% invalid numbers, 3% duplicates) from
a child process. This process is the expanding process: it runs the recipients
service's RunExpander on mongomock and publishes to RabbitMQ under a queue prefix of
its own, which it deletes at the end. It measures

- recipients_per_s: recipients divided by the time from the start of expansion until
  the broker confirmed the last job;
- ceiling_per_s: recipients divided by the time of the bare per-row work (parse and
  validate the number, render the text, count its segments) over the same rows. The
  rows are fetched again from the simulator after the run, and the pass uses no store
  and no broker;
- ratio: recipients_per_s / ceiling_per_s;
- peak_rss_mib: the peak resident memory of this process (VmHWM) after expansion,
  measured before the ceiling pass;
- store_ops_per_1000: store calls made during expansion per 1,000 recipients.

The last line of output is one JSON object with those five keys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import selectors
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pika
import pika.exceptions

from libs.common.broker import EXCHANGE, RabbitMQBroker, declared_queues, tenant_jobs_queue
from libs.common.clock import SystemClock
from libs.common.crypto import SecretBox
from libs.common.message_ids import MessageIds
from libs.common.imis import ImisClient, ImisSession
from libs.common.logs import configure_logging
from libs.common.notices import Notifier
from libs.common.storage import connect, create_indexes
from libs.common.tenants import Tenant, TenantRepository
from local import demo_data
from services.recipients.expansion import build_processor, campaign_pages
from services.recipients.service import RunExpander

logger = logging.getLogger(__name__)

DEFAULT_ROWS = 100_000
DEFAULT_AMQP_URL = os.environ.get("TM_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TENANT_ID = "BENCH"
CAMPAIGN_ID = "bench-campaign"
BODY = "Hello {FirstName|member}, the Bench Association meets on Thursday at 7 pm. Reply STOP to opt out."
# Daily allowance and per-run segment limit, raised far above what the query needs.
RAISED_LIMIT = 10_000_000
SIMULATOR_START_TIMEOUT_S = 60.0

# Collection methods that make one call to the store.
STORE_OPERATIONS = frozenset({
    "find", "find_one", "insert_one", "insert_many", "update_one", "update_many", "replace_one",
    "delete_one", "delete_many", "find_one_and_update", "find_one_and_replace", "find_one_and_delete",
    "count_documents", "aggregate", "bulk_write",
})


class CountingDatabase:
    """A database whose collections count every store call made through them."""

    def __init__(self, db):
        self._db = db
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> CountingCollection:
        return CountingCollection(self._db[name], self.calls)

    def __getitem__(self, name: str) -> CountingCollection:
        return CountingCollection(self._db[name], self.calls)


class CountingCollection:
    """A collection that counts calls of STORE_OPERATIONS, keyed `collection.method`."""

    def __init__(self, collection, calls: Counter[str]):
        self._collection = collection
        self._calls = calls

    def __getattr__(self, name: str):
        value = getattr(self._collection, name)
        if name not in STORE_OPERATIONS:
            return value

        def counted(*args, **kwargs):
            self._calls[f"{self._collection.name}.{name}"] += 1
            return value(*args, **kwargs)

        return counted


@contextlib.contextmanager
def simulator_process(rows: int) -> Iterator[str]:
    """Run the iMIS simulator with the benchmark query in a child process; yield its URL."""
    command = [sys.executable, "-m", "local.simulators.imis", "--port", "0", "--rows", str(rows)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield _read_url(process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _read_url(process: subprocess.Popen) -> str:
    """Return the URL from the simulator's "listening on" line; raise RuntimeError if none comes."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=SIMULATOR_START_TIMEOUT_S):
            raise RuntimeError(f"the iMIS simulator printed no URL within {SIMULATOR_START_TIMEOUT_S:.0f} s")
    line = process.stdout.readline().strip()
    if " on http" not in line:
        raise RuntimeError(f"the iMIS simulator did not start: {line or 'no output'}")
    return line.rsplit(" ", 1)[-1]


def build_world(imis_url: str, amqp_url: str, queue_prefix: str):
    """Return (counting database, broker, expander) for one benchmark tenant, campaign and run."""
    db = connect("mongomock://localhost/bench_recipients")
    create_indexes(db)
    counting = CountingDatabase(db)
    clock = SystemClock()
    secrets = SecretBox.from_settings("")
    tenants = TenantRepository(counting, secrets)
    tenants.save(bench_tenant(imis_url))
    db.campaigns.insert_one(bench_campaign())
    db.runs.insert_one({"_id": "bench-run", "tenant_id": TENANT_ID, "campaign_id": CAMPAIGN_ID, "status": "queued",
                        "counts": {}, "expanded": False})

    broker = RabbitMQBroker(amqp_url, queue_prefix=queue_prefix, connection_name="bench-recipients")
    sessions: dict[str, ImisSession] = {}

    def imis_factory(tenant: Tenant) -> ImisSession:
        if tenant.cloud_id not in sessions:
            sessions[tenant.cloud_id] = ImisSession(ImisClient(tenant.imis_base_url), tenant.imis_username,
                                                    tenant.imis_password)
        return sessions[tenant.cloud_id]

    expander = RunExpander(counting, broker=broker, tenants=tenants, imis_factory=imis_factory,
                           notifier=Notifier(counting, clock=clock), clock=clock,
                           message_ids=MessageIds.from_secrets(secrets))
    return counting, broker, expander


def bench_tenant(imis_url: str) -> Tenant:
    username, password = demo_data.DEMO_SERVICE_USER
    return Tenant(cloud_id=TENANT_ID, name="Bench Association", imis_base_url=imis_url, imis_username=username,
                  imis_password=password, twilio_account_sid="AC" + "0b" * 16, sender_number="+18885550100",
                  default_country="US", daily_limit=RAISED_LIMIT, run_segment_limit=RAISED_LIMIT)


def bench_campaign() -> dict:
    return {"_id": CAMPAIGN_ID, "tenant_id": TENANT_ID, "name": "Bench", "body": BODY,
            "iqa_path": demo_data.BENCH_QUERY_PATH, "status": "sending", "current_run_id": "bench-run"}


def measure_expansion(counting: CountingDatabase, broker: RabbitMQBroker, expander: RunExpander) -> dict:
    """Expand the run; return the recipients, seconds, peak RSS and store calls of the expansion."""
    counting.calls.clear()
    started = time.perf_counter()
    expander.expand(TENANT_ID, "bench-run")
    elapsed_s = time.perf_counter() - started
    calls = sum(counting.calls.values())

    run = counting.runs.find_one({"_id": "bench-run"})
    if run["status"] != "sending":
        raise RuntimeError(f"the run ended {run['status']}: {run.get('error')}")
    recipients = run["counts"]["recipients"]
    queue = tenant_jobs_queue(TENANT_ID)
    queued = broker.queue_depth(queue)
    if queued != recipients:
        raise RuntimeError(f"{recipients} recipients but {queued} jobs in {queue}")
    return {"recipients": recipients, "skipped": run["counts"].get("skipped", 0),
            "skipped_by_reason": run.get("skipped_by_reason", {}), "elapsed_s": elapsed_s,
            "peak_rss_mib": peak_rss_mib(), "store_calls": calls, "store_calls_by_kind": dict(counting.calls)}


def measure_ceiling(imis_url: str) -> tuple[int, float]:
    """Run the bare per-row work over the query's rows; return the recipients and the seconds it took.

    Rows are fetched page by page, outside the timed part, and opt-outs are not looked up.
    """
    tenant = bench_tenant(imis_url)
    processor = build_processor(bench_campaign(), tenant.default_country)
    recipients = 0
    busy_s = 0.0
    with ImisClient(imis_url) as client:
        session = ImisSession(client, tenant.imis_username, tenant.imis_password)
        for page in campaign_pages(session, bench_campaign()):
            started = time.perf_counter()
            result = processor.process(page.rows, _no_opt_outs)
            busy_s += time.perf_counter() - started
            recipients += len(result.jobs)
    return recipients, busy_s


def _no_opt_outs(numbers: list[str]) -> set[str]:
    return set()


def peak_rss_mib() -> float:
    """Return this process's peak resident memory in MiB (VmHWM, or ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """Return the CPU count, CPU model and load average, for the record."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} CPUs, {model}, load average {load}"


def delete_topology(amqp_url: str, queue_prefix: str) -> None:
    """Delete the queues and the exchange that the benchmark's broker declared."""
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        for name in declared_queues(partitions=[tenant_jobs_queue(TENANT_ID)]):
            channel.queue_delete(queue_prefix + name)
        channel.exchange_delete(queue_prefix + EXCHANGE)


def run(rows: int, amqp_url: str) -> dict:
    """Run the benchmark and return the summary, printing the details on the way."""
    queue_prefix = f"bench-{uuid.uuid4().hex[:12]}."
    print(f"machine: {machine()}", flush=True)
    with simulator_process(rows) as imis_url:
        counting, broker, expander = build_world(imis_url, amqp_url, queue_prefix)
        try:
            expansion = measure_expansion(counting, broker, expander)
        finally:
            broker.close()
            delete_topology(amqp_url, queue_prefix)
        ceiling_recipients, ceiling_s = measure_ceiling(imis_url)

    recipients_per_s = expansion["recipients"] / expansion["elapsed_s"]
    ceiling_per_s = ceiling_recipients / ceiling_s
    print(f"rows: {rows:,}; recipients: {expansion['recipients']:,}; skipped: {expansion['skipped_by_reason']}")
    print(f"expansion: {expansion['elapsed_s']:.2f} s until the last job was confirmed")
    print(f"bare per-row work: {ceiling_s:.2f} s for {ceiling_recipients:,} recipients")
    print(f"store calls during expansion: {expansion['store_calls']} {expansion['store_calls_by_kind']}")
    return {
        "recipients_per_s": round(recipients_per_s, 1),
        "ceiling_per_s": round(ceiling_per_s, 1),
        "ratio": round(recipients_per_s / ceiling_per_s, 3),
        "peak_rss_mib": round(expansion["peak_rss_mib"], 1),
        "store_ops_per_1000": round(expansion["store_calls"] * 1000 / expansion["recipients"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows in the benchmark query")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL,
                        help="RabbitMQ URL (default: TM_BENCH_AMQP_URL, else guest on 127.0.0.1:5672)")
    args = parser.parse_args(argv)
    configure_logging("text", "WARNING")
    try:
        summary = run(args.rows, args.amqp_url)
    except (pika.exceptions.AMQPConnectionError, RuntimeError) as error:
        print(f"benchmark failed: {error!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
