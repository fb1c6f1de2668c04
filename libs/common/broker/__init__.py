"""Message broker: queue names, handler outcomes and the RabbitMQ and in-process brokers."""

from __future__ import annotations

from .base import (
    ATTEMPT_HEADER, DEAD_ATTEMPT_HEADER, DEATH_REASON_HEADER, EXCHANGE, ORIGINAL_QUEUE_HEADER,
    QUEUE_DEAD, QUEUE_IMIS, QUEUE_JOBS, QUEUE_RUNS, RETRY_DELAYS_S, WORK_QUEUES, Broker,
    BrokerClosed, Delivery, EncodedBatch, PublishError, Reject, Retry, declared_queues, delay_queue_name,
    is_work_queue, partition_of, partition_queue, tenant_jobs_queue, work_queue_of,
)
from .memory import MemoryBroker, MemoryServer
from .rabbitmq import RabbitMQBroker

__all__ = [
    "ATTEMPT_HEADER", "DEAD_ATTEMPT_HEADER", "DEATH_REASON_HEADER", "EXCHANGE",
    "ORIGINAL_QUEUE_HEADER", "QUEUE_DEAD", "QUEUE_IMIS", "QUEUE_JOBS", "QUEUE_RUNS", "RETRY_DELAYS_S", "WORK_QUEUES", "Broker",
    "BrokerClosed", "Delivery", "EncodedBatch", "MemoryBroker", "MemoryServer", "PublishError",
    "RabbitMQBroker", "Reject", "Retry", "create_broker", "declared_queues", "delay_queue_name",
    "is_work_queue", "partition_of", "partition_queue", "tenant_jobs_queue", "work_queue_of",
]


def create_broker(url: str, **kwargs) -> Broker:
    """Return the broker for url: "memory://" is in-process, "amqp://" or "amqps://" is RabbitMQ.

    kwargs go to the broker's constructor. Raises ValueError for any other scheme.
    """
    if url.startswith("memory://"):
        return MemoryBroker(**kwargs)
    if url.startswith(("amqp://", "amqps://")):
        return RabbitMQBroker(url, **kwargs)
    scheme = url.partition(":")[0]
    raise ValueError(f"broker URL must start with memory://, amqp:// or amqps://, got {scheme!r}://")
