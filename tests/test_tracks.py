"""Track pins: per-dataset method overrides are laid over the track's method sizes for that dataset only; per-method
seed counts."""
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
    assert small["epochs"] == 400 and "epochs" not in scientific  # scientific keeps sasrec's own 200
    assert {k: v for k, v in small.items() if k not in ("patience", "epochs")} == \
        {k: v for k, v in scientific.items() if k not in ("patience", "epochs")}  # the rest: the track's sizes
    assert RunSpec.for_track(track, "tiger", "ml-latest-small").track_overrides == \
        RunSpec.for_track(track, "tiger", "scientific").track_overrides  # methods not named are untouched


def test_a_dataset_override_for_a_dataset_outside_the_track_is_refused(tmp_path, monkeypatch):
    (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\n"
                                     "dataset_method_overrides: {beauty: {sasrec: {patience: 3}}}\n")
    monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="beauty"):
        load_track("t")


def test_costly_methods_run_and_rank_on_their_own_seed_count_and_never_under_three(tmp_path, monkeypatch):
    from harness.board.results import ResultSet
    from harness.board.tables import leaderboard_rows
    from harness.studies.sweep import expand
    track = load_track("cpu-small")
    assert track.seeds_for("sasrec") == 5 and track.seeds_for("tiger") == 3
    runs = expand(track, ["sasrec", "tiger"], ["scientific"])
    assert sorted(s.seed for s in runs.specs if s.method == "tiger") == [0, 1, 2]
    assert sorted(s.seed for s in runs.specs if s.method == "sasrec") == [0, 1, 2, 3, 4]

    def record(method, seed):
        return {"run_id": f"{method}{seed}", "method": method, "seed": seed, "status": "ok", "split_id": "s",
                "method_config_hash": method, "config_overrides": {}, "budget": {"seconds": 60},
                "metrics": {"test": {"ndcg@10": 0.1 + seed / 100}}}
    # three seeds rank tiger on this track; sasrec with three of its five does not
    rows = {r["method"]: r for r in leaderboard_rows(ResultSet(records=[record(m, s) for m in ("sasrec", "tiger")
                                                                        for s in range(3)]),
                                                     [10], "ndcg@10", min_seeds=track.ranked_seeds)}
    assert rows["tiger"]["tied_with_best"] != "n/a"
    assert rows["sasrec"]["note"] == "3 of the 5 seeds a ranked row needs"

    monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
    for seeds, error in (("{tiger: 2}", "below the 3 seeds"), ("{tigre: 3}", "does not pin: tigre"),
                         ("[tiger]", "maps a method")):
        (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\n"
                                         f"method_overrides: {{tiger: {{}}}}\nmethod_seeds: {seeds}\n")
        with pytest.raises(ConfigError, match=error):
            load_track("t")


def test_a_row_run_otherwise_than_the_track_runs_today_is_held_then_retired_by_its_rerun(tmp_path, monkeypatch):
    from harness.board.results import ResultSet
    from harness.board.tables import leaderboard_rows
    from harness.run.spec import board_rules, superseded
    (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\nmax_epochs: 50\nseeds: 3\n"
                                     "method_overrides: {sasrec: {patience: 30}}\n")
    monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
    today = RunSpec.for_track(load_track("t"), "sasrec", "synthetic").method_config()

    def record(run_id, seed, ndcg, epochs=50, **config):
        return {"run_id": run_id, "method": "sasrec", "dataset": "synthetic", "seed": seed, "status": "ok",
                "split_id": "s", "method_config": {**today, **config}, "budget": {"seconds": 60, "max_epochs": epochs},
                "method_config_hash": str(sorted(config.items())) + str(epochs), "config_overrides": {},
                "metrics": {"test": {"ndcg@10": ndcg}}}
    older = [record(f"old{s}", s, 0.3, patience=10) for s in range(3)]
    capped = [record(f"cap{s}", s, 0.3, epochs=20) for s in range(3)]
    results = ResultSet(records=older + capped)
    primary, ks, needs, held = board_rules("t", results)
    rows = {r["method"]: r for r in leaderboard_rows(results, [10], primary, min_seeds=needs, held=held)}
    assert {r["tied_with_best"] for r in rows.values()} == {"n/a"}  # neither is the track as it is today
    assert any("patience 10 → 30" in r["note"] for r in rows.values())
    assert any("(epoch plan) 20 → 50" in r["note"] for r in rows.values())
    assert superseded(results, held) == set()  # nothing has replaced them yet: they stay on the board

    current = [record(f"new{s}", s, 0.1 + s / 100) for s in range(3)]
    results = ResultSet(records=older + capped + current)
    primary, ks, needs, held = board_rules("t", results)
    rows = {r["method"]: r for r in leaderboard_rows(results, [10], primary, min_seeds=needs, held=held)}
    current_row = next(r for r in rows.values() if r["tied_with_best"] != "n/a")
    assert current_row["tied_with_best"] == "best" and not current_row["note"]  # the better old rows cannot be best
    retired = superseded(results, held)
    assert retired == {r["run_id"] for r in older + capped}  # export retires them: the current row keeps its label
    assert set(ResultSet(records=current).groups()) == {"sasrec"}


def test_every_declared_ablation_variant_resolves_under_every_track():
    """A variant's --set values resolve to a config the plugin accepts, and a SID variant's tokenizer takes its
    options (rkmeans has no `epochs`, which the tracks pin for TIGER's RQ-VAE)."""
    from harness import registry
    from harness.engines.generative import GenerativeRetrieval
    from harness.sid.tokenizers import make_tokenizer
    checked = []
    for name in tracks.track_names():
        track = load_track(name)
        for method, cls in registry.available().items():
            if not cls.ablations:
                continue
            for variant, overrides in cls.ablations["variants"].items():
                spec = RunSpec.for_track(track, method, track.datasets[0], overrides=dict(overrides))
                plugin = cls(spec.method_config())
                if isinstance(plugin, GenerativeRetrieval):
                    cfg = plugin.config
                    make_tokenizer(cfg["tokenizer"], levels=cfg["levels"], width=cfg["width"], seed=cfg["sid_seed"],
                                   **plugin.tokenizer_options())
                checked.append((name, method, variant))
    assert {("cpu-small", "tiger", "RK-Means"), ("cpu-small", "tiger", "LETTER"),
            ("cpu-labelled", "dig", "Fixed SID")} <= set(checked)


def test_a_row_that_early_stopping_did_not_end_is_shown_not_ranked_unless_the_track_ranks_such_rows(
        tmp_path, monkeypatch):
    from harness.board.results import ResultSet
    from harness.board.tables import leaderboard_rows
    from harness.run.spec import board_rules

    def record(method, seed, curve, patience=2):
        validation = [{"epoch": e, "ndcg@10": v} for e, v in enumerate(curve, 1)]
        return {"run_id": f"{method}{seed}", "method": method, "dataset": "synthetic", "seed": seed, "status": "ok",
                "split_id": "s", "method_config": {"patience": patience}, "config_overrides": {},
                "method_config_hash": method, "budget": {"max_epochs": 50}, "curves": {"validation": validation},
                "metrics": {"test": {"ndcg@10": curve[-1] + seed / 1000}}}
    stopped = [record("sasrec", s, [0.1, 0.2, 0.19, 0.18]) for s in range(3)]  # 2 validations after the best
    rising = [record("tiger", s, [0.1, 0.2, 0.3, 0.4]) for s in range(3)]  # best = last: the epochs ran out
    results = ResultSet(records=stopped + rising)
    for flag, tiger_ranked in (("true", True), ("false", False)):
        (tmp_path / "t.yaml").write_text("name: t\ndescription: x\ndatasets: [synthetic]\nseeds: 3\n"
                                         f"rank_unconverged: {flag}\n")
        monkeypatch.setattr(tracks, "TRACKS_DIR", tmp_path)
        # the records carry no full method config to hold against the plugins' pins: convergence alone decides
        monkeypatch.setattr("harness.run.spec.off_pin_rows", lambda groups, track: {})
        primary, ks, needs, held = board_rules("t", results)
        rows = {r["method"]: r for r in leaderboard_rows(results, [10], primary, min_seeds=needs, held=held)}
        assert rows["sasrec"]["converged"] == "yes" and rows["sasrec"]["tied_with_best"] != "n/a"
        assert rows["tiger"]["converged"].startswith("no: best = last")
        assert (rows["tiger"]["tied_with_best"] != "n/a") == tiger_ranked
        if not tiger_ranked:
            assert rows["tiger"]["note"].startswith("not converged (best = last (seeds 0, 1, 2))")
            from harness.run.spec import held_for_pins
            assert "tiger" in held and "tiger" not in held_for_pins(held)  # a peer table or Table 2 still shows it
    results = ResultSet(records=stopped + rising[:2])  # short of seeds as well: the note says both
    rows = {r["method"]: r for r in leaderboard_rows(results, [10], primary, min_seeds=needs,
                                                     held=board_rules("t", results)[3])}
    assert rows["tiger"]["note"].endswith("; 2 of the 3 seeds")
