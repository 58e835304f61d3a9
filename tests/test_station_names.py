"""The station simulator's bag ids from folder file names: a name with a space, a bracket, a non-ASCII
letter or of any length gives an id the service takes (letters, digits and . _ : -, starting with a letter
or digit, at most 128 characters; edge.ingest.validate_meta), still unique per bag. Unit level against the
service's own rule, and a round trip through the simulator to a served service (POST and stream).
"""

from __future__ import annotations

import pytest

from edge.ingest import IngestError, validate_meta
from edge.station import StationConfig, bag_id_for, run_station
from edge_support import png_bytes, served_service

_AWKWARD = ["scan 1", "scan(2)", "bagé", "[x] {y}/z", "名前", "tab\there", "-lead", "x" * 300]


def _service_takes(bag_id: str) -> bool:
    try:
        validate_meta({"station": "st1", "lane": "lane-1", "bag_id": bag_id, "view": "top"}, station_name="st1")
    except IngestError:
        return False
    return True


@pytest.mark.parametrize("name", _AWKWARD)
def test_bag_ids_from_awkward_names_pass_the_service_rule(name):
    assert not _service_takes(name)  # as a file name gives it, the service refuses it
    bag_id = bag_id_for("0a1b2c3d", 7, name)
    assert _service_takes(bag_id), bag_id
    assert bag_id.startswith("0a1b2c3d-000007-") and len(bag_id) <= 128


def test_replaced_characters_become_underscores_and_allowed_ones_are_kept():
    assert bag_id_for("r", 1, "scan 1") == "r-000001-scan_1"
    assert bag_id_for("r", 2, "scan(2)") == "r-000002-scan_2_"
    assert bag_id_for("r", 3, "bagé") == "r-000003-bag_"
    assert bag_id_for("r", 4, "a.b_c:d-e") == "r-000004-a.b_c:d-e"  # already valid: unchanged
    assert len(bag_id_for("r", 5, "x" * 300)) == 128


def test_names_that_differ_only_in_replaced_characters_still_give_distinct_ids():
    ids = {bag_id_for("r", k, name) for k, name in enumerate(["scan 1", "scan(1", "scan_1", "scané1"])}
    assert len(ids) == 4


@pytest.mark.parametrize("stream", [False, True], ids=["post", "stream"])
def test_the_simulator_screens_a_folder_of_awkwardly_named_scans(tmp_path, stream):
    folder = tmp_path / "scans"
    folder.mkdir()
    names = ["scan 1.png", "scan(2).png", "bagé.png", "y" * 200 + ".png"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(png_bytes(600 + i))
    with served_service(tmp_path / "svc") as svc:
        summary = run_station(StationConfig(url=svc.url, key=svc.keys["station"], lanes=2, rate=50.0,
                                            source=str(folder), bags=len(names), live=False, stream=stream))
        assert (summary.sent, summary.errors) == (len(names), 0), summary.error_samples
        bag_ids = sorted(r.bag_id for r in svc.ctx.store.list_scans(limit=10))
    assert len(bag_ids) == len(names) and all(len(b) <= 128 for b in bag_ids)
    # folder order is name order: "bagé", "scan 1", "scan(2)", "yyy…"
    assert [b.split("-", 2)[2][:8] for b in bag_ids] == ["bag_", "scan_1", "scan_2_", "y" * 8]
