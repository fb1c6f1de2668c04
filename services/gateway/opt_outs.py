"""The opt-out list as staff read it: the numbers that replied STOP or that Twilio reports as opted out."""

from __future__ import annotations

from pymongo.database import Database

OPT_OUT_FIELDS = ("number", "opted_out_at", "source", "member_ids")


def list_opt_outs(db: Database, tenant_id: str, *, offset: int, limit: int) -> dict:
    """Return a page of the tenant's opt-outs, latest first, and how many there are."""
    query = {"tenant_id": tenant_id}
    found = (db.optouts.find(query, dict.fromkeys(OPT_OUT_FIELDS, 1))
             .sort([("opted_out_at", -1), ("_id", 1)]).skip(offset).limit(limit))
    return {"opt_outs": list(found), "total": db.optouts.count_documents(query)}
