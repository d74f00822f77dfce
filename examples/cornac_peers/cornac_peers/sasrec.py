"""cornac-sasrec: cornac 3.0.1's SASRec (`cornac.models.SASRec`), trained by cornac's own code and judged by the
harness, so it can stand beside the harness's `sasrec` as a peer row: same split, seeds, sizes and evaluator.

What is cornac's: the model (its `SASRecModel`), the loss, the optimiser and the training loop, over one session per
user (the user's training sequence, in order). What is the harness's: the data, validation every `eval_every`
epochs with early stopping on the best validation state (cornac's own `model_selection` only keeps the best of a
fixed number of epochs), and the evaluation. The harness reaches into cornac's loop at one point only: its epoch
progress bar is replaced by an iterator that validates between epochs and ends the loop when early stopping says so.
"""
from __future__ import annotations

from collections import OrderedDict
from unittest import mock

import numpy as np
import torch

from harness.api import Budget, Method, TrainView
from cornac_peers.loop import ValidatedEpochs, import_cornac


class CornacSASRec(Method):
    name = "cornac-sasrec"
    paper = "Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018; cornac 3.0.1's cornac.models.SASRec"
    peer = "cornac 3.0.1"  # a reference row: another library's implementation under this harness's protocol
    peer_of = "sasrec"  # the board sets this row beside sasrec's, metric by metric
    needs = ()

    def fit(self, train: TrainView, budget: Budget) -> None:
        cornac = import_cornac()
        from cornac.data import SequentialDataset
        from cornac.models.sasrec import recom_sasrec

        cfg = self.config
        # one session per user, its items in order; the item map is the identity, so cornac's item index is ours
        rows = [(u, u, int(item), t) for u, seq in enumerate(train.sequences) for t, item in enumerate(seq)]
        data = SequentialDataset.build(rows, fmt="USIT", global_iid_map=OrderedDict((i, i) for i in range(train.n_items)),
                                       seed=train.seed)
        self.cornac = cornac.models.SASRec(
            embedding_dim=cfg["embedding_dim"], num_blocks=cfg["num_blocks"], num_heads=cfg["num_heads"],
            max_len=cfg["max_len"], dropout=cfg["dropout"], learning_rate=cfg["learning_rate"],
            batch_size=cfg["batch_size"], loss=cfg["loss"], n_sample=cfg["n_sample"], l2_reg=cfg["l2_reg"],
            n_epochs=budget.epochs(int(cfg["epochs"])), model_selection="last", device=str(train.device),
            seed=train.seed, verbose=False)
        epochs = ValidatedEpochs(self, train, budget, self.cornac.n_epochs)
        with mock.patch.object(recom_sasrec, "trange", epochs):
            self.cornac.fit(data)
        epochs.validation.finish()  # the state trained last judged too; the best one kept, in eval mode
        self.net = self.cornac.model  # counted by parameters_count

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        """cornac's scores (its `predict` over left-padded histories, 256 users at a time); an empty history scores
        every item alike, as cornac's `score` does."""
        net, length, pad = self.cornac.model, int(self.config["max_len"]), self.cornac.pad_idx
        net.eval()
        out = []
        for start in range(0, len(histories), 256):
            chunk = [np.asarray(h)[-length:] for h in histories[start:start + 256]]
            seq = np.full((len(chunk), length), pad, dtype=np.int64)
            for row, h in enumerate(chunk):
                if len(h):
                    seq[row, length - len(h):] = h
            scores = torch.from_numpy(np.atleast_2d(net.predict(None, torch.as_tensor(seq, device=net.dev)))).float()
            scores[torch.as_tensor([len(h) == 0 for h in chunk])] = 1.0
            out.append(scores)
        scores = torch.cat(out)
        return scores if items is None else scores[:, items]
