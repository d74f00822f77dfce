"""Collaborative item embeddings from the training split, and LETTER's tokenizer and method on top of them."""
import numpy as np
import pytest

from conftest import TINY
from harness.data import leave_one_out, load
from harness.data.interactions import TrainInteractions
from harness.data.split import EvalPart, Split
from harness.errors import HarnessError
from harness.features import embed_items
from harness.features.collaborative import train_item_embeddings
from harness.sid.tokenizers import make_tokenizer

CF = dict(dim=16, blocks=1, epochs=3, seed=0)


def test_collaborative_embeddings_ignore_held_out_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    data = load("synthetic", **TINY)
    split = leave_one_out(data)
    before = train_item_embeddings(TrainInteractions.from_split(split, data.n_items), **CF)
    split.test.targets[:] = (split.test.targets + 1) % data.n_items
    split.valid.targets[:] = (split.valid.targets + 7) % data.n_items
    after = train_item_embeddings(TrainInteractions.from_split(split, data.n_items), **CF)
    assert before.shape == (data.n_items, 16) and np.array_equal(before, after)
    with pytest.raises(TypeError):
        train_item_embeddings(data.sequences(), **CF)  # raw sequences (with their held-out tails) are refused
    with pytest.raises(HarnessError, match="training split"):
        embed_items(data.items, data.text_fields, "sasrec-cf", **CF)
    cached, info = embed_items(data.items, data.text_fields, "sasrec-cf",
                               TrainInteractions.from_split(split, data.n_items), **CF)
    assert np.array_equal(cached, after) and info["embedder"] == "sasrec-cf"


def co_consumed_catalogue(n_groups=8, per_group=8, users=400, seed=0):
    """Items in groups that users consume together; item text is noise, so text alone cannot find the groups."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_groups * per_group) // per_group
    sequences = [rng.permutation(np.flatnonzero(group == rng.integers(n_groups)))[:6] for _ in range(users)]
    text = rng.normal(size=(len(group), 32)).astype(np.float32)
    return group, sequences, text


def test_cf_loss_puts_co_consumed_items_on_shared_codes():
    group, sequences, text = co_consumed_catalogue()
    nobody = EvalPart(np.zeros(0, np.int64), [], np.zeros(0, np.int64))  # every sequence is training data here
    interactions = TrainInteractions.from_split(Split("", {}, sequences, nobody, nobody), len(group))
    cf = train_item_embeddings(interactions, dim=16, blocks=1, epochs=20, seed=0)
    same = (group[:, None] == group[None, :]) & ~np.eye(len(group), dtype=bool)

    def agreement(alpha):
        codes = make_tokenizer("letter", levels=2, width=8, latent=16, hidden=[64], alpha=alpha, clusters=2,
                               epochs=60, batch_size=16, lr=3e-3).fit(text, cf).codes
        shared = codes[:, 0][:, None] == codes[:, 0][None, :]
        return shared[same].mean(), shared[~same & ~np.eye(len(group), dtype=bool)].mean()

    text_only, _ = agreement(0.0)
    with_cf, across = agreement(1.0)
    assert with_cf > text_only + 0.08 and with_cf > across + 0.08, (with_cf, text_only, across)


def test_letter_beats_pop_on_synthetic(tiny_spec, store, tmp_path, monkeypatch):
    from harness.run.referee import run
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    small = dict(embedder="tfidf-svd", levels=3, width=8, d_model=64, heads=2, d_head=32, d_ff=128, enc_layers=2,
                 dec_layers=2, max_history=8, lr=0.003, warmup_steps=10, epochs=12, eval_every=12, beam=10,
                 user_buckets=0, dropout=0.0, collaborative_options={"dim": 16, "epochs": 5},
                 tokenizer_options={"epochs": 20, "hidden": [64], "batch_size": 64})
    pop = run(tiny_spec("pop", ks=[10]), store)
    record = run(tiny_spec("letter", ks=[10], overrides=small), store)
    assert record["status"] == "ok", record["failure"]
    assert record["metrics"]["test"]["recall@10"] > pop["metrics"]["test"]["recall@10"] + 0.1
    sids = record["features"]["sids"][0]
    assert sids["tokenizer"]["tokenizer"] == "letter" and sids["collaborative"]["embedder"] == "sasrec-cf"
    assert len(record["diagnostics"]["tokenizer_report"]["per_level"]) == 3
