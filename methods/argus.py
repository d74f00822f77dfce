"""ARGUS-style two-tower retrieval (Khrylchenko et al., arXiv 2507.15994; the production baseline of Gryphon §4.1.2).

User tower: a causal transformer over the item-tower vectors of the user's history, so the state at position t is
the user after t items. Item tower: an item-id embedding table (+ projected item features, optional). Training is
autoregressive next-item prediction at every position with sampled softmax over in-batch negatives (optionally mixed
with uniform ones) and logQ correction. Retrieval is an exact dot product against the full catalogue.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Budget, Method, TrainView, pad_histories, register
from harness.engines.training import train_with_validation
from harness.features import item_features
from harness.nn.causal_encoder import CausalSequenceEncoder, length_bucketed_batches, next_item_pairs
from harness.nn.item_tower import ItemTower
from harness.nn.sampled_softmax import NegativeSampler, sampled_softmax_loss


class TwoTower(nn.Module):
    def __init__(self, n_items: int, hidden: int, blocks: int, heads: int, max_len: int, dropout: float,
                 features: np.ndarray | None, tie: bool, normalize: bool):
        super().__init__()
        self.items = ItemTower(n_items, hidden, features)
        self.inputs = self.items if tie else ItemTower(n_items, hidden, features)
        self.encoder = CausalSequenceEncoder(hidden, blocks, heads, max_len, dropout)
        nn.init.normal_(self.encoder.pos_emb.weight, std=0.02)
        self.normalize = normalize

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def users(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, L] of item ids + 1 (0 = pad, left-padded) → user states [B, L, d]."""
        real = seq > 0
        x = self.inputs((seq - 1).clamp(min=0)) * real.unsqueeze(-1)
        return self._unit(self.encoder(x, real))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self._unit(self.items.all() if items is None else self.items(items))


@register
class ARGUS(Method):
    name = "argus"
    paper = "Khrylchenko et al., Scaling Recommender Transformers to One Billion Parameters (ARGUS), arXiv 2507.15994"
    needs = ()

    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        self.device = train.device
        self.max_len = int(cfg["max_len"])
        features = item_features(train, cfg["item_features"], cfg.get("item_features_options"))
        self.net = TwoTower(train.n_items, cfg["hidden"], cfg["blocks"], cfg["heads"], self.max_len, cfg["dropout"],
                            features, cfg["tie_towers"], cfg["normalize"]).to(self.device)
        inputs, targets = next_item_pairs(train.sequences, self.max_len)
        lengths = (inputs > 0).sum(dim=1)
        # Q(i): in-batch negatives are other positions' targets, so an item's chance is its frequency as a target.
        target_counts = np.bincount((targets[targets > 0] - 1).numpy(), minlength=train.n_items)
        self.sampler = NegativeSampler(target_counts, cfg["inbatch_negatives"], cfg["uniform_negatives"], self.device)
        log_q = self.sampler.log_q if cfg["logq_correction"] else None
        generator = torch.Generator().manual_seed(train.seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            width = int(lengths[idx].max())  # crop the batch to its longest history
            seq, tgt = inputs[idx, -width:].to(self.device), targets[idx, -width:].to(self.device)
            states = self.net.users(seq)[tgt > 0]  # every position predicts its next item
            positives = tgt[tgt > 0] - 1
            negatives = self.sampler.sample(positives, generator)
            pos = (states * self.net.item_vectors(positives)).sum(-1)
            neg = states @ self.net.item_vectors(negatives).T
            return sampled_softmax_loss(pos, neg, positives, negatives, log_q, cfg["temperature"])
        train_with_validation(self, self.net, train, budget, optimizer,
                              lambda: length_bucketed_batches(lengths, cfg["batch_size"], generator), loss_of, cfg,
                              generators=[generator])

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        """Exact dot products of the last user state with every catalogue item (or with `items`)."""
        seq = pad_histories(histories, self.max_len)
        width = max(1, int((seq > 0).sum(dim=1).max()))
        user = self.net.users(seq[:, -width:].to(self.device))[:, -1]
        vectors = self.net.item_vectors(None if items is None else items.to(self.device))
        return (user @ vectors.T).float().cpu()
