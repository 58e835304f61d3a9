"""Finding image files and reading their size from the header only (no pixels are decoded)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from datasets.sample import Problem

#: Image file suffixes the public X-ray datasets use (lower case; matching is case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; [] when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The image in `folder` named `stem` with any known suffix (either case), or None."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def header_size(
    path: Path, *, annotation_file: Path | None = None, record: str | None = None
) -> tuple[int, int] | Problem:
    """(width, height) of the image from its header, or a `Problem` (missing or unreadable image).

    Pillow's `open` reads only the header, so this costs one small read per image even on large sets.
    The problem is located at the annotation that refers to the image when one is given.
    """
    where = annotation_file if annotation_file is not None else path
    if not path.is_file():
        return Problem("missing_image", where, f"image {path} does not exist", record=record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning is not our concern for a size read
            with Image.open(path) as img:
                width, height = img.size
    except Exception as exc:  # Pillow raises several unrelated types for corrupt headers
        return Problem("unreadable_image", where, f"image {path} header cannot be read: {exc}", record=record)
    return int(width), int(height)
