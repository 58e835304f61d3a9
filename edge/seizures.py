"""Seizures: bags a supervisor confirmed, for the review UI and the JSON export (`GET /v1/seizures`)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from edge.deps import CtxDep, ReviewerDep
from edge.schemas import ErrorOut, SeizuresOut
from edge.store import ScanRecord, Store

router = APIRouter(tags=["reviews"])

#: Reviewed scans read per query. Every reviewed scan is read, page by page: most reviews are cleared false
#: alarms, and a cap on the scans looked at would drop older seizures from the export without a word.
REVIEWED_SCANS_PAGE = 5000


def _reviewed_scans(store: Store, page_size: int) -> Iterator[ScanRecord]:
    """Every reviewed scan, newest first, read `page_size` at a time. A scan reviewed meanwhile shifts the
    later pages by one (reviews are never deleted, so nothing is skipped): a scan read twice is given once."""
    seen: set[int] = set()
    for offset in itertools.count(0, page_size):
        page = store.list_scans(reviewed=True, limit=page_size, offset=offset)
        for r in page:
            if r.id not in seen:
                seen.add(r.id)
                yield r
        if len(page) < page_size:
            return


def collect_seizures(store: Store, *, page_size: int = REVIEWED_SCANS_PAGE) -> list[dict[str, Any]]:
    """Confirmed bags, newest first: one entry per (station, bag_id) with the confirmed scans' ids, their
    alarm classes, and the latest confirming review (who, when, note). Reads every reviewed scan,
    `page_size` scans per query."""
    if page_size < 1:
        raise ValueError(f"page_size must be ≥ 1, got {page_size}")
    bags: dict[tuple[str, str], dict[str, Any]] = {}
    for r in _reviewed_scans(store, page_size):  # newest first
        if r.verdict != "confirmed":
            continue
        key = (r.station, r.bag_id)
        # This view's latest confirming review (a review added since the scan was read may have changed it);
        # the bag names the latest of its views' (by review id: the order they were recorded in).
        review = next((rv for rv in reversed(store.reviews(r.id)) if rv.verdict == "confirmed"), None)
        bag = bags.get(key)
        if bag is None:
            bag = bags[key] = {
                "station": r.station, "lane": r.lane, "bag_id": r.bag_id, "scan_ids": [], "views": [], "classes": [],
                "confirmed_by": None, "confirmed_at": None, "note": "", "tdr_url": None, "_review_id": -1,
            }
        if review is not None and review.id > bag["_review_id"]:
            bag.update(confirmed_by=review.user, confirmed_at=review.created_at, note=review.note,
                       _review_id=review.id)
        bag["scan_ids"].append(r.id)
        bag["views"].append({"id": r.id, "view": r.view, "scanned_at": r.created_at, "alarm": r.alarm,
                             "alarm_classes": list(r.alarm_classes), "image_url": f"/v1/scans/{r.id}/image",
                             "preview_url": f"/v1/scans/{r.id}/preview.png"})
        for c in r.alarm_classes:
            if c not in bag["classes"]:
                bag["classes"].append(c)
        if r.alarm and bag["tdr_url"] is None:  # the bag's report, reached through any of its views
            bag["tdr_url"] = f"/v1/scans/{r.id}/tdr"
    # (A view whose confirmation was overturned between the page read and its reviews' read has none: a bag
    # left with no confirming review at all is no seizure.)
    seized = [{k: v for k, v in bag.items() if k != "_review_id"} for bag in bags.values() if bag["_review_id"] >= 0]
    for bag in seized:
        bag["scan_ids"].reverse()  # read newest first: oldest first, as the bag was scanned
        bag["views"].reverse()
        if bag["tdr_url"] is None:  # only clear views confirmed (a verdict sent per scan): another may have alarmed
            alarmed = next((v for v in store.bag_scans(bag["station"], bag["bag_id"]) if v.alarm), None)
            if alarmed is not None:
                bag["tdr_url"] = f"/v1/scans/{alarmed.id}/tdr"
    return seized


def _utc(moment: datetime | None) -> datetime | None:
    """`moment` as an aware UTC time (a naive one is read as UTC, as the export's times are given)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


@router.get(
    "/v1/seizures",
    response_model=SeizuresOut,
    summary="Export of confirmed bags (JSON)",
    description="Every bag with a view confirmed by a supervisor (optionally within a time window), with its "
                "confirmed views and links to their files and to its DICOS TDR (one per bag, covering its alarmed "
                "views). Links are relative to the service's address. Role: supervisor, admin.",
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)
async def seizures(
    principal: ReviewerDep,
    ctx: CtxDep,
    download: Annotated[bool, Query(description="Send as an attachment (seizures.json).")] = False,
    since: Annotated[datetime | None, Query(description="Only bags confirmed at or after this time (ISO 8601; "
                                                        "UTC if no offset is given).")] = None,
    until: Annotated[datetime | None, Query(description="Only bags confirmed before this time (ISO 8601; UTC if "
                                                        "no offset is given).")] = None,
) -> JSONResponse:
    _engine, store, _auth, _batcher = ctx.require()
    items = await asyncio.to_thread(collect_seizures, store)
    start, end = _utc(since), _utc(until)
    items = [i for i in items if (start is None or i["confirmed_at"] >= start) and (end is None or i["confirmed_at"] < end)]
    doc = SeizuresOut.model_validate({"generated_at": datetime.now(timezone.utc), "seizures": items}).model_dump(mode="json")
    headers = {"Content-Disposition": 'attachment; filename="seizures.json"'} if download else None
    return JSONResponse(doc, headers=headers)
