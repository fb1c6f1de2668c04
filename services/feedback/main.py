"""Composition of the feedback process: the webhook app and the iMIS writer."""

from __future__ import annotations

import threading

from libs.common.process import runtime_from_env
from libs.common.runtime import Runtime
from services.feedback.consumer import ImisJobRouter, ImisWriterPool, tenant_ids
from services.feedback.service import ImisWriter

__all__ = ["runtime_from_env", "start_imis_writer"]


def start_imis_writer(runtime: Runtime, stop: threading.Event) -> ImisWriterPool:
    """Start this instance's iMIS writer: one worker per tenant's partition of `tm.imis`; it stops once stop is set."""
    writer = ImisWriter(runtime.db, tenants=runtime.tenants, imis_factory=runtime.imis, clock=runtime.clock,
                        notifier=runtime.notifier)
    router = ImisJobRouter(runtime.broker, runtime.tenants, writer)
    return ImisWriterPool(runtime.broker, router.handle, tenant_ids=lambda: tenant_ids(runtime.db), stop=stop).start()
