"""gr-harness leaderboard: `streamlit run app.py`.

Reads the published boards (`leaderboards/<track>/*.jsonl`, or $HARNESS_LEADERBOARDS_DIR) and, when it exists, the
local run store (`runs/harness.db`, or $HARNESS_RUNS_DIR / $HARNESS_STORE). It never writes anything.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from harness import METRIC_VERSION, PROTOCOL_VERSION
from harness.board.results import ResultSet, is_stale, load_results
from harness.board.stats import seed_summary
from harness.board.store import RunStore, default_runs_dir, default_url
from harness.board.tables import compare_rows, leaderboard_rows, peer_rows
from harness.errors import HarnessError
from harness.paths import LEADERBOARDS_DIR
from harness.registry import peer_pairs
from harness.run.spec import board_rules, held_for_pins
from harness.run.tracks import not_run_note

st.set_page_config(page_title="gr-harness leaderboard", layout="wide")


def local_store() -> RunStore | None:
    """The local store, only if it already exists, opened read-only: the app never writes."""
    url = default_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None
    try:
        return RunStore(url, default_runs_dir(), read_only=True)
    except HarnessError as exc:
        st.warning(plain(f"The local run store could not be read: {exc}"))
        return None


def plain(text: object) -> str:
    """Record fields as text: markdown and HTML in a record (a method label, a failure, a path) are shown, never
    rendered, so a record cannot make a viewer's browser fetch anything."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(text))


def track_name(track: str) -> str:
    return "untracked runs" if track == "None" else track


def all_results(include_stale: bool) -> ResultSet:
    boards = Path(os.environ.get("HARNESS_LEADERBOARDS_DIR", LEADERBOARDS_DIR))
    return load_results(store=local_store(), published=boards.exists(), include_stale=include_stale,
                        leaderboards_dir=boards)


def numeric_rows(results: ResultSet, metric: str) -> pd.DataFrame:
    rows = []
    for label, records in results.groups().items():
        values = [r["metrics"]["test"].get(metric) for r in records]
        s = seed_summary([v for v in values if v is not None])
        lat = [(r.get("latency") or {}).get("p50_ms") for r in records]
        # process CPU seconds of fit (stages included): a cost that load on the machine does not inflate
        train = [(r.get("used") or {}).get("cpu_seconds", (r.get("used") or {}).get("train_seconds")) for r in records]
        lat, train = [x for x in lat if x is not None], [x for x in train if x is not None]
        rows.append({"method": label, metric: s["mean"],  # 0.0 s is a real time (pop), only None is missing
                     "p50_ms": float(np.median(lat)) if lat else np.nan,
                     "train_s": float(np.median(train)) if train else np.nan})
    return pd.DataFrame(rows)


def pareto(frame: pd.DataFrame, cost: str, quality: str) -> pd.DataFrame:
    """Rows no other row beats on both lower cost and higher quality."""
    frame = frame.dropna(subset=[cost, quality]).sort_values([cost, quality], ascending=[True, False])
    front, best = [], -np.inf
    for _, row in frame.iterrows():
        if row[quality] > best:
            front.append(row)
            best = row[quality]
    return pd.DataFrame(front, columns=frame.columns)  # keep the columns when the front is empty (the chart needs them)


def cost_chart(frame: pd.DataFrame, cost: str, metric: str, title: str):
    points = alt.Chart(frame).mark_circle(size=90).encode(
        x=alt.X(cost, scale=alt.Scale(type="log")), y=metric, tooltip=list(frame.columns),
        color=alt.Color("method", scale=alt.Scale(scheme="tableau20")),  # 20 colours: a 13-row board repeats none
        shape="method")
    front = alt.Chart(pareto(frame, cost, metric)).mark_line(strokeDash=[4, 4], color="gray").encode(x=cost, y=metric)
    return (points + front).properties(title=title, height=300)


def board_of(track: str, results: ResultSet | None = None) -> tuple[Callable[[str], int], dict[str, str]]:
    """The seeds a ranked row of a method needs on a track (at least 3), and the rows of `results` shown, not
    ranked: made under older pins than the track's today, or not converged."""
    try:
        return board_rules(track, results)[2:]
    except HarnessError:  # runs made outside any track, or a track file that is gone
        return (lambda method: 3), {}


def flagship(results: ResultSet) -> tuple[str, str]:
    """The board to open on: a track's dataset with the most rows that have the track's seeds (runs outside any
    track come last), then the most records."""
    boards = sorted({(str(r.get("track")), r["dataset"]) for r in results.records})

    def completeness(board: tuple[str, str]) -> tuple:
        subset = results.subset(lambda r: (str(r.get("track")), r["dataset"]) == board)
        needs = board_of(board[0])[0]
        full = sum(len(records) >= needs(records[0]["method"]) for records in subset.groups().values())
        return board[0] != "None", full, len(subset.records)
    return max(boards, key=completeness)


def asked(name: str, options: list, default: int = 0) -> int:
    """The index of the option a link asks for (`?track=cpu-small&dataset=scientific&a=argus&b=sasrec`), else the
    default: a board can be linked to as it is shown."""
    wanted = st.query_params.get(name)
    names = [o if isinstance(o, str) else "/".join(map(str, o)) for o in options]
    return names.index(wanted) if wanted in names else default


def leaderboard_view(results: ResultSet) -> None:
    first_track, first_dataset = flagship(results)
    tracks = sorted({str(r.get("track")) for r in results.records}, key=lambda t: (t == "None", t))
    track = st.selectbox("Track", tracks, index=asked("track", tracks, tracks.index(first_track)), format_func=track_name)
    datasets = sorted({r["dataset"] for r in results.records if str(r.get("track")) == track})
    dataset = st.selectbox("Dataset", datasets, index=asked("dataset", datasets, datasets.index(first_dataset)
                                                            if first_dataset in datasets else 0))
    subset = results.subset(lambda r: str(r.get("track")) == track and r["dataset"] == dataset)
    ks = subset.records[0].get("eval", {}).get("ks") or [5, 10, 20, 50]
    ranking = [m for m in ("auc", "gauc") if any(m in r["metrics"].get("test", {}) for r in subset.records)]
    # metric_version 3: expected credit within collision groups, where the records have it
    ranking += [m for m in [f"item_ndcg@{k}" for k in ks] + [f"item_recall@{k}" for k in ks]
                if any(m in r["metrics"].get("test", {}) for r in subset.records)]
    metric = st.selectbox("Metric for ties and plots", [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks]
                          + ranking, index=min(1, len(ks) - 1))  # AUC where the protocol has labelled exposures
    needs, held = board_of(track, subset)
    rows = leaderboard_rows(subset, ks, metric, min_seeds=needs, held=held)
    labels = [r["method"] for r in rows]
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Methods", labels, default=labels)
    groups = subset.groups()
    few = right.checkbox("Rows short of the track's seeds", value=True)
    rows = [r for r in rows if r["method"] in chosen and (few or r["seeds"] >= needs(groups[r["method"]][0]["method"]))]
    if not rows:
        st.info("No row matches the filter.")
        return
    shown = [record for r in rows for record in groups[r["method"]]]  # one record per seed, as the table counts
    stale = [r for r in subset.records if is_stale(r)]
    if stale:
        versions = sorted({(r.get("metric_version"), r.get("protocol_version")) for r in stale}, key=str)
        st.warning(f"{len(stale)} of these runs are stale: recorded under metric/protocol version "
                   + ", ".join(f"{m}/{p}" for m, p in versions) + f" (current {METRIC_VERSION}/{PROTOCOL_VERSION}), "
                   "before budgets were counted in epochs and item ids were hash-ordered. They are shown for "
                   "reference and are not comparable with current runs; rerun them to put them on the board.")
    st.caption(plain(f"{len(subset.records)} runs · split {str(subset.records[0].get('split_id', ''))[:12]} · ties: "
                     f"methods not significantly below the best on {metric} (Wilcoxon over users, Holm-corrected, "
                     f"α = 0.05); a row is ranked with the track's seeds, reproducible, run as the track runs today, "
                     f"early stopping having ended every seed, and none ended by the safety cap"))
    table = pd.DataFrame(rows)
    marks = {"best": "★ best", "tied": "≈ tied", "different": "", "n/a": "not ranked"}
    table.insert(0, "", [marks[r["tied_with_best"]] for r in rows])
    table["verified"] = ["✓ reproduced" if r["verified"] else "" for r in rows]
    st.dataframe(table.drop(columns=["tied_with_best"]), hide_index=True, use_container_width=True,
                 column_config={"method": st.column_config.TextColumn(width="large"),
                                "note": st.column_config.TextColumn(width="large")})
    # another library's implementation beside ours, metric by metric (unconverged rows too)
    for peer, ours in peer_pairs(groups, held_for_pins(held)).items():
        if peer in chosen and ours in chosen:
            st.caption(plain(f"{ours} beside its peer {peer}: test means over each row's seeds, ours / peer, and the "
                             f"paired difference over users (bootstrap CI, Wilcoxon, unadjusted)"))
            st.dataframe(pd.DataFrame(peer_rows(subset, groups, ours, peer, ks)), hide_index=True)
    if any(r["verified"] for r in rows):
        st.caption("✓ reproduced: a submission bundle whose seed was re-run by `harness reproduce` on the "
                   "publisher's machine with every test metric within the bundle's tolerance")
    if any(r["reproduced"] for r in rows):
        st.caption("reproduced: published seeds re-run from their records by `harness reproduce RUN_ID --publish`; "
                   "exact = every test metric identical to the published one, NO = not reproduced")
    missing = not_run_note(track, (r["method"] for r in subset.records))
    if missing:
        st.caption(plain(missing))
    numbers = numeric_rows(subset, metric)
    numbers = numbers[numbers["method"].isin([r["method"] for r in rows])]
    left, right = st.columns(2)
    left.altair_chart(cost_chart(numbers, "p50_ms", metric, f"{metric} vs latency (p50 ms/user)"),
                      use_container_width=True)
    right.altair_chart(cost_chart(numbers, "train_s", metric, f"{metric} vs training cost (CPU s)"),
                       use_container_width=True)
    name_of = {record["run_id"]: name for name, records in groups.items() for record in records}
    spread = pd.DataFrame([{"method": name_of[r["run_id"]], "seed": r.get("seed"),
                            metric: r["metrics"]["test"].get(metric)} for r in shown])
    st.altair_chart(alt.Chart(spread).mark_tick(thickness=3, size=30).encode(
        x=metric, y=alt.Y("method", sort=[r["method"] for r in rows]), tooltip=["method", "seed", metric]).properties(
        title="per-seed spread", height=max(120, 28 * len(rows))),
        use_container_width=True)
    generative = [r for r in shown if "invalid_sid_rate" in r.get("diagnostics", {})]
    if generative:
        st.subheader("Generative diagnostics")
        keys = ["invalid_sid_rate", "mean_group_size_returned", "topk_duplicates_rate", "sid_recall@10"]
        # item level: pessimistic in collision groups (recall@10) and expected (item_recall@10, metric_version 3)
        st.dataframe(pd.DataFrame([{"method": name_of[r["run_id"]], "seed": r.get("seed"),
                                    **{k: r["diagnostics"].get(k) for k in keys},
                                    **{k: r["metrics"].get("test", {}).get(k) for k in ("recall@10", "item_recall@10")}}
                                   for r in generative]),
                     hide_index=True)
    curves = [(r, c) for r in shown for c in (r.get("curves") or {}).get("validation", [])]
    if curves:
        st.subheader("Validation curves")
        frame = pd.DataFrame([{"run": f"{name_of[r['run_id']]} s{r.get('seed')}", "epoch": c.get("epoch", c["call"]),
                               metric: c.get(metric)} for r, c in curves])
        st.altair_chart(alt.Chart(frame).mark_line().encode(
            x="epoch", y=metric, color=alt.Color("run", scale=alt.Scale(scheme="tableau20"))),
            use_container_width=True)


def compare_view(results: ResultSet) -> None:
    datasets = sorted({(str(r.get("track")), r["dataset"]) for r in results.records})
    track, dataset = st.selectbox("Track / dataset", datasets, format_func=lambda t: f"{track_name(t[0])} / {t[1]}",
                                  index=asked("board", datasets))  # ?board=cpu-small/scientific
    subset = results.subset(lambda r: (str(r.get("track")), r["dataset"]) == (track, dataset))
    groups = subset.groups()
    labels = sorted(groups)
    if len(labels) < 2:
        st.info("Two methods with results on this dataset are needed for a comparison.")
        return
    a = st.selectbox("Method A", labels, index=asked("a", labels, 0))
    b = st.selectbox("Method B", labels, index=asked("b", labels, next(i for i, x in enumerate(labels) if x != a)))
    if a == b:
        st.warning("Method A and method B are the same row: pick two different rows to compare.")
        return
    ks = subset.records[0].get("eval", {}).get("ks") or [5, 10, 20, 50]
    rows = []
    item = [m for k in ks for m in (f"item_recall@{k}", f"item_ndcg@{k}")
            if all(any(m in r["metrics"].get("test", {}) for r in recs) for recs in (groups[a], groups[b]))]
    for metric in [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + item:
        try:
            pair = compare_rows(subset, {a: groups[a], b: groups[b]}, metric, "wilcoxon", "holm", 0.05)
        except HarnessError as exc:  # e.g. rows of different splits cannot be paired
            st.warning(plain(exc))
            return
        other = next(r for r in pair if r["tied"] != "best")
        best = next(r for r in pair if r["tied"] == "best")
        rows.append({"metric": metric, "better": best["method"], "difference": other["diff vs best"],
                     "bootstrap 95% CI": other["boot 95% CI"], "p wilcoxon": other["p wilcoxon"],
                     "p paired-t": other["p paired-t"],
                     "significant": "yes" if other["tied"].startswith("different") else "no"})
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
    metric = st.selectbox("Per-user difference of", [r["metric"] for r in rows])
    per_a = [subset.per_user(r) for r in groups[a]]
    per_b = [subset.per_user(r) for r in groups[b]]
    if all(x is not None for x in per_a + per_b):
        diff = np.mean([x[metric] for x in per_a], axis=0) - np.mean([x[metric] for x in per_b], axis=0)
        st.altair_chart(alt.Chart(pd.DataFrame({f"{a} − {b}": diff})).mark_bar().encode(
            x=alt.X(f"{a} − {b}", bin=alt.Bin(maxbins=40)), y="count()").properties(
            title=f"per-user {metric} difference (mean over seeds)"), use_container_width=True)
    else:
        st.warning("Per-user arrays are missing for some runs; the histogram needs them.")


def detail_view(results: ResultSet) -> None:
    ids = [r["run_id"] for r in results.records]
    run_id = st.selectbox("Run", ids)
    record = next(r for r in results.records if r["run_id"] == run_id)
    st.text(f"{record['method']} on {record['dataset']}, seed {record.get('seed')}, "
            f"track {track_name(str(record.get('track')))}, status {record['status']}")
    metrics = pd.DataFrame(record.get("metrics") or {})
    if not metrics.empty:  # metrics first: what a reader came for
        st.dataframe(metrics, use_container_width=True)
    if record.get("failure"):
        st.text(f"failure: {record['failure']}")
    st.code(record.get("command") or "(command not recorded)", language="bash")
    published = isinstance(results.sources.get(run_id), Path)  # a board's record, not only the local store's
    if record.get("track") and record.get("status") == "ok" and published:
        st.caption("Re-run this record as it was made and check every test metric against it:")
        st.code(f"harness reproduce {record['run_id']}", language="bash")
    mark = record.get("verified")
    if mark:
        st.success(plain(f"Verified: seed {mark.get('seed')} of bundle {mark.get('bundle')} reproduced within "
                         f"±{mark.get('tolerance')} (largest difference {mark.get('max_abs_diff')}) on {mark.get('at')}"))
    cols = st.columns(3)
    cols[0].write({"split_id": record.get("split_id"), "git_sha": record.get("git_sha"),
                   "metric_version": record.get("metric_version"), "protocol_version": record.get("protocol_version")})
    cols[1].write({"budget": record.get("budget"), "used": record.get("used")})
    cols[2].write({"versions": record.get("versions"), "hardware": record.get("hardware")})
    st.json(record, expanded=False)


def main() -> None:
    st.title("gr-harness leaderboard")
    include_stale = st.sidebar.checkbox("Show stale records (older metric/protocol versions)", value=False)
    results = all_results(include_stale)
    for problem in results.broken:
        st.warning(plain(f"Skipped a broken record: {problem}"))
    if results.stale and not include_stale:
        st.sidebar.caption(f"{len(results.stale)} stale record(s) hidden")
    if not results.records:
        st.info("No results yet. Produce the first run with `harness run --method sasrec --dataset synthetic`, "
                "or a board entry with `harness run --track smoke --method sasrec` (3 seeds), then reload.")
        return
    views = ["Leaderboard", "Compare", "Run detail"]
    requested = st.query_params.get("view", "Leaderboard")  # ?view=Compare opens a view directly
    view = st.sidebar.radio("View", views, index=views.index(requested) if requested in views else 0)
    {"Leaderboard": leaderboard_view, "Compare": compare_view, "Run detail": detail_view}[view](results)


main()
