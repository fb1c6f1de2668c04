"""The composition root each process builds once: store, broker, clients, clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pymongo.database import Database

from libs.common.broker import Broker, create_broker
from libs.common.clock import SystemClock
from libs.common.crypto import SecretBox
from libs.common.message_ids import MessageIds
from libs.common.notices import Notifier
from libs.common.settings import Settings
from libs.common.storage import connect, create_indexes
from libs.common.tenants import Tenant, TenantRepository
from libs.common.twilio_client import TwilioGateway


@dataclass
class Runtime:
    """Everything a service needs from outside itself, built after any fork."""

    settings: Settings
    db: Database
    broker: Broker
    clock: object
    secrets: SecretBox
    tenants: TenantRepository
    notifier: Notifier
    message_ids: MessageIds
    _twilio_clients: dict = field(default_factory=dict, repr=False)
    _imis_sessions: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def twilio(self, account_sid: str, auth_token: str) -> TwilioGateway:
        """Return a Twilio client for an account, one per account and token."""
        key = (account_sid, auth_token)
        with self._lock:
            if key not in self._twilio_clients:
                self._twilio_clients[key] = TwilioGateway(
                    account_sid, auth_token, base_url=self.settings.twilio_base_url or None,
                    timeout_s=self.settings.twilio_timeout_s,
                )
            return self._twilio_clients[key]

    def imis(self, tenant: Tenant):
        """Return an iMIS session for the tenant's service account, reusing its token."""
        from libs.common.imis import ImisClient, ImisSession

        key = (tenant.cloud_id, tenant.imis_base_url, tenant.imis_username, tenant.imis_password)
        with self._lock:
            if key not in self._imis_sessions:
                client = ImisClient(tenant.imis_base_url, timeout_s=self.settings.imis_timeout_s)
                self._imis_sessions[key] = ImisSession(client, tenant.imis_username, tenant.imis_password)
            return self._imis_sessions[key]


def build_runtime(settings: Settings, *, db: Database | None = None, broker: Broker | None = None,
                  clock=None, secrets: SecretBox | None = None) -> Runtime:
    """Connect to the store and broker named in the settings, unless given ones to share."""
    clock = clock or SystemClock()
    db = db if db is not None else connect(settings.mongo_url)
    create_indexes(db)
    broker = broker or create_broker(settings.broker_url)
    secrets = secrets or SecretBox.from_settings(settings.secret_key)
    return Runtime(
        settings=settings, db=db, broker=broker, clock=clock, secrets=secrets,
        tenants=TenantRepository(db, secrets),
        notifier=Notifier(db, smtp_url=settings.smtp_url, mail_from=settings.mail_from, clock=clock),
        message_ids=MessageIds.from_secrets(secrets),
    )
