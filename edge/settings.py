"""The lane service's settings: environment variables `XSCREEN_*` (or a `.env` file), else defaults.

    XSCREEN_MODEL_PATH=model.onnx XSCREEN_DB_URL=sqlite:///./xscreen-data/xscreen.db xscreen serve

Unknown `XSCREEN_*` keys in the `.env` file are errors, so a misspelt limit does not silently fall back to
its default; other keys in it (other tools') are left alone, and so is the environment, which other xscreen
commands read too (e.g. XSCREEN_STATION_KEY). Nothing here opens a file or a connection: the app's
lifespan does that.
"""

from __future__ import annotations


from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from edge.defaults import DEFAULT_DATA_DIR, DEFAULT_DB_URL
from inference.cores import usable_cores
from vision.decode import LANE_MAX_PIXELS

#: 32 MP: a 2,000-line belt scan at 1.5 mm/px over 3 m is about 4 MP, a high-resolution cabinet scanner
#: about 16 MP. Decoding one peaks at 3-6 times its decoded array (the decoder's image, its numpy copy,
#: float temporaries for 16 bit): up to ~360 MB for a 32 MP scan, and the service decodes one per model worker
#: at a time (XSCREEN_BATCH_WORKERS, 2 on 2 cores), which a lane box can afford.
DEFAULT_SERVICE_MAX_PIXELS = LANE_MAX_PIXELS  # `xscreen predict` refuses the same scans


#: XSCREEN_* variables of other commands, allowed in a shared .env file.
_OTHER_XSCREEN_KEYS = frozenset({"station_key", "pg_bin", "cache_dir"})


def unknown_environment_settings(environ: dict[str, str]) -> list[str]:
    """XSCREEN_* variables of `environ` that are no setting of the service nor another command's (a typo
    would otherwise be ignored without a word, the service running on the default instead)."""
    prefix = "XSCREEN_"
    known = set(EdgeSettings.model_fields) | _OTHER_XSCREEN_KEYS
    return sorted(k for k in environ if k.upper().startswith(prefix) and k[len(prefix):].lower() not in known)


def sqlite_url_problem(db_url: str) -> str | None:
    """Why `db_url` names no SQLite file a lane can keep (an in-memory database: what is written there is
    gone with the process, and no other command reaches it), or None."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return None
    name = url.database or ""
    if name in ("", ":memory:") or "mode=memory" in name or name.startswith("file::memory:"):
        return (f"{db_url!r} is an in-memory database: nothing would outlive the process; "
                "use sqlite:///path/to/xscreen.db")
    return None


class _CheckedDotEnv:
    """The .env source, refusing XSCREEN_* keys that are not settings (typos)."""

    def __init__(self, source: DotEnvSettingsSource, fields: set[str]) -> None:
        self.source = source
        self.fields = fields

    def __call__(self) -> dict[str, Any]:
        prefix = "xscreen_"
        unknown = sorted(
            k for k in self.source.env_vars
            if k.lower().startswith(prefix) and k.lower()[len(prefix):] not in self.fields | _OTHER_XSCREEN_KEYS
        )
        if unknown:
            raise ValueError(f".env holds unknown xscreen settings {unknown}; known: "
                             f"{sorted('XSCREEN_' + f.upper() for f in self.fields)}")
        # Other tools' keys would reach the model as extras; only settings go on.
        return {k: v for k, v in self.source().items() if k in self.fields}


class StoreLocation(BaseSettings):
    """Where the service's database and images are, read as `EdgeSettings` reads them (XSCREEN_DB_URL and
    XSCREEN_DATA_DIR from the environment, else from ./.env, else the defaults): for the commands that open
    the store without serving (`xscreen admin`), so that they open the database `xscreen serve` would."""

    model_config = SettingsConfigDict(env_prefix="XSCREEN_", env_file=".env", extra="ignore", frozen=True)

    db_url: str = DEFAULT_DB_URL
    data_dir: Path = DEFAULT_DATA_DIR


class EdgeSettings(BaseSettings):
    """Everything the lane service is configured by (see the field descriptions for units)."""

    model_config = SettingsConfigDict(
        env_prefix="XSCREEN_",
        env_file=".env",
        extra="ignore",  # for the .env file's other keys; XSCREEN_* typos are caught by _CheckedDotEnv
        frozen=True,
        protected_namespaces=(),
    )

    model_path: Path = Field(description="The model package (.onnx) the lane runs.")
    db_url: str = Field(DEFAULT_DB_URL, description="SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://...")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where scan images are stored (content-addressed).")
    host: str = Field("127.0.0.1", description="Address `xscreen serve` binds to.")
    port: int = Field(8000, ge=1, le=65535)

    batch_max_size: int = Field(8, ge=1, le=256, description="N: at most this many scans per model call.")
    batch_max_wait_ms: float = Field(
        5.0, ge=0.0, le=1000.0,
        description="T: how long the first scan of a batch waits for company beside a full batch (ms).",
    )
    batch_share_from: int = Field(
        3, ge=2, le=100_000,
        description="From this many scans waiting they are shared out among parallel model calls with a share of "
                    "the cores each (more throughput under load); fewer run as one batch (on idle cores: one call "
                    "on every core). A value above queue_max never shares: lower latency just below saturation.",
    )
    batch_share_max: int = Field(
        2, ge=1, le=256,
        description="Under load (from batch_share_from scans waiting) a model call takes at most this many scans; "
                    "the others wait for the next free worker. On CPU cores a call's time per scan often grows "
                    "with its batch beyond about two (docs/lane_bench.md); set it to batch_max_size where batches are cheap "
                    "(a GPU).",
    )
    batch_workers: int | None = Field(
        None, ge=1, le=16,
        description="Model calls running in parallel (default: 2 on a machine with 2 or more cores, else 1).",
    )
    queue_max: int = Field(64, ge=1, description="Scans waiting for the model; beyond this a request gets 503.")
    decode_workers: int = Field(
        2, ge=1, le=64, description="Review previews rendered at once (bounds the memory their decoded pixels "
                                    "hold; scans are decoded in their model calls' threads)."
    )
    request_deadline_s: float = Field(10.0, gt=0.0, description="A scan not answered by then gets 504.")
    intake_max_bytes: int | None = Field(
        None, ge=1, description="Scan bytes the service holds at once, received and not yet answered, over HTTP and "
                                "streams together; a scan beyond gets 503 with Retry-After before its body is read "
                                "(default: queue_max + model_workers × (batch_max_size + 1) scans of max_body_bytes).")
    max_streams: int = Field(64, ge=1, description="Open, authenticated WS /v1/stream connections; a new one "
                                                   "beyond is closed with 1013 (try again later).")
    max_streams_per_station: int = Field(16, ge=1, description="Open WS /v1/stream connections of one station "
                                                               "(a stream per lane); beyond, 1013.")
    max_connections: int = Field(1000, ge=1, description="Connections and requests `xscreen serve` takes at once "
                                                         "(uvicorn's limit_concurrency); beyond, 503.")
    max_views_per_bag: int = Field(
        64, ge=1, description="A new scan of a bag that already holds this many views gets 409: a bag has a few "
                              "views (and re-screenings); a station sending one bag id for every bag would "
                              "otherwise make each scan read and fuse all the others.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    min_free_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="/readyz says not ready while the image folder's or the database's "
                                              "volume has less free space than this (scans would soon fail for "
                                              "want of it).")
    max_pixels: int = Field(DEFAULT_SERVICE_MAX_PIXELS, ge=1, description="Larger scans get 413 before decoding.")
    rate_limit_per_s: float = Field(20.0, gt=0.0, description="Sustained scans per second per station.")
    rate_limit_burst: int = Field(40, ge=1, description="Scans a station may send at once before 429.")

    tdr_dir: Path | None = Field(
        None, description="If set, a DICOS TDR is written here for every alarmed bag, covering its alarmed views "
                          "(rewritten as they arrive), as bag-<first scan id>-<digest of station and bag id, 12 "
                          "hex>.dcs (nodes with databases of their own may share the folder).",
    )
    webhook_url: str | None = Field(None, description="If set, every alarm is POSTed here (at least once).")
    webhook_timeout_s: float = Field(5.0, gt=0.0)
    outbox_poll_s: float = Field(1.0, gt=0.0, description="How often the webhook sender looks for due items.")

    engine_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads per model call (default: cores / batch_workers)."
    )
    # inference.engine.SpinMode, spelled out: importing it here would load ONNX Runtime with the settings.
    engine_spin: Literal["on", "run", "off"] = Field(
        "run", description="How idle ONNX Runtime threads wait for work: 'run' busy-waits between the operators "
                           "of a model call and stops when it ends (fast calls, free cores between them); 'on' "
                           "also spins after a call (taking the cores that decode and answer requests); 'off' "
                           "never spins (every operator pays a thread wake-up)."
    )
    session_cookie_name: str = Field("xscreen_session", pattern=r"^[A-Za-z0-9_\-]+$")
    session_cookie_secure: bool = Field(
        True, description="Mark cookies Secure (HTTPS only). Turn off only for plain-HTTP development."
    )
    session_ttl_s: int = Field(8 * 3600, ge=60, description="A review UI login lasts this long.")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[Any, ...]:
        dotenv: Any = dotenv_settings
        if isinstance(dotenv_settings, DotEnvSettingsSource):
            dotenv = _CheckedDotEnv(dotenv_settings, set(cls.model_fields))
        return init_settings, env_settings, dotenv, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # extra="ignore" lets a shared .env file work; keyword arguments must still name real settings.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown settings {unknown}")
        return data

    @property
    def model_workers(self) -> int:
        """Model calls in parallel. Two one-thread calls beat one two-thread call on a loaded 2-core lane
        box: a two-thread operator waits for its slower half whenever a request thread holds the other core
        (bench/service_load.py: ~23–25 vs ~19–22 scans/s at saturation)."""
        if self.batch_workers is not None:
            return self.batch_workers
        return 2 if usable_cores() >= 2 else 1

    @property
    def intake_budget_bytes(self) -> int:
        """The intake budget (`intake_max_bytes`, or what the micro-batcher holds in scans of the largest size)."""
        if self.intake_max_bytes is not None:
            return self.intake_max_bytes
        return (self.queue_max + self.model_workers * (self.batch_max_size + 1)) * self.max_body_bytes

    @property
    def model_threads(self) -> int:
        """ONNX Runtime intra-op threads per model call: the cores shared among the parallel calls."""
        if self.engine_threads is not None:
            return self.engine_threads
        return max(1, usable_cores() // self.model_workers)

    @field_validator("db_url")
    @classmethod
    def _openable_db_url(cls, value: str) -> str:
        # Refused here, with the other settings' errors, rather than as a traceback from the lifespan.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL: use sqlite:///file.db or postgresql+psycopg://...") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")
        problem = sqlite_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("host", "data_dir", "tdr_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An empty XSCREEN_HOST binds every interface, an empty folder is the working directory: neither is
        # what a blank line in .env means.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (leave the setting out for its default)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _deliverable_webhook_url(cls, value: str | None) -> str | None:
        # A URL without http(s):// or a host fails every delivery attempt, each only a log line: alarms
        # would never reach the receiver while the service looks healthy.
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the webhook URL must be http:// or https:// with a host")
        return value

    @model_validator(mode="after")
    def _check(self) -> "EdgeSettings":
        if self.queue_max < self.batch_max_size:
            # A batch is formed from queued scans; a queue smaller than a batch can never fill one.
            raise ValueError(f"queue_max ({self.queue_max}) must be ≥ batch_max_size ({self.batch_max_size})")
        return self
