"""Peer rows: cornac's SASRec (`examples/cornac_peers`, installed by `make setup`) trained by cornac's own loop and
judged by the harness, with the harness's early stopping; its records say whose implementation it is."""
from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("cornac_peers", reason="the peer plugin is not installed (`make setup` installs examples/cornac_peers)")
from harness import registry  # noqa: E402
from harness.api import Budget  # noqa: E402
from harness.board.results import row_label  # noqa: E402
from harness.board.store import RunStore  # noqa: E402
from harness.run.referee import run  # noqa: E402
from harness.run.spec import RunSpec  # noqa: E402
from harness.run.tracks import load_track, track_names  # noqa: E402


def test_cornac_sasrec_runs_under_the_harness_protocol_and_is_marked_peer(tmp_path):
    spec = RunSpec.for_track(load_track("smoke"), "cornac-sasrec", "synthetic", max_epochs=2, latency_users=5)
    records = [run(spec, RunStore(runs_dir=tmp_path / str(i))) for i in range(2)]
    record = records[0]
    assert record["status"] == "ok" and record["peer"] == "cornac 3.0.1"
    assert row_label(record) == "cornac-sasrec (peer: cornac 3.0.1)"
    assert record["used"]["epochs"] == 2 and record["used"]["validations"] == 2  # the harness's epochs, validated
    assert record["metrics"]["test"]["ndcg@10"] > 0.2  # it learned (pop's smoke ndcg@10 is 0.13)
    assert records[1]["metrics"] == record["metrics"]  # the same seed gives the same peer row


def test_the_epoch_iterator_ends_cornacs_loop_at_early_stopping_and_keeps_the_best_state():
    """What replaces cornac's progress bar: validation every eval_every epochs, a stop once patience runs out, and
    (the shared rule's finish) a last validation of the state trained last when the loop ends between validations."""
    from cornac_peers.loop import ValidatedEpochs
    cls = registry.get("cornac-sasrec")
    module = torch.nn.Linear(1, 1)
    module.weight.data.fill_(0.25)  # exact in float32: the checks below add whole numbers to it
    seen = []

    def iterate(config, scores, epochs):
        scores = iter(scores)

        def validate(_method):  # each call sees one more epoch of "training": the weight grows by 1
            module.weight.data += 1.0
            seen.append(float(module.weight.detach()))
            return {"ndcg@10": next(scores)}
        method = cls(config)
        method.cornac = types.SimpleNamespace(model=module)
        budget = Budget(None, epochs)
        loop = ValidatedEpochs(method, types.SimpleNamespace(validate=validate), budget, epochs)
        return list(loop), loop, budget

    start = float(module.weight.detach())
    yielded, loop, _ = iterate({"patience": 2, "eval_every": 1}, [0.3, 0.5, 0.4, 0.2, 0.1, 0.0], 10)
    assert yielded == [1, 2, 3, 4] and len(seen) == 4  # 0.5 at epoch 2, then two worse rounds
    loop.validation.finish()
    assert len(seen) == 4 and float(module.weight.detach()) == start + 2.0  # no extra validation; epoch 2's state

    seen.clear()
    yielded, loop, budget = iterate({"patience": 5, "eval_every": 2}, [0.1, 0.2, 0.3], 3)
    assert yielded == [1, 2, 3] and len(seen) == 1 and budget.epochs_done == 3  # validated after epoch 2 only
    loop.validation.finish()
    assert len(seen) == 2  # and the state epoch 3 left


def pinned_pairs(peer: str, ours: str):
    """(track and dataset, the peer's config, ours) wherever a track pins the peer."""
    for name in track_names():
        track = load_track(name)
        if peer in track.method_overrides:
            for dataset in track.datasets:
                yield ((name, dataset), RunSpec.for_track(track, peer, dataset).method_config(),
                       RunSpec.for_track(track, ours, dataset).method_config())


def test_the_peer_has_sasrecs_sizes_on_every_track_that_has_both():
    """A peer row stands beside sasrec's only if it trains at the same sizes: every track's pins, per dataset,
    resolve to the same values under cornac's names."""
    same = {"embedding_dim": "hidden", "num_blocks": "blocks", "num_heads": "heads", "max_len": "max_len",
            "dropout": "dropout", "learning_rate": "lr", "batch_size": "batch_size", "epochs": "epochs",
            "eval_every": "eval_every", "patience": "patience", "valid_metric": "valid_metric"}
    checked = 0
    for where, a, b in pinned_pairs("cornac-sasrec", "sasrec"):
        assert {k: a[k] for k in same} == {k: b[v] for k, v in same.items()}, where
        checked += 1
    assert checked >= 3  # smoke, and cpu-small's two datasets


def test_cornac_tiger_runs_under_the_harness_protocol_on_tigers_sids(tmp_path):
    """cornac's TIGER peer: cornac's seq2seq, loop and beam search on the SID table tiger learns (the plugin checks
    cornac numbers the collisions as the table does), the harness's epochs and validation; the same seed, the same row."""
    spec = RunSpec.for_track(load_track("smoke"), "cornac-tiger", "synthetic", max_epochs=4, latency_users=5)
    records = [run(spec, RunStore(runs_dir=tmp_path / str(i))) for i in range(2)]
    record = records[0]
    assert record["status"] == "ok", record.get("failure")
    assert row_label(record) == "cornac-tiger (peer: cornac 3.0.1)" and record["peer_of"] == "tiger"
    assert record["used"]["epochs"] == 4 and record["used"]["validations"] == 1  # eval_every 4
    assert record["metrics"]["test"]["ndcg@10"] > 0.17  # it learned (pop's smoke ndcg@10 is 0.13; 4 epochs: 0.20)
    assert records[1]["metrics"] == record["metrics"]


def test_the_tiger_peer_has_tigers_sizes_and_sids_on_every_track_that_has_both():
    """A peer row stands beside tiger's only if it learns the same SIDs at the same sizes: every track's pins resolve
    to the same values under cornac's names, and to the same SID provider options."""
    same = {"d_model": "d_model", "num_heads": "heads", "d_kv": "d_head", "d_ff": "d_ff", "num_enc_layers": "enc_layers",
            "num_dec_layers": "dec_layers", "dropout": "dropout", "max_len": "max_history", "learning_rate": "lr",
            "weight_decay": "weight_decay", "batch_size": "batch_size", "n_beams": "beam", "epochs": "epochs",
            "eval_every": "eval_every", "patience": "patience", "valid_metric": "valid_metric", "embedder": "embedder",
            "embedder_options": "embedder_options", "tokenizer": "tokenizer", "levels": "levels", "width": "width",
            "sid_seed": "sid_seed"}
    checked = 0
    for where, peer, ours in pinned_pairs("cornac-tiger", "tiger"):
        assert {k: peer[k] for k in same} == {k: ours[v] for k, v in same.items()}, where
        assert ours["collisions"] == "dedup-token"  # the peer asks for the same table (cornac drops its last level)
        assert peer["tokenizer_options"] == registry.get("tiger")(ours).tokenizer_options(), where
        checked += 1
    assert checked >= 3  # smoke, and cpu-small's two datasets
