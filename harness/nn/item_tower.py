"""Item tower: an item-id embedding, optionally plus a learned projection of item features (e.g. text embeddings
from `harness.features.item_features`). Shared by two-tower retrieval and Gryphon's item-level scorer."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn



class ItemTower(nn.Module):
    def __init__(self, n_items: int, dim: int, features: np.ndarray | None = None):
        super().__init__()
        self.ids = nn.Embedding(n_items, dim)
        nn.init.normal_(self.ids.weight, std=0.02)
        self.proj = None
        if features is not None:
            self.register_buffer("features", torch.as_tensor(np.asarray(features, dtype=np.float32)),
                                 persistent=False)
            self.proj = nn.Linear(self.features.shape[1], dim, bias=False)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape) → vectors (same shape + [dim])."""
        x = self.ids(items)
        return x if self.proj is None else x + self.proj(self.features[items])

    def all(self) -> torch.Tensor:
        """Every catalogue item's vector [n_items, dim]."""
        return self.forward(torch.arange(self.ids.num_embeddings, device=self.ids.weight.device))
