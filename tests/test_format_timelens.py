"""TimeLens-Bench annotations to canonical samples, queries cleaned as TimeLens' loader cleans them."""
from __future__ import annotations

import json

import pytest

from damo.data import formats as F


def test_timelens_bench_layout(tmp_path):
    path = tmp_path / "charades-timelens.json"
    path.write_text(json.dumps({
        "AO8RW": {"duration": 30.2, "spans": [[0.0, 6.9], [12.0, 31.5]],
                  "queries": ["a person  is putting a book on a shelf.", " person opens the door"]},
        "Y6R7T": {"duration": 12.0, "spans": [[3.0, 3.0]], "queries": ["a person sits down."]}}))
    samples, report = F.load("timelens", path)
    assert [(s.id, s.video, s.query, s.spans) for s in samples] == [
        ("AO8RW#0", "AO8RW", "a person is putting a book on a shelf", [[0.0, 6.9]]),
        ("AO8RW#1", "AO8RW", "person opens the door", [[12.0, 30.2]])]
    assert report["query_normalised"] == 2 and report["sample_without_spans"] == 1
    assert samples[0].duration == 30.2 and samples[0].task == "grounding"


def test_timelens_bench_misaligned_record_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"AO8RW": {"duration": 30.2, "spans": [[0.0, 6.9]], "queries": []}}))
    with pytest.raises(ValueError, match="video 'AO8RW': 1 spans but 0 queries; they must be aligned"):
        F.load("timelens", path)
