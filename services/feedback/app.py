"""The webhooks Twilio calls: status callbacks and inbound messages, signature checked."""

from __future__ import annotations

import logging
import re
import threading

from flask import Flask, Response, abort, request

from libs.common.runtime import Runtime
from libs.common.tenants import TenantNotFound
from libs.common.twilio_client import verify_signature
from services.feedback.service import FeedbackService

logger = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# An estimate far above any webhook Twilio sends (text fields, up to 10 media URLs,
# add-on results), and far below MongoDB's 16 MB limit for the stored callback.
MAX_REQUEST_BYTES = 1024 * 1024
# Twilio names its parameters with letters and digits. Other names, such as one with a
# NUL character or a leading $, could not be stored as the audit trail's field names.
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")


def create_app(runtime: Runtime | None = None) -> Flask:
    """Build the feedback web app; without a runtime, build one from the environment."""
    if runtime is None:
        from services.feedback.main import runtime_from_env, start_imis_writer

        runtime = runtime_from_env()
        start_imis_writer(runtime, threading.Event())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    service = FeedbackService(runtime.db, broker=runtime.broker, tenants=runtime.tenants, clock=runtime.clock,
                              notifier=runtime.notifier)
    public_base = runtime.settings.public_callback_url.rstrip("/")

    def verify(tenant_id: str) -> None:
        """Abort with 403 unless the request carries the tenant's valid Twilio signature."""
        try:
            token = runtime.tenants.get(tenant_id).twilio_auth_token
        except TenantNotFound:
            token = ""
        url = public_base + request.path + (f"?{request.query_string.decode()}" if request.query_string else "")
        signature = request.headers.get("X-Twilio-Signature")
        if not token or not verify_signature(token, url, request.form.to_dict(), signature):
            logger.warning("rejected a webhook with a %s signature from %s for %s",
                           "missing" if not signature else "wrong", request.remote_addr, request.path)
            abort(403)

    @app.post("/twilio/status/<tenant_id>/<message_id>")
    def status_callback(tenant_id: str, message_id: str):
        """Apply a message status callback."""
        verify(tenant_id)
        service.on_status_callback(tenant_id, message_id, twilio_parameters())
        return Response(status=204)

    @app.post("/twilio/inbound/<tenant_id>")
    def inbound(tenant_id: str):
        """Record STOP and START replies; Twilio sends the standard reply itself."""
        verify(tenant_id)
        service.on_inbound(tenant_id, twilio_parameters())
        return Response(EMPTY_TWIML, mimetype="text/xml")

    def twilio_parameters() -> dict[str, str]:
        """Return the signed POST parameters that can be stored, each by its name as Twilio spells it."""
        form = request.form.to_dict()
        storable = {name: value for name, value in form.items() if PARAMETER_NAME.fullmatch(name)}
        if len(storable) < len(form):
            logger.warning("dropped %s webhook parameters whose names cannot be stored, for %s",
                           len(form) - len(storable), request.path)
        return storable

    @app.get("/healthz")
    def healthz():
        """Return 200 when the store is reachable."""
        runtime.db.command("ping")
        return {"status": "ok"}

    return app
