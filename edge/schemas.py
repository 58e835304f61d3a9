"""Request and response bodies of the lane service's API (they are what /openapi.json documents)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: Largest id or offset the database can take: SQLite INTEGER and PostgreSQL BIGINT are signed 64-bit, and
#: a larger one fails as the query is sent (a 500), so routes bound them and answer 422 instead.
DB_INT_MAX = 2**63 - 1

#: A scan record id in a route's path.
ScanIdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="Scan record id.")]


def _refuse_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (\\x00)")
    return text


#: Free text that is stored as sent: PostgreSQL text cannot hold NUL, so it is refused here (422) rather
#: than by the database (a 500).
StoredText = Annotated[str, AfterValidator(_refuse_nul)]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ErrorOut(_Out):
    """Every 4xx/5xx answer: what went wrong, in words a station operator can act on."""

    detail: str


class DetectionOut(_Out):
    """One detection in the scan's own pixels. `alarm`: its score reached its class's threshold."""

    class_name: str = Field(alias="class", description="Class name from the model package.")
    score: float = Field(ge=0.0, le=1.0)
    box_xyxy: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in scan pixels.")
    alarm: bool


class ModelOut(_Out):
    name: str
    version: str


class TimingsOut(_Out):
    """Where the time of this request went (ms): decoding and letterboxing, waiting for a batch, the
    model call of that batch, and the whole request up to the answer."""

    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


class ScanResultOut(_Out):
    """The answer to one screened scan (one view of a bag)."""

    id: int = Field(description="Scan record id (use it for the image, the record, the TDR).")
    station: str
    lane: str
    bag_id: str
    view: str
    alarm: bool = Field(description="This view alarmed.")
    alarm_classes: list[str]
    bag_alarm: bool = Field(description="Any view of this bag so far alarmed (vision.decide.fuse_views).")
    bag_alarm_classes: list[str]
    bag_views: int = Field(description="Views of this bag the fused decision covers.")
    detections: list[DetectionOut]
    model: ModelOut
    timings: TimingsOut
    duplicate: bool = Field(description="True when this exact image of this bag was already screened; the "
                                        "stored answer is returned and nothing is stored twice.")


class BagViewOut(_Out):
    """One view of a bag, as its fused decision counts it."""

    id: int
    created_at: datetime
    view: str
    alarm: bool
    alarm_classes: list[str]


class BagOut(_Out):
    """A bag: every view stored so far and the decision fused over them."""

    station: str
    lane: str
    bag_id: str
    bag_alarm: bool = Field(description="Any view of this bag alarmed (vision.decide.fuse_views).")
    bag_alarm_classes: list[str]
    bag_views: int = Field(description="Views the fused decision covers.")
    views: list[BagViewOut] = Field(description="Oldest first.")


class ScanRecordOut(_Out):
    """A stored scan. `reviewed`, `verdict` are null for stations (they never see reviews)."""

    id: int
    created_at: datetime
    station: str
    lane: str
    bag_id: str
    view: str
    image_sha256: str
    media_type: str
    width: int
    height: int
    alarm: bool
    alarm_classes: list[str]
    detections: list[DetectionOut]
    model: ModelOut
    reviewed: bool | None = None
    verdict: Literal["confirmed", "cleared"] | None = None


class ScanListOut(_Out):
    items: list[ScanRecordOut]
    limit: int
    offset: int
    total: int = Field(description="All stored scans (unfiltered).")


class ReviewIn(BaseModel):
    """A supervisor's verdict on a scan."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirmed", "cleared"]
    note: StoredText = Field("", max_length=2000)


class ReviewOut(_Out):
    id: int
    scan_id: int
    created_at: datetime
    user: str
    verdict: Literal["confirmed", "cleared"]
    note: str


class SeizedViewOut(_Out):
    """A confirmed view of a seized bag, with links to its evidence."""

    id: int
    view: str
    scanned_at: datetime
    alarm: bool
    alarm_classes: list[str]
    image_url: str = Field(description="The scan file as the station sent it.")
    preview_url: str = Field(description="An 8-bit PNG rendering with the alarmed detections drawn.")


class SeizureOut(_Out):
    """A bag with at least one view confirmed by a supervisor."""

    station: str
    lane: str
    bag_id: str
    scan_ids: list[int]
    views: list[SeizedViewOut] = Field(description="The confirmed views, oldest first (`scan_ids`, described).")
    classes: list[str] = Field(description="Alarm classes over the confirmed views.")
    confirmed_by: str
    confirmed_at: datetime
    note: str
    tdr_url: str | None = Field(description="The bag's DICOS TDR, covering its alarmed views (null if no view "
                                            "of the bag alarmed).")


class SeizuresOut(_Out):
    generated_at: datetime
    seizures: list[SeizureOut]


class HealthOut(_Out):
    status: Literal["ok"]


class ReadyOut(_Out):
    status: Literal["ready", "not ready"]
    model_loaded: bool
    database: bool
    batcher: bool
    storage: bool = Field(description="The image folder and the database's folder can be written and have room.")
    storage_problem: str | None = Field(None, description="Why storage is false, in words.")


class MeOut(_Out):
    name: str
    role: Literal["station", "supervisor", "admin"]
    kind: Literal["station", "user"]
