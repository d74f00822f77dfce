"""Track pins: per-dataset method overrides are laid over the track's method sizes for that dataset only."""
from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.run import tracks
from harness.run.spec import RunSpec
from harness.run.tracks import load_track


def test_a_dataset_override_applies_to_its_dataset_only():
    track = load_track("cpu-small")
    small = RunSpec.for_track(track, "sasrec", "ml-latest-small").track_overrides
    scientific = RunSpec.for_track(track, "sasrec", "scientific").track_overrides
    assert small["patience"] == 30 and scientific["patience"] == 10
    assert {k: v for k, v in small.items() if k != "patience"} == \
        {k: v for k, v in scientific.items() if k != "patience"}  # everything else is the track's method sizes
    assert RunSpec.for_track(track, "tiger", "ml-latest-small").track_overrides == \
        RunSpec.for_track(track, "tiger", "scientific").track_overrides  # methods not named are untouched


def test_a_dataset_override_for_a_dataset_outside_the_track_is_refused(tmp_path, monkeypatch):
    (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\n"
                                     "dataset_method_overrides: {beauty: {sasrec: {patience: 3}}}\n")
    monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="beauty"):
        load_track("t")
