"""karaoke.storage: JSON documents with undefined scores, atomic writes."""

from __future__ import annotations

import math

import pytest

from karaoke.storage import read_json, write_atomic, write_json


def test_write_json_turns_undefined_scores_into_null(tmp_path):
    document = {"sdr": float("nan"), "per_alpha": [{"sar": float("inf"), "sir": 3.5}], "ids": ("a", "b")}
    write_json(tmp_path / "scores.json", document)
    assert math.isnan(document["sdr"])  # the caller's document is left as it was
    assert read_json(tmp_path / "scores.json") == {"sdr": None, "per_alpha": [{"sar": None, "sir": 3.5}], "ids": ["a", "b"]}
    assert read_json(tmp_path / "missing.json") is None


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    target = str(tmp_path / "sub" / "x.parquet")

    def explode(handle):
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(fs, target, explode)
    assert list((tmp_path / "sub").iterdir()) == []
    write_atomic(fs, target, lambda handle: handle.write(b"whole"))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.parquet"]
