"""The generative-retrieval engine: beam search vs exhaustive scoring, constrained decoding, SID resolution."""
import itertools

import numpy as np
import pytest
import torch

from harness.engines.generative import SIDResolver, training_samples
from harness.nn.beam import beam_search
from harness.nn.transformer import ModelShape, SIDTransformer
from harness.sid import PrefixTrie, build_table


def small_model(arch, widths=(4, 4, 3), users=10):
    torch.manual_seed(0)
    shape = ModelShape(widths=list(widths), user_buckets=users, d_model=32, heads=2, d_head=16, d_ff=64,
                       enc_layers=2, dec_layers=2, max_history=5, arch=arch, dropout=0.0)
    return SIDTransformer(shape).eval()


def exhaustive_scores(model, history, users, candidates):
    with torch.no_grad():
        out = []
        for u in range(len(history)):
            logits = model(history[u:u + 1].expand(len(candidates), -1, -1),
                           None if users is None else users[u:u + 1].expand(len(candidates)), candidates)
            out.append(sum(torch.log_softmax(lg, -1).gather(1, candidates[:, i:i + 1]).squeeze(1)
                           for i, lg in enumerate(logits)))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_beam_search_with_kv_cache_equals_exhaustive_scoring(arch):
    """With beam = catalogue size the beam covers every SID: its top-k must be the exhaustive top-k."""
    model = small_model(arch)
    rng = np.random.default_rng(0)
    catalogue = torch.as_tensor(np.unique(rng.integers(0, [4, 4, 3], size=(30, 3)), axis=0))
    history = torch.randint(0, 3, (4, 5, 3))
    history[0, :3] = -1  # left padding
    users = torch.arange(4)
    exhaustive = exhaustive_scores(model, history, users, catalogue)
    trie = PrefixTrie(catalogue.numpy(), [4, 4, 3])
    sids, scores = beam_search(model, history, users, beam=len(catalogue), trie=trie)
    for u in range(4):
        top = exhaustive[u].topk(10)
        assert [tuple(catalogue[i].tolist()) for i in top.indices] == [tuple(s) for s in sids[u, :10].tolist()]
        torch.testing.assert_close(top.values, scores[u, :10], atol=1e-4, rtol=1e-4)


def test_constrained_decoding_only_returns_valid_sids_and_free_mode_may_not():
    model = small_model("encdec", widths=(8, 8, 8), users=0)
    rng = np.random.default_rng(1)
    catalogue = np.unique(rng.integers(0, 8, size=(40, 3)), axis=0)
    trie = PrefixTrie(catalogue, [8, 8, 8])
    history = torch.randint(0, 8, (6, 5, 3))
    sids, scores = beam_search(model, history, None, beam=20, trie=trie)
    assert trie.is_valid(sids.reshape(-1, 3)).all() and torch.isfinite(scores).all()
    free, _ = beam_search(model, history, None, beam=20, trie=None)
    assert (~trie.is_valid(free.reshape(-1, 3))).any(), "an untrained model decodes invalid SIDs freely"


def test_resolver_dedup_gives_one_item_per_sid_and_none_expands_groups_in_beam_order():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 2], [1, 1]])
    generated = torch.tensor([[[2, 3], [0, 1], [3, 3], [1, 1]]])  # [2,3]: item 2; [0,1]: items 0,1,3; [3,3] invalid
    scores = torch.tensor([[-0.1, -0.5, -0.7, -0.9]])
    none = SIDResolver(build_table(codes, [4, 4], "none"), torch.device("cpu"))
    groups = none.groups(generated)
    assert (groups[0, 2] == -1).item()
    items, item_scores = none.items(groups, scores, k=5)
    assert items[0].tolist() == [2, 0, 1, 3, 5]
    assert item_scores[0].tolist() == pytest.approx([-0.1, -0.5, -0.5, -0.5, -0.9])
    dedup_table = build_table(codes, [4, 4], "dedup-token")
    dedup = SIDResolver(dedup_table, torch.device("cpu"))
    sids = torch.as_tensor(dedup_table.codes[[3, 4, 0]])[None]
    items, _ = dedup.items(dedup.groups(sids), torch.tensor([[-1.0, -2.0, -3.0]]), k=3)
    assert items[0].tolist() == [3, 4, 0]


def test_sliding_window_makes_every_position_a_target():
    seqs = [np.array([5, 6, 7, 8]), np.array([1]), np.array([2, 3])]
    users, hists, targets = training_samples(seqs, max_history=2, sliding_window=True)
    assert targets.tolist() == [6, 7, 8, 3] and users.tolist() == [0, 0, 0, 2]
    assert hists.tolist() == [[-1, 5], [5, 6], [6, 7], [-1, 2]]
    _, _, last_only = training_samples(seqs, max_history=2, sliding_window=False)
    assert last_only.tolist() == [8, 3]


SMALL = dict(embedder="tfidf-svd", tokenizer="rkmeans", width=8, d_model=64, heads=2, d_head=32, d_ff=128,
             enc_layers=2, dec_layers=2, max_history=8, lr=0.003, warmup_steps=10, epochs=12, eval_every=12,
             beam=10, user_buckets=0, dropout=0.0)


@pytest.mark.parametrize("method, extra", [("tiger", {"user_buckets": 50}), ("gr", {}),
                                           ("gr-resolved", {"levels": 2, "width": 16})])
def test_generative_methods_beat_pop_on_synthetic(method, extra, tiny_spec, store, tmp_path, monkeypatch):
    from harness.run.referee import run
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    pop = run(tiny_spec("pop", ks=[10]), store)
    record = run(tiny_spec(method, ks=[10], overrides={**SMALL, **extra}), store)
    assert record["status"] == "ok", record["failure"]
    assert record["metrics"]["test"]["recall@10"] > pop["metrics"]["test"]["recall@10"] + 0.1
    diag = record["diagnostics"]
    assert diag["invalid_sid_rate"] == 0.0  # constrained decoding
    assert 0 <= diag["sid_recall@10"] <= 1 and diag["mean_group_size_returned"] >= 1
    assert record["features"]["sids"][0]["tokenizer"]["tokenizer"] == "rkmeans"
    if method == "gr":
        assert diag["sid_recall@10"] >= record["metrics"]["test"]["recall@10"]  # a group hit ⊇ the item hit


def test_tiger_recipes_resolve_to_their_documented_values():
    """`recipe=paper` is TIGER's published schedule (methods/tiger.yaml names the source of each value); the default
    recipe is the config as it was; the smoke / cpu-small / cpu-labelled rows pin that default and raw RQ-VAE inputs."""
    from harness.config import merge_config
    from harness.registry import get
    from harness.run.spec import RunSpec
    from harness.run.tracks import load_track
    from harness.sid.tokenizers import make_tokenizer
    tiger = get("tiger")
    default = merge_config(tiger.default_config, {}, "tiger", tiger.recipes)
    assert default == tiger.default_config and default["recipe"] == "default"
    assert (default["optimizer"], default["lr"], default["lr_schedule"], default["max_steps"]) == \
        ("adam", 0.0005, "linear-warmup", 0)
    paper = merge_config(tiger.default_config, {"recipe": "paper"}, "tiger", tiger.recipes)
    assert {k: paper[k] for k in ("optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay", "max_steps",
                                  "batch_size", "dropout")} == {
        "optimizer": "adagrad", "lr": 0.01, "lr_schedule": "rsqrt", "warmup_steps": 10000, "weight_decay": 0.0,
        "max_steps": 200000, "batch_size": 256, "dropout": 0.1}
    assert paper["tokenizer"] == "rqvae" and paper["tokenizer_options"] == {
        "optimizer": "adagrad", "lr": 0.4, "epochs": 20000, "batch_size": 1024, "kmeans_init": "first-batch",
        "hidden": [512, 256, 128], "latent": 32, "beta": 0.25, "restart_every": 10}
    assert paper["rqvae_standardize"] is True
    make_tokenizer("rqvae", levels=3, width=256, **paper["tokenizer_options"])  # every option is the tokenizer's
    toys = merge_config(tiger.default_config, {"recipe": "paper", "max_steps": 100000}, "tiger", tiger.recipes)
    assert toys["max_steps"] == 100000 and toys["optimizer"] == "adagrad"
    for track, tokenizer_options in [("smoke", {}), ("cpu-small", {"epochs": 100}), ("cpu-labelled", {"epochs": 100})]:
        t = load_track(track)
        spec = RunSpec.for_track(t, "tiger", t.datasets[0])
        cfg = merge_config(tiger.default_config, spec.track_overrides, "tiger", tiger.recipes)
        assert cfg["recipe"] == "default" and cfg["optimizer"] == "adam" and cfg["lr_schedule"] == "linear-warmup"
        assert cfg["max_steps"] == 0 and cfg["tokenizer_options"] == tokenizer_options, track
        assert tiger(cfg).tokenizer_options() == {**tokenizer_options, "standardize": False}, track
    # TIGER standardises its RQ-VAE's inputs unless told not to, and gives another tokenizer its options as they are
    assert tiger(default).tokenizer_options() == {"standardize": True}
    assert tiger({**default, "tokenizer_options": {"standardize": False}}).tokenizer_options() == {"standardize": False}
    assert tiger({**default, "tokenizer": "rkmeans"}).tokenizer_options() == {}
    assert merge_config(tiger.default_config, {"recipe": "grid"}, "tiger", tiger.recipes)["tokenizer_options"] == {}


def test_lr_schedules_and_optimizers():
    """linear-warmup is the engine's schedule as it was; rsqrt is T5's: lr for the first warm-up steps, then
    lr·√(warm-up / step), so TIGER's 0.01 over 10k steps is 1 / √max(step, 10⁴)."""
    from harness.engines.training import lr_multiplier, make_optimizer
    from harness.errors import ConfigError
    old = lambda s, warmup=100: min(1.0, (s + 1) / max(1, warmup))  # noqa: E731  (generative.py before rsqrt)
    linear = lr_multiplier("linear-warmup", 100)
    assert all(linear(s) == old(s) for s in range(0, 1000, 7))
    assert lr_multiplier("linear-warmup", 0)(0) == old(0, 0) == 1.0
    rsqrt = lr_multiplier("rsqrt", 10000)
    for step in (1, 5000, 10000, 10001, 40000, 200000):
        assert 0.01 * rsqrt(step - 1) == pytest.approx(1 / np.sqrt(max(step, 10000)))
    with pytest.raises(ConfigError):
        lr_multiplier("cosine", 10)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(make_optimizer("adagrad", params, 0.01)) is torch.optim.Adagrad
    assert type(make_optimizer("adam", params, 0.01, 1e-6)) is torch.optim.Adam
    assert type(make_optimizer("adamw", params, 0.01)) is torch.optim.AdamW
    with pytest.raises(ConfigError):
        make_optimizer("sgd", params, 0.01)


def test_max_steps_caps_the_shared_training_loop():
    """max_steps ends training after that many optimiser steps, mid-epoch too, and the state it left is validated;
    without it the loop runs its epochs as before."""
    from types import SimpleNamespace
    from harness.api import Budget
    from harness.engines.training import train_with_validation
    module = torch.nn.Linear(2, 1)
    validated = []
    train = SimpleNamespace(load_checkpoint=lambda: None, checkpoint_every=0, device=torch.device("cpu"),
                            precision="fp32",
                            validate=lambda method: validated.append(1) or {"ndcg@10": float(len(validated))})
    method = SimpleNamespace(name="stub")
    steps = []

    def loss_of(batch):
        steps.append(batch)
        return module(torch.ones(1, 2)).sum()
    cfg = {"epochs": 5, "eval_every": 1, "valid_metric": "ndcg@10", "patience": 100}
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    for max_steps, expected_steps, expected_validations in [(0, 5 * 4, 5), (6, 6, 2), (8, 8, 2)]:
        steps.clear(), validated.clear()
        train_with_validation(method, module, train, Budget(), optimizer, lambda: range(4), loss_of,
                              {**cfg, "max_steps": max_steps})
        assert len(steps) == expected_steps and len(validated) == expected_validations, max_steps


def test_an_ablation_variant_that_is_a_published_row_reuses_its_seeds_instead_of_training(tmp_path, monkeypatch):
    """TIGER's RQ-VAE variant is tiger as the smoke track runs it: `harness ablate` adopts the board's published
    seeds, with per-user arrays for the paired tests, rather than training them again; --force trains."""
    import json

    from harness.board.store import RunStore
    from harness.config import config_hash
    from harness.paths import LEADERBOARDS_DIR
    from harness.run.referee import prepare
    from harness.run.spec import RunSpec
    from harness.run.tracks import load_track
    from harness.studies import seeds as seeds_module
    from harness.studies.ablations import run_ablations

    def no_training(*args, **kwargs):
        raise AssertionError("a published seed was trained again")
    monkeypatch.setattr(seeds_module, "run", no_training)
    spec = RunSpec.for_track(load_track("smoke"), "tiger", "synthetic")
    wanted = config_hash(prepare(spec).config)
    lines = (LEADERBOARDS_DIR / "smoke" / "synthetic.jsonl").read_text().splitlines()
    published = {r["seed"]: r for r in map(json.loads, lines)
                 if r["method"] == "tiger" and r["method_config_hash"] == wanted}
    assert {0, 1} <= set(published), "the smoke board holds tiger's seeds 0 and 1 as the track runs it"
    store = RunStore(runs_dir=tmp_path / "runs")
    records = run_ablations(spec, [0, 1], store, jobs=1, only=["RQ-VAE"])["RQ-VAE"]
    assert [r["run_id"] for r in records] == [published[0]["run_id"], published[1]["run_id"]]
    for record in records:
        test = store.per_user(record["run_id"])["test"]
        assert abs(float(np.mean(test["ndcg@10"])) - published[record["seed"]]["metrics"]["test"]["ndcg@10"]) < 1e-6
    with pytest.raises(AssertionError, match="trained again"):
        run_ablations(spec, [2], RunStore(runs_dir=tmp_path / "other"), jobs=1, only=["RQ-VAE"], force=True)
