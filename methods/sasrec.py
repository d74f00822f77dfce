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
from torch import nn

from harness.api import Budget, Method, TrainView, pad_histories, register
from harness.nn.training import train_with_validation


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, hidden: int, blocks: int, heads: int, max_len: int, dropout: float,
                 ffn_mult: int = 4):
        super().__init__()
        self.heads = heads
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # id 0 = padding
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.input_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, hidden * ffn_mult, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(hidden)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, L] of item ids + 1 (0 = pad, left-padded) → hidden states [B, L, d]."""
        batch, length = seq.shape
        # Histories are right-aligned: the last item always sits at position max_len - 1, however a batch is cropped.
        positions = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        x = self.dropout(self.input_norm(self.item_emb(seq) + self.pos_emb(positions)))
        # Causal mask plus padded keys; every position may always see itself (no fully masked rows).
        blocked = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seq.device), diagonal=1)
        blocked = blocked[None] | (seq == 0)[:, None, :]
        blocked &= ~torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        mask = blocked.repeat_interleave(self.heads, dim=0)
        x = self.blocks(x, mask=mask)
        return self.out_norm(x) * (seq > 0).unsqueeze(-1)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[1:].T


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
        inputs, targets = self._training_pairs(train.sequences)
        lengths = (inputs > 0).sum(dim=1)
        generator = torch.Generator().manual_seed(train.seed)

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            width = int(lengths[idx].max())  # crop the batch to its longest history
            return self._loss(inputs[idx, -width:].to(self.device), targets[idx, -width:].to(self.device), generator)
        train_with_validation(self, self.net, train, budget, optimizer,
                              lambda: self._batches(lengths, cfg["batch_size"], generator), loss_of, cfg)

    @staticmethod
    def _batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool: int = 32):
        """Shuffled batches of similar length (sorted within pools of `pool` batches), so padding is cropped away."""
        order = torch.randperm(len(lengths), generator=generator)
        batches = []
        for start in range(0, len(order), batch_size * pool):
            chunk = order[start:start + batch_size * pool]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator)]

    def _training_pairs(self, sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input seq[:-1] → target seq[1:] at every position, the last `max_len` steps, left-padded."""
        usable = [s for s in sequences if len(s) >= 2]
        inputs = pad_histories([s[:-1] for s in usable], self.max_len)
        targets = pad_histories([s[1:] for s in usable], self.max_len)
        return inputs, targets

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
