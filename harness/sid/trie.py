"""Validity structure for constrained decoding: a prefix trie compiled to dense per-level tensors.

Prefixes of length l get ids 0..P_l-1. `allowed[l]` is a bool [P_l, W_l] mask of the codes that extend a valid
prefix, `child[l]` the id of the extended prefix (-1 where invalid). A batch of B beams looks up its masks with
one gather per level, on CPU or GPU: no comparison against the list of all SIDs.
"""
from __future__ import annotations

import numpy as np
import torch


class PrefixTrie:
    def __init__(self, codes: np.ndarray, widths: list[int], device: torch.device | str = "cpu"):
        codes = np.asarray(codes, dtype=np.int64)
        n, levels = codes.shape
        self.levels, self.widths = levels, list(widths)
        self.allowed: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        prefix_id = np.zeros(n, dtype=np.int64)  # all items share the empty prefix (id 0)
        n_prefixes = 1
        for level in range(levels):
            width = self.widths[level]
            # id of each item's prefix of length level + 1
            pair = prefix_id * width + codes[:, level]
            unique_pairs, next_id = np.unique(pair, return_inverse=True)
            allowed = np.zeros((n_prefixes, width), dtype=bool)
            child = np.full((n_prefixes, width), -1, dtype=np.int64)
            allowed[unique_pairs // width, unique_pairs % width] = True
            child[unique_pairs // width, unique_pairs % width] = np.arange(len(unique_pairs))
            self.allowed.append(torch.as_tensor(allowed, device=device))
            self.child.append(torch.as_tensor(child, device=device))
            prefix_id, n_prefixes = next_id.reshape(-1), len(unique_pairs)
        self.leaf_of_item = torch.as_tensor(prefix_id, device=device)  # full-SID id per item

    def root(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.long, device=self.allowed[0].device)

    def mask(self, level: int, prefix: torch.Tensor) -> torch.Tensor:
        """Allowed next codes [B, W_level] for prefixes (ids at `level`; -1 = already invalid → nothing allowed)."""
        safe = prefix.clamp(min=0)
        out = self.allowed[level][safe]
        return out & (prefix >= 0)[:, None]

    def advance(self, level: int, prefix: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Prefix ids after appending `code`; -1 where the result is not a prefix of any item's SID."""
        safe = prefix.clamp(min=0)
        nxt = self.child[level][safe, code.clamp(min=0, max=self.widths[level] - 1)]
        return torch.where((prefix >= 0) & (code >= 0) & (code < self.widths[level]), nxt, torch.full_like(nxt, -1))

    def is_valid(self, sids: torch.Tensor) -> torch.Tensor:
        """[B, L] full SIDs → bool [B]."""
        prefix = self.root(len(sids))
        for level in range(self.levels):
            prefix = self.advance(level, prefix, sids[:, level])
        return prefix >= 0
