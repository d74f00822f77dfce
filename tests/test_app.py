"""The Streamlit leaderboard, driven headlessly with streamlit.testing.v1.AppTest on fixture records."""
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the `app` extra is not installed")
from streamlit.testing.v1 import AppTest  # noqa: E402

from harness.board.results import export_board, load_results  # noqa: E402
from harness.board.tables import leaderboard_rows, render  # noqa: E402
from test_boards import board  # noqa: E402,F401  (fixture: pop and a noisy pop, 3 seeds each, smoke track)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def published(board, tmp_path, monkeypatch):  # noqa: F811
    store, _ = board
    results = load_results(track="smoke", dataset="synthetic", store=store, published=False)
    boards = tmp_path / "boards"
    export_board(results, "smoke", "synthetic", boards, render(leaderboard_rows(results, [5, 10], "ndcg@10"), "md"))
    (boards / "smoke" / "synthetic.jsonl").open("a").write("{broken json\n")
    monkeypatch.setenv("HARNESS_LEADERBOARDS_DIR", str(boards))
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "no-store"))
    return results


def test_empty_state_tells_how_to_make_the_first_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_LEADERBOARDS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "none"))
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    assert "No results yet" in at.info[0].value and "harness run" in at.info[0].value
    assert not (tmp_path / "none").exists(), "the app never writes"


def test_leaderboard_shows_rows_ties_and_a_warning_for_the_broken_record(published):
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    assert any("broken" in w.value or "unreadable" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert set(table["method"]) == {"pop", "test-noisy-pop"}
    assert "★ best" in set(table[""]) and (table["seeds"] == 3).all()
    expected = {row["method"]: row["ndcg@10"] for row in leaderboard_rows(published, [5, 10, 20, 50], "ndcg@10")}
    assert dict(zip(table["method"], table["ndcg@10"])) == expected
    # the smoke track pins sasrec, tiger, ...: their absence is said, never left to be read as an omission
    missing = next(c.value for c in at.caption if c.value.startswith("Not run on this board yet"))
    assert "sasrec" in missing and "tiger" in missing and "pop" not in missing


def test_compare_and_run_detail_views(published):
    at = AppTest.from_file(APP).run(timeout=60)
    at.sidebar.radio[0].set_value("Compare").run(timeout=60)
    assert not at.exception
    compare = at.dataframe[0].value
    # recall/ndcg at 4 cut-offs, each beside its collision-corrected item_ metric
    assert "p wilcoxon" in compare.columns and len(compare) == 16
    assert {"ndcg@10", "item_ndcg@10"} <= set(compare["metric"])
    at.sidebar.radio[0].set_value("Run detail").run(timeout=60)
    assert not at.exception
    assert at.code[0].value.startswith("harness") or "command not recorded" in at.code[0].value


def test_the_published_cpu_small_board_is_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_LEADERBOARDS_DIR", raising=False)
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "no-store"))
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    at.selectbox[0].set_value("cpu-small").run(timeout=60)
    assert not at.exception
    assert not any("stale" in w.value for w in at.warning)  # republished under the current versions
    table = at.dataframe[0].value
    assert {"pop", "sasrec", "sasrec[loss=bce]", "argus"} <= set(table["method"])
    assert (table.loc[table["method"] == "sasrec", "seeds"] == 5).all()
    at.selectbox[1].set_value("scientific").run(timeout=60)  # the board with the cornac peer's rows
    table = at.dataframe[0].value
    assert "cornac-sasrec (peer: cornac 3.0.1)" in set(table["method"])
    beside = [d.value for d in at.dataframe if "ours / peer" in d.value.columns]
    if registry_has("cornac-sasrec"):  # the peer beside ours, metric by metric (make setup installs the plugin)
        assert any(c.value.startswith("sasrec beside its peer cornac") for c in at.caption)
        assert len(beside) == 1 and {"recall@10", "ndcg@10"} <= set(beside[0]["metric"])
        assert (beside[0]["seeds (ours, peer)"].str.startswith("5, ")).all()
    at.sidebar.radio[0].set_value("Run detail").run(timeout=60)
    assert not at.exception
    codes = [c.value for c in at.code]
    assert any(c.startswith("harness reproduce ") for c in codes)  # a published record's re-run, by its id


def registry_has(name: str) -> bool:
    from harness.errors import HarnessError
    from harness.registry import get
    try:
        get(name)
        return True
    except HarnessError:
        return False


def test_stale_published_records_are_shown_on_request_and_marked(published):
    import json
    import os
    boards = Path(os.environ["HARNESS_LEADERBOARDS_DIR"])
    good = json.loads((boards / "smoke" / "synthetic.jsonl").read_text().splitlines()[0])
    (boards / "cpu-labelled").mkdir()
    old = {**good, "run_id": "an-old-run", "method": "dig", "track": "cpu-labelled", "dataset": "ml-100k",
           "metric_version": good["metric_version"] - 1}  # recorded under an older metric version
    (boards / "cpu-labelled" / "ml-100k.jsonl").write_text(json.dumps(old) + "\n")
    at = AppTest.from_file(APP).run(timeout=60)
    assert "cpu-labelled" not in at.selectbox[0].options  # left out by default
    at.sidebar.checkbox[0].check().run(timeout=60)
    assert "cpu-labelled" in at.selectbox[0].options
    at.selectbox[0].set_value("cpu-labelled").run(timeout=60)
    assert not at.exception
    assert any("stale" in w.value for w in at.warning)
    assert set(at.dataframe[0].value["method"]) == {"dig"}


def test_cost_charts_survive_zero_training_times(published, tmp_path):
    """Pop trains in well under a millisecond: a recorded 0.0 s must plot, not break the Pareto chart."""
    import json
    import os
    path = Path(os.environ["HARNESS_LEADERBOARDS_DIR"]) / "smoke" / "synthetic.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        record.setdefault("used", {})["train_seconds"] = 0.0
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception and len(at.dataframe[0].value) == 2


MALFORMED = {  # each a shape a hand-edited or foreign record has taken; each must be skipped with a warning
    "a string metric": {"metrics": {"test": {"ndcg@10": "abc"}}},
    "a dict as seed": {"seed": {"a": 1}},
    "null metrics": {"metrics": None},
    "a list as latency": {"latency": {"p50_ms": [1, 2]}},
}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_record_is_skipped_with_a_warning_naming_its_line_and_field(published, shape):
    import json
    import os
    path = Path(os.environ["HARNESS_LEADERBOARDS_DIR"]) / "smoke" / "synthetic.jsonl"
    good = json.loads(path.read_text().splitlines()[0])
    bad = {**good, "run_id": "bad-one", **MALFORMED[shape]}
    with path.open("a") as handle:
        handle.write(json.dumps(bad) + "\n")
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    lines = len(path.read_text().splitlines())
    field = next(iter(MALFORMED[shape]))
    shown = [w.value.replace("\\", "") for w in at.warning]  # the app escapes markdown in what it shows
    assert any(f"synthetic.jsonl:{lines}" in text and field in text for text in shown), shown
    assert set(at.dataframe[0].value["method"]) == {"pop", "test-noisy-pop"}


def test_record_fields_are_shown_as_text_never_rendered(published):
    import json
    import os
    path = Path(os.environ["HARNESS_LEADERBOARDS_DIR"]) / "smoke" / "synthetic.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["failure"] = "![pixel](http://127.0.0.1:9/tracker.png) <img src=x>"
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    at = AppTest.from_file(APP).run(timeout=60)
    at.sidebar.radio[0].set_value("Run detail").run(timeout=60)
    assert not at.exception
    shown = [m.value for m in at.markdown] + [w.value for w in at.warning] + [c.value for c in at.caption]
    assert not any("](http" in text for text in shown)  # no markdown image reached a renderer


def test_the_app_never_writes_to_an_empty_store_file(tmp_path, monkeypatch):
    import sqlite3
    empty = tmp_path / "runs" / "harness.db"
    empty.parent.mkdir()
    sqlite3.connect(empty).close()
    monkeypatch.setenv("HARNESS_LEADERBOARDS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    tables = sqlite3.connect(empty).execute("select name from sqlite_master").fetchall()
    assert tables == [], "the app created tables in the user's store"


def test_compare_refuses_a_row_against_itself(published):
    at = AppTest.from_file(APP).run(timeout=60)
    at.sidebar.radio[0].set_value("Compare").run(timeout=60)
    at.selectbox[2].set_value(at.selectbox[1].value).run(timeout=60)
    assert not at.exception
    assert any("same row" in w.value for w in at.warning)


def test_the_app_opens_on_the_flagship_board_and_names_untracked_runs(published, tmp_path):
    import json
    import os
    boards = Path(os.environ["HARNESS_LEADERBOARDS_DIR"])
    good = json.loads((boards / "smoke" / "synthetic.jsonl").read_text().splitlines()[0])
    (boards / "untracked").mkdir()
    lone = {**good, "run_id": "lone-untracked-run", "track": None, "dataset": "beauty"}
    (boards / "untracked" / "beauty.jsonl").write_text(json.dumps(lone) + "\n")
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    assert at.selectbox[0].value == "smoke"  # the board with the complete rows, not the lone untracked run
    assert "untracked runs" in at.selectbox[0].options and "None" not in at.selectbox[0].options


def test_a_link_opens_the_board_and_the_comparison_it_names(published, tmp_path, monkeypatch):
    at = AppTest.from_file(APP)
    at.query_params.update({"view": "Compare", "board": "smoke/synthetic", "a": "test-noisy-pop", "b": "pop"})
    at.run(timeout=60)
    assert not at.exception
    assert (at.selectbox[1].value, at.selectbox[2].value) == ("test-noisy-pop", "pop")  # not the default order
    monkeypatch.delenv("HARNESS_LEADERBOARDS_DIR", raising=False)  # the published boards: several tracks
    at = AppTest.from_file(APP)
    at.query_params.update({"track": "cpu-small", "dataset": "ml-latest-small"})
    at.run(timeout=60)
    assert not at.exception
    assert (at.selectbox[0].value, at.selectbox[1].value) == ("cpu-small", "ml-latest-small")
    default = AppTest.from_file(APP).run(timeout=60).selectbox[0].value  # the flagship: the most complete board
    at = AppTest.from_file(APP)
    at.query_params.update({"track": "no-such-track"})
    at.run(timeout=60)
    assert not at.exception and at.selectbox[0].value == default  # an unknown name: the default board
