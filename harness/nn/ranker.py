"""Discriminative ranker blocks: DIN target attention, DCNv2 cross layers and a mixture of experts.

`Mixer` is everything that touches the target representation: target attention over the history, the cross network
and the experts, ending in one logit. Inputs are batch-normalised per stream; a `path` picks the target and cross
BatchNorms, so a ranking path (item embedding + item-level cross features) and a retrieval path (SID-prefix embedding
+ token-level cross features) share every weight but their input statistics (DIG, eq. 6–7).
"""
from __future__ import annotations

import torch
from torch import nn


class TargetAttention(nn.Module):
    """DIN (Zhou et al., KDD 2018): history items weighted by an MLP of (history, target, difference, product).

    The first layer of that MLP is split by term (W[h; t; h−t; h⊙t] = (W_h+W_d)h + (W_t−W_d)t + W_p(h⊙t)), so the
    history part is computed once per user and many targets of one user (a beam, a candidate pool) share it.
    """

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.first = nn.Linear(4 * dim, hidden)
        self.act = nn.PReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                owner: torch.Tensor | None = None) -> torch.Tensor:
        """history [U, T, d], mask [U, T] (True = real), target [R, d], owner [R] (row → user; None: R = U) → [R, d]."""
        d = history.shape[-1]
        w_h, w_t, w_d, w_p = self.first.weight.split(d, dim=1)
        per_user = history @ (w_h + w_d).T + self.first.bias  # [U, T, hidden]
        per_target = target @ (w_t - w_d).T  # [R, hidden]
        if owner is not None:
            history, mask, per_user = history[owner], mask[owner], per_user[owner]
        product = torch.einsum("rtd,rd,hd->rth", history, target, w_p)
        weights = self.out(self.act(per_user + per_target[:, None, :] + product)).squeeze(-1)
        # DIN keeps unnormalised weights (intensity matters); masked slots contribute nothing
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        return (weights[..., None] * history).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class CrossNetwork(nn.Module):
    """DCNv2 (Wang et al., WWW 2021): x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class MixtureOfExperts(nn.Module):
    """Soft-gated experts, each a two-layer MLP to one logit."""

    def __init__(self, dim: int, experts: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                                     for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.softmax(self.gate(x), dim=-1)
        outputs = torch.cat([expert(x) for expert in self.experts], dim=-1)
        return (gate * outputs).sum(-1)


class Mixer(nn.Module):
    """logit = MoE(DCNv2([BN_u(e_u); BN_target(t); DIN(history, t); BN_cross(c)])) for each path."""

    def __init__(self, dim: int, cross_dim: int, paths: tuple[str, ...] = ("rank", "recall"), cross_layers: int = 2,
                 experts: int = 4, hidden: int = 64):
        super().__init__()
        self.bn_user = nn.BatchNorm1d(dim)  # shared by every path
        self.bn_target = nn.ModuleDict({p: nn.BatchNorm1d(dim) for p in paths})
        self.bn_cross = nn.ModuleDict({p: nn.BatchNorm1d(cross_dim) for p in paths})
        self.attention = TargetAttention(dim, hidden)
        width = 3 * dim + cross_dim
        self.cross = CrossNetwork(width, cross_layers)
        self.experts = MixtureOfExperts(width, experts, hidden)

    def forward(self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                cross: torch.Tensor, path: str, owner: torch.Tensor | None = None) -> torch.Tensor:
        """user [U, d], history [U, T, d], mask [U, T]; target [R, d], cross [R, c]; owner [R] maps rows to users
        (None: one row per user)."""
        target_n = self.bn_target[path](target)
        interest = self.attention(history, mask, target, owner)
        user = user if owner is None else user[owner]
        x = torch.cat([self.bn_user(user), target_n, interest, self.bn_cross[path](cross)], dim=-1)
        return self.experts(self.cross(x))
