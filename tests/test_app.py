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


def test_compare_and_run_detail_views(published):
    at = AppTest.from_file(APP).run(timeout=60)
    at.sidebar.radio[0].set_value("Compare").run(timeout=60)
    assert not at.exception
    compare = at.dataframe[0].value
    assert "p wilcoxon" in compare.columns and len(compare) == 8
    at.sidebar.radio[0].set_value("Run detail").run(timeout=60)
    assert not at.exception
    assert at.code[0].value.startswith("harness") or "command not recorded" in at.code[0].value


def test_the_published_cpu_small_board_is_shown_and_marked_stale(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_LEADERBOARDS_DIR", raising=False)
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "no-store"))
    at = AppTest.from_file(APP).run(timeout=60)
    assert not at.exception
    at.sidebar.checkbox[0].check().run(timeout=60)  # its records predate protocol version 2: shown on request
    at.selectbox[0].set_value("cpu-small").run(timeout=60)
    assert not at.exception
    assert any("stale" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert {"pop", "sasrec", "sasrec[loss=bce]"} <= set(table["method"])
    assert (table.loc[table["method"] == "sasrec", "seeds"] == 5).all()


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
