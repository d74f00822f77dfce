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
