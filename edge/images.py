"""Content-addressed image files: `<root>/ab/cd/<sha256>.<suffix>`.

A scan is acknowledged to its station only after its image is on disk, so every write is: a temporary file
in the target directory, fsync, atomic rename onto the final name, fsync of the directory (the rename is
only durable once the directory entry is). New directories are fsynced into their parents the same way.
Files are named by the sha256 of their bytes, so two processes (or two hosts on a shared volume) storing
the same image write identical files and the rename race is harmless; a re-sent image is not written twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

__all__ = ["DamagedImageError", "ImageFiles", "MEDIA_TYPES", "is_sha256_hex", "media_type_for_suffix"]

#: Media type by file suffix. Anything else is stored and served as application/octet-stream.
MEDIA_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "dcm": "application/dicom",
    "dcs": "application/dicom",
}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Suffixes become part of a path: letters and digits only, so nothing like "../x" can get in.
_SUFFIX_RE = re.compile(r"[a-z0-9]{1,10}")


class DamagedImageError(OSError):
    """A stored file whose bytes no longer hash to its name (truncated or altered on disk)."""

    def __init__(self, sha256: str, path: Path) -> None:
        super().__init__(f"the stored file {path.name} is damaged: its bytes no longer hash to {sha256[:12]}…")
        self.sha256, self.path = sha256, path


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def media_type_for_suffix(suffix: str) -> str:
    """Media type for a file suffix such as "png" or ".PNG"."""
    return MEDIA_TYPES.get(suffix.lower().lstrip("."), "application/octet-stream")


def is_sha256_hex(value: object) -> bool:
    """True for a lowercase 64-digit hex string (what `ImageFiles.put` returns)."""
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(final: Path, data: bytes) -> None:
    """Write `data` to `final` (in an existing directory) atomically and durably: a temporary file, fsync,
    rename onto `final`, fsync of the directory. The temporary file has a dot-name (globs of `<name>.*`
    never match it) unique per writer, so concurrent writers of one file (threads or processes on a shared
    directory) never write into the same one; it is removed if the write fails."""
    tmp = final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"
    try:
        with open(tmp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _makedirs_durable(path: Path, root: Path | None = None) -> None:
    """`mkdir -p path`, fsyncing each parent in which a new directory entry was made, and, when anything was
    made, every directory above it up to `root`: a directory found there may be another writer's that it
    has not made durable yet (its fsync still to come), and a file acknowledged under it must not be lost
    with it."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another process made it first; its entry is its to fsync, but be safe
            pass
        _fsync_dir(directory.parent)
    if root is not None:
        found = probe  # the deepest directory that existed already
        while found != root and root in found.parents:
            _fsync_dir(found.parent)
            found = found.parent


class ImageFiles:
    """The image store under one root directory (`<data_dir>/images`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4]

    def make_tree(self) -> None:
        """Make every directory an image can go to (65,536), as a store has them after its first day of
        scans; durable (each parent fsynced once its entries are made). Until then most new images also
        make their directory and fsync its parent (`bench/store_cost.py` measures both)."""
        _makedirs_durable(self.root)
        for a in range(256):
            top = self._dir(f"{a:02x}00").parent
            top.mkdir(exist_ok=True)
            for b in range(256):
                self._dir(f"{a:02x}{b:02x}").mkdir(exist_ok=True)
            _fsync_dir(top)
        _fsync_dir(self.root)

    def put(self, data: bytes, *, suffix: str, sha256: str | None = None) -> str:
        """Store `data` durably; return its sha256 hex. Storing the same bytes again writes nothing.

        sha256: the caller's digest of `data`, when it has one already (the lane service hashes each scan
        once, for its idempotency check, and a 556-kB scan takes about 0.3 ms of a core to hash); it names
        the file, so it must be the digest of these bytes.
        """
        if not data:
            raise ValueError("empty image")
        suffix = suffix.lower().lstrip(".")
        if not _SUFFIX_RE.fullmatch(suffix):
            raise ValueError(f"bad image suffix {suffix!r}: letters and digits only, at most 10")
        if sha256 is None:
            sha256 = hashlib.sha256(data).hexdigest()
        elif not is_sha256_hex(sha256):
            raise ValueError(f"bad sha256 {sha256!r}: 64 lowercase hex digits expected")
        directory = self._dir(sha256)
        final = directory / f"{sha256}.{suffix}"
        if final.is_file() and _file_sha256(final) == sha256:
            # Already stored, perhaps by another process that has renamed it but not yet fsynced the
            # directory: fsync it ourselves, since our caller will acknowledge the scan on our return.
            # (A file there that is not these bytes, damaged on disk, is replaced below like a new one.)
            _fsync_dir(directory)
            return sha256
        _makedirs_durable(directory, self.root)
        write_durable(final, data)
        return sha256

    def find(self, sha256: str) -> Path:
        """Path of the stored file for `sha256`; KeyError if there is none (or `sha256` is malformed)."""
        if not is_sha256_hex(sha256):
            raise KeyError(sha256)
        # The same bytes stored under two suffixes are two identical files; either will do.
        matches = sorted(self._dir(sha256).glob(f"{sha256}.*"))
        if not matches:
            raise KeyError(sha256)
        return matches[0]

    def make_root(self) -> None:
        """Make the root directory (durably) if it is missing: a store's first start."""
        _makedirs_durable(self.root)

    def load(self, sha256: str) -> tuple[bytes, Path]:
        """(bytes, path) of a stored image, checked against its name; KeyError if absent,
        DamagedImageError if the file's bytes are not the image any more."""
        path = self.find(sha256)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DamagedImageError(sha256, path)
        return data, path

    def read(self, sha256: str) -> tuple[bytes, str]:
        """(bytes, media type) of a stored image, checked as `load` checks it."""
        data, path = self.load(sha256)
        return data, media_type_for_suffix(path.suffix)
