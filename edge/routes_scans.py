"""`/v1/scans`: ingest (stations), records, images, previews, reviews and TDRs (supervisors, admins)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from edge.auth import Principal
from edge.deps import AnyRoleDep, CtxDep, ReviewerDep, StationDep
from edge.formats import (RAW_MEDIA_TYPES, UnsupportedMediaTypeError, Upload, normalise_media_type, upload_from_bytes,
                          upload_from_pair)
from edge.ingest import IngestError, bag_report, check_rate, count_refusal, fuse_bag, screen, validate_meta
from edge.preview import render_preview
from edge.schemas import (DB_INT_MAX, BagOut, ErrorOut, ReviewIn, ReviewOut, ScanIdPath, ScanListOut, ScanRecordOut,
                          ScanResultOut)
from edge.images import DamagedImageError
from edge.store import ScanRecord, Store
from edge.tdr import TDR_MEDIA_TYPE, TdrError, alarmed_views, tdr_file_name

router = APIRouter(prefix="/v1/scans", tags=["scans"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No, malformed or invalid credentials."},
    403: {"model": ErrorOut, "description": "The caller's role may not use this route."},
    429: {"model": ErrorOut, "description": "A station over its rate limit (see Retry-After)."},
}
_NOT_FOUND = {404: {"model": ErrorOut, "description": "No scan with this id."}}

# The ingest body is read by hand (raw image or multipart), so its schema is given here for /openapi.json.
_INGEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "Either a multipart form — file field `image` (PNG, JPEG, TIFF or a DICOS DX file), or `low` and "
            "`high` (a raw dual-energy pair of grey images) — with fields station, lane, bag_id, view; or the "
            "raw image as the body (Content-Type image/png, image/jpeg, image/tiff or application/dicom) with "
            "station, lane, bag_id, view as query parameters."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "low": {"type": "string", "format": "binary"},
                        "high": {"type": "string", "format": "binary"},
                        "station": {"type": "string"},
                        "lane": {"type": "string"},
                        "bag_id": {"type": "string"},
                        "view": {"type": "string"},
                    },
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_MEDIA_TYPES},
        },
    }
}


#: The status counted for a request whose client hung up before it was read (nginx's "client closed request").
CLIENT_CLOSED = 499


def _error(exc: IngestError) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail, headers=exc.headers or None)


def _upload(data: bytes, content_type: str | None) -> Upload:
    """`upload_from_bytes`, with a type it does not take (a raw body's or the form's 'image' part's) as 415."""
    try:
        return upload_from_bytes(data, content_type)
    except UnsupportedMediaTypeError as exc:
        raise IngestError(415, str(exc), reason="media_type") from None


async def _read_upload(request: Request) -> tuple[Upload, dict[str, str]]:
    """The scan bytes and any form fields, from a multipart form or a raw body (see _INGEST_BODY)."""
    content_type = normalise_media_type(request.headers.get("content-type"))
    if content_type is None:
        raise IngestError(415, "Content-Type is missing: send multipart/form-data or one of "
                               f"{sorted(RAW_MEDIA_TYPES)}", reason="media_type")
    if content_type == "multipart/form-data":
        form = await request.form(max_files=3, max_fields=16)
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            files = {k: v for k, v in form.items() if isinstance(v, UploadFile)}
            if "image" in files:
                if "low" in files or "high" in files:
                    raise IngestError(422, "send either 'image' or 'low' and 'high', not both", reason="invalid_fields")
                f = files["image"]
                return _upload(await f.read(), f.content_type), fields
            if "low" in files and "high" in files:
                return upload_from_pair(await files["low"].read(), await files["high"].read()), fields
            if "low" in files or "high" in files:
                raise IngestError(422, "a dual-energy pair needs both file fields 'low' and 'high'",
                                  reason="invalid_fields")
            raise IngestError(422, "no scan in the form: add file field 'image' (or 'low' and 'high')",
                              reason="invalid_fields")
        finally:
            await form.close()
    return _upload(await request.body(), content_type), {}


@router.post(
    "",
    response_model=ScanResultOut,
    summary="Screen one scan (one view of a bag)",
    description=(
        "Decode, screen (micro-batched with every lane), store and answer. The answer comes only after the "
        "image and the record are durably written. Re-sending the same image of the same bag returns the "
        "stored answer with `duplicate: true`. The bag verdict (`bag_alarm`, `bag_views`) is fused over the "
        "bag's views recorded by then: send a bag's views one after another (or over `WS /v1/stream`, which "
        "records them in the order sent) for the last answer to cover them all, or read "
        "`GET /v1/scans/{id}/bag` of any view for the verdict over every view stored. "
        "Role: station (the `station` field must be the key's station)."
    ),
    responses={
        **_ERRORS,
        413: {"model": ErrorOut, "description": "Body or pixel count over the limit (decompression bomb)."},
        415: {"model": ErrorOut, "description": "Content type not accepted."},
        409: {"model": ErrorOut, "description": "The bag already holds XSCREEN_MAX_VIEWS_PER_BAG views."},
        422: {"model": ErrorOut, "description": "Missing fields, undecodable or incompatible scan."},
        408: {"model": ErrorOut, "description": "The upload did not arrive within the request deadline."},
        429: {"model": ErrorOut, "description": "Station over its rate limit (see Retry-After)."},
        503: {"model": ErrorOut, "description": "Screening queue or intake full, or storage unwritable (see Retry-After)."},
        507: {"model": ErrorOut, "description": "The lane box's storage is full: the scan was not stored."},
        504: {"model": ErrorOut, "description": "Not screened before the request deadline."},
    },
    openapi_extra=_INGEST_BODY,
)
async def post_scan(
    request: Request,
    principal: StationDep,
    ctx: CtxDep,
    station: Annotated[str | None, Query(description="Station name (or form field).")] = None,
    lane: Annotated[str | None, Query(description="Lane (or form field).")] = None,
    bag_id: Annotated[str | None, Query(description="Bag identifier (or form field).")] = None,
    view: Annotated[str | None, Query(description="View of the bag, e.g. top, side (or form field).")] = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    reserved = 0
    try:
        check_rate(ctx, principal.name)
        reserved = _reserve_intake(ctx, request)
        try:
            # The upload's arrival counts against the request deadline: a station that stalls mid-body is
            # cut off (408) and its partial body let go, not held for as long as it likes.
            upload, form_fields = await asyncio.wait_for(_read_upload(request), timeout=ctx.settings.request_deadline_s)
        except ClientDisconnect:
            # The station hung up before its upload ended (its timeout, a network drop): nobody reads the
            # answer, and nothing went wrong here. Counted as nginx's 499 (client closed), never as a 500.
            raise IngestError(CLIENT_CLOSED, "the station closed the connection before its upload ended",
                              reason="client_closed") from None
        except TimeoutError:
            raise IngestError(408, f"the upload did not arrive within the request deadline "
                                   f"({ctx.settings.request_deadline_s:g} s)", {"Connection": "close"},
                              reason="upload_timeout") from None
        query = {"station": station, "lane": lane, "bag_id": bag_id, "view": view}
        meta = validate_meta({**{k: v for k, v in query.items() if v is not None}, **form_fields},
                             station_name=principal.name)
        return await screen(ctx, meta, upload, started=started)
    except IngestError as exc:
        count_refusal(ctx, exc)
        raise _error(exc) from None
    finally:
        if reserved and ctx.intake is not None:
            ctx.intake.release(reserved)


def _reserve_intake(ctx: CtxDep, request: Request) -> int:
    """Reserve the request body's room in the intake budget (edge/intake.py) before reading a byte of it:
    its declared length, or the largest body allowed when it declares none. Returns the bytes reserved;
    raises the 503 of a full budget."""
    if ctx.intake is None:
        return 0
    declared = request.headers.get("content-length", "")
    limit = ctx.settings.max_body_bytes
    need = min(int(declared), limit) if declared.isdigit() else limit
    if not ctx.intake.try_reserve(need):
        raise IngestError(503, "the lane box holds as many scans as it can take at once; retry shortly",
                          {"Retry-After": "1"}, reason="intake_full")
    return need


def record_out(record: ScanRecord, *, principal: Principal) -> dict[str, Any]:
    """A stored scan as `ScanRecordOut`; review fields only for supervisors and admins."""
    show_reviews = principal.role in ("supervisor", "admin")
    return {
        "id": record.id, "created_at": record.created_at, "station": record.station, "lane": record.lane,
        "bag_id": record.bag_id, "view": record.view, "image_sha256": record.image_sha256,
        "media_type": record.media_type, "width": record.width, "height": record.height,
        "alarm": record.alarm, "alarm_classes": record.alarm_classes,
        "detections": record.result.get("detections", []),
        "model": {"name": record.model_name, "version": record.model_version},
        "reviewed": record.reviewed if show_reviews else None,
        "verdict": record.verdict if show_reviews else None,
    }


async def _get_record(ctx: CtxDep, scan_id: int) -> ScanRecord:
    _engine, store, _auth, _batcher = ctx.require()
    record = await asyncio.to_thread(store.get_scan, scan_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scan with id {scan_id}")
    return record


@router.get(
    "",
    response_model=ScanListOut,
    summary="List scans, newest first",
    description="Filter by alarm and reviewed. Role: supervisor, admin.",
    responses=_ERRORS,
)
async def list_scans(
    principal: ReviewerDep,
    ctx: CtxDep,
    alarm: Annotated[bool | None, Query()] = None,
    reviewed: Annotated[bool | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> dict[str, Any]:
    _engine, store, _auth, _batcher = ctx.require()
    records = await asyncio.to_thread(store.list_scans, alarm=alarm, reviewed=reviewed, limit=limit, offset=offset)
    total = await asyncio.to_thread(store.count_scans)
    return {"items": [record_out(r, principal=principal) for r in records], "limit": limit, "offset": offset,
            "total": total}


@router.get(
    "/{scan_id}",
    response_model=ScanRecordOut,
    summary="One stored scan",
    description="Role: supervisor, admin; a station may read only its own scans (without review fields).",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_scan(scan_id: ScanIdPath, principal: AnyRoleDep, ctx: CtxDep) -> dict[str, Any]:
    record = await _get_record(ctx, scan_id)
    if principal.role == "station" and record.station != principal.name:
        # 404, not 403: a station learns nothing about other stations' scan ids.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scan with id {scan_id}")
    return record_out(record, principal=principal)


@router.get(
    "/{scan_id}/bag",
    response_model=BagOut,
    summary="The bag this scan is a view of: its views and their fused decision",
    description="Every view of the bag stored so far (same station and bag id), and the decision fused over "
                "them: what a station that posted a bag's views at once reads for the bag's one verdict. "
                "Role: supervisor, admin; a station only for its own scans.",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_bag(scan_id: ScanIdPath, principal: AnyRoleDep, ctx: CtxDep) -> dict[str, Any]:
    _engine, store, _auth, _batcher = ctx.require()
    record = await _get_record(ctx, scan_id)
    if principal.role == "station" and record.station != principal.name:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scan with id {scan_id}")
    views = await asyncio.to_thread(store.bag_scans, record.station, record.bag_id) or [record]
    bag = fuse_bag(views)
    return {
        "station": record.station, "lane": views[0].lane, "bag_id": record.bag_id, "bag_alarm": bag.alarm,
        "bag_alarm_classes": list(bag.alarm_classes), "bag_views": len(views),
        "views": [{"id": v.id, "created_at": v.created_at, "view": v.view, "alarm": v.alarm,
                   "alarm_classes": list(v.alarm_classes)} for v in views],
    }


async def _stored_image(store: Store, record: ScanRecord) -> tuple[bytes, Path]:
    """(bytes, path) of `record`'s stored file, checked against its sha256: 404 if it is missing, 500 naming
    the damage if its bytes are not the scan's any more (never served as the scan)."""
    try:
        data, path = await asyncio.to_thread(store.load_image, record.image_sha256)
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"the image of scan {record.id} is missing") from None
    except DamagedImageError:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR,
                            detail=f"the stored image of scan {record.id} is damaged: its bytes no longer match its "
                                   f"sha256 {record.image_sha256}; restore the file from a backup, or have the "
                                   "station send the scan again (its re-send rewrites it)") from None
    return data, path


_DAMAGED = {500: {"model": ErrorOut, "description": "The stored image is damaged (its bytes no longer match its sha256)."}}


@router.get(
    "/{scan_id}/image",
    summary="The stored scan file, as the station sent it",
    description="Served by record id only (never by path). Role: supervisor, admin.",
    response_class=Response,
    responses={**_ERRORS, **_NOT_FOUND, **_DAMAGED, 200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {},
                                                          "application/dicom": {}}}},
)
async def get_image(scan_id: ScanIdPath, principal: ReviewerDep, ctx: CtxDep) -> Response:
    _engine, store, _auth, _batcher = ctx.require()
    record = await _get_record(ctx, scan_id)
    data, path = await _stored_image(store, record)
    # A download, not a page: the file is the station's bytes as sent (the review UI shows the preview).
    return Response(data, media_type=record.media_type, headers={
        "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="scan-{scan_id}.{path.suffix.lstrip(".")}"',
    })


@router.get(
    "/{scan_id}/preview.png",
    summary="An 8-bit PNG rendering of the scan, optionally with its detections drawn",
    description="For the review UI (browsers show neither 16-bit TIFF nor DICOS). Role: supervisor, admin.",
    response_class=Response,
    responses={**_ERRORS, **_NOT_FOUND, **_DAMAGED, 200: {"content": {"image/png": {}}}},
)
async def get_preview(
    scan_id: ScanIdPath,
    principal: ReviewerDep,
    ctx: CtxDep,
    boxes: Annotated[bool, Query(description="Draw the detections that alarmed.")] = True,
    max_side: Annotated[int, Query(ge=64, le=4096, description="Longest side of the PNG, pixels.")] = 1024,
) -> Response:
    _engine, store, _auth, _batcher = ctx.require()
    record = await _get_record(ctx, scan_id)
    data, _path = await _stored_image(store, record)
    async with ctx.decode_slots:
        png = await asyncio.to_thread(render_preview, data, record, boxes=boxes, max_side=max_side,
                                      max_pixels=ctx.settings.max_pixels)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/{scan_id}/reviews",
    response_model=list[ReviewOut],
    summary="Review trail of a scan, oldest first",
    description="Role: supervisor, admin.",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_reviews(scan_id: ScanIdPath, principal: ReviewerDep, ctx: CtxDep) -> list[Any]:
    _engine, store, _auth, _batcher = ctx.require()
    await _get_record(ctx, scan_id)
    return await asyncio.to_thread(store.reviews, scan_id)


@router.post(
    "/{scan_id}/reviews",
    response_model=ReviewOut,
    status_code=status.HTTP_201_CREATED,
    summary="Record a verdict (confirmed / cleared) on a scan",
    description="The latest review is the scan's verdict; earlier ones stay as the audit trail. Role: "
                "supervisor, admin (with a session cookie, the CSRF token is required).",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def post_review(scan_id: ScanIdPath, body: ReviewIn, principal: ReviewerDep, ctx: CtxDep) -> Any:
    _engine, store, _auth, _batcher = ctx.require()
    await _get_record(ctx, scan_id)
    return await asyncio.to_thread(store.add_review, scan_id, user=principal.name, verdict=body.verdict, note=body.note)


@router.get(
    "/{scan_id}/tdr",
    summary="DICOS Threat Detection Report of the bag this scan is a view of",
    description="One report per bag, built with pydicos from the stored records of the bag's views recorded "
                "so far: one PTO per alarmed detection of each view, referencing that view's image (so "
                "every view of a bag gives the same report). Role: supervisor, admin. 409 if no view of the "
                "bag alarmed.",
    response_class=Response,
    responses={**_ERRORS, **_NOT_FOUND, 409: {"model": ErrorOut, "description": "No view of the bag alarmed."},
               200: {"content": {TDR_MEDIA_TYPE: {}}}},
)
async def get_tdr(scan_id: ScanIdPath, principal: ReviewerDep, ctx: CtxDep) -> Response:
    engine, store, _auth, _batcher = ctx.require()
    record = await _get_record(ctx, scan_id)
    views = await asyncio.to_thread(store.bag_scans, record.station, record.bag_id)
    if not alarmed_views(views):
        return JSONResponse({"detail": f"no view of bag {record.bag_id!r} (scan {scan_id}) alarmed; "
                                       "there is no threat report"}, status_code=409)
    try:
        data = await asyncio.to_thread(bag_report, engine, store, views)
    except TdrError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(exc)) from None
    name = tdr_file_name(views)
    return Response(data, media_type=TDR_MEDIA_TYPE, headers={"Content-Disposition": f'attachment; filename="{name}"'})
