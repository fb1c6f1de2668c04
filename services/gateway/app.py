"""The gateway web app: the staff UI, its JSON API and the OpenAPI description."""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass

from flask import Flask, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from libs.common.logs import log_context
from libs.common.runtime import Runtime
from services.gateway.api import api
from services.gateway.auth import SessionStore
from services.gateway.dashboard import dashboard
from services.gateway.errors import ApiError
from services.gateway.openapi import build_spec
from services.gateway.schedules import schedules
from services.gateway.service import CampaignService
from services.gateway.throttle import SignInThrottle

logger = logging.getLogger(__name__)

# No API body comes near this; a larger one gets 413 before it is read.
MAX_REQUEST_BYTES = 256 * 1024


@dataclass
class GatewayContext:
    runtime: Runtime
    sessions: SessionStore
    campaigns: CampaignService
    throttle: SignInThrottle


def create_app(runtime: Runtime | None = None) -> Flask:
    """Build the gateway app; without a runtime, build one from the environment."""
    if runtime is None:
        from libs.common.process import runtime_from_env

        runtime = runtime_from_env()
    settings = runtime.settings
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False
    if settings.trusted_proxy_count:
        # request.remote_addr becomes the client address the outermost trusted proxy put in X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count, x_proto=0)
    app.extensions["text_manager"] = GatewayContext(
        runtime=runtime,
        sessions=SessionStore(runtime.db, session_secret=settings.session_secret, clock=runtime.clock,
                              lifetime_hours=settings.session_hours),
        campaigns=CampaignService(runtime.db, broker=runtime.broker, clock=runtime.clock),
        throttle=_build_throttle(runtime),
    )
    app.register_blueprint(api)
    app.register_blueprint(dashboard)
    app.register_blueprint(schedules)
    _register_pages(app, runtime)
    _register_errors(app)
    _register_request_ids(app)
    return app


def _build_throttle(runtime: Runtime) -> SignInThrottle:
    settings = runtime.settings
    # Every worker must derive the same counter keys, so they come from the session secret.
    # The embedded default runs one process without a secret, so a random key serves there.
    key = settings.session_secret.encode() if settings.session_secret else secrets.token_bytes(32)
    return SignInThrottle(runtime.db, key=key, clock=runtime.clock, max_failures=settings.sign_in_max_failures,
                          address_max_failures=settings.sign_in_address_max_failures,
                          lockout_minutes=settings.sign_in_lockout_minutes)


def _register_pages(app: Flask, runtime: Runtime) -> None:
    static_dir = app.root_path + "/static"

    @app.get("/")
    def index():
        """Serve the staff web UI."""
        return send_from_directory(static_dir, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(static_dir, name)

    @app.get("/api/openapi.json")
    def openapi():
        """Return the API's OpenAPI 3 description."""
        return jsonify(build_spec())

    @app.get("/healthz")
    def healthz():
        """Return 200 when the store is reachable."""
        runtime.db.command("ping")
        return {"status": "ok"}


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def on_api_error(error: ApiError):
        return jsonify(error.to_dict()), error.status, error.headers()

    @app.errorhandler(RequestEntityTooLarge)
    def on_too_large(error: RequestEntityTooLarge):
        return jsonify({"error": "request_too_large", "details": {"max_bytes": MAX_REQUEST_BYTES},
                        "message": f"the request body is larger than {MAX_REQUEST_BYTES // 1024} KB: send less, "
                                   "for example a shorter text"}), 413

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException):
        return jsonify({"error": error.name.lower().replace(" ", "_"), "message": error.description,
                        "details": {}}), error.code

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception):
        logger.exception("request %s %s failed", request.method, request.path)
        return jsonify({"error": "internal_error", "message": "something went wrong on our side; try again, and "
                        f"quote request id {g.get('request_id', '')} if it keeps failing", "details": {}}), 500


def _register_request_ids(app: Flask) -> None:
    @app.before_request
    def bind_request_id():
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:12]
        g.log_scope = log_context(request_id=g.request_id)
        g.log_scope.__enter__()

    @app.teardown_request
    def unbind_request_id(error=None):
        scope = g.pop("log_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)

    @app.after_request
    def security_headers(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
