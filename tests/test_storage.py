"""karaoke.storage: JSON documents with undefined scores."""

from __future__ import annotations

import math

from karaoke.storage import read_json, write_json


def test_write_json_turns_undefined_scores_into_null(tmp_path):
    document = {"sdr": float("nan"), "per_alpha": [{"sar": float("inf"), "sir": 3.5}], "ids": ("a", "b")}
    write_json(tmp_path / "scores.json", document)
    assert math.isnan(document["sdr"])  # the caller's document is left as it was
    assert read_json(tmp_path / "scores.json") == {"sdr": None, "per_alpha": [{"sar": None, "sir": 3.5}], "ids": ["a", "b"]}
    assert read_json(tmp_path / "missing.json") is None
