"""Board rows: comparable records only, reruns flagged not replaced, who may be ranked, and the statistics behind
the tie column; stored tokenizer reports side by side."""
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


def test_a_rerun_seed_counts_once_and_a_disagreeing_rerun_is_flagged_not_replaced():
    results = ResultSet(records=[_record("20260101T000000-a", "tiger", 0, 0.1),
                                 _record("20260102T000000-b", "tiger", 0, 0.3),
                                 _record("20260101T000000-c", "tiger", 1, 0.2),
                                 _record("20260103T000000-d", "tiger", 1, 0.2)])
    rows = results.groups()["tiger"]
    assert [(r["seed"], r["run_id"][-1]) for r in rows] == [(0, "a"), (1, "c")]  # the first record stands
    flagged = results.reruns()["tiger"]
    assert [(d["seed"], [v["recall@10"] for v in d["values"]]) for d in flagged] == [(0, [0.1, 0.3])]


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


def _pop(run_id, seed, split="s", seconds=600, recall=0.1, status="ok", epochs=30):
    record = _record(run_id, "pop", seed, recall)
    record.update(split_id=split, budget={"seconds": seconds, "max_epochs": epochs}, status=status)
    return record


def test_rows_never_pool_records_of_different_splits_or_budgets():
    results = ResultSet(records=[_pop("1", 0, "s1"), _pop("2", 0, "s2"), _pop("3", 0, "s3", epochs=10),
                                 _pop("4", 0, "s3", epochs=30)])
    names = sorted(results.groups())
    assert len(names) == 4 and all(name.startswith("pop [") for name in names), names
    assert any("split s1" in name for name in names) and any("budget 10 epochs" in name for name in names)


def test_an_epoch_cap_splits_only_the_configs_whose_plan_it_changes():
    """Training sees the epoch cap only through `budget.epochs(config epochs)`: a config of 100 epochs planned 100
    under a 200- and a 400-epoch cap alike and shares its row; one of 300 planned 200 and 300 and does not, nor does
    a config that names no epochs (its plugin may plan anything under the cap)."""
    def run(run_id, seed, epochs, cap, method="sasrec"):
        record = _pop(run_id, seed, epochs=cap)
        return {**record, "method": method, "method_config": {} if epochs is None else {"epochs": epochs}}
    results = ResultSet(records=[run("a", 0, 100, 200), run("b", 1, 100, 400), run("c", 0, 300, 200, "argus"),
                                 run("d", 1, 300, 400, "argus"), run("e", 0, None, 200, "pop"),
                                 run("f", 1, None, 400, "pop")])
    groups = results.groups()
    assert [r["run_id"] for r in groups["sasrec"]] == ["a", "b"]
    assert sorted(groups) == ["argus [budget 200 epochs]", "argus [budget 300 epochs]", "pop [budget 200 epochs]",
                              "pop [budget 400 epochs]", "sasrec"]


def test_the_clocks_safety_cap_splits_only_the_runs_it_ended():
    """Training never reads the clock: runs that stopped by their epochs or early stopping under a 60 s and a 600 s
    cap trained the same and share a row (a track may raise its cap); runs the cap ended stay apart, by cap."""
    results = ResultSet(records=[_pop("1", 0, seconds=60), _pop("2", 1, seconds=600), _pop("3", 2, seconds=600),
                                 _pop("4", 0, seconds=60, status="budget_bound"),
                                 _pop("5", 0, seconds=600, status="budget_bound")])
    groups = results.groups()
    assert [r["run_id"] for r in groups["pop"]] == ["1", "2", "3"]
    bound = sorted(name for name in groups if name != "pop")
    assert bound == ["pop [cap 600s] (budget-bound)", "pop [cap 60s] (budget-bound)"]


def test_a_budget_bound_row_is_shown_apart_and_never_ranked():
    from harness.board.tables import leaderboard_rows
    records = [_pop(f"a{s}", s, recall=0.1 + s / 100) for s in range(3)]
    records += [_pop(f"b{s}", s, recall=0.5, status="budget_bound") for s in range(3)]
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=records), [10], "recall@10")}
    assert rows["pop (budget-bound)"]["tied_with_best"] == "n/a" and "budget-bound" in rows["pop (budget-bound)"]["note"]
    assert rows["pop"]["tied_with_best"] == "best"


def test_a_row_run_in_the_harness_process_is_never_ranked():
    from harness.board.tables import leaderboard_rows
    records = [_pop(f"a{s}", s, recall=0.1 + s / 100) for s in range(3)]
    records += [{**_record(f"t{s}", "tiger", s, 0.5), "isolation": "none"} for s in range(3)]
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=records), [10], "recall@10")}
    assert rows["tiger"]["tied_with_best"] == "n/a" and "isolation none" in rows["tiger"]["note"]
    assert rows["pop"]["tied_with_best"] == "best"


def test_a_row_needs_the_tracks_seeds_to_be_ranked():
    from harness.board.tables import leaderboard_rows
    records = [_pop("a0", 0, recall=0.9)] + [_record(f"t{s}", "tiger", s, 0.2 + s / 100) for s in range(3)]
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=records), [10], "recall@10")}
    assert rows["pop"]["tied_with_best"] == "n/a" and "1 of the 3 seeds" in rows["pop"]["note"]
    assert rows["tiger"]["tied_with_best"] == "best"  # one seed's luck cannot be best


def test_tie_words_leave_no_cell_ambiguous():
    from harness.board.tables import tie_word
    assert [tie_word(t) for t in ({"best": True}, {"tied": True}, {"tied": False}, {"tied": None}, None)] == \
        ["best", "tied", "different", "n/a", "n/a"]


def test_compare_refuses_rows_of_different_splits():
    import pytest

    from harness.board.tables import compare_rows
    from harness.errors import HarnessError
    results = ResultSet(records=[_pop("1", 0, "split-one"), _record("2", "tiger", 0, 0.2)])
    with pytest.raises(HarnessError, match="different splits"):
        compare_rows(results, results.groups(), "recall@10", "wilcoxon", "holm", 0.05)


def test_the_bootstrap_gives_a_real_p_value():
    import numpy as np

    from harness.board.stats import paired
    rng = np.random.default_rng(0)
    base = rng.random(400)
    clear = paired(base + 0.2, base + rng.normal(0, 0.05, 400), n_boot=999)
    noise = paired(base + rng.normal(0, 0.05, 400), base + rng.normal(0, 0.05, 400), n_boot=999)
    assert 0 < clear["p_bootstrap"] < 0.01 and noise["p_bootstrap"] > 0.05


def test_an_ablation_delta_row_is_corrected_over_its_metrics():
    import numpy as np

    from harness.studies.ablations import ablation_tables

    class Variants:
        name = "demo"
        ablations = {"tables": [{"title": "T", "rows": ["A", "B"], "metrics": ["recall@10", "ndcg@10"]}]}

    rng = np.random.default_rng(1)
    arrays = {name: {"recall@10": rng.random(200) + shift, "ndcg@10": rng.random(200) + shift}
              for name, shift in (("A", 0.0), ("B", 0.05))}
    records = {name: [{**_record(f"{name}{s}", name, s, 0.1), "variant": name} for s in range(2)] for name in "AB"}
    [(_, rows)] = ablation_tables(Variants, records, lambda r: arrays[r["variant"]])
    delta = rows[-1]
    assert delta["config"].startswith("Δ B") and "p_holm=" in delta["recall@10"] and "p_holm=" in delta["ndcg@10"]


def test_a_board_with_runs_of_two_splits_ranks_one_and_does_not_crash(tmp_path, capsys):
    runs = ["--runs-dir", str(tmp_path / "runs"), "--no-published"]
    for n_users in (300, 200):  # two synthetic sizes: two splits with different numbers of users
        assert main(["run", "--method", "pop", "--seeds", "3", "--jobs", "1", "--data-set", f"n_users={n_users}",
                     "--data-set", "n_items=120", "--runs-dir", str(tmp_path / "runs")]) == 0
        assert "pop on synthetic: seeds 0, 1, 2" in capsys.readouterr().err  # a count, said before it runs
    assert main(["leaderboard", "--dataset", "synthetic", "--format", "json", *runs]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    assert sorted(r["tied_with_best"] for r in rows) == ["best", "n/a"]
    assert any("another split" in r["note"] for r in rows)
    assert main(["compare", "--dataset", "synthetic", *runs]) == 2
    assert "different splits" in capsys.readouterr().err


def test_edge_cases_of_rows_are_named_not_crashes():
    import pytest

    from harness.board.tables import compare_rows, leaderboard_rows, ranking
    from harness.errors import HarnessError
    no_hash = [{**_record("n1", "pop", 0, 0.1), "method_config_hash": None}, _record("n2", "pop", 1, 0.1)]
    assert len(ResultSet(records=no_hash).groups()) == 2  # a null config hash is a config of its own
    results = ResultSet(records=[_record(f"t{s}", "tiger", s, 0.2) for s in range(3)])
    rows = leaderboard_rows(results, [10], "ndcg@100")  # a metric no record has: every tie unknown
    assert [r["tied_with_best"] for r in rows] == ["n/a"]
    with pytest.raises(HarnessError, match="no row has the metric"):
        compare_rows(results, results.groups(), "ndcg@100", "wilcoxon", "holm", 0.05)
    tied = ResultSet(records=[_pop(f"a{s}", s, "split-b") for s in range(3)]
                     + [_record(f"b{s}", "tiger", s, 0.2) for s in range(3)])
    groups = tied.groups()
    assert ranking(tied, groups)[0] == {"tiger"}  # one row per split: the lexically first split id wins the tie


def test_item_metrics_are_shown_beside_the_pessimistic_ones_and_recomputed_from_stored_groups(tmp_path):
    """metric_version 3: item_recall / item_ndcg (expected credit in collision groups) sit beside recall / ndcg on
    the leaderboard and the tokenizer comparison, and follow from the stored per-user group slot and size."""
    import numpy as np

    from harness.board.tables import leaderboard_rows, pool_views

    def gr(run_id, seed, recall, item):
        record = _record(run_id, "gr", seed, recall, _report(0.3, 5.0))
        record["metrics"]["test"].update({"item_recall@10": item, "item_ndcg@10": item / 2})
        return record
    records = [gr(f"g{s}", s, 0.10, 0.15) for s in range(3)] + [_record(f"t{s}", "tiger", s, 0.2) for s in range(3)]
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=records), [10], "recall@10")}
    assert list(rows["gr"])[list(rows["gr"]).index("ndcg@10") + 1:][:2] == ["item_recall@10", "item_ndcg@10"]
    assert rows["gr"]["item_recall@10"].startswith("0.1500") and rows["gr"]["recall@10"].startswith("0.1000")
    assert rows["tiger"]["item_recall@10"] == "-"  # a record without them (an older metric_version) shows none
    # the leaderboard of records without item metrics has no such columns
    assert "item_recall@10" not in leaderboard_rows(ResultSet(records=records[3:]), [10], "recall@10")[0]
    figures = {row["figure"]: row for row in tokenizer_rows({"gr": records[:3]})}
    assert figures["item_recall@10"]["gr"].startswith("0.1500") and figures["recall@10"]["gr"].startswith("0.1000")
    # Gryphon's pool table gets the expected-credit row of its beam-order view
    record = {"diagnostics": {"sid_recall@10": 0.3, "beam_ranked/recall@10": 0.2, "beam_ranked/item_recall@10": 0.25},
              "metrics": {"test": {"recall@10": 0.22}}}
    assert "expected in collision groups" in pool_views(record) and "0.2500" in pool_views(record)
    # per-user item metrics are recomputed from the published rank, group slot and group size
    record = {**records[0], "eval": {"ks": [1, 3]}}
    path = tmp_path / f"{record['run_id']}.npz"
    np.savez_compressed(path, **{"test/rank": np.array([2, 0, -1]), "test/group_slot": np.array([0, 0, -1]),
                                 "test/group_size": np.array([3, 1, 0])})
    per_user = ResultSet(records=[record], sources={record["run_id"]: path}).per_user(record)
    assert per_user["recall@1"].tolist() == [0, 1, 0] and per_user["recall@3"].tolist() == [1, 1, 0]
    assert np.allclose(per_user["item_recall@1"], [1 / 3, 1, 0]) and np.allclose(per_user["item_recall@3"], [1, 1, 0])


def test_gryphon_table_2_is_given_over_a_rows_seeds():
    """A row whose runs scored their beam pool three ways gets a Table 2 of mean ± sd over its seeds (the section
    `harness export` appends to the board's markdown and `harness leaderboard` prints); rows without a pool get none."""
    from harness.board.tables import pool_rows, pool_sections

    def gryphon(seed, sid, beam, scorer):
        record = _record(f"y{seed}", "gryphon", seed, scorer)
        record["diagnostics"] = {"sid_recall@10": sid, "beam_ranked/recall@10": beam}
        return record
    records = [gryphon(0, 0.30, 0.20, 0.24), gryphon(1, 0.34, 0.22, 0.26), _record("t0", "tiger", 0, 0.2)]
    rows = {row["scoring of the beam pool"]: row["Recall@10"] for row in pool_rows(records)}
    assert rows == {"SID-level (beam scores)": "0.3200 ± 0.0283", "item-level (beam scores)": "0.2100 ± 0.0141",
                    "item-level (item scorer)": "0.2500 ± 0.0141"}  # the tiger record has no pool: left out
    sections = pool_sections({"gryphon": records[:2], "tiger": records[2:]})
    assert sections.count("Gryphon Table 2") == 1 and "gryphon" in sections and "2 seed(s)" in sections
    assert pool_rows(records[2:]) == []


def test_rows_say_when_their_best_validation_was_and_whether_every_seed_converged():
    """`best_epoch`: the median epoch of each seed's best validation (the first best, on the method's own validation
    metric); `converged`: yes when early stopping ended every seed (`patience` validations after its best), else
    which seeds were still improving when training ended, or ended (by the epoch cap) before early stopping fired;
    `-` for rows that were not trained over epochs."""
    from harness.board.results import best_and_last
    from harness.board.tables import leaderboard_rows

    def trained(run_id, method, seed, curve, metric="ndcg@10", patience=1):
        record = _record(run_id, method, seed, 0.2)
        record["method_config"] = {"valid_metric": metric, "patience": patience}
        record["curves"] = {"validation": [{"epoch": 2 * (i + 1), "ndcg@10": v, "recall@10": 1 - v}
                                           for i, v in enumerate(curve)]}
        return record
    assert best_and_last(trained("a", "m", 0, [0.1, 0.3, 0.3, 0.2]), "ndcg@10") == (4, 8, True)  # the first best
    assert best_and_last(trained("a", "m", 0, [0.1, 0.3, 0.2], "recall@10"), "ndcg@10") == (2, 6, True)  # own metric
    assert best_and_last(trained("a", "m", 0, [0.1, 0.3, 0.2], patience=4), "ndcg@10") == (4, 6, False)  # the cap
    assert best_and_last(trained("a", "m", 0, [0.1]), "ndcg@10") is None
    records = [trained(f"s{s}", "sasrec", s, [0.1, 0.3, 0.2]) for s in range(3)]
    records += [trained("t0", "tiger", 0, [0.1, 0.2]), trained("t1", "tiger", 1, [0.1, 0.3, 0.2]),
                trained("t2", "tiger", 2, [0.1, 0.2, 0.3])]
    records += [_record(f"p{s}", "pop", s, 0.1) for s in range(3)]
    # etegrec's seeds 0 and 1 ran to their epoch cap a validation after their best (patience 4): not converged
    records += [trained(f"e{s}", "etegrec", s, [0.1, 0.3, 0.2] if s < 2 else [0.3, 0.2, 0.2, 0.1, 0.1], patience=4)
                for s in range(3)]
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=records), [10], "ndcg@10")}
    assert (rows["sasrec"]["best_epoch"], rows["sasrec"]["converged"]) == (4.0, "yes")
    assert (rows["tiger"]["best_epoch"], rows["tiger"]["converged"]) == (4.0, "no: best = last (seeds 0, 2)")
    assert (rows["pop"]["best_epoch"], rows["pop"]["converged"]) == (None, "-")
    assert rows["etegrec"]["converged"] == "no: ended before early stopping (seeds 0, 1)"


def test_csv_has_every_column_any_row_has():
    """Rows of one board may differ in their columns (DIG's log-loss beside sasrec's none): CSV keeps them all."""
    import csv
    import io

    from harness.board.tables import render
    text = render([{"method": "sasrec", "auc": "0.6"}, {"method": "dig", "auc": "0.75", "logloss": "0.59"}], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"method": "sasrec", "auc": "0.6", "logloss": ""} and rows[1]["logloss"] == "0.59"


def test_a_peer_row_is_set_beside_its_counterpart_metric_by_metric(tmp_path):
    """A peer row (another library's implementation, `peer_of` on its plugin) gets a table beside our row: each
    row's mean over its seeds, the ratio ours / peer, and a paired test over users of the per-user terms."""
    import numpy as np

    from harness.board.tables import peer_rows, peer_sections
    from harness.registry import peer_pairs

    hits = {"ours": [1, 1, 0, 1, 0, 1, 1, 0], "peer": [1, 0, 0, 1, 0, 0, 1, 0]}
    records, sources = [], {}
    for who, method in (("ours", "sasrec"), ("peer", "cornac-sasrec")):
        for seed in range(2):
            record = _record(f"{who}{seed}", method, seed, float(np.mean(hits[who])))
            record["metrics"]["test"]["recall@10"] = float(np.mean(hits[who]))
            record["eval"] = {"ks": [10]}
            if who == "peer":
                record["peer"] = "cornac 3.0.1"
            sources[record["run_id"]] = tmp_path / f"{record['run_id']}.npz"
            ranks = np.where(np.array(hits[who]) == 1, 0, 20)  # rank 0: a hit at every cut-off; 20: none at 10
            np.savez_compressed(sources[record["run_id"]], **{"test/rank": ranks})
            records.append(record)
    results = ResultSet(records=records, sources=sources)
    groups = results.groups()
    peer = "cornac-sasrec (peer: cornac 3.0.1)"
    assert set(groups) == {"sasrec", peer}
    rows = {row["metric"]: row for row in peer_rows(results, groups, "sasrec", peer, [10])}
    assert (rows["recall@10"]["ours"], rows["recall@10"]["peer"]) == ("0.6250", "0.3750")
    assert rows["recall@10"]["seeds (ours, peer)"] == "2, 2"
    assert rows["recall@10"]["ours / peer"] == "1.667"
    assert rows["recall@10"]["diff (boot 95% CI)"].startswith("+0.2500")  # two users hit by ours only
    assert float(rows["recall@10"]["p wilcoxon"]) > 0.05  # two users of eight: not a difference
    # the pairing comes from the record (`peer_of`), else the installed peer plugin; never guessed
    for record in groups[peer]:
        record["peer_of"] = "sasrec"
    assert peer_pairs(groups) == {peer: "sasrec"}
    assert peer_pairs({peer: groups[peer]}) == {}  # our row is not on this board: nothing to set it beside
    assert peer_pairs(groups, held={"sasrec"}) == {}  # our row ran otherwise than the track runs today
    for record in groups[peer]:
        record["peer_of"] = None  # a record made before peer_of was recorded
    try:
        import cornac_peers  # noqa: F401
        assert peer_pairs(groups) == {peer: "sasrec"}
    except ImportError:
        assert peer_pairs(groups) == {}
    for record in groups[peer]:
        record["split_id"] = "other"  # rows of different splits: means side by side, no paired test
    assert peer_rows(results, groups, "sasrec", peer, [10])[0]["p wilcoxon"] == ""
    section = peer_sections(results, groups, {peer: "sasrec"}, [10])
    assert section.startswith(f"sasrec beside its peer {peer}") and "1.667" in section
    assert peer_sections(results, groups, {peer: "argus"}, [10]) == ""  # no such row on this board
