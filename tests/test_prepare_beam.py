"""The Beam preparation (data/prepare_beam.py) on the DirectRunner writes the records the plain path writes."""

import json

import pytest
from array_record.python.array_record_module import ArrayRecordReader

from data.manifest import BadRecord
from data.prepare import prepare
from tests.test_manifest import every_kind

beam = pytest.importorskip("apache_beam", reason="the `beam` extra")
from data.prepare_beam import prepare_beam  # noqa: E402  (needs apache_beam)

pytestmark = pytest.mark.slow  # starts a Beam pipeline (~10 s)


def records(folder, split) -> list[bytes]:
    found = []
    for path in sorted(folder.glob(f"{split}-*.array_record")):
        reader = ArrayRecordReader(str(path))
        found += reader.read_all()
        reader.close()
    return sorted(found)


def test_beam_on_the_direct_runner_writes_the_records_of_the_plain_path(tmp_path):
    manifest = every_kind(tmp_path, copies=2)
    with open(manifest, "a") as out:
        out.write(json.dumps({"text": ""}) + "\n")
    plain = prepare(manifest, tmp_path / "plain", skip_bad=True, workers=1, log=lambda m: None)
    on_beam = prepare_beam(manifest, tmp_path / "beam", skip_bad=True, log=lambda m: None)
    assert on_beam["records"] == plain["records"] and on_beam["kinds"] == plain["kinds"]
    assert on_beam["bad_lines"] == plain["bad_lines"] == 1 and "text is empty" in on_beam["errors"][0]["error"]
    for split in ("train", "validation"):
        assert records(tmp_path / "beam", split) == records(tmp_path / "plain", split)


def test_a_bad_line_fails_the_beam_pipeline_naming_it(tmp_path):
    manifest = every_kind(tmp_path)
    with open(manifest, "a") as out:
        out.write(json.dumps({"image": "media/missing.png", "caption": "gone"}) + "\n")
    with pytest.raises(BadRecord, match="no such file 'media/missing.png'"):
        prepare_beam(manifest, tmp_path / "beam", log=lambda m: None)
    assert not (tmp_path / "beam").exists() and not (tmp_path / "beam.partial").exists()
