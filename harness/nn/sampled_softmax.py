"""Sampled softmax with logQ correction (Yi et al., RecSys 2019; Gryphon §3.3; ARGUS).

A full softmax over a large catalogue is replaced by a softmax over the positive and a sample of negatives. Sampled
negatives are drawn in proportion to a proposal Q (in-batch negatives: the items' frequency as targets), so popular
items would be over-penalised; subtracting log Q(i) from every logit corrects the estimate:

    logit(u, i) = s(u, i) / τ − log Q(i),   loss = −log softmax over {positive} ∪ negatives, at the positive.

A negative that is the row's own positive item (the same item is another row's target, or a uniform draw hit it)
is not a negative: it is masked out rather than pushed down.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sampled_softmax_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, pos_ids: torch.Tensor,
                         neg_ids: torch.Tensor, log_q: torch.Tensor | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
    """Mean sampled-softmax loss over the rows.

    pos_scores [B]: s(u_b, positive_b); neg_scores [B, C]: s(u_b, negative_c) for a shared negative set;
    pos_ids [B], neg_ids [C]: catalogue ids; log_q [n_items]: log sampling probability per item (None: no correction).
    """
    pos = pos_scores / temperature
    neg = neg_scores / temperature
    if log_q is not None:
        pos = pos - log_q[pos_ids]
        neg = neg - log_q[neg_ids][None, :]
    neg = neg.masked_fill(neg_ids[None, :] == pos_ids[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=logits.device))


class NegativeSampler:
    """Shared negatives for a batch: (a subset of) the batch's own positives, optionally mixed with uniform draws.

    `log_q` is the log of each item's expected number of copies among the negatives, under the mixture of both
    proposals: n_inbatch · p(i) + n_uniform / n_items, with p the items' frequency as training targets.
    """

    def __init__(self, target_counts: np.ndarray, n_inbatch: int, n_uniform: int = 0,
                 device: torch.device | str = "cpu"):
        counts = torch.as_tensor(np.asarray(target_counts, dtype=np.float64))
        self.n_items = len(counts)
        self.n_inbatch, self.n_uniform = int(n_inbatch), int(n_uniform)
        if self.n_inbatch <= 0 and self.n_uniform <= 0:
            raise ValueError("sampled softmax needs in-batch or uniform negatives")
        p = counts / counts.sum().clamp(min=1.0)
        expected = self.n_inbatch * p + self.n_uniform / self.n_items
        self.log_q = torch.log(expected.clamp(min=1e-12)).float().to(device)

    def sample(self, batch_positives: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative item ids [C] for a batch whose targets are `batch_positives`."""
        parts = []
        if self.n_inbatch > 0:
            flat = batch_positives.reshape(-1)
            if len(flat) > self.n_inbatch:
                pick = torch.randperm(len(flat), generator=generator)[:self.n_inbatch].to(flat.device)
                flat = flat[pick]
            parts.append(flat)
        if self.n_uniform > 0:
            parts.append(torch.randint(0, self.n_items, (self.n_uniform,), generator=generator)
                         .to(batch_positives.device))
        return torch.cat(parts)
