"""Request the iMIS log again for sent texts whose log event was lost."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pymongo.database import Database

from libs.common.clock import as_utc
from libs.common.imis_log import publish_sent_text
from libs.common.progress import job_of

logger = logging.getLogger(__name__)

SWEEP_EVERY = timedelta(minutes=5)
# The iMIS writer normally logs a text within seconds of its send. A text still without
# a log after this long lost its event: the sender stopped between recording the send
# and publishing, or the publish failed.
GRACE = timedelta(minutes=10)
# iMIS dates an interaction when it is written, so a text sent longer ago than this is
# left unlogged rather than shown to staff at a misleading time.
LOOK_BACK = timedelta(hours=24)
# A text is requested again at most this often, so that a long iMIS outage, during which
# the events wait in the queue, does not fill the queue with copies.
REQUEST_AGAIN_AFTER = timedelta(hours=1)
MAX_PER_SWEEP = 1000


class UnloggedTexts:
    """Find sent texts with no iMIS log and publish their log event again.

    The iMIS writer skips a text already logged, so an event published twice logs the
    text once. Each text requested is marked with `imis_log_requested_at` first, by a
    compare-and-set, so that two schedulers do not both publish it.
    """

    def __init__(self, db: Database, *, broker, clock):
        self._db = db
        self._broker = broker
        self._clock = clock
        self._next_sweep: datetime | None = None

    def sweep_if_due(self) -> int:
        """Sweep when SWEEP_EVERY has passed since the last sweep; return the texts requested."""
        now = self._clock.now()
        if self._next_sweep is not None and now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY
        return self.sweep()

    def sweep(self) -> int:
        """Publish the log event of up to MAX_PER_SWEEP unlogged texts; return how many."""
        now = self._clock.now()
        not_requested_lately = {"$or": [{"imis_log_requested_at": {"$exists": False}},
                                        {"imis_log_requested_at": {"$lte": now - REQUEST_AGAIN_AFTER}}]}
        unlogged = {"$or": [{"imis_log": {"$exists": False}}, {"imis_log.status": "missing"}]}
        query = {"sent_at": {"$gte": now - LOOK_BACK, "$lte": now - GRACE}, "$and": [unlogged, not_requested_lately]}
        requested = 0
        for message in list(self._db.messages.find(query).limit(MAX_PER_SWEEP)):
            job = job_of(message)
            if job is None:
                logger.warning("sent text %s lacks job fields, so its iMIS log cannot be requested", message["_id"])
                continue
            marked = self._db.messages.update_one(
                {"_id": message["_id"], "tenant_id": message["tenant_id"], **not_requested_lately},
                {"$set": {"imis_log_requested_at": now}})
            if marked.modified_count != 1:
                continue
            if publish_sent_text(self._broker, self._db, job, as_utc(message["sent_at"]), clock=self._clock):
                requested += 1
        if requested:
            logger.warning("requested the iMIS log again for %s sent texts whose log event was lost", requested)
        return requested
