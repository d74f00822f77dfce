"""Board rows: a rerun seed counts once, and stored tokenizer reports compare side by side."""
from __future__ import annotations

from harness.board.results import ResultSet
from harness.board.tables import tokenizer_rows
from harness.cli.main import main


def _record(run_id, method, seed, recall, report=None, overrides=None):
    return {"run_id": run_id, "method": method, "seed": seed, "status": "ok", "method_config_hash": method + "h",
            "config_overrides": overrides or {}, "split_id": "s", "budget": {"seconds": 600},
            "metrics": {"test": {"recall@10": recall, "ndcg@10": recall / 2}},
            "diagnostics": {"tokenizer_report": report} if report else {},
            "features": {"sids": [{"tokenizer": {"tokenizer": "rqvae" if method == "tiger" else "letter"}}]}}


def _report(collisions, lift):
    return {"unique_sids": 90, "collision_rate": collisions, "largest_group": 3, "widths": [16, 16],
            "per_level": [{"utilisation": 1.0, "entropy_ratio": 0.9}, {"utilisation": 0.5, "entropy_ratio": 0.8}],
            "neighbourhood": [{"prefix_len": 1, "lift": lift}, {"prefix_len": 2, "lift": 2 * lift}]}


def test_a_rerun_seed_counts_once_and_the_newest_record_stands():
    results = ResultSet(records=[_record("20260101T000000-a", "tiger", 0, 0.1),
                                 _record("20260102T000000-b", "tiger", 0, 0.3),
                                 _record("20260101T000000-c", "tiger", 1, 0.2)])
    rows = results.groups()["tiger"]
    assert [(r["seed"], r["run_id"][-1]) for r in rows] == [(0, "b"), (1, "c")]


def test_tokenizer_reports_side_by_side():
    groups = {"tiger": [_record("1", "tiger", 0, 0.04, _report(0.16, 10.0)),
                        _record("2", "tiger", 1, 0.06, _report(0.14, 12.0))],
              "letter": [_record("3", "letter", 0, 0.05, _report(0.05, 9.0))],
              "pop": [_record("4", "pop", 0, 0.01)]}
    rows = {row["figure"]: row for row in tokenizer_rows(groups)}
    assert set(rows["seeds"]) == {"figure", "tiger", "letter"}  # pop has no SIDs: no column
    assert rows["tokenizer"]["tiger"] == "rqvae" and rows["codebooks"]["letter"] == "16 × 16"
    assert rows["collision rate"]["tiger"].startswith("0.1500 ± ")
    assert rows["collision rate"]["letter"] == "0.0500"
    assert rows["neighbour lift, prefix 2"]["tiger"].startswith("22.00 ± ")
    assert rows["recall@10"]["tiger"].startswith("0.0500 ± ")
    assert rows["L2 utilisation"]["letter"] == "0.5000"


def test_sids_compare_without_reports_is_a_clear_error(tmp_path, capsys):
    code = main(["sids", "compare", "--dataset", "synthetic", "--track", "smoke", "--no-published",
                 "--runs-dir", str(tmp_path / "runs"), "--store", f"sqlite:///{tmp_path}/h.db"])
    assert code == 2 and "no run records with a tokenizer report" in capsys.readouterr().err


def test_seed_lists_and_counts():
    import pytest

    from harness.errors import ConfigError
    from harness.studies.seeds import parse_seeds
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,") == [0] and parse_seeds("4,7") == [4, 7]
    with pytest.raises(ConfigError, match="at least 1"):
        parse_seeds("0")  # a count of none is a mistake, not an empty run


def test_rows_without_per_user_terms_are_decided_by_their_seeds():
    from harness.board.stats import MethodResults, compare_to_best
    rows = compare_to_best([MethodResults("a", [0.76, 0.761, 0.762], None),
                            MethodResults("b", [0.70, 0.701, 0.699], None),
                            MethodResults("c", [0.7595, 0.7605, 0.761], None)])
    by = {r["label"]: r for r in rows}
    assert by["a"]["best"] and by["b"]["decided_by"] == "welch" and by["b"]["tied"] is False
    assert by["b"]["diff"] < 0 and by["c"]["tied"] is True
