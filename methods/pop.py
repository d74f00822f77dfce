"""Pop: every user gets the most popular training items. The floor every method must clear."""
from __future__ import annotations

import numpy as np
import torch

from harness.api import Budget, Method, TrainView, register


@register
class Pop(Method):
    name = "pop"
    paper = "Most-popular baseline (training-split interaction counts)"
    needs = ()

    def fit(self, train: TrainView, budget: Budget) -> None:
        counts = torch.as_tensor(train.item_counts(), dtype=torch.float32)
        self.scores_ = counts / max(1.0, float(counts.sum()))
        budget.epoch_done()

    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        row = self.scores_ if items is None else self.scores_[items]
        return row.expand(len(histories), -1).clone()
