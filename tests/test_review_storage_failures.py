"""Review: the lane service when its storage fails under it, as lane boxes see it: the disk fills up while
scans arrive (ENOSPC on the image write, its fsync, or the SQLite write), the data directory turns read-only
or is removed while the service runs, and image files of acknowledged scans are later deleted or damaged.

The promises checked: a scan is acknowledged only once its image and its record are durably written; a scan
that cannot be stored gets a clear answer the station can act on (not an anonymous "internal error"), leaves
no partial image under its final name and no record pointing at a missing image; /healthz stays 200 while
/readyz says whether the box can take scans; once the fault is gone the same scan re-sent is stored whole;
and an acknowledged scan is never lost. Tests marked Fixed failed on the code as reviewed, which their docstrings describe.

Real small filesystems (tmpfs, read-only bind mounts) are used where this process may mount (root in a
sandbox); those tests skip with the reason otherwise. Every mount is undone in a `finally`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_support import Service, png_bytes, post_png, running_service, ui_login

#: What a station can act on when its scan could not be stored: 507 Insufficient Storage (RFC 4918: the
#: server cannot store what the request needs) or 503 with Retry-After (the lane box cannot take scans now;
#: the station keeps the scan and re-sends it). A bare 500 "internal error (request id ...)" tells the
#: station (and the operator reading its log) nothing: it cannot tell a full disk from a bug.
STORAGE_STATUSES = (503, 507)
STORAGE_WORDS = re.compile(r"disk|storage|space|full|read-only|not writable|cannot be written|cannot write", re.I)


# -- helpers --------------------------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy: detach it lazily


@contextmanager
def small_volume(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (made), unmounted on exit; the test is skipped if mounting is
    not permitted here."""
    where.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield where
    finally:
        _umount(where)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only (EROFS for new writes) while the block runs: a read-only bind mount over itself, as
    a volume remounted read-only after an I/O error looks to the service."""
    done = _mount("--bind", str(path), str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        done = _mount("-o", "remount,bind,ro", str(path))
        if done.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only here: {done.stderr.strip()}")
        yield
    finally:
        _umount(path)


def fill(volume: Path) -> Path:
    """Fill `volume` to the last byte with one file (returned: delete it to free the space)."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) on close
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def lenient(svc: Service) -> Service:
    """Let the TestClient return the service's own answer to an unhandled error (its 500) instead of raising."""
    svc.client._transport.raise_server_exceptions = False
    return svc


def db_records(db_file: Path) -> list[tuple[int, str, str]]:
    """(id, bag_id, image_sha256) of every scan, read with a connection of our own."""
    with sqlite3.connect(str(db_file)) as db:
        return list(db.execute("SELECT id, bag_id, image_sha256 FROM scans ORDER BY id"))


def image_files(data_dir: Path, sha: str | None = None) -> list[Path]:
    """Every file under the image store (temporary ones included), or those named for `sha`."""
    root = data_dir / "images"
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and (sha is None or p.name.startswith(sha))]


def assert_every_record_has_its_whole_image(db_file: Path, data_dir: Path) -> None:
    for scan_id, _bag, sha in db_records(db_file):
        files = image_files(data_dir, sha)
        assert files, f"scan {scan_id} is recorded but its image {sha[:12]}... is not on disk"
        assert hashlib.sha256(files[0].read_bytes()).hexdigest() == sha, f"scan {scan_id}'s image is not whole"


def assert_clear_storage_refusal(r) -> None:  # noqa: ANN001 - an httpx response
    assert r.status_code in STORAGE_STATUSES, (
        f"a scan that could not be stored was answered {r.status_code} {r.text}; expected 507 Insufficient "
        "Storage or 503 with Retry-After and a message naming the storage problem")
    detail = r.json().get("detail", "")
    assert STORAGE_WORDS.search(detail) and "internal error" not in detail, detail
    if r.status_code == 503:
        assert "retry-after" in r.headers, "a 503 must say when to retry (Retry-After)"


def metric_lines(svc: Service) -> list[str]:
    text = svc.client.get("/metrics", headers=svc.auth("supervisor")).text
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# -- the disk fills up ----------------------------------------------------------------------------------


def test_a_scan_whose_image_write_hits_a_full_disk_is_refused_clearly_and_accepted_once_space_is_freed(
        tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). The data volume (images and, as by default, the SQLite file) fills up. The image write fails
    with ENOSPC and the scan is rightly not acknowledged, the temporary file is removed, and nothing is
    recorded; but the station is answered 500 "internal error (request id ...)": it cannot tell a full disk
    from a bug, gets no Retry-After, and the operator learns the cause only from the traceback in the log.
    Should be: 507 (or 503 + Retry-After) with a message saying the lane box's storage is full.
    Likely cause: `ingest.screen` lets the OSError from `Store.put_image` (awaited in `record_it`) escape to
    the app's catch-all `_internal_error`; nothing maps storage OSErrors (ENOSPC/EDQUOT/EROFS/EACCES/EIO)."""
    volume = tmp_path / "vol"
    with small_volume(volume, "4m"):
        data_dir, db_file = volume / "data", volume / "data" / "xscreen.db"
        with running_service(tmp_path, db_url=f"sqlite:///{db_file}", data_dir=data_dir) as svc:
            lenient(svc)
            first = post_png(svc, png_bytes(1), "bag-1")
            assert first.status_code == 200, first.text
            scan = png_bytes(2, hw=(400, 400))  # ~470 kB: no room for it
            sha = hashlib.sha256(scan).hexdigest()
            filler = fill(volume)
            try:
                r = post_png(svc, scan, "bag-2")
                # What held (checked before the status, so they are reported even while the status is wrong):
                assert r.status_code != 200, "a scan that could not be written was acknowledged"
                assert image_files(data_dir, sha) == [], "a partial image was left under its final name"
                assert not [p for p in image_files(data_dir) if p.name.endswith(".tmp")], "temporary file left"
                assert [b for _i, b, _s in db_records(db_file)] == ["bag-1"]
                assert svc.client.get("/healthz").status_code == 200
                assert_clear_storage_refusal(r)
            finally:
                filler.unlink()
            again = post_png(svc, scan, "bag-2")
            assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
            image = svc.client.get(f"/v1/scans/{again.json()['id']}/image", headers=svc.auth("supervisor"))
            assert image.status_code == 200 and image.content == scan
            assert_every_record_has_its_whole_image(db_file, data_dir)


def test_an_image_fsync_failing_with_enospc_is_refused_clearly_leaves_nothing_and_a_resend_is_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed (this failed on the code as reviewed; same cause as the full-disk test). fsync of the image's temporary file fails with ENOSPC (a
    thin-provisioned or network volume reports the lost write-back there, not at write()). Held: no file
    under the final name, no temporary file, no record (the record is written only after the image, so a
    record can never point at an image whose write failed), and the re-send is stored. Wrong: the answer is
    a bare 500 "internal error"; it should be 507 / 503 + Retry-After naming the storage problem."""
    real_fsync = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if name.endswith(".tmp") and not failed:
            failed.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    with running_service(tmp_path) as svc:
        lenient(svc)
        data_dir, db_file = tmp_path / "data", tmp_path / "edge.db"
        scan = png_bytes(3)
        sha = hashlib.sha256(scan).hexdigest()
        monkeypatch.setattr(os, "fsync", fsync)
        r = post_png(svc, scan, "bag-3")
        assert failed, "the image's fsync was never reached"
        assert r.status_code != 200, "acknowledged although its image's fsync failed"
        assert image_files(data_dir) == [], "the image (or its temporary file) was left behind"
        assert db_records(db_file) == []
        assert svc.client.get("/healthz").status_code == 200
        again = post_png(svc, scan, "bag-3")
        assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
        assert [p.read_bytes() for p in image_files(data_dir, sha)] == [scan]
        assert_clear_storage_refusal(r)


def test_a_record_write_hitting_a_full_disk_is_refused_clearly_and_accepted_once_space_is_freed(
        tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). The image is already stored (the same bytes sent for another bag), so only the SQLite insert
    needs space, and the WAL cannot grow: "database or disk is full". Held: the transaction rolls back,
    nothing is recorded, the pool's connections work again once space is freed, and the re-send is stored.
    Wrong: answered 500 "internal error (request id ...)" (`app._database_busy` takes every
    OperationalError, answers 503 only for "database is locked" and passes SQLITE_FULL to `_internal_error`).
    Should be 507 / 503 + Retry-After saying the storage is full."""
    volume = tmp_path / "vol"
    with small_volume(volume, "4m"):
        data_dir, db_file = volume / "data", volume / "data" / "xscreen.db"
        with running_service(tmp_path, db_url=f"sqlite:///{db_file}", data_dir=data_dir) as svc:
            lenient(svc)
            scan = png_bytes(4)
            assert post_png(svc, scan, "bag-4").status_code == 200
            filler = fill(volume)
            try:
                r = post_png(svc, scan, "bag-5")
                if r.status_code == 200:
                    pytest.skip("SQLite found room in its WAL for the record: the full disk was not reached")
                assert [b for _i, b, _s in db_records(db_file)] == ["bag-4"]
                assert svc.client.get("/healthz").status_code == 200
                assert_clear_storage_refusal(r)
            finally:
                filler.unlink()
            again = post_png(svc, scan, "bag-5")
            assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
            assert_every_record_has_its_whole_image(db_file, data_dir)


def test_readyz_says_not_ready_while_the_data_volume_is_full(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). With not one byte free on the data volume every new scan fails, yet /readyz answers 200
    "ready" (it checks the model, `SELECT 1` and the batcher only): a load balancer or the station's
    failover keeps sending scans to a box that can store none. Should be 503 (or at least a storage field
    that is false) while the data directory has no room for a scan; /healthz stays 200 (the process is up).
    Likely cause: `routes_ops.readyz` has no storage check (free space / a write probe of data_dir)."""
    volume = tmp_path / "vol"
    with small_volume(volume, "4m"):
        data_dir = volume / "data"
        # A 4-MB volume: the free space a lane box keeps (XSCREEN_MIN_FREE_BYTES) scaled down to it.
        with running_service(tmp_path, db_url=f"sqlite:///{data_dir / 'xscreen.db'}", data_dir=data_dir,
                             min_free_bytes=1_000_000) as svc:
            lenient(svc)
            assert svc.client.get("/readyz").status_code == 200
            filler = fill(volume)
            try:
                assert svc.client.get("/healthz").status_code == 200
                ready = svc.client.get("/readyz")
                assert ready.status_code == 503 or False in ready.json().values(), (
                    f"a lane box with a full data volume says {ready.status_code} {ready.text}")
            finally:
                filler.unlink()
            assert svc.client.get("/readyz").status_code == 200


def test_a_storage_failure_is_counted_apart_from_other_errors_in_the_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed (this failed on the code as reviewed). A scan refused for a full disk shows in /metrics only as one more
    xscreen_http_requests{status="500"}, indistinguishable from any bug, and xscreen_rejections has no
    reason for it: an operator cannot alert on "this lane box cannot store scans". Should be: a sample
    naming the storage failure (e.g. xscreen_rejections{reason="storage_full"} or a storage-error counter).
    Likely cause: the OSError bypasses `count_refusal` (no IngestError is made for it)."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        store = svc.ctx.store

        def full(*_a: object, **_k: object) -> str:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(store, "put_image", full)
        r = post_png(svc, png_bytes(6), "bag-6")
        assert r.status_code != 200
        counted = [line for line in metric_lines(svc)
                   if re.search(r"storage|disk|space|enospc", line, re.I) and not line.split()[-1].startswith("0")
                   and "_created" not in line]
        assert counted, "no metric sample counts the storage failure: " + "\n".join(
            line for line in metric_lines(svc) if "status=\"500\"" in line or "rejections" in line)


# -- the data directory turns read-only or disappears ---------------------------------------------------


def test_a_read_only_data_directory_refuses_scans_clearly_says_not_ready_and_recovers(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). The data directory is remounted read-only (EROFS) while the service runs. New scans fail with
    a bare 500 "internal error" and /readyz keeps answering 200 "ready". Should be: 503 (+ Retry-After) or
    507 with a message saying the storage is not writable, and /readyz 503 until it is; once writable
    again, the re-sent scan is stored. (A re-send of an already stored scan, and a new bag with an image
    already on disk, are rightly still answered: nothing needs writing but the database.)"""
    with running_service(tmp_path) as svc:
        lenient(svc)
        data_dir = tmp_path / "data"
        assert post_png(svc, png_bytes(7), "bag-7").status_code == 200
        scan = png_bytes(8)
        with read_only(data_dir):
            r = post_png(svc, scan, "bag-8")
            ready = svc.client.get("/readyz")
            assert svc.client.get("/healthz").status_code == 200
            assert r.status_code != 200
            assert [b for _i, b, _s in db_records(tmp_path / "edge.db")] == ["bag-7"]
            resent = post_png(svc, png_bytes(7), "bag-7")
            assert resent.status_code == 200 and resent.json()["duplicate"] is True, resent.text
        again = post_png(svc, scan, "bag-8")
        assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
        assert_every_record_has_its_whole_image(tmp_path / "edge.db", data_dir)
        assert_clear_storage_refusal(r)
        assert ready.status_code == 503 or False in ready.json().values(), (
            f"/readyz while the data directory is read-only: {ready.status_code} {ready.text}")


def test_a_scan_acknowledged_after_the_data_directory_was_removed_is_not_lost(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). Default layout: the SQLite file lives in the data directory (`./xscreen-data/xscreen.db`).
    The directory is removed while the service runs (an operator's clean-up, a volume unmounted under it).
    The next scan is acknowledged (200): `ImageFiles.put` quietly makes data/images/... again, and the
    record goes into the open connection's unlinked database file, which no path names any more; a restart
    opens a new empty database and the acknowledged scan is gone. Should be: the scan refused (503 /
    507, not acknowledged) and /readyz 503 while the database file (or the data directory the service was
    started with) is gone; or, if acknowledged, still there when the database is opened again.
    Likely cause: nothing checks that the store's files are still the ones it opened (e.g. the database
    file's inode, a marker file in data_dir), neither before acknowledging nor in /readyz."""
    data_dir = tmp_path / "data"
    db_file = data_dir / "xscreen.db"
    with running_service(tmp_path, db_url=f"sqlite:///{db_file}", data_dir=data_dir) as svc:
        lenient(svc)
        assert post_png(svc, png_bytes(9), "bag-9").status_code == 200
        shutil.rmtree(data_dir)
        r = post_png(svc, png_bytes(10), "bag-10")
        ready = svc.client.get("/readyz")
        assert svc.client.get("/healthz").status_code == 200
        if r.status_code == 200:
            scan_id = r.json()["id"]
            assert db_file.exists(), (f"scan {scan_id} was acknowledged, but the database file it was written to "
                                      "no longer exists: a restart loses it")
            assert scan_id in [i for i, _b, _s in db_records(db_file)]
        else:
            assert_clear_storage_refusal(r)
            assert ready.status_code == 503, ready.text


# -- image files of acknowledged scans deleted or damaged later -----------------------------------------


def _stored_file(svc: Service, scan_id: int) -> Path:
    sha = svc.client.get(f"/v1/scans/{scan_id}", headers=svc.auth("supervisor")).json()["image_sha256"]
    (path,) = image_files(svc.settings.data_dir, sha)
    return path


def test_a_deleted_image_is_a_clear_404_and_the_rest_of_the_service_is_unaffected(tmp_path: Path) -> None:
    """Held. The image file of an acknowledged, confirmed alarm is deleted on disk: its image and preview
    are a 404 naming the missing image; its bag page, bag, TDR (built from the records), the seizure export
    and the review UI's queue still work; /readyz stays 200 and other scans are served."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        sup = svc.auth("supervisor")
        gone = post_png(svc, png_bytes(11), "bag-11").json()
        other = post_png(svc, png_bytes(12), "bag-12").json()
        assert gone["alarm"], "the tiny model alarms on every scan"
        assert svc.client.post(f"/v1/scans/{gone['id']}/reviews", json={"verdict": "confirmed"},
                               headers=sup).status_code == 201
        _stored_file(svc, gone["id"]).unlink()
        for route in ("image", "preview.png"):
            r = svc.client.get(f"/v1/scans/{gone['id']}/{route}", headers=sup)
            assert r.status_code == 404 and "missing" in r.json()["detail"], (route, r.status_code, r.text)
        assert svc.client.get(f"/v1/scans/{gone['id']}/bag", headers=sup).status_code == 200
        assert svc.client.get(f"/v1/scans/{gone['id']}/tdr", headers=sup).status_code == 200
        seized = svc.client.get("/v1/seizures", headers=sup)
        assert seized.status_code == 200 and [s["bag_id"] for s in seized.json()["seizures"]] == ["bag-11"]
        assert svc.client.get(f"/v1/scans/{other['id']}/image", headers=sup).content == png_bytes(12)
        ui_login(svc.client)
        for page in (f"/ui/bags/{gone['id']}", "/ui/queue", "/ui/seizures"):
            assert svc.client.get(page).status_code == 200, page
        assert svc.client.get("/readyz").status_code == 200


def test_a_resent_scan_whose_image_was_deleted_is_acknowledged_only_with_its_image_back(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). An acknowledged scan's image file is lost (deleted, a disk error, a restore of the database
    without the images). The station re-sends the scan (it never got the answer, or is asked to): it is
    answered `duplicate: true` from the record, and the image is NOT written again, so the service
    acknowledges a scan whose image is not on disk, and the one copy that could have repaired the store is
    dropped. Should be: the duplicate path makes sure the image is on disk (`put_image` of the sent bytes:
    a stat when the file is there) before answering. Likely cause: `ingest.screen` answers `existing`
    records without calling `store.put_image`."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        scan = png_bytes(13)
        first = post_png(svc, scan, "bag-13").json()
        _stored_file(svc, first["id"]).unlink()
        again = post_png(svc, scan, "bag-13")
        assert again.status_code == 200 and again.json()["id"] == first["id"], again.text
        image = svc.client.get(f"/v1/scans/{first['id']}/image", headers=svc.auth("supervisor"))
        assert image.status_code == 200 and image.content == scan, (
            f"the re-sent scan was acknowledged but its image is still missing: {image.status_code} {image.text}")


def test_a_scan_whose_stored_file_is_damaged_is_stored_whole_when_sent_again(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). A stored image file is truncated on disk (a bad sector, a copy cut short). The same bytes then
    arrive again, as another bag's scan (or a re-screening): `ImageFiles.put` sees a file under the name
    (`final.is_file()`) and returns without looking at it, so the new scan is acknowledged pointing at a
    file that is not its image. Should be: a file under the content-addressed name whose size (at least)
    differs from the data's is replaced (written atomically as any new image), so an acknowledged scan
    always has its whole image. Likely cause: edge/images.py `put`, the `final.is_file()` short cut."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        scan = png_bytes(14)
        first = post_png(svc, scan, "bag-14").json()
        path = _stored_file(svc, first["id"])
        path.write_bytes(scan[:100])
        second = post_png(svc, scan, "bag-15")
        assert second.status_code == 200 and second.json()["duplicate"] is False, second.text
        image = svc.client.get(f"/v1/scans/{second.json()['id']}/image", headers=svc.auth("supervisor"))
        assert image.content == scan, (f"scan {second.json()['id']} was acknowledged, but its stored image is "
                                       f"{len(image.content)} bytes of damaged file, not its {len(scan)} bytes")


def test_the_preview_of_a_damaged_image_is_a_clear_error(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed). The preview (the review UI's thumbnails and bag page image) of a scan whose stored file is
    damaged answers 500 "internal error (request id ...)" with a traceback in the log (`render_preview`'s
    DecodeError escapes to the catch-all). Should be a clear error naming the problem, e.g. 500 (or 410 /
    422) "the stored image of scan N is damaged (cannot be decoded)". The rest of the service is not
    affected (checked too)."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        sup = svc.auth("supervisor")
        bad = post_png(svc, png_bytes(16), "bag-16").json()
        good = post_png(svc, png_bytes(17), "bag-17").json()
        path = _stored_file(svc, bad["id"])
        path.write_bytes(path.read_bytes()[:100])
        assert svc.client.get(f"/v1/scans/{good['id']}/preview.png", headers=sup).status_code == 200
        assert svc.client.get(f"/v1/scans/{bad['id']}/bag", headers=sup).status_code == 200
        assert svc.client.get(f"/v1/scans/{bad['id']}/tdr", headers=sup).status_code == 200
        assert svc.client.get("/readyz").status_code == 200
        r = svc.client.get(f"/v1/scans/{bad['id']}/preview.png", headers=sup)
        assert r.status_code in (404, 410, 422, 500), r.status_code
        detail = r.json()["detail"]
        assert "internal error" not in detail and re.search(r"damaged|corrupt|cannot be decoded|unreadable", detail), (
            f"the preview of a damaged image answered {r.status_code} {detail!r}")


def test_a_damaged_image_is_not_served_as_the_scans_image(tmp_path: Path) -> None:
    """Fixed (this failed on the code as reviewed; judgement: the image route is what the seizure export's evidence links to). A stored file
    truncated on disk is served by GET /v1/scans/{id}/image as 200 with the damaged bytes: the caller gets a
    file that is not the scan, with nothing to say so, although the file's name is the sha256 of the bytes
    it must hold (hashing a 0.5 MB scan costs about 0.3 ms). Should be: the bytes checked against
    `image_sha256` (or at least against the size), and a mismatch answered as a clear error (500 / 410
    naming the damaged image), never as the scan."""
    with running_service(tmp_path) as svc:
        lenient(svc)
        scan = png_bytes(18)
        first = post_png(svc, scan, "bag-18").json()
        path = _stored_file(svc, first["id"])
        path.write_bytes(scan[:100])
        r = svc.client.get(f"/v1/scans/{first['id']}/image", headers=svc.auth("supervisor"))
        assert not (r.status_code == 200 and r.content != scan), (
            f"served {len(r.content)} bytes of a damaged file as scan {first['id']}'s {len(scan)}-byte image")
