"""`harness reproduce RUN_ID`: any record on a published board is re-run as it was made (its track, seed, resolved
config, budget and precision) and held to its test metrics; an edited number is caught, and a record made under an
older pin of its track says so."""
import dataclasses
import json

import harness.studies.reproduce as reproduce_module
from harness.cli.main import main
from harness.paths import LEADERBOARDS_DIR
from harness.run.tracks import load_track

SMOKE_BOARD = LEADERBOARDS_DIR / "smoke" / "synthetic.jsonl"
SASREC_SEED_0 = "20261201T233817-sasrec-synthetic-s0-52e185"
POP_SEED_0 = "20261201T233757-pop-synthetic-s0-42559b"


def test_a_published_record_reproduces_as_made_even_after_its_track_changed(monkeypatch, capsys):
    smoke = load_track("smoke")
    later = dataclasses.replace(smoke, method_overrides={**smoke.method_overrides,
                                                         "sasrec": {**smoke.method_overrides["sasrec"], "patience": 5}})
    monkeypatch.setattr(reproduce_module, "load_track", lambda name: later)  # the track's pin moved since the run
    assert main(["reproduce", SASREC_SEED_0]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED: synthetic seed 0" in out and "ndcg@10" in out
    assert "note: the track now runs sasrec differently: patience 3 → 5" in out


def test_an_edited_published_number_is_caught_and_named(tmp_path, capsys):
    board = tmp_path / "smoke" / "synthetic.jsonl"
    board.parent.mkdir()
    records = [json.loads(line) for line in SMOKE_BOARD.read_text().splitlines() if '"method": "pop"' in line]
    for record in records:
        if record["run_id"] == POP_SEED_0:
            record["metrics"]["test"]["recall@10"] += 0.05
    board.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["reproduce", POP_SEED_0, "--leaderboards", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCED" in out and "- recall@10: published" in out
    assert main(["reproduce", "no-such-run", "--leaderboards", str(tmp_path)]) == 2
    assert "no published record has run id 'no-such-run'" in capsys.readouterr().err
    assert main(["reproduce", POP_SEED_0, "--seed", "1", "--leaderboards", str(tmp_path)]) == 2  # bundle options
    assert main(["reproduce", "no/such/bundle"]) == 2
    assert "no such bundle folder" in capsys.readouterr().err
    for record in records:
        record["status"] = "budget_bound"  # the clock ended it: nothing its metrics can be held to
    board.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["reproduce", POP_SEED_0, "--leaderboards", str(tmp_path)]) == 2
    assert "ended budget_bound" in capsys.readouterr().err


def test_a_published_reproduction_is_logged_and_shown_on_the_board(tmp_path, capsys):
    """`--publish` with a run id logs the re-run beside the board, reproduced or not, and the board's `reproduced`
    column names the seeds: a user sees which numbers someone has re-made, and which did not come out."""
    from harness.board.results import load_results
    from harness.board.tables import leaderboard_rows

    board = tmp_path / "smoke" / "synthetic.jsonl"
    board.parent.mkdir()
    records = [json.loads(line) for line in SMOKE_BOARD.read_text().splitlines() if '"method": "pop"' in line]
    board.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["reproduce", POP_SEED_0, "--publish", "--leaderboards", str(tmp_path)]) == 0
    assert "logged beside the board" in capsys.readouterr().out
    ledger = tmp_path / "smoke" / "reproduced" / "synthetic.jsonl"
    entry = json.loads(ledger.read_text())
    assert entry["run_id"] == POP_SEED_0 and entry["passed"] and entry["max_abs_diff"] == 0
    assert entry["hardware"]["cpu_count"] and entry["hardware"]["cpu"] and entry["git_sha"] is not None and entry["rerun_id"] != POP_SEED_0

    def pop_row():
        results = load_results(track="smoke", dataset="synthetic", leaderboards_dir=tmp_path)
        assert not results.broken and len(results.records) == len(records)  # the ledger is no dataset's board
        return next(r for r in leaderboard_rows(results, [10], "ndcg@10") if r["method"] == "pop")

    assert pop_row()["reproduced"] == "s0 exact"
    for record in records:  # an edited number: its re-run is logged as not reproduced, and shown so
        if record["run_id"] == POP_SEED_0:
            record["metrics"]["test"]["ndcg@10"] += 0.01
    board.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["reproduce", POP_SEED_0, "--publish", "--leaderboards", str(tmp_path)]) == 1
    assert pop_row()["reproduced"] == "s0 NO; s0 exact"


def test_exactness_is_demanded_only_of_the_cpu_that_made_a_record():
    """Another CPU model with the same core count may run other kernels (AVX2 / AVX-512 / AMX) and sum floats in
    another order: its re-run is held to the tolerance, not to the sixth decimal. Records older than the CPU's name
    are compared on the rest of their hardware."""
    import types

    import torch

    from harness.run.record import hardware, versions
    from harness.studies.reproduce import same_machine

    here = hardware(torch.device("cpu"))
    assert here["cpu"]
    spec = types.SimpleNamespace(device="cpu")
    record = {"hardware": dict(here), "versions": versions()}
    assert same_machine(record, spec)
    assert not same_machine({**record, "hardware": {**here, "cpu": "another CPU"}}, spec)
    older = {k: v for k, v in here.items() if k != "cpu"}
    assert same_machine({**record, "hardware": older}, spec)
    assert not same_machine({**record, "hardware": {**older, "cpu_count": here["cpu_count"] + 1}}, spec)
