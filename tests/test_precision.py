"""bf16 training (`--precision bf16`): autocast forward passes, fp32 weights; it agrees with fp32 on smoke within a
stated tolerance, is recorded, and never shares a board row with fp32."""
from __future__ import annotations

import pytest

from harness.board.results import row_key
from harness.board.store import RunStore
from harness.errors import ConfigError
from harness.run.referee import run
from harness.run.spec import RunSpec
from harness.run.tracks import load_track

SMOKE = load_track("smoke")
TOLERANCE = 0.05  # |bf16 − fp32| on every test Recall/NDCG@k of one seed at smoke's size (bf16 keeps 8 mantissa bits)


@pytest.mark.parametrize("method,short", [("sasrec", {"epochs": 6}), ("tiger", {"epochs": 4, "eval_every": 2})])
def test_bf16_training_agrees_with_fp32_on_smoke(method, short, tmp_path):
    records = {}
    for precision in ("fp32", "bf16"):
        spec = RunSpec.for_track(SMOKE, method, "synthetic", overrides=dict(short), precision=precision,
                                 latency_users=5)
        records[precision] = run(spec, RunStore(runs_dir=tmp_path / precision))
    fp32, bf16 = (records[p]["metrics"]["test"] for p in ("fp32", "bf16"))
    assert records["bf16"]["status"] == "ok" and records["bf16"]["precision"] == "bf16"
    assert records["fp32"]["precision"] == "fp32"
    assert fp32 != bf16  # bf16 really ran: its numerics differ
    for name in fp32:
        if name.startswith(("recall@", "ndcg@")):
            assert abs(fp32[name] - bf16[name]) <= TOLERANCE, (name, fp32[name], bf16[name])
    assert row_key(records["fp32"]) != row_key(records["bf16"])  # different board rows


def test_the_tracks_pin_precision_and_an_unknown_one_is_refused(tmp_path):
    assert RunSpec.for_track(SMOKE, "sasrec", "synthetic").precision == SMOKE.precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        run(RunSpec.for_track(SMOKE, "sasrec", "synthetic", precision="fp8"), RunStore(runs_dir=tmp_path))
