"""Seizures: bags a supervisor confirmed, for the review UI and the JSON export (`GET /v1/seizures`)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from edge.deps import CtxDep, ReviewerDep
from edge.schemas import ErrorOut, SeizuresOut
from edge.store import Store

router = APIRouter(tags=["reviews"])

#: Reviewed scans looked at per export; a lane box confirms a handful of bags a day.
MAX_REVIEWED_SCANS = 5000


def collect_seizures(store: Store, *, limit: int = MAX_REVIEWED_SCANS) -> list[dict[str, Any]]:
    """Confirmed bags, newest first: one entry per (station, bag_id) with the confirmed scans' ids, their
    alarm classes, and the latest confirming review (who, when, note)."""
    records = store.list_scans(reviewed=True, limit=limit)
    bags: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:  # newest first
        if r.verdict != "confirmed":
            continue
        key = (r.station, r.bag_id)
        bag = bags.get(key)
        if bag is None:
            review = store.reviews(r.id)[-1]
            bag = bags[key] = {
                "station": r.station, "lane": r.lane, "bag_id": r.bag_id, "scan_ids": [], "classes": [],
                "confirmed_by": review.user, "confirmed_at": review.created_at, "note": review.note,
                "tdr_urls": [],
            }
        bag["scan_ids"].append(r.id)
        for c in r.alarm_classes:
            if c not in bag["classes"]:
                bag["classes"].append(c)
        if r.alarm:
            bag["tdr_urls"].append(f"/v1/scans/{r.id}/tdr")
    return list(bags.values())


@router.get(
    "/v1/seizures",
    response_model=SeizuresOut,
    summary="Export of confirmed bags (JSON)",
    description="Every bag with a view confirmed by a supervisor, with links to each alarmed view's DICOS "
                "TDR. Role: supervisor, admin.",
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)
async def seizures(
    principal: ReviewerDep,
    ctx: CtxDep,
    download: Annotated[bool, Query(description="Send as an attachment (seizures.json).")] = False,
) -> JSONResponse:
    _engine, store, _auth, _batcher = ctx.require()
    items = await asyncio.to_thread(collect_seizures, store)
    doc = SeizuresOut.model_validate({"generated_at": datetime.now(timezone.utc), "seizures": items}).model_dump(mode="json")
    headers = {"Content-Disposition": 'attachment; filename="seizures.json"'} if download else None
    return JSONResponse(doc, headers=headers)
