"""Peer rows: cornac's SASRec (`examples/cornac_peers`, installed by `make setup`) trained by cornac's own loop and
judged by the harness, with the harness's early stopping; its records say whose implementation it is."""
from __future__ import annotations

import types

import torch

from harness import registry
from harness.api import Budget
from harness.board.results import row_label
from harness.board.store import RunStore
from harness.run.referee import run
from harness.run.spec import RunSpec
from harness.run.tracks import load_track


def test_cornac_sasrec_runs_under_the_harness_protocol_and_is_marked_peer(tmp_path):
    spec = RunSpec.for_track(load_track("smoke"), "cornac-sasrec", "synthetic", max_epochs=2, latency_users=5)
    records = [run(spec, RunStore(runs_dir=tmp_path / str(i))) for i in range(2)]
    record = records[0]
    assert record["status"] == "ok" and record["peer"] == "cornac 3.0.1"
    assert row_label(record) == "cornac-sasrec (peer: cornac 3.0.1)"
    assert record["used"]["epochs"] == 2 and record["used"]["validations"] == 2  # the harness's epochs, validated
    curve = [point["ndcg@10"] for point in record["curves"]["validation"]]
    assert record["metrics"]["valid"]["ndcg@10"] == max(curve)  # the best validation state is the one kept
    assert record["metrics"]["test"]["ndcg@10"] > 0.2  # it learned (pop's smoke ndcg@10 is 0.13)
    assert records[1]["metrics"] == record["metrics"]  # the same seed gives the same peer row


def test_the_epoch_iterator_ends_cornacs_loop_at_early_stopping_and_keeps_the_best_state():
    """What replaces cornac's progress bar: validation every eval_every epochs, a stop once patience runs out, and
    a last validation of the state trained last when the loop ends between validations."""
    from cornac_peers.sasrec import _ValidatedEpochs
    cls = registry.get("cornac-sasrec")
    scores = iter([0.3, 0.5, 0.4, 0.2, 0.1, 0.0])
    seen = []
    module = torch.nn.Linear(1, 1)

    def validate(_method):  # each call sees one more epoch of "training": the weight grows by 1
        module.weight.data += 1.0
        seen.append(float(module.weight.detach()))
        return {"ndcg@10": next(scores)}
    method = cls({"patience": 2, "eval_every": 1})
    method.cornac = types.SimpleNamespace(model=module)
    start = float(module.weight.detach())
    epochs = _ValidatedEpochs(method, types.SimpleNamespace(validate=validate), Budget(None, 10), 10)
    assert list(epochs) == [1, 2, 3, 4] and len(seen) == 4  # 0.5 at epoch 2, then two worse rounds
    epochs.stopper.restore(module)
    assert float(module.weight.detach()) == start + 2.0  # the state validated at epoch 2

    method = cls({"patience": 5, "eval_every": 2})
    method.cornac = types.SimpleNamespace(model=module)
    scores, seen[:] = iter([0.1, 0.2, 0.3]), []
    budget = Budget(None, 3)
    assert list(_ValidatedEpochs(method, types.SimpleNamespace(validate=validate), budget, 3)) == [1, 2, 3]
    assert len(seen) == 2 and budget.epochs_done == 3  # epoch 2, and the state epoch 3 left
