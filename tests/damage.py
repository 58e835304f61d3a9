"""Damaged files for decoder property tests: bytes overwritten, inserted or cut, as a station's network,
disk or encoder can hand the lane service any bytes; and what a scan decoded from them must still be."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

#: Up to four edits: (operation, where as a fraction of the length, bytes); a cut drops everything from there.
EDITS = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "cut"]), st.floats(0, 1, exclude_max=True),
              st.binary(min_size=1, max_size=16) | st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"])),
    min_size=1, max_size=4)


def damaged(data: bytes, edits: list[tuple[str, float, bytes]], *, keep: int = 0) -> bytes:
    """`data` with each edit applied past its first `keep` bytes (e.g. the DICOS preamble and marker, so that
    the damage reaches the toolkit instead of the marker check)."""
    out = bytearray(data)
    for op, where, chunk in edits:
        at = keep + int(where * (len(out) - keep))
        if op == "set":
            out[at:at + len(chunk)] = chunk[: len(out) - at]
        elif op == "insert":
            out[at:at] = chunk
        else:
            del out[max(keep + 1, at):]
    return bytes(out)


def assert_well_formed(scan, *, max_pixels: int) -> None:
    """A decoded scan the service can use: 8- or 16-bit, contiguous, its size as it says, within budget."""
    assert scan.pixels.dtype in (np.uint8, np.uint16) and scan.pixels.flags.c_contiguous
    assert scan.pixels.shape[:2] == (scan.height, scan.width) and scan.width * scan.height <= max_pixels


def decoded_truncations(data: bytes, decode, *, cuts: int = 150) -> list[int]:
    """The lengths, about `cuts` of them spread over `data`, to which `decode(data[:n])` did not raise a
    DecodeError (a file cut short anywhere must be refused, never decoded with rows missing)."""
    from vision.decode import DecodeError

    decoded = []
    for cut in range(1, len(data), max(1, len(data) // cuts)):
        try:
            decode(data[:cut])
        except DecodeError:
            continue
        decoded.append(cut)
    return decoded
