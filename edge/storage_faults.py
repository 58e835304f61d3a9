"""The lane box's storage failing under the service, in words a station and an operator can act on.

A scan whose image or record cannot be written is not acknowledged; the station keeps it and sends it
again. What it is told: 507 Insufficient Storage when the volume is full (the image, its fsync, or the
database: SQLite's "database or disk is full"), 503 with Retry-After when the storage cannot be written
for another reason (read-only, permissions, an I/O error, the database file removed under the service).
`storage_problem` is what `/readyz` reports, so that a box that cannot store scans is not sent any.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: errno values of a full volume (quota included).
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: errno values of storage that cannot be written now (read-only, permissions, I/O, a folder gone).
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ENOTDIR}


class DatabaseFileGoneError(OSError):
    """The SQLite file the store opened is no longer the one at its path (removed or replaced while the
    service ran): what is written through the open connection would be lost at the next start."""


@dataclass(frozen=True)
class StorageFailure:
    """How to refuse a scan that storage failed: HTTP status, rejection reason, a sentence."""

    status: int
    reason: str
    detail: str


def database_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database or disk is full" (its volume has no room for the write)."""
    return "disk is full" in str(getattr(exc, "orig", exc))


def storage_failure(exc: BaseException) -> StorageFailure | None:
    """The refusal for a storage error raised while writing a scan (its image, fsync or record), or None
    for any other error."""
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError) and database_full(exc):
        return StorageFailure(507, "storage_full", "the lane box's storage is full (the database cannot grow): "
                                                    "the scan was not stored; send it again once space is freed")
    if isinstance(exc, DatabaseFileGoneError):
        return StorageFailure(503, "storage_unavailable", f"the lane box's storage changed under the service: "
                                                           f"{exc.strerror}; the scan was not stored: send it again "
                                                           "once the service is restarted")
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return StorageFailure(507, "storage_full", "the lane box's storage is full (no space left on its data "
                                                    "volume): the scan was not stored; send it again once space is freed")
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        cause = exc.strerror or os.strerror(exc.errno or 0)
        return StorageFailure(503, "storage_unavailable", f"the lane box's storage cannot be written ({cause}): the "
                                                           "scan was not stored; send it again later")
    return None


def _volume_problem(path: Path, what: str, min_free_bytes: int) -> str | None:
    if not path.is_dir():
        return f"{what} {path} is missing"
    if not os.access(path, os.W_OK):
        return f"{what} {path} cannot be written (read-only or no permission)"
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        return f"{what} {path} has {free / 2**20:.1f} MiB free, under the {min_free_bytes / 2**20:.1f} MiB a lane box keeps"
    return None


def storage_problem(images_root: Path, database_file: Path | None, *, min_free_bytes: int) -> str | None:
    """What keeps the store from taking scans now (for /readyz), or None: the image folder or the SQLite
    file's folder missing, unwritable or short of space."""
    problem = _volume_problem(images_root, "the image folder", min_free_bytes)
    if problem is None and database_file is not None:
        problem = _volume_problem(database_file.parent, "the database's folder", min_free_bytes)
    return problem
