"""Queues of iMIS jobs: each tenant's partition of `tm.imis`, such as `tm.imis.ACME`.

The feedback service runs one worker per partition, so the iMIS calls of one tenant are
serial and a slow or failing site delays only its own tenant's writes. Every producer of
iMIS jobs publishes with `publish_imis_job`.
"""

from __future__ import annotations

from libs.common.broker import QUEUE_IMIS, partition_queue

# Set on a job that was moved to its tenant's partition after a delivery that may have
# reached iMIS, so the writer looks for an entry stored by that delivery before writing.
EARLIER_ATTEMPT_HEADER = "x-earlier-attempt"


def tenant_imis_queue(tenant_id: str) -> str:
    """Return the tenant's partition of `tm.imis`, such as `tm.imis.ACME`.

    Raises ValueError for a Cloud ID that is not 1 to 64 letters, digits, "-" or "_".
    """
    return partition_queue(QUEUE_IMIS, tenant_id)


def imis_queue(tenant_id: str) -> str:
    """Return the queue of the tenant's iMIS jobs: its partition, or `tm.imis` for a Cloud ID that cannot name one."""
    try:
        return tenant_imis_queue(tenant_id)
    except ValueError:
        return QUEUE_IMIS


def publish_imis_job(broker, job: dict, *, message_id: str | None = None) -> None:
    """Publish an iMIS job to the queue of its `tenant_id`; raises PublishError."""
    broker.publish(imis_queue(job["tenant_id"]), job, message_id=message_id)
