"""Collaborative item embeddings (`sasrec-cf`): the item-embedding table of a SASRec trained on the training split.

LETTER and ETEGRec tokenize items from what users do, not only from their text. The network is the `sasrec` plugin's
(full-softmax next-item loss), trained for a fixed number of epochs: a tokenizer has no validation data to stop on.
The input is `TrainInteractions`, so held-out targets cannot reach these embeddings; they are cached by the content
of the training sequences and the options, like every embedding.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.interactions import TrainInteractions, require_train
from harness.features.embedders import Embedder, embedder
from harness.nn.causal_encoder import SASRecNet, length_bucketed_batches, next_item_pairs
from harness.nn.rng import own_rng


@own_rng
def train_item_embeddings(interactions: TrainInteractions, dim: int = 32, blocks: int = 2, heads: int = 2,
                          max_len: int = 50, dropout: float = 0.3, epochs: int = 30, lr: float = 1e-3,
                          batch_size: int = 256, seed: int = 0) -> np.ndarray:
    interactions = require_train(interactions)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = SASRecNet(interactions.n_items, dim, blocks, heads, max_len, dropout)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    inputs, targets = next_item_pairs(interactions.sequences, max_len)
    lengths = (inputs > 0).sum(dim=1)
    net.train()
    for _ in range(epochs):
        for idx in length_bucketed_batches(lengths, batch_size, generator):
            width = int(lengths[idx].max())
            seq, tgt = inputs[idx, -width:], targets[idx, -width:]
            hidden = net(seq)[tgt > 0]
            loss = F.cross_entropy(net.item_logits(hidden), tgt[tgt > 0] - 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.item_emb.weight[1:].detach().numpy().astype(np.float32)


@embedder("sasrec-cf")
class SASRecCF(Embedder):
    uses_text = False
    uses_interactions = True

    def __init__(self, dim: int = 32, blocks: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.3,
                 epochs: int = 30, lr: float = 1e-3, batch_size: int = 256, seed: int = 0):
        super().__init__(dim=dim, blocks=blocks, heads=heads, max_len=max_len, dropout=dropout, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed)

    def embed(self, items, text_fields, interactions: TrainInteractions | None = None):
        return train_item_embeddings(interactions, **self.options)
