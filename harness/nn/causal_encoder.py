"""The causal self-attention sequence encoder of SASRec-style models (SASRec, the ARGUS user tower, collaborative
item embeddings): learned positions, pre-norm transformer blocks, a causal mask over left-padded histories; SASRec's
network on it; and the next-item training pairs and batches they share."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.nn.batching import pad_histories


class CausalSequenceEncoder(nn.Module):
    def __init__(self, hidden: int, blocks: int, heads: int, max_len: int, dropout: float, ffn_mult: int = 4):
        super().__init__()
        self.heads = heads
        self.max_len = max_len
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.input_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, hidden * ffn_mult, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, L, d] of a left-padded history and its real-item mask [B, L] → hidden states
        [B, L, d] (zero at padding); state t has seen items ≤ t only."""
        batch, length = real.shape
        # Histories are right-aligned: the last item always sits at position max_len - 1, however a batch is cropped.
        positions = torch.arange(self.max_len - length, self.max_len, device=x.device)
        x = self.dropout(self.input_norm(x + self.pos_emb(positions)))
        # Causal mask plus padded keys; every position may always see itself (no fully masked rows).
        blocked = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        blocked = blocked[None] | (~real)[:, None, :]
        blocked &= ~torch.eye(length, dtype=torch.bool, device=x.device)[None]
        x = self.blocks(x, mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.out_norm(x) * real.unsqueeze(-1)


class SASRecNet(nn.Module):
    """Item embeddings (shared by input and output) + the causal sequence encoder."""

    def __init__(self, n_items: int, hidden: int, blocks: int, heads: int, max_len: int, dropout: float,
                 ffn_mult: int = 4):
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # id 0 = padding
        self.encoder = CausalSequenceEncoder(hidden, blocks, heads, max_len, dropout, ffn_mult)
        for emb in (self.item_emb, self.encoder.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, L] of item ids + 1 (0 = pad, left-padded) → hidden states [B, L, d]."""
        return self.encoder(self.item_emb(seq), seq > 0)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[1:].T


def next_item_pairs(sequences: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input seq[:-1] → target seq[1:] at every position, left-padded (ids + 1, 0 = pad). A sequence longer than
    `max_len` steps is cut into consecutive windows from its end, so that every training target is a target once,
    as the generative methods' sliding window makes it (a window's first steps see only the window)."""
    inputs, targets = [], []
    for seq in sequences:
        if len(seq) < 2:
            continue
        src, dst = seq[:-1], seq[1:]
        for end in range(len(dst), 0, -max_len):
            start = max(0, end - max_len)
            inputs.append(src[start:end])
            targets.append(dst[start:end])
    return pad_histories(inputs, max_len), pad_histories(targets, max_len)


def length_bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool: int = 32):
    """Shuffled batches of similar length (sorted within pools of `pool` batches), so padding can be cropped away."""
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start:start + batch_size * pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]
