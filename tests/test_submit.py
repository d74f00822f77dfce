"""Submission bundles: `harness submit` writes one, `harness reproduce` re-runs a seed and checks it, and only a
reproduced bundle reaches the published board with a `verified` mark."""
import json
import shutil
from pathlib import Path

import pytest

from harness.board.results import LEADERBOARDS_DIR, load_results
from harness.board.tables import leaderboard_rows
from harness.cli.main import main
from harness.errors import HarnessError
from harness.plugins.submit import (SubmissionError, publish, read_bundle, reproduce,
                                    reproduce_all, submit)
from harness.run.isolation import sandbox_problem
from harness.studies.reproduce import metric_tolerances
from plugins_gallery import WrongShape

EXAMPLE = LEADERBOARDS_DIR / "submissions" / "itemknn-smoke"


def test_the_committed_example_bundle_reproduces(capsys):
    assert main(["reproduce", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED: synthetic seed 0" in out and "recall@10" in out


def edit_metric(bundle: Path, seed: int, metric: str, delta: float) -> None:
    path = bundle / "records" / "synthetic.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if record["seed"] == seed:
            record["metrics"]["test"][metric] += delta
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_hand_edited_metrics_are_caught_and_named(tmp_path, capsys):
    bundle = shutil.copytree(EXAMPLE, tmp_path / "edited")
    edit_metric(bundle, 0, "recall@10", 0.05)
    assert main(["reproduce", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCED" in out
    assert "seed 0: recall@10 is 0.6433 in the record but 0.5933 from its per-user ranks" in out
    assert "recall@10: bundle 0.6433, reproduced 0.5933 (|diff| 0.050000 > " in out
    assert "ndcg@10:" not in out  # only the edited metric is named

    other = shutil.copytree(EXAMPLE, tmp_path / "edited-other-seed")
    edit_metric(other, 2, "ndcg@20", -0.02)  # a seed that is not re-run is still checked against its ranks
    result = reproduce(other)
    assert not result.passed and result.problems == [
        "seed 2: ndcg@20 is 0.3559 in the record but 0.3759 from its per-user ranks"]


def test_other_plugin_source_is_refused(tmp_path):
    bundle = shutil.copytree(EXAMPLE, tmp_path / "other-source")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["plugin"]["source_hash"] = "0" * 64
    (bundle / "bundle.json").write_text(json.dumps(meta))
    result = reproduce(bundle)
    assert not result.passed and "differs from the submitted one" in result.problems[0]


def test_verified_marks_on_the_board_come_from_reproduced_bundles():
    marked = []
    for path in LEADERBOARDS_DIR.glob("*/*.jsonl"):
        marked += [json.loads(line) for line in path.read_text().splitlines() if '"verified"' in line]
    assert marked, "the example's smoke entry is published with a verified mark"
    for record in marked:
        bundle = LEADERBOARDS_DIR.parent / record["verified"]["bundle"]
        meta, records = read_bundle(bundle)
        submitted = next(r for r in records[record["dataset"]] if r["run_id"] == record["run_id"])
        assert submitted["metrics"] == record["metrics"] and meta["track"] == record["track"]
        assert record["verified"]["plugin_source_hash"] == meta["plugin"]["source_hash"]
    assert EXAMPLE.resolve() in {(LEADERBOARDS_DIR.parent / r["verified"]["bundle"]).resolve() for r in marked}


def test_submit_reproduce_and_publish(tmp_path, capsys):
    bundle = submit("itemknn", "smoke", {"neighbors": 20}, tmp_path / "bundle", n_jobs=1, command="test")
    meta, records = read_bundle(bundle)
    assert meta["plugin"]["package"] == "gr-harness-itemknn" and meta["plugin"]["version"] == "0.1.0"
    assert len(meta["plugin"]["source_hash"]) == 64 and meta["config"]["neighbors"] == 20
    assert meta["validation"]["passed"] and json.loads((bundle / "validation.json").read_text())["passed"]
    assert meta["environment"]["python"] and "torch" in meta["environment"]["packages"]
    assert [r["seed"] for r in records["synthetic"]] == meta["seeds"] == [0, 1, 2]
    for record in records["synthetic"]:
        assert record["status"] == "ok" and record["track"] == "smoke" and record["split_id"]
        assert record["plugin"]["source_hash"] == meta["plugin"]["source_hash"]
        assert (bundle / "per_user" / f"{record['run_id']}.npz").exists()

    boards = tmp_path / "boards"
    shutil.copytree(LEADERBOARDS_DIR / "smoke", boards / "smoke")  # already holds the example's verified entry
    result = reproduce(bundle, seed=1, isolation="process")
    assert result.passed and result.max_abs_diff == 0.0 and result.rule.startswith("exactly")  # made right here
    with pytest.raises(HarnessError, match="only a reproduction in the sandbox can be published"):
        publish(bundle, result, boards)
    if sandbox_problem():
        pytest.skip(f"publishing needs a bubblewrap sandbox: {sandbox_problem()}")
    result = reproduce(bundle, seed=1, isolation="sandbox")
    assert result.passed and result.record["isolation"] == "sandbox"
    publish(bundle, result, boards)  # one seed reproduced: only that seed's record is marked
    published = load_results(track="smoke", dataset="synthetic", leaderboards_dir=boards)
    marked = {r["seed"] for r in published.records if r["config_overrides"] and published.verified(r)}
    assert marked == {1}
    rows = {r["method"]: r for r in leaderboard_rows(published, [10], "ndcg@10")}
    assert rows["itemknn[neighbors=20]"]["verified"] == "" and rows["itemknn"]["verified"] == "yes"
    publish(bundle, reproduce_all(bundle, isolation="sandbox"), boards)  # every seed: the row is verified
    published = load_results(track="smoke", dataset="synthetic", leaderboards_dir=boards)
    rows = {r["method"]: r for r in leaderboard_rows(published, [10], "ndcg@10")}
    assert rows["itemknn[neighbors=20]"]["verified"] == rows["itemknn"]["verified"] == "yes"
    mark = next(r for r in published.records if r["config_overrides"])["verified"]
    assert mark["reproduced_seeds"] == [0, 1, 2] and len(mark["bundle_sha256"]) == 64
    assert mark["isolation"] == "sandbox" and set(mark["tolerance"].values()) == {0.0}
    assert mark["bundle"] == "bundle"  # relative to the boards' parent, like leaderboards/submissions/...


def test_a_reproduction_is_exact_where_the_bundle_was_made_and_within_the_seed_spread_elsewhere():
    records = [{"metrics": {"test": {"recall@10": r, "ndcg@10": r / 2}}} for r in (0.20, 0.24, 0.22)]
    exact, rule = metric_tolerances(records, same_machine=True)
    assert exact == {"ndcg@10": 0.0, "recall@10": 0.0} and rule.startswith("exactly")
    spread, rule = metric_tolerances(records, same_machine=False)
    assert spread["recall@10"] == pytest.approx(0.01) and spread["ndcg@10"] == pytest.approx(0.005)  # half a std
    assert "half the seeds' standard deviation" in rule
    wide = [{"metrics": {"test": {"recall@10": r}}} for r in (0.1, 0.3, 0.5)]
    assert metric_tolerances(wide, same_machine=False)[0] == {"recall@10": 0.01}  # at most the bundle's ±0.01
    assert metric_tolerances(records[:1], same_machine=False)[0]["recall@10"] == 0.01  # one seed: no spread
    assert metric_tolerances(records, same_machine=True, override=0.002)[0]["recall@10"] == 0.002


def test_a_verified_mark_nothing_backs_is_ignored_and_flagged(tmp_path):
    boards = tmp_path / "boards"
    shutil.copytree(LEADERBOARDS_DIR / "smoke", boards / "smoke")
    path = boards / "smoke" / "synthetic.jsonl"
    forged = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["method"] == "pop":  # a record anyone wrote with a mark of its own making
            record["verified"] = {"by": "harness reproduce", "bundle": "leaderboards/submissions/itemknn-smoke",
                                  "bundle_sha256": "0" * 64, "reproduced_seeds": [0, 1, 2]}
        forged.append(json.dumps(record))
    path.write_text("\n".join(forged) + "\n")
    published = load_results(track="smoke", dataset="synthetic", leaderboards_dir=boards)
    rows = {r["method"]: r for r in leaderboard_rows(published, [10], "ndcg@10")}
    assert rows["pop"]["verified"] == "" and "no reproduced bundle backs" in rows["pop"]["note"]
    assert rows["itemknn"]["verified"] == "yes"


def test_a_plugin_that_fails_validation_gets_no_bundle(tmp_path, plugin, capsys):
    plugin(WrongShape)
    with pytest.raises(SubmissionError, match="fails validation"):
        submit(WrongShape.name, "smoke", out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert main(["submit", "--method", WrongShape.name, "--track", "smoke", "--out", str(tmp_path / "b")]) == 1
    assert "no bundle written" in capsys.readouterr().out and not (tmp_path / "b").exists()


def test_the_board_shows_the_verified_mark(tmp_path, monkeypatch):
    pytest.importorskip("streamlit", reason="the `app` extra is not installed")
    from streamlit.testing.v1 import AppTest
    monkeypatch.delenv("HARNESS_LEADERBOARDS_DIR", raising=False)
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "no-store"))
    at = AppTest.from_file(str(LEADERBOARDS_DIR.parent / "app.py")).run(timeout=60)
    at.selectbox[0].set_value("smoke").run(timeout=60)
    assert not at.exception
    table = at.dataframe[0].value
    assert table.loc[table["method"] == "itemknn", "verified"].tolist() == ["✓ reproduced"]
    assert any("reproduced" in c.value for c in at.caption)


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} is not a submission bundle (no bundle.json)"
    assert main(["reproduce", str(EXAMPLE), "--seed", "7"]) == 2
    assert "no seed 7" in capsys.readouterr().err
    assert main(["new-method", "Bad Name"]) == 2
    assert "lower-case letters" in capsys.readouterr().err
