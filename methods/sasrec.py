"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation over item ids.

A stack of causal self-attention blocks reads the item-embedding sequence (plus learned positions); the hidden state
at position t scores every item by a dot product with the shared item-embedding table, predicting item t+1.
Two training losses:
- `bce`: binary cross-entropy with one uniformly sampled negative per position (the paper; TIGER's baseline row);
- `ce`: full softmax cross-entropy over the catalogue (stronger; RecBole's default).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.api import Budget, Method, TrainView, pad_histories, register
from harness.engines.training import train_with_validation
from harness.nn.causal_encoder import SASRecNet, length_bucketed_batches, next_item_pairs


@register
class SASRec(Method):
    name = "sasrec"
    paper = "Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018"
    needs = ()

    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        if cfg["loss"] not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {cfg['loss']!r}")
        self.device = train.device
        self.max_len = int(cfg["max_len"])
        self.n_items = train.n_items
        self.net = SASRecNet(train.n_items, cfg["hidden"], cfg["blocks"], cfg["heads"], self.max_len,
                             cfg["dropout"]).to(self.device)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        inputs, targets = next_item_pairs(train.sequences, self.max_len)
        lengths = (inputs > 0).sum(dim=1)
        generator = torch.Generator().manual_seed(train.seed)

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            width = int(lengths[idx].max())  # crop the batch to its longest history
            return self._loss(inputs[idx, -width:].to(self.device), targets[idx, -width:].to(self.device), generator)
        train_with_validation(self, self.net, train, budget, optimizer,
                              lambda: length_bucketed_batches(lengths, cfg["batch_size"], generator), loss_of, cfg,
                              generators=[generator])

    def _loss(self, seq: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        hidden = self.net(seq)
        mask = target > 0
        h = hidden[mask]
        pos = target[mask] - 1
        if self.config["loss"] == "ce":
            return F.cross_entropy(self.net.item_logits(h), pos)
        neg = torch.randint(0, self.n_items - 1, pos.shape, generator=generator).to(pos.device)
        neg = neg + (neg >= pos).long()  # uniform over items other than the positive
        emb = self.net.item_emb.weight
        pos_logit = (h * emb[pos + 1]).sum(-1)
        neg_logit = (h * emb[neg + 1]).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
            F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        seq = pad_histories(histories, self.max_len)
        width = max(1, int((seq > 0).sum(dim=1).max()))
        seq = seq[:, -width:].to(self.device)
        last = self.net(seq)[:, -1]
        scores = self.net.item_logits(last)
        if items is not None:
            scores = scores[:, items.to(self.device)]
        return scores.float().cpu()
